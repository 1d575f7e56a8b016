"""Envelope overlap against kernel overlap, and what the profiled pass costs, on the current device.

    python benchmarks/overlap.py [--device auto|cpu|cuda] [--budget SECONDS] [--format github]

Each pair is measured with ``profile=True``: ``overlap`` comes from each lane's own start and end marks,
``kernel_overlap`` from what torch.profiler saw execute (operators per lane thread on CPU, kernels per
stream on CUDA), and efficiency says whether the overlap paid. The pairs: two sleeping lanes (they
overlap without computing anything: envelope high, kernels idle), two GIL-holding Python lanes (no
overlap at all), and two compute-bound models (both busy at once, but sharing the same cores or SMs).
The last columns time one call with and without the profiled pass.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import nn

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.devices import device_name, resolve_device


class Sleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.004)
        return x * 2


class HoldsTheGil(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deadline = time.perf_counter() + 0.004
        while time.perf_counter() < deadline:
            pass
        return x


class KernelSleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(2_000_000)  # type: ignore[no-untyped-call]
        return x * 2


def mlp(width: int) -> nn.Module:
    return nn.Sequential(*[layer for _ in range(4) for layer in (nn.Linear(width, width), nn.ReLU())])


def pairs(device: torch.device) -> list[tuple[str, Callable[[], nn.Module], torch.Tensor]]:
    if device.type == "cuda":
        return [
            ("sleeping kernels (torch.cuda._sleep)", KernelSleep, torch.ones(8, device=device)),
            ("MLP 4x4096, batch 256", lambda: mlp(4096).to(device), torch.randn(256, 4096, device=device)),
            (
                "MLP 4x256, batch 1 (launch-bound)",
                lambda: mlp(256).to(device),
                torch.randn(1, 256, device=device),
            ),
        ]
    return [
        ("sleeping lanes (time.sleep)", Sleep, torch.ones(8)),
        ("GIL-holding lanes (Python loop)", HoldsTheGil, torch.ones(8)),
        ("MLP 4x1024, batch 64 (compute-bound)", lambda: mlp(1024), torch.randn(64, 1024)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--budget", type=float, default=1.0, help="Seconds of measured rounds per call")
    parser.add_argument("--format", default="simple", help="tabulate format, e.g. github for docs")
    arguments = parser.parse_args()
    device = resolve_device(arguments.device)
    print(
        f"device: {device} ({device_name(device)}), torch {torch.__version__}, budget {arguments.budget:g} s"
    )
    rows = []
    for name, make, x in pairs(device):
        started = time.perf_counter()
        dual_infer(make(), make(), x, budget=arguments.budget)
        plain_seconds = time.perf_counter() - started
        started = time.perf_counter()
        profiled = dual_infer(make(), make(), x, budget=arguments.budget, profile=True)
        profiled_seconds = time.perf_counter() - started
        lo, hi = profiled.speedup_ci
        rows.append(
            [
                name,
                profiled.mode,
                f"{profiled.speedup:.2f}x [{lo:.2f}, {hi:.2f}]",
                "-" if profiled.efficiency is None else f"{profiled.efficiency:.2f}",
                f"{profiled.overlap:.2f}",
                "-" if profiled.kernel_overlap is None else f"{profiled.kernel_overlap:.2f}",
                f"{plain_seconds:.2f}",
                f"{profiled_seconds:.2f}",
            ]
        )
        for warning in profiled.warnings:
            print(f"  {name}: {warning}")
    headers = [
        "pair",
        "mode",
        "speedup [95% CI]",
        "efficiency",
        "overlap",
        "kernel overlap",
        "call s",
        "profiled call s",
    ]
    print(tabulate(rows, headers=headers, tablefmt=arguments.format, disable_numparse=True))


if __name__ == "__main__":
    main()
