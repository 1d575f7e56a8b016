"""The measuring commands of ``dualgpu``: profile, matrix, sweep and demo.

Every reference and spec is read, and every model built once, before anything is measured: a typo is a
usage error in a second, not a failure an hour into a matrix. Measuring then goes task by task with a
progress bar (tqdm: it shows the pair and the time left), and Ctrl-C stops it with what finished printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pytest_dualgpu.cli import tasks as command_tasks
from pytest_dualgpu.cli.output import INTERRUPTED, emit
from pytest_dualgpu.cli.tasks import Models, Task
from pytest_dualgpu.engine.devices import place_model, resolve_device
from pytest_dualgpu.engine.refs import InputSpec, ModelBuildError, ModelRef, inputs_for
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.files import target_path
from pytest_dualgpu.latency import Objective
from pytest_dualgpu.reports.rows import (
    CallError,
    ReportRow,
    dumps,
    efficiency_note,
    format_results,
    json_document,
    latency_table,
)
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.specs import check_max_budget

DEMO = [f"pytest_dualgpu.demo:{name}" for name in ("MLP", "SmallCNN", "TinyTransformer")]


class ModelBuilder:
    """How to build a fresh pair of placed models and their inputs, for one task."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device = device
        self.dtype = dtype

    def check(
        self, refs: Sequence[ModelRef], specs: Sequence[InputSpec | None], batch: int | None = None
    ) -> list[str]:
        """Build every model and its inputs once, so a bad reference fails before any measuring; the
        models' display names, unique.

        A model whose own code raises is not bad usage: its tasks fail the same way, and the rest run.
        """
        names = []
        for ref, spec in zip(refs, specs, strict=True):
            name = ref.name
            with contextlib.suppress(ModelBuildError):
                model = ref.load()
                name = ref.lane_name(model)
                inputs_for(model, spec, batch, self.dtype)
            names.append(name)
        return _unique(names)

    def pair(
        self,
        refs: tuple[ModelRef, ModelRef],
        specs: tuple[InputSpec | None, InputSpec | None],
        batch: int | None = None,
    ) -> Models:
        def make() -> tuple[torch.nn.Module, torch.nn.Module, Any, Any]:
            built = []
            for ref, spec in zip(refs, specs, strict=True):
                model = place_model(ref.load(), self.device, dtype=self.dtype)
                built.append((model, inputs_for(model, spec, batch, self.dtype)))
            (model_a, inputs_a), (model_b, inputs_b) = built
            return model_a, model_b, inputs_a, inputs_b

        return make


def run_command(arguments: argparse.Namespace) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `python -m` would have it: references to modules in the project
    for option, path in (("--json", arguments.json), ("--png", arguments.png)):
        if path is not None:
            target_path(path, option)  # a folder, or a file in the way, is bad usage before any measuring
    if arguments.png:
        from pytest_dualgpu.reports.plots import require_matplotlib

        require_matplotlib()
    device = resolve_device(arguments.device, "--device")
    builder = ModelBuilder(device, getattr(torch, arguments.dtype) if arguments.dtype else None)
    settings: dict[str, Any] = {"device": device, "budget": arguments.budget}
    if arguments.max_budget is not None:
        check_max_budget(arguments.budget, arguments.max_budget)
        settings["max_budget"] = arguments.max_budget
    for name in ("warmup", "min_rounds", "settle"):
        if getattr(arguments, name) is not None:
            settings[name] = getattr(arguments, name)
    progress = sys.stderr.isatty() if arguments.progress is None else arguments.progress
    command = arguments.command
    if command == "demo":
        return _demo(arguments, builder, settings, progress)
    refs = [ModelRef(text) for text in arguments.models]
    specs = _specs(arguments.inputs, len(refs))
    if command == "matrix":
        return _matrix(arguments, refs, specs, builder, settings, progress)
    pair_refs = (refs[0], refs[1])
    pair_specs = (specs[0], specs[1])
    first, second = builder.check(refs, specs, batch=arguments.batch[0] if command == "sweep" else None)
    names = (first, second)
    if command == "profile":
        modes = [arguments.mode] if arguments.mode else command_tasks.applicable_modes(device)
        tasks = command_tasks.profile_tasks(builder.pair(pair_refs, pair_specs), names, modes, settings)
        return _finish(arguments, tasks, _run(tasks, progress, "profile"), _profile_text)
    for objective in arguments.slo:
        if objective.model not in names:
            raise DualGpuUsageError(
                f"--slo {objective}: no model named {objective.model!r}; the models are {', '.join(names)}"
            )
    tasks = [
        Task(f"{names[0]} + {names[1]} @ batch {batch}", names, builder.pair(pair_refs, pair_specs, batch),
             {**settings, "mode": arguments.mode or "auto"}, key=batch)
        for batch in arguments.batch
    ]  # fmt: skip
    render = functools.partial(_sweep_text, names, objectives=arguments.slo)
    return _finish(arguments, tasks, _run(tasks, progress, "sweep"), render)


