"""The pytest plugin (entry point ``dualgpu``; disable with ``-p no:dualgpu``).

Only glue between pytest and the engine lives here. It must stay importable without torch: pytest loads
it in every session of a suite that has the package installed, and a suite that never asks for a
dual_infer fixture should pay nothing for it.
"""

from __future__ import annotations
