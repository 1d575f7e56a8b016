"""The last phase of a call (``call.py``): what each phase found, made into one ``DualResult``, then judged:
checked for figures that cannot be true (``sanity.py``), its bounds decided, and why lanes did not
overlap named. The figures are built once from the findings; the judgement reads them and is added in
one copy (``DualResult`` is frozen: nothing changes a result in place)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import Bound, final_status
from pytest_dualgpu.engine.checks import Checks
from pytest_dualgpu.engine.compare import compare_lanes
from pytest_dualgpu.engine.devices import device_name
from pytest_dualgpu.engine.diagnosis import no_overlap_hint
from pytest_dualgpu.engine.measure import Measured, Samples, measuring_notes
from pytest_dualgpu.engine.parts import CallParts
from pytest_dualgpu.engine.sanity import assess
from pytest_dualgpu.engine.stopping import per_round_efficiencies
from pytest_dualgpu.latency import Latency, LatencyStats
from pytest_dualgpu.modes import MODES
from pytest_dualgpu.results import Decision, DualResult, LaneResult, Measurement, ModeProbe, WarmUp
from pytest_dualgpu.timeline import LaneTimeline

TIMELINE_REPS = 50  # intervals kept per lane: enough to draw, small enough to travel in every report


@dataclass(frozen=True)
class Findings:
    """What the phases of one call found: the warm-up, the probes, the rounds and the checks after them."""

    name: str
    mode: str
    measured: Measured
    lane_warmups: list[WarmUp]
    mode_warmups: dict[str, WarmUp]
    probes: dict[str, ModeProbe]
    input_writes: list[str]
    checks: Checks
    warnings: list[str]
    lock_wait: float
    warmup_seconds: float
    measuring_seconds: float


def build_result(parts: CallParts, found: Findings) -> DualResult:
    """The call's result, built once from what each phase found."""
    name, mode_name, measured, checks = found.name, found.mode, found.measured, found.checks
    settings, arrangement, backend = parts.settings, parts.arrangement, parts.backend
    samples = measured.samples
    profile = checks.profile

    def measurement(variant: str) -> Measurement:
        return Measurement.from_samples(samples.elapsed[variant], samples.wall[variant])

    lanes = [
        LaneResult(
            lane,
            measurement(f"alone:{index}"),
            found.lane_warmups[index],
            _latency(samples, index),
            "high" if parts.high[index] else "normal",
            in_training_mode(parts.lanes[index].model),
        )
        for index, lane in enumerate(parts.names)
    ]
    sequential, concurrent = measurement("sequential"), measurement("concurrent")
    ratios = stats.paired_ratios(samples.elapsed["sequential"], samples.elapsed["concurrent"])
    alone = [lane.alone.median for lane in lanes]
    efficiencies = per_round_efficiencies(samples, len(lanes), arrangement.best_time)
    comparison = compare_lanes(parts.names, checks.reference, checks.outputs, settings.tolerance)
    chosen = ModeProbe.from_rounds(
        mode_name,
        samples.elapsed["sequential"],
        samples.elapsed["concurrent"],
        warmup=found.mode_warmups.get(mode_name),
        chosen=True,
    )
    probes = {**found.probes, mode_name: chosen}
    notes = measuring_notes(
        measured,
        (sequential, concurrent),
        min_rounds=settings.min_rounds,
        cap=settings.measuring_cap,
        settle=parts.settle,
    )
    return DualResult(
        name=name,
        device=str(backend.device),
        device_name=device_name(backend.device),
        mode=mode_name,
        requested_mode=settings.mode,
        lanes=lanes,
        sequential=sequential,
        concurrent=concurrent,
        eager_sequential=measurement("eager sequential") if "eager sequential" in samples.elapsed else None,
        speedup=stats.median(ratios),
        speedup_ci=stats.median_ci(ratios),
        ideal_speedup=sum(alone) / arrangement.best_time(alone) if max(alone) > 0 else 1.0,
        efficiency=stats.median(efficiencies) if efficiencies else None,
        efficiency_ci=stats.median_ci(efficiencies) if efficiencies else None,
        efficiency_rounds=len(efficiencies),
        micro_batches=arrangement.micro_batches,
        pipeline_latency=arrangement.latency(samples, mode_name),
        overlap=stats.median(samples.overlaps["concurrent"]),
        correct=comparison.correct and not found.input_writes,
        max_abs_err=comparison.max_abs_err,
        max_rel_err=comparison.max_rel_err,
        mismatches=[*found.input_writes, *comparison.mismatches],
        input_writes=found.input_writes,
        uncomparable=comparison.uncomparable,
        without_tensors=comparison.without_tensors,
        memory=checks.memory,
        modes=[probes[mode] for mode in MODES if mode in probes],
        warnings=[*found.warnings, *notes, *(profile.warnings if profile is not None else [])],
        rounds=samples.rounds,
        reps=measured.reps,
        lock_wait=found.lock_wait,
        stop=measured.stop,
        warmup_seconds=found.warmup_seconds,
        measuring_seconds=found.measuring_seconds,
        dropped_rounds=measured.dropped,
        timelines={
            run: [
                LaneTimeline(parts.names[index], tuple(intervals)).capped(TIMELINE_REPS)
                for index, intervals in zip(
                    samples.last[run].indices, samples.last[run].intervals, strict=True
                )
            ]
            for run in ("sequential", "concurrent")
        }
        | ({"kernels": profile.tracks} if profile is not None else {}),
        kernel_overlap=profile.kernel_overlap if profile is not None else None,
        sync=checks.sync,
        gpu_state=checks.gpu_state,
        outputs=checks.outputs,
        reference=checks.reference,
    )


def judged(result: DualResult, bounds: Sequence[Bound]) -> DualResult:
    """The measured figures with their judgement: checked for figures that cannot be true, the bounds
    decided (none passes on an unreliable result), and why the lanes did not overlap. The judgement only
    reads the figures, so it is added in one copy of them; nothing is changed in place."""
    found = assess(result)
    reliable = not found.problems
    decisions = []
    for bound in bounds:
        status, figure = final_status(bound, result, reliable)
        slowdown = bound.metric == "slowdown"
        decisions.append(
            Decision(
                bound.metric,
                bound.value,
                status,
                None if figure is None else figure.interval,
                bound.lane if slowdown else None,
                bound.percentile if slowdown else None,
            )
        )
    return dataclasses.replace(
        result,
        reliable=reliable,
        problems=found.problems,
        warnings=[*result.warnings, *found.warnings],
        decisions=decisions,
        hint=no_overlap_hint(result),
    )


def _latency(samples: Samples, index: int) -> Latency | None:
    """Lane ``index``'s per-call latency alone (its alone runs) and at once (its part of the concurrent
    runs), over every measured round."""
    alone = samples.lane_latencies(f"alone:{index}", 0)
    at_once = samples.lane_latencies("concurrent", index)
    if not alone or not at_once:
        return None
    return Latency(LatencyStats.from_latencies(alone), LatencyStats.from_latencies(at_once))


def in_training_mode(model: Any) -> bool:
    """A module with a part that behaves differently in training (dropout draws, batch statistics) and
    is in training mode: its outputs differ from call to call, concurrency or not."""
    if not isinstance(model, torch.nn.Module):
        return False
    stochastic = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    return any(module.training and isinstance(module, stochastic) for module in model.modules())
