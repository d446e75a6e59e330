"""The detector contract.

A detector is stateful per series (sensor x metric) and processes a whole micro-batch at once with
NumPy: no Python loop per reading. Its state lives in arrays indexed by the dense series id of
`SeriesIndex`; the arrays grow as sensors appear. `snapshot()`/`restore()` carry the state across
restarts, keyed by (sensor, metric) so that series ids may differ between runs.

The batch a detector receives is sorted by (series, event time). Readings flagged LATE or DUPLICATE
(see `citywatch.batch`) must not move the state: event time only goes forward per series.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.registry import SeriesIndex

LEVEL_NOT_EVALUATED = -1
LEVEL_OK = 0
LEVEL_WARNING = 1
LEVEL_CRITICAL = 2
LEVEL_NAMES = {LEVEL_NOT_EVALUATED: "not_evaluated", LEVEL_OK: "ok", LEVEL_WARNING: "warning", LEVEL_CRITICAL: "critical"}


@dataclass(slots=True)
class DetectorOutput:
    """Per-reading results, aligned with the batch the detector processed."""

    score: np.ndarray  # float64 in [0, 1]; NaN where not evaluated
    level: np.ndarray  # int8: LEVEL_*
    reason: np.ndarray  # int16: index into the detector's `reasons`; 0 means "ok"
    threshold: np.ndarray  # float64: the limit the reading was compared with (NaN if none)

    @classmethod
    def not_evaluated(cls, n: int) -> "DetectorOutput":
        return cls(np.full(n, np.nan), np.full(n, LEVEL_NOT_EVALUATED, np.int8), np.zeros(n, np.int16), np.full(n, np.nan))


class SeriesState:
    """Per-series state arrays that grow with the series index, with snapshot and restore.

    Subclasses declare `state_fields` (name -> (dtype, fill value)); `self.state[name][series_id]`.
    A field may also be 2-D, one row per series: (dtype, fill value, width) makes an array of shape
    (n_series, width), e.g. one column per time-of-day bin; a detector whose width depends on its
    configuration sets `self.state_fields` before calling `SeriesState.__init__`.
    Shared by detectors and by the stateful aggregations that feed the indices.
    """

    state_fields: ClassVar[dict[str, tuple]] = {}

    @staticmethod
    def _field_shape(spec: tuple, rows: int) -> tuple[int, ...]:
        return (rows,) if len(spec) == 2 else (rows, int(spec[2]))

    def __init__(self, series: SeriesIndex) -> None:
        self.series = series
        self.state: dict[str, np.ndarray] = {
            k: np.full(self._field_shape(spec, 0), spec[1], dtype=spec[0]) for k, spec in self.state_fields.items()
        }
        self._capacity = 0
        self._n = 0

    def _grow(self) -> None:
        n = len(self.series)
        if n > self._capacity:
            capacity = max(n, 2 * self._capacity, 64)
            for k, spec in self.state_fields.items():
                arr = np.full(self._field_shape(spec, capacity), spec[1], dtype=spec[0])
                arr[: self._capacity] = self.state[k]
                self.state[k] = arr
            self._capacity = capacity
        if n > self._n:
            self._on_new_series(self._n, n)
            self._n = n

    def _on_new_series(self, start: int, stop: int) -> None:
        """Hook: series ids [start, stop) have just appeared (e.g. to look up their parameters)."""

    def snapshot(self) -> dict[str, np.ndarray]:
        n = len(self.series)
        self._grow()
        return {**{k: v[:n].copy() for k, v in self.state.items()}, **self.series.snapshot_keys()}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Load a snapshot; series unknown to the current registry are dropped."""
        self._grow()
        src_idx, dst_idx = self.series.remap(snap)
        for k in self.state_fields:
            # A 2-D field saved with another width (its configuration changed) starts afresh.
            if k in snap and snap[k].shape[1:] == self.state[k].shape[1:]:
                self.state[k][dst_idx] = snap[k][src_idx]


class Detector(SeriesState, ABC):
    """Base class of the detectors: per-series state (`SeriesState`) and batch scoring.

    Subclasses declare `name`, `reasons` and `state_fields`, and implement `_process`.
    """

    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]] = ("ok",)
    # True when two reasons at the same level must reach people as different alerts (see citywatch.alerts).
    alert_on_reason_change: ClassVar[bool] = False

    def process(self, batch: ReadingBatch, skip: np.ndarray | None = None) -> DetectorOutput:
        """Score a (series, ts)-sorted batch; the output is aligned with the batch's rows.

        `skip` (optional, bool, one per row) marks readings this detector must neither evaluate nor
        learn from, e.g. readings another check already rejected. They come out not evaluated
        (level -1, score NaN) and the detector's state is as if they had never arrived. Subclasses
        need not know about it: `_process` only ever sees the readings that are not skipped.
        """
        self._grow()
        n = len(batch)
        if n == 0:
            return DetectorOutput.not_evaluated(0)
        if skip is None:
            return self._process(batch)
        skip = np.asarray(skip, dtype=bool)
        if skip.shape != (n,):
            raise ValueError(f"skip mask has shape {skip.shape}, the batch has {n} readings")
        if not skip.any():
            return self._process(batch)
        out = DetectorOutput.not_evaluated(n)
        keep = np.flatnonzero(~skip)
        if len(keep):
            # A subset of a (series, ts)-sorted batch is still sorted.
            sub = self._process(batch.take(keep))
            out.score[keep] = sub.score
            out.level[keep] = sub.level
            out.reason[keep] = sub.reason
            out.threshold[keep] = sub.threshold
        return out

    @abstractmethod
    def _process(self, batch: ReadingBatch) -> DetectorOutput: ...

    @staticmethod
    def in_order(batch: ReadingBatch) -> np.ndarray:
        """Readings that may move per-series state (not late, not duplicate)."""
        return (batch.flags & (FLAG_LATE | FLAG_DUPLICATE)) == 0

    def reason_names(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self.reasons, dtype=object)[codes]
