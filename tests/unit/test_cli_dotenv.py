"""`temps env --format dotenv`: what a shell `source`s and dotenv parsers read back is the value."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from temps_cli.dotenv import docker_value, quote, render, render_docker

PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBszCCAVmgAwIBAgIUX+/=\n"
    "abc$HOME`id`\\n\n"
    "-----END CERTIFICATE-----\n"
)
VARIABLES = {
    "DATABASE_URL": "postgresql://app:p%40ss@temps-postgres-db1:5432/shop?sslmode=require&x=1",
    "REDIS_PASSWORD": 'a$b`c`\\d"e!f ;g',
    "TEMPS_CA_CERT": PEM,
    "EMPTY": "",
    "QUOTE": "it's",
    "QUOTE_AND_DOLLAR": "it's $HOME",
    "SPACES": "  leading and trailing  ",
}


def test_plain_values_are_single_quoted() -> None:
    assert quote("postgresql://u:p@h:5432/db?sslmode=require") == (
        "'postgresql://u:p@h:5432/db?sslmode=require'"
    )
    assert render({"B": "2", "A": "1"}) == "A='1'\nB='2'\n"


def test_names_that_are_not_identifiers_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid variable name"):
        render({"X; rm -rf /": "1"})


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_a_shell_sources_the_exact_values(shell: str, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(render(VARIABLES))
    dump = (
        f"import json, os; print(json.dumps({{k: os.environ[k] for k in {sorted(VARIABLES)!r}}}))"
    )
    script = 'set -a; . "$1"; set +a; exec "$2" -c "$3"'
    out = subprocess.run(
        [shell, "-c", script, shell, str(env_file), sys.executable, dump],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    ).stdout
    assert json.loads(out) == VARIABLES


def test_python_dotenv_reads_the_exact_values() -> None:
    # The shell-only form of a quote next to `$` is the one case dotenv parsers read differently.
    portable = {k: v for k, v in VARIABLES.items() if k != "QUOTE_AND_DOLLAR"}
    parsed = dotenv_values(stream=io.StringIO(render(portable)), interpolate=True)
    assert parsed == portable


def test_docker_lines_keep_single_line_values_as_they_are() -> None:
    # docker's --env-file reads the rest of the line literally: quoting would be kept as part of
    # the value, so nothing is quoted or escaped.
    single = {k: v for k, v in VARIABLES.items() if "\n" not in v}
    assert render_docker(single) == "".join(f"{k}={single[k]}\n" for k in sorted(single))


def test_docker_lines_escape_line_breaks_for_printf_b() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUX+/=\n-----END CERTIFICATE-----\n"
    encoded = docker_value(pem)
    assert "\n" not in encoded
    assert render_docker({"TEMPS_CA_CERT": pem}).count("\n") == 1
    decoded = subprocess.run(
        ["sh", "-c", 'printf %b "$1"', "sh", encoded], check=True, capture_output=True, text=True
    ).stdout
    assert decoded == pem


@pytest.mark.parametrize("value", ["a\r", "line\\1\nline2", "x\r\ny"])
def test_docker_lines_refuse_what_would_not_round_trip(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        docker_value(value)
