"""The pytest plugin (entry point ``dualgpu``; disable with ``-p no:dualgpu``).

Only glue between pytest and the engine lives here: options, markers, fixtures, and the hooks that carry
results from a test to the report. It must stay importable without torch: pytest loads it in every session
of a suite that has the package installed, and a suite that never asks for a dual_infer fixture should pay
nothing for it. Torch comes in with the first fixture, or when an option needs to know the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from . import hookspecs
from .collector import GPU_KEY, ResultCollector
from .errors import DualGpuError, DualGpuUsageError
from .report import (
    ERROR_PROPERTY,
    PROPERTY,
    CallError,
    ReportRow,
    dumps,
)
from .settings import OPTIONS, Settings
from .verdicts import FAIL, MARKERS, WARN, judge, parse_marker

if TYPE_CHECKING:
    import torch

    from .engine import DualInfer
    from .results import DualResult

settings_key = pytest.StashKey[Settings]()
collector_key = pytest.StashKey["ResultCollector"]()
calls_key = pytest.StashKey[list["ReportRow | CallError"]]()


class DualGpuWarning(pytest.PytestWarning):
    """A dualgpu check that was asked only to warn (``dualgpu_sync(implicit="warn")``)."""


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
        elif option.ini_type == "bool":
            group.addoption(
                option.flag, action=argparse.BooleanOptionalAction, default=None, dest=dest, help=option.help
            )
        else:
            group.addoption(option.flag, dest=dest, metavar=option.metavar, help=option.help)
        parser.addini(option.ini, f"{option.help} (or {option.env})", type=option.ini_type, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for description in MARKERS.values():
        config.addinivalue_line("markers", description[1])
    try:
        settings = Settings.resolve(
            [
                ("cli", {option.field: config.getoption(f"dualgpu_{option.field}") for option in OPTIONS}),
                ("env", {option.field: os.environ.get(option.env) for option in OPTIONS}),
                ("ini", {option.field: _ini_value(config, option.ini) for option in OPTIONS}),
            ]
        )
        _assign_gpu(config, settings)
    except DualGpuUsageError as error:
        raise pytest.UsageError(f"dualgpu: {error}") from None
    if settings.require_cuda:
        _require_cuda()
    config.stash[settings_key] = settings
    collector = ResultCollector(config, settings)
    config.stash[collector_key] = collector
    config.pluginmanager.register(collector, "dualgpu-collector")


def _ini_value(config: pytest.Config, name: str) -> object:
    try:
        return config.getini(name)
    except (ValueError, pytest.UsageError) as error:  # pytest's own conversion, e.g. of a float
        raise DualGpuUsageError(f"{name} (ini): {error}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.stash.get(collector_key, None)
    if collector is not None:
        config.pluginmanager.unregister(collector)
        del config.stash[collector_key]


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[settings_key]
    measuring = f"mode {settings.mode}, budget {settings.budget:g} s per call"
    if "torch" not in sys.modules and not (settings.reports or settings.require_cuda):
        return f"dualgpu: device {settings.device} (resolved when dual_infer is first used), {measuring}"
    from .devices import describe_device, resolve_device

    try:
        device = describe_device(resolve_device(settings.device))
    except DualGpuUsageError as error:
        device = f"{settings.device} (unusable: {error})"
    return f"dualgpu: device {device}; {measuring}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Check the dualgpu markers of every collected test: bad arguments fail collection, not a GPU run."""
    report = yield
    if report.passed:
        problems = []
        for node in report.result:
            if isinstance(node, pytest.Item):
                try:
                    marker_specs(node)
                except DualGpuUsageError as error:
                    problems.append(f"{node.nodeid}: {error}")
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
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
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Judge the markers after the test body, over every dual_infer call of the test."""
    try:
        outcome = yield
    except BaseException:
        _judge(item, body_passed=False)
        raise
    _judge(item, body_passed=True)
    return outcome


@pytest.fixture(scope="session")
def dualgpu_device(pytestconfig: pytest.Config) -> torch.device:
    """The device the session measures on (``--dualgpu-device``; auto: cuda if available, else cpu)."""
    from .devices import resolve_device

    return resolve_device(pytestconfig.stash[settings_key].device)


@pytest.fixture
def place_model(dualgpu_device: torch.device) -> Callable[..., torch.nn.Module]:
    """``place_model(model, dtype=None, channels_last=False)``: the module on the device, in eval mode."""
    from .devices import place_model as place

    def place_on_device(
        model: torch.nn.Module, dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.nn.Module:
        return place(model, dualgpu_device, dtype=dtype, channels_last=channels_last)

    return place_on_device


@pytest.fixture
def dual_infer(request: pytest.FixtureRequest) -> DualInfer:
    """``dual_infer`` bound to the session's settings; every result is recorded for markers and report.

    The test's ``dualgpu_correct`` tolerance is the default of each call; a call's own rtol/atol win.
    """
    from .engine import dual_infer as engine

    item = request.node
    settings = request.config.stash[settings_key]
    tolerance: dict[str, Any] = {}
    correct = marker_specs(item).get("dualgpu_correct")
    if correct is not None:
        tolerance = {"rtol": correct.rtol, "atol": correct.atol, "equal_nan": correct.equal_nan}

    def record_result(result: DualResult) -> None:
        stripped = dataclasses.replace(result, outputs=None, reference=None)
        _record(item, ReportRow(item.nodeid, stripped, call=len(item.stash.setdefault(calls_key, []))))
        item.ihook.pytest_dualgpu_result(result=result, item=item)

    def record_error(error: DualGpuError) -> None:
        calls = item.stash.setdefault(calls_key, [])
        _record(item, CallError(item.nodeid, len(calls), f"{type(error).__name__}: {error}"))

    return engine.bind(
        on_result=record_result,
        on_error=record_error,
        mode=settings.mode,
        device=settings.device,
        budget=settings.budget,
        **tolerance,
    )


def marker_specs(item: pytest.Item) -> dict[str, Any]:
    """The parsed arguments of the item's dualgpu markers (the closest of each), keyed by marker name."""
    specs = {}
    for name in MARKERS:
        marker = item.get_closest_marker(name)
        if marker is not None:
            specs[name] = parse_marker(name, marker.args, marker.kwargs)
    return specs


