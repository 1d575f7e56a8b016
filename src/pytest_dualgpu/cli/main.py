"""The ``dualgpu`` command (also ``python -m pytest_dualgpu``): which models to co-locate, and how.

Exit codes: 0 when everything was measured, 1 when a model failed or gave wrong outputs (its cells say
so, the rest still ran), 2 for bad usage (a reference or spec that cannot be read, a bad option), 130 when
interrupted (after printing what finished).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_dualgpu import __version__
from pytest_dualgpu.cli.output import INTERRUPTED, emit
from pytest_dualgpu.errors import DualGpuUsageError, described
from pytest_dualgpu.latency import Objective
from pytest_dualgpu.modes import CHOICES
from pytest_dualgpu.specs import DEFAULT_BUDGET, DEFAULT_WARMUP, parse_setting

COMMAND_EXAMPLES = {
    "doctor": ["dualgpu doctor --device cuda --json doctor.json", "dualgpu doctor --no-self-test"],
    "demo": ["dualgpu demo", "dualgpu demo --device cuda --png demo.png"],
    "profile": [
        "dualgpu profile mypkg.models:ImageEncoder mypkg.models:TextEncoder --inputs 8x3x224x224 8x128:int64",
        "dualgpu profile models.py:make_detector models.py:Classifier --inputs 4x3x64x64 --dtype float16",
    ],
    "matrix": [
        "dualgpu matrix pytest_dualgpu.demo:MLP pytest_dualgpu.demo:SmallCNN models.py:Encoder",
        "dualgpu matrix models.py:Encoder models.py:Decoder --metric slowdown --json matrix.json",
    ],
    "sweep": [
        "dualgpu sweep pytest_dualgpu.demo:MLP pytest_dualgpu.demo:SmallCNN --batch 1,2,4,8,16 --png s.png",
        "dualgpu sweep models.py:Encoder models.py:Decoder --batch 1,8,32 --slo Encoder:p99<=20ms",
    ],
    "report": [
        "dualgpu report dualgpu.json",
        "dualgpu report shard-0.json shard-1.json --format md --output summary.md",
    ],
    "info": ["dualgpu info --device cuda"],
}
MODELS_AND_INPUTS = """\
models:  package.module:name or path/to/file.py:name: an nn.Module instance or class (the lane is named
         after the reference), or a factory (the lane is named after the class it builds)
inputs:  1x3x224x224, 1x3x224x224:float16, 8x128:int64 (ids in [0, 100)), or module:name / file.py:name
         (a value, or a function returning one, given the batch size if it takes an argument); a model
         with an example_inputs(batch) method needs none
"""
EXIT_CODES = """\
exit codes: 0 ok, 1 a model failed or gave wrong outputs (doctor: a check failed), 2 bad usage,
            130 interrupted (what finished is printed)
"""
EXAMPLES = (
    "examples:\n"
    + "".join(f"  {line}\n" for lines in COMMAND_EXAMPLES.values() for line in lines[:1])
    + f"\n{MODELS_AND_INPUTS}{EXIT_CODES}"
)


def command_epilog(name: str) -> str:
    """A command's own examples, what its arguments take, and the exit codes."""
    examples = "examples:\n" + "".join(f"  {line}\n" for line in COMMAND_EXAMPLES[name])
    takes_models = name in ("profile", "matrix", "sweep")
    return f"{examples}\n{MODELS_AND_INPUTS if takes_models else ''}{EXIT_CODES}"


MODEL_HELP = "each package.module:name or path/to/file.py:name (an nn.Module instance, class or factory)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualgpu",
        description="Measure PyTorch models running concurrently on one device, to choose what to co-locate.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=command_epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    profile = command("profile", "One pair in every applicable mode: the table and the verdict in words")
    profile.add_argument("models", nargs="+", metavar="MODEL", help="Two models: " + MODEL_HELP)
    _add_inputs(profile, "one spec for both models, or one each")
    _add_measuring(profile, modes=True)

    matrix = command("matrix", "Every pair of the models (and each beside a copy of itself): an n x n table")
    matrix.add_argument("models", nargs="+", metavar="MODEL", help="Two or more models: " + MODEL_HELP)
    matrix.add_argument(
        "--metric", choices=("speedup", "slowdown"), default="speedup",
        help="What each cell shows: speedup / efficiency (default), or the worse of the pair's slowdowns",
    )  # fmt: skip
    _add_inputs(matrix, "one spec for every model, or one per model")
    _add_measuring(matrix)

    sweep = command(
        "sweep", "One pair over batch sizes: speedup, ideal and throughput, and where it stops paying"
    )
    sweep.add_argument("models", nargs="+", metavar="MODEL", help="Two models: " + MODEL_HELP)
    sweep.add_argument("--batch", required=True, type=_batches, help="Batch sizes, e.g. 1,2,4,8,16,32")
    sweep.add_argument(
        "--slo", action="append", default=[], type=_objective, metavar="MODEL:pNN<=TIME",
        help="A latency objective at once, e.g. Encoder:p99<=20ms (repeatable): marked per batch size",
    )  # fmt: skip
    _add_inputs(sweep, "shapes whose first size is replaced by each batch size")
    _add_measuring(sweep)

    report = command("report", "Render saved JSON reports as one table, markdown or one merged JSON")
    report.add_argument(
        "files",
        nargs="+",
        metavar="REPORT.json",
        help="JSON reports of pytest --dualgpu-report=json:PATH or --json",
    )
    report.add_argument(
        "--format",
        choices=("term", "term-wide", "md", "json"),
        default="term",
        help="Output format: term (the table, fitted to the terminal when printed to one), term-wide (every "
        "column whole), md (a summary page), json (the merged report)",
    )
    report.add_argument("--output", metavar="PATH", help="Write there instead of standard output")

    demo = command("demo", "The matrix and the best pair's profile on built-in models (no code of yours)")
    _add_measuring(demo, budget=0.3)

    doctor = command(
        "doctor",
        "Whether models can overlap on this machine: build, settings, GPU state and a one-minute self-test",
    )
    doctor.add_argument(
        "--device",
        default="auto",
        help="Device to check: auto (default: cuda if available), cpu, cuda, cuda:N",
    )
    doctor.add_argument("--json", metavar="PATH", help="Also write the checks and the machine as JSON")
    doctor.add_argument(
        "--self-test", action=argparse.BooleanOptionalAction, default=True,
        help="Run every mode on the device with known lanes (default; at most a minute)",
    )  # fmt: skip

    info = command("info", "Show the device dualgpu would measure on")
    info.add_argument("--device", default="auto", help="Device to describe (auto, cpu, cuda, cuda:N)")
    return parser


