"""Models for the tests: deterministic timing controls and small real networks built from torch.nn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.engine.executor import busy
from pytest_dualgpu.engine.pipeline import HandOff
from pytest_dualgpu.engine.trees import map_tensors


class SleepLane(nn.Module):
    """Positive control: sleeping releases the GIL, so two of these overlap almost perfectly."""

    def __init__(self, seconds: float = 0.01) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x * 2


TURN = threading.Lock()


class TurnLane(nn.Module):
    """Negative control that no machine's load can change: sleeps holding a lock every such lane shares,
    so two of these take strict turns (GIL turn-taking drifts into overlap on a loaded runner). Only the
    sleep is marked busy, as the GIL's wait is not part of a GIL-bound lane's own turn either."""

    def __init__(self, seconds: float = 0.01) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with TURN, busy():
            time.sleep(self.seconds)
        return x * 2


class GilLane(nn.Module):
    """Negative control: a fixed amount of Python work, which holds the GIL, so two lanes take turns.

    A fixed count of loop steps (calibrated to ``seconds`` when built), not a loop until a deadline: the
    interpreter hands the GIL over every 5 ms, and a lane spinning against the clock would count the time
    the other lane held it as its own progress. No torch operator runs inside (each releases the GIL).
    """

    def __init__(self, seconds: float = 0.01) -> None:
        super().__init__()
        self.steps = python_steps_for(seconds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for step in range(self.steps):
            total += step
        return x


def python_steps_for(seconds: float) -> int:
    """How many steps of ``GilLane``'s loop take ``seconds`` on this machine (the fastest of a few tries)."""
    steps = 100_000
    fastest = min(_timed_steps(steps) for _ in range(3))
    return max(1, round(steps * seconds / fastest))


def _timed_steps(steps: int) -> float:
    started = time.perf_counter()
    total = 0
    for step in range(steps):
        total += step
    return time.perf_counter() - started


class MLP(nn.Module):
    def __init__(self, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


class Encoded(NamedTuple):
    hidden: torch.Tensor
    pooled: torch.Tensor


class TinyTransformer(nn.Module):
    """A text encoder: token ids and an attention mask in, a named tuple and a dict out."""

    def __init__(self, vocab: int = 100, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, object]:
        hidden = self.encoder(self.embed(tokens), src_key_padding_mask=~mask)
        pooled = hidden.mean(dim=1)
        return {"encoded": Encoded(hidden, pooled), "lengths": [mask.sum(dim=1)]}


class RaisingLane(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad shape in RaisingLane")


def in_lane_thread() -> bool:
    """True inside the engine's lane threads (alone and sequential runs stay on the caller's thread)."""
    return threading.current_thread().name.startswith("dualgpu-lane")


class ConcurrentRaiser(nn.Module):
    """Fine alone and back to back; raises only in the concurrent run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if in_lane_thread():
            raise RuntimeError("only fails when run concurrently")
        return x + 1


class BlockingLane(nn.Module):
    """Blocks in the concurrent run until the test sets ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if in_lane_thread():
            self.release.wait()
        return x - 1


def text_inputs(batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length // 2 :] = False
    return {"tokens": tokens, "mask": mask}


class BrokenHandOff(HandOff):
    """A pipeline with the consumer's wait for the hand-over removed: the classic "works on my machine" bug.

    The consumer gives the producer a short grace instead of waiting (and on CUDA skips the event), then
    takes what the slot holds; an empty slot gives it a poisoned stand-in (NaN, or -1 for integers) shaped
    like that micro-batch's last real hand-over. Right whenever the producer is on time, wrong when
    something delays it.
    """

    GRACE_SECONDS = 0.0015

    def __init__(self, count: int, backend: Backend, timeout: float) -> None:
        super().__init__(count, backend, timeout)
        self.stand_ins: dict[int, object] = {}

    def publish(self, run: int, index: int, value: object) -> None:
        super().publish(run, index, value)
        self.stand_ins[index] = map_tensors(value, _poisoned)

    def _wait_for(self, condition: Callable[[], bool]) -> bool:
        self.changed.wait_for(condition, self.GRACE_SECONDS)
        return True  # go on regardless: the producer overwrites its slot, the consumer takes what is there

    def missing(self, index: int) -> object:
        if index in self.stand_ins:
            return self.stand_ins[index]
        # Nothing to stand in yet (this micro-batch's first hand-over): wait for it after all.
        self.changed.wait_for(lambda: self.slots[index] is not None, self.timeout)
        slot = self.slots[index]
        assert slot is not None, f"micro-batch {index} never came"
        self.slots[index] = None
        self.changed.notify_all()
        return slot[1]

    def received(self, value: object, event: object) -> object:
        return value  # no wait for the producer's event: the bug


def _poisoned(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point() or tensor.is_complex():
        return torch.full_like(tensor, float("nan"))
    return torch.full_like(tensor, -1)


class Turnstile:
    """Two lanes take strict turns while both run at once (on lane threads); alone, nobody waits."""

    def __init__(self) -> None:
        self.turn = 0
        self.changed = threading.Condition()


class TakesItsTurn(nn.Module):
    def __init__(self, turnstile: Turnstile, position: int, hold: float) -> None:
        super().__init__()
        self.turnstile, self.position, self.hold = turnstile, position, hold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not in_lane_thread():
            time.sleep(self.hold)
            return x * 2
        with self.turnstile.changed:
            self.turnstile.changed.wait_for(lambda: self.turnstile.turn == self.position, timeout=5)
            time.sleep(self.hold)
            self.turnstile.turn = 1 - self.position
            self.turnstile.changed.notify_all()
        return x * 2


class Quick(TakesItsTurn):
    pass


class Slow(TakesItsTurn):
    pass


def turn_takers() -> tuple[nn.Module, nn.Module]:
    turnstile = Turnstile()
    return Quick(turnstile, 0, 0.001), Slow(turnstile, 1, 0.005)
