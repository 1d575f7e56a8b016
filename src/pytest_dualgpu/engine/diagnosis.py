"""Why lanes did not overlap, named from what was measured. Torch-free: results from JSON work too."""

from __future__ import annotations

from pytest_dualgpu.envsettings import troubles
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.stats import FAIL

NO_OVERLAP = 0.1


def no_overlap_hint(result: DualResult) -> str | None:
    """The likely cause when a concurrent mode overlapped less than 10%, or None when it did overlap.

    A setting that forbids overlap outright comes first; one that only distorts it is named after the
    cause found in the measurement.
    """
    if result.mode == "sequential" or result.overlap >= NO_OVERLAP:
        return None
    settings = troubles(result.device.split(":")[0])
    forbidding = [finding for finding in settings if finding.status == FAIL]
    if forbidding:
        return "; ".join(f"{item.shown} is set: {item.detail} ({item.fix})" for item in forbidding)
    hint = _measured_cause(result)
    if settings:
        named = "; ".join(f"{finding.shown} ({finding.detail})" for finding in settings)
        return f"{hint}; also set: {named}"
    return hint


def _measured_cause(result: DualResult) -> str:
    if result.micro_batches == 1:
        return "a pipeline of one micro-batch cannot overlap: the consumer waits for the whole batch"
    syncs = result.sync.implicit_syncs
    if syncs:
        first = syncs[0]
        return (
            f"host syncs inside the lanes stall the others: lane {first.get('lane')!r} at "
            f"{first.get('where')} ({first.get('call')}); keep .item(), .cpu() and nonzero out of forward"
        )
    saturating = _saturating_lane(result)
    on_gpu = result.device.startswith("cuda")
    if saturating is not None and on_gpu:
        return (
            f"lane {saturating!r} alone already fills the GPU: in the concurrent run it took as long as "
            "alone and the other lanes waited; smaller batches, or models that leave room, can overlap"
        )
    if not on_gpu:
        return "a lane holds the GIL (Python-level work between operators), so the lane threads took turns"
    if result.mode == "streams":
        return (
            "one thread issued every lane (streams mode): kernels this short finish before the next lane's "
            "are launched (launch-bound); try mode='threads' or 'graphs'"
        )
    return (
        "all lanes ran on one stream: a lane may pick its own stream (torch.cuda.stream, default_stream) or "
        "synchronize the device inside forward"
    )


def _saturating_lane(result: DualResult) -> str | None:
    """A lane whose repetitions in the concurrent run were no slower than alone: nothing shared its GPU."""
    if result.micro_batches is not None:
        return None  # a pipeline stage marks one interval per micro-batch, not per repetition
    for line in result.timelines.get("concurrent", []):
        lane = next((lane for lane in result.lanes if lane.name == line.lane), None)
        if lane is None or not line.intervals or lane.alone.median <= 0:
            continue
        mean = sum(end - start for start, end in line.intervals) / len(line.intervals)
        if 0.8 <= mean / lane.alone.median <= 1.25 and lane.alone.median == max(
            other.alone.median for other in result.lanes
        ):
            return lane.name
    return None
