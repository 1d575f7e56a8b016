"""Environment settings that stop or distort concurrency and timing, named wherever they are set.

Most "my streams don't overlap" reports have causes outside the models: a variable a training stack set,
a debugging switch left on. Each is named whenever it is set, also on a machine without a GPU: the same
environment often reaches the GPU runner. ``dualgpu doctor``, the session header and the no-overlap hint
all read this one list. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pytest_dualgpu.stats import FAIL, PASS, WARN


@dataclass(frozen=True)
class Finding:
    """One setting as found: its status, what it does here, and the fix (empty when nothing to fix)."""

    name: str
    value: str
    status: str
    detail: str
    fix: str = ""
    device: str = "cuda"  # the device type it matters on: "cuda", "cpu" or "any"

    @property
    def shown(self) -> str:
        return f"{self.name}={self.value}"


Judge = Callable[[str, int], tuple[str, str, str]]


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _launch_blocking(value: str, cores: int) -> tuple[str, str, str]:
    if not _truthy(value):
        return PASS, "off", ""
    return (
        FAIL,
        "every kernel launch waits for the kernel to finish: no two streams ever run at once, and host "
        "timings include every kernel",
        "unset CUDA_LAUNCH_BLOCKING (it is a debugging switch)",
    )


def _max_connections(value: str, cores: int) -> tuple[str, str, str]:
    fix = "unset it (the default is 8 hardware queues) or set it to at least the number of lanes"
    if not value.strip().isdigit() or int(value) < 1:
        return WARN, "not a positive integer: CUDA ignores it", fix
    connections = int(value)
    if connections == 1:
        return (
            FAIL,
            "every stream shares one hardware work queue: kernels of different streams run one after the "
            "other (some training stacks set this for their own overlap)",
            fix,
        )
    if connections < 4:
        return WARN, f"only {connections} hardware queues: more lanes than that share one and serialize", fix
    return PASS, f"{connections} hardware queues", ""


def _sanitizer(value: str, cores: int) -> tuple[str, str, str]:
    if not _truthy(value):
        return PASS, "off", ""
    return (
        WARN,
        "PyTorch's CUDA sanitizer checks every operator in this process: the timings are its, not the "
        "models'",
        "unset TORCH_CUDA_SANITIZER; dualgpu_sync(sanitizer=True) sanitizes one run on its own",
    )


def _no_caching(value: str, cores: int) -> tuple[str, str, str]:
    if not _truthy(value):
        return PASS, "off", ""
    return (
        FAIL,
        "the caching allocator is off: every allocation and free calls cudaMalloc / cudaFree, and cudaFree "
        "synchronizes the whole device, so each lane stalls the others",
        "unset PYTORCH_NO_CUDA_MEMORY_CACHING (it is for memory debugging)",
    )


def _cublas_workspace(value: str, cores: int) -> tuple[str, str, str]:
    return (
        WARN,
        "cuBLAS gets a fixed workspace per stream (set for deterministic results): matmuls may choose slower "
        "algorithms, and each lane's stream holds its own",
        "unset CUBLAS_WORKSPACE_CONFIG unless the suite needs deterministic cuBLAS",
    )


def _threads(name: str) -> Judge:
    def judge(value: str, cores: int) -> tuple[str, str, str]:
        if not value.strip().isdigit() or int(value) < 1:
            return WARN, "not a positive integer: ignored", f"set {name} to a count, or unset it"
        threads = int(value)
        if threads > cores:
            return (
                WARN,
                f"{threads} threads on {cores} cores: intra-op threads oversubscribe the cores, and lanes on "
                "CPU wait for each other's threads",
                f"set {name} to at most {cores}, or unset it",
            )
        return PASS, f"{threads} intra-op threads of {cores} cores; lanes on CPU split them", ""

    return judge


def _visible(value: str, cores: int) -> tuple[str, str, str]:
    if not value.strip() or value.strip() == "-1":
        return FAIL, "no GPU is visible to this process", "unset CUDA_VISIBLE_DEVICES or list the GPUs to use"
    return PASS, "the GPUs this process may use", ""


def _mps_percentage(value: str, cores: int) -> tuple[str, str, str]:
    return (
        WARN,
        f"under MPS this process may use only {value}% of the SMs: lanes compete for that share",
        "unset CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, or measure with the share production gets",
    )


def _device_asserts(value: str, cores: int) -> tuple[str, str, str]:
    if not _truthy(value):
        return PASS, "off", ""
    return (
        WARN,
        "device-side assertions are compiled into the kernels: they run slower than in production",
        "unset TORCH_USE_CUDA_DSA",
    )


def _cache_disabled(value: str, cores: int) -> tuple[str, str, str]:
    if not _truthy(value):
        return PASS, "off", ""
    return (
        WARN,
        "the JIT kernel cache is off: kernels shipped as PTX compile again in every process (slow first "
        "calls)",
        "unset CUDA_CACHE_DISABLE",
    )


def _named(meaning: str) -> Judge:
    def judge(value: str, cores: int) -> tuple[str, str, str]:
        return PASS, meaning, ""

    return judge


#: Every watched variable: how to judge its value, and the device type it matters on.
SETTINGS: dict[str, tuple[Judge, str]] = {
    "CUDA_LAUNCH_BLOCKING": (_launch_blocking, "cuda"),
    "CUDA_DEVICE_MAX_CONNECTIONS": (_max_connections, "cuda"),
    "TORCH_CUDA_SANITIZER": (_sanitizer, "cuda"),
    "PYTORCH_NO_CUDA_MEMORY_CACHING": (_no_caching, "cuda"),
    "CUBLAS_WORKSPACE_CONFIG": (_cublas_workspace, "cuda"),
    "OMP_NUM_THREADS": (_threads("OMP_NUM_THREADS"), "cpu"),
    "MKL_NUM_THREADS": (_threads("MKL_NUM_THREADS"), "cpu"),
    "CUDA_VISIBLE_DEVICES": (_visible, "cuda"),
    "CUDA_DEVICE_ORDER": (_named("how CUDA numbers the GPUs"), "cuda"),
    "CUDA_MPS_PIPE_DIRECTORY": (_named("where this process looks for an MPS daemon"), "cuda"),
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": (_mps_percentage, "cuda"),
    "PYTORCH_CUDA_ALLOC_CONF": (_named("caching allocator settings"), "cuda"),
    "TORCH_USE_CUDA_DSA": (_device_asserts, "cuda"),
    "CUDA_CACHE_DISABLE": (_cache_disabled, "cuda"),
    "CUDA_MODULE_LOADING": (_named("when kernels load (LAZY: at first use, inside the warm-up)"), "cuda"),
    "NVIDIA_TF32_OVERRIDE": (_named("overrides TF32 math for every matmul (numerics and speed)"), "cuda"),
}


def findings(environ: Mapping[str, str] | None = None, cores: int | None = None) -> list[Finding]:
    """Every watched variable that is set, judged, in the order of ``SETTINGS``."""
    environ = os.environ if environ is None else environ
    cores = cores or os.cpu_count() or 1
    found = []
    for name, (judge, device) in SETTINGS.items():
        value = environ.get(name)
        if value is None:
            continue
        status, detail, fix = judge(value, cores)
        found.append(Finding(name, value, status, detail, fix, device))
    return found


def troubles(device_type: str, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """The settings that stop or distort concurrency on ``device_type`` (warn or fail), worst first."""
    relevant = [
        finding
        for finding in findings(environ)
        if finding.status != PASS and finding.device in (device_type, "any")
    ]
    return sorted(relevant, key=lambda finding: finding.status != FAIL)


def header_line(environ: Mapping[str, str] | None = None) -> str | None:
    """The session header's line: every watched variable that is set, the troublesome ones with why."""
    found = findings(environ)
    if not found:
        return None
    shown = [
        finding.shown if finding.status == PASS else f"{finding.shown} ({finding.status}: {finding.detail})"
        for finding in found
    ]
    return "dualgpu: settings: " + "; ".join(shown)
