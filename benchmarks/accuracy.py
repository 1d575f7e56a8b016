"""How far the engine's figures and verdicts can be trusted: real models and controls with a known answer.

    python benchmarks/accuracy.py [--device cpu|cuda] [--part models|verdicts|all] [--runs 10]
                                  [--compare-with OTHER_CHECKOUT] [--format github]

Part "models": pairs of real third-party models (transformers, built from small configs: nothing is
downloaded). Each lane's alone time is taken against ``torch.utils.benchmark.Timer.blocked_autorange``
measured at the same moment, because this VM's speed moves by up to 25% over seconds to minutes:
- the first ``dual_infer`` call of a fresh process (every first-call effect in play; the warm-up rule must
  absorb them) against Timer right after it, in ``--processes`` fresh processes per pair;
- calls after a 10 s warm-up against Timer right before and after each, five times; a repetition counts
  only where those two Timers agree within 5% (the machine held still).
A first call at steady state reads like the steady calls; one measured in its slow phase reads higher.

Part "verdicts": pairs whose speedup is fixed by construction, GIL-free, so it holds on a loaded machine:
two lanes that sleep 3 ms each while holding one shared lock (they can only take turns: 1.0x), and two
lanes that sleep 4 ms and 2 ms (perfect overlap: 1.5x). Each pair is judged by ``dualgpu_speedup``'s own
code against bounds 15% below, at, and 15% above the truth, ``--runs`` times each, first on a quiet
machine and then beside a CPU load this script starts (one busy process per core) and stops. A wrong
verdict is a pass above the truth or a fail below it; at the truth the honest answer is "inconclusive".
``--compare-with`` times the same calls (no bound, default settings) with another checkout's code, in
the same run, for the seconds-per-call comparison.

On CUDA (``--device cuda``) the controls are lanes of ``torch.cuda._sleep`` kernels on their own streams
(the same shapes: one shared stream, or 2:1 lengths), and the lanes' warm-up time shows what the GPU's
clocks needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
PAIRS = {"encoder + vision transformer": ("bert", "vit"), "decoder + conv net": ("gpt2", "resnet")}


def real_model(kind: str) -> tuple[Any, dict[str, Any]]:
    """A transformers model from a small config, in eval mode, and its keyword inputs."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    generator = torch.Generator().manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=1000,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
        )
        model, inputs = (
            transformers.BertModel(config),
            {"input_ids": torch.randint(0, 1000, (4, 64), generator=generator)},
        )
    elif kind == "vit":
        config = transformers.ViTConfig(
            image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512,
        )  # fmt: skip
        model, inputs = (
            transformers.ViTModel(config),
            {"pixel_values": torch.randn(4, 3, 64, 64, generator=generator)},
        )
    elif kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=1000, n_positions=128, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0
        )
        model = transformers.GPT2Model(config)
        inputs = {"input_ids": torch.randint(0, 1000, (4, 64), generator=generator), "use_cache": False}
    elif kind == "resnet":
        config = transformers.ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_labels=10
        )
        model = transformers.ResNetModel(config)
        inputs = {"pixel_values": torch.randn(4, 3, 64, 64, generator=generator)}
    else:
        raise ValueError(kind)
    return model.eval(), inputs


def timer_median(model: Any, inputs: dict[str, Any], device: str, seconds: float = 0.5) -> float:
    import torch
    from torch.utils import benchmark

    timer = benchmark.Timer(
        "model(**inputs)", globals={"model": model, "inputs": inputs}, num_threads=torch.get_num_threads()
    )
    with torch.no_grad():
        if device == "cuda":
            torch.cuda.synchronize()
        return float(timer.blocked_autorange(min_run_time=seconds).median)


def _built(first: str, second: str, device: str) -> list[tuple[Any, dict[str, Any]]]:
    import torch

    from pytest_dualgpu import place_model

    torch.manual_seed(0)
    pairs = []
    for kind in (first, second):
        model, inputs = real_model(kind)
        placed = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        pairs.append((place_model(model, device), placed))
    return pairs


def first_child(first: str, second: str, device: str) -> dict[str, Any]:
    """In a fresh process: the first call (every first-call effect in play), then Timer right after."""
    from pytest_dualgpu import dual_infer

    (model_a, inputs_a), (model_b, inputs_b) = pairs = _built(first, second, device)
    result = dual_infer(model_a, model_b, inputs_a, inputs_b, device=device)
    after = [timer_median(model, kw, device) for model, kw in pairs]
    return {
        "vs_timer": [lane.alone.median / timer for lane, timer in zip(result.lanes, after, strict=True)],
        "warmup": [lane.warmup.to_dict() if lane.warmup else None for lane in result.lanes],
        "speedup": result.speedup,
        "seconds": result.warmup_seconds + result.measuring_seconds,
        "problems": result.problems,
    }


