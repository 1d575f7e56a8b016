"""The measurements behind the ``dualgpu`` command: a pair in every mode, a pairing matrix, a batch sweep.

Each is a list of ``Task``s run one after another with the same engine the fixtures use; a task that
fails is kept with its error and the rest still run, and whatever finished can be reported at any point
(the command prints it when interrupted). Turning tasks into tables and sentences is here too, because
the sentences are the command's answer; parsing arguments and printing stay in ``main.py`` and
``commands.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tabulate import tabulate

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import Bound
from pytest_dualgpu.engine.api import dual_infer
from pytest_dualgpu.errors import described
from pytest_dualgpu.latency import Objective
from pytest_dualgpu.modes import CPU_CONCURRENT, CUDA_CONCURRENT
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.units import ratio_text, time_text

Models = Callable[[], tuple[torch.nn.Module, torch.nn.Module, Any, Any]]


@dataclass
class Task:
    """One ``dual_infer`` call to make; ``result`` or ``error`` once it ran."""

    label: str
    names: tuple[str, str]
    make: Models
    settings: dict[str, Any]
    key: Any = None
    result: DualResult | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def wrong(self) -> bool:
        """Measured, but the concurrent outputs differ from each model's alone: a race, not a speedup."""
        return self.result is not None and not self.result.correct

    @property
    def trusted(self) -> bool:
        """Measured, correct, and with figures that can all be true: the only kind that may be "best"."""
        return self.result is not None and self.result.correct and self.result.reliable

    @property
    def gains(self) -> bool:
        """Trusted, and faster at once beyond noise and the harness's margin (decided like a bound)."""
        return self.trusted and gains(_result(self))

    def run(self) -> None:
        try:
            model_a, model_b, inputs_a, inputs_b = self.make()
            result = dual_infer(
                model_a, model_b, inputs_a, inputs_b, names=list(self.names), name=self.label, **self.settings
            )
            # Outputs stay on the device; a matrix of many pairs must not hold every pair's.
            self.result = result.for_report()
        except Exception as error:  # a model that fails here is reported in its cells; the rest still runs
            self.error = described(error)


def gains(result: DualResult) -> bool:
    return result.reliable and Bound("speedup", 1.0).decide_on(result) == stats.PASS


def best(tasks: Iterable[Task]) -> Task | None:
    """The trusted task that gains the most, else the trusted one that loses the least; never an
    unreliable or wrong one."""
    trusted = [task for task in tasks if task.trusted]
    if not trusted:
        return None
    return max(trusted, key=lambda task: (task.gains, _result(task).speedup))


def notes(tasks: Iterable[Task]) -> list[str]:
    """Every measured task's problems and warnings, as the pytest report lists them."""
    lines = []
    for task in tasks:
        if task.result is None:
            continue
        where = f"{task.label} ({task.result.mode})"
        lines += [f"{where}: UNRELIABLE: {problem}" for problem in task.result.problems]
        lines += [f"{where}: {warning}" for warning in task.result.warnings]
    return lines


def applicable_modes(device: torch.device) -> list[str]:
    """Every concurrent mode the device can run (the sequential run is part of each result)."""
    return list(CUDA_CONCURRENT if device.type == "cuda" else CPU_CONCURRENT)


def profile_tasks(
    make: Models, names: tuple[str, str], modes: Sequence[str], settings: dict[str, Any]
) -> list[Task]:
    label = f"{names[0]} + {names[1]}"
    return [Task(label, names, make, {**settings, "mode": mode}, key=mode) for mode in modes]


def profile_verdict(tasks: Sequence[Task]) -> str:
    """The answer to "does this pair pay, and how": the best mode in numbers, then what went wrong."""
    ran = [task for task in tasks if task.result is not None and task.result.mode == _ran_as(task)]
    chosen = best(ran)
    sentences = []
    if chosen is not None:
        sentences.append(_pays(_result(chosen).mode, _result(chosen)))
    elif any(not task.wrong for task in ran):
        sentences.append("no mode gave figures that can all be true (see UNRELIABLE below); measure again")
    for task in tasks:
        if task.error is not None:
            sentences.append(f"{task.key} failed: {task.error}")
        elif task.wrong:
            sentences.append(f"{_result(task).mode} mode gave wrong outputs: {_wrong(_result(task))}")
        elif task.result is not None and task not in ran:
            reason = next((probe.error for probe in task.result.modes if probe.error), None)
            sentences.append(f"{task.key} could not run ({reason or 'fell back to ' + task.result.mode})")
    hints = {task.result.hint for task in ran if task.result is not None and task.result.hint}
    sentences += sorted(f"hint: {hint}" for hint in hints)
    return "; ".join(sentences) or "nothing was measured"


def _ran_as(task: Task) -> str:
    """The mode a task's result should have: the one asked for, or under auto whichever auto chose."""
    return _result(task).mode if task.key == "auto" else str(task.key)


