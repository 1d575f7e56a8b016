"""Rendering results for people and for CI: the table (tabulate), the JSON document, markdown.

A ``ReportRow`` is one ``dual_infer`` call as the session saw it: the test's node id, the result, and the
markers' verdicts. Its dict form travels as a ``user_properties`` entry (to JUnit XML and from xdist
workers) and is also a row of the JSON report, so the controller rebuilds exactly what the worker had.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tabulate import tabulate

from pytest_dualgpu import stats
from pytest_dualgpu.errors import DualGpuUsageError, described
from pytest_dualgpu.fieldtypes import FieldTypeError, check_fields
from pytest_dualgpu.results import DualResult, default_name
from pytest_dualgpu.stats import FAIL, INCONCLUSIVE, VERDICT_KINDS, WARN
from pytest_dualgpu.units import mib_text, ratio_text, time_text

JSON_VERSION = 4
#: Versions ``load_report`` reads: 2 lacks the warm-up, reliability and decision fields, which read back
#: as unknown (reliable, no problems), so baselines saved before them still gate.
READABLE_VERSIONS = (2, 3, 4)
ALWAYS = 100  # the priority of a column a fitted table keeps
PROPERTY = "dualgpu"
ERROR_PROPERTY = "dualgpu_error"


@dataclass
class ReportRow:
    """One ``dual_infer`` call of one test; ``verdicts`` maps a marker kind to its status."""

    nodeid: str
    result: DualResult
    verdicts: dict[str, str] = field(default_factory=dict)
    call: int = 1  # counted from 1 in its test, as in every message and file name
    # Set on the controller when the session compares with a baseline (``gate.py``).
    vs_base: str | None = None
    baseline: dict[str, Any] | None = None
    # Set by ``dualgpu report`` when merged files measured the same test on several machines.
    source: str | None = None

    @property
    def label(self) -> str:
        """The test, with the result's name when the test gave it one."""
        if not self.nodeid:
            return self.result.name
        label = (
            self.nodeid
            if self.result.name == default_name(self.result.lane_names)
            else f"{self.nodeid} [{self.result.name}]"
        )
        return label if self.call == 1 else f"{label} call {self.call}"

    @property
    def failed(self) -> bool:
        return FAIL in self.verdicts.values()

    @property
    def doubtful(self) -> bool:
        """A verdict left open, or figures that cannot all be true: shown, in yellow, but failing nothing."""
        return INCONCLUSIVE in self.verdicts.values() or not self.result.reliable

    @property
    def colour(self) -> str | None:
        return "red" if self.failed else "yellow" if self.doubtful else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "call": self.call,
            **self.result.to_dict(),
            "verdicts": {kind: self.verdicts.get(kind) for kind in VERDICT_KINDS},
            **({"baseline": self.baseline} if self.baseline is not None else {}),
            **({"source": self.source} if self.source is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportRow:
        verdicts = {kind: status for kind, status in (data.get("verdicts") or {}).items() if status}
        return cls(
            data["nodeid"],
            DualResult.from_dict(data),
            verdicts,
            data.get("call", 1),
            source=data.get("source"),
        )


@dataclass(frozen=True)
class CallError:
    """A ``dual_infer`` call that raised instead of producing a result."""

    nodeid: str
    call: int
    error: str
    source: str | None = None  # as ``ReportRow.source``

    def to_dict(self) -> dict[str, Any]:
        data = {"nodeid": self.nodeid, "call": self.call, "error": self.error}
        return {**data, "source": self.source} if self.source is not None else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallError:
        return cls(data["nodeid"], data.get("call", 1), data["error"], data.get("source"))


@dataclass(frozen=True)
class Column:
    """One table column: a header and how to render a row's cell.

    An ``optional`` column is left out of a table where no row has anything in it ("-" everywhere). To fit a
    narrow terminal, a column with a ``compact`` form may switch to it, columns are left out lowest
    ``priority`` first (never one of priority ``ALWAYS``), and a column that may be ``shortened`` loses
    characters from that side ("left" keeps a test id's end).
    """

    header: str
    cell: Callable[[ReportRow], str]
    optional: bool = False
    priority: int = 50
    shortened: Literal["left", "right"] | None = None
    compact: Callable[[ReportRow], str] | None = None


def _lanes(row: ReportRow) -> str:
    joint = " + " if row.result.micro_batches is None else f" -> (x{row.result.micro_batches}) "
    return joint.join(row.result.lane_names)


def _alone(row: ReportRow) -> str:
    return " / ".join(time_text(lane.alone.median, unit=False) for lane in row.result.lanes)


def _speedup(row: ReportRow) -> str:
    lo, hi = row.result.speedup_ci
    return ratio_text(row.result.speedup, (lo, hi), label=False) + (
        "" if row.result.reliable else " UNRELIABLE"
    )


def efficiency_note(results: Iterable[DualResult]) -> str | None:
    """What an efficiency shown as "-" means, where one is."""
    if all(result.efficiency is not None for result in results):
        return None
    return (
        f"eff -: not measured, because running at once could not save {stats.MEANINGFUL_GAIN:.0%} of the "
        "time back to back: the models' times alone are that uneven, or back to back was no slower than the "
        "slowest alone (the speedup still says what running at once gave)"
    )


def _efficiency(row: ReportRow) -> str:
    return "-" if row.result.efficiency is None else f"{row.result.efficiency:.2f}"


def _slowdown(row: ReportRow) -> str:
    """Each lane's slowdown at the median, compactly (the percentiles are in the JSON and the markdown)."""
    values = [lane.slowdown for lane in row.result.lanes]
    if any(value is None for value in values):
        return "-"
    return " / ".join(f"{value:.2f}" for value in values if value is not None)


def _memory(row: ReportRow) -> str:
    memory = row.result.memory
    if memory is None:
        return "-"
    return f"{mib_text(memory.sequential)} / {mib_text(memory.concurrent)}"


def _kernel_overlap(row: ReportRow) -> str:
    return "-" if row.result.kernel_overlap is None else f"{row.result.kernel_overlap:.2f}"


def _error(row: ReportRow) -> str:
    return f"{row.result.max_abs_err:.1e}" + ("" if row.result.correct else " WRONG")


def _verdicts(row: ReportRow) -> str:
    return ", ".join(f"{kind} {_status(status)}" for kind, status in row.verdicts.items()) or "-"


def _compact_verdicts(row: ReportRow) -> str:
    """What failed or is in doubt by name; the rest counted by status ("correct pass, 2 not judged (cpu)")."""
    notable = (FAIL, WARN, INCONCLUSIVE)
    shown = [f"{kind} {_status(status)}" for kind, status in row.verdicts.items() if status in notable]
    counts = Counter(status for status in row.verdicts.values() if status not in notable)
    for status, count in counts.items():
        if count == 1:
            shown += [f"{kind} {status}" for kind, other in row.verdicts.items() if other == status]
        else:
            shown.append(f"{count} {status}")
    return ", ".join(shown) or "-"


def _status(status: str) -> str:
    return status.upper() if status in (FAIL, WARN, INCONCLUSIVE) else status


def default_columns() -> list[Column]:
    """The columns of the table, in order; ``pytest_dualgpu_report_columns`` may change the list."""
    return [
        Column("test", lambda row: row.label, priority=ALWAYS, shortened="left"),
        Column("lanes", _lanes, priority=ALWAYS, shortened="right"),
        Column("device", lambda row: row.result.device, priority=10),
        Column("mode", lambda row: row.result.mode, priority=70),
        Column("alone ms", _alone, priority=25),
        Column("seq ms", lambda row: time_text(row.result.sequential.median, unit=False), priority=52),
        Column("conc ms", lambda row: time_text(row.result.concurrent.median, unit=False), priority=55),
        Column("speedup [95% CI]", _speedup, priority=ALWAYS),
        Column("ideal", lambda row: ratio_text(row.result.ideal_speedup), priority=30),
        Column("eff", _efficiency, priority=80),
        Column("overlap", lambda row: f"{row.result.overlap:.2f}", priority=60),
        Column("slowdown", _slowdown, optional=True, priority=50),
        Column("kernel overlap", _kernel_overlap, optional=True, priority=20),
        Column("peak MiB seq / conc", _memory, optional=True, priority=45),
        Column("max err", _error, priority=40),
        Column("verdicts", _verdicts, priority=ALWAYS, shortened="right", compact=_compact_verdicts),
        Column("vs base", lambda row: row.vs_base or "-", optional=True, priority=90),
    ]


def format_table(
    rows: Sequence[ReportRow],
    columns: Sequence[Column] | None = None,
    tablefmt: str = "simple",
    highlight: Callable[[str, str], str] | None = None,
) -> str:
    """The table; ``highlight(cell, colour)`` marks up every cell of a row with a failed verdict (red) or
    an inconclusive one or unreliable figures (yellow)."""
    columns = default_columns() if columns is None else columns
    cells = [[column.cell(row) for column in columns] for row in rows]
    shown = [
        index
        for index, column in enumerate(columns)
        if not column.optional or any(line[index] != "-" for line in cells)
    ]
    table = []
    for row, line in zip(rows, cells, strict=True):
        kept = [line[index] for index in shown]
        colour = row.colour
        table.append([highlight(cell, colour) for cell in kept] if highlight and colour else kept)
    headers = [columns[index].header for index in shown]
    return tabulate(table, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def format_results(results: Iterable[DualResult], tablefmt: str = "simple") -> str:
    """The table for results made outside a test session (no node ids, no verdicts)."""
    columns = [column for column in default_columns() if column.header != "verdicts"]
    columns[0] = Column("result", lambda row: row.result.name, priority=ALWAYS, shortened="left")
    return format_table([ReportRow("", result) for result in results], columns, tablefmt)


def json_document(
    rows: Sequence[ReportRow],
    errors: Sequence[CallError],
    machine: dict[str, Any],
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report (``docs/report-schema.json``); ``comparison`` when a baseline was compared."""
    document = {
        "version": JSON_VERSION,
        "machine": machine,
        "results": [row.to_dict() for row in rows],
        "errors": [error.to_dict() for error in errors],
    }
    if comparison is not None:
        document["comparison"] = comparison
    return document


def markdown(
    rows: Sequence[ReportRow],
    errors: Sequence[CallError],
    columns: Sequence[Column],
    notes: Sequence[str] = (),
) -> str:
    """The table for a CI summary page, then the calls that raised and ``notes`` (baseline findings)."""
    lines = ["## pytest-dualgpu", ""]
    if rows:
        lines.append(format_table(rows, columns, tablefmt="github"))
    else:
        lines.append("No dual_infer results in this session.")
    latency = latency_table(rows)
    if latency:
        lines += [
            "",
            "<details><summary>Per-lane latency (ms), alone and at once</summary>",
            "",
            latency,
            "",
            "</details>",
        ]
    bullets = [f"`{error.nodeid}` call {error.call} raised: {error.error}" for error in errors]
    bullets += [f"`{row.label}` is unreliable: {problem}" for row in rows for problem in row.result.problems]
    no_efficiency = efficiency_note(row.result for row in rows)
    bullets += [no_efficiency] if no_efficiency else []
    bullets += list(notes)
    if bullets:
        lines.append("")
        lines += [f"- {bullet}" for bullet in bullets]
    return "\n".join(lines) + "\n"


def latency_table(rows: Sequence[ReportRow], tablefmt: str = "github") -> str:
    """Each lane's p50 / p90 / p99 latency alone and at once, its slowdown with its interval, and the calls
    behind them; empty where no row measured latency."""
    table = []
    for row in rows:
        for lane in row.result.lanes:
            latency = lane.latency
            if latency is None:
                continue
            interval = lane.slowdown_ci
            shown = "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            table.append(
                [
                    row.label,
                    lane.name,
                    " / ".join(time_text(latency.alone.at(p), unit=False) for p in (50, 90, 99)),
                    " / ".join(time_text(latency.at_once.at(p), unit=False) for p in (50, 90, 99)),
                    f"{ratio_text(latency.slowdown(50))}{shown}",
                    f"{latency.alone.n} / {latency.at_once.n}",
                ]
            )
    if not table:
        return ""
    headers = ["test", "lane", "alone p50 / p90 / p99", "at once p50 / p90 / p99", "slowdown (p50)", "calls"]
    return tabulate(table, headers=headers, tablefmt=tablefmt, disable_numparse=True)


@dataclass
class SavedReport:
    """A JSON report read back from a file."""

    machine: dict[str, Any]
    rows: list[ReportRow]
    errors: list[CallError]


def load_report(path: Path, shown: str, fix: str) -> SavedReport:
    """Read a JSON report; every problem is a ``DualGpuUsageError`` naming ``shown`` (the path as the
    user gave it) and ending in ``fix`` (how to make a good one)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DualGpuUsageError(f"{shown}: no such file; {fix}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DualGpuUsageError(f"{shown}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise DualGpuUsageError(f"{shown}: not JSON ({error}); {fix}") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise DualGpuUsageError(f"{shown}: not a pytest-dualgpu JSON report; {fix}")
    if document.get("version") not in READABLE_VERSIONS:
        raise DualGpuUsageError(
            f"{shown}: a version {document.get('version')} report; this pytest-dualgpu reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}; {fix}"
        )
    machine = document.get("machine", {})
    if not isinstance(machine, dict):
        raise DualGpuUsageError(f"{shown}: its 'machine' is not an object; {fix}")
    try:
        rows = [ReportRow.from_dict(row) for row in document["results"]]
        errors = [CallError.from_dict(error) for error in document.get("errors", [])]
        if document["version"] < 4:  # calls were counted from 0 before
            rows = [dataclasses.replace(row, call=row.call + 1) for row in rows]
            errors = [dataclasses.replace(error, call=error.call + 1) for error in errors]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DualGpuUsageError(f"{shown}: a result could not be read ({described(error)}); {fix}") from None
    for index, row in enumerate(rows):
        try:
            check_fields(row.result, f"results[{index}]")
        except FieldTypeError as error:
            raise DualGpuUsageError(f"{shown}: {error} (test {row.nodeid}); {fix}") from None
    return SavedReport(machine, rows, errors)


def dumps(data: dict[str, Any], indent: int | None = 2) -> str:
    """Strict JSON: an infinite error (a NaN where the reference had a number) becomes "Infinity"."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
