"""Render variables as a dotenv file that a shell can `source` and dotenv parsers read back."""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def render(variables: Mapping[str, str]) -> str:
    """`NAME='value'` lines, sorted by name. Names that are not shell identifiers are refused:
    `source` would run them as commands."""
    lines = []
    for name in sorted(variables):
        if not NAME.match(name):
            raise ValueError(f"not a valid variable name: {name!r}")
        lines.append(f"{name}={quote(variables[name])}")
    return "".join(line + "\n" for line in lines)
