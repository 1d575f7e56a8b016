"""Persistent worker threads that run one closure at a time and hand back a Future.

``concurrent.futures.ThreadPoolExecutor`` would do, except that its threads are joined at interpreter
exit: a lane that never returns would then hang the whole session. Ours are daemon threads that can be
abandoned after a timeout.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

_Task = tuple["Future[Any]", Callable[[], Any]]


class Worker:
    """One thread, set up once (intra-op threads, CUDA device), then fed closures in order."""

    def __init__(self, name: str, setup: Callable[[], None] | None = None) -> None:
        self.name = name
        self._setup = setup
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self.busy_since: float | None = None  # time.monotonic() when the running task began
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def native_id(self) -> int | None:
        """The thread's id as the OS (and so torch.profiler) knows it."""
        return self._thread.native_id

    def submit(self, task: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, task))
        return future

    def stop(self, timeout: float) -> bool:
        """Ask the thread to finish; True when it did within ``timeout`` seconds."""
        self._tasks.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        setup_error: BaseException | None = None
        if self._setup is not None:
            try:
                self._setup()
            except BaseException as error:
                setup_error = error
        while (item := self._tasks.get()) is not None:
            future, task = item
            if not future.set_running_or_notify_cancel():
                continue
            if setup_error is not None:
                future.set_exception(setup_error)
                continue
            self.busy_since = time.monotonic()
            try:
                future.set_result(task())
            except BaseException as error:
                future.set_exception(error)
            finally:
                self.busy_since = None
            del future, task, item


@dataclass(frozen=True)
class Abandoned:
    """A worker left behind while it ran a lane's user code past its timeout."""

    lane: str
    thread: threading.Thread
    since: float  # time.monotonic() when its task began


_abandoned: list[Abandoned] = []
_abandoned_lock = threading.Lock()


def abandon(lane: str, worker: Worker) -> None:
    """Remember a busy worker that is being given up on; later measurements say it still runs."""
    since = worker.busy_since
    if since is None or not worker.thread.is_alive():
        return
    with _abandoned_lock:
        _abandoned.append(Abandoned(lane, worker.thread, since))


def still_running() -> list[Abandoned]:
    """Abandoned workers whose user code has not returned yet (the ones that have are forgotten)."""
    with _abandoned_lock:
        _abandoned[:] = [entry for entry in _abandoned if entry.thread.is_alive()]
        return list(_abandoned)
