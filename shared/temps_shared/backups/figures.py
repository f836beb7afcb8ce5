"""Comparing the figures a backup recorded with those of a test restore, for any engine.

Figures are nested JSON objects (engine-specific: databases → tables → rows and checksum, key
digests, bucket → object ETags …). The comparison walks both and names every difference by its
path. A name starting with `_` is informational (e.g. `_summary`, or a count that may
legitimately shrink, like Redis keys with a TTL): it is shown, never compared. A figure written
`{"at_least": n}` is a lower bound (e.g. a PostgreSQL sequence: not transactional, so the dump
may read it a little later than the figures did): the restored one must not be below it.
"""

from __future__ import annotations

from typing import Any

from temps_shared.backups.protocol import Figures

INFORMATIONAL = "_"
AT_LEAST = "at_least"
SUMMARY = "_summary"  # an engine's one-line description of what its figures cover
MAX_NAMED = 20  # a reason lists at most this many differences (then "and N more")


def _compared(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if not str(k).startswith(INFORMATIONAL)}


def _is_bound(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {AT_LEAST}


def _walk(path: str, expected: Any, actual: Any, out: list[str]) -> None:
    if _is_bound(expected):
        low, found = expected[AT_LEAST], actual.get(AT_LEAST) if _is_bound(actual) else actual
        if not _is_bound(actual) or (low is not None and (found is None or found < low)):
            out.append(f"{path}: at least {low} in the backup, {_show(found)} restored")
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        wanted, found = _compared(expected), _compared(actual)
        for name in sorted(wanted.keys() | found.keys(), key=str):
            where = f"{path}/{name}" if path else str(name)
            if name not in found:
                out.append(f"{where}: missing after the restore")
            elif name not in wanted:
                out.append(f"{where}: present after the restore, not in the backup")
            else:
                _walk(where, wanted[name], found[name], out)
        return
    if expected != actual:
        out.append(
            f"{path or 'figures'}: {_show(expected)} in the backup, {_show(actual)} restored"
        )


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return f"{len(value)} entries"
    if isinstance(value, list):
        return f"{len(value)} items"
    text = str(value)
    return text if len(text) <= 24 else text[:12] + "…"


def differences(expected: Figures, actual: Figures) -> list[str]:
    """Every difference, named by its path (e.g. `databases/app/tables/public.t/rows: 10 in
    the backup, 9 restored`); empty when the restore matches."""
    out: list[str] = []
    _walk("", expected, actual, out)
    return out


def reason(named: list[str]) -> str:
    """The differences as one line for an event's `reason` (bounded)."""
    shown = "; ".join(named[:MAX_NAMED])
    more = len(named) - MAX_NAMED
    return f"{shown}; and {more} more" if more > 0 else shown


def summary(figures: Figures) -> str:
    """What a matching restore covered, for `BackupVerified.summary`."""
    text = figures.get(SUMMARY)
    if isinstance(text, str) and text:
        return text
    return f"{_leaves(_compared(figures))} figures matched"


def _leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_leaves(v) for k, v in value.items() if not str(k).startswith(INFORMATIONAL))
    return 1