def _wrong(result: DualResult) -> str:
    where = f" ({'; '.join(result.mismatches[:2])})" if result.mismatches else ""
    return f"max abs error {result.max_abs_err:.2g}{where}; a race between the lanes? (dualgpu_sync finds it)"


def _pays(mode: str, result: DualResult) -> str:
    lo, hi = result.speedup_ci
    efficiency = "" if result.efficiency is None else f", efficiency {result.efficiency:.2f}"
    ideal = ratio_text(result.ideal_speedup)
    verdict = f"{mode} mode: {ratio_text(result.speedup)} of an ideal {ideal}{efficiency}"
    against_one = Bound("speedup", 1.0).decide_on(result)
    if against_one == stats.PASS:
        return verdict
    if against_one == stats.FAIL:
        return f"{verdict}: running them at once is slower here"
    return f"{verdict}: no gain beyond noise [95% CI {lo:.2f}, {hi:.2f}]"


def matrix_pairs(count: int) -> Iterator[tuple[int, int]]:
    """Every unordered pair, and each model with a second copy of itself (what replicas do)."""
    for first in range(count):
        for second in range(first, count):
            yield first, second


def matrix_table(
    names: Sequence[str], tasks: Sequence[Task], tablefmt: str = "simple", metric: str = "speedup"
) -> str:
    """The n x n table, the same on both sides of the diagonal: each pair's speedup and efficiency, or
    (``metric="slowdown"``) the worse of its two models' slowdowns: what the pair costs the model it
    costs most."""
    cells: dict[tuple[int, int], str] = {}
    for task in tasks:
        first, second = task.key
        text = _cell(task, metric)
        cells[(first, second)] = cells[(second, first)] = text
    rows = [
        [name, *(cells.get((row, column), "...") for column in range(len(names)))]
        for row, name in enumerate(names)
    ]
    corner = "speedup / eff" if metric == "speedup" else "worse slowdown (p50)"
    return tabulate(rows, headers=[corner, *names], tablefmt=tablefmt, disable_numparse=True)


def worse_slowdown(result: DualResult) -> float | None:
    values = [lane.slowdown for lane in result.lanes if lane.slowdown is not None]
    return max(values) if values else None


def _cell(task: Task, metric: str = "speedup") -> str:
    if task.error is not None:
        return "failed"
    if task.result is None:
        return "..."
    marks = (" WRONG" if task.wrong else "") + ("" if task.result.reliable else " UNRELIABLE")
    if metric == "slowdown":
        worse = worse_slowdown(task.result)
        return ("-" if worse is None else f"{ratio_text(worse)}") + marks
    efficiency = "-" if task.result.efficiency is None else f"{task.result.efficiency:.2f}"
    return f"{ratio_text(task.result.speedup)} / {efficiency}{marks}"


def slowdown_verdict(tasks: Sequence[Task]) -> str:
    """The pairing that costs its worse-off model least; unreliable or wrong pairs are never it."""
    trusted = [task for task in tasks if task.trusted and worse_slowdown(_result(task)) is not None]
    if not trusted:
        return "nothing was measured that can be trusted"
    cheapest = min(trusted, key=lambda task: worse_slowdown(_result(task)) or 0.0)
    cost = worse_slowdown(_result(cheapest)) or 0.0
    return (
        f"the pairing that costs its models least: {cheapest.label}, the worse-off model "
        f"{ratio_text(cost)} slower at its median latency while the other runs"
    )


def matrix_verdict(tasks: Sequence[Task]) -> str:
    """The best sound pairing in words; pairs with wrong outputs are never it."""
    chosen = best(tasks)
    trusted = [task for task in tasks if task.trusted]
    sentences = []
    if chosen is not None:
        result = _result(chosen)
        paying = [task for task in trusted if task.gains]
        if not paying:
            kind = "no pairing gains beyond noise; the least costly"
        elif chosen.key[0] == chosen.key[1]:
            kind = "the best pairing is a model beside a copy of itself"
        else:
            kind = "the best pairing"
        sentences.append(
            f"{kind}: {chosen.label}, {ratio_text(result.speedup)} of an ideal "
            f"{ratio_text(result.ideal_speedup)} ({result.mode} mode)"
        )
        sentences.append(f"{len(paying)} of {len(trusted)} pairings gain beyond noise")
    for task in tasks:
        if task.error is not None:
            sentences.append(f"{task.label} failed: {task.error}")
        elif task.wrong:
            sentences.append(f"{task.label} gave wrong outputs: {_wrong(_result(task))}")
        elif task.result is not None and not task.result.reliable:
            sentences.append(f"{task.label} is unreliable (not counted)")
    return "; ".join(sentences) or "nothing was measured"


