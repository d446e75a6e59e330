"""Columnar micro-batches of readings: what flows from ingest to the detectors and the sinks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Bit flags carried per reading.
FLAG_TS_FROM_ARRIVAL = np.uint8(1)  # the device sent no timestamp: arrival time was used
FLAG_LATE = np.uint8(2)  # older than (or equal to) the newest reading already processed for its series
FLAG_DUPLICATE = np.uint8(4)  # same series and timestamp as another reading in this batch


@dataclass(slots=True)
class ReadingBatch:
    """Readings as parallel arrays. Detectors receive it sorted by (series, ts)."""

    series: np.ndarray  # int32: dense series id (SeriesIndex)
    ts: np.ndarray  # int64: event time, ns since the epoch (UTC)
    value: np.ndarray  # float64: value in the registry's unit
    flags: np.ndarray  # uint8: FLAG_* bits
    _group_start: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def empty(cls) -> "ReadingBatch":
        return cls(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.uint8))

    @classmethod
    def from_columns(cls, series, ts, value, flags=None) -> "ReadingBatch":
        series = np.asarray(series, dtype=np.int32)
        flags = np.zeros(len(series), np.uint8) if flags is None else np.asarray(flags, dtype=np.uint8)
        return cls(series, np.asarray(ts, dtype=np.int64), np.asarray(value, dtype=np.float64), flags)

    def __len__(self) -> int:
        return len(self.series)

    def take(self, index: np.ndarray) -> "ReadingBatch":
        return ReadingBatch(self.series[index], self.ts[index], self.value[index], self.flags[index])

    def sorted_by_series_time(self) -> "ReadingBatch":
        """Stable sort by (series, event time): each series' readings in timestamp order."""
        order = np.lexsort((self.ts, self.series))
        return self.take(order)

    @property
    def group_start(self) -> np.ndarray:
        """For each row of a (series, ts)-sorted batch, the row where its series' run begins."""
        if self._group_start is None:
            n = len(self.series)
            first = np.ones(n, dtype=bool)
            if n > 1:
                first[1:] = self.series[1:] != self.series[:-1]
            self._group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else np.empty(0, np.int64)
        return self._group_start

    @property
    def is_first(self) -> np.ndarray:
        return self.group_start == np.arange(len(self.series))

    @property
    def is_last(self) -> np.ndarray:
        n = len(self.series)
        last = np.ones(n, dtype=bool)
        if n > 1:
            last[:-1] = self.series[1:] != self.series[:-1]
        return last


def last_index_where(mask: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """For each row, the latest row at or before it in the same series where `mask` holds; -1 if none.

    This is the vectorised form of a per-series "remember the last event" loop: a running maximum of
    row numbers, then discarding hits that belong to an earlier series.
    """
    n = len(mask)
    idx = np.maximum.accumulate(np.where(mask, np.arange(n), -1)) if n else np.empty(0, np.int64)
    return np.where(idx >= group_start, idx, -1)