def _specs(texts: Sequence[str], models: int) -> list[InputSpec | None]:
    if not texts:
        return [None] * models
    specs: list[InputSpec | None] = [InputSpec.parse(text) for text in texts]
    if len(specs) == 1:
        return specs * models
    if len(specs) != models:
        raise DualGpuUsageError(
            f"--inputs takes one spec for every model or one per model ({models}), not {len(specs)}"
        )
    return list(specs)


def _unique(wanted: Sequence[str]) -> list[str]:
    """The names, numbered where two are the same (a.py:Model, b.py:Model)."""
    names: list[str] = []
    for base in wanted:
        name, number = base, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def _matrix(
    arguments: argparse.Namespace,
    refs: list[ModelRef],
    specs: list[InputSpec | None],
    builder: ModelBuilder,
    settings: dict[str, Any],
    progress: bool,
) -> int:
    names = builder.check(refs, specs)
    tasks = _matrix_tasks(names, refs, specs, builder, {**settings, "mode": arguments.mode or "auto"})
    interrupted = _run(tasks, progress, "matrix")
    if arguments.png:
        _matrix_png(names, tasks, arguments.png)
    return _finish(arguments, tasks, interrupted, lambda done: _matrix_text(names, done, arguments.metric))


def _matrix_tasks(
    names: list[str],
    refs: list[ModelRef],
    specs: list[InputSpec | None],
    builder: ModelBuilder,
    settings: dict[str, Any],
) -> list[Task]:
    tasks = []
    for first, second in command_tasks.matrix_pairs(len(refs)):
        pair = (names[first], names[second] if first != second else f"{names[second]}-copy")
        make = builder.pair((refs[first], refs[second]), (specs[first], specs[second]))
        tasks.append(Task(f"{pair[0]} + {pair[1]}", pair, make, settings, key=(first, second)))
    return tasks


def _demo(
    arguments: argparse.Namespace, builder: ModelBuilder, settings: dict[str, Any], progress: bool
) -> int:
    refs = [ModelRef(text) for text in DEMO]
    specs: list[InputSpec | None] = [None] * len(refs)
    names = _unique([ref.name for ref in refs])
    tasks = _matrix_tasks(names, refs, specs, builder, {**settings, "mode": arguments.mode or "auto"})
    interrupted = _run(tasks, progress, "demo: matrix")
    print(f"== matrix of the built-in models ({', '.join(names)}) ==")
    print(_matrix_text(names, tasks))
    _print_notes(tasks)
    if arguments.png:
        _matrix_png(names, tasks, arguments.png)
    pairs = [task for task in tasks if task.key[0] != task.key[1]]
    best = command_tasks.best(pairs)
    profiled: list[Task] = []
    if best is not None and not interrupted:
        pair_refs = (refs[best.key[0]], refs[best.key[1]])
        modes = [arguments.mode] if arguments.mode else command_tasks.applicable_modes(builder.device)
        profiled = command_tasks.profile_tasks(
            builder.pair(pair_refs, (None, None)), best.names, modes, settings
        )
        interrupted = _run(profiled, progress, "demo: profile")
        print(f"\n== profile of the best pair of two different models, {best.label} ==")
        print(_profile_text(profiled))
        _print_notes(profiled)
    return _finish(arguments, tasks + profiled, interrupted, None)


