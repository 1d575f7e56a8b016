"""The session's settings: one dataclass, each field resolved as CLI > environment > ini > default.

Nothing here knows about pytest or imports torch: the plugin hands in the raw values it found in each
source, and gets back validated settings or a ``DualGpuUsageError`` that names the source, the value and
what would be accepted.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.modes import MODES, checked_mode
from pytest_dualgpu.reports.gate import Threshold, parse_threshold
from pytest_dualgpu.specs import DEFAULT_BUDGET, DEFAULT_LOCK_TIMEOUT, check_max_budget, parse_setting

ReportKind = Literal["term", "term-wide", "json", "md", "trace", "png"]
REPORT_KINDS: tuple[ReportKind, ...] = ("term", "term-wide", "json", "md", "trace", "png")
TERMINAL_KINDS = ("term", "term-wide")
TARGET_FORMS = "term, term-wide, json:PATH, md, md:PATH, trace:DIR or png:DIR"
INCONCLUSIVE_CHOICES = ("warn", "fail", "skip")


@dataclass(frozen=True)
class ReportTarget:
    """Where one report goes: ``term``, ``json:PATH``, ``md[:PATH]``, ``trace:DIR`` or ``png:DIR``."""

    kind: ReportKind
    path: str | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class Option:
    """One setting as it appears in each source."""

    field: str
    help: str
    ini_type: Literal["string", "args", "bool", "float"]
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--dualgpu-" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "DUALGPU_" + self.field.upper()

    @property
    def ini(self) -> str:
        return "dualgpu_" + self.field


OPTIONS = (
    Option(
        "report",
        "Report the dualgpu results: term (default; the table fitted to the terminal), term-wide (every "
        "column whole), json:PATH, md[:PATH] (no path: $GITHUB_STEP_SUMMARY), "
        "trace:DIR (a Chrome/Perfetto trace per result), png:DIR (plots; needs matplotlib); repeatable",
        "args",
        "TARGET",
    ),
    Option("device", "Device to measure on: auto (default: cuda if available), cpu, cuda, cuda:N", "string"),
    Option("mode", f"Execution mode of dual_infer: auto (default), {', '.join(MODES)}", "string"),
    Option("budget", f"Seconds of measured rounds per dual_infer call (default {DEFAULT_BUDGET:g})", "float"),
    Option(
        "max_budget",
        "Seconds a call may keep measuring to decide a bound the budget left open (default 5x the budget)",
        "float",
    ),
    Option(
        "warmup",
        "Cap in seconds of the steady-state warm-up of a dual_infer call (default 3; 0 skips it)",
        "float",
    ),
    Option(
        "min_rounds",
        "Fewest measured rounds of a dual_infer call (default 7): fewer to check the plumbing quickly, "
        "more for steadier figures",
        "string",
        "N",
    ),
    Option(
        "settle",
        "Pause in seconds before each measured sample on CPU, for the previous one's OpenMP workers to go "
        "idle (default 0.01; 0 for none)",
        "float",
    ),
    Option(
        "inconclusive",
        "What an inconclusive verdict does to its test: warn (default: passes with a warning), fail or skip",
        "string",
        "warn|fail|skip",
    ),
    Option(
        "lock_timeout",
        "Seconds to wait for another process's measuring lock before giving up "
        f"(default {DEFAULT_LOCK_TIMEOUT:g})",
        "float",
    ),
    Option(
        "devices",
        "GPU per pytest-xdist worker: auto (all visible GPUs) or indices such as 0,1; worker gwN gets the "
        "Nth, round robin",
        "string",
        "auto|0,1,...",
    ),
    Option("require_cuda", "Make a missing CUDA GPU an error at session start", "bool"),
    Option(
        "profile",
        "Run one more concurrent pass of every dual_infer call under torch.profiler, for kernel overlap",
        "bool",
    ),
    Option("compare", "Compare the results with an earlier JSON report (a vs base column)", "string", "PATH"),
    Option(
        "compare_fail",
        "Fail the session when a result regressed against --dualgpu-compare by more than this: "
        "speedup:10%, efficiency:0.1, concurrent:10%, memory:10%; repeatable",
        "args",
        "METRIC:LIMIT",
    ),
    Option("save", "Save the results as a JSON report for later --dualgpu-compare runs", "string", "PATH"),
)


@dataclass(frozen=True)
class Settings:
    """Everything the plugin was told. ``devices``: None to leave CUDA_VISIBLE_DEVICES alone."""

    reports: tuple[ReportTarget, ...] = ()
    device: str = "auto"
    mode: str = "auto"
    budget: float = DEFAULT_BUDGET
    max_budget: float | None = None
    warmup: float | None = None
    min_rounds: int | None = None
    settle: float | None = None
    inconclusive: str = "warn"
    lock_timeout: float | None = None
    devices: tuple[int, ...] | Literal["auto"] | None = None
    require_cuda: bool = False
    profile: bool = False
    compare: str | None = None
    compare_fail: tuple[Threshold, ...] = ()

    @classmethod
    def resolve(cls, sources: Sequence[tuple[str, Mapping[str, Any]]]) -> Settings:
        """Take each field from the first source that sets it; ``sources`` are (kind, values), best first.

        ``kind`` is ``cli``, ``env`` or ``ini``: it decides how the value is named in an error.
        """
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for option in OPTIONS:
            for kind, raw_values in sources:
                raw = raw_values.get(option.field)
                if raw is None or (isinstance(raw, (str, list, tuple)) and not raw):
                    continue
                where = {"cli": option.flag, "env": option.env, "ini": f"{option.ini} (ini)"}[kind]
                try:
                    values[option.field] = _PARSERS[option.field](raw)
                    origin[option.field] = kind
                except DualGpuUsageError as error:
                    raise DualGpuUsageError(f"{where}={_shown(raw)}: {error}") from None
                break
        reports = values.get("report", ())
        if "save" in values:
            reports = (*reports, ReportTarget("json", values["save"]))
        settings = cls(
            reports=reports,
            device=values.get("device", "auto"),
            mode=values.get("mode", "auto"),
            budget=values.get("budget", DEFAULT_BUDGET),
            max_budget=values.get("max_budget"),
            warmup=values.get("warmup"),
            min_rounds=values.get("min_rounds"),
            settle=values.get("settle"),
            inconclusive=values.get("inconclusive", "warn"),
            lock_timeout=values.get("lock_timeout"),
            devices=values.get("devices"),
            require_cuda=values.get("require_cuda", False),
            profile=values.get("profile", False),
            compare=values.get("compare"),
            compare_fail=values.get("compare_fail", ()),
        )
        # Thresholds kept in the ini file or the environment wait for a baseline (a first run has none);
        # on the command line without one they are a mistake.
        if settings.compare_fail and settings.compare is None and origin.get("compare_fail") == "cli":
            raise DualGpuUsageError(
                "compare_fail needs a baseline to compare with: add --dualgpu-compare=PATH "
                "(a JSON report saved earlier with --dualgpu-save=PATH)"
            )
        check_max_budget(settings.budget, settings.max_budget)
        if settings.require_cuda and settings.device == "cpu":
            raise DualGpuUsageError(
                "require_cuda is set but the device is cpu (from --dualgpu-*, DUALGPU_* or dualgpu_* in "
                "the ini file): drop one of them"
            )
        return settings


def parse_report_targets(raw: str | Sequence[str]) -> tuple[ReportTarget, ...]:
    words = shlex.split(raw) if isinstance(raw, str) else [str(word) for word in raw]
    return tuple(_report_target(word) for word in words)


def _report_target(word: str) -> ReportTarget:
    kind, _, path = word.partition(":")
    if kind not in REPORT_KINDS:
        if os.path.exists(word) or word.endswith(".py") or "::" in word:
            # `--dualgpu-report tests/` takes the next argument as its target
            raise DualGpuUsageError(
                f"report target {word!r} looks like a test path that --dualgpu-report took as its target: "
                f"write --dualgpu-report=term (or another target with '=') before {word}"
            )
        raise DualGpuUsageError(f"report target {word!r} is not one of {TARGET_FORMS}")
    if kind in TERMINAL_KINDS and path:
        raise DualGpuUsageError(f"report target {word!r}: {kind} takes no path; json:{path} writes a file")
    if kind == "json" and not path:
        raise DualGpuUsageError("report target 'json' needs a file: json:PATH, e.g. json:dualgpu.json")
    if kind in ("trace", "png") and not path:
        raise DualGpuUsageError(
            f"report target {kind!r} needs a directory: {kind}:DIR, e.g. {kind}:dualgpu-{kind}"
        )
    return ReportTarget(kind, path or None)


def parse_device(raw: object) -> str:
    text = str(raw).strip()
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise DualGpuUsageError("the device must be auto, cpu, cuda or cuda:N")


def parse_mode(raw: object) -> str:
    return checked_mode(str(raw).strip())


def parse_inconclusive(raw: object) -> str:
    text = str(raw).strip()
    if text in INCONCLUSIVE_CHOICES:
        return text
    raise DualGpuUsageError(
        f"inconclusive must be one of {', '.join(INCONCLUSIVE_CHOICES)} (what an undecided verdict does to "
        "its test)"
    )


def parse_devices(raw: object) -> tuple[int, ...] | Literal["auto"]:
    text = str(raw).replace(" ", "")
    if text == "auto":
        return "auto"
    indices = text.split(",")
    if not text or not all(index.isdigit() for index in indices):
        raise DualGpuUsageError(
            "devices must be auto or GPU indices separated by commas, e.g. 0,1 (indices into "
            "CUDA_VISIBLE_DEVICES when it is set)"
        )
    return tuple(int(index) for index in indices)


def parse_path(raw: object) -> str:
    text = str(raw).strip()
    if not text:
        raise DualGpuUsageError("expected a file path")
    return text


def parse_thresholds(raw: str | Sequence[str]) -> tuple[Threshold, ...]:
    words = shlex.split(raw) if isinstance(raw, str) else [str(word) for word in raw]
    thresholds = tuple(parse_threshold(word) for word in words)
    metrics = [threshold.metric for threshold in thresholds]
    repeated = sorted({metric for metric in metrics if metrics.count(metric) > 1})
    if repeated:
        raise DualGpuUsageError(f"{', '.join(repeated)} has more than one threshold; give each metric one")
    return thresholds


def parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise DualGpuUsageError("expected a yes/no value: 1, true, yes, on or 0, false, no, off")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "report": parse_report_targets,
    "device": parse_device,
    "mode": parse_mode,
    **{
        name: functools.partial(parse_setting, name)
        for name in ("budget", "max_budget", "warmup", "min_rounds", "settle", "lock_timeout")
    },
    "inconclusive": parse_inconclusive,
    "devices": parse_devices,
    "require_cuda": parse_bool,
    "profile": parse_bool,
    "compare": parse_path,
    "compare_fail": parse_thresholds,
    "save": parse_path,
}


def _shown(raw: object) -> str:
    if isinstance(raw, (list, tuple)):
        return repr(" ".join(str(item) for item in raw))
    return repr(raw)
