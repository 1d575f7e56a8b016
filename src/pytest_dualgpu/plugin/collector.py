"""The controller's side of the report: rows gathered from test reports, then the table and the files.

Rows arrive through ``pytest_runtest_logreport`` whether or not xdist runs (a worker's ``user_properties``
travel with its reports), so a session under ``-n 2`` ends with exactly the rows of ``-n 0``. Only the
controller writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_dualgpu import files
from pytest_dualgpu.errors import DualGpuUsageError, described
from pytest_dualgpu.plugin.options import TERMINAL_KINDS, ReportTarget, Settings
from pytest_dualgpu.plugin.spool import CallSpool, WorkerSpool
from pytest_dualgpu.plugin.verdicts import speedup_hint
from pytest_dualgpu.reports.gate import Baseline, GateReport, compare
from pytest_dualgpu.reports.rows import (
    ERROR_PROPERTY,
    PROPERTY,
    CallError,
    Column,
    ReportRow,
    default_columns,
    dumps,
    efficiency_note,
    format_table,
    json_document,
    markdown,
)
from pytest_dualgpu.reports.tablefit import fit_columns, terminal_width
from pytest_dualgpu.reports.traces import chrome_trace, result_file_stem

OURS = (PROPERTY, ERROR_PROPERTY)


class ResultCollector:
    """Gathers every recorded call from the test reports (its own, or xdist workers'), then reports them."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.rows: dict[str, list[ReportRow]] = {}
        self.errors: dict[str, list[CallError]] = {}
        self.order: dict[str, int] = {}
        self.problems: list[str] = []
        self.items: list[pytest.Item] = []
        self.running: str | None = None  # the test between its setup and teardown reports
        self.written: list[str] = []  # "KIND: PATH" of every file written, for the summary
        self.baseline: Baseline | None = None
        self.comparison: GateReport | None = None
        self.spool: CallSpool | None = None  # the controller's, made when xdist starts workers
        workerinput = getattr(config, "workerinput", None)
        self.worker_spool = WorkerSpool.of(workerinput) if workerinput is not None else None
        if not self.is_worker:
            try:
                check_targets(settings.reports, os.environ)
            except DualGpuUsageError as error:
                raise pytest.UsageError(f"dualgpu: {error}") from None
        if settings.compare is not None and not self.is_worker:
            try:
                self.baseline = Baseline.load(settings.compare)
            except DualGpuUsageError as error:
                raise pytest.UsageError(f"dualgpu: {error}") from None

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Each xdist worker gets the folder to keep its finished calls in, in case it crashes."""
        if self.spool is None:
            self.spool = CallSpool.create()
        self.spool.hand_to(node.workerinput)

    def keep(self, nodeid: str, name: str, value: str, first: bool) -> None:
        """On a worker: a finished call's property, kept where the controller finds it if the worker dies."""
        if self.worker_spool is not None:
            self.worker_spool.append(nodeid, name, value, first)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died in a test, whose report (with its calls) it never sent: take them from the spool,
        and say what was lost."""
        worker = getattr(getattr(report, "node", None), "gateway", None)
        worker_id = getattr(worker, "id", None)
        kept = self.spool.calls_of(worker_id, crashitem) if self.spool and worker_id else []
        self._take(crashitem, kept)
        finished = len(self.rows[crashitem]) + len(self.errors[crashitem])
        self.errors[crashitem].append(
            CallError(
                crashitem,
                finished + 1,
                f"xdist worker {worker_id} crashed in this test after {finished} finished dual_infer "
                "call(s), which are reported; whatever ran after them is lost",
            )
        )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.order = {item.nodeid: index for index, item in enumerate(session.items)}
        self.items = list(session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if not self.order:
            self.order = {nodeid: index for index, nodeid in enumerate(ids)}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """The teardown report carries all of a test's calls; a rerun's replaces the earlier attempt's."""
        if report.when == "setup":
            self.running = report.nodeid
        if report.when != "teardown":
            return
        self.running = None
        self._take(report.nodeid, report.user_properties)

    def _take(self, nodeid: str, user_properties: Sequence[tuple[str, object]]) -> None:
        properties = [(name, json.loads(str(value))) for name, value in user_properties]
        self.rows[nodeid] = [ReportRow.from_dict(data) for name, data in properties if name == PROPERTY]
        self.errors[nodeid] = [
            CallError.from_dict(data) for name, data in properties if name == ERROR_PROPERTY
        ]

    def pytest_keyboard_interrupt(self) -> None:
        """Ctrl-C ends the session before the running test's teardown report: keep what it recorded so far
        (finished calls, and the interrupted one as an error), which that report would have carried."""
        item = next((item for item in self.items if item.nodeid == self.running), None)
        if item is not None:
            self._take(item.nodeid, item.user_properties)

    def sorted_rows(self) -> list[ReportRow]:
        rows = [row for rows in self.rows.values() for row in rows]
        return sorted(rows, key=lambda row: (self._position(row.nodeid), row.nodeid, row.call))

    def sorted_errors(self) -> list[CallError]:
        errors = [error for errors in self.errors.values() for error in errors]
        return sorted(errors, key=lambda error: (self._position(error.nodeid), error.nodeid, error.call))

    def _position(self, nodeid: str) -> int:
        return self.order.get(nodeid, len(self.order))

    def compare_with_baseline(self) -> GateReport | None:
        """Compare every row with the baseline (once); the plugin fails the session on a regression."""
        if self.baseline is None or self.comparison is not None:
            return self.comparison
        rows = self.sorted_rows()
        import torch

        self.comparison = compare(rows, self.baseline, self.settings.compare_fail, torch.__version__)
        for row in rows:
            judged = self.comparison.for_row(row)
            if judged is not None:
                row.vs_base = judged.cell()
                row.baseline = judged.to_dict()
        return self.comparison

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        if self.spool is not None:
            self.spool.remove()
        self.compare_with_baseline()
        for target in self.settings.reports:
            if target.kind in TERMINAL_KINDS:
                continue
            try:
                self._write(target.kind, target.path)
            except Exception as error:  # one target that cannot be written must not cost the others
                # What could be checked was, at start-up; what fails now (a full disk, a folder removed
                # meanwhile) fails the session the same way for every kind of report.
                self.problems.append(f"could not write the {target} report: {described(error)}")
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _write(self, kind: str, path: str | None) -> None:
        if kind == "trace":
            assert path is not None
            self._write_traces(Path(path).expanduser())
            return
        if kind == "png":
            assert path is not None
            self._write_pngs(Path(path).expanduser())
            return
        rows = self.sorted_rows()
        errors = self.sorted_errors()
        comparison = self.comparison
        if kind == "json":
            assert path is not None
            from pytest_dualgpu.machine import machine_info

            text = dumps(
                json_document(rows, errors, machine_info(), comparison.to_dict() if comparison else None)
            )
            append = False
        else:
            text = markdown(rows, errors, self.columns(), self._baseline_notes())
            append = path is None
            if path is None:
                path = os.environ["GITHUB_STEP_SUMMARY"]  # checked at start-up
        written = files.write_text(path, text, f"--dualgpu-report={kind}:{path}", append=append)
        self.written.append(f"{kind} report: {written.resolve()}")

    def _write_traces(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for row in self.sorted_rows():
            result = row.result
            details = {
                "nodeid": row.nodeid,
                "call": row.call,
                "name": result.name,
                "device": result.device_name,
                "mode": result.mode,
                "speedup": result.speedup,
                "ideal_speedup": result.ideal_speedup,
                "overlap": result.overlap,
                "kernel_overlap": result.kernel_overlap,
                "micro_batches": result.micro_batches,
            }
            trace = chrome_trace(result.timelines, row.label, details)
            path = directory / f"{result_file_stem(row.nodeid, row.call)}.trace.json"
            files.write_text(path, dumps(trace, indent=None), f"--dualgpu-report=trace:{directory}")
        self.written.append(f"traces: {directory.resolve()}")

    def _write_pngs(self, directory: Path) -> None:
        from pytest_dualgpu.reports import plots

        plots.require_matplotlib()
        rows = self.sorted_rows()
        for row in rows:
            plots.write_timeline_png(row, directory / f"{result_file_stem(row.nodeid, row.call)}.png")
        if rows:
            plots.write_session_png(rows, directory / "session.png")
        self.written.append(f"plots: {directory.resolve()}")

    def _baseline_notes(self) -> list[str]:
        if self.comparison is None:
            return []
        notes = [
            f"baseline {self.comparison.baseline.path}: {warning}" for warning in self.comparison.warnings
        ]
        notes += [f"regressed: {line}" for line in self.comparison.regression_lines()]
        notes += [f"inconclusive: {line}" for line in self.comparison.inconclusive_lines()]
        return notes

    def columns(self) -> list[Column]:
        columns = default_columns()
        self.config.hook.pytest_dualgpu_report_columns(columns=columns, config=self.config)
        return columns

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        kinds = {target.kind for target in self.settings.reports}
        wants_table = bool(kinds & set(TERMINAL_KINDS))
        if self.is_worker or not (
            wants_table or self.problems or self.written or self.comparison is not None
        ):
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "dualgpu")
        rows = self.sorted_rows()
        if wants_table:
            if rows:
                highlight = _highlighter(self.config)
                fitted = fit_columns(rows, self.columns(), None if "term-wide" in kinds else terminal_width())
                for line in format_table(rows, fitted.columns, highlight=highlight).splitlines():
                    write(line)
                notes = (
                    fitted.note("--dualgpu-report=term-wide"),
                    efficiency_note(row.result for row in rows),
                )
                for note in filter(None, notes):
                    write(note)
            else:
                write("no dual_infer results in this session")
            for row in rows:
                if row.verdicts.get("speedup") == "fail":
                    write(f"{row.label}: speedup hint: {speedup_hint(row.result)}", red=True)
            for error in self.sorted_errors():
                write(f"{error.nodeid}: dual_infer call {error.call} raised {error.error}", red=True)
            for row in rows:
                for problem in row.result.problems:
                    write(f"{row.label}: UNRELIABLE: {problem}", yellow=True, bold=True)
                for warning in row.result.warnings:
                    write(f"{row.label}: {warning}", yellow=True)
            lock_line = _lock_summary_line(rows, xdist=self.config.pluginmanager.hasplugin("dsession"))
            if lock_line:
                write(lock_line, yellow=True)
        if self.comparison is not None:
            for line, colour in _comparison_lines(self.comparison, self.settings.inconclusive):
                write(line, **{colour: True})
        for problem in self.problems:
            write(f"dualgpu: {problem}", red=True)
        for written in self.written:
            write(f"dualgpu: {written}")


def _comparison_lines(comparison: GateReport, policy: str) -> list[tuple[str, str]]:
    """The baseline's warnings, then the gate's outcome: what failed or stayed undecided, or that it
    checked something."""
    lines = [
        (f"compared with {comparison.baseline.path}: {warning}", "yellow") for warning in comparison.warnings
    ]
    limits = ", ".join(str(threshold) for threshold in comparison.thresholds)
    regressions = comparison.regression_lines()
    undecided = comparison.inconclusive_lines()
    if undecided:
        colour = "red" if policy == "fail" else "yellow"
        lines.append(
            (
                f"regression gate ({limits}) is inconclusive for {len(undecided)} result(s) (the interval "
                f"straddles the limit; --dualgpu-inconclusive={policy}):",
                colour,
            )
        )
        lines += [(f"  {line}", colour) for line in undecided]
    if regressions:
        lines.append((f"regression gate ({limits}) failed for {len(regressions)} result(s):", "red"))
        lines += [(f"  {line}", "red") for line in regressions]
    elif comparison.thresholds and not comparison.judged:
        nothing = "no result of this run has a base row measured on the same device with those metrics"
        lines.append((f"regression gate ({limits}) checked nothing: {nothing}", "red"))
    elif comparison.thresholds and not undecided:
        judged = f"{comparison.judged} metric(s) judged"
        lines.append((f"regression gate: no result regressed beyond {limits} ({judged})", "green"))
    return lines


def _lock_summary_line(rows: list[ReportRow], xdist: bool) -> str | None:
    """One line when processes took turns at the measuring lock for long enough to matter; it blames
    xdist workers only where this session runs some (else another process on the machine held it)."""
    waited = [row for row in rows if row.result.lock_wait > 0]
    total = sum(row.result.lock_wait for row in waited)
    if total < 1.0:
        return None
    longest = max(waited, key=lambda row: row.result.lock_wait)
    if not xdist:
        who = "another process on this machine measured the same device meanwhile (another session?)"
        advice = "the waits say who held it, while they last"
    elif longest.result.device.startswith("cuda"):
        who = "processes shared a device, so they took turns"
        advice = "--dualgpu-devices gives each xdist worker its own GPU"
    else:
        who = "processes shared a device, so they took turns"
        advice = "on CPU, fewer xdist workers measure with less waiting (the cores are shared anyway)"
    return (
        f"measuring lock: waited {total:.1f} s in all (longest {longest.result.lock_wait:.1f} s, "
        f"{longest.label}); {who}; {advice}"
    )


def _highlighter(config: pytest.Config) -> Callable[[str, str], str] | None:
    writer = config.get_terminal_writer()
    if not writer.hasmarkup:
        return None
    return lambda cell, colour: str(writer.markup(cell, **{colour: True}, bold=colour == "red"))


def check_targets(targets: Sequence[ReportTarget], environ: Mapping[str, str]) -> None:
    """Everything about the report targets that can be known before any test runs (a usage error)."""
    for target in targets:
        option = f"--dualgpu-report={target}"
        if target.kind == "png":
            from pytest_dualgpu.reports.plots import require_matplotlib

            require_matplotlib()
        if target.kind == "md" and target.path is None and not environ.get("GITHUB_STEP_SUMMARY"):
            raise DualGpuUsageError(
                f"{option}: $GITHUB_STEP_SUMMARY is not set (not on GitHub Actions?); use md:PATH to choose "
                "a file"
            )
        if target.kind in ("json", "md") and target.path is not None:
            files.target_path(target.path, option)
        if target.kind in ("trace", "png") and target.path is not None:
            directory = Path(target.path).expanduser()
            if directory.exists() and not directory.is_dir():
                raise DualGpuUsageError(f"{option}: {directory} is a file; {target.kind} takes a folder")