def steady_child(first: str, second: str, device: str, repeats: int = 5) -> dict[str, Any]:
    """After 10 s of each model: Timer / engine / Timer, ``repeats`` times. A repetition counts only where
    the two Timers agree within 5% (the machine held still), against their mean."""
    import torch

    from pytest_dualgpu import dual_infer

    (model_a, inputs_a), (model_b, inputs_b) = pairs = _built(first, second, device)
    with torch.no_grad():
        for model, kw in pairs:
            deadline = time.perf_counter() + 10
            while time.perf_counter() < deadline:
                model(**kw)
    ratios: list[list[float]] = [[], []]
    unsteady = 0
    for _ in range(repeats):
        before = [timer_median(model, kw, device) for model, kw in pairs]
        result = dual_infer(model_a, model_b, inputs_a, inputs_b, device=device)
        after = [timer_median(model, kw, device) for model, kw in pairs]
        if any(abs(b / a - 1) > 0.05 for b, a in zip(before, after, strict=True)):
            unsteady += 1
            continue
        for lane, (b, a) in enumerate(zip(before, after, strict=True)):
            ratios[lane].append(result.lanes[lane].alone.median / ((b + a) / 2))
    return {"vs_timer": ratios, "unsteady": unsteady, "repeats": repeats}


def _child(mode: str, first: str, second: str, device: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, first, second, "--device", device],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) - 1:+.1%} [{min(values) - 1:+.1%}, {max(values) - 1:+.1%}]"


def part_models(device: str, tablefmt: str, processes: int) -> str:
    rows = []
    for label, (first, second) in PAIRS.items():
        firsts = [_child("first", first, second, device) for _ in range(processes)]
        steady = _child("steady", first, second, device)
        speedups = ", ".join(f"{run['speedup']:.2f}" for run in firsts)
        kept = f"{steady['repeats'] - steady['unsteady']}/{steady['repeats']}; speedups {speedups}"
        for lane in range(2):
            warmups = [run["warmup"][lane] for run in firsts]
            rows.append(
                [
                    label if lane == 0 else "",
                    (first, second)[lane],
                    _spread([run["vs_timer"][lane] for run in firsts]),
                    _spread(steady["vs_timer"][lane]),
                    f"{min(w['seconds'] for w in warmups):.2f}-{max(w['seconds'] for w in warmups):.2f} s, "
                    f"{sum(w['converged'] for w in warmups)}/{processes} converged",
                    kept if lane == 0 else "",
                ]
            )
        for problem in sorted({problem for run in firsts for problem in run["problems"]}):
            rows.append(["", "problem:", problem[:90], "", "", ""])
    headers = [
        "pair", "lane", "first call vs Timer after it", "steady call vs Timer around it",
        "warm-up in the first call", "steady repeats kept; first-call speedups",
    ]  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def cpu_sleep_pairs() -> dict[str, tuple[Any, Any, float]]:
    """The CPU controls: lanes that sleep (releasing the GIL), two of them under one shared lock."""
    import torch
    from torch import nn

    class Sleep(nn.Module):
        def __init__(self, seconds: float, shared: threading.Lock | None = None) -> None:
            super().__init__()
            self.seconds = seconds
            self.shared = shared

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with self.shared or contextlib.nullcontext():
                time.sleep(self.seconds)
            return x * 2

    lock = threading.Lock()
    return {
        "sleeps under one lock (1.0x)": (Sleep(0.003, lock), Sleep(0.003, lock), 1.0),
        "sleeps of 4 ms + 2 ms (1.5x)": (Sleep(0.004), Sleep(0.002), 1.5),
    }


def _sleep_pairs(device: str) -> dict[str, tuple[Any, Any, float]]:
    """Name -> (lane, lane, true speedup)."""
    import torch
    from torch import nn

    if device == "cuda":
        from pytest_dualgpu.engine.sync import GPU_CYCLES_PER_SECOND as cycles

        class Kernels(nn.Module):
            def __init__(self, seconds: float, shared: torch.cuda.Stream | None = None) -> None:
                super().__init__()
                self.cycles = int(seconds * cycles / 10)
                self.shared = shared

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                stream = self.shared or torch.cuda.current_stream()
                with torch.cuda.stream(stream):
                    for _ in range(10):
                        torch.cuda._sleep(self.cycles)
                torch.cuda.current_stream().wait_stream(stream)
                return x * 2

        shared = torch.cuda.Stream()
        return {
            "one shared stream (1.0x)": (Kernels(0.003, shared), Kernels(0.003, shared), 1.0),
            "4 ms + 2 ms of kernels (1.5x)": (Kernels(0.004), Kernels(0.002), 1.5),
        }

    return cpu_sleep_pairs()


