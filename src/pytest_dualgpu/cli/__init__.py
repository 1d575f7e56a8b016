"""The ``dualgpu`` command (console script ``pytest_dualgpu.cli:main``, and ``python -m pytest_dualgpu``):
argument parsing in ``main``, the profiling subcommands in ``commands`` and ``tasks``, the machine check in
``doctor`` and ``selftest``. The top layer: it may use the engine, the reports and torch."""

from __future__ import annotations

from pytest_dualgpu.cli.main import main

__all__ = ["main"]
