"""The execution modes: how a set of lanes is run back to back, and how it is run at once.

Back-to-back runs (the sequential run, each lane alone) and the ``streams`` and ``graphs`` modes issue
from the caller's own thread, as the user's code would; only ``threads`` hands lanes to persistent worker
threads. The one exception is a lane's first call: until a lane has returned once, its back-to-back runs go
to a guard thread that the caller waits for at most ``timeout``, so a lane that hangs from the start raises
``LaneTimeoutError`` instead of holding the caller forever.
The caller's thread matters on CPU too: with libgomp, a second thread that opens an OpenMP team while the
first still has one makes both throttle their spinning, which slowed a 2-core matmul back to back by ~11% on a
worker thread (torch 2.13). Each run is timed from the caller's clock, so hand-offs count where they occur.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait as wait_futures
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_dualgpu.engine.backends import Backend, Stamps, own_graph_trees
from pytest_dualgpu.engine.trees import map_tensors
from pytest_dualgpu.engine.workers import Worker, abandon
from pytest_dualgpu.errors import HandOffStopped, LaneError, LaneExit, LaneTimeoutError, described
from pytest_dualgpu.timeline import Interval


@dataclass
class Lane:
    """One model and its (already placed) arguments."""

    name: str
    model: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        return self.model(*self.args, **self.kwargs)


@dataclass
class Run:
    """One run of some lanes: seconds per repetition, each lane's busy intervals and call ends, and the
    last outputs."""

    indices: list[int]  # which lanes ran (the executor's), in the order of the lists below
    elapsed: float
    wall: float
    intervals: list[list[Interval]]
    outputs: list[Any]
    call_ends: list[list[float]] = field(default_factory=list)


@dataclass
class _Outcome:
    stamps: Stamps = field(default_factory=list)
    ends: list[Any] = field(default_factory=list)
    output: Any = None
    error: BaseException | None = None
    done: bool = False
    waiting: bool = False  # blocked on another lane (a pipeline hand-over), so not hung itself


class _Current(threading.local):
    outcome: _Outcome | None = None


_current = _Current()
#: After a timeout, how long the lanes still running get to finish: one the hung lane starved (of the
#: GIL, of the cores) may be a moment from done, and it is not to be named.
LATE_GRACE_SECONDS = 1.0


@contextmanager
def waiting_for_another_lane() -> Iterator[None]:
    """Inside a lane's call: it is blocked on another lane, so a timeout names that one, not this."""
    outcome = _current.outcome
    if outcome is not None:
        outcome.waiting = True
    try:
        yield
    finally:
        if outcome is not None:
            outcome.waiting = False


