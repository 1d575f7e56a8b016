"""Hooks other plugins and conftest files can implement; registered through ``pytest_addhooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dualgpu.reports.rows import Column
    from pytest_dualgpu.results import DualResult


@pytest.hookspec
def pytest_dualgpu_result(result: DualResult, item: pytest.Item) -> None:
    """Called after each ``dual_infer`` call of the ``dual_infer`` fixture, before the markers judge it.

    Runs in the process that ran the test (an xdist worker, under xdist), with the result still holding
    its output tensors. Use it to log or check results beyond what the markers cover, e.g. in
    ``conftest.py``::

        def pytest_dualgpu_result(result, item):
            if result.overlap < 0.1:
                item.add_report_section("call", "dualgpu", f"{result.name}: lanes never overlapped")
    """


@pytest.hookspec
def pytest_dualgpu_report_columns(columns: list[Column], config: pytest.Config) -> None:
    """Called on the controller before each table (terminal, markdown) is rendered; edit ``columns``.

    Each ``Column`` has a ``header`` and a ``cell`` function that renders a ``ReportRow`` (``nodeid``,
    ``result``, ``verdicts``). The same columns are used for the terminal and the markdown table, e.g.::

        from pytest_dualgpu.report import Column

        def pytest_dualgpu_report_columns(columns, config):
            columns[:] = [c for c in columns if c.header != "max err"]
            columns.append(Column("rounds", lambda row: str(row.result.rounds)))
    """
