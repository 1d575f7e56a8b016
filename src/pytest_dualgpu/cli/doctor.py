"""``dualgpu doctor``: can models overlap on this machine at all, and if not, why not.

Four groups of checks, each with a status (pass, warn, fail, skip), what was found and the fix: the build
(torch, CUDA, cuDNN, driver) and the device; the settings that stop or distort concurrency or timing;
the GPU's state (MPS, MIG, compute and persistence mode, other processes, clocks, temperature, throttle
reasons); and a self-test of every mode on the device, a minute at most (``selftest``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from tabulate import tabulate

from pytest_dualgpu import envsettings
from pytest_dualgpu.cli.check import Check
from pytest_dualgpu.engine.backends import graphs_unsupported
from pytest_dualgpu.files import write_text
from pytest_dualgpu.gpustate import HARDWARE, GpuReport, gpu_reports, nvml
from pytest_dualgpu.machine import cpu_model, machine_info, mps_state
from pytest_dualgpu.stats import FAIL, PASS, SKIP, WARN
from pytest_dualgpu.units import size_text

STATUSES = (PASS, WARN, FAIL, SKIP)
HOT_CELSIUS = 85


@dataclass
class Diagnosis:
    device: str
    checks: list[Check]
    machine: dict[str, Any]

    @property
    def failed(self) -> bool:
        return any(check.status == FAIL for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "checks": [check.to_dict() for check in self.checks],
            "machine": self.machine,
        }

    def write_json(self, path: str) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", "--json")

    def text(self) -> str:
        rows = [(check.status.upper(), check.name, check.detail, check.fix) for check in self.checks]
        table = tabulate(
            rows,
            headers=("status", "check", "found", "fix"),
            tablefmt="simple",
            maxcolwidths=[None, 28, 60, 44],
        )
        counts = ", ".join(
            f"{sum(check.status == status for check in self.checks)} {status}" for status in STATUSES
        )
        verdict = (
            "some check failed: concurrency cannot work as measured here until it is fixed"
            if self.failed
            else "nothing failed: lanes can overlap on this machine"
        )
        return f"dualgpu doctor on {self.device}\n\n{table}\n\n{counts}; {verdict}"


def diagnose(device_spec: str = "auto", self_test: bool = True, budget_seconds: float = 60.0) -> Diagnosis:
    """Every check for the device named by ``device_spec`` (auto, cpu, cuda, cuda:N)."""
    checks = build_checks()
    device, device_checks = _device(device_spec)
    checks += device_checks
    checks += settings_checks(device)
    checks += gpu_state_checks(device)
    if self_test and device is not None:
        from pytest_dualgpu.cli.selftest import run_self_test

        checks += run_self_test(device, budget_seconds)
    elif device is None:
        checks.append(Check("self-test", SKIP, "no usable device to test", "fix the device check above"))
    return Diagnosis(str(device or device_spec), checks, machine_info())


def build_checks() -> list[Check]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None  # type: ignore[no-untyped-call]
    built = (
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}"
        if torch.version.cuda
        else f"torch {torch.__version__}, a CPU build (no CUDA)"
    )
    checks = [Check("build", PASS, built)]
    unsupported = graphs_unsupported()
    if torch.version.cuda and unsupported:
        checks.append(Check("graphs mode", WARN, unsupported, "upgrade torch to use the graphs mode"))
    return checks


def _device(spec: str) -> tuple[torch.device | None, list[Check]]:
    """The device to check and its facts; None (with a failed check) where it cannot be used."""
    wanted = spec if spec != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError as error:
        return None, [
            Check("device", FAIL, f"{spec!r} is not a device: {error}", "use auto, cpu, cuda or cuda:N")
        ]
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        threads = torch.get_num_threads()
        detail = f"{cpu_model()}: {cores} cores, {usable} usable by this process, {threads} intra-op threads"
        status = PASS if usable >= 2 else WARN
        fix = (
            ""
            if usable >= 2
            else "give the process at least 2 cores (taskset, container limits): lanes need one each"
        )
        return device, [Check("device", status, detail, fix)]
    if device.type != "cuda":
        return None, [Check("device", FAIL, f"{device.type} is not supported", "use cpu or cuda")]
    if not torch.cuda.is_available():
        reason = (
            "this torch is a CPU build"
            if not torch.version.cuda
            else "no GPU is visible (driver, CUDA_VISIBLE_DEVICES?)"
        )
        return None, [
            Check(
                "device",
                FAIL,
                f"CUDA is not available: {reason}",
                "install a CUDA build of torch on a GPU machine, or use --device cpu",
            )
        ]
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return None, [
            Check(
                "device",
                FAIL,
                f"cuda:{index} does not exist ({torch.cuda.device_count()} visible)",
                "pick a visible GPU index",
            )
        ]
    device = torch.device("cuda", index)
    properties = torch.cuda.get_device_properties(index)
    detail = (
        f"{properties.name}: compute capability {properties.major}.{properties.minor}, "
        f"{properties.multi_processor_count} SMs, {size_text(properties.total_memory)}"
    )
    return device, [Check("device", PASS, detail)]


def settings_checks(device: torch.device | None) -> list[Check]:
    """Each watched variable that is set (named on any machine), and torch's own process-wide switches."""
    checks = [_setting_check(finding, device) for finding in envsettings.findings()]
    if not checks:
        checks.append(
            Check("settings", PASS, f"none of the {len(envsettings.SETTINGS)} watched variables is set")
        )
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    if threads > cores:
        checks.append(
            Check(
                "intra-op threads",
                WARN,
                f"torch uses {threads} intra-op threads on {cores} cores: they oversubscribe the cores",
                f"torch.set_num_threads({cores}) or OMP_NUM_THREADS={cores}",
            )
        )
    if torch.are_deterministic_algorithms_enabled():
        checks.append(
            Check(
                "deterministic algorithms",
                WARN,
                "torch.use_deterministic_algorithms(True): some operators take slower kernels",
                "switch it off outside tests of determinism",
            )
        )
    if device is not None and device.type == "cuda":
        mode = torch.cuda.get_sync_debug_mode()
        if mode:
            checks.append(
                Check(
                    "sync debug mode",
                    WARN,
                    f"torch.cuda.set_sync_debug_mode({mode}) is on for the whole process: every host sync "
                    "warns or raises",
                    "torch.cuda.set_sync_debug_mode(0); dualgpu_sync finds syncs in the lanes on its own",
                )
            )
    return checks


