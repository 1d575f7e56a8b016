"""The measuring lock: one process at a time measures on a device, and everyone can see who.

A file lock (filelock), because the processes that must not time each other's work are pytest-xdist
workers or separate sessions sharing one runner. Beside the lock file a small JSON note says who holds it
(process, test or command, since when), so a process that waits can say what it waits for; it says so
while it waits, and gives up after ``timeout`` seconds with an error naming the holder.

A lane thread abandoned after a timeout may still be running user code: the lock is then not handed on
at once, but kept by a keeper thread until those threads end or ``linger`` seconds pass, so the next
measurement does not time its work against theirs. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from pytest_dualgpu.errors import MeasuringLockTimeout

#: First notice after this long waiting, then one every ``NOTICE_EVERY`` seconds.
NOTICE_AFTER = 2.0
NOTICE_EVERY = 30.0
POLL_SECONDS = 0.5

Notify = Callable[[str], None]


class MeasuringLock:
    def __init__(self, path: str, *, timeout: float, notify: Notify | None = None) -> None:
        self.path = path
        self.note_path = Path(path + ".holder.json")
        self.timeout = timeout
        self.notify = notify
        self._lock = FileLock(path, thread_local=False, mode=0o666)  # other users' sessions lock it too

    def acquire(self) -> float:
        """Take the lock; the seconds spent waiting for it. ``MeasuringLockTimeout`` after ``timeout``."""
        started = time.monotonic()
        next_notice = NOTICE_AFTER
        while True:
            waited = time.monotonic() - started
            try:
                self._lock.acquire(timeout=min(POLL_SECONDS, max(0.0, self.timeout - waited)))
                break
            except Timeout:
                waited = time.monotonic() - started
                if waited >= self.timeout:
                    raise MeasuringLockTimeout(self.path, self.holder(), self.timeout) from None
                if waited >= next_notice and self.notify is not None:
                    self.notify(
                        f"waiting {waited:.0f} s for the measuring lock {self.path}, held by "
                        f"{self.holder()}; giving up after {self.timeout:g} s (lock_timeout)"
                    )
                    next_notice = waited + NOTICE_EVERY
        self._write_note("measuring")
        return time.monotonic() - started

    def release(self, *, running: Sequence[threading.Thread] = (), linger: float = 0.0) -> None:
        """Hand the lock on; while any of ``running`` is alive, up to ``linger`` seconds later."""
        alive = [thread for thread in running if thread.is_alive()]
        if not alive or linger <= 0:
            self._release_now()
            return
        names = ", ".join(thread.name for thread in alive)
        self._write_note(f"waiting for abandoned lane thread(s) {names} to finish (at most {linger:g} s)")

        def keep() -> None:
            deadline = time.monotonic() + linger
            for thread in alive:
                thread.join(max(0.0, deadline - time.monotonic()))
            self._release_now()

        threading.Thread(target=keep, name="dualgpu-lock-keeper", daemon=True).start()

    def holder(self) -> str:
        """Who holds the lock, as its note says."""
        try:
            note = json.loads(self.note_path.read_text(encoding="utf-8"))
            since = time.strftime("%H:%M:%S", time.localtime(float(note["since"])))
            ago = time.time() - float(note["since"])
            pid = "this process" if note.get("pid") == os.getpid() else f"pid {note.get('pid')}"
            where = f" on {note['host']}" if note.get("host") != socket.gethostname() else ""
            return f"{pid}{where} ({note.get('what')}; {note.get('doing')}) since {since}, {ago:.0f} s ago"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it left no note)"

    def _write_note(self, doing: str) -> None:
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": os.environ.get("PYTEST_CURRENT_TEST") or _command_line(),
            "doing": doing,
            "since": time.time(),
        }
        with contextlib.suppress(OSError):  # the note only explains waits to others; measuring needs none
            self.note_path.write_text(json.dumps(note), encoding="utf-8")

    def _release_now(self) -> None:
        with contextlib.suppress(OSError):
            self.note_path.unlink(missing_ok=True)
        self._lock.release()


def _command_line() -> str:
    shown = " ".join(" ".join(getattr(sys, "orig_argv", sys.argv)).split()) or "python"
    return shown if len(shown) <= 100 else shown[:97] + "..."
