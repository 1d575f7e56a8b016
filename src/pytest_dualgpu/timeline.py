"""Busy intervals of lanes, and how much of them ran at the same time.

A lane's timeline is a list of ``(start, end)`` intervals in seconds, one per repetition of its model,
measured from a common origin (CUDA events on the lane's stream, or ``perf_counter`` in the lane's
thread). Per-repetition intervals rather than one envelope per lane matter: two lanes whose repetitions
merely alternate have envelopes that coincide, yet no two intervals of theirs ever overlap.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Interval = tuple[float, float]


def union_length(intervals: Iterable[Interval]) -> float:
    """Total time covered by at least one interval."""
    total = 0.0
    current_start: float | None = None
    current_end = 0.0
    for start, end in sorted(intervals):
        if current_start is None or start > current_end:
            if current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_start is not None:
        total += current_end - current_start
    return total


def overlap(lanes: Sequence[Sequence[Interval]]) -> float:
    """(sum of lane busy times - their union) / (sum - longest): 0 one after the other, 1 fully at once."""
    busy = [union_length(intervals) for intervals in lanes]
    total = sum(busy)
    span = total - max(busy, default=0.0)
    if span <= 0.0:
        return 0.0
    shared = total - union_length(interval for intervals in lanes for interval in intervals)
    return min(1.0, max(0.0, shared / span))


@dataclass(frozen=True)
class LaneTimeline:
    """One lane's intervals in one run, kept for traces and for diagnosing a missing overlap; ``total`` is
    how many the lane had where only the first are kept (None: all are)."""

    lane: str
    intervals: tuple[Interval, ...]
    total: int | None = None

    def capped(self, limit: int) -> LaneTimeline:
        if len(self.intervals) <= limit:
            return self
        return LaneTimeline(self.lane, self.intervals[:limit], self.total or len(self.intervals))

    @property
    def busy(self) -> float:
        return union_length(self.intervals)

    @property
    def envelope(self) -> Interval:
        return (min(start for start, _ in self.intervals), max(end for _, end in self.intervals))


def drawn_note(run: str, lines: Sequence[LaneTimeline], micro_batches: bool = False) -> str:
    """What a run's bars are, and whether all of them are there: said on every picture and trace."""
    if run == "kernels":
        what = "each bar a busy stretch of kernels (kernels that touch are joined)"
    else:
        what = "each bar one micro-batch" if micro_batches else "each bar one call"
    cut = [line for line in lines if line.total is not None and line.total > len(line.intervals)]
    if not cut:
        return what
    drawn = max(len(line.intervals) for line in cut)
    total = max(line.total or 0 for line in cut)
    return f"{what}; only the first {drawn} of {total} per lane are drawn"


#: The runs of a result, in the order their tracks are shown, and how each is titled.
TRACE_RUNS = {
    "concurrent": "concurrent run",
    "sequential": "sequential run (back to back)",
    "kernels": "profiled concurrent run (torch.profiler)",
}


def chrome_trace(
    timelines: Mapping[str, Sequence[LaneTimeline]], title: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    """A Chrome trace (the JSON that Perfetto and chrome://tracing open): a process per run, a track per
    lane, one complete event per busy interval. Every run starts at time 0, so they line up for comparison.
    """
    events: list[dict[str, Any]] = []
    runs = [run for run in TRACE_RUNS if timelines.get(run)]
    micro_batches = bool(details.get("micro_batches"))
    for pid, run in enumerate(runs, start=1):
        label = TRACE_RUNS[run]
        if run == "concurrent":
            label = f"{title}: {label}" + (f" ({details['mode']})" if "mode" in details else "")
        label += f" - {drawn_note(run, timelines[run], micro_batches)}"
        events.append(_metadata("process_name", pid, 0, name=label))
        events.append(_metadata("process_sort_index", pid, 0, sort_index=pid))
        for tid, line in enumerate(timelines[run], start=1):
            events.append(_metadata("thread_name", pid, tid, name=line.lane))
            events.append(_metadata("thread_sort_index", pid, tid, sort_index=tid))
            for repetition, (start, end) in enumerate(line.intervals, start=1):
                events.append(
                    {
                        "name": f"{line.lane} #{repetition}",
                        "cat": run,
                        "ph": "X",
                        "pid": pid,
                        "tid": tid,
                        "ts": start * 1e6,
                        "dur": max(0.0, end - start) * 1e6,
                    }
                )
    drawn = {
        f"overlap_of_drawn_{run}": overlap([line.intervals for line in timelines[run]])
        for run in runs
        if run != "kernels"
    }
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"title": title, **details, **drawn},
    }


def _metadata(kind: str, pid: int, tid: int, **args: Any) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


def result_file_stem(nodeid: str, call: int) -> str:
    """A file name (without suffix) per (test, call) that any file system takes.

    The readable part loses characters (``/``, ``::``, brackets), so a hash of the node id keeps two
    tests whose names differ only there apart.
    """
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_.")[:100] or "result"
    return f"{readable}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}-call{call}"
