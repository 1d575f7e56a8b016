"""pytest-html integration: each test's entry in the HTML report shows its dualgpu rows and trace links.

Registered only when pytest-html is loaded. The extras go on the call phase's report, in the process that
ran the test: pytest-xdist carries them to the controller with the rest of the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from pytest_dualgpu.reports.rows import Column, ReportRow, format_table
from pytest_dualgpu.reports.traces import result_file_stem


class HtmlExtras:
    """Adds the table of a test's calls, and a link per call to its Chrome trace, to the test's report."""

    def __init__(
        self,
        rows_of: Callable[[pytest.Item], list[ReportRow]],
        columns: Callable[[], list[Column]],
        trace_directory: str | None,
        html_path: str,
    ) -> None:
        self.rows_of = rows_of
        self.columns = columns
        self.trace_directory = (
            None if trace_directory is None else Path(trace_directory).expanduser().absolute()
        )
        self.html_directory = Path(html_path).expanduser().absolute().parent

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        rows = self.rows_of(item) if report.when == "call" else []
        if rows:
            from pytest_html import extras

            found = list(getattr(report, "extras", []))
            # tabulate's html is a str subclass, which xdist cannot send to the controller
            found.append(extras.html(str(format_table(rows, self.columns(), tablefmt="html"))))
            if self.trace_directory is not None:
                for row in rows:
                    trace = self.trace_directory / f"{result_file_stem(row.nodeid, row.call)}.trace.json"
                    link = os.path.relpath(trace, self.html_directory)
                    found.append(extras.url(link, name=f"dualgpu trace: {row.result.name}"))
            report.extras = found  # type: ignore[attr-defined]
        return report
