"""Measuring settings for tests of what the harness does with results (rows, files, options, hooks, the
command's tables), not of the figures themselves: a short warm-up, the fewest rounds that give a 95%
interval (6), no settling pauses. Bounds are still decided: measuring goes on past the budget for them."""

from __future__ import annotations

from typing import Any

QUICK: dict[str, Any] = {"budget": 0.05, "max_budget": 3.0, "warmup": 0.3, "min_rounds": 6, "settle": 0.0}
#: The same for an inner pytest session.
QUICK_ARGS = tuple(f"--dualgpu-{name.replace('_', '-')}={value:g}" for name, value in QUICK.items())
#: The same for the command.
QUICK_CLI = [word for name, value in QUICK.items() for word in (f"--{name.replace('_', '-')}", f"{value:g}")]
