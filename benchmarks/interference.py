"""What co-location costs each model, for real models: per-lane latency alone and at once, and slowdown.

    python benchmarks/interference.py [--device cpu|cuda] [--budget 5] [--format github]

Pairs of Hugging Face transformers models built from small configs (``examples/hf_models.py``; nothing
is downloaded): a text encoder beside an image encoder, and a decoder beside a copy of itself. Each call
measures with ``min_rounds`` raised so that every lane makes a few hundred calls, enough for a p99
interval where the calls are fast enough. On CUDA the text encoder is measured again with a high stream
priority.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def rows_for(label: str, result: Any) -> list[list[str]]:
    rows = []
    for lane in result.lanes:
        latency = lane.latency
        interval = latency.slowdown_ci(50)
        p99 = latency.slowdown_ci(99)
        rows.append(
            [
                label,
                f"{lane.name} ({lane.priority})",
                " / ".join(f"{latency.alone.at(p) * 1e3:.2f}" for p in (50, 90, 99)),
                " / ".join(f"{latency.at_once.at(p) * 1e3:.2f}" for p in (50, 90, 99)),
                f"{latency.slowdown(50):.2f}x"
                + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"),
                f"{latency.slowdown(99):.2f}x" + ("" if p99 is None else f" [{p99[0]:.2f}, {p99[1]:.2f}]"),
                f"{latency.alone.n} / {latency.at_once.n}",
                f"{result.speedup:.2f}x",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--format", default="simple")
    options = parser.parse_args()
    import torch
    from hf_models import decoder, decoder_inputs, image_encoder, image_inputs, text_encoder, text_inputs

    from pytest_dualgpu import dual_infer, place_model

    def on_device(inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value.to(options.device) if hasattr(value, "to") else value for key, value in inputs.items()
        }

    settings: dict[str, Any] = {"device": options.device, "budget": options.budget, "min_rounds": 60}
    pairs = {
        "text encoder + image encoder": (text_encoder, image_encoder, text_inputs, image_inputs),
        "decoder + decoder": (decoder, decoder, decoder_inputs, decoder_inputs),
    }
    table = []
    for label, (first, second, first_inputs, second_inputs) in pairs.items():
        models = [place_model(first(), options.device), place_model(second(), options.device)]
        inputs = [on_device(first_inputs()), on_device(second_inputs())]
        table += rows_for(label, dual_infer(*models, *inputs, **settings))
        if options.device.startswith("cuda") and label.startswith("text"):
            result = dual_infer(*models, *inputs, priorities=["high", "normal"], **settings)
            table += rows_for(f"{label}, text encoder at high priority", result)
    print(f"device: {options.device}, torch {torch.__version__}, budget {options.budget:g} s per call\n")
    headers = [
        "pair", "lane", "alone p50 / p90 / p99 ms", "at once p50 / p90 / p99 ms", "slowdown p50 [95% CI]",
        "slowdown p99 [95% CI]", "calls alone / at once", "speedup",
    ]  # fmt: skip
    print(tabulate(table, headers=headers, tablefmt=options.format, disable_numparse=True))


if __name__ == "__main__":
    main()
