"""Sizes for people and from people: one reading and one writing of bytes for every layer."""

from __future__ import annotations

import re

from pytest_dualgpu.errors import DualGpuUsageError

MiB = 2**20


def parse_size(value: int | str, what: str = "max_bytes") -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1.5 GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if match:
            number, unit = float(match.group(1)), (match.group(2) or "B").upper()
            scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
            if number > 0:
                return int(number * scale)
    raise DualGpuUsageError(
        f"{what} must be a number of bytes > 0 or a size such as '512MiB' or '2GB', got {value!r}"
    )


def size_text(size: int) -> str:
    """Bytes for people: KiB below a MiB, GiB from 10 GiB, MiB between."""
    if size < MiB:
        return f"{size / 1024:.1f} KiB"
    if size >= 10 * 1024 * MiB:
        return f"{size / (1024 * MiB):.1f} GiB"
    return f"{size / MiB:.1f} MiB"


def ratio_text(value: float, interval: tuple[float, float], *, label: bool = True) -> str:
    """A ratio with its interval: "1.23x [95% CI 1.10, 1.30]" in sentences, "1.23x [1.10, 1.30]" in table
    cells (``label=False``)."""
    lo, hi = interval
    return f"{value:.2f}x [{'95% CI ' if label else ''}{lo:.2f}, {hi:.2f}]"
