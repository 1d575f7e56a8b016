"""Steady-state warm-up: run a lane (or a mode's concurrent run) until its time per call stops changing.

A fixed count of warm-up calls is right for one model and wrong for the next: lazy initialisation, the
allocator's and autotuners' caches and a GPU's clocks take from one call to a second or more. As in
criterion and triton's ``do_bench`` the calls run in blocks long enough for the clock (``BLOCK_SECONDS``);
as in pyperf's warm-up calibration, two stretches of blocks are compared, and the warm-up has converged
when their median times per call agree within ``TOLERANCE``, either way (still getting faster, or slower),
and together they show no monotone trend (a ramp too gentle for two stretches to differ yet).

Unlike a fixed window, the two stretches are the last two quarters of the warm-up so far: the stretch
examined grows with the warm-up, so a slow phase of any length L is seen as a change, and the warm-up
ends about 1.6 L later (medians: once most of the older stretch is past it). Each stretch needs
``WINDOW`` blocks of one size, and the whole takes at least the backend's minimum, at most its share of
the call's cap (``warmup=``). A lane that is slow and flat for a while and then suddenly faster cannot be
told from a steady one until the change comes; if it comes during the measured rounds, those before it
are dropped (``measure.py``). Torch-free: blocks run through a callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_dualgpu import stats
from pytest_dualgpu.results import WarmUp

BLOCK_SECONDS = 0.005
WINDOW = 3
TOLERANCE = 0.05
LONG_STRETCH = 0.1
#: A monotone trend over the last half (Mann-Kendall at 1%, moving it by 0.5% or more) also means "not yet".
TREND_ALPHA = 0.01
TREND_MIN_CHANGE = 0.005
MAX_BLOCK_CALLS = 10_000


def warm_up(run_block: Callable[[int], float], *, deadline: float, min_seconds: float) -> WarmUp:
    """Warm up until converged or ``deadline`` (a ``time.perf_counter`` value); ``run_block(n)`` makes n
    calls and returns the seconds per call. At least one block runs, whatever the deadline."""
    start = time.perf_counter()
    blocks: list[_Block] = []
    calls = 0
    size = 1
    while True:
        seconds = run_block(size)
        calls += size
        now = time.perf_counter()
        blocks.append(_Block(now - start, seconds, size))
        steady = _steady(blocks, now - start)
        if steady is not None and now - start >= min_seconds:
            return WarmUp(now - start, calls, True, steady)
        if now >= deadline:
            return WarmUp(
                now - start, calls, False, stats.median([block.per_call for block in blocks[-WINDOW:]])
            )
        if seconds * size < BLOCK_SECONDS:
            size = min(MAX_BLOCK_CALLS, max(size * 2, math.ceil(BLOCK_SECONDS / max(seconds, 1e-9))))


@dataclass(frozen=True)
class _Block:
    ended: float  # seconds into the warm-up
    per_call: float
    size: int


def _steady(blocks: list[_Block], elapsed: float) -> float | None:
    """The steady time per call, once the third and the last quarter of the warm-up agree."""
    earlier = [block for block in blocks if elapsed / 2 < block.ended <= 3 * elapsed / 4]
    later = [block for block in blocks if block.ended > 3 * elapsed / 4]
    if not (_enough(earlier) and _enough(later)) or len({block.size for block in earlier + later}) != 1:
        return None
    before = stats.median([block.per_call for block in earlier])
    now = stats.median([block.per_call for block in later])
    if abs(now - before) > TOLERANCE * now:
        return None
    moving = stats.trend([block.per_call for block in earlier + later])
    if moving is not None and moving.significant(TREND_ALPHA, TREND_MIN_CHANGE):
        return None  # a slow ramp: too gentle for the quarters to differ yet, but going one way
    return now


def unsettled_warning(what: str, warmup: WarmUp, cap: float) -> str:
    return (
        f"{what} did not settle in its share of the warm-up ({warmup.seconds:.2f} s, {warmup.calls} calls, "
        f"of warmup={cap:g} s for the call): its time per call still moved by more than "
        f"{TOLERANCE:.0%}; the figures may include its warm-up; raise warmup= (--dualgpu-warmup)"
    )


def _enough(stretch: list[_Block]) -> bool:
    """``WINDOW`` blocks, or two of calls so long (a stretch of ``LONG_STRETCH`` s) that each averages
    out its own noise."""
    if len(stretch) >= WINDOW:
        return True
    return len(stretch) >= 2 and sum(block.per_call * block.size for block in stretch) >= LONG_STRETCH


class WarmUpClock:
    """Shares the warm-up cap between the stages of a call (each lane, then each mode): a stage may use
    what is left of it, less a reserve for each stage still to come (what a quick stage needs, at most a
    fair share), so one slow lane can take most of the cap and the later ones still get their turn."""

    RESERVE_SECONDS = 0.25

    def __init__(self, cap: float, stages: int) -> None:
        self.deadline = time.perf_counter() + cap
        self.stages_left = max(1, stages)
        self.reserve = min(self.RESERVE_SECONDS, cap / max(1, stages))

    def next_deadline(self) -> float:
        self.stages_left = max(0, self.stages_left - 1)
        return max(time.perf_counter(), self.deadline - self.reserve * self.stages_left)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` out of the cap (a lane's first call: compiling is not warming up)."""
        self.deadline += seconds

    def add_stages(self, count: int) -> None:
        self.stages_left += count