def _run(tasks: list[Task], progress: bool, title: str) -> bool:
    """Run the tasks with a progress bar; True when Ctrl-C stopped them."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc=title, unit="call", disable=not progress, file=sys.stderr) as bar:
        try:
            for task in tasks:
                bar.set_postfix_str(f"{task.label} ({task.settings.get('mode', 'auto')})")
                task.run()
                bar.update(1)
        except KeyboardInterrupt:
            return True
    return False


def _finish(arguments: argparse.Namespace, tasks: list[Task], interrupted: bool, render: Any) -> int:
    done = [task for task in tasks if task.done]
    if interrupted:
        print(f"interrupted: {len(done)} of {len(tasks)} measured", file=sys.stderr)
    if render is not None:
        print(render(done))
        _print_notes(done)
    if arguments.json:
        emit(dumps(_document(arguments.command, done)), arguments.json)
    if arguments.png and arguments.command in ("profile", "sweep"):
        _png(arguments, done)
    if interrupted:
        return INTERRUPTED
    return 1 if any(task.error is not None or task.wrong for task in tasks) else 0


def _print_notes(tasks: list[Task]) -> None:
    """Under a table: each unreliable result's problems and each result's warnings."""
    for line in command_tasks.notes(task for task in tasks if task.done):
        print(line)


def _profile_text(tasks: list[Task]) -> str:
    results = command_tasks.results_of(tasks)
    lines = [format_results(results)] if results else []
    latencies = latency_table([ReportRow(f"{result.mode} mode", result) for result in results], "simple")
    if latencies:
        lines += ["", "latency of each model, ms (closed loop, alone and while the other runs):", latencies]
    lines += [f"{task.key}: failed: {task.error}" for task in tasks if task.error is not None]
    lines += _efficiency_notes(results)
    lines.append(f"verdict: {command_tasks.profile_verdict(tasks)}")
    return "\n".join(lines)


def _efficiency_notes(results: list[DualResult]) -> list[str]:
    note = efficiency_note(results)
    return [note] if note else []


def _matrix_text(names: list[str], tasks: list[Task], metric: str = "speedup") -> str:
    verdict = (
        command_tasks.matrix_verdict(tasks) if metric == "speedup" else command_tasks.slowdown_verdict(tasks)
    )
    notes = _efficiency_notes(command_tasks.results_of(tasks)) if metric == "speedup" else []
    return "\n".join([command_tasks.matrix_table(names, tasks, metric=metric), *notes, f"verdict: {verdict}"])


def _sweep_text(names: tuple[str, str], tasks: list[Task], objectives: Sequence[Objective] = ()) -> str:
    lines = [
        command_tasks.sweep_table(names, tasks, objectives=objectives),
        *_efficiency_notes(command_tasks.results_of(tasks)),
        f"verdict: {command_tasks.sweep_verdict(tasks)}",
    ]
    if objectives:
        lines.append(f"objectives: {command_tasks.objectives_verdict(tasks, objectives)}")
    return "\n".join(lines)


def _document(command: str, tasks: list[Task]) -> dict[str, Any]:
    from pytest_dualgpu.machine import machine_info

    nodeid = f"dualgpu {command}"
    rows = [ReportRow(nodeid, task.result, call=index) for index, task in enumerate(tasks, 1) if task.result]
    errors = [
        CallError(nodeid, index, f"{task.label}: {task.error}")
        for index, task in enumerate(tasks, 1)
        if task.error
    ]
    return json_document(rows, errors, machine_info())


def _png(arguments: argparse.Namespace, tasks: list[Task]) -> None:
    from pytest_dualgpu.reports import plots

    if arguments.command == "sweep":
        plots.write_sweep_png(
            [int(task.key) for task in tasks], [task.result for task in tasks], Path(arguments.png)
        )
    else:
        rows = [ReportRow("", task.result) for task in tasks if task.result is not None]
        plots.write_session_png(rows, Path(arguments.png))


def _matrix_png(names: list[str], tasks: list[Task], path: str) -> None:
    from pytest_dualgpu.reports import plots

    grid: list[list[Any]] = [[None] * len(names) for _ in names]
    for task in tasks:
        first, second = task.key
        grid[first][second] = grid[second][first] = task.result
    plots.write_matrix_png(names, grid, Path(path))