def sweep_rows(tasks: Sequence[Task], objectives: Sequence[Objective] = ()) -> list[list[str]]:
    rows = []
    for task in tasks:
        batch = int(task.key)
        if task.result is None:
            rows.append([str(batch), "-", task.error or "not run", *[""] * (7 + bool(objectives))])
            continue
        result = task.result
        lo, hi = result.speedup_ci
        lanes = len(result.lanes)
        rows.append(
            [
                str(batch),
                result.mode,
                ratio_text(result.speedup, (lo, hi), label=False)
                + (" WRONG" if task.wrong else "")
                + ("" if result.reliable else " UNRELIABLE"),
                f"{ratio_text(result.ideal_speedup)}",
                "-" if result.efficiency is None else f"{result.efficiency:.2f}",
                *(_rate(batch / lane.alone.median) for lane in result.lanes),
                _rate(batch / result.concurrent.median),
                _rate(lanes * batch / result.sequential.median),
                _rate(lanes * batch / result.concurrent.median),
                *([objectives_cell(result, objectives)] if objectives else []),
            ]
        )
    return rows


def objectives_cell(result: DualResult, objectives: Sequence[Objective]) -> str:
    """Each objective's model at its percentile at once, and whether it is met."""
    said = []
    for objective in objectives:
        lane = next((lane for lane in result.lanes if lane.name == objective.model), None)
        if lane is None or lane.latency is None:
            said.append(f"{objective.model} not measured")
            continue
        value = lane.latency.at_once.at(objective.percentile)
        mark = "ok" if objective.met_by(lane.latency.at_once) else "MISSED"
        said.append(f"{objective.model} p{objective.percentile} {time_text(value)} {mark}")
    return "; ".join(said)


def meets_all(result: DualResult, objectives: Sequence[Objective]) -> bool:
    for objective in objectives:
        lane = next((lane for lane in result.lanes if lane.name == objective.model), None)
        if lane is None or lane.latency is None or not objective.met_by(lane.latency.at_once):
            return False
    return True


def sweep_table(
    names: tuple[str, str],
    tasks: Sequence[Task],
    tablefmt: str = "simple",
    objectives: Sequence[Objective] = (),
) -> str:
    """Per batch size: the speedup, items/s of each model alone, each at once and both in total, and
    with ``objectives`` whether each model's latency at once meets its objective."""
    headers = [
        "batch", "mode", "speedup [95% CI]", "ideal", "eff", f"{names[0]} alone items/s",
        f"{names[1]} alone items/s", "each at once items/s", "total back to back", "total at once",
    ]  # fmt: skip
    if objectives:
        headers.append("objectives at once")
    return tabulate(sweep_rows(tasks, objectives), headers=headers, tablefmt=tablefmt, disable_numparse=True)


def objectives_verdict(tasks: Sequence[Task], objectives: Sequence[Objective]) -> str:
    """The largest batch (the most throughput) at which every model meets its latency objective at once."""
    shown = ", ".join(map(str, objectives))
    meeting = [task for task in tasks if task.trusted and meets_all(_result(task), objectives)]
    if not meeting:
        return f"no batch size measured meets {shown}"
    largest = max(meeting, key=lambda task: int(task.key))
    result = _result(largest)
    batch = int(largest.key)
    total = len(result.lanes) * batch / result.concurrent.median
    return f"the largest batch meeting {shown} is {batch} ({_rate(total)} items/s at once in total)"


def sweep_verdict(tasks: Sequence[Task]) -> str:
    """Where concurrency stops paying: the batch size from which no larger one gains beyond noise."""
    measured = [task for task in tasks if task.trusted]
    said = [f"batch {task.key} failed" for task in tasks if task.error is not None]
    said += [f"batch {task.key} gave wrong outputs" for task in tasks if task.wrong]
    said += [
        f"batch {task.key} is unreliable (not counted)"
        for task in tasks
        if task.result is not None and not task.wrong and not task.result.reliable
    ]
    if not measured:
        return "; ".join(["nothing was measured", *said])
    paying = [task for task in measured if task.gains]
    if len(paying) == len(measured):
        verdict = f"concurrency pays at every batch size measured (up to {measured[-1].key})"
    elif not paying:
        verdict = "concurrency does not pay at any batch size measured"
    elif paying[-1] is measured[-1]:
        verdict = f"concurrency pays at batch {_batches(paying)}, the largest measured included"
    else:
        stop = measured[measured.index(paying[-1]) + 1]
        result = _result(stop)
        lo, hi = result.speedup_ci
        verdict = (
            f"concurrency pays at batch {_batches(paying)}; from batch {stop.key} on it does not "
            f"({ratio_text(result.speedup, (lo, hi))} at {stop.key})"
        )
    return "; ".join([verdict, *said])


def _batches(tasks: Sequence[Task]) -> str:
    shown = [f"{task.key} ({ratio_text(_result(task).speedup)})" for task in tasks]
    return ", ".join(shown)


def results_of(tasks: Iterable[Task]) -> list[DualResult]:
    return [task.result for task in tasks if task.result is not None]


def _result(task: Task) -> DualResult:
    assert task.result is not None
    return task.result


def _rate(items_per_second: float) -> str:
    if not math.isfinite(items_per_second):
        return "-"
    return f"{items_per_second:,.0f}" if items_per_second >= 100 else f"{items_per_second:.3g}"
