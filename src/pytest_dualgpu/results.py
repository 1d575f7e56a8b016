"""The value objects one ``dual_infer`` call produces, and their JSON form.

Like ``torch.utils.benchmark``'s ``Measurement``, these only hold numbers and their own warnings; turning
them into tables and files is the job of ``reports/``. ``to_dict`` drops the tensors (outputs, reference)
so the result can travel through JSON, JUnit properties and pytest-xdist; ``from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_dualgpu import stats
from pytest_dualgpu.gpustate import GpuState
from pytest_dualgpu.latency import Latency
from pytest_dualgpu.timeline import Interval, LaneTimeline

NOISY_RELATIVE_IQR = 0.10


@dataclass(frozen=True)
class Measurement:
    """Per-iteration times of one variant (seconds), one sample per measured round."""

    median: float
    iqr: float
    min: float
    n: int
    samples: tuple[float, ...] = ()
    wall_median: float | None = None

    @classmethod
    def from_samples(cls, samples: Sequence[float], wall: Sequence[float] = ()) -> Measurement:
        if not samples:
            raise ValueError("a measurement needs at least one sample")
        return cls(
            median=stats.median(samples),
            iqr=stats.iqr(samples),
            min=min(samples),
            n=len(samples),
            samples=tuple(samples),
            wall_median=stats.median(wall) if wall else None,
        )

    @property
    def relative_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.n > 1 and self.relative_iqr > NOISY_RELATIVE_IQR

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**{**data, "samples": tuple(data.get("samples", ()))})


@dataclass(frozen=True)
class WarmUp:
    """How long a lane (or a mode's concurrent run) was warmed up before measuring, and whether its time
    per call had stopped changing by then (``per_call``: that steady time, seconds)."""

    seconds: float
    calls: int
    converged: bool
    per_call: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmUp:
        return cls(**data)


@dataclass(frozen=True)
class LaneResult:
    """One lane: its time per iteration alone (per round), its warm-up, and its per-call latency alone and
    while the others ran, whose ratio is what co-location costs it (``slowdown``, at the median)."""

    name: str
    alone: Measurement
    warmup: WarmUp | None = None
    latency: Latency | None = None
    priority: str = "normal"  # of the lane's stream (CUDA): "high" or "normal"
    training: bool = False  # a module in training mode whose output changes call to call (dropout, ...)

    @property
    def slowdown(self) -> float | None:
        return None if self.latency is None else self.latency.slowdown(50)

    @property
    def slowdown_ci(self) -> Interval | None:
        return None if self.latency is None else self.latency.slowdown_ci(50)

    def to_dict(self) -> dict[str, Any]:
        interval = self.slowdown_ci
        return {
            "name": self.name,
            "alone": self.alone.to_dict(),
            "warmup": self.warmup.to_dict() if self.warmup else None,
            "latency": self.latency.to_dict() if self.latency else None,
            "slowdown": self.slowdown,
            "slowdown_ci": None if interval is None else list(interval),
            "priority": self.priority,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaneResult:
        warmup = data.get("warmup")
        latency = data.get("latency")
        return cls(
            name=data["name"],
            alone=Measurement.from_dict(data["alone"]),
            warmup=WarmUp.from_dict(warmup) if warmup else None,
            latency=Latency.from_dict(latency) if latency else None,
            priority=data.get("priority", "normal"),
            training=data.get("training", False),
        )


@dataclass(frozen=True)
class Decision:
    """How one bound the call was asked to decide came out: pass, fail or inconclusive."""

    metric: str
    bound: float
    status: str
    interval: Interval | None
    lane: str | None = None  # for a slowdown: whose, and at which percentile
    percentile: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "bound": self.bound,
            "status": self.status,
            "interval": None if self.interval is None else list(self.interval),
            "lane": self.lane,
            "percentile": self.percentile,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        interval = data.get("interval")
        return cls(
            data["metric"],
            data["bound"],
            data["status"],
            _pair(interval),
            data.get("lane"),
            data.get("percentile"),
        )


@dataclass(frozen=True)
class MemoryStats:
    """Peak device memory in bytes above what was allocated before each run (CUDA only)."""

    alone: tuple[int, ...]
    sequential: int
    concurrent: int

    @property
    def ratio(self) -> float | None:
        """Concurrent peak over sequential peak: what running at once costs in memory."""
        return self.concurrent / self.sequential if self.sequential > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"alone": list(self.alone), "sequential": self.sequential, "concurrent": self.concurrent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryStats:
        return cls(alone=tuple(data["alone"]), sequential=data["sequential"], concurrent=data["concurrent"])


@dataclass
class SyncStats:
    """What the synchronization checks found; empty until they run."""

    implicit_syncs: list[dict[str, str]] = field(default_factory=list)
    race_trials: int = 0
    race_failures: int = 0
    seed: int | None = None
    first_failure: str | None = None
    sanitizer: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncStats:
        return cls(**data)


@dataclass(frozen=True)
class ModeProbe:
    """How one execution mode did when it was tried (briefly under ``auto``, fully when chosen)."""

    mode: str
    speedup: float | None = None
    sequential: float | None = None
    concurrent: float | None = None
    error: str | None = None
    chosen: bool = False
    warmup: WarmUp | None = None

    @classmethod
    def from_rounds(
        cls,
        mode: str,
        sequential: Sequence[float],
        concurrent: Sequence[float],
        *,
        warmup: WarmUp | None = None,
        chosen: bool = False,
    ) -> ModeProbe:
        """A mode's figures from its paired rounds: the median per-round speedup, each run's median."""
        return cls(
            mode,
            speedup=stats.median(stats.paired_ratios(sequential, concurrent)),
            sequential=stats.median(sequential),
            concurrent=stats.median(concurrent),
            chosen=chosen,
            warmup=warmup,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "warmup": self.warmup.to_dict() if self.warmup else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModeProbe:
        warmup = data.get("warmup")
        return cls(**{**data, "warmup": WarmUp.from_dict(warmup) if warmup else None})


def default_name(lane_names: Sequence[str], pipeline: bool = False) -> str:
    """A result's name where the call gave none: its lanes, side by side or in the order they hand over.
    The plugin predicts it (to find a saved result's limits) and the table leaves it out of the label."""
    return (" -> " if pipeline else "+").join(lane_names)


@dataclass(frozen=True)
class DualResult:
    """Everything measured in one ``dual_infer`` call. Times are seconds per iteration. Frozen: what a
    call measured is read, and a copy without its tensors is made for reports, never changed in place."""

    name: str
    device: str
    device_name: str
    mode: str
    requested_mode: str
    lanes: list[LaneResult]
    sequential: Measurement
    concurrent: Measurement
    speedup: float
    speedup_ci: tuple[float, float]
    ideal_speedup: float
    efficiency: float | None
    overlap: float
    correct: bool
    max_abs_err: float
    max_rel_err: float
    mismatches: list[str] = field(default_factory=list)
    input_writes: list[str] = field(default_factory=list)  # lanes that change their own inputs
    uncomparable: list[str] = field(default_factory=list)  # output parts with nothing to compare
    without_tensors: list[str] = field(default_factory=list)  # lanes whose outputs hold no tensor
    efficiency_ci: tuple[float, float] | None = None
    efficiency_rounds: int | None = None  # rounds with an efficiency (some have no gain to measure)
    kernel_overlap: float | None = None
    memory: MemoryStats | None = None
    eager_sequential: Measurement | None = None
    sync: SyncStats = field(default_factory=SyncStats)
    modes: list[ModeProbe] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rounds: int = 0
    reps: int = 1
    lock_wait: float = 0.0
    micro_batches: int | None = None
    # A pipeline's micro-batch latency end to end: back to back ("alone") and pipelined ("at_once").
    pipeline_latency: Latency | None = None
    hint: str | None = None  # why the lanes did not overlap, when they did not
    # The GPU's clocks, temperature, power and throttle reasons at the start and the end of the measured
    # rounds ("start", "end"), where NVML is available; None on CPU and without NVML.
    gpu_state: dict[str, GpuState] | None = None
    # Whether the figures are physically possible and steady; ``problems`` says why not. No verdict passes
    # on an unreliable result.
    reliable: bool = True
    problems: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    stop: str = ""  # why measuring stopped: precise, decided, undecidable, budget, max budget, deadline
    warmup_seconds: float = 0.0
    measuring_seconds: float = 0.0
    dropped_rounds: int = 0  # rounds measured before the lanes had settled, left out
    # The last round's busy intervals of each lane (its first repetitions), for traces; overlap used all.
    timelines: dict[str, list[LaneTimeline]] = field(default_factory=dict)
    outputs: list[Any] | None = field(default=None, repr=False, compare=False)
    reference: list[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def lane_names(self) -> list[str]:
        return [lane.name for lane in self.lanes]

    def for_report(self) -> DualResult:
        """The result without the outputs it keeps, which stay on the device: what a report holds."""
        return dataclasses.replace(self, outputs=None, reference=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: plain numbers, strings, lists and dicts; no tensors."""
        return {
            "name": self.name,
            "device": self.device,
            "device_name": self.device_name,
            "mode": self.mode,
            "requested_mode": self.requested_mode,
            "lanes": [lane.to_dict() for lane in self.lanes],
            "sequential": self.sequential.to_dict(),
            "concurrent": self.concurrent.to_dict(),
            "eager_sequential": self.eager_sequential.to_dict() if self.eager_sequential else None,
            "speedup": self.speedup,
            "speedup_ci": list(self.speedup_ci),
            "ideal_speedup": self.ideal_speedup,
            "efficiency": self.efficiency,
            "efficiency_ci": list(self.efficiency_ci) if self.efficiency_ci else None,
            "efficiency_rounds": self.efficiency_rounds,
            "overlap": self.overlap,
            "kernel_overlap": self.kernel_overlap,
            "memory": self.memory.to_dict() if self.memory else None,
            "correct": self.correct,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "mismatches": list(self.mismatches),
            "input_writes": list(self.input_writes),
            "uncomparable": list(self.uncomparable),
            "without_tensors": list(self.without_tensors),
            "sync": self.sync.to_dict(),
            "modes": [probe.to_dict() for probe in self.modes],
            "warnings": list(self.warnings),
            "rounds": self.rounds,
            "reps": self.reps,
            "lock_wait": self.lock_wait,
            "micro_batches": self.micro_batches,
            "pipeline_latency": self.pipeline_latency.to_dict() if self.pipeline_latency else None,
            "hint": self.hint,
            "gpu_state": (
                {when: state.to_dict() for when, state in self.gpu_state.items()} if self.gpu_state else None
            ),
            "reliable": self.reliable,
            "problems": list(self.problems),
            "decisions": [decision.to_dict() for decision in self.decisions],
            "stop": self.stop,
            "warmup_seconds": self.warmup_seconds,
            "measuring_seconds": self.measuring_seconds,
            "dropped_rounds": self.dropped_rounds,
            "timelines": {
                run: [
                    {
                        "lane": line.lane,
                        "intervals": [list(iv) for iv in line.intervals],
                        **({"total": line.total} if line.total is not None else {}),
                    }
                    for line in lines
                ]
                for run, lines in self.timelines.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualResult:
        def measurement(key: str) -> Measurement | None:
            value = data.get(key)
            return Measurement.from_dict(value) if value else None

        sequential = measurement("sequential")
        concurrent = measurement("concurrent")
        if sequential is None or concurrent is None:
            raise ValueError("a DualResult dict needs 'sequential' and 'concurrent' measurements")
        lo, hi = data["speedup_ci"]
        return cls(
            name=data["name"],
            device=data["device"],
            device_name=data.get("device_name", ""),
            mode=data["mode"],
            requested_mode=data.get("requested_mode", data["mode"]),
            lanes=[LaneResult.from_dict(lane) for lane in data["lanes"]],
            sequential=sequential,
            concurrent=concurrent,
            eager_sequential=measurement("eager_sequential"),
            speedup=data["speedup"],
            speedup_ci=(lo, hi),
            ideal_speedup=data["ideal_speedup"],
            efficiency=data["efficiency"],
            efficiency_ci=_pair(data.get("efficiency_ci")),
            efficiency_rounds=data.get("efficiency_rounds"),
            overlap=data["overlap"],
            kernel_overlap=data.get("kernel_overlap"),
            memory=MemoryStats.from_dict(data["memory"]) if data.get("memory") else None,
            correct=data["correct"],
            max_abs_err=float(data["max_abs_err"]),
            max_rel_err=float(data["max_rel_err"]),
            mismatches=list(data.get("mismatches", [])),
            input_writes=list(data.get("input_writes", [])),
            uncomparable=list(data.get("uncomparable", [])),
            without_tensors=list(data.get("without_tensors", [])),
            sync=SyncStats.from_dict(data.get("sync", {})),
            modes=[ModeProbe.from_dict(probe) for probe in data.get("modes", [])],
            warnings=list(data.get("warnings", [])),
            rounds=data.get("rounds", 0),
            reps=data.get("reps", 1),
            lock_wait=data.get("lock_wait", 0.0),
            micro_batches=data.get("micro_batches"),
            pipeline_latency=Latency.from_dict(data["pipeline_latency"])
            if data.get("pipeline_latency")
            else None,
            hint=data.get("hint"),
            gpu_state=(
                {when: GpuState.from_dict(state) for when, state in data["gpu_state"].items()}
                if data.get("gpu_state")
                else None
            ),
            reliable=data.get("reliable", True),
            problems=list(data.get("problems", [])),
            decisions=[Decision.from_dict(decision) for decision in data.get("decisions", [])],
            stop=data.get("stop", ""),
            warmup_seconds=data.get("warmup_seconds", 0.0),
            measuring_seconds=data.get("measuring_seconds", 0.0),
            dropped_rounds=data.get("dropped_rounds", 0),
            timelines={
                run: [
                    LaneTimeline(
                        line["lane"], tuple(_interval(iv) for iv in line["intervals"]), line.get("total")
                    )
                    for line in lines
                ]
                for run, lines in data.get("timelines", {}).items()
            },
        )


def _pair(values: Sequence[float] | None) -> Interval | None:
    return None if values is None else _interval(values)


def _interval(pair: Sequence[float]) -> Interval:
    start, end = pair
    return (float(start), float(end))
