"""Synchronization checks: host syncs inside the lanes, provoked races, and PyTorch's CUDA sanitizer.

Races between lanes pass most runs, because the lanes usually finish in the same order. Race amplification
reruns the concurrent pass with random delays: at each lane's start, and before randomly chosen operators
inside the lanes (a ``TorchDispatchMode``, entered in the lane's own thread since dispatch modes are per
thread), so a consumer that does not wait for its producer reads too early, and a race inside a model's
own multi-stream code is widened too. Every trial's outputs are compared with the reference; the seed is
kept, so a failing trial can be replayed (thread scheduling still varies, so a replay is likely, not
certain, to fail the same way).
"""

from __future__ import annotations

import contextlib
import linecache
import os
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_dualgpu.engine.backends import Backend, host_syncs_in_this_thread
from pytest_dualgpu.engine.compare import compare_lanes
from pytest_dualgpu.engine.executor import Executor, Lane, copying
from pytest_dualgpu.engine.trees import iter_tensors
from pytest_dualgpu.results import SyncStats
from pytest_dualgpu.specs import SyncChecks, Tolerance

START_DELAY_SECONDS = 0.005
OPERATOR_DELAY_SECONDS = 0.002
OPERATOR_DELAY_PROBABILITY = 0.25
MAX_DELAYS_PER_LANE = 32


class DelayInjector(TorchDispatchMode):
    """Sleeps before some operators: on the CPU the lane's thread, on CUDA the lane's current stream."""

    def __init__(self, backend: Backend, rng: random.Random) -> None:
        super().__init__()
        self.backend = backend
        self.rng = rng
        self.schedule: list[tuple[int, float]] = []  # (operator number, seconds) of each delay
        self.operators = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.operators += 1
        if len(self.schedule) < MAX_DELAYS_PER_LANE and self.rng.random() < OPERATOR_DELAY_PROBABILITY:
            seconds = self.rng.uniform(0, OPERATOR_DELAY_SECONDS)
            self.schedule.append((self.operators, seconds))
            delay(self.backend, seconds)
        return func(*args, **(kwargs or {}))


def delay(backend: Backend, seconds: float) -> None:
    backend.sleep(seconds)


def delayed_calls(backend: Backend, calls: Sequence[Callable[[], Any]], seed: int) -> list[Callable[[], Any]]:
    """Each lane's call with a random start delay and delays injected before its operators."""
    master = random.Random(seed)
    return [_delayed(backend, call, random.Random(master.getrandbits(64))) for call in calls]


def _delayed(backend: Backend, call: Callable[[], Any], rng: random.Random) -> Callable[[], Any]:
    def delayed() -> Any:
        delay(backend, rng.uniform(0, START_DELAY_SECONDS))
        with DelayInjector(backend, rng):
            return call()

    return delayed


def check(
    executor: Executor,
    concurrent: Callable[[Sequence[Callable[[], Any]], str], Any],
    reference: Sequence[Any],
    tolerance: Tolerance,
    settings: SyncChecks,
) -> SyncStats:
    """Run the asked-for checks with ``concurrent(calls, run)``, which runs the lanes at once once."""
    backend = executor.backend
    names = [lane.name for lane in executor.lanes]
    calls: list[Callable[[], Any]] = list(executor.lanes)
    kept = [copying(call) for call in calls]
    stats = SyncStats()
    if settings.detect_syncs and backend.kind == "cuda":
        stats.implicit_syncs = _host_syncs(executor, names)
    if settings.trials:
        stats.seed = random.SystemRandom().randrange(2**31) if settings.seed is None else settings.seed
        shared = _shared_inputs(executor.lanes)
        for trial in range(settings.trials):
            if backend.kind == "cuda":
                poison_free_memory(backend.device)
            before = _snapshot(shared)
            run = concurrent(delayed_calls(backend, kept, stats.seed + trial), f"race trial {trial + 1}")
            stats.race_trials += 1
            problem = _written_inputs(shared, before)
            comparison = compare_lanes(names, reference, run.outputs, tolerance)
            if problem is None and not comparison.correct:
                problem = comparison.mismatches[0]
            if problem is not None:
                stats.race_failures += 1
                if stats.first_failure is None:
                    stats.first_failure = f"trial {trial + 1}: {problem}"
    if settings.sanitizer and backend.kind == "cuda":
        stats.sanitizer = _sanitized_run(executor, calls)
    return stats


