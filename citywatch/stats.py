"""Engine counters: thread-safe, cheap to bump, read as a snapshot for logs, the terminal and InfluxDB."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import structlog


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, float] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str) -> float:
        with self._lock:
            return self._counters.get(name, self._gauges.get(name, 0))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {**self._counters, **self._gauges}


class RateLimitedLog:
    """Logs a message key at most once per `every` seconds, reporting how many were suppressed."""

    def __init__(self, logger: structlog.typing.FilteringBoundLogger, every: float) -> None:
        self._log = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def warning(self, key: str, event: str, **kw) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            kw["suppressed_since_last"] = suppressed
        self._log.warning(event, **kw)
