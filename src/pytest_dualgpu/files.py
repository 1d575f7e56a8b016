"""Writing files so that a failure never leaves a half-written one behind. Torch-free.

Every file the plugin or the command writes (reports, saved baselines, traces, plots) is written to a
temporary file beside its target and moved into place: a full disk or a crash mid-write leaves the old
file whole, so a saved baseline is never truncated into one that the next comparison cannot read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pytest_dualgpu.errors import DualGpuUsageError


def target_path(path: str | Path, option: str) -> Path:
    """The file ``path`` names, its folder made; a usage error naming ``option`` where it cannot be a file."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise DualGpuUsageError(
            f"{option}: {target} is a directory; give a file path, such as {target / 'name'}"
        )
    blocking = next((parent for parent in target.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise DualGpuUsageError(f"{option}: {blocking} is a file, so {target} cannot be created under it")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_bytes(path: str | Path, data: bytes, option: str) -> Path:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, synced, then moved into place."""
    target = target_path(path, option)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_text(path: str | Path, text: str, option: str, append: bool = False) -> Path:
    """Write (or, with ``append``, extend) a text file all at once."""
    if append:
        existing = Path(path).expanduser()
        if existing.is_file():
            text = existing.read_text(encoding="utf-8") + text
    return write_bytes(path, text.encode("utf-8"), option)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
