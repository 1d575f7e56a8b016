"""How a call's lanes relate: models side by side (``SideBySide``), or a producer handing micro-batches to
a consumer (``pipeline.Pipeline``). The flow of a call (``call.py``) asks its arrangement for what differs
between them (the modes, the first runs, the reference, the best possible time, the latency end to end)
and never asks which one it has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pytest_dualgpu.engine.executor import MODE_CLASSES, Executor, Mode
from pytest_dualgpu.engine.sanity import best_possible_time

if TYPE_CHECKING:
    from pytest_dualgpu.engine.measure import Samples
    from pytest_dualgpu.latency import Latency


class Arrangement(Protocol):
    @property
    def micro_batches(self) -> int | None:
        """The micro-batches a pipeline splits its batch into; None for lanes side by side."""
        ...

    def mode(self, name: str, executor: Executor) -> Mode:
        """The execution mode ``name`` for these lanes."""
        ...

    def prepare(self, executor: Executor, names: Sequence[str]) -> None:
        """What must run before the lanes' first calls alone."""
        ...

    def reference(self, alone: list[Any]) -> list[Any]:
        """The outputs the concurrent ones must equal, from each lane's output alone."""
        ...

    def best_time(self, alone: Sequence[float]) -> float:
        """What perfect overlap of lanes taking these times alone would take."""
        ...

    def latency(self, samples: Samples, mode_name: str) -> Latency | None:
        """The latency end to end of one item through every lane, where the lanes hand items over."""
        ...


class SideBySide:
    """Independent models, each on its own inputs."""

    micro_batches: int | None = None

    def mode(self, name: str, executor: Executor) -> Mode:
        return MODE_CLASSES[name](executor)

    def prepare(self, executor: Executor, names: Sequence[str]) -> None:
        pass

    def reference(self, alone: list[Any]) -> list[Any]:
        return alone

    def best_time(self, alone: Sequence[float]) -> float:
        return best_possible_time(alone, None)

    def latency(self, samples: Samples, mode_name: str) -> Latency | None:
        return None