def _setting_check(finding: envsettings.Finding, device: torch.device | None) -> Check:
    """A setting that only matters on a GPU is named on CPU too (the GPU runner often shares the
    environment), but it fails nothing there."""
    status, detail = finding.status, f"{finding.shown}: {finding.detail}"
    if device is not None and device.type != finding.device and finding.device != "any" and status == FAIL:
        status, detail = WARN, f"{detail} (a fail on {finding.device}; this check ran on {device.type})"
    return Check(f"setting {finding.name}", status, detail, finding.fix)


def gpu_state_checks(device: torch.device | None) -> list[Check]:
    """MPS, MIG, modes, other processes, clocks, temperature and throttling of the GPUs, without CUDA."""
    reports = gpu_reports()
    if not reports:
        status = FAIL if device is not None and device.type == "cuda" else SKIP
        return [
            Check(
                "GPU state",
                status,
                "no NVIDIA driver tools (NVML, nvidia-smi) answered",
                "install the NVIDIA driver" if status == FAIL else "",
            )
        ]
    checks = []
    if nvml() is None:
        checks.append(
            Check(
                "NVML",
                WARN,
                "nvidia-ml-py is not installed: the state below comes from nvidia-smi, and results carry "
                "no GPU state",
                "pip install 'pytest-dualgpu[gpu]'",
            )
        )
    mps = mps_state()
    if mps["daemon"]:
        checks.append(
            Check(
                "MPS",
                WARN,
                f"an MPS control daemon listens at {mps['pipe_directory']}: CUDA processes share the GPU "
                "through it, "
                "so another client's kernels run beside the lanes",
                "measure without MPS, or with the clients production has",
            )
        )
    for report in reports:
        checks += _gpu_checks(report)
    return checks


def _gpu_checks(report: GpuReport) -> list[Check]:
    name = f"GPU {report.index}"
    checks = []
    if report.mig_mode == "Enabled":
        checks.append(
            Check(
                f"{name} MIG",
                WARN,
                f"{report.name}: MIG is on: a process sees one slice (fewer SMs and memory)",
                "figures hold for that slice only; disable MIG to measure the whole GPU",
            )
        )
    if report.compute_mode == "Prohibited":
        checks.append(
            Check(
                f"{name} compute mode",
                FAIL,
                "compute mode Prohibited: no process may use the GPU",
                "nvidia-smi -c DEFAULT",
            )
        )
    elif report.compute_mode and report.compute_mode.startswith("Exclusive"):
        checks.append(
            Check(
                f"{name} compute mode",
                WARN,
                f"compute mode {report.compute_mode}: one process at a time, so xdist workers sharing it "
                "fail to start CUDA",
                "nvidia-smi -c DEFAULT, or one xdist worker per GPU (--dualgpu-devices)",
            )
        )
    if report.persistence_mode == "Disabled":
        checks.append(
            Check(
                f"{name} persistence",
                WARN,
                "persistence mode is off: the driver unloads when idle, so each process pays its start "
                "and clocks start low",
                "sudo nvidia-smi -pm 1",
            )
        )
    others = [process for process in report.processes if process.get("pid") != os.getpid()]
    if others:
        listed = ", ".join(
            f"pid {process['pid']} {process.get('name') or '?'}"
            + (f" ({size_text(process['used_bytes'])})" if process.get("used_bytes") else "")
            for process in others[:4]
        )
        checks.append(
            Check(
                f"{name} other processes",
                WARN,
                f"{len(others)} other process(es) use this GPU: {listed}; they share its SMs and memory",
                "measure on a GPU nothing else uses",
            )
        )
    state = report.state
    clocks = (
        f"SM clock {state.sm_clock_mhz} of {state.max_sm_clock_mhz} MHz"
        if state.sm_clock_mhz
        else "SM clock unknown"
    )
    temperature = f"{state.temperature_c} C" if state.temperature_c is not None else "temperature unknown"
    power = f", {state.power_w:.0f} W" if state.power_w is not None else ""
    throttled = state.throttled
    status = (
        FAIL
        if HARDWARE.intersection(throttled)
        else WARN
        if throttled or (state.temperature_c or 0) >= HOT_CELSIUS
        else PASS
    )
    detail = f"{report.name}: {clocks}, {temperature}{power} (via {report.source})"
    fix = ""
    if throttled:
        detail += f"; throttled: {', '.join(throttled)}"
        fix = "cool the GPU or lift the power cap; measure once no throttle reason is active"
    elif status == WARN:
        fix = "let the GPU cool down before measuring"
    checks.append(Check(f"{name} clocks", status, detail, fix))
    return checks
