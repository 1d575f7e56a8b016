"""Producer/consumer pipelines: one model's output is the other's input, micro-batch by micro-batch.

The batch is split into micro-batches. The producer's lane runs them one after another and hands each
output over through a slot; the consumer's lane takes slot i as soon as it is filled and runs on it, so the
consumer works on micro-batch i while the producer works on i + 1. On CUDA a slot carries an event recorded
on the producer's stream: the consumer's stream waits for it, and the tensors get ``record_stream`` so the
allocator does not hand their memory to the producer again while the consumer still reads it. A slot holds
one micro-batch, so a fast producer waits for the consumer to empty it (back-pressure).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.engine.executor import (
    Executor,
    GraphCaptureError,
    Mode,
    Run,
    busy,
    kept,
    waiting_for_another_lane,
)
from pytest_dualgpu.engine.inputs import arguments
from pytest_dualgpu.engine.sanity import best_possible_time
from pytest_dualgpu.engine.trees import iter_tensors, map_tensors
from pytest_dualgpu.errors import DualGpuUsageError, HandOffStopped, LaneError, LaneTimeoutError
from pytest_dualgpu.latency import Latency, LatencyStats
from pytest_dualgpu.timeline import Interval

if TYPE_CHECKING:
    from pytest_dualgpu.engine.measure import Samples


def split_batch(inputs: Any, micro_batches: int) -> list[Any]:
    """The inputs cut along dim 0 into ``micro_batches`` parts; tensors without that batch dim are shared."""
    tensors = [tensor for tensor in iter_tensors(inputs) if tensor.dim() > 0]
    if not tensors:
        raise DualGpuUsageError("pipeline inputs need a tensor with a batch dimension to split")
    batch = tensors[0].shape[0]
    if (
        isinstance(micro_batches, bool)
        or not isinstance(micro_batches, int)
        or not 1 <= micro_batches <= batch
    ):
        raise DualGpuUsageError(
            f"micro_batches must be an integer from 1 to the batch size {batch}, got {micro_batches!r}"
        )
    return [
        map_tensors(inputs, functools.partial(_part, batch=batch, count=micro_batches, part=part))
        for part in range(micro_batches)
    ]


def _part(tensor: torch.Tensor, *, batch: int, count: int, part: int) -> torch.Tensor:
    if tensor.dim() == 0 or tensor.shape[0] != batch:
        return tensor
    return torch.tensor_split(tensor, count)[part]


def concat(outputs: Sequence[Any]) -> Any:
    """The micro-batches' outputs joined along dim 0, in the structure of one of them."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(outputs)) if first.dim() > 0 else first
    if isinstance(first, dict):
        return type(first)((key, concat([output[key] for output in outputs])) for key in first)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat([output[i] for output in outputs]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(concat([output[i] for output in outputs]) for i in range(len(first)))
    return first


class HandOff:
    """One slot per micro-batch between the producer's lane and the consumer's.

    Each slot is tagged with the run it belongs to (the producer's and the consumer's runs are counted
    separately and always advance together), so a late hand-over from an earlier run is never taken for
    this run's. On CUDA the consumer's stream waits for the event the producer recorded with its output.
    """

    def __init__(self, count: int, backend: Backend, timeout: float) -> None:
        self.backend = backend
        self.timeout = timeout
        self.slots: list[tuple[int, Any, Any] | None] = [None] * count
        self.failed: BaseException | None = None
        self.changed = threading.Condition()
        self.drained_runs = 0
        self.drained: Any = torch.cuda.Event() if backend.kind == "cuda" else None

    def publish(self, run: int, index: int, value: Any) -> None:
        event = None
        if self.backend.kind == "cuda":
            event = torch.cuda.Event()
            event.record()
        with self.changed:
            free = self._wait_for(lambda: self.slots[index] is None or self.failed is not None)
            self._raise_if_failed("the consumer")
            if not free:
                raise TimeoutError(f"the consumer did not take micro-batch {index} within {self.timeout} s")
            self.slots[index] = (run, value, event)
            self.changed.notify_all()

    def take(self, run: int, index: int) -> Any:
        def ready() -> bool:
            slot = self.slots[index]
            return (slot is not None and slot[0] == run) or self.failed is not None

        with self.changed, waiting_for_another_lane():
            if not self._wait_for(ready):
                raise TimeoutError(
                    f"the producer did not hand over micro-batch {index} within {self.timeout} s"
                )
            self._raise_if_failed("the producer")
            slot = self.slots[index]
            if slot is None or slot[0] != run:
                return self.missing(index)
            self.slots[index] = None
            self.changed.notify_all()
        _, value, event = slot
        return self.received(value, event)

    def _wait_for(self, condition: Callable[[], bool]) -> bool:
        """Wait (holding ``changed``) until ``condition`` holds; False when the timeout came first."""
        return self.changed.wait_for(condition, self.timeout)

    def missing(self, index: int) -> Any:
        """What the consumer takes when micro-batch ``index`` is not there after the wait."""
        raise RuntimeError(f"micro-batch {index} was not handed over although the wait for it ended")

    def received(self, value: Any, event: Any) -> Any:
        """The handed-over value, ordered after the producer's work on it (on CUDA: on the consumer's
        stream, which waits for the producer's event and keeps the tensors alive for its use)."""
        if event is not None:
            stream = torch.cuda.current_stream()
            stream.wait_event(event)
            for tensor in iter_tensors(value):
                tensor.record_stream(stream)
        return value

    def start_run(self, run: int) -> None:
        """Begin a run only once the consumer is done with the one before: each run is one whole batch,
        filling and draining the pipeline, which is what the ideal speedup describes."""
        with self.changed, waiting_for_another_lane():
            drained = self.changed.wait_for(
                lambda: self.drained_runs >= run - 1 or self.failed is not None, self.timeout
            )
            self._raise_if_failed("the consumer")
            if not drained:
                raise TimeoutError(f"the consumer did not finish run {run - 1} within {self.timeout} s")
        if self.drained is not None:
            torch.cuda.current_stream().wait_event(self.drained)

    def finish_run(self, run: int) -> None:
        if self.drained is not None:
            self.drained.record()
        with self.changed:
            self.drained_runs = run
            self.changed.notify_all()

    def abort(self, error: BaseException) -> None:
        with self.changed:
            self.failed = error
            self.changed.notify_all()

    def reset(self) -> None:
        with self.changed:
            self.failed = None
            self.slots = [None] * len(self.slots)
            self.drained_runs = 0

    def _raise_if_failed(self, side: str) -> None:
        if self.failed is not None:
            raise HandOffStopped(f"{side} failed, so the hand-over stopped") from self.failed


class PipelineCalls:
    """The four ways the two models run: each alone, and handing over (back to back or at once)."""

    def __init__(
        self,
        producer: Callable[..., Any],
        consumer: Callable[..., Any],
        parts: Sequence[Any],
        hand_off: HandOff,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.parts = [arguments(part) for part in parts]
        self.hand_off = hand_off
        self.produced: list[Any] = []
        self.producer_runs = 0
        self.consumer_runs = 0

    def prepare(self) -> None:
        """Run the producer once: the consumer's alone runs need its outputs, the hand-off their shapes."""
        with torch.no_grad():
            self.produced = self.producer_alone()

    def whole_batch(self, inputs: Any) -> Any:
        """The reference: the consumer on the producer's output for the whole batch at once."""
        args, kwargs = arguments(inputs)
        with torch.no_grad():
            return _consume(self.consumer, self.producer(*args, **kwargs))

    def back_to_back(self) -> Any:
        """The sequential run: each micro-batch through the producer, then the consumer, on one stream (each
        stage's work marked, so a micro-batch's latency back to back can be read off)."""
        results = []
        for args, kwargs in self.parts:
            with busy():
                produced = self.producer(*args, **kwargs)
            with busy():
                results.append(_consume(self.consumer, produced))
        return concat(results)

    def producer_alone(self) -> list[Any]:
        return [self.producer(*args, **kwargs) for args, kwargs in self.parts]

    def consumer_alone(self) -> Any:
        return concat([_consume(self.consumer, produced) for produced in self.produced])

    def reset(self) -> None:
        self.hand_off.reset()
        self.producer_runs = self.consumer_runs = 0

    def producer_handing_over(self) -> list[Any]:
        self.producer_runs += 1
        run = self.producer_runs
        outputs = []
        try:
            self.hand_off.start_run(run)
            for index, (args, kwargs) in enumerate(self.parts):
                with busy():
                    output = self.producer(*args, **kwargs)
                self.hand_off.publish(run, index, output)
                outputs.append(output)
        except BaseException as error:
            self.hand_off.abort(error)
            raise
        return outputs

    def consumer_taking_over(self) -> Any:
        self.consumer_runs += 1
        run = self.consumer_runs
        results = []
        try:
            for index in range(len(self.parts)):
                produced = self.hand_off.take(run, index)
                with busy():
                    results.append(_consume(self.consumer, produced))
            with busy():
                joined = concat(results)
        except BaseException as error:
            self.hand_off.abort(error)
            raise
        self.hand_off.finish_run(run)
        return joined


def _consume(consumer: Callable[..., Any], produced: Any) -> Any:
    args, kwargs = arguments(produced)
    return consumer(*args, **kwargs)


class PipelineMode(Mode):
    """Back to back: the producer over every micro-batch, then the consumer (one stream, one thread)."""

    def __init__(self, executor: Executor, calls: PipelineCalls) -> None:
        super().__init__(executor)
        self.pipeline = calls
        self.calls = [calls.producer_handing_over, calls.consumer_taking_over]
        self.alone: list[Callable[[], Any]] = [calls.producer_alone, calls.consumer_alone]
        self.both_stages: Callable[[], Any] = calls.back_to_back

    def back_to_back(self, lanes: Sequence[int], reps: int, run: str = "sequential run") -> Run:
        """Each stage alone, or both back to back (as one lane: there is nothing to hand over)."""
        if len(lanes) == 1:
            return self.executor.sequential(lanes, reps, self.alone, run)
        return self.executor.sequential([0], reps, [self.both_stages], run)

    def concurrent(self, reps: int) -> Run:
        """In ``sequential`` mode: each stage over every micro-batch, one after the other."""
        return self.executor.sequential([0, 1], reps, self.alone, f"concurrent run ({self.name})")


class StreamsPipelineMode(PipelineMode):
    name = "streams"

    def concurrent(self, reps: int) -> Run:
        self.pipeline.reset()
        return self.executor.streams(reps, self.calls, f"concurrent run ({self.name})")


class ThreadsPipelineMode(PipelineMode):
    name = "threads"

    def concurrent(self, reps: int) -> Run:
        self.pipeline.reset()
        return self.executor.threads(reps, self.calls, f"concurrent run ({self.name})")


class GraphsPipelineMode(StreamsPipelineMode):
    """Each stage captured once per micro-batch as a CUDA graph; the consumer's graph for micro-batch i
    reads the producer's static output for i, so the hand-over is two events per micro-batch: "ready"
    (the producer wrote it) and "free" (the consumer read it, so the next replay may overwrite it).

    The replays are issued from one thread, in order: an event must be recorded before the wait on it
    is issued, or the wait would see the previous round's record.
    """

    name = "graphs"
    static_outputs = True

    def __init__(self, executor: Executor, calls: PipelineCalls) -> None:
        super().__init__(executor, calls)
        backend = executor.backend
        lane_names = [lane.name for lane in executor.lanes]
        self.produced: list[Any] = []
        self.consumed: list[Any] = []
        producers: list[Callable[[], None]] = []
        consumers: list[Callable[[], None]] = []
        for lane, stage in ((0, "producer"), (1, "consumer")):
            try:
                if stage == "producer":
                    for args, kwargs in calls.parts:
                        replay, output = backend.capture(
                            0, functools.partial(calls.producer, *args, **kwargs)
                        )
                        producers.append(replay)
                        self.produced.append(output)
                else:
                    for (
                        replay
                    ) in producers:  # the consumer warms up on real outputs, not uninitialized memory
                        replay()
                    backend.synchronize()
                    for produced in self.produced:
                        replay, output = backend.capture(
                            1, functools.partial(_consume, calls.consumer, produced)
                        )
                        consumers.append(replay)
                        self.consumed.append(output)
            except Exception as error:
                raise GraphCaptureError(lane_names[lane], error) from error
        self.producers, self.consumers = producers, consumers
        self.ready = [torch.cuda.Event() for _ in producers]
        self.free = [torch.cuda.Event() for _ in producers]
        self.drained = torch.cuda.Event()
        self.calls = [self._produce, self._consume]
        self.alone = [self._produce_alone, self._consume_alone]
        self.both_stages = self._back_to_back

    def _produce(self) -> list[Any]:
        """Each replay marked busy after its wait is issued: the mark's start event runs when the wait is
        over, so time spent waiting for the consumer is not busy (as in the eager modes)."""
        stream = torch.cuda.current_stream()
        stream.wait_event(self.drained)  # one batch per run: start when the last one has gone through
        for replay, ready, free in zip(self.producers, self.ready, self.free, strict=True):
            stream.wait_event(free)
            with busy():
                replay()
            ready.record()
        return self.produced

    def _consume(self) -> Any:
        stream = torch.cuda.current_stream()
        for replay, ready, free in zip(self.consumers, self.ready, self.free, strict=True):
            stream.wait_event(ready)
            with busy():
                replay()
            free.record()
        with busy():
            joined = concat(self.consumed)
        self.drained.record()
        return joined

    def _produce_alone(self) -> list[Any]:
        for replay in self.producers:
            replay()
        return self.produced

    def _consume_alone(self) -> Any:
        for replay in self.consumers:
            replay()
        return concat(self.consumed)

    def _back_to_back(self) -> Any:
        for produce, consume in zip(self.producers, self.consumers, strict=True):
            with busy():
                produce()
            with busy():
                consume()
        return concat(self.consumed)

    def close(self) -> None:
        super().close()
        self.producers.clear()
        self.consumers.clear()
        self.produced.clear()
        self.consumed.clear()


PIPELINE_MODES: dict[str, type[PipelineMode]] = {
    "sequential": PipelineMode,
    "streams": StreamsPipelineMode,
    "threads": ThreadsPipelineMode,
    "graphs": GraphsPipelineMode,
}


def micro_batch_latencies(
    back_to_back: list[list[Interval]],
    producer: list[list[Interval]],
    consumer: list[list[Interval]],
    count: int,
) -> tuple[list[float], list[float]]:
    """Each micro-batch's latency end to end, from the producer starting on it to the consumer finishing
    it: back to back (one lane whose marks alternate producer, consumer) and pipelined (the stages' own
    marks: the producer one per micro-batch, the consumer one per micro-batch and one for the join)."""
    serial = [
        consumed[1] - produced[0]
        for marks in back_to_back
        for produced, consumed in zip(marks[0::2], marks[1::2], strict=True)
    ]
    pipelined = []
    for produced_marks, consumed_marks in zip(producer, consumer, strict=True):
        per_run = len(produced_marks) // count if count else 0
        for run in range(per_run):
            produced = produced_marks[run * count : (run + 1) * count]
            consumed = consumed_marks[run * (count + 1) : run * (count + 1) + count]
            pipelined += [done[1] - started[0] for started, done in zip(produced, consumed, strict=True)]
    return serial, pipelined


class Pipeline:
    """The arrangement (``arrangement.py``) of a producer handing micro-batches to a consumer."""

    def __init__(self, calls: PipelineCalls, inputs: Any, micro_batches: int) -> None:
        self.calls = calls
        self.inputs = inputs
        self.micro_batches = micro_batches

    def mode(self, name: str, executor: Executor) -> Mode:
        return PIPELINE_MODES[name](executor, self.calls)

    def prepare(self, executor: Executor, names: Sequence[str]) -> None:
        """The producer once before anything else: the consumer's alone runs take what it made."""
        run = f"first run of lane {names[0]!r}"
        try:
            executor.guarded_call(self.calls.prepare, 0, run)
        except LaneTimeoutError:
            raise
        except Exception as error:
            raise LaneError(names[0], run, error) from error

    def reference(self, alone: list[Any]) -> list[Any]:
        """The producer's micro-batches alone, and the consumer over the whole batch at once."""
        return [*alone[:-1], kept(self.calls.whole_batch(self.inputs))]

    def best_time(self, alone: Sequence[float]) -> float:
        return best_possible_time(alone, self.micro_batches)

    def latency(self, samples: Samples, mode_name: str) -> Latency | None:
        """A micro-batch's latency end to end: back to back (``alone``), pipelined (``at_once``).

        None in ``sequential`` mode: its stages each run over the whole batch, so no micro-batch is
        handed over and nothing marks one's way through both stages.
        """
        if mode_name == "sequential":
            return None
        serial, pipelined = micro_batch_latencies(
            [round_[0] for round_ in samples.intervals.get("sequential", [])],
            [round_[0] for round_ in samples.intervals.get("concurrent", [])],
            [round_[1] for round_ in samples.intervals.get("concurrent", [])],
            self.micro_batches,
        )
        if not serial or not pipelined:
            return None
        return Latency(LatencyStats.from_latencies(serial), LatencyStats.from_latencies(pipelined))
