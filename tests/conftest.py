from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

#: Modules that need a library of the test extra at import. A GPU machine may have only the runtime
#: dependencies (docs/gpu.md): there ``pytest -m cuda`` leaves them out instead of failing to collect;
#: none of them holds a cuda test.
NEEDS_AT_IMPORT = {
    "jsonschema": ["test_cli.py", "test_doctor.py", "test_integrations.py", "test_plugin_interference.py"],
    "hypothesis": [
        "test_compare.py",
        "test_outputs.py",
        "test_sanity.py",
        "test_stats.py",
        "test_timeline.py",
    ],
    "yaml": ["test_integrations.py"],
}
collect_ignore = sorted(
    {
        module
        for library, modules in NEEDS_AT_IMPORT.items()
        if find_spec(library) is None
        for module in modules
    }
)

sys.path.insert(0, str(Path(__file__).parent))

from examplesuite import ExampleRun, copy_examples, run_workflow  # noqa: E402

INNER_MODELS = '''
"""Models for the inner test sessions: timing controls and deliberately broken lanes."""
import threading
import time

import torch
from torch import nn

from pytest_dualgpu.engine.executor import busy


class Sleep(nn.Module):
    """Releases the GIL: two of these overlap almost perfectly."""

    def __init__(self, seconds=0.002):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x * 2


class Gil(nn.Module):
    """A fixed amount of Python work, which holds the GIL: two of these take turns (a count of steps,
    not a loop until a deadline, which would count the other lane's turns as its own progress)."""

    def __init__(self, seconds=0.002):
        super().__init__()
        started = time.perf_counter()
        total = 0
        for step in range(100_000):
            total += step
        self.steps = max(1, round(100_000 * seconds / (time.perf_counter() - started)))

    def forward(self, x):
        total = 0
        for step in range(self.steps):
            total += step
        return x


TURN = threading.Lock()


class Turns(nn.Module):
    """Sleeps holding a lock all lanes share: two of these take turns whatever the machine's load. Only the
    sleep is marked busy, so the wait for the other's turn is not counted as overlap."""

    def __init__(self, seconds=0.003):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        with TURN, busy():
            time.sleep(self.seconds)
        return x * 2


class Drifting(nn.Module):
    """Module state that changes on every call: no run ever equals the reference."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.calls


class WritesItsInput(nn.Module):
    """Changes its input in place: a race with every other lane that reads the same tensor."""

    def forward(self, x):
        x.add_(1)
        return x * 2


class Raising(nn.Module):
    def forward(self, x):
        raise RuntimeError("lane exploded")
'''


#: The test extra's own pytest plugins, which no inner session or started process uses: loading them
#: costs each new pytest process about 0.6 s on the 2-core VM, and the suite starts dozens.
UNUSED_PLUGINS = "-p no:hypothesispytest -p no:anyio"


@pytest.fixture(autouse=True, scope="session")
def _started_sessions_load_only_what_they_use() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTEST_ADDOPTS", f"{os.environ.get('PYTEST_ADDOPTS', '')} {UNUSED_PLUGINS}".strip())
        yield


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


#: How long a test's abandoned lane threads may take to return once the test is over.
ABANDONED_GRACE = 5.0


@pytest.fixture(autouse=True)
def _no_abandoned_lanes() -> Iterator[None]:
    """A test that times a lane out releases it before it ends: an abandoned lane keeps the measuring lock
    for up to ``ABANDONED_LINGER`` seconds, so every later test would wait for it and time it."""
    yield
    from pytest_dualgpu.engine.workers import still_running

    left = still_running()
    for entry in left:
        entry.thread.join(ABANDONED_GRACE)
    stuck = [entry.lane for entry in left if entry.thread.is_alive()]
    assert not stuck, f"lane(s) {stuck} still run after the test: release what they wait for at its end"


@pytest.fixture(scope="session")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> ExampleRun:
    """The example suite run once, by the GitHub workflow's command (the README's command with xdist and
    every file CI keeps: the table, JSON, markdown summary, traces, JUnit XML)."""
    folder = tmp_path_factory.mktemp("workflow")
    copy_examples(folder)
    return ExampleRun(folder, run_workflow("github", folder, {}))


@pytest.fixture(scope="session")
def _torch_fully_imported() -> None:
    """Run every engine path once in this process before in-process inner sessions start.

    pytester removes the modules an inner session imported when it ends; torch registers operator
    libraries on import and refuses to register them twice, so its lazy imports must happen out here.
    """
    from models import SleepLane

    from pytest_dualgpu import dual_infer

    stateful = ModuleWithCounter()
    dual_infer(
        stateful, SleepLane(0.001), torch.ones(2), budget=0.01, min_rounds=1, race_trials=1, profile=True
    )


class ModuleWithCounter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.calls


@pytest.fixture
def suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, _torch_fully_imported: None
) -> pytest.Pytester:
    """A pytester directory with ``inner_models`` and no dualgpu settings leaking in from outside."""
    for name in list(os.environ):
        if name.startswith("DUALGPU_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name)
    # A terminal wide enough for the whole table: the tests read its columns (tests/test_tablefit.py
    # narrows it on purpose).
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("PYTEST_ADDOPTS", UNUSED_PLUGINS)  # pytester clears it
    pytester.makepyfile(inner_models=INNER_MODELS)
    return pytester
