"""A GPU's state: clocks, temperature, power, throttle reasons, and who else uses it.

Read through NVML (``nvidia-ml-py``, the ``gpu`` extra), which answers in microseconds and so can be asked
at the start and the end of every measurement; ``dualgpu doctor`` falls back on ``nvidia-smi`` where NVML
is missing. Neither starts CUDA in this process. Torch-free.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from pytest_dualgpu.gpus import known, smi_rows

#: NVML's clock throttle (since 535: "clock event") reason bits, as nvidia-smi names them.
THROTTLE_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
#: Reasons that say nothing against a measurement: an idle GPU, clocks someone pinned, a boost sync.
BENIGN = frozenset({"gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"})
#: Reasons that cut the clocks hard (often by half): figures measured under them describe no normal run.
HARDWARE = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})
#: A measurement whose SM clock moved by more than this share gets a warning; beyond ``CLOCK_UNRELIABLE``
#: its figures mix two different machines and no verdict rests on them.
CLOCK_WARN = 0.05
CLOCK_UNRELIABLE = 0.20


@dataclass
class GpuState:
    """One reading of a GPU. Fields the source could not read are None."""

    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    throttle_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuState:
        return cls(
            data.get("sm_clock_mhz"),
            data.get("max_sm_clock_mhz"),
            data.get("temperature_c"),
            data.get("power_w"),
            list(data.get("throttle_reasons") or []),
        )

    @property
    def throttled(self) -> list[str]:
        return [reason for reason in self.throttle_reasons if reason not in BENIGN]


def decode_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


@cache
def nvml() -> ModuleType | None:
    """The initialised ``pynvml`` module, or None without nvidia-ml-py or a driver."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVML on this machine
        return None
    return pynvml


def nvml_handle(uuid: str | None, index: int) -> Any | None:
    """The NVML handle of a GPU: by UUID (exact under CUDA_VISIBLE_DEVICES and reordering), else index."""
    module = nvml()
    if module is None:
        return None
    try:
        if uuid:
            return module.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return module.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


