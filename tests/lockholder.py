"""Another process holding the CPU measuring lock, as a measuring session would, for the lock's tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import torch

from pytest_dualgpu.engine.devices import lock_path
from pytest_dualgpu.engine.lock import MeasuringLock


@contextlib.contextmanager
def lock_held_elsewhere(seconds: float) -> Iterator[int]:
    """Hold the lock in a child process for ``seconds`` (its note names ``python -c ...``); yields its pid."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pytest_dualgpu.engine.lock import MeasuringLock; "
            f"lock = MeasuringLock({lock_path(torch.device('cpu'))!r}, timeout=10); lock.acquire(); "
            f"print('held', flush=True); time.sleep({seconds}); lock.release()",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    try:
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def lock_held_here() -> Iterator[None]:
    """Hold the lock in this process (other processes may hold it first: wait our turn)."""
    lock = MeasuringLock(lock_path(torch.device("cpu")), timeout=120)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