class Executor:
    """Runs lanes back to back or at once, and owns the lane threads of one call."""

    def __init__(self, backend: Backend, lanes: Sequence[Lane], timeout: float) -> None:
        self.backend = backend
        self.lanes = list(lanes)
        self.timeout = timeout
        self.broken = False
        self.proven: set[int] = set()
        self.lane_workers = [
            Worker(f"dualgpu-lane-{index}", backend.worker_setup()) for index in range(len(lanes))
        ]
        self.guard: Worker | None = Worker("dualgpu-first-calls", backend.guard_setup())
        self._guarding: str | None = None

    def close(self) -> None:
        """Stop the threads; after a timeout they may be stuck in user code and are left behind (and
        remembered, so the next measurements can say so)."""
        grace = 0.0 if self.broken else 5.0
        if self.broken:
            for index, worker in enumerate(self.lane_workers):
                abandon(self.lanes[index].name, worker)
            if self._guarding is not None and self.guard is not None:
                abandon(self._guarding, self.guard)
        for worker in self.lane_workers:
            worker.stop(grace)
        self._end_guard(grace)
        self.backend.restore()

    def _end_guard(self, grace: float) -> None:
        """Stop the guard thread once no lane needs it. Its end matters on CPU: with libgomp, every thread
        that ran a parallel region keeps a thread team, and with more teams than cores all of them spin
        less and wake slower (the caller's 2-thread operators ran ~15% slower while it lived)."""
        if self.guard is not None:
            self.guard.stop(grace)
            self.guard = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.broken = True  # Ctrl-C: whoever waits for the process must not wait for lanes too
        self.close()

    def sequential(
        self, lanes: Sequence[int], reps: int, calls: Sequence[Callable[[], Any]], run: str
    ) -> Run:
        """Lanes back to back on the caller's thread and stream: the sequential run (and the alone runs).

        Lanes that have not yet returned once run on the guard thread instead, under the timeout.
        """
        outcomes = {index: _Outcome() for index in lanes}
        self.backend.prepare(2 * reps * len(lanes))

        def back_to_back() -> Any:
            origin = self.backend.begin()
            with self.backend.lane_scope(None), torch.no_grad():
                for index in lanes:
                    _repeat(self.backend, calls[index], reps, outcomes[index])
            return origin

        unproven = [index for index in lanes if index not in self.proven]
        if unproven:
            autocast = inherited_autocast(self.backend.device.type)

            def guarded() -> Any:
                with autocast():
                    return back_to_back()

            origin = self._guarded(guarded, lambda: _stuck(self.lanes, lanes, outcomes), run)
        else:
            origin = back_to_back()
        result = self._finish(origin, lanes, [], outcomes, reps, run)
        self.proven.update(lanes)
        if len(self.proven) == len(self.lanes):
            self._end_guard(5.0)
        return result

    def guarded_call(self, call: Callable[[], Any], lane: int, run: str) -> Any:
        """Run ``call`` (a lane's first piece of work outside a measured run) under the timeout, on the
        caller's stream and with the caller's autocast, as the caller would have run it."""
        autocast = inherited_autocast(self.backend.device.type)

        def as_the_caller() -> Any:
            with self.backend.lane_scope(None), autocast():
                return call()

        return self._guarded(as_the_caller, lambda: self.lanes[lane].name, run)

    def _guarded(self, call: Callable[[], Any], stuck: Callable[[], str], run: str) -> Any:
        self._guarding = None
        if self.guard is None:
            self.guard = Worker("dualgpu-first-calls", self.backend.guard_setup())
        future = self.guard.submit(call)
        done, _ = wait_futures([future], timeout=self.timeout)
        if not done:
            self.broken = True
            self._guarding = stuck()
            raise LaneTimeoutError([self._guarding], run, self.timeout)
        try:
            return future.result()
        except (SystemExit, KeyboardInterrupt) as error:  # the model's own: the guard thread gets no Ctrl-C
            raise LaneExit(error) from error

    def streams(self, reps: int, calls: Sequence[Callable[[], Any]], run: str) -> Run:
        """Every lane on its own stream, issued round-robin from the caller's thread."""
        lanes = list(range(len(self.lanes)))
        outcomes = {index: _Outcome() for index in lanes}
        self.backend.prepare(2 * reps * len(lanes))
        origin = self.backend.begin()
        for index in lanes:
            self.backend.fork(index, origin)
        with torch.no_grad():
            for _ in range(reps):
                for index in lanes:
                    if outcomes[index].error is None:
                        with self.backend.lane_scope(index):
                            _repeat(self.backend, calls[index], 1, outcomes[index])
        return self._finish(origin, lanes, lanes, outcomes, reps, run)

    def threads(
        self, reps: int, calls: Sequence[Callable[[], Any]], run: str, lanes: Sequence[int] | None = None
    ) -> Run:
        """Every lane (or those named) on its own persistent thread, which issues to the lane's own stream."""
        lanes = list(range(len(self.lanes))) if lanes is None else list(lanes)
        outcomes = {index: _Outcome() for index in lanes}
        backend = self.backend
        autocast = inherited_autocast(backend.device.type)

        def task(index: int) -> Callable[[], None]:
            def issue() -> None:
                backend.fork(index, origin)
                with backend.lane_scope(index), torch.no_grad(), autocast():
                    _repeat(backend, calls[index], reps, outcomes[index])

            return issue

        backend.prepare(2 * reps * len(lanes))
        origin = backend.begin()
        futures = {self.lane_workers[index].submit(task(index)): index for index in lanes}
        done, pending = wait_futures(futures, timeout=self.timeout)
        if pending:
            _, pending = wait_futures(pending, timeout=min(LATE_GRACE_SECONDS, self.timeout))
        if pending:
            self.broken = True
            running = [futures[future] for future in pending]
            hung = [index for index in running if not outcomes[index].waiting] or running
            raise LaneTimeoutError([self.lanes[index].name for index in sorted(hung)], run, self.timeout)
        for future in done:
            future.result()
        return self._finish(origin, lanes, lanes, outcomes, reps, run)

    def _finish(
        self,
        origin: Any,
        lanes: Sequence[int],
        streams_used: Sequence[int],
        outcomes: dict[int, _Outcome],
        reps: int,
        run: str,
    ) -> Run:
        failed = [index for index in lanes if outcomes[index].error is not None]
        # A pipeline stage that only stopped because the other one failed is not the story.
        failed.sort(key=lambda index: isinstance(outcomes[index].error, HandOffStopped))
        if failed:
            error = outcomes[failed[0]].error
            assert error is not None
            raise LaneError(self.lanes[failed[0]].name, run, error) from error
        timing = self.backend.finish(
            origin,
            streams_used,
            [outcomes[index].stamps for index in lanes],
            [outcomes[index].ends for index in lanes],
        )
        outputs = [outcomes[index].output for index in lanes]
        self.backend.protect(outputs)
        return Run(
            indices=list(lanes),
            elapsed=timing.elapsed / reps,
            wall=timing.wall / reps,
            intervals=timing.intervals,
            outputs=outputs,
            call_ends=timing.call_ends,
        )


