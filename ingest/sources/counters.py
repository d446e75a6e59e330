"""Cumulative counters (a counting camera's total since boot) turned into increases per message.

`CounterDeltas.delta(key, ts_ns, value)` returns the increase since the previous value of the same
counter, or None (with the reason counted in `events`):

* the first value of a counter is its baseline: nothing is emitted (``baseline``);
* a value below the previous one is a *reset* (the device restarted and counts from 0): the
  increase is the new value itself (``reset``);
* a value older than or as old as the previous one is a resend or out of order: dropped
  (``stale``), and the baseline is kept;
* after a silence longer than `max_gap_s`, the increase would cover the whole outage and look like
  a burst: the counter starts over from this value (``gap``).

    >>> c = CounterDeltas(max_gap_s=600)
    >>> [c.delta("cam", t * 10**9, v) for t, v in [(0, 1000), (60, 1012), (120, 1030), (180, 4), (180, 4)]]
    [None, 12.0, 18.0, 4.0, None]
    >>> dict(c.events)
    {'baseline': 1, 'reset': 1, 'stale': 1}
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable

__all__ = ["CounterDeltas"]


class CounterDeltas:
    def __init__(self, max_gap_s: float = 600.0, max_counters: int = 1_000_000) -> None:
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.max_counters = max_counters
        self._last: dict[Hashable, tuple[int, float]] = {}
        self.events: Counter[str] = Counter()

    def delta(self, key: Hashable, ts_ns: int, value: float) -> float | None:
        prev = self._last.get(key)
        if prev is None:
            if len(self._last) < self.max_counters:
                self._last[key] = (ts_ns, value)
            self.events["baseline"] += 1
            return None
        last_ts, last_value = prev
        if ts_ns <= last_ts:
            self.events["stale"] += 1
            return None
        self._last[key] = (ts_ns, value)
        if ts_ns - last_ts > self.max_gap_ns:
            self.events["gap"] += 1
            return None
        if value < last_value:
            self.events["reset"] += 1
            return float(value)
        return float(value - last_value)

    def snapshot(self) -> dict[str, list]:
        keys = list(self._last)
        return {"keys": [list(k) if isinstance(k, tuple) else k for k in keys],
                "ts": [self._last[k][0] for k in keys], "value": [self._last[k][1] for k in keys]}

    def restore(self, snap: dict[str, list]) -> None:
        for k, t, v in zip(snap["keys"], snap["ts"], snap["value"]):
            self._last[tuple(k) if isinstance(k, list) else k] = (int(t), float(v))
