"""Event-time order within an allowed lateness: a small reorder buffer in front of the detectors.

Devices do not always deliver in order: a gateway flushes a backlog over two connections, QoS 1
redelivers a message after a newer one. With ``detectors.allowed_lateness`` > 0 the engine stores
every reading at once but holds it back from the detectors, the alert tracker and the index stages
until either

* its series has seen a reading at least ``allowed_lateness`` newer in event time (the series'
  watermark passed it), or
* it has waited ``allowed_lateness`` of wall-clock time (so a sensor that goes quiet is not held
  forever, like Flink's idle sources).

Released readings of a series always form a prefix of what is held, in timestamp order, so each
series is processed in event-time order even when its readings arrived shuffled. A reading that
arrives at or before the newest reading already *processed* for its series is too late: it is
stored but flagged LATE and moves no state (see `Watermarks`). A reading equal in series and time to
one already held is flagged DUPLICATE and dropped from processing.

The price is up to ``allowed_lateness`` of extra detection latency (storage latency is unchanged).
Held readings have been stored and acknowledged: a graceful stop processes them (`drain`); a crash
loses their *evaluation* (never the readings themselves), at most ``allowed_lateness`` worth.

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> buf = ReorderBuffer(allowed_lateness_ns=10)
>>> out = buf.push(ReadingBatch.from_columns([0, 0], [100, 105], [1.0, 2.0]), now_ns=0)
>>> out.ts.tolist()  # nothing is 10 ns behind the newest reading yet
[]
>>> out = buf.push(ReadingBatch.from_columns([0, 0], [103, 117], [3.0, 4.0]), now_ns=1)
>>> out.ts.tolist(), out.value.tolist()  # 103 arrived late but is processed in order
([100, 103, 105], [1.0, 3.0, 2.0])
>>> buf.release_due(now_ns=20).ts.tolist()  # 117 has waited long enough in wall time
[117]
"""

from __future__ import annotations

import numpy as np

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch, last_index_where

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """Readings held back until they can be processed in event-time order (see module docstring)."""

    def __init__(self, allowed_lateness_ns: int) -> None:
        if allowed_lateness_ns <= 0:
            raise ValueError("allowed_lateness must be positive for a reorder buffer")
        self.lateness = int(allowed_lateness_ns)
        self._held = ReadingBatch.empty()
        self._held_since = np.empty(0, np.int64)  # wall-clock ns when each held reading arrived
        self._newest = np.full(0, np.iinfo(np.int64).min, np.int64)  # newest event time seen per series

    def __len__(self) -> int:
        return len(self._held)

    def push(self, batch: ReadingBatch, now_ns: int) -> ReadingBatch:
        """Add a batch (LATE and DUPLICATE rows are ignored); return the readings now due, sorted."""
        keep = (batch.flags & (FLAG_LATE | FLAG_DUPLICATE)) == 0
        new = batch.take(np.flatnonzero(keep))
        if len(new):
            self._see(new)
            held = _concat(self._held, new)
            since = np.concatenate([self._held_since, np.full(len(new), now_ns, np.int64)])
            # Stable: held rows come first, so a resent reading is the one dropped as a duplicate.
            order = np.lexsort((held.ts, held.series))
            held, since = held.take(order), since[order]
            dup = np.zeros(len(held), bool)
            dup[1:] = (held.series[1:] == held.series[:-1]) & (held.ts[1:] == held.ts[:-1])
            if dup.any():
                held.flags[dup] |= FLAG_DUPLICATE
                held, since = held.take(np.flatnonzero(~dup)), since[~dup]
            self._held, self._held_since = held, since
        return self.release_due(now_ns)

    def release_due(self, now_ns: int) -> ReadingBatch:
        """The held readings whose wait is over (see module docstring), as a (series, ts)-sorted batch."""
        held = self._held
        if len(held) == 0:
            return ReadingBatch.empty()
        due = (held.ts <= self._newest[held.series] - self.lateness) | (self._held_since <= now_ns - self.lateness)
        # A series releases everything up to its latest due reading: order is never broken.
        due = np.zeros(len(held), bool) if not due.any() else _prefix_upto(due, held)
        return self._release(due)

    def drain(self) -> ReadingBatch:
        """Everything held, in order (at a graceful stop)."""
        return self._release(np.ones(len(self._held), bool))

    def _release(self, due: np.ndarray) -> ReadingBatch:
        out = self._held.take(np.flatnonzero(due))
        rest = np.flatnonzero(~due)
        self._held, self._held_since = self._held.take(rest), self._held_since[rest]
        return out

    def _see(self, batch: ReadingBatch) -> None:
        n = int(batch.series.max()) + 1
        if n > len(self._newest):
            grown = np.full(max(n, 2 * len(self._newest), 64), np.iinfo(np.int64).min, np.int64)
            grown[: len(self._newest)] = self._newest
            self._newest = grown
        np.maximum.at(self._newest, batch.series, batch.ts)


def _prefix_upto(due: np.ndarray, batch: ReadingBatch) -> np.ndarray:
    """Rows at or before the last due row of their series (batch sorted by series, ts)."""
    n = len(due)
    # last due row per series: scan backwards = last_index_where on the reversed batch
    rev_start = ReadingBatch.from_columns(batch.series[::-1], batch.ts[::-1], batch.value[::-1]).group_start
    last_due_rev = last_index_where(due[::-1], rev_start)
    last_due_from_end = last_due_rev[::-1]  # for each row, the nearest due row at or after it (reversed index)
    return last_due_from_end >= 0 if n else due


def _concat(a: ReadingBatch, b: ReadingBatch) -> ReadingBatch:
    return ReadingBatch(np.concatenate([a.series, b.series]), np.concatenate([a.ts, b.ts]),
                        np.concatenate([a.value, b.value]), np.concatenate([a.flags, b.flags]))
