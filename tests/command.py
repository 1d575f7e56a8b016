"""The `dualgpu` command for the tests: run by ``main`` in this process, or once as the console script.

The console script adds only ``sys.exit(main())`` (test_cli's test_the_console_script_exits_with_main_s_code
runs it as a process); a process per command would cost a torch import each.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_dualgpu.cli.main import main

DUALGPU = str(Path(sys.executable).with_name("dualgpu"))


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def dualgpu(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Ran:
    """``dualgpu ARGS`` run by ``main`` in this process, as from ``cwd`` with ``env`` (default: this
    process's environment without COLUMNS), its output captured.

    What a command leaves in this process (its folder on ``sys.path``, the user's modules it imported, its
    environment) is taken back, so each command finds the user's files as a fresh process would.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    path, modules, here = list(sys.path), set(sys.modules), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with (
            _environment(without_columns() if env is None else env),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            warnings.simplefilter("ignore")
            code = in_process(*args)
    finally:
        os.chdir(here)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if _users_file(getattr(sys.modules[name], "__file__", None)):
                del sys.modules[name]
    return Ran(code, stdout.getvalue(), stderr.getvalue())


def in_process(*args: str) -> int:
    """``dualgpu ARGS`` run by ``main`` here; its exit code, argparse's included."""
    try:
        return main(list(args))
    except SystemExit as exit:
        return int(exit.code or 0)


def console_script(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DUALGPU, *args], capture_output=True, text=True, timeout=300, check=False,
        env={**(without_columns() if env is None else env), "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def without_columns() -> dict[str, str]:
    """This environment without COLUMNS, which would fit the command's tables to a width."""
    return {name: value for name, value in os.environ.items() if name != "COLUMNS"}


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _users_file(file: str | None) -> bool:
    return file is not None and Path(file).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
