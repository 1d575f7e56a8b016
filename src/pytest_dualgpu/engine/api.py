"""``dual_infer``, the public callable: two models with ``()``, N with ``.many``, a producer feeding a
consumer with ``.pipeline``; ``.bind`` gives a copy with other defaults and hooks (the pytest plugin binds
the session's settings and records every result through them).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pytest_dualgpu.engine.call import run_call, run_pipeline
from pytest_dualgpu.engine.callsettings import CallSettings
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.results import DualResult

ResultHook = Callable[[DualResult], None]
ErrorHook = Callable[[BaseException, str], None]  # the error, and what the call measured
NoticeHook = Callable[[str], None]


def print_notice(message: str) -> None:
    """What a call says while it waits (for the measuring lock), without pytest: a line on stderr."""
    print(f"dualgpu: {message}", file=sys.stderr, flush=True)


class DualInfer:
    """The ``dual_infer`` callable: two models with ``()``, N with ``.many``; ``.bind`` sets defaults."""

    def __init__(
        self,
        settings: CallSettings | None = None,
        on_result: ResultHook | None = None,
        on_error: ErrorHook | None = None,
        on_notice: NoticeHook = print_notice,
    ) -> None:
        self.settings = settings or CallSettings()
        self.on_result = on_result
        self.on_error = on_error
        self.on_notice = on_notice

    def bind(
        self,
        *,
        on_result: ResultHook | None = None,
        on_error: ErrorHook | None = None,
        on_notice: NoticeHook | None = None,
        **settings: Any,
    ) -> DualInfer:
        """A copy with other default settings, and hooks that see every result, every failed call and
        every notice (such as a wait for the measuring lock)."""
        return DualInfer(
            self._settings(settings),
            on_result or self.on_result,
            on_error or self.on_error,
            on_notice or self.on_notice,
        )

    def __call__(
        self,
        model_a: Callable[..., Any],
        model_b: Callable[..., Any],
        inputs: Any,
        inputs_b: Any = None,
        *,
        names: Sequence[str] | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> DualResult:
        """Run two models concurrently; ``inputs_b`` defaults to the same ``inputs``."""
        both = [inputs, inputs if inputs_b is None else inputs_b]
        return self.many([model_a, model_b], both, names=names, name=name, **settings)

    def many(
        self,
        models: Sequence[Callable[..., Any]],
        inputs: Sequence[Any],
        *,
        names: Sequence[str] | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> DualResult:
        """Run N models concurrently, ``inputs[i]`` going to ``models[i]``."""
        return self._observed(
            lambda call_settings: run_call(
                models, inputs, names=names, name=name, settings=call_settings, notify=self.on_notice
            ),
            settings,
            _label(models, names, name, " + "),
        )

    def pipeline(
        self,
        producer: Callable[..., Any],
        consumer: Callable[..., Any],
        inputs: Any,
        micro_batches: int = 4,
        *,
        names: Sequence[str] | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> DualResult:
        """The consumer runs on the producer's output, micro-batch by micro-batch, overlapping the two."""
        return self._observed(
            lambda call_settings: run_pipeline(
                producer,
                consumer,
                inputs,
                micro_batches,
                names=names,
                name=name,
                settings=call_settings,
                notify=self.on_notice,
            ),
            settings,
            _label([producer, consumer], names, name, " -> "),
        )

    def _observed(
        self, run: Callable[[CallSettings], DualResult], settings: dict[str, Any], label: str
    ) -> DualResult:
        try:
            result = run(self._settings(settings))
        except BaseException as error:
            # Also what interrupts a call from outside (Ctrl-C, a test timeout): the call is on record.
            if self.on_error is not None:
                self.on_error(error, label)
            raise
        if self.on_result is not None:
            self.on_result(result)
        return result

    def _settings(self, overrides: dict[str, Any]) -> CallSettings:
        known = {item.name for item in dataclasses.fields(CallSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DualGpuUsageError(
                f"unknown setting(s) {', '.join(unknown)}; dual_infer accepts {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self.settings, **overrides)

    def __repr__(self) -> str:
        return f"<dual_infer {self.settings}>"


dual_infer = DualInfer()


def _label(models: Sequence[Any], names: Sequence[str] | None, name: str | None, joint: str) -> str:
    """What a call measures, for a record of one that never finished."""
    if name:
        return name
    return joint.join(names or [type(model).__name__ for model in models])
