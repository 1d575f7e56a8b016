"""What the first ``dual_infer`` call of a fresh process costs, whole process included.

    farm-bench -n 8 --vs "python benchmarks/first_call.py --assert-close" -- python benchmarks/first_call.py

One process per run: import torch, make one short call on two sleeping lanes, exit. With ``--assert-close``
every output is judged by ``torch.testing.assert_close`` as before identical outputs were taken on sight;
its first use in a process imports ``torch.distributed.tensor``, which is what the pair of commands shows.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine import compare


class Sleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return x * 2


def main() -> None:
    if "--assert-close" in sys.argv[1:]:
        compare._identical = lambda expected, actual: False
    started = time.perf_counter()
    dual_infer(Sleep(), Sleep(), torch.ones(4), budget=0.05, warmup=0, min_rounds=6, settle=0)
    print(f"first call: {time.perf_counter() - started:.3f} s")


if __name__ == "__main__":
    main()
