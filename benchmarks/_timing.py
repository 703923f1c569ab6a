"""Shared timing helper for the compare_*.py scripts: one process, interleaved rounds, medians.

Candidates are called round-robin (A, B, C, A, B, C, ...) so that slow drifts of a
shared, noisy machine hit every candidate alike; the median of the rounds is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(candidates: dict[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 1,
                        min_time: float = 0.02) -> dict[str, float]:
    """Median seconds per call for each candidate, measured interleaved in this process.

    Each candidate is first called ``warmup`` times (JIT compilation, caches), then
    calibrated to a number of calls per sample that lasts at least ``min_time``.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    number = {}
    for name, fn in candidates.items():
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dt = time.perf_counter() - t0
            if dt >= min_time or n >= 1 << 20:
                break
            n *= 2
        number[name] = n
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            n = number[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
