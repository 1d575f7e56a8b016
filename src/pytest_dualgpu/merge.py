"""``dualgpu report``: saved JSON reports rendered as one, so sharded GPU runners end in one report.

Shards (one machine each, or one xdist worker per GPU writing its own file) usually hold different tests;
a test that appears in several files was measured on several machines, and those rows are kept apart by
naming the machine (or, for two files from one machine, the file) in a ``source`` column.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DualGpuUsageError
from .report import JSON_VERSION, CallError, Column, ReportRow, default_columns, dumps, format_table, markdown


@dataclass
class Merged:
    rows: list[ReportRow] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)
    machines: list[dict[str, Any]] = field(default_factory=list)


def merge_reports(paths: list[Path]) -> Merged:
    loaded = [(path, _load(path)) for path in paths]
    labels = _source_labels([(path, document.get("machine") or {}) for path, document in loaded])
    merged = Merged()
    per_file: list[list[ReportRow]] = []
    for (path, document), label in zip(loaded, labels, strict=True):
        try:
            rows = [ReportRow.from_dict(row) for row in document["results"]]
            merged.errors += [
                dataclasses.replace(CallError.from_dict(error), source=label)
                for error in document.get("errors", [])
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DualGpuUsageError(
                f"{path}: a result could not be read ({type(error).__name__}: {error})"
            ) from None
        for row in rows:
            row.source = label
        per_file.append(rows)
        merged.machines.append(document.get("machine") or {})
    counts = Counter((row.nodeid, row.call, row.result.name) for rows in per_file for row in rows)
    shared = any(count > 1 for count in counts.values())
    for rows in per_file:
        for row in rows:
            if not shared:
                row.source = None
            merged.rows.append(row)
    if not shared:
        merged.errors = [dataclasses.replace(error, source=None) for error in merged.errors]
    return merged


def render(merged: Merged, form: str) -> str:
    columns = default_columns()
    columns.insert(1, Column("source", lambda row: row.source or "-", optional=True))
    if form == "json":
        document: dict[str, Any] = {
            "version": JSON_VERSION,
            "machine": merged.machines[0] if merged.machines else {},
            "machines": merged.machines,
            "results": [row.to_dict() for row in merged.rows],
            "errors": [error.to_dict() for error in merged.errors],
        }
        return dumps(document)
    if form == "md":
        return markdown(merged.rows, merged.errors, columns)
    lines = [format_table(merged.rows, columns)] if merged.rows else ["no results in these reports"]
    lines += [
        f"{error.nodeid}: call {error.call + 1} raised {error.error}"
        + (f" [{error.source}]" if error.source else "")
        for error in merged.errors
    ]
    return "\n".join(lines)


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DualGpuUsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DualGpuUsageError(f"{path}: not a readable JSON report ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise DualGpuUsageError(
            f"{path}: not a pytest-dualgpu JSON report (write one with --dualgpu-report=json:PATH or "
            "dualgpu ... --json PATH)"
        )
    if document.get("version") != JSON_VERSION:
        raise DualGpuUsageError(
            f"{path}: a version {document.get('version')} report; this pytest-dualgpu reads version "
            f"{JSON_VERSION}"
        )
    if not isinstance(document.get("machine", {}), dict):
        raise DualGpuUsageError(f"{path}: its 'machine' is not an object")
    return document


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
