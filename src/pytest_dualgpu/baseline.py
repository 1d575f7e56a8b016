"""Comparing a session's results with a saved JSON report, and the regression gate.

A row is matched to the base row of the same test, result name and occurrence. Noise must not fail a
build, so a metric regressed only when this run's whole 95% confidence interval lies beyond the limit
(the base median moved by the threshold): a wide interval that merely reaches past it is not evidence.
Rows measured on another device than their base are shown but not gated: that difference is the
machine's, not the code's. Nothing here imports torch or pytest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import stats
from .errors import DualGpuUsageError
from .report import ReportRow, load_report
from .results import DualResult
from .verdicts import parse_size, size_text

#: metric -> True where higher is better
METRICS = {"speedup": True, "efficiency": True, "concurrent": False, "memory": False}
THRESHOLD_FORMS = (
    "speedup:10%, efficiency:10% or efficiency:0.1, concurrent:10% or concurrent:2ms, memory:10% or "
    "memory:64MiB"
)

RowKey = tuple[str, str, int]


@dataclass(frozen=True)
class Threshold:
    """How far a metric may move the wrong way: a fraction of the base (``relative``) or an amount."""

    metric: str
    amount: float
    relative: bool
    text: str

    def limit(self, base: float) -> float:
        step = self.amount * abs(base) if self.relative else self.amount
        return base - step if METRICS[self.metric] else base + step

    def __str__(self) -> str:
        return self.text


def parse_threshold(text: str) -> Threshold:
    metric, _, limit = text.strip().partition(":")
    if metric not in METRICS or not limit:
        raise DualGpuUsageError(f"regression threshold {text!r} is not METRIC:LIMIT; use {THRESHOLD_FORMS}")
    try:
        if limit.endswith("%"):
            amount, relative = float(limit[:-1]) / 100, True
        elif metric == "efficiency":
            amount, relative = float(limit), False
        elif metric == "memory":
            amount, relative = float(parse_size(limit)), False
        elif metric == "concurrent" and limit.endswith(("ms", "s")):
            scale = 1e-3 if limit.endswith("ms") else 1.0
            amount, relative = float(limit.removesuffix("ms").removesuffix("s")) * scale, False
        else:
            raise ValueError(limit)
    except (ValueError, TypeError):
        raise DualGpuUsageError(
            f"regression threshold {text!r}: cannot read the limit {limit!r}; use {THRESHOLD_FORMS}"
        ) from None
    if not amount >= 0 or math.isinf(amount):
        raise DualGpuUsageError(
            f"regression threshold {text!r}: the limit must be a finite amount >= 0; use {THRESHOLD_FORMS}"
        )
    return Threshold(metric, amount, relative, text.strip())


def row_keys(rows: Sequence[ReportRow]) -> list[RowKey]:
    """(node id, result name, how many earlier rows of that test had that name) for each row."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for row in rows:
        pair = (row.nodeid, row.result.name)
        keys.append((*pair, seen.get(pair, 0)))
        seen[pair] = seen.get(pair, 0) + 1
    return keys


@dataclass(frozen=True)
class Baseline:
    """A saved JSON report: its machine and its rows, by key."""

    path: str
    machine: dict[str, Any]
    rows: dict[RowKey, ReportRow]

    @classmethod
    def load(cls, path: str) -> Baseline:
        fix = f"save one with --dualgpu-save={path} (or --dualgpu-report=json:{path}) on a run you trust"
        saved = load_report(Path(path).expanduser(), f"--dualgpu-compare={path}", fix)
        return cls(path, saved.machine, dict(zip(row_keys(saved.rows), saved.rows, strict=True)))


@dataclass(frozen=True)
class MetricChange:
    """One metric of one row against its base; ``interval`` is this run's 95% CI of the metric."""

    metric: str
    base: float
    new: float
    interval: tuple[float, float]
    threshold: Threshold | None = None

    @property
    def limit(self) -> float | None:
        return None if self.threshold is None else self.threshold.limit(self.base)

    @property
    def regressed(self) -> bool:
        limit = self.limit
        if limit is None:
            return False
        lo, hi = self.interval
        return hi < limit if METRICS[self.metric] else lo > limit

    @property
    def change(self) -> str:
        """The move, as people read it for this metric: a percentage, or points of efficiency."""
        if self.metric == "efficiency":
            return f"{self.new - self.base:+.2f}"
        if self.base == 0:
            return "n/a"
        return f"{(self.new - self.base) / abs(self.base):+.1%}"

    def describe(self) -> str:
        lo, hi = self.interval
        text = f"{self.metric} {_value(self.metric, self.new)}"
        if lo != hi:
            text += f" [95% CI {_value(self.metric, lo)}, {_value(self.metric, hi)}]"
        text += f" vs base {_value(self.metric, self.base)} ({self.change})"
        if self.limit is not None:
            text += f"; limit {_value(self.metric, self.limit)} ({self.threshold})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "new": self.new,
            "interval": list(self.interval),
            "threshold": None if self.threshold is None else str(self.threshold),
            "limit": self.limit,
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class RowComparison:
    """A row against its base row; ``changes`` is empty when the base has no such row."""

    base: ReportRow | None
    changes: tuple[MetricChange, ...] = ()
    other_device: bool = False

    @property
    def gated(self) -> bool:
        return self.base is not None and not self.other_device

    def cell(self) -> str:
        if self.base is None:
            return "new"
        parts = []
        for change in self.changes:
            mark = " REGRESSED" if self.gated and change.regressed else ""
            parts.append(f"{_SHORT[change.metric]} {change.change}{mark}")
        cell = ", ".join(parts) or "-"
        return f"{cell} (other device)" if self.other_device else cell

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.base is not None,
            "gated": self.gated,
            "base_device": None if self.base is None else self.base.result.device_name,
            "metrics": {change.metric: change.to_dict() for change in self.changes},
        }