def read_state(uuid: str | None, index: int) -> GpuState | None:
    """The GPU's state now, through NVML; None where NVML cannot tell."""
    module = nvml()
    handle = nvml_handle(uuid, index)
    if module is None or handle is None:
        return None
    reasons_of = getattr(module, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        module, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    mask = _ask(reasons_of, handle) if reasons_of is not None else None
    power = _ask(module.nvmlDeviceGetPowerUsage, handle)
    return GpuState(
        sm_clock_mhz=_ask(module.nvmlDeviceGetClockInfo, handle, module.NVML_CLOCK_SM),
        max_sm_clock_mhz=_ask(module.nvmlDeviceGetMaxClockInfo, handle, module.NVML_CLOCK_SM),
        temperature_c=_ask(module.nvmlDeviceGetTemperature, handle, module.NVML_TEMPERATURE_GPU),
        power_w=None if power is None else power / 1000,
        throttle_reasons=decode_reasons(mask) if mask is not None else [],
    )


def _ask(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:  # a field this GPU or driver does not support
        return None


@dataclass
class GpuReport:
    """What the doctor wants to know of one GPU, from NVML or nvidia-smi."""

    index: int
    name: str
    uuid: str | None
    state: GpuState
    persistence_mode: str | None = None
    compute_mode: str | None = None
    mig_mode: str | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, name, used_bytes
    source: str = "nvidia-smi"


SMI_FIELDS = (
    "index",
    "name",
    "uuid",
    "persistence_mode",
    "compute_mode",
    "mig.mode.current",
    "clocks.sm",
    "clocks.max.sm",
    "temperature.gpu",
    "power.draw",
    "clocks_throttle_reasons.active",
)


def gpu_reports() -> list[GpuReport]:
    """Every GPU of the machine, from NVML when it is there, else nvidia-smi; empty with neither."""
    return _nvml_reports() or _smi_reports()


def _nvml_reports() -> list[GpuReport]:
    module = nvml()
    if module is None:
        return []
    reports = []
    count = _ask(module.nvmlDeviceGetCount) or 0
    for index in range(count):
        handle = _ask(module.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        uuid = _text(_ask(module.nvmlDeviceGetUUID, handle))
        mig = _ask(module.nvmlDeviceGetMigMode, handle)
        processes = _ask(module.nvmlDeviceGetComputeRunningProcesses, handle) or []
        reports.append(
            GpuReport(
                index=index,
                name=_text(_ask(module.nvmlDeviceGetName, handle)) or "GPU",
                uuid=uuid,
                state=read_state(uuid, index) or GpuState(),
                persistence_mode=_enabled(_ask(module.nvmlDeviceGetPersistenceMode, handle)),
                compute_mode=_COMPUTE_MODES.get(_ask(module.nvmlDeviceGetComputeMode, handle)),
                mig_mode=None if mig is None else _enabled(mig[0]),
                processes=[
                    {
                        "pid": process.pid,
                        "name": _process_name(module, process.pid),
                        "used_bytes": getattr(process, "usedGpuMemory", None),
                    }
                    for process in processes
                ],
                source="nvml",
            )
        )
    return reports


_COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


def _enabled(value: Any) -> str | None:
    return None if value is None else ("Enabled" if value else "Disabled")


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _process_name(module: ModuleType, pid: int) -> str | None:
    return _text(_ask(module.nvmlSystemGetProcessName, pid))


def _smi_reports() -> list[GpuReport]:
    rows = _smi("--query-gpu=" + ",".join(SMI_FIELDS))
    if not rows:
        return []
    apps = _smi("--query-compute-apps=gpu_uuid,pid,process_name,used_memory")
    reports = []
    for row in rows:
        if len(row) != len(SMI_FIELDS):
            continue
        found = dict(zip(SMI_FIELDS, row, strict=True))
        uuid = known(found["uuid"])
        mask = known(found["clocks_throttle_reasons.active"])
        reports.append(
            GpuReport(
                index=int(found["index"]),
                name=found["name"],
                uuid=uuid,
                state=GpuState(
                    sm_clock_mhz=_number(found["clocks.sm"]),
                    max_sm_clock_mhz=_number(found["clocks.max.sm"]),
                    temperature_c=_number(found["temperature.gpu"]),
                    power_w=_float(found["power.draw"]),
                    throttle_reasons=decode_reasons(int(mask, 16)) if mask else [],
                ),
                persistence_mode=known(found["persistence_mode"]),
                compute_mode=known(found["compute_mode"]),
                mig_mode=known(found["mig.mode.current"]),
                processes=[
                    {"pid": int(pid), "name": name, "used_bytes": _mebibytes(used)}
                    for gpu_uuid, pid, name, used in (app for app in apps if len(app) == 4)
                    if gpu_uuid == uuid and pid.isdigit()
                ],
            )
        )
    return reports


def _smi(query: str) -> list[list[str]]:
    return smi_rows(query, "--format=csv,noheader,nounits")


def _number(text: str) -> int | None:
    value = _float(text)
    return None if value is None else round(value)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _mebibytes(text: str) -> int | None:
    value = _float(text)
    return None if value is None else int(value * 2**20)


def state_warnings(start: GpuState | None, end: GpuState | None) -> tuple[list[str], list[str]]:
    """(warnings, problems) about a measurement from the GPU's state at its start and its end.

    Any throttle reason beyond the benign ones is a warning; a hardware slowdown, or an SM clock that
    moved by more than ``CLOCK_UNRELIABLE``, makes the figures untrustworthy (a problem).
    """
    warnings: list[str] = []
    problems: list[str] = []
    if start is None or end is None:
        return warnings, problems
    for when, state in (("start", start), ("end", end)):
        throttled = state.throttled
        if not throttled:
            continue
        text = f"the GPU throttled at the {when} of the measured rounds ({', '.join(throttled)})"
        if HARDWARE.intersection(throttled):
            problems.append(f"{text}: a hardware slowdown cuts the clocks: no normal run is like it")
        else:
            warnings.append(f"{text}: its clocks were capped while measuring")
    if start.sm_clock_mhz and end.sm_clock_mhz:
        moved = abs(end.sm_clock_mhz - start.sm_clock_mhz) / start.sm_clock_mhz
        text = (
            f"the GPU's SM clock moved by {moved:.0%} during the measured rounds "
            f"({start.sm_clock_mhz} -> {end.sm_clock_mhz} MHz)"
        )
        if moved > CLOCK_UNRELIABLE:
            problems.append(f"{text}, beyond {CLOCK_UNRELIABLE:.0%}: the rounds ran at different speeds")
        elif moved > CLOCK_WARN:
            warnings.append(f"{text}, beyond {CLOCK_WARN:.0%}")
    return warnings, problems
