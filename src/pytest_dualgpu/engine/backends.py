"""The small interface through which the engine touches a device, with a CPU and a CUDA implementation.

Everything above this module (modes, rounds, statistics, comparison) is shared and tested on CPU; the CUDA
backend stays thin and follows the CUDA semantics notes of PyTorch, because only a GPU machine checks it.
A run goes: the controlling thread calls ``begin`` right before dispatching work; worker threads call
``fork`` once per lane, then take ``stamp``s around each repetition inside ``lane_scope``; when all
workers are done the controlling thread calls ``finish``, which joins the streams and turns the stamps
into seconds since the origin.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import torch

from pytest_dualgpu.engine.trees import iter_tensors
from pytest_dualgpu.gpustate import GpuState, read_state
from pytest_dualgpu.modes import CPU_CONCURRENT, CUDA_CONCURRENT
from pytest_dualgpu.timeline import Interval

Stamps = list[tuple[Any, Any]]


@dataclass
class Timing:
    elapsed: float
    wall: float
    intervals: list[list[Interval]]
    call_ends: list[list[float]]  # when each call of each lane ended, seconds since the origin


class Backend:
    """What the engine needs from a device; the CPU flavour, with the CUDA one overriding."""

    kind = "cpu"
    concurrent_modes: tuple[str, ...] = CPU_CONCURRENT
    default_settle = 0.01
    #: An untimed call before each timed sample: on CPU the first call after the settling pause is slow.
    preroll = True
    #: The least warm-up, whatever the convergence rule says.
    min_warmup = 0.05

    def __init__(self, device: torch.device, lane_count: int, high: Sequence[bool] | None = None) -> None:
        self.device = device
        self.lane_count = lane_count
        #: Which lanes asked for the device's highest priority (only CUDA streams have one).
        self.high = [bool(high and high[lane]) for lane in range(lane_count)]
        self.process_threads = torch.get_num_threads()
        self.lane_threads = max(1, self.process_threads // lane_count)

    def worker_setup(self) -> Callable[[], None]:
        """A lane thread's set-up: the lanes share the process's intra-op threads between them."""
        threads = self.lane_threads

        def setup() -> None:
            # torch sets up a thread's intra-op pool lazily from a process-wide value on first use; trigger
            # that now, or a later first use would undo this setting with whatever another thread set.
            torch.get_num_threads()
            torch.set_num_threads(threads)

        return setup

    def guard_setup(self) -> Callable[[], None]:
        """The guard thread's set-up (it runs lanes' first calls as the caller would): every intra-op
        thread of the process, as the caller has."""
        threads = self.process_threads

        def setup() -> None:
            torch.get_num_threads()
            torch.set_num_threads(threads)

        return setup

    def restore(self) -> None:
        """Undo process-wide side effects of the workers' set-up (torch's default for new threads)."""
        torch.set_num_threads(self.process_threads)

    def prepare(self, stamps: int) -> None:
        """Have ``stamps`` timestamps ready before a timed run starts (CUDA creates its events here)."""

    def discard(self, stamp: Any) -> None:
        """Give back a stamp that will not be read (a call that marked its own busy stretches)."""

    def sleep(self, seconds: float) -> None:
        """Delay the current lane by ``seconds``: its thread on CPU, its stream on CUDA."""
        threading.Event().wait(seconds)

    def gpu_state(self) -> GpuState | None:
        """The GPU's clocks, temperature and throttle reasons now; None on CPU or without NVML."""
        return None

    def begin(self) -> Any:
        return time.perf_counter()

    def fork(self, lane: int, origin: Any) -> None:
        """Make the lane's stream wait for work issued before ``origin`` (nothing to do on CPU)."""

    def lane_scope(self, lane: int | None) -> AbstractContextManager[Any]:
        """Issue work for ``lane`` (or, with None, on the caller's stream)."""
        return nullcontext()

    def stamp(self) -> Any:
        return time.perf_counter()

    def finish(
        self, origin: Any, lanes: Sequence[int], stamps: Sequence[Stamps], ends: Sequence[list[Any]]
    ) -> Timing:
        intervals = [[(start - origin, end - origin) for start, end in lane] for lane in stamps]
        elapsed = max((end for lane in intervals for _, end in lane), default=0.0)
        call_ends = [[end - origin for end in lane] for lane in ends]
        return Timing(elapsed=elapsed, wall=elapsed, intervals=intervals, call_ends=call_ends)

    def synchronize(self) -> None:
        """Wait for everything issued on the device."""

    @contextmanager
    def peak_memory(self) -> Iterator[list[int]]:
        """Yields a list that holds the peak bytes above the starting point afterwards (empty on CPU)."""
        yield []

    def capture(self, lane: int, call: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        raise NotImplementedError("graphs need CUDA")

    def protect(self, outputs: Any) -> None:
        """Keep outputs made on lane streams from being reused by the allocator too early."""

    def release(self) -> None:
        """Give cached memory back after a failure, so one failed call does not starve the next."""

    def is_out_of_memory(self, error: BaseException | None) -> bool:
        return False


class CudaBackend(Backend):
    kind = "cuda"
    concurrent_modes = CUDA_CONCURRENT
    default_settle = 0.0
    preroll = False
    min_warmup = 0.25  # a GPU's clocks take a while to rise from idle under load

    def __init__(self, device: torch.device, lane_count: int, high: Sequence[bool] | None = None) -> None:
        super().__init__(device, lane_count, high)
        self.caller = torch.cuda.current_stream(device)
        self.streams = lane_streams(device, lane_count, self.high)
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        # Timing events come from a free list filled before each run: creating an event inside the
        # timed region (from several lane threads at once) costs more than what it times.
        self._free_events: list[torch.cuda.Event] = []
        self._most_stamps = 0
        self.events_created = 0

    def worker_setup(self) -> Callable[[], None]:
        return self._on_device(super().worker_setup())

    def guard_setup(self) -> Callable[[], None]:
        return self._on_device(super().guard_setup())

    def _on_device(self, cpu_setup: Callable[[], None]) -> Callable[[], None]:
        """A thread's CPU set-up, then this device as its current CUDA device (that is per thread)."""

        def setup() -> None:
            cpu_setup()
            torch.cuda.set_device(self.device)

        return setup

    def prepare(self, stamps: int) -> None:
        for _ in range(max(stamps + 2, self._most_stamps) - len(self._free_events)):
            self._free_events.append(self._new_event())

    def discard(self, stamp: Any) -> None:
        self._free_events.append(stamp)  # never read: it may be recorded again at once

    def _new_event(self) -> torch.cuda.Event:
        self.events_created += 1
        return torch.cuda.Event(enable_timing=True)

    def _event(self) -> torch.cuda.Event:
        try:
            return self._free_events.pop()  # atomic under the GIL: lane threads take from one list
        except IndexError:
            return self._new_event()

    def sleep(self, seconds: float) -> None:
        torch.cuda._sleep(max(1, int(seconds * sleep_cycles_per_second(self.index))))

    def gpu_state(self) -> GpuState | None:
        uuid = getattr(torch.cuda.get_device_properties(self.index), "uuid", None)
        return read_state(str(uuid) if uuid else None, self.index)

    def begin(self) -> Any:
        event = self._event()
        event.record(self.caller)
        return event, time.perf_counter()

    def fork(self, lane: int, origin: Any) -> None:
        self.streams[lane].wait_event(origin[0])

    def lane_scope(self, lane: int | None) -> AbstractContextManager[Any]:
        return torch.cuda.stream(self.caller if lane is None else self.streams[lane])

    def stamp(self) -> Any:
        event = self._event()
        event.record()
        return event

    def finish(
        self, origin: Any, lanes: Sequence[int], stamps: Sequence[Stamps], ends: Sequence[list[Any]]
    ) -> Timing:
        start, wall_start = origin
        for lane in lanes:
            self.caller.wait_stream(self.streams[lane])
        end = self._event()
        end.record(self.caller)
        end.synchronize()
        wall = time.perf_counter() - wall_start
        intervals = [
            [(start.elapsed_time(first) / 1e3, start.elapsed_time(last) / 1e3) for first, last in lane]
            for lane in stamps
        ]
        call_ends = [[start.elapsed_time(stamp) / 1e3 for stamp in lane] for lane in ends]
        elapsed = start.elapsed_time(end) / 1e3
        used = {id(event): event for lane in stamps for pair in lane for event in pair}
        used.update({id(event): event for lane in ends for event in lane})
        used.update({id(event): event for event in (start, end)})
        self._most_stamps = max(self._most_stamps, len(used))
        self._free_events.extend(used.values())  # every one has completed: free to record again
        return Timing(elapsed=elapsed, wall=wall, intervals=intervals, call_ends=call_ends)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    @contextmanager
    def peak_memory(self) -> Iterator[list[int]]:
        self.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        holder: list[int] = []
        yield holder
        self.synchronize()
        holder.append(torch.cuda.max_memory_allocated(self.device) - before)

    def capture(self, lane: int, call: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        """Capture one lane as a CUDA graph with a private memory pool, on that lane's stream.

        The lane first runs twice on that stream with sync debugging set to error: that is the warm-up
        the CUDA graphs notes ask for (first-use allocations, such as a cuBLAS workspace per stream, stay
        out of the graph's pool), and it turns a host sync into a plain error before any capture begins.
        """
        unsupported = graphs_unsupported()
        if unsupported is not None:
            raise RuntimeError(unsupported)
        stream = self.streams[lane]
        stream.wait_stream(self.caller)
        with torch.cuda.device(self.device), torch.cuda.stream(stream), torch.no_grad():
            with host_syncs_in_this_thread() as syncs:
                for _ in range(2):
                    call()
            if syncs:
                raise RuntimeError(f"the lane synchronizes with the host: {syncs[0]}")
        self.caller.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()
        previous = torch.cuda.current_stream(self.device)
        try:
            with (
                torch.cuda.device(self.device),
                torch.no_grad(),
                # thread_local: another thread's sync during the capture (a data loader, a lane of
                # another call) is legal then; "global" would invalidate the capture and fail that thread.
                torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"),
            ):
                static_outputs = call()
        except BaseException:
            # A capture that fails while ending skips restoring the current stream and, in the
            # allocator, ending the private pool's capture: without that, the allocator goes on
            # treating the process as capturing.
            torch.cuda.set_stream(previous)
            _abandon_pool(self.device, pool)
            _end_generator_capture(self.device)
            # The pinned host allocator keeps a capture filter that points into the graph object, and
            # torch has no call to remove it: the object must outlive the process, or the filter would
            # read freed memory on every pinned allocation.
            _FAILED_GRAPHS.append(graph)
            self.release()
            raise
        return graph.replay, static_outputs

    def protect(self, outputs: Any) -> None:
        for tensor in iter_tensors(outputs):
            if tensor.device.type == "cuda":
                tensor.record_stream(self.caller)

    def release(self) -> None:
        with suppress(RuntimeError):
            self.synchronize()
            torch.cuda.empty_cache()

    def is_out_of_memory(self, error: BaseException | None) -> bool:
        return isinstance(error, torch.cuda.OutOfMemoryError)


#: Graph captures that failed; kept alive on purpose (see ``CudaBackend.capture``).
_FAILED_GRAPHS: list[Any] = []
#: The first torch whose allocator can be told that a failed capture has ended (``_cuda_endAllocateToPool``).
GRAPHS_MIN_TORCH = (2, 8)


def graphs_unsupported() -> str | None:
    """Why ``graphs`` cannot run on this torch, or None.

    A capture that fails leaves the caching allocator routing the lane stream's allocations into the
    graph's private pool; before torch 2.8 nothing outside torch can end that, so one failed capture
    would degrade every later allocation of the process.
    """
    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if version < GRAPHS_MIN_TORCH or not hasattr(torch._C, "_cuda_endAllocateToPool"):
        return (
            f"mode 'graphs' needs torch >= {'.'.join(map(str, GRAPHS_MIN_TORCH))} (this is "
            f"{torch.__version__}): older torch cannot recover from a failed capture; use 'threads', or "
            "upgrade torch"
        )
    return None


@contextmanager
def host_syncs_in_this_thread(
    on_sync: Callable[[str, str, int], None] | None = None,
) -> Iterator[list[str]]:
    """Sync debug mode on "warn" while the block runs; yields the syncs this thread made, as text, and
    hands each to ``on_sync(message, filename, lineno)`` as it comes.

    The mode is process-wide, so another thread's syncs warn too: they are passed on as the warnings
    they would have been, never blamed on what this thread runs (nor turned into errors in that thread,
    as the "error" mode would).
    """
    caught: list[str] = []
    mine = threading.get_ident()
    shown = warnings.showwarning

    def record(message: Any, category: Any, filename: str, lineno: int, *rest: Any, **more: Any) -> None:
        if SYNC_MODE_NOTICE in str(message):
            return  # ours: we turned the mode on
        if threading.get_ident() != mine or SYNC_WARNING not in str(message):
            shown(message, category, filename, lineno, *rest, **more)
            return
        caught.append(f"{filename}:{lineno}: {message}")
        if on_sync is not None:
            on_sync(str(message), filename, lineno)

    previous = torch.cuda.get_sync_debug_mode()
    with _SYNC_DEBUG, warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(previous)


#: What torch's sync debug mode warns with (c10/cuda ``warn_or_error_on_sync``). Matched exactly: turning
#: the mode on also warns, once per process, that it "does not yet detect all synchronizing operations".
SYNC_WARNING = "called a synchronizing CUDA operation"
SYNC_MODE_NOTICE = "Synchronization debug mode is a prototype feature"

#: One sync-debug window at a time: the mode and ``warnings.showwarning`` are process-wide.
_SYNC_DEBUG = threading.Lock()

_SLEEP_RATES: dict[int, float] = {}


def sleep_cycles_per_second(index: int) -> float:
    """The clock ``torch.cuda._sleep`` spins on, measured once per device (cycles per second).

    ``_sleep`` counts SM clock cycles, and clocks differ between GPUs and with boost: a fixed guess
    (1.5 GHz) would make a "1 ms" delay anything from 0.7 to 1.4 ms.
    """
    if index not in _SLEEP_RATES:
        cycles = 10_000_000  # 5-10 ms a window: long against the events' resolution
        with torch.cuda.device(index):
            torch.cuda._sleep(50_000_000)  # tens of ms of spinning first, so the clocks have ramped up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            fastest = math.inf
            for _ in range(3):
                start.record()
                torch.cuda._sleep(cycles)
                end.record()
                end.synchronize()
                fastest = min(fastest, start.elapsed_time(end) / 1e3)
        _SLEEP_RATES[index] = cycles / fastest
    return _SLEEP_RATES[index]


def gpu_sleep(seconds: float, device: torch.device | int | None = None) -> None:
    """Keep the current stream busy for ``seconds`` without the host (the GPU's positive control)."""
    if isinstance(device, int):
        index = device
    elif device is None or device.index is None:
        index = torch.cuda.current_device()
    else:
        index = device.index
    torch.cuda._sleep(max(1, int(seconds * sleep_cycles_per_second(index))))


def own_graph_trees() -> None:
    """Give this thread CUDA graph trees of its own (models compiled with ``mode="reduce-overhead"``).

    torch keeps them per thread, but before it learnt to set them up in any thread it found them only in
    the thread that imported it and in autograd's: a compiled model called on a lane thread failed an
    assertion in ``cudagraph_trees.get_obj`` (seen with torch 2.11). Only where trees are in use and torch
    cannot set them up itself: objects kept in torch's thread state are released as the thread ends, which
    can race with the interpreter's own end.
    """
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    stash = getattr(torch._C, "_stash_obj_in_tls", None)
    if trees is None or stash is None:
        return
    try:
        trees.get_obj(trees.local, "tree_manager_containers")
    except AssertionError:
        stash("tree_manager_containers", {})
        stash("tree_manager_locks", defaultdict(threading.Lock))


def _end_generator_capture(device: torch.device) -> None:
    """Best effort: take the device's default random generator out of a failed capture.

    Capture registers the generator and marks its state as capturing; only a capture that ends well
    unmarks it, so after a failure every random op outside a capture raised "Offset increment outside
    graph capture encountered unexpectedly" (seen with torch 2.11). A clone of the state has the same seed
    and offset and is not capturing. Graphs captured earlier keep the old state object, so a replay of
    one of them no longer advances the generator that eager code draws from.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    if not hasattr(generator, "graphsafe_set_state") or not hasattr(generator, "clone_state"):
        return
    with suppress(RuntimeError):
        generator.graphsafe_set_state(generator.clone_state())


def _abandon_pool(device: torch.device, pool: Any) -> None:
    """Best effort: close a failed capture's private pool in the allocator (private torch API)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if end is None or release is None:
        return
    try:
        end(index, pool)
    except RuntimeError:
        return
    with suppress(RuntimeError):
        release(index, pool)


_STREAMS: dict[tuple[int, int, bool], torch.cuda.Stream] = {}
#: Beyond the device's range, torch maps a priority to the nearest valid one: this is the highest there is.
HIGHEST_PRIORITY = -(2**20)


def lane_streams(
    device: torch.device, count: int, high: Sequence[bool] | None = None
) -> list[torch.cuda.Stream]:
    """One stream per (device, lane index, priority), created once per process and reused by every call.

    Creating streams per call would leak them (PyTorch pools a fixed number) and would make every call
    pay first-use costs on fresh streams inside what it measures. A high-priority lane's stream has the
    device's highest priority: its kernels are scheduled before those of normal streams.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    streams = []
    for lane in range(count):
        urgent = bool(high and high[lane])
        key = (index, lane, urgent)
        if key not in _STREAMS:
            priority = HIGHEST_PRIORITY if urgent else 0
            _STREAMS[key] = torch.cuda.Stream(device=torch.device("cuda", index), priority=priority)
        streams.append(_STREAMS[key])
    return streams


def make_backend(device: torch.device, lane_count: int, high: Sequence[bool] | None = None) -> Backend:
    if device.type == "cuda":
        return CudaBackend(device, lane_count, high)
    return Backend(device, lane_count, high)


def drop_locals(error: BaseException) -> None:
    """Free the tensors an exception's frames hold (after OOM they would pin the memory)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