def _host_syncs(executor: Executor, names: Sequence[str]) -> list[dict[str, str]]:
    """One concurrent pass (every lane on its stream, from this thread) with sync debug mode on "warn".

    Lanes are issued one after another from this thread, so the lane that was running when a warning
    came is the lane that synchronized; syncs other threads make meanwhile are not the lanes'.
    """
    running: list[str] = ["?"]
    found: dict[tuple[str, str], dict[str, str]] = {}

    def labelled(index: int, call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            running[0] = names[index]
            return call()

        return run

    def record(message: str, filename: str, lineno: int) -> None:
        filename, lineno = _user_frame(filename, lineno)
        where = f"{filename}:{lineno}"
        source = linecache.getline(filename, lineno).strip() or message
        found.setdefault((running[0], where), {"lane": running[0], "where": where, "call": source})

    calls = [labelled(index, lane) for index, lane in enumerate(executor.lanes)]
    with host_syncs_in_this_thread(record):
        executor.streams(1, calls, "host sync check")
    return list(found.values())


def _user_frame(filename: str, lineno: int) -> tuple[str, int]:
    """The innermost calling frame outside torch, the warnings machinery and this package.

    A sync inside a torch function written in Python (``torch.unique``, printing a tensor) warns from
    torch's own file; the line to show is the user's call that led there.
    """
    skipped = (os.path.dirname(torch.__file__), os.path.dirname(__file__), os.path.dirname(warnings.__file__))
    if not filename.startswith(skipped):
        return filename, lineno
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(skipped):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return filename, lineno


#: The caching allocator serves requests up to 1 MiB from its small pool (2 MiB segments) and larger ones
#: from the large pool: a free stretch of a small segment must be asked for in pieces no larger than this.
SMALL_REQUEST_BYTES = 1 << 20
POISON_PASSES = 4


def poison_free_memory(device: torch.device) -> None:
    """Fill every cached free block with 0xFF bytes (NaN for floats, -1 for integers).

    Each trial reruns the same inputs, and the caching allocator tends to hand a tensor the very block an
    earlier identical run wrote: a read that comes too early would find the right values already there.
    Poisoned, the early read shows up as a mismatch. Every free block is taken, small or large: blocks
    still pending a free (used on another stream) are first let go by a device sync and an allocation,
    free stretches of small segments are asked for in small-pool pieces, and passes repeat until no
    free block is left, since best fit may hand a request a bigger block than the one it was sized for.
    """
    torch.cuda.synchronize(device)
    torch.empty(1, device=device)  # an allocation processes the frees whose streams have finished
    index = device.index if device.index is not None else torch.cuda.current_device()
    held = []
    for _ in range(POISON_PASSES):
        requests = _free_block_requests(index)
        if not requests:
            break
        for stream_id, size in requests:
            stream = (
                torch.cuda.ExternalStream(stream_id, device=device)
                if stream_id
                else torch.cuda.default_stream(device)
            )
            with torch.cuda.stream(stream):
                held.append(torch.empty(size, dtype=torch.uint8, device=device).fill_(255))
    torch.cuda.synchronize(device)
    held.clear()


def _free_block_requests(index: int) -> list[tuple[int, int]]:
    """(stream, bytes) requests that together take every free block of the device's shared pools."""
    requests = []
    for segment in torch.cuda.memory_snapshot():
        if segment.get("device") != index or tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0):
            continue  # graph pools are private: their blocks are never handed to eager tensors
        small = segment.get("segment_type") == "small"
        for block in segment.get("blocks", []):
            if block.get("state") != "inactive":
                continue
            size = block["size"]
            while size > 0:
                piece = min(size, SMALL_REQUEST_BYTES) if small else size
                requests.append((segment.get("stream", 0), piece))
                size -= piece
    return sorted(requests, key=lambda request: -request[1])


def _sanitized_run(executor: Executor, calls: Sequence[Callable[[], Any]]) -> list[str]:
    """One concurrent pass under PyTorch's CUDA sanitizer; the unsynchronized accesses it names.

    Importing the sanitizer module already sets up its dispatch mode (and hooks CUDA tracing for good);
    that one mode is entered here, unless the whole process runs under it (``TORCH_CUDA_SANITIZER=1``).
    """
    from torch.cuda import _sanitizer

    sanitizer = _sanitizer.cuda_sanitizer
    with contextlib.nullcontext() if sanitizer.enabled else sanitizer.dispatch:
        try:
            executor.streams(1, calls, "sanitizer check")
        except Exception as error:
            cause = error.__cause__ if error.__cause__ is not None else error
            if isinstance(cause, _sanitizer.CUDASanitizerErrors):
                return [_race_text(found) for found in cause.errors]
            raise
    return []


def _race_text(found: Any) -> str:
    current, previous = getattr(found, "current_access", None), getattr(found, "previous_access", None)
    if current is None or previous is None:
        lines = [line.strip() for line in str(found).splitlines() if line.strip().strip("=")]
        return lines[0] if lines else type(found).__name__
    return (
        f"{current.operator} on stream {current.stream} and {previous.operator} on stream {previous.stream} "
        f"touch the same memory (data pointer {getattr(found, 'data_ptr', '?')}) without synchronization"
    )


def _shared_inputs(lanes: Sequence[Lane]) -> list[tuple[str, torch.Tensor]]:
    """The storages (as flat bytes) that more than one lane reads: a lane writing one races the others.

    Whole storages, not the tensors: two lanes may read different views of one buffer.
    """
    owners: dict[int, list[str]] = {}
    storages: dict[int, torch.Tensor] = {}
    for lane in lanes:
        for tensor in iter_tensors((lane.args, lane.kwargs)):
            storage = tensor.untyped_storage()
            if storage.nbytes() == 0:
                continue
            key = storage.data_ptr()
            if lane.name not in owners.setdefault(key, []):
                owners[key].append(lane.name)
            storages[key] = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)
    return [(" and ".join(names), storages[key]) for key, names in owners.items() if len(names) > 1]


def _snapshot(shared: Sequence[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [tensor.clone() for _, tensor in shared]


def _written_inputs(shared: Sequence[tuple[str, torch.Tensor]], before: Sequence[torch.Tensor]) -> str | None:
    for (owners, tensor), copy in zip(shared, before, strict=True):
        if not torch.equal(tensor, copy):
            return f"an input shared by lanes {owners} was changed in place during the concurrent run"
    return None
