"""Where ``Column`` and ``format_results`` lived before the reports had a package of their own; kept so
that hooks and scripts written against it go on working. New code imports ``pytest_dualgpu.reports``."""

from __future__ import annotations

from pytest_dualgpu.reports.rows import Column, format_results, load_report

__all__ = ["Column", "format_results", "load_report"]
