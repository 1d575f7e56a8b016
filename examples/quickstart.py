"""Two small models on one device: back to back versus concurrently, measured by pytest-dualgpu.

    python examples/quickstart.py [--device auto|cpu|cuda] [--budget SECONDS]

The classic "dual model inference" snippet runs two linear models one after the other on the default
stream; nothing overlaps, whatever the GPU. ``mode="sequential"`` measures exactly that; the default
``mode="auto"`` tries every way of running them at once (streams, threads, CUDA graphs on a GPU; threads
on CPU), keeps the best, and checks that the concurrent outputs equal each model's output alone.
"""

from __future__ import annotations

import argparse

import torch
from zoo import Encoder

from pytest_dualgpu import dual_infer, place_model
from pytest_dualgpu.reports import format_results


def main() -> None:
    parser = argparse.ArgumentParser(description="Two models back to back versus concurrently")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--budget", type=float, default=1.0, help="Seconds of measuring per call")
    options = parser.parse_args()

    torch.manual_seed(0)
    image_encoder = place_model(Encoder(), options.device)
    text_encoder = place_model(Encoder(), options.device)
    batch = torch.randn(32, 512)

    one_stream = dual_infer(
        image_encoder,
        text_encoder,
        batch,
        mode="sequential",
        device=options.device,
        budget=options.budget,
        name="default stream",
    )
    concurrent = dual_infer(
        image_encoder, text_encoder, batch, device=options.device, budget=options.budget, name="dual_infer"
    )
    print(format_results([one_stream, concurrent]))
    print()
    lo, hi = concurrent.speedup_ci
    print(
        f"On {concurrent.device_name}: back to back the lanes overlap {one_stream.overlap:.0%}; "
        f"in {concurrent.mode!r} mode they overlap {concurrent.overlap:.0%} and run "
        f"{concurrent.speedup:.2f}x faster (95% CI {lo:.2f}-{hi:.2f}) of an ideal "
        f"{concurrent.ideal_speedup:.2f}x; outputs {'match' if concurrent.correct else 'DO NOT match'} "
        "each model run alone."
    )
    for warning in one_stream.warnings + concurrent.warnings:
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