def _record(item: pytest.Item, entry: ReportRow | CallError) -> None:
    """Keep a call on the item and in ``user_properties`` (JUnit XML, and the way home from xdist)."""
    item.stash.setdefault(calls_key, []).append(entry)
    name = PROPERTY if isinstance(entry, ReportRow) else ERROR_PROPERTY
    item.user_properties.append((name, dumps(entry.to_dict(), indent=None)))


def _judge(item: pytest.Item, body_passed: bool) -> None:
    specs = {name: spec for name, spec in marker_specs(item).items() if name != "dualgpu_cuda"}
    if not specs:
        return
    calls = item.stash.get(calls_key, [])
    rows = [call for call in calls if isinstance(call, ReportRow)]
    if not rows:
        if body_passed:
            pytest.fail(
                f"{item.name} is marked {', '.join(specs)} but no call of the dual_infer fixture produced a "
                "result: request the dual_infer fixture and call it (pytest_dualgpu.dual_infer imported "
                "directly is not recorded)",
                pytrace=False,
            )
        return
    failures = []
    for row in rows:
        verdicts = judge(row.result, specs)
        row.verdicts = {kind: verdict.status for kind, verdict in verdicts.items()}
        _update_property(item, row)
        where = f"{row.result.name!r} (call {row.call + 1} of {len(calls)})"
        for verdict in verdicts.values():
            if verdict.status == FAIL:
                failures.append(f"dualgpu_{verdict.kind} failed for {where}: {verdict.message}")
            elif verdict.status == WARN:
                warnings.warn(
                    DualGpuWarning(f"dualgpu_{verdict.kind} for {where}: {verdict.message}"), stacklevel=1
                )
    if failures and body_passed:
        pytest.fail("\n".join(failures), pytrace=False)


def _update_property(item: pytest.Item, row: ReportRow) -> None:
    for index, (name, value) in enumerate(item.user_properties):
        if name == PROPERTY and json.loads(str(value))["call"] == row.call:
            item.user_properties[index] = (PROPERTY, dumps(row.to_dict(), indent=None))
            return


def _assign_gpu(config: pytest.Config, settings: Settings) -> None:
    """Give this process its GPU under ``--dualgpu-devices``, before anything initializes CUDA."""
    if settings.devices is None:
        return
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        visible = workerinput.get(GPU_KEY)
    elif config.getoption("dist", "no") != "no":
        from .devices import gpu_for_worker, visible_gpus

        gpu_for_worker(visible_gpus(), settings.devices, 0)  # checks the indices before workers start
        return
    else:
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        if listed is None:
            # Counting GPUs here would initialize CUDA before the choice could take effect.
            visible = "0" if settings.devices == "auto" else str(settings.devices[0])
        else:
            from .devices import gpu_for_worker

            visible = gpu_for_worker(listed.split(","), settings.devices, 0)
    if visible is None:
        return
    torch_module = sys.modules.get("torch")
    if torch_module is not None and torch_module.cuda.is_initialized():
        raise DualGpuUsageError(
            "--dualgpu-devices came too late: CUDA was already initialized (by a conftest.py?), so "
            "CUDA_VISIBLE_DEVICES can no longer choose the GPU"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = visible


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
