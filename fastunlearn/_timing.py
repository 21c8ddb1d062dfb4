"""Wall-clock timing shared by the showcase and the benchmark report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of `repeats` calls of `fn`, after one untimed warm-up call."""
    return paired_median_seconds([fn], repeats)[0]


def paired_median_seconds(fns: Sequence[Callable[[], object]], repeats: int = 5) -> list[float]:
    """Median wall time of each of `fns` over `repeats` rounds that call every one of them in turn,
    after one untimed warm-up call each: on a shared machine a slow spell lands on all of them, so
    their ratios hold better than those of medians taken one after the other."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]
