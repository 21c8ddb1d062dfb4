"""Wall time per phase of an unlearning step (forward, backward, vector algebra, optimizer)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates wall time per named phase. ``sync`` (e.g. ``torch.cuda.synchronize``) runs at
    each phase boundary so asynchronous device work is charged to the phase that queued it.

    >>> timer = PhaseTimer()
    >>> with timer.phase("forward"):
    ...     pass
    >>> timer.counts["forward"]
    1
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._depth = 0
        #: The phase being timed (None between phases).
        self.current: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the enclosed block as ``name``; a phase inside another is charged to the outer one."""
        if self._depth:
            yield
            return
        self._depth += 1
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        self.current = name
        try:
            yield
        finally:
            self.current = None
            if self.sync is not None:
                self.sync()
            self.seconds[name] += time.perf_counter() - start
            self.counts[name] += 1
            self._depth -= 1

    def snapshot(self) -> dict[str, float]:
        """The seconds accumulated so far, per phase (subtract two snapshots to time one step)."""
        return dict(self.seconds)

    def per_step(self, steps: int) -> dict[str, float]:
        """Mean seconds per step of every phase."""
        return {name: total / max(steps, 1) for name, total in self.seconds.items()}
