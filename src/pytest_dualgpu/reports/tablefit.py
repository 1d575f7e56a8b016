"""Fitting the table to the terminal: a row that wraps into four lines is not read. Torch-free.

Columns are left out by priority (the figures a reader can do without first), then the long text columns
are shortened (a test id from the left, where its file and class repeat; verdicts and lanes from the
right). What was left out is said under the table, with the way to see everything.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_dualgpu.reports.rows import ALWAYS, Column, ReportRow, format_table

FIRST_CUT = 40  # a test id longer than this is cut before any column is left out
COMPACT_BEFORE = 50  # columns of this priority or more go only after the compact forms are in
NARROWEST = {"left": 20, "right": 16}  # a shortened column keeps at least this many characters


@dataclass(frozen=True)
class Fitted:
    """The columns to show, the headers left out and shortened, and the width they were fitted to."""

    columns: list[Column]
    left_out: list[str]
    shortened: list[str]
    width: int | None = None

    def note(self, wide: str) -> str | None:
        """Lines saying what the fitted table lacks and how to see it whole (``wide``: the option)."""
        if not (self.left_out or self.shortened):
            return None
        parts = []
        if self.left_out:
            parts.append(f"left out {', '.join(self.left_out)}")
        if self.shortened:
            parts.append(f"shortened {', '.join(self.shortened)}")
        text = f"table fitted to {self.width} columns: {'; '.join(parts)}; {wide} shows every column whole"
        return textwrap.fill(text, self.width or len(text), break_on_hyphens=False)


def terminal_width() -> int:
    """The width pytest itself writes to: ``COLUMNS``, else the terminal's, else 80."""
    width = shutil.get_terminal_size(fallback=(80, 24)).columns
    return width if width >= 40 else 80


def fit_columns(rows: Sequence[ReportRow], columns: Sequence[Column], width: int | None) -> Fitted:
    """The columns whose table is at most ``width`` characters wide, as far as leaving out and shortening
    what may go can make it; all of them, whole, for no ``width``."""
    chosen = list(columns)
    if width is None:
        return Fitted(chosen, [], [])
    left_out: list[str] = []
    originals: dict[str, Column] = {}
    shortened: list[str] = []

    def excess() -> int:
        lines = format_table(rows, chosen).splitlines()
        return max(map(len, lines), default=0) - width

    def shorten(column: Column, limit: int) -> None:
        original = originals.setdefault(column.header, column)
        chosen[chosen.index(column)] = _shortened(original, limit)
        if column.header not in shortened and _longest(rows, original) > limit:
            shortened.append(column.header)

    if excess() <= 0:
        return Fitted(chosen, [], [])
    for column in chosen:
        if column.shortened == "left" and _longest(rows, column) > FIRST_CUT:
            shorten(column, FIRST_CUT)
    droppable = sorted((c for c in chosen if c.priority < ALWAYS), key=lambda c: c.priority)
    for column in droppable:
        if excess() <= 0:
            break
        if column.priority >= COMPACT_BEFORE:
            # The figures that matter most are worth more than the long form of a column kept anyway.
            for index, kept in enumerate(chosen):
                if kept.compact is not None:
                    chosen[index] = dataclasses.replace(kept, cell=kept.compact, compact=None)
                    shortened.append(kept.header)
            if excess() <= 0:
                break
        chosen.remove(column)
        if not column.optional or any(column.cell(row) != "-" for row in rows):
            left_out.append(column.header)
    for side in ("left", "right"):
        for column in [c for c in chosen if c.shortened == side]:
            over = excess()
            if over <= 0:
                break
            longest = _longest(rows, column)
            shorten(column, max(NARROWEST[side], longest - over))
    return Fitted(chosen, left_out, shortened, width)


def _longest(rows: Sequence[ReportRow], column: Column) -> int:
    return max((len(column.cell(row)) for row in rows), default=0)


def _shortened(column: Column, limit: int) -> Column:
    def cell(row: ReportRow) -> str:
        text = column.cell(row)
        if len(text) <= limit:
            return text
        return "..." + text[-(limit - 3) :] if column.shortened == "left" else text[: limit - 3] + "..."

    return dataclasses.replace(column, cell=cell)