@dataclass
class Comparison:
    """Every row of the session against the baseline; keyed like ``ReportRow`` (node id, call)."""

    baseline: Baseline
    thresholds: tuple[Threshold, ...]
    rows: dict[tuple[str, int], RowComparison] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    regressions: list[tuple[ReportRow, MetricChange]] = field(default_factory=list)
    judged: int = 0  # metrics the thresholds judged: none means the gate checked nothing

    def for_row(self, row: ReportRow) -> RowComparison | None:
        return self.rows.get((row.nodeid, row.call))

    def regression_lines(self) -> list[str]:
        return [f"{row.label}: {change.describe()}" for row, change in self.regressions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.baseline.path,
            "machine": {key: self.baseline.machine.get(key) for key in ("torch", "cuda", "hostname")},
            "thresholds": [str(threshold) for threshold in self.thresholds],
            "judged": self.judged,
            "warnings": list(self.warnings),
            "regressions": [
                {"nodeid": row.nodeid, "call": row.call, "name": row.result.name, "metric": change.metric,
                 "description": change.describe()}
                for row, change in self.regressions
            ],
        }  # fmt: skip


def compare(
    rows: Sequence[ReportRow], baseline: Baseline, thresholds: Sequence[Threshold], torch_version: str | None
) -> Comparison:
    """Match every row with its base row and judge the thresholds; mismatched machines become warnings."""
    comparison = Comparison(baseline, tuple(thresholds))
    shown = [threshold.metric for threshold in thresholds] or ["speedup", "concurrent"]
    devices: set[tuple[str, str]] = set()
    keys = row_keys(rows)
    for key, row in zip(keys, rows, strict=True):
        base = baseline.rows.get(key)
        if base is None:
            comparison.rows[(row.nodeid, row.call)] = RowComparison(None)
            continue
        changes = []
        for metric in shown:
            change = _change(metric, base.result, row.result, thresholds)
            if change is not None:
                changes.append(change)
        other_device = base.result.device_name != row.result.device_name
        if other_device:
            devices.add((base.result.device_name, row.result.device_name))
        judged = RowComparison(base, tuple(changes), other_device)
        comparison.rows[(row.nodeid, row.call)] = judged
        if judged.gated:
            comparison.regressions += [(row, change) for change in changes if change.regressed]
    for base_device, device in sorted(devices):
        comparison.warnings.append(
            f"base measured on {base_device}, this run on {device}: those rows are compared but not gated"
        )
    base_torch = baseline.machine.get("torch")
    if base_torch and torch_version and base_torch != torch_version:
        comparison.warnings.append(
            f"base measured with torch {base_torch}, this run with torch {torch_version}"
        )
    missing = len(rows) - sum(1 for judged in comparison.rows.values() if judged.base is not None)
    if missing:
        comparison.warnings.append(f"{missing} result(s) have no row in the base ({baseline.path})")
    gone = sorted(set(baseline.rows) - set(keys))
    if gone:
        listed = ", ".join(f"{nodeid} [{name}]" for nodeid, name, _ in gone[:5])
        more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
        comparison.warnings.append(f"{len(gone)} base result(s) did not run this time: {listed}{more}")
    comparison.judged = (
        sum(len(judged.changes) for judged in comparison.rows.values() if judged.gated) if thresholds else 0
    )
    return comparison


_SHORT = {"speedup": "speedup", "efficiency": "eff", "concurrent": "conc", "memory": "mem"}


def _change(
    metric: str, base: DualResult, new: DualResult, thresholds: Sequence[Threshold]
) -> MetricChange | None:
    read = _READERS[metric]
    base_value, new_value = read(base), read(new)
    if base_value is None or new_value is None:
        return None
    threshold = next((threshold for threshold in thresholds if threshold.metric == metric), None)
    return MetricChange(metric, base_value[0], new_value[0], new_value[1], threshold)


def _speedup(result: DualResult) -> tuple[float, tuple[float, float]]:
    return result.speedup, result.speedup_ci


def _efficiency(result: DualResult) -> tuple[float, tuple[float, float]] | None:
    if result.efficiency is None:
        return None
    return result.efficiency, result.efficiency_ci or (result.efficiency, result.efficiency)


def _concurrent(result: DualResult) -> tuple[float, tuple[float, float]]:
    samples = result.concurrent.samples
    median = result.concurrent.median
    return median, stats.median_ci(samples) if samples else (median, median)


def _memory(result: DualResult) -> tuple[float, tuple[float, float]] | None:
    if result.memory is None:
        return None
    peak = float(result.memory.concurrent)
    return peak, (peak, peak)


_READERS: dict[str, Callable[[DualResult], tuple[float, tuple[float, float]] | None]] = {
    "speedup": _speedup,
    "efficiency": _efficiency,
    "concurrent": _concurrent,
    "memory": _memory,
}


def _value(metric: str, value: float) -> str:
    if metric == "speedup":
        return f"{value:.2f}x"
    if metric == "efficiency":
        return f"{value:.2f}"
    if metric == "concurrent":
        return f"{value * 1e3:.3g} ms"
    return size_text(int(value))
