"""Sizes written the spec's way ("10GB", "512MB", "1GiB") turned into whole units."""

from __future__ import annotations

import math
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?)?\s*$", re.IGNORECASE)
_MB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mb(value: object) -> int:
    """Megabytes in `value`: a number is already MB; a string may carry KB/MB/GB/TB (or KiB…)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or a string such as '512MB' or '10GB'")
    if isinstance(value, int | float):
        return int(_finite(value))
    if not isinstance(value, str) or not (match := _SIZE_RE.match(value)):
        raise ValueError(f"{str(value)[:40]!r} is not a size; write it like '512MB' or '10GB'")
    number, unit = float(match.group(1)), (match.group(2) or "M")[0].upper()
    return int(_finite(number * _MB_PER_UNIT[unit]))


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a size must be a finite number")
    return value


def parse_size_gb(value: object) -> int:
    """Gigabytes in `value`: a number is already GB; a string may carry a unit."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(_finite(value))
    return parse_size_mb(value) // 1024
