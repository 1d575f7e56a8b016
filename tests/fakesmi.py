"""A stand-in ``nvidia-smi`` for machines without one: it answers ``--query-gpu`` and
``--query-compute-apps`` like the real tool, from GPUs and processes described in JSON."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = """\
import json, os, re, sys

state = json.loads(open(os.environ["FAKE_NVIDIA_SMI"]).read())
query = next((a for a in sys.argv[1:] if a.startswith("--query-")), None)
units = "nounits" not in " ".join(sys.argv)
if query is None:
    sys.exit(0)
kind, fields = query[len("--query-"):].split("=", 1)
rows = state["gpus"] if kind == "gpu" else state.get("apps", [])
for row in rows:
    cells = []
    for name in fields.split(","):
        value = str(row.get(name, "[N/A]"))
        if not units and re.fullmatch(r"[0-9.]+ [A-Za-z]+", value):
            value = value.split()[0]
        cells.append(value)
    print(", ".join(cells))
"""

H100 = {
    "index": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "compute_cap": "9.0",
    "memory.total": "81559 MiB",
    "driver_version": "550.54.15",
    "mig.mode.current": "Disabled",
    "compute_mode": "Default",
    "persistence_mode": "Enabled",
    "clocks.sm": "1980 MHz",
    "clocks.max.sm": "1980 MHz",
    "temperature.gpu": "41",
    "power.draw": "118.20 W",
    "clocks_throttle_reasons.active": "0x0000000000000000",
}


def install(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpus: list[dict[str, Any]],
    apps: list[dict[str, Any]] = (),
) -> None:
    """Put the stand-in first on PATH, answering for ``gpus`` and compute ``apps``."""
    state = directory / "nvidia-smi.json"
    state.write_text(json.dumps({"gpus": list(gpus), "apps": list(apps)}))
    script = directory / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\n{SCRIPT}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_NVIDIA_SMI", str(state))
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
