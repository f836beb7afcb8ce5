"""Render variables as files others read back: a dotenv file (shells, dotenv parsers, Compose)
and a `docker run --env-file` file."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Characters a shell or a dotenv parser would interpret inside double quotes.
_SPECIAL_IN_DOUBLE = re.compile(r'[$`\\"!]')


def quote(value: str) -> str:
    """Single quotes: no expansion of `$`, backticks or backslashes in POSIX shells, and read
    literally by python-dotenv, Node's dotenv and Compose, newlines (the CA PEM) included.
    A single quote inside (never in generated secrets) has no escape in single quotes that all
    of them read: double quotes when nothing else in the value is special there, otherwise the
    shell's `'\\''` (right for `source`; dotenv parsers differ on it)."""
    if "'" not in value:
        return f"'{value}'"
    if not _SPECIAL_IN_DOUBLE.search(value):
        return f'"{value}"'
    return "'" + value.replace("'", "'\\''") + "'"


def _lines(variables: Mapping[str, str], encode: Callable[[str], str]) -> str:
    """`NAME=<encoded value>` lines, sorted by name. Names that are not shell identifiers are
    refused: `source` would run them as commands."""
    lines = []
    for name in sorted(variables):
        if not NAME.match(name):
            raise ValueError(f"not a valid variable name: {name!r}")
        lines.append(f"{name}={encode(variables[name])}")
    return "".join(line + "\n" for line in lines)


def render(variables: Mapping[str, str]) -> str:
    """`NAME='value'` lines (see `quote`)."""
    return _lines(variables, quote)


def docker_value(value: str) -> str:
    """Docker's --env-file takes everything after the first `=` as the value, byte for byte: no
    quotes, no escapes, no `$` expansion, and one line per variable (measured with docker 28).
    So a single-line value is written as it is, and each line break of a multi-line value (the
    CA PEM) as the two characters `\\n`, to be turned back into line breaks by the reader
    (`printf '%b'`, `.replace('\\n', '\n')`). Refused: a carriage return (docker drops one at a
    line's end) and a backslash in a multi-line value (its decoding would be ambiguous)."""
    if "\r" in value:
        raise ValueError("a value with a carriage return cannot be written for docker --env-file")
    if "\n" not in value:
        return value
    if "\\" in value:
        raise ValueError("a multi-line value with a backslash cannot be written unambiguously")
    return value.replace("\n", "\\n")


def render_docker(variables: Mapping[str, str]) -> str:
    """`NAME=value` lines for `docker run --env-file` (see `docker_value`)."""
    return _lines(variables, docker_value)
