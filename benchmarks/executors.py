"""Every execution mode over a small zoo of model pairs, on the current device: one table.

    python benchmarks/executors.py [--device auto|cpu|cuda] [--budget SECONDS] [--format github]

CPU: a compute-heavy MLP pair (two cores to share) and a small launch-bound pair (Python overhead).
CUDA: a small MLP pair and a small CNN pair at batch 1 (launch-bound: room to overlap), and a pair of
large matrix products (each fills the GPU alone: a speedup near 1 is the right answer).
It also times one model alone with ``torch.utils.benchmark.Timer`` beside the engine's alone time (their
ratio shows how much the harness itself adds to what it measures), and on CPU checks the engine's
``threads`` speedup against a hand-written measurement: two plain threads, one intra-op thread each.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.benchmark as torch_benchmark
from tabulate import tabulate
from torch import nn

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.devices import device_name, resolve_device


def mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


class MatMul(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, size) / size**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


@dataclass
class Pair:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


CPU_PAIRS = [
    Pair("MLP 6x1024, batch 64 (compute-bound)", lambda: mlp(1024, 6), (64, 1024)),
    Pair("MLP 3x64, batch 1 (launch-bound)", lambda: mlp(64, 3), (1, 64)),
]
CUDA_PAIRS = [
    Pair("MLP 4x256, batch 1", lambda: mlp(256, 4), (1, 256)),
    Pair("CNN, batch 1, 64x64", cnn, (1, 3, 64, 64)),
    Pair("matmul 8192 fp16 (no headroom)", lambda: MatMul(8192), (8192, 8192), torch.float16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--budget", type=float, default=2.0, help="Seconds of measured rounds per call")
    parser.add_argument("--format", default="simple", help="tabulate format, e.g. github for docs")
    options = parser.parse_args()

    device = resolve_device(options.device)
    torch.manual_seed(0)
    pairs = CUDA_PAIRS if device.type == "cuda" else CPU_PAIRS
    modes = (
        ["sequential", "streams", "threads", "graphs"] if device.type == "cuda" else ["sequential", "threads"]
    )
    print(
        f"device: {device} ({device_name(device)}), torch {torch.__version__}, "
        f"intra-op threads {torch.get_num_threads()}, budget {options.budget:g} s per call\n"
    )

    rows = []
    accuracy = []
    cross_checks = []
    for pair in pairs:
        first = pair.build().to(device, pair.dtype).eval()
        second = pair.build().to(device, pair.dtype).eval()
        x = torch.randn(pair.input_shape, device=device, dtype=pair.dtype)
        for mode in modes:
            result = dual_infer(first, second, x, mode=mode, budget=options.budget, names=["A", "B"])
            lo, hi = result.speedup_ci
            rows.append(
                [
                    pair.name,
                    result.mode + ("" if result.mode == mode else f" (asked {mode})"),
                    " / ".join(f"{lane.alone.median * 1e3:.3f}" for lane in result.lanes),
                    f"{result.sequential.median * 1e3:.3f}",
                    f"{result.concurrent.median * 1e3:.3f}",
                    f"{result.speedup:.2f} [{lo:.2f}, {hi:.2f}]",
                    f"{result.ideal_speedup:.2f}",
                    "-" if result.efficiency is None else f"{result.efficiency:.2f}",
                    f"{result.overlap:.2f}",
                    "yes" if result.correct else "NO",
                ]
            )
            if mode == "sequential":
                accuracy.append(_accuracy_row(pair.name, first, x, result.lanes[0].alone.median))
            if mode == "threads" and device.type == "cpu":
                alone = max(lane.alone.median for lane in result.lanes)
                hand = _hand_measured_speedup(first, second, x, alone)
                cross_checks.append([pair.name, rows[-1][5], f"{hand:.2f}"])
    print(
        tabulate(
            rows,
            headers=[
                "pair",
                "mode",
                "alone ms (A / B)",
                "sequential ms",
                "concurrent ms",
                "speedup [95% CI]",
                "ideal",
                "efficiency",
                "overlap",
                "correct",
            ],
            tablefmt=options.format,
        )
    )
    print("\nHarness accuracy: one model alone, torch.utils.benchmark.Timer vs the engine's alone time\n")
    print(
        tabulate(
            accuracy,
            headers=["model", "Timer median ms", "engine alone ms", "engine / Timer"],
            tablefmt=options.format,
        )
    )
    if cross_checks:
        print(
            "\nThreads speedup: the engine vs two hand-written threads (paired 20 ms rounds, 10 ms pauses)\n"
        )
        print(
            tabulate(
                cross_checks, headers=["pair", "engine speedup [95% CI]", "by hand"], tablefmt=options.format
            )
        )


def _hand_measured_speedup(
    first: nn.Module, second: nn.Module, x: torch.Tensor, alone: float, rounds: int = 20
) -> float:
    """Sequential on this thread vs two threads with one intra-op thread each; median of paired ratios.

    Each lane repeats its model for about 20 ms per round, so waking the threads is not what is measured.
    """
    torch.get_num_threads()  # fix this thread's pool before the workers change the process-wide default
    reps = max(1, round(0.02 / alone))
    start = [threading.Event(), threading.Event()]
    done = [threading.Event(), threading.Event()]

    def lane(index: int, model: nn.Module) -> None:
        torch.set_num_threads(1)
        with torch.no_grad():
            while True:
                start[index].wait()
                start[index].clear()
                for _ in range(reps):
                    model(x)
                done[index].set()

    for index, model in enumerate((first, second)):
        threading.Thread(target=lane, args=(index, model), daemon=True).start()

    def sequential() -> float:
        began = time.perf_counter()
        with torch.no_grad():
            for _ in range(reps):
                first(x)
                second(x)
        return time.perf_counter() - began

    def concurrent() -> float:
        began = time.perf_counter()
        for event in start:
            event.set()
        for event in done:
            event.wait()
            event.clear()
        return time.perf_counter() - began

    ratios = []
    for _ in range(rounds + 3):
        time.sleep(0.01)
        seq = sequential()
        time.sleep(0.01)
        ratios.append(seq / concurrent())
    return statistics.median(ratios[3:])


def _accuracy_row(name: str, model: nn.Module, x: torch.Tensor, engine_alone: float) -> list[str]:
    timer = torch_benchmark.Timer(
        "model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads()
    )
    with torch.no_grad():
        reference = timer.blocked_autorange(min_run_time=1.0).median
    return [name, f"{reference * 1e3:.3f}", f"{engine_alone * 1e3:.3f}", f"{engine_alone / reference:.2f}"]


if __name__ == "__main__":
    main()
