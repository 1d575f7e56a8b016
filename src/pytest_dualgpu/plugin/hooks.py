"""The hooks and fixtures of the pytest plugin, which ``pytest_dualgpu.plugin`` exposes to pytest.

Only glue between pytest and the engine lives here: options, markers, fixtures, and the hooks that carry
results from a test to the report. It must stay importable without torch: pytest loads it in every session
of a suite that has the package installed, and a suite that never asks for a dual_infer fixture should pay
nothing for it. Torch comes in with the first fixture, or when an option needs to know the device.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dualgpu import envsettings, gpus
from pytest_dualgpu.errors import DualGpuError, DualGpuUsageError
from pytest_dualgpu.plugin import hookspecs
from pytest_dualgpu.plugin.calls import FixtureDualInfer, GateLimits
from pytest_dualgpu.plugin.collector import ResultCollector
from pytest_dualgpu.plugin.options import OPTIONS, Settings
from pytest_dualgpu.plugin.verdicts import MARKERS, judge, parse_marker
from pytest_dualgpu.reports.gate import Baseline
from pytest_dualgpu.reports.rows import (
    ERROR_PROPERTY,
    PROPERTY,
    CallError,
    ReportRow,
    dumps,
)
from pytest_dualgpu.stats import FAIL, INCONCLUSIVE, NOTICES

if TYPE_CHECKING:
    import torch

    from pytest_dualgpu.results import DualResult

settings_key = pytest.StashKey[Settings]()
assigned_gpu_key = pytest.StashKey["str | None"]()
collector_key = pytest.StashKey[ResultCollector]()
calls_key = pytest.StashKey[list["Call"]]()
baseline_key = pytest.StashKey["Baseline | None"]()
marker_error_key = pytest.StashKey[str]()  # why a test's dualgpu markers cannot be used
specs_key = pytest.StashKey[dict[str, Any]]()  # a test's markers, parsed once at collection
device_key = pytest.StashKey["torch.device"]()  # the session's device, resolved once


@dataclasses.dataclass
class Call:
    """One recorded dual_infer call of a test, and where its entry sits in ``user_properties``."""

    entry: ReportRow | CallError
    property_index: int


class DualGpuWarning(pytest.PytestWarning):
    """A dualgpu check that was asked only to warn (``dualgpu_sync(implicit="warn")``), or a verdict that
    stayed inconclusive under ``--dualgpu-inconclusive=warn``."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dualgpu", "concurrent models on one GPU (pytest-dualgpu)")
    for option in OPTIONS:
        dest = f"dualgpu_{option.field}"
        if option.field == "report":
            group.addoption(
                option.flag, action="append", nargs="?", const="term", dest=dest, metavar=option.metavar,
                help=option.help,
            )  # fmt: skip
        elif option.ini_type == "args":
            group.addoption(option.flag, action="append", dest=dest, metavar=option.metavar, help=option.help)
        elif option.ini_type == "bool":
            group.addoption(
                option.flag, action=argparse.BooleanOptionalAction, default=None, dest=dest, help=option.help
            )
        else:
            group.addoption(option.flag, dest=dest, metavar=option.metavar, help=option.help)
        parser.addini(option.ini, f"{option.help} (or {option.env})", type=option.ini_type, default=None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Choose this process's GPU before any conftest can start CUDA (and so fix the visible GPUs)."""
    settings = _resolve_settings(early_config, vars(early_config.known_args_namespace))
    early_config.stash[settings_key] = settings
    early_config.stash[assigned_gpu_key] = _assign_gpu(settings, early_config.known_args_namespace)


def pytest_configure(config: pytest.Config) -> None:
    for _, description in MARKERS.values():
        config.addinivalue_line("markers", description)
    if settings_key not in config.stash:  # loaded too late for pytest_load_initial_conftests
        config.stash[settings_key] = _resolve_settings(config, vars(config.option))
        config.stash[assigned_gpu_key] = _assign_gpu(config.stash[settings_key], config.option)
    settings = config.stash[settings_key]
    if settings.require_cuda:
        _require_cuda()
    elif str(settings.device).startswith("cuda"):
        reason = _no_cuda_reason()
        if reason:
            raise pytest.UsageError(
                f"dualgpu: --dualgpu-device={settings.device} (or DUALGPU_DEVICE, or dualgpu_device in the "
                f"ini file), but there is no CUDA GPU: {reason}; use --dualgpu-device=cpu or auto"
            )
    collector = ResultCollector(config, settings)
    config.stash[collector_key] = collector
    config.pluginmanager.register(collector, "dualgpu-collector")
    html_path = getattr(config.option, "htmlpath", None)
    if config.pluginmanager.hasplugin("html") and html_path:
        from pytest_dualgpu.reports.html_extras import HtmlExtras

        traces = next((target.path for target in settings.reports if target.kind == "trace"), None)
        extras = HtmlExtras(_recorded_rows, collector.columns, traces, html_path)
        config.pluginmanager.register(extras, "dualgpu-html")


def _resolve_settings(config: pytest.Config, cli: dict[str, Any]) -> Settings:
    try:
        return Settings.resolve(
            [
                ("cli", {option.field: cli.get(f"dualgpu_{option.field}") for option in OPTIONS}),
                ("env", {option.field: os.environ.get(option.env) for option in OPTIONS}),
                ("ini", {option.field: _ini_value(config, option.ini) for option in OPTIONS}),
            ]
        )
    except DualGpuUsageError as error:
        raise pytest.UsageError(f"dualgpu: {error}") from None


def _ini_value(config: pytest.Config, name: str) -> object:
    try:
        return config.getini(name)
    except (ValueError, pytest.UsageError) as error:  # pytest's own conversion, e.g. of a float
        raise DualGpuUsageError(f"{name} (ini): {error}") from None


def _assign_gpu(settings: Settings, options: Any) -> str | None:
    try:
        return gpus.assign(settings.devices, distributing=_distributing(options), count_gpus=_count_gpus)
    except DualGpuUsageError as error:
        raise pytest.UsageError(f"dualgpu: {error}") from None


def _distributing(options: Any) -> bool:
    """Whether this process is an xdist controller (it hands tests to workers and runs none itself)."""
    return bool(getattr(options, "numprocesses", None)) or bool(getattr(options, "tx", None))


def _count_gpus() -> int:
    if gpus.no_gpu_here():
        return 0
    import torch

    return torch.cuda.device_count()  # NVML-based where it can be: does not start CUDA here


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.stash.get(collector_key, None)
    if collector is not None:
        config.pluginmanager.unregister(collector)
        del config.stash[collector_key]
    extras = config.pluginmanager.get_plugin("dualgpu-html")
    if extras is not None:
        config.pluginmanager.unregister(extras)


def _recorded_names(item: pytest.Item) -> list[str]:
    """The result names of the test's calls so far (a call that raised has none)."""
    return [
        call.entry.result.name for call in item.stash.get(calls_key, []) if isinstance(call.entry, ReportRow)
    ]


def _recorded_rows(item: pytest.Item) -> list[ReportRow]:
    return [call.entry for call in item.stash.get(calls_key, []) if isinstance(call.entry, ReportRow)]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The device line, and the settings that change concurrency when any is set."""
    lines = [_device_line(config)]
    settings_line = envsettings.header_line()
    if settings_line is not None:
        lines.append(settings_line)
    return lines


def _device_line(config: pytest.Config) -> str:
    """It starts CUDA only where tests will run, and only when torch is in use anyway."""
    settings = config.stash[settings_key]
    measuring = f"mode {settings.mode}, budget {settings.budget:g} s per call"
    if _distributing(config.option):
        handed_out = os.environ.get(gpus.WORKER_GPUS)
        workers = f"GPUs {handed_out} round robin" if handed_out else f"device {settings.device}"
        inventory = gpus.gpu_inventory()
        machine = f" ({inventory})" if inventory else ""
        if "torch" in sys.modules or settings.reports or settings.require_cuda:
            import torch

            machine += f", torch {torch.__version__}" + (
                f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
            )
        return f"dualgpu: xdist workers measure on {workers}{machine}; {measuring}"
    if "torch" not in sys.modules and not (settings.reports or settings.require_cuda):
        return f"dualgpu: device {settings.device} (resolved when dual_infer is first used), {measuring}"
    from pytest_dualgpu.engine.devices import describe_device

    try:
        device = describe_device(_session_device(config))
    except (DualGpuUsageError, RuntimeError) as error:
        device = f"{settings.device} (unusable: {error})"
    return f"dualgpu: device {device}; {measuring}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Check the dualgpu markers of every collected test once: a test with bad arguments errors at its
    setup, before anything is measured, and the other tests of its file still run."""
    report = yield
    if report.passed:
        for node in report.result:
            if isinstance(node, pytest.Item):
                try:
                    marker_specs(node)
                except DualGpuUsageError as error:
                    node.stash[marker_error_key] = f"{node.nodeid}: {error}"
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``dualgpu_cuda`` tests without a GPU (as a skip marker, so the report names the test)."""
    needs_cuda = [item for item in items if item.get_closest_marker("dualgpu_cuda") is not None]
    if not needs_cuda:
        return
    if config.stash[settings_key].device == "cpu":
        reason = "dualgpu_cuda: this session measures on the CPU (--dualgpu-device=cpu)"
    else:
        missing = _no_cuda_reason()
        if missing is None:
            return
        reason = f"dualgpu_cuda: needs a CUDA GPU; {missing}"
    for item in needs_cuda:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """The regression gate: after the last test, a result that regressed against the baseline fails the
    session (exit code 1) the way a failed test does, with the rows listed in the summary."""
    outcome = yield
    collector = session.config.stash.get(collector_key, None)
    if collector is not None and not collector.is_worker:
        comparison = collector.compare_with_baseline()
        undecided_fails = (
            comparison is not None
            and bool(comparison.inconclusive)
            and (collector.settings.inconclusive == "fail")
        )
        if comparison is not None and (comparison.regressions or undecided_fails):
            session.testsfailed += 1
    return outcome


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test whose markers are wrong; forget what an earlier attempt of this test recorded
    (pytest-rerunfailures runs it again)."""
    marker_error = item.stash.get(marker_error_key, None)
    if marker_error is not None:
        pytest.fail(marker_error, pytrace=False)
    earlier: list[Call] = item.stash.get(calls_key, [])
    for call in reversed(earlier):
        del item.user_properties[call.property_index]
    item.stash[calls_key] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Judge the markers after the test body, over every dual_infer call of the test."""
    try:
        outcome = yield
    except BaseException:
        with contextlib.suppress(Exception):  # the body's own failure is the one to report
            _judge(item, body_passed=False)
        raise
    _judge(item, body_passed=True)
    return outcome


@pytest.fixture(scope="session")
def dualgpu_device(pytestconfig: pytest.Config) -> torch.device:
    """The device the session measures on (``--dualgpu-device``; auto: cuda if available, else cpu)."""
    return _session_device(pytestconfig)


@pytest.fixture
def place_model(dualgpu_device: torch.device) -> Callable[..., torch.nn.Module]:
    """``place_model(model, dtype=None, channels_last=False)``: the module on the device, in eval mode."""
    from pytest_dualgpu.engine.devices import place_model as place

    def place_on_device(
        model: torch.nn.Module, dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.nn.Module:
        return place(model, dualgpu_device, dtype=dtype, channels_last=channels_last)

    return place_on_device


@pytest.fixture
def dual_infer(request: pytest.FixtureRequest) -> FixtureDualInfer:
    """``dual_infer`` bound to the session's settings; every result is recorded for markers and report.

    The test's ``dualgpu_correct`` tolerance and ``dualgpu_sync`` checks are the defaults of each call;
    a call's own settings win.
    """
    from pytest_dualgpu.engine.api import dual_infer as unbound

    item = request.node
    settings = request.config.stash[settings_key]
    specs = marker_specs(item)
    defaults: dict[str, Any] = {}
    correct = specs.get("dualgpu_correct")
    if correct is not None:
        defaults.update(rtol=correct.rtol, atol=correct.atol, equal_nan=correct.equal_nan)
    sync = specs.get("dualgpu_sync")
    if sync is not None:
        checks = sync.checks
        defaults.update(
            race_trials=checks.trials,
            race_seed=checks.seed,
            detect_syncs=checks.detect_syncs,
            sanitizer=checks.sanitizer,
        )

    def next_call() -> int:
        return len(item.stash.get(calls_key, [])) + 1  # calls count from 1, the failed ones too

    def record_result(result: DualResult) -> None:
        stripped = result.for_report()
        _record(item, ReportRow(item.nodeid, stripped, call=next_call()))
        item.ihook.pytest_dualgpu_result(result=result, item=item)

    def record_error(error: BaseException, label: str) -> None:
        # Ours name their lanes; anything else (a bad argument, Ctrl-C, a test timeout) gets the call's.
        text = f"{type(error).__name__}: {error}"
        if not isinstance(error, DualGpuError):
            text = f"{type(error).__name__} while measuring {label}" + (f": {error}" if str(error) else "")
        _record(item, CallError(item.nodeid, next_call(), text))

    device = _session_device(request.config)
    speedup = specs.get("dualgpu_speedup")
    marker_bounds = tuple(
        bound
        for spec in (speedup, specs.get("dualgpu_interference"))
        if spec is not None and device.type in spec.device_types
        for bound in spec.bounds
    )
    for name in ("max_budget", "warmup", "min_rounds", "settle", "lock_timeout"):
        if getattr(settings, name) is not None:
            defaults[name] = getattr(settings, name)
    bound = unbound.bind(
        on_result=record_result,
        on_error=record_error,
        on_notice=functools.partial(_notice, request.config),
        mode=settings.mode,
        device=device,
        budget=settings.budget,
        profile=settings.profile,
        **defaults,
    )
    gate = GateLimits(_baseline(request.config), settings.compare_fail, item.nodeid)
    return FixtureDualInfer(bound, marker_bounds, gate, lambda: _recorded_names(item))


def _baseline(config: pytest.Config) -> Baseline | None:
    """The saved report the gate compares with, loaded once per process (xdist workers too): the
    controller's collector has it already."""
    if baseline_key not in config.stash:
        settings = config.stash[settings_key]
        collector = config.stash.get(collector_key, None)
        baseline = collector.baseline if collector is not None and settings.compare_fail else None
        if baseline is None and settings.compare is not None and settings.compare_fail:
            try:
                baseline = Baseline.load(settings.compare)
            except DualGpuUsageError:
                baseline = None  # the controller reports a broken baseline; here it only bounds no call
        config.stash[baseline_key] = baseline
    return config.stash[baseline_key]


def _notice(config: pytest.Config, message: str) -> None:
    """Say something now, while a test runs (a wait for the measuring lock): past output capturing."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    context = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with context:
        if reporter is not None and not hasattr(config, "workerinput"):
            reporter.ensure_newline()
            reporter.write_line(f"dualgpu: {message}", yellow=True)
        else:  # an xdist worker's terminal goes nowhere; its standard error reaches the controller's
            print(f"dualgpu: {message}", file=sys.__stderr__, flush=True)


def marker_specs(item: pytest.Item) -> dict[str, Any]:
    """The parsed arguments of the item's dualgpu markers, keyed by marker name; parsed on first use (at
    collection) and kept in the item's stash.

    As with pytest's own markers, the closest one wins: a function's marker replaces its class's.
    """
    if specs_key not in item.stash:
        specs = {}
        for name in MARKERS:
            marker = item.get_closest_marker(name)
            if marker is not None:
                specs[name] = parse_marker(name, marker.args, marker.kwargs)
        item.stash[specs_key] = specs
    return item.stash[specs_key]


def _record(item: pytest.Item, entry: ReportRow | CallError) -> None:
    """Keep a call on the item and in ``user_properties`` (JUnit XML, and the way home from xdist)."""
    name = PROPERTY if isinstance(entry, ReportRow) else ERROR_PROPERTY
    calls = item.stash.setdefault(calls_key, [])
    calls.append(Call(entry, len(item.user_properties)))
    value = dumps(entry.to_dict(), indent=None)
    item.user_properties.append((name, value))
    item.config.stash[collector_key].keep(item.nodeid, name, value, first=len(calls) == 1)


def _judge(item: pytest.Item, body_passed: bool) -> None:
    """Give every result of the test its verdicts; fail the test (if its body passed) on any failed one."""
    specs = {name: spec for name, spec in marker_specs(item).items() if name != "dualgpu_cuda"}
    if not specs:
        return
    calls = item.stash.get(calls_key, [])
    results = [call for call in calls if isinstance(call.entry, ReportRow)]
    if not results and body_passed:
        pytest.fail(
            f"{item.name} is marked {', '.join(specs)} but no call of the dual_infer fixture produced a "
            "result: request the dual_infer fixture and call it (pytest_dualgpu.dual_infer imported "
            "directly is not recorded)",
            pytrace=False,
        )
    policy = item.config.stash[settings_key].inconclusive
    failures, undecided = [], []
    for call in results:
        row = call.entry
        assert isinstance(row, ReportRow)
        verdicts = judge(row.result, specs)
        row.verdicts = {kind: verdict.status for kind, verdict in verdicts.items()}
        item.user_properties[call.property_index] = (PROPERTY, dumps(row.to_dict(), indent=None))
        where = f"{row.result.name!r} (call {row.call} of {len(calls)})"
        for verdict in verdicts.values():
            if verdict.status == FAIL:
                failures.append(f"dualgpu_{verdict.kind} failed for {where}: {verdict.message}")
            elif verdict.status == INCONCLUSIVE:
                undecided.append(f"dualgpu_{verdict.kind} inconclusive for {where}: {verdict.message}")
            elif verdict.status in NOTICES and body_passed:
                message = f"dualgpu_{verdict.kind} for {where}: {verdict.message}"
                _warn(item, message)
    if not body_passed:
        return
    if policy == "fail":
        failures += [f"{line} (--dualgpu-inconclusive=fail)" for line in undecided]
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    if undecided and policy == "skip":
        pytest.skip("\n".join(undecided))
    for line in undecided:
        _warn(item, line)


def _warn(item: pytest.Item, message: str) -> None:
    """A ``DualGpuWarning`` that points at the test, not at this plugin."""
    _, line, _ = item.location
    warnings.warn_explicit(DualGpuWarning(message), DualGpuWarning, str(item.path), (line or 0) + 1)


def _session_device(config: pytest.Config) -> torch.device:
    """The session's device, resolved once; a GPU chosen by ``--dualgpu-devices`` that CUDA cannot see is an
    error."""
    if device_key in config.stash:
        return config.stash[device_key]
    from pytest_dualgpu.engine.devices import resolve_device

    device = resolve_device(config.stash[settings_key].device)
    assigned = config.stash.get(assigned_gpu_key, None)
    if assigned is not None and device.type != "cuda":
        raise DualGpuUsageError(
            f"--dualgpu-devices set CUDA_VISIBLE_DEVICES={assigned} for this process, but CUDA sees no GPU "
            "there; compare the indices with nvidia-smi (and any CUDA_VISIBLE_DEVICES set before)"
        )
    config.stash[device_key] = device
    return device


def _no_cuda_reason() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    shown = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (CUDA_VISIBLE_DEVICES={shown})"


def _require_cuda() -> None:
    reason = _no_cuda_reason()
    if reason:
        raise pytest.UsageError(
            f"dualgpu: --dualgpu-require-cuda, but there is no CUDA GPU: {reason}. Check the driver "
            "(nvidia-smi) and that torch is a CUDA build, or drop the option to allow a CPU run"
        )