def _stuck(lanes: Sequence[Lane], indices: Sequence[int], outcomes: dict[int, _Outcome]) -> str:
    """The lane a back-to-back run was in when it ran out of time: the first one not done."""
    pending = [index for index in indices if not outcomes[index].done]
    return lanes[pending[0] if pending else indices[-1]].name


def inherited_autocast(device_type: str) -> Callable[[], AbstractContextManager[Any]]:
    """The calling thread's autocast state, to re-enter in lane threads (autocast is per thread)."""
    if not torch.is_autocast_enabled(device_type):
        return nullcontext
    return functools.partial(torch.autocast, device_type, dtype=torch.get_autocast_dtype(device_type))


class _BusyStamps(threading.local):
    backend: Backend | None = None
    stamps: Stamps | None = None


_busy = _BusyStamps()


@contextmanager
def busy() -> Iterator[None]:
    """Inside a lane's call: mark a stretch of real work, so time spent waiting for input is not busy.

    A call that marks none is busy from its start to its end.
    """
    backend, stamps = _busy.backend, _busy.stamps
    if backend is None or stamps is None:
        yield
        return
    start = backend.stamp()
    yield
    stamps.append((start, backend.stamp()))


def _repeat(backend: Backend, call: Callable[[], Any], reps: int, outcome: _Outcome) -> None:
    _current.outcome = outcome
    try:
        for _ in range(reps):
            marked: Stamps = []
            _busy.backend, _busy.stamps = backend, marked
            start = backend.stamp()
            outcome.output = call()
            end = backend.stamp()
            if marked:
                backend.discard(start)
            outcome.stamps.extend(marked or [(start, end)])
            outcome.ends.append(end)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise  # a real Ctrl-C: only the main thread receives one
        # On a lane thread a KeyboardInterrupt, like a SystemExit anywhere, came from the model's own code:
        # it fails this lane, not the session.
        outcome.error = error
        outcome.output = None
    finally:
        _busy.backend = _busy.stamps = None
        _current.outcome = None
        outcome.done = True


