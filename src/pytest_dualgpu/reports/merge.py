"""``dualgpu report``: saved JSON reports rendered as one, so sharded GPU runners end in one report.

Shards (one machine each, or one xdist worker per GPU writing its own file) usually hold different tests;
a test that appears in several files was measured on several machines, and those rows are kept apart by
naming the machine (or, for two files from one machine, the file) in a ``source`` column.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dualgpu.reports.rows import (
    CallError,
    Column,
    ReportRow,
    default_columns,
    dumps,
    efficiency_note,
    format_table,
    json_document,
    load_report,
    markdown,
)
from pytest_dualgpu.reports.tablefit import fit_columns


@dataclass
class Merged:
    rows: list[ReportRow] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)
    machines: list[dict[str, Any]] = field(default_factory=list)


def merge_reports(paths: list[Path]) -> Merged:
    fix = "write one with --dualgpu-report=json:PATH, --dualgpu-save=PATH or dualgpu ... --json PATH"
    saved = [load_report(path, str(path), fix) for path in paths]
    labels = _source_labels([(path, report.machine) for path, report in zip(paths, saved, strict=True)])
    counts = Counter((row.nodeid, row.call, row.result.name) for report in saved for row in report.rows)
    shared = any(count > 1 for count in counts.values())
    merged = Merged()
    for report, label in zip(saved, labels, strict=True):
        source = label if shared else None
        for row in report.rows:
            row.source = source
        merged.rows += report.rows
        merged.errors += [dataclasses.replace(error, source=source) for error in report.errors]
        merged.machines.append(report.machine)
    return merged


def render(merged: Merged, form: str, width: int | None = None) -> str:
    """The merged reports as ``form`` (term, term-wide, md or json); ``term`` fitted to ``width``."""
    columns = default_columns()
    columns.insert(1, Column("source", lambda row: row.source or "-", optional=True))
    if form == "json":
        first = merged.machines[0] if merged.machines else {}
        return dumps({**json_document(merged.rows, merged.errors, first), "machines": merged.machines})
    if form == "md":
        return markdown(merged.rows, merged.errors, columns)
    if not merged.rows:
        lines = ["no results in these reports"]
    else:
        fitted = fit_columns(merged.rows, columns, width if form == "term" else None)
        lines = [format_table(merged.rows, fitted.columns)]
        notes = (fitted.note("--format term-wide"), efficiency_note(row.result for row in merged.rows))
        lines += [note for note in notes if note]
    lines += [
        f"{error.nodeid}: call {error.call} raised {error.error}"
        + (f" [{error.source}]" if error.source else "")
        for error in merged.errors
    ]
    return "\n".join(lines)


def _source_labels(files: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """The machine of each file ("host (GPU)"), with the file as given where two files share a machine."""
    machines = [_machine_label(machine) for _, machine in files]
    repeated = {label for label, count in Counter(machines).items() if count > 1}
    return [
        f"{label} [{path}]" if label in repeated else label
        for (path, _), label in zip(files, machines, strict=True)
    ]


def _machine_label(machine: dict[str, Any]) -> str:
    gpus = [
        gpu for gpu in machine.get("gpus") or [] if isinstance(gpu, dict) and gpu.get("visible") is not False
    ]
    cpu = machine.get("cpu")
    hardware = gpus[0].get("name", "GPU") if gpus else (cpu.get("model") if isinstance(cpu, dict) else None)
    return f"{machine.get('hostname', 'unknown host')} ({hardware or 'unknown device'})"
