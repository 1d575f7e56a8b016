"""Chrome traces of a result's busy intervals, and the file names every per-result file shares.

Torch-free, like the rest of the reports: a trace is written from the timelines a result carries, in the
controller process that writes the other files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_dualgpu.timeline import LaneTimeline, overlap


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
