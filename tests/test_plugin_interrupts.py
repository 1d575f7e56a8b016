"""Calls that never finish stay on record: interrupted by a real Ctrl-C or failed by a test timeout."""

from __future__ import annotations

import json

import pytest
from quick import QUICK_ARGS

INTERRUPTED = """
import os
import signal
import threading
import time

import torch
from inner_models import Sleep


signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also when run in background


class CtrlC(torch.nn.Module):
    \"\"\"Presses Ctrl-C (a real SIGINT to this process) on its first call, then sleeps like a lane.\"\"\"

    def __init__(self):
        super().__init__()
        self.pressed = False

    def forward(self, x):
        if not self.pressed:
            self.pressed = True
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return x * 2


def test_interrupted(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="finished")
    dual_infer(CtrlC(), Sleep(), torch.ones(2), names=["Pressed", "Beside"])


def test_never_started(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2))
"""


def test_ctrl_c_keeps_the_finished_calls_and_records_the_interrupted_one(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_interrupt=INTERRUPTED)
    result = suite.runpytest_subprocess(*QUICK_ARGS, "-p", "no:randomly", "--dualgpu-report=json:out.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = json.loads((suite.path / "out.json").read_text())
    assert [(row["nodeid"], row["call"], row["name"]) for row in document["results"]] == [
        ("test_interrupt.py::test_interrupted", 1, "finished")
    ]
    (error,) = document["errors"]
    assert error["nodeid"] == "test_interrupt.py::test_interrupted"
    assert error["call"] == 2
    assert error["error"].startswith("KeyboardInterrupt while measuring Pressed + Beside")


TIMED_OUT = """
import pytest
import torch
from inner_models import Sleep


class GivesUp(torch.nn.Module):
    \"\"\"Fails the test from inside the call, as pytest-timeout's signal method does.\"\"\"

    def forward(self, x):
        pytest.fail("Timeout >1.0s")


def test_timed_out(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="before")
    dual_infer(GivesUp(), Sleep(), torch.ones(2))


def test_after(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="after")
"""


def test_a_test_failed_inside_a_call_keeps_its_calls_on_record(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_timeout=TIMED_OUT)
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    result.assert_outcomes(passed=1, failed=1)
    document = json.loads((suite.path / "out.json").read_text())
    assert [row["name"] for row in document["results"]] == ["before", "after"]
    (error,) = document["errors"]
    assert error["call"] == 2
    assert "Timeout >1.0s" in error["error"]


STUCK = """
import os
import signal
import threading

import torch

signal.signal(signal.SIGINT, signal.default_int_handler)


PRESSED = threading.Event()


class StuckAtOnce(torch.nn.Module):
    \"\"\"Returns alone, never at once: on a lane thread it waits for good, and Ctrl-C comes 1 s later.\"\"\"

    def forward(self, x):
        if threading.current_thread().name.startswith("dualgpu-lane"):
            if not PRESSED.is_set():
                PRESSED.set()
                threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            threading.Event().wait()
        return x * 2


def test_stuck(dual_infer):
    dual_infer(StuckAtOnce(), StuckAtOnce(), torch.ones(2), mode="threads")
"""


def test_after_ctrl_c_stuck_lanes_do_not_hold_the_process(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_stuck=STUCK)
    result = suite.runpytest_subprocess(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    # Joining each stuck lane thread for its 5 s grace would take 10 s more.
    assert result.duration < 8, result.duration
    (error,) = json.loads((suite.path / "out.json").read_text())["errors"]
    assert error["error"].startswith("KeyboardInterrupt while measuring StuckAtOnce + StuckAtOnce")


CRASHING = """
import os
import torch
from inner_models import Sleep


def test_before(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="before")


def test_crashes(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="first")
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="second")
    os._exit(1)  # as a segfault in native code ends the worker: no report, no teardown


def test_after(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="after")
"""


def test_a_crashed_xdist_worker_keeps_the_finished_calls_of_its_test_and_names_the_loss(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_crash=CRASHING)
    temporary = suite.mkdir("temporary")
    monkeypatch.setenv("TMPDIR", str(temporary))
    result = suite.runpytest_subprocess(
        *QUICK_ARGS, "-n", "1", "-p", "no:randomly", "--dualgpu-report=json:out.json"
    )
    result.assert_outcomes(passed=2, failed=1)
    document = json.loads((suite.path / "out.json").read_text())
    assert [(row["nodeid"].partition("::")[2], row["call"], row["name"]) for row in document["results"]] == [
        ("test_before", 1, "before"),
        ("test_crashes", 1, "first"),
        ("test_crashes", 2, "second"),
        ("test_after", 1, "after"),
    ]
    (error,) = document["errors"]
    assert error["nodeid"] == "test_crash.py::test_crashes"
    assert error["call"] == 3
    assert error["error"].startswith(
        "xdist worker gw0 crashed in this test after 2 finished dual_infer call(s)"
    )
    assert not list(temporary.glob("dualgpu-calls-*")), "the finished calls' files are removed at the end"
