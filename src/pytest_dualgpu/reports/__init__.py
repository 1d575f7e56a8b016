"""Reports, torch-free and shared by the plugin and the command: result rows and the table (``rows``), a
saved report and the regression gate (``gate``), merging, fitting a table to the terminal, plots and the
pytest-html extras.

The names a plugin hook or a script uses are here: ``Column`` (for ``pytest_dualgpu_report_columns``),
``format_results``, ``load_report``.
"""

from __future__ import annotations

from pytest_dualgpu.reports.rows import Column, format_results, load_report

__all__ = ["Column", "format_results", "load_report"]
