"""Reading the markdown reports back in tests."""

from __future__ import annotations

import itertools


def first_table(markdown: str) -> list[str]:
    """The lines of the first table in ``markdown`` (the results; a latency table may follow)."""
    lines = itertools.dropwhile(lambda line: not line.startswith("|"), markdown.splitlines())
    return list(itertools.takewhile(lambda line: line.startswith("|"), lines))