def _add_inputs(parser: argparse.ArgumentParser, meaning: str) -> None:
    parser.add_argument("--inputs", nargs="+", metavar="SPEC", default=[], help=f"Input specs: {meaning}")


def _add_measuring(
    parser: argparse.ArgumentParser, modes: bool = False, budget: float = DEFAULT_BUDGET
) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N"
    )
    mode_help = "Only this mode (default: every applicable one)" if modes else "Execution mode (default auto)"
    parser.add_argument("--mode", choices=CHOICES, help=mode_help)
    parser.add_argument(
        "--budget",
        type=_setting("budget"),
        default=budget,
        help=f"Seconds of measuring per call (default {budget:g})",
    )
    parser.add_argument(
        "--max-budget",
        type=_setting("max_budget"),
        help="Seconds a call may measure at most (default 5x the budget)",
    )
    parser.add_argument(
        "--warmup",
        type=_setting("warmup"),
        help=f"Cap in seconds of each call's steady-state warm-up (default {DEFAULT_WARMUP:g}; 0 skips it)",
    )
    parser.add_argument(
        "--min-rounds",
        type=_setting("min_rounds"),
        help="Fewest measured rounds per call (default 7): fewer for a quick look, more for steadier figures",
    )
    parser.add_argument(
        "--settle",
        type=_setting("settle"),
        help="Pause in seconds before each measured sample on CPU, for OpenMP workers to go idle "
        "(default 0.01; 0 for none)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), help="Cast models and float inputs"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="Write the results as a JSON report (dualgpu report reads it)"
    )
    parser.add_argument("--png", metavar="PATH", help="Draw the results (needs the plot extra)")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="Show a progress bar (default: when standard error is a terminal)",
    )  # fmt: skip


def _objective(text: str) -> Objective:
    try:
        return Objective.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _setting(name: str) -> Callable[[str], Any]:
    """An argparse type for one of the measuring settings, checked by the rule the API and plugin use."""

    def parse(text: str) -> Any:
        try:
            return parse_setting(name, text)
        except DualGpuUsageError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    return parse


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: batch sizes are integers separated by commas, e.g. 1,2,4,8"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be at least 1")
    return sorted(set(sizes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 0
    try:
        if arguments.command == "info":
            return _info(arguments.device)
        if arguments.command == "report":
            return _report(arguments)
        if arguments.command == "doctor":
            return _doctor(arguments)
        if arguments.command in ("profile", "sweep") and len(arguments.models) != 2:
            raise DualGpuUsageError(
                f"{arguments.command} takes two models, got {len(arguments.models)}; use matrix for more"
            )
        from pytest_dualgpu.cli.commands import run_command

        return run_command(arguments)
    except DualGpuUsageError as error:
        print(f"dualgpu {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # writing a file failed (a full disk): the old file, if any, is untouched
        print(f"dualgpu {arguments.command}: error: {described(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before measuring began (imports, building models): nothing to show
        print(f"dualgpu {arguments.command}: interrupted before anything was measured", file=sys.stderr)
        return INTERRUPTED


def _info(spec: str) -> int:
    import torch

    from pytest_dualgpu.engine.devices import device_name, resolve_device

    device = resolve_device(spec, "--device")
    print(f"device: {device} ({device_name(device)})")
    print(f"torch: {torch.__version__}, CUDA {torch.version.cuda or 'not built'}")
    print(f"intra-op threads: {torch.get_num_threads()}")
    return 0


def _doctor(arguments: argparse.Namespace) -> int:
    from pytest_dualgpu.cli.doctor import diagnose

    if arguments.json is not None:
        from pytest_dualgpu.files import target_path

        target_path(arguments.json, "--json")
    diagnosis = diagnose(arguments.device, self_test=arguments.self_test)
    print(diagnosis.text())
    if arguments.json is not None:
        diagnosis.write_json(arguments.json)
        print(f"dualgpu: wrote {Path(arguments.json).expanduser()}", file=sys.stderr)
    return 1 if diagnosis.failed else 0


def _report(arguments: argparse.Namespace) -> int:
    from pytest_dualgpu.files import target_path
    from pytest_dualgpu.reports.merge import merge_reports, render

    if arguments.output is not None:
        target_path(arguments.output, "--output")
    merged = merge_reports([Path(name) for name in arguments.files])
    from pytest_dualgpu.reports.tablefit import terminal_width

    # Fitted for a reader at a terminal (or one who set COLUMNS), whole for a file or a pipe.
    fit = arguments.output is None and (sys.stdout.isatty() or "COLUMNS" in os.environ)
    text = render(merged, arguments.format, terminal_width() if fit else None)
    emit(text, arguments.output)
    failed = merged.errors or any(row.failed for row in merged.rows)
    return 1 if failed else 0
