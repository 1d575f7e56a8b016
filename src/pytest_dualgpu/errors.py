"""Exceptions raised by the engine, each naming what went wrong and how to fix it."""

from __future__ import annotations

from pytest_dualgpu.units import size_text


class DualGpuError(Exception):
    """Base class of everything pytest-dualgpu raises on purpose."""


class DualGpuUsageError(DualGpuError, ValueError):
    """The call itself is wrong (bad models, inputs or settings); raised before anything runs."""


class LaneExit(Exception):
    """A ``SystemExit`` or ``KeyboardInterrupt`` that a model's own code raised on a lane thread, carried as
    an ordinary exception: it fails that lane, never the session (no Ctrl-C reaches a lane thread)."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


class LaneError(DualGpuError):
    """A lane raised; the other lanes were allowed to finish first. The original is ``__cause__``."""

    def __init__(self, lane: str, run: str, original: BaseException) -> None:
        self.lane = lane
        self.run = run
        shown = original.original if isinstance(original, LaneExit) else original
        super().__init__(f"lane {lane!r} raised {type(shown).__name__} in the {run}: {shown}".rstrip(": "))


class HandOffStopped(RuntimeError):
    """A pipeline stage stopped because the other stage failed; that other failure is the one reported."""


class LaneTimeoutError(DualGpuError, TimeoutError):
    """A lane did not return in time; its thread is abandoned (it is a daemon thread)."""

    def __init__(self, lanes: list[str], run: str, timeout: float) -> None:
        self.lanes = lanes
        names = ", ".join(repr(name) for name in lanes)
        super().__init__(
            f"lane {names} did not return within {timeout:g} s in the {run}; "
            "it may be deadlocked or waiting on the other lane (raise timeout= if it is just slow)"
        )


class ConcurrentOutOfMemoryError(DualGpuError, MemoryError):
    """The device ran out of memory; says which run and what each lane needed alone."""

    def __init__(self, run: str, lane: str, alone_peaks: dict[str, int] | None, original: BaseException):
        self.run = run
        self.lane = lane
        self.alone_peaks = alone_peaks
        if alone_peaks:
            peaks = ", ".join(f"{name} {size_text(peak)}" for name, peak in alone_peaks.items())
            measured = f"peak memory measured alone: {peaks} (sum {size_text(sum(alone_peaks.values()))})"
        else:
            measured = "no peak was measured alone yet"
        super().__init__(
            f"out of device memory in the {run} (lane {lane!r}); {measured}. "
            "Reduce the batch size, co-locate smaller models, or use mode='sequential'. "
            f"Original error: {first_line(original)}"
        )


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a CUDA or compiler error can run to pages), or its type's
    name when the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def described(error: BaseException) -> str:
    """``"RuntimeError: <its first line>"``, or only the type's name when the message is empty."""
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


class MeasuringLockTimeout(DualGpuError, TimeoutError):
    """Another process held the device's measuring lock for longer than ``lock_timeout``."""

    def __init__(self, path: str, holder: str, timeout: float) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"gave up after waiting {timeout:g} s for the measuring lock {path}, held by {holder}; "
            "let that run finish, give each process its own GPU (--dualgpu-devices), or raise "
            "lock_timeout (--dualgpu-lock-timeout)"
        )
