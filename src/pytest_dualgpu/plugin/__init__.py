"""The pytest plugin: the entry point ``pytest_dualgpu.plugin`` (``dualgpu``; off with ``-p no:dualgpu``).

The hooks and fixtures are defined in ``hooks``; pytest finds them here, among this module's names. Like
everything in this package it imports no torch: the engine comes in with the first fixture that needs it.
"""

from __future__ import annotations

from pytest_dualgpu.plugin.hooks import (
    dual_infer,
    dualgpu_device,
    place_model,
    pytest_addhooks,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_load_initial_conftests,
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtestloop,
    pytest_unconfigure,
)

__all__ = [
    "dual_infer",
    "dualgpu_device",
    "place_model",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_load_initial_conftests",
    "pytest_make_collect_report",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "pytest_runtestloop",
    "pytest_unconfigure",
]
