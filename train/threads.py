"""Intra-op thread count that follows the load of a shared machine.

On 2 cores shared with other work, a second OpenMP thread stalls every op while it waits for a
core (measured here: ~500 tokens/s with 2 threads vs ~1,100 with 1 under load, ~2,800 with 2 when
idle). The governor measures, over each training step, how many cores the rest of the machine kept
busy (/proc/stat minus this process) and uses every core only while the others are idle.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

STAT = Path("/proc/stat")
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BUSY_OTHERS = 0.4  # cores of other work above which one thread is used


def _busy_seconds() -> float | None:
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / HZ


class ThreadGovernor:
    """`fixed` > 0: always that many threads. `fixed` == 0: 1 or os.cpu_count(), by load."""

    def __init__(self, fixed: int = 0):
        self.fixed = fixed
        self.max = os.cpu_count() or 1
        self.threads = fixed or 1
        torch.set_num_threads(self.threads)
        self._mark = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        return time.monotonic(), time.process_time(), _busy_seconds()

    def update(self) -> int:
        """Call once per step; returns the thread count for the next step."""
        now = self._sample()
        if self.fixed or now[2] is None or self._mark[2] is None:
            self._mark = now
            return self.threads
        wall = max(1e-3, now[0] - self._mark[0])
        others = ((now[2] - self._mark[2]) - (now[1] - self._mark[1])) / wall
        self._mark = now
        want = 1 if others > BUSY_OTHERS else self.max
        if want != self.threads:
            self.threads = want
            torch.set_num_threads(want)
        return self.threads
