"""CPU seconds per worker stage: where a scored image's CPU goes, so a GPU node can be sized.

Each stage is timed with the calling thread's CPU clock (`time.thread_time`), which counts only
the work of that thread however many threads run beside it; the totals from every thread are
summed. Work that a library runs in threads of its own (torch's intra-op pool on the CPU) is not
in any stage: the process total shows it as `other`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

# The order a row goes through them; `other` is the process's CPU outside every stage.
STAGES = ("download", "check", "decode", "hash", "preprocess", "model", "heads", "rows", "orchestrate", "write")


class StageClock:
    """Thread-CPU seconds per stage, plus the process's CPU seconds between start() and stop()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: Counter[str] = Counter()
        self._process_start: float | None = None
        self._process_s = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - started)

    def add(self, name: str, seconds: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        with self._lock:
            self._seconds[name] += seconds

    def start(self) -> None:
        self._process_start = time.process_time()

    def stop(self) -> None:
        if self._process_start is not None:
            self._process_s += time.process_time() - self._process_start
            self._process_start = None

    def ms_per_image(self, images: int) -> dict[str, float]:
        """Milliseconds of CPU per image for each stage, `other` and `total` (the process's own count)."""
        if images <= 0:
            return {}
        staged = {name: self._seconds[name] for name in STAGES}
        other = max(0.0, self._process_s - sum(staged.values()))
        per_image = {name: 1000 * seconds / images for name, seconds in {**staged, "other": other}.items()}
        per_image["total"] = 1000 * self._process_s / images
        return {name: round(ms, 3) for name, ms in per_image.items()}


class _NoClock(StageClock):
    """For callers that do not measure: the same interface, nothing recorded."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def add(self, name: str, seconds: float) -> None:
        return None


NO_CLOCK: StageClock = _NoClock()
