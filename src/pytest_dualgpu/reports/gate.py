"""Comparing a session's results with a saved JSON report, and the regression gate.

A row is matched to the base row of the same test, result name and occurrence. The limit is the base
median moved by the threshold, and it is decided like every bound (``bounds.py``): regressed when this
run's whole 95% confidence interval (widened by the harness's margin) lies beyond it, held when it lies
within, inconclusive when it straddles it, or when the result is unreliable. Rows measured on another
device than their base are shown but not gated: that difference is the machine's, not the code's.
Nothing here imports torch or pytest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import METRICS, Bound, figure, value_text
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.reports.rows import ReportRow, load_report
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.specs import parse_size

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
        return base - step if METRICS[self.metric].higher_is_better else base + step

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

    def bounds_for(self, key: RowKey, thresholds: Sequence[Threshold]) -> tuple[Bound, ...]:
        """The gate's limits for a call about to run, as bounds the engine can measure until it decides
        them: from the base row with that key (test, result name, occurrence), as ``compare`` matches."""
        base = self.rows.get(key)
        if base is None:
            return ()
        bounds = []
        for threshold in thresholds:
            if threshold.metric == "memory":
                continue
            measured = figure(base.result, threshold.metric)
            if measured is not None:
                bounds.append(Bound(threshold.metric, threshold.limit(measured.value)))
        return tuple(bounds)


@dataclass(frozen=True)
class MetricChange:
    """One metric of one row against its base; ``interval`` is this run's 95% CI of the metric."""

    metric: str
    base: float
    new: float
    interval: tuple[float, float]
    threshold: Threshold | None = None
    rounds: int = stats.MIN_DECISION_ROUNDS
    reliable: bool = True

    @property
    def limit(self) -> float | None:
        return None if self.threshold is None else self.threshold.limit(self.base)

    @property
    def status(self) -> str | None:
        """pass (held), fail (regressed) or inconclusive; None without a threshold."""
        limit = self.limit
        if limit is None:
            return None
        if not self.reliable and self.metric != "memory":  # bytes are counted exactly, whatever the clock did
            return stats.INCONCLUSIVE
        metric = METRICS[self.metric]
        return stats.decide(
            self.interval,
            limit,
            higher_is_better=metric.higher_is_better,
            margin=metric.margin,
            rounds=self.rounds,
        )

    @property
    def regressed(self) -> bool:
        return self.status == stats.FAIL

    @property
    def inconclusive(self) -> bool:
        return self.status == stats.INCONCLUSIVE

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
        text = f"{self.metric} {value_text(self.metric, self.new, None if lo == hi else (lo, hi))}"
        text += f" vs base {value_text(self.metric, self.base)} ({self.change})"
        if self.limit is not None:
            text += f"; limit {value_text(self.metric, self.limit)} ({self.threshold})"
        if self.limit is not None and not self.reliable:
            text += "; this run's result is unreliable"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "new": self.new,
            "interval": list(self.interval),
            "threshold": None if self.threshold is None else str(self.threshold),
            "limit": self.limit,
            "regressed": self.regressed,
            "status": self.status,
        }


@dataclass(frozen=True)
class RowGate:
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
            mark = ""
            if self.gated and change.regressed:
                mark = " REGRESSED"
            elif self.gated and change.inconclusive:
                mark = " INCONCLUSIVE"
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
class GateReport:
    """Every row of the session against the baseline; keyed like ``ReportRow`` (node id, call)."""

    baseline: Baseline
    thresholds: tuple[Threshold, ...]
    rows: dict[tuple[str, int], RowGate] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    regressions: list[tuple[ReportRow, MetricChange]] = field(default_factory=list)
    inconclusive: list[tuple[ReportRow, MetricChange]] = field(default_factory=list)
    judged: int = 0  # metrics the thresholds judged: none means the gate checked nothing

    def for_row(self, row: ReportRow) -> RowGate | None:
        return self.rows.get((row.nodeid, row.call))

    def regression_lines(self) -> list[str]:
        return [f"{row.label}: {change.describe()}" for row, change in self.regressions]

    def inconclusive_lines(self) -> list[str]:
        return [f"{row.label}: {change.describe()}" for row, change in self.inconclusive]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.baseline.path,
            "machine": {key: self.baseline.machine.get(key) for key in ("torch", "cuda", "hostname")},
            "thresholds": [str(threshold) for threshold in self.thresholds],
            "judged": self.judged,
            "warnings": list(self.warnings),
            "regressions": _listed(self.regressions),
            "inconclusive": _listed(self.inconclusive),
        }


def _listed(changes: Sequence[tuple[ReportRow, MetricChange]]) -> list[dict[str, Any]]:
    return [
        {"nodeid": row.nodeid, "call": row.call, "name": row.result.name, "metric": change.metric,
         "description": change.describe()}
        for row, change in changes
    ]  # fmt: skip


def compare(
    rows: Sequence[ReportRow], baseline: Baseline, thresholds: Sequence[Threshold], torch_version: str | None
) -> GateReport:
    """Match every row with its base row and judge the thresholds; mismatched machines become warnings."""
    comparison = GateReport(baseline, tuple(thresholds))
    shown = [threshold.metric for threshold in thresholds] or ["speedup", "concurrent"]
    devices: set[tuple[str, str]] = set()
    keys = row_keys(rows)
    for key, row in zip(keys, rows, strict=True):
        base = baseline.rows.get(key)
        if base is None:
            comparison.rows[(row.nodeid, row.call)] = RowGate(None)
            continue
        changes = []
        for metric in shown:
            change = _change(metric, base.result, row.result, thresholds)
            if change is not None:
                changes.append(change)
        other_device = base.result.device_name != row.result.device_name
        if other_device:
            devices.add((base.result.device_name, row.result.device_name))
        judged = RowGate(base, tuple(changes), other_device)
        comparison.rows[(row.nodeid, row.call)] = judged
        if judged.gated:
            comparison.regressions += [(row, change) for change in changes if change.regressed]
            comparison.inconclusive += [(row, change) for change in changes if change.inconclusive]
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
    base_figure, new_figure = figure(base, metric), figure(new, metric)
    if base_figure is None or new_figure is None:
        return None
    threshold = next((threshold for threshold in thresholds if threshold.metric == metric), None)
    return MetricChange(
        metric,
        base_figure.value,
        new_figure.value,
        new_figure.interval,
        threshold,
        rounds=new_figure.rounds,
        reliable=new.reliable,
    )
