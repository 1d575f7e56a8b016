"""Calls an xdist worker finished, kept on disk until its test's report carries them home. Torch-free.

A worker's results travel to the controller in the test's report, which a crashing worker never sends:
without a copy, a segfault in a test's third call would lose its first two as well. Each worker appends
every finished call to its own file in a folder the controller made; when xdist reports a crash, the
controller reads back the crashed test's calls from it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

WORKER_INPUT = "dualgpu_spool"


class CallSpool:
    """The controller's folder of per-worker files, one JSON line per finished call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls) -> CallSpool:
        return cls(Path(tempfile.mkdtemp(prefix="dualgpu-calls-")))

    def hand_to(self, workerinput: dict[str, Any]) -> None:
        workerinput[WORKER_INPUT] = str(self.directory)

    def calls_of(self, worker: str, nodeid: str) -> list[tuple[str, str]]:
        """The properties the worker recorded for the test's last attempt, as its report would carry them."""
        try:
            lines = (self.directory / f"{worker}.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        ours = [entry for entry in entries if entry["nodeid"] == nodeid]
        starts = [index for index, entry in enumerate(ours) if entry["attempt_start"]]
        return [(entry["name"], entry["value"]) for entry in ours[starts[-1] if starts else 0 :]]

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class WorkerSpool:
    """A worker's end: appends each finished call and closes the file, so a crash right after keeps it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, workerinput: dict[str, Any]) -> WorkerSpool | None:
        directory = workerinput.get(WORKER_INPUT)
        return cls(Path(directory) / f"{workerinput['workerid']}.jsonl") if directory else None

    def append(self, nodeid: str, name: str, value: str, first: bool) -> None:
        line = json.dumps({"nodeid": nodeid, "name": name, "value": value, "attempt_start": first})
        with self.path.open("a", encoding="utf-8") as spool:
            spool.write(line + "\n")
