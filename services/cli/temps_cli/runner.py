"""The process side of `temps run`: CA files, the merged environment, the child and its code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import certifi

from temps_cli.client import CliError, ExitCode

# libpq trusts exactly the file PGSSLROOTCERT names (with sslmode=require, a root file present
# makes it verify the chain): the installation CA alone.
CA_ONLY = "PGSSLROOTCERT"
# Node *adds* NODE_EXTRA_CA_CERTS to its roots; botocore and requests *replace* theirs with
# AWS_CA_BUNDLE / REQUESTS_CA_BUNDLE. Each names the installation CA plus what the caller's same
# variable named (a company proxy's CA, say) or, for the replacing two, certifi's roots (their
# default): a migration that also calls a public HTTPS API keeps working.
CA_ADDED = ("NODE_EXTRA_CA_CERTS", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")
REPLACES_ROOTS = frozenset({"AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"})
CA_VARIABLE = "TEMPS_CA_CERT"
# What a shell answers for a command it cannot find or run: scripts already test for these.
COMMAND_NOT_FOUND, NOT_EXECUTABLE = 127, 126


# An argument that is exactly `$NAME` or `${NAME}`.
_REFERENCE = re.compile(
    r"^\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))$"
)


def expand_arguments(command: Sequence[str], variables: Mapping[str, str]) -> list[str]:
    """Arguments that are exactly `$NAME` / `${NAME}` of an injected variable, replaced by its
    value: in a shell, `temps run … -- psql "$DATABASE_URL"` is expanded by the *calling* shell
    before temps has fetched anything, so one writes `'$DATABASE_URL'` and temps expands it.
    Anything else (a `sh -c` script, `$HOME`, `x$DATABASE_URL`) is passed as is."""
    out = []
    for arg in command:
        match = _REFERENCE.match(arg)
        name = (match["braced"] or match["bare"]) if match else None
        out.append(variables[name] if name and name in variables else arg)
    return out


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _lines(text: str) -> str:
    """PEM text ending in a newline, so that concatenated bundles stay valid; "" if blank."""
    if not text.strip():
        return ""
    return text if text.endswith("\n") else text + "\n"


def _read(path: str | None) -> str:
    return _lines(Path(path).read_text()) if path and os.path.isfile(path) else ""


def with_ca_files(
    variables: Mapping[str, str], directory: Path, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The variables plus the CA variables, naming files written (0600) into `directory`;
    `environ` is the caller's environment (its own CA bundles are kept)."""
    out = dict(variables)
    ca = _lines(variables.get(CA_VARIABLE, ""))
    if not ca:
        return out
    ca_file = directory / "ca.pem"
    _write_private(ca_file, ca)
    out[CA_ONLY] = str(ca_file)
    by_base = {"": ca_file}  # same roots added → same file
    for name in CA_ADDED:
        base = _read(environ.get(name))
        if not base and name in REPLACES_ROOTS:
            base = _read(certifi.where())
        if base not in by_base:
            by_base[base] = directory / f"ca-bundle-{len(by_base)}.pem"
            _write_private(by_base[base], ca + base)
        out[name] = str(by_base[base])
    return out


def exit_status(returncode: int) -> int:
    """A child killed by signal N exits 128 + N, as shells report it."""
    return 128 - returncode if returncode < 0 else returncode


def execute(command: Sequence[str], variables: Mapping[str, str]) -> int:
    """Run `command` with `variables` over this process's environment; its exit status.

    The child runs in our process group, so a terminal's Ctrl-C reaches it directly: we ignore
    SIGINT ourselves (and wait for it to finish) rather than deliver a second one. SIGTERM and
    SIGHUP sent to `temps` alone are passed on."""
    if not command:
        raise CliError("no command: temps run --project P --env E -- COMMAND …", ExitCode.INPUT)
    try:
        child = subprocess.Popen(
            expand_arguments(command, variables), env={**os.environ, **variables}
        )
    except FileNotFoundError as exc:
        raise CliError(f"command not found: {command[0]}", COMMAND_NOT_FOUND) from exc
    except PermissionError as exc:
        raise CliError(f"cannot execute {command[0]}: permission denied", NOT_EXECUTABLE) from exc

    def forward(signum: int, _: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        return exit_status(child.wait())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