class Mode:
    """An execution mode: which calls the lanes make (eager or graph replays) and how they run at once."""

    name = "sequential"
    static_outputs = False

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.calls: list[Callable[[], Any]] = list(executor.lanes)

    def back_to_back(self, lanes: Sequence[int], reps: int, run: str = "sequential run") -> Run:
        return self.executor.sequential(lanes, reps, self.calls, run)

    def concurrent(self, reps: int) -> Run:
        return self.back_to_back(range(len(self.calls)), reps, f"concurrent run ({self.name})")

    def close(self) -> None:
        self.calls.clear()


class StreamsMode(Mode):
    name = "streams"

    def concurrent(self, reps: int) -> Run:
        return self.executor.streams(reps, self.calls, f"concurrent run ({self.name})")


class ThreadsMode(Mode):
    name = "threads"

    #: Each lane's first calls on its own thread, made one lane at a time on CUDA.
    FIRST_CALLS = 2

    def __init__(self, executor: Executor) -> None:
        """On CUDA, per-thread state is made before lanes run at once, and never by two lanes at once: a
        cuBLAS handle and workspace per thread and stream, and the CUDA graph trees of a model compiled
        with ``mode="reduce-overhead"`` (recorded on its second call; older torch does not keep two
        threads' recordings apart)."""
        super().__init__(executor)
        if executor.backend.kind != "cuda":
            return
        first = [_after(own_graph_trees, call) for call in self.calls]
        for index, lane in enumerate(executor.lanes):
            run = f"first calls of lane {lane.name!r} on its thread"
            executor.threads(self.FIRST_CALLS, first, run, [index])

    def concurrent(self, reps: int) -> Run:
        return self.executor.threads(reps, self.calls, f"concurrent run ({self.name})")


class GraphsMode(StreamsMode):
    """Each lane captured once as a CUDA graph; the sequential run replays them back to back."""

    name = "graphs"
    static_outputs = True

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.static: list[Any] = []
        replays: list[Callable[[], Any]] = []
        for index, lane in enumerate(executor.lanes):
            try:
                replay, outputs = executor.backend.capture(index, lane)
            except Exception as error:
                raise GraphCaptureError(lane.name, error) from error
            self.static.append(outputs)
            replays.append(_returning(replay, outputs))
        self.calls = replays

    def close(self) -> None:
        super().close()
        self.static.clear()


class GraphCaptureError(Exception):
    """Why a lane could not run as a CUDA graph; the call falls back to ``threads``."""

    def __init__(self, lane: str, error: BaseException) -> None:
        # Ending a broken capture raises again; the first error in the chain is the one that explains it.
        while error.__context__ is not None:
            error = error.__context__
        self.reason = f"graph capture of lane {lane!r} failed: {described(error)}"
        super().__init__(self.reason)


def _after(first: Callable[[], None], call: Callable[[], Any]) -> Callable[[], Any]:
    def both() -> Any:
        first()
        return call()

    return both


def kept(output: Any) -> Any:
    """An output to keep past the next call, so a copy: a graph replay overwrites its outputs on its next
    run, and so does a model compiled with ``mode="reduce-overhead"`` on the next run of any graph of its
    thread's CUDA graph trees."""
    return map_tensors(output, torch.Tensor.clone)


def copying(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call``, whose output is ``kept`` the moment it returns, on the lane's own stream: the next run of
    a graph tree can be the other lane's call, so outputs read after a run of every lane must be taken
    as each lane returns them."""

    def copied() -> Any:
        return kept(call())

    return copied


def _returning(replay: Callable[[], None], outputs: Any) -> Callable[[], Any]:
    def call() -> Any:
        replay()
        return outputs

    return call


MODE_CLASSES: dict[str, type[Mode]] = {
    "sequential": Mode,
    "streams": StreamsMode,
    "threads": ThreadsMode,
    "graphs": GraphsMode,
}