def _burn(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


class Load:
    """One busy process per core, at normal priority, for as long as the block lasts."""

    def __enter__(self) -> Load:
        self.stop = multiprocessing.Event()
        self.workers = [
            multiprocessing.Process(target=_burn, args=(self.stop,), daemon=True)
            for _ in range(os.cpu_count() or 1)
        ]
        for worker in self.workers:
            worker.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(5)


def part_verdicts(device: str, runs: int, tablefmt: str, compare_with: str | None) -> str:
    rows = []
    for load in ("quiet", "loaded"):
        with Load() if load == "loaded" else _Quiet():
            for name, (first, second, truth) in _sleep_pairs(device).items():
                free = _seconds_per_call(first, second, device, max(3, runs // 2))
                other = (
                    _other_checkout_seconds(compare_with, name, device, max(3, runs // 2))
                    if compare_with
                    else None
                )
                free_text = f"{free:.2f}" + (f" (other checkout {other:.2f})" if other else "")
                for factor in (0.85, 1.0, 1.15):
                    rows.append(
                        [load, name, *_verdict_row(first, second, device, truth, factor, runs), free_text]
                    )
                    print(rows[-1], file=sys.stderr, flush=True)
    headers = [
        "machine", "pair", "bound", "pass / inconclusive / fail", "wrong verdicts", "speedups seen",
        "s per call (bound)", "s per call (no bound)",
    ]  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def _seconds_per_call(first: Any, second: Any, device: str, runs: int) -> float:
    import torch

    from pytest_dualgpu import dual_infer

    x = torch.ones(2, device=device)
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        dual_infer(first, second, x, device=device)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def _verdict_row(first: Any, second: Any, device: str, truth: float, factor: float, runs: int) -> list[str]:
    """Judge the pair ``runs`` times against truth x factor with dualgpu_speedup's own code."""
    import torch

    from pytest_dualgpu import dual_infer
    from pytest_dualgpu.plugin.verdicts import SpeedupSpec, judge

    x = torch.ones(2, device=device)
    bound = round(truth * factor, 4)
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    seconds, speedups = [], []
    for _ in range(runs):
        began = time.perf_counter()
        result = dual_infer(first, second, x, device=device, bounds={"speedup": bound})
        seconds.append(time.perf_counter() - began)
        speedups.append(result.speedup)
        counts[
            judge(result, {"dualgpu_speedup": SpeedupSpec(min=bound, device=device)})["speedup"].status
        ] += 1
    if factor < 1:
        wrong = str(counts["fail"])
    elif factor > 1:
        wrong = str(counts["pass"])
    else:
        wrong = f"- ({counts['inconclusive'] / runs:.0%} inconclusive)"
    return [
        f"{bound:.3f} ({factor:.2f}x truth)",
        f"{counts['pass']} / {counts['inconclusive']} / {counts['fail']}",
        wrong,
        f"{min(speedups):.3f}-{max(speedups):.3f}",
        f"{statistics.median(seconds):.2f}",
    ]


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


_OTHER = """
import statistics, sys, time, torch
sys.path.insert(0, {benchmarks!r})
from accuracy import cpu_sleep_pairs
from pytest_dualgpu import dual_infer
first, second, _ = cpu_sleep_pairs()[{name!r}]
seconds = []
for _ in range({runs}):
    began = time.perf_counter()
    dual_infer(first, second, torch.ones(2))
    seconds.append(time.perf_counter() - began)
print(statistics.median(seconds))
"""


def _other_checkout_seconds(checkout: str, name: str, device: str, runs: int) -> float | None:
    """Median seconds per call of the same no-bound call with another checkout's code (CPU pairs)."""
    if device != "cpu":
        return None
    src = str(Path(checkout).resolve() / "src")
    done = subprocess.run(
        [sys.executable, "-c", _OTHER.format(benchmarks=str(HERE), name=name, runs=runs)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": src},
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--part", choices=["models", "verdicts", "all"], default="all")
    parser.add_argument("--runs", type=int, default=10, help="Calls per bound in the verdicts part")
    parser.add_argument("--processes", type=int, default=5, help="Fresh processes per pair for first calls")
    parser.add_argument("--compare-with", help="another checkout of pytest-dualgpu, for seconds per call")
    parser.add_argument("--format", default="simple")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        mode, first, second = options.child
        child = first_child if mode == "first" else steady_child
        print(json.dumps(child(first, second, options.device)))
        return
    import torch

    print(
        f"device: {options.device}, torch {torch.__version__}, {os.cpu_count()} cores, "
        f"intra-op threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}\n"
    )
    if options.part in ("models", "all"):
        print(part_models(options.device, options.format, options.processes), "\n", flush=True)
    if options.part in ("verdicts", "all"):
        print(part_verdicts(options.device, options.runs, options.format, options.compare_with))


if __name__ == "__main__":
    main()
