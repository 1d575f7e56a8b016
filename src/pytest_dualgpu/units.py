"""Figures for people: one way of writing sizes, times and ratios (with their intervals) for every layer.
Imports nothing of the package, so the errors can write sizes too."""

from __future__ import annotations

MiB = 2**20


def size_text(size: int) -> str:
    """Bytes for people: KiB below a MiB, GiB from 10 GiB, MiB between."""
    if size < MiB:
        return f"{size / 1024:.1f} KiB"
    if size >= 10 * 1024 * MiB:
        return f"{size / (1024 * MiB):.1f} GiB"
    return f"{size / MiB:.1f} MiB"


def mib_text(size: int) -> str:
    """Bytes as MiB, the number alone, for a column whose header says MiB."""
    return f"{size / MiB:.1f}"


def ratio_text(value: float, interval: tuple[float, float] | None = None, *, label: bool = True) -> str:
    """A ratio, with its interval where given: "1.23x [95% CI 1.10, 1.30]" in sentences, "1.23x [1.10,
    1.30]" in table cells (``label=False``)."""
    return f"{value:.2f}x" + _interval(interval, "{:.2f}", 1.0, label)


def time_text(
    seconds: float, interval: tuple[float, float] | None = None, *, unit: bool = True, label: bool = True
) -> str:
    """A time in milliseconds, three figures: "12.3 ms", "12.3 ms [95% CI 11.9, 12.8]"; "12.3" in a
    column whose header says ms (``unit=False``)."""
    return f"{seconds * 1e3:.3g}{' ms' if unit else ''}" + _interval(interval, "{:.3g}", 1e3, label)


def number_text(value: float, interval: tuple[float, float] | None = None, *, label: bool = True) -> str:
    """A plain figure (an efficiency, an overlap): "0.61", "0.61 [95% CI 0.52, 0.70]"."""
    return f"{value:.2f}" + _interval(interval, "{:.2f}", 1.0, label)


def _interval(interval: tuple[float, float] | None, form: str, scale: float, label: bool) -> str:
    if interval is None:
        return ""
    lo, hi = (form.format(end * scale) for end in interval)
    return f" [{'95% CI ' if label else ''}{lo}, {hi}]"
