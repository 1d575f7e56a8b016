"""GPU state in results (through a stand-in NVML), its warnings, and the settings named by the session
header and the no-overlap hint."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Iterator

import pytest
import torch
from models import SleepLane, TurnLane

from pytest_dualgpu import dual_infer, gpustate
from pytest_dualgpu.engine.diagnosis import no_overlap_hint
from pytest_dualgpu.engine.sanity import assess
from pytest_dualgpu.envsettings import SETTINGS
from pytest_dualgpu.gpustate import GpuState, read_state, state_warnings
from pytest_dualgpu.results import DualResult

FAST = {"budget": 0.1, "max_budget": 2, "warmup": 0.3}


def fake_pynvml(clock: int, reasons: int) -> types.ModuleType:
    """Just the NVML calls ``read_state`` makes, answering for one GPU."""
    module = types.ModuleType("pynvml")
    module.NVML_CLOCK_SM = 1  # type: ignore[attr-defined]
    module.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    answers = {
        "nvmlInit": lambda: None,
        "nvmlDeviceGetHandleByUUID": lambda uuid: ("handle", uuid),
        "nvmlDeviceGetHandleByIndex": lambda index: ("handle", index),
        "nvmlDeviceGetClockInfo": lambda handle, kind: clock,
        "nvmlDeviceGetMaxClockInfo": lambda handle, kind: 1980,
        "nvmlDeviceGetTemperature": lambda handle, kind: 63,
        "nvmlDeviceGetPowerUsage": lambda handle: 301_500,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda handle: reasons,
    }
    for name, answer in answers.items():
        setattr(module, name, answer)
    return module


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gpustate.nvml.cache_clear()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(1410, 0x4 | 0x1))
    yield
    gpustate.nvml.cache_clear()


def test_nvml_readings_decode_clocks_power_and_throttle_reasons(nvml: None) -> None:
    state = read_state("GPU-1234", 0)
    assert state == GpuState(1410, 1980, 63, 301.5, ["gpu_idle", "sw_power_cap"])
    assert state.throttled == ["sw_power_cap"]


def test_without_nvml_there_is_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    gpustate.nvml.cache_clear()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    try:
        assert read_state(None, 0) is None
    finally:
        gpustate.nvml.cache_clear()


@pytest.mark.parametrize(
    ("start", "end", "warned", "problem"),
    [
        (GpuState(1980), GpuState(1950), False, False),
        (GpuState(1980), GpuState(1800), True, False),  # 9%
        (GpuState(1980), GpuState(1200), False, True),  # 39%
        (GpuState(1980, throttle_reasons=["gpu_idle"]), GpuState(1980), False, False),
        (GpuState(1980, throttle_reasons=["sw_power_cap"]), GpuState(1980), True, False),
        (GpuState(1980), GpuState(1980, throttle_reasons=["hw_thermal_slowdown"]), False, True),
    ],
)
def test_throttling_and_clock_moves_warn_or_make_a_result_unreliable(
    start: GpuState, end: GpuState, warned: bool, problem: bool
) -> None:
    warnings, problems = state_warnings(start, end)
    assert bool(warnings) is warned
    assert bool(problems) is problem


@pytest.fixture(scope="module")
def measured() -> DualResult:
    return dual_infer(SleepLane(0.002), SleepLane(0.002), torch.ones(2), **FAST)


def test_a_result_carries_the_gpu_state_through_json_and_the_sanity_check(measured: DualResult) -> None:
    assert measured.gpu_state is None  # CPU: nothing to read
    throttled = dataclasses.replace(
        measured,
        gpu_state={
            "start": GpuState(1980, 1980, 60, 300.0),
            "end": GpuState(990, 1980, 90, 250.0, ["hw_slowdown"]),
        },
    )
    again = DualResult.from_dict(throttled.to_dict())
    assert again.gpu_state == throttled.gpu_state
    found = assess(again)
    assert any("hw_slowdown" in problem for problem in found.problems)
    assert any("moved by 50%" in problem for problem in found.problems)


def test_the_no_overlap_hint_names_the_settings_that_forbid_or_distort_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    turns = dual_infer(TurnLane(0.003), TurnLane(0.003), torch.ones(2), mode="threads", **FAST)
    assert turns.overlap < 0.1
    assert "holds the GIL" in (no_overlap_hint(turns) or "")
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert "also set: OMP_NUM_THREADS=64 (64 threads on" in (no_overlap_hint(turns) or "")
    on_gpu = dataclasses.replace(turns, device="cuda:0")
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    hint = no_overlap_hint(on_gpu) or ""
    assert hint.startswith(
        "CUDA_DEVICE_MAX_CONNECTIONS=1 is set: every stream shares one hardware work queue"
    )


def test_the_session_header_names_the_settings(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile("def test_nothing():\n    pass\n")
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert "dualgpu: settings" not in suite.runpytest().stdout.str()
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    result = suite.runpytest()
    result.stdout.fnmatch_lines(
        [
            "dualgpu: settings: CUDA_LAUNCH_BLOCKING=1 (fail: every kernel launch waits*; "
            "CUDA_VISIBLE_DEVICES=0"
        ]
    )
