"""Measuring settings for tests of what the harness does with results (rows, files, options, hooks, the
command's tables), not of the figures themselves: no warm-up beyond each lane's first call, no settling
pauses, and the fewest rounds that give a 95% interval (6). Bounds are still decided: measuring goes on past
the budget for them.

Figures measured so are rough: without the settling pauses a GIL-holding lane beside a nearly free one
measured 1.07-1.13x of an ideal 1.00x on the 2-core VM (1.02-1.06x with them), which the sanity checks
rightly call impossible. A test that reads a verdict or a result's reliability measures as the engine
does by default, or with lanes that need no settling (sleeping or turn-taking ones)."""

from __future__ import annotations

from typing import Any

QUICK: dict[str, Any] = {"budget": 0.05, "max_budget": 3.0, "warmup": 0, "min_rounds": 6, "settle": 0}
#: The same for an inner pytest session.
QUICK_ARGS = tuple(f"--dualgpu-{name.replace('_', '-')}={value:g}" for name, value in QUICK.items())
#: The same for the command.
QUICK_CLI = [word for name, value in QUICK.items() for word in (f"--{name.replace('_', '-')}", f"{value:g}")]
