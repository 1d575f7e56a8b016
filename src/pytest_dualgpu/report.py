"""Rendering results for people: one row per result, via tabulate."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate

from .results import DualResult

HEADERS = (
    "result",
    "device",
    "mode",
    "alone ms",
    "seq ms",
    "conc ms",
    "speedup [95% CI]",
    "ideal",
    "eff",
    "overlap",
    "peak MiB",
    "max err",
    "correct",
)


def result_row(result: DualResult) -> list[str]:
    alone = " / ".join(_ms(lane.alone.median) for lane in result.lanes)
    lo, hi = result.speedup_ci
    memory = "-"
    if result.memory is not None:
        memory = f"{result.memory.sequential / 2**20:.1f}->{result.memory.concurrent / 2**20:.1f}"
    return [
        result.name,
        result.device,
        result.mode,
        alone,
        _ms(result.sequential.median),
        _ms(result.concurrent.median),
        f"{result.speedup:.2f}x [{lo:.2f}, {hi:.2f}]",
        f"{result.ideal_speedup:.2f}x",
        "-" if result.efficiency is None else f"{result.efficiency:.2f}",
        f"{result.overlap:.2f}",
        memory,
        f"{result.max_abs_err:.1e}",
        "yes" if result.correct else "NO",
    ]


def format_table(results: Sequence[DualResult], tablefmt: str = "simple") -> str:
    return tabulate([result_row(result) for result in results], headers=HEADERS, tablefmt=tablefmt)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"
