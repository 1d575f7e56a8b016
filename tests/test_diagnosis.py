"""Naming why lanes did not overlap, from what was measured."""

from __future__ import annotations

import torch
from models import GilLane, SleepLane, TurnLane

from pytest_dualgpu import DualResult, dual_infer
from pytest_dualgpu.engine.diagnosis import no_overlap_hint
from pytest_dualgpu.timeline import LaneTimeline

#: Pairs of like sleeping, GIL-holding or turn-taking lanes: nothing to warm up, and nothing the settling
#: pauses guard against (OpenMP workers, or a GIL-holding lane beside a nearly free one).
FAST = {"budget": 0.1, "max_budget": 3, "warmup": 0, "settle": 0}


def test_lanes_that_hold_the_gil_get_a_hint_and_overlapping_lanes_none() -> None:
    serial = dual_infer(GilLane(0.002), GilLane(0.002), torch.ones(2), mode="threads", **FAST)
    assert serial.overlap < 0.1
    assert serial.hint is not None
    assert "holds the GIL" in serial.hint
    assert dual_infer(SleepLane(0.002), SleepLane(0.002), torch.ones(2), **FAST).hint is None
    assert dual_infer(GilLane(0.002), GilLane(0.002), torch.ones(2), mode="sequential", **FAST).hint is None


def on_gpu(result: DualResult, **changes: object) -> DualResult:
    """A measured result as if it came from a GPU run: the hint reads only these fields."""
    return DualResult.from_dict({**result.to_dict(), "device": "cuda:0", **changes})


def test_each_cause_is_named_from_the_measurement() -> None:
    # Lanes that take strict turns on a lock: no overlap whatever the machine's load (GIL turns drift).
    measured = dual_infer(TurnLane(0.002), TurnLane(0.002), torch.ones(2), mode="threads", **FAST)
    slow, fast = (lane.alone.median for lane in measured.lanes)
    busiest = "TurnLane" if slow >= fast else "TurnLane-2"
    took_as_long = {
        "concurrent": [
            {"lane": busiest, "intervals": [[0.0, max(slow, fast)]]},
            {"lane": "TurnLane-2" if busiest == "TurnLane" else "TurnLane", "intervals": [[1.0, 1.001]]},
        ]
    }
    saturated = no_overlap_hint(on_gpu(measured, timelines=took_as_long))
    assert saturated is not None
    assert saturated.startswith(f"lane {busiest!r} alone already fills the GPU")
    syncs = [{"lane": "TurnLane", "where": "model.py:12", "call": "x.item()"}]
    synced = no_overlap_hint(on_gpu(measured, sync={"implicit_syncs": syncs}))
    assert synced == (
        "host syncs inside the lanes stall the others: lane 'TurnLane' at model.py:12 (x.item()); keep "
        ".item(), .cpu() and nonzero out of forward"
    )
    one_thread = no_overlap_hint(on_gpu(measured, mode="streams", timelines={}))
    assert one_thread is not None
    assert "launch-bound" in one_thread
    threads = no_overlap_hint(on_gpu(measured, mode="threads", timelines={}))
    assert threads is not None
    assert threads.startswith("all lanes ran on one stream")
    assert isinstance(measured.timelines["concurrent"][0], LaneTimeline)
