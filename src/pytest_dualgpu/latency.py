"""What co-location costs each model: its per-call latency alone and while the others run, and the ratio.

Latency is closed-loop: a call's latency runs from the end of the lane's previous call (or the start of
the run) to the end of this call, so every kind of waiting counts: the device, a lock, the GIL, a stream's
queue. Percentiles come with distribution-free intervals (``stats.quantile_ci``); a slowdown's interval
is the quotient of the two quantiles' intervals, each at 97.5%, so it covers at least 95%. Where there
are too few calls for an interval (at 97.5%, a p90 needs 42 and a p99 436), there is none, and
nothing is decided on it. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dualgpu import stats
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.timeline import Interval

PERCENTILES = (50, 90, 99)


def check_percentile(value: object) -> None:
    """A usage error unless ``value`` is a percentile measured for every lane."""
    if isinstance(value, bool) or value not in PERCENTILES:
        raise DualGpuUsageError(
            f"percentile must be one of {', '.join(map(str, PERCENTILES))} (the latencies measured), "
            f"got {value!r}"
        )


#: Fewer calls than this make a p99 that is just the slowest call or two; the result says so.
P99_MEANINGFUL_CALLS = 100


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one lane's per-call latency (seconds) over ``n`` calls, each with its interval at
    97.5% (None where ``n`` is too small for one)."""

    p50: float
    p90: float
    p99: float
    n: int
    intervals: dict[int, Interval | None]

    @classmethod
    def from_latencies(cls, latencies: Sequence[float]) -> LatencyStats:
        values = {p: stats.quantile(latencies, p / 100) for p in PERCENTILES}
        intervals = {p: stats.quantile_ci(latencies, p / 100, 0.975) for p in PERCENTILES}
        return cls(values[50], values[90], values[99], len(latencies), intervals)

    def at(self, percentile: int) -> float:
        return {50: self.p50, 90: self.p90, 99: self.p99}[percentile]

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "n": self.n,
            **{
                f"p{p}_ci": None if self.intervals[p] is None else list(self.intervals[p] or ())
                for p in PERCENTILES
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        intervals: dict[int, Interval | None] = {}
        for p in PERCENTILES:
            pair = data.get(f"p{p}_ci")
            intervals[p] = None if pair is None else (float(pair[0]), float(pair[1]))
        return cls(data["p50"], data["p90"], data["p99"], data["n"], intervals)


@dataclass(frozen=True)
class Latency:
    alone: LatencyStats
    at_once: LatencyStats

    def slowdown(self, percentile: int = 50) -> float:
        alone = self.alone.at(percentile)
        return self.at_once.at(percentile) / alone if alone > 0 else 1.0

    def slowdown_ci(self, percentile: int = 50) -> Interval | None:
        return stats.ratio_ci(self.at_once.intervals[percentile], self.alone.intervals[percentile])

    def to_dict(self) -> dict[str, Any]:
        return {"alone": self.alone.to_dict(), "at_once": self.at_once.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Latency:
        return cls(LatencyStats.from_dict(data["alone"]), LatencyStats.from_dict(data["at_once"]))


def closed_loop(call_ends: Sequence[float]) -> list[float]:
    """Per-call latencies from the end times of a lane's calls in one run (seconds since its start)."""
    latencies = []
    previous = 0.0
    for end in call_ends:
        latencies.append(max(0.0, end - previous))
        previous = end
    return latencies


_OBJECTIVE = re.compile(
    r"^(?P<model>.+):p(?P<percentile>\d+)\s*<=\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>us|ms|s)$"
)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class Objective:
    """A latency objective for one model while the other runs: ``Encoder:p99<=20ms``."""

    model: str
    percentile: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Objective:
        match = _OBJECTIVE.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not MODEL:pNN<=TIME, e.g. Encoder:p99<=20ms (us, ms or s)")
        percentile = int(match["percentile"])
        if percentile not in PERCENTILES:
            raise ValueError(f"{text!r}: the percentile is one of {', '.join(f'p{p}' for p in PERCENTILES)}")
        return cls(match["model"], percentile, float(match["value"]) * _UNITS[match["unit"]])

    def met_by(self, stats: LatencyStats) -> bool:
        return stats.at(self.percentile) <= self.seconds

    def __str__(self) -> str:
        return f"{self.model}:p{self.percentile}<={self.seconds * 1e3:g}ms"
