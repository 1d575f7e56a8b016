"""One check of ``dualgpu doctor``: what was checked, its status, what was found, and the fix.

A module of its own because the machine's checks (``doctor.py``) and the self-test's (``selftest.py``)
both make them, and the doctor runs the self-test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
