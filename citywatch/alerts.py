"""Minimal alerts: a change of a detector's level for a series (ok -> warning -> critical -> ok).

The previous level of every (detector, series) lives in one small integer array per detector, so
finding the transitions of a whole micro-batch is a vectorised comparison; only the (rare)
transitions become Python objects. A reading that keeps the level raises nothing: no repeats.

A detector whose reasons at the same level mean different things to the people on duty (the spatial
detector: "sensor suspect" and "area event" are both warnings) sets `alert_on_reason_change`; its
state is then (level, reason), and a change of reason at the same level is an alert too.

The alert's time is the reading's event time, not the time it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import orjson

from citywatch.batch import ReadingBatch
from citywatch.detectors.base import LEVEL_NAMES, LEVEL_OK, Detector, DetectorOutput, SeriesState
from citywatch.registry import SeriesIndex


@dataclass(slots=True)
class AlertEvent:
    sensor: str
    domain: str
    area: str
    metric: str
    detector: str
    level: str
    previous_level: str
    value: float
    threshold: float | None
    score: float | None
    ts_ns: int
    reason: str

    @property
    def reading_time(self) -> str:
        return datetime.fromtimestamp(self.ts_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def to_json(self) -> bytes:
        return orjson.dumps({
            "sensor": self.sensor, "domain": self.domain, "area": self.area, "metric": self.metric,
            "detector": self.detector, "level": self.level, "previous_level": self.previous_level,
            "value": self.value, "threshold": self.threshold, "score": self.score,
            "reading_time": self.reading_time, "ts": self.ts_ns // 1_000_000, "reason": self.reason,
        })


_REASONS = 256  # (level, reason) packed as level * 256 + reason


class AlertTracker(SeriesState):
    """The last level of every (detector, series): one int8 state array per detector."""

    def __init__(self, series: SeriesIndex, detectors: list[Detector]) -> None:
        self.state_fields = {d.name: (np.int16, LEVEL_OK) for d in detectors}
        super().__init__(series)
        self.detectors = detectors

    @staticmethod
    def _key(det: Detector, level: np.ndarray, reason: np.ndarray) -> np.ndarray:
        """What must change for an alert: the level, or (level, reason) for detectors that ask for it."""
        level = level.astype(np.int16)
        if not det.alert_on_reason_change:
            return level
        return np.where(level > LEVEL_OK, level * _REASONS + reason.astype(np.int16), level * _REASONS)

    def update(self, batch: ReadingBatch, outputs: list[DetectorOutput]) -> list[AlertEvent]:
        """Transitions in a (series, ts)-sorted batch; the new levels become the carried state."""
        self._grow()
        events: list[AlertEvent] = []
        for det, out in zip(self.detectors, outputs):
            evaluated = np.flatnonzero(out.level >= 0)
            if len(evaluated) == 0:
                continue
            series = batch.series[evaluated]
            key = self._key(det, out.level[evaluated], out.reason[evaluated])
            prev_state = self.state[det.name]
            first = np.ones(len(series), bool)
            first[1:] = series[1:] != series[:-1]
            last = np.ones(len(series), bool)
            last[:-1] = first[1:]
            prev_key = np.empty_like(key)
            prev_key[1:] = key[:-1]
            prev_key[first] = prev_state[series[first]]
            changed = np.flatnonzero(key != prev_key)
            prev_state[series[last]] = key[last]
            by_reason = det.alert_on_reason_change
            level = key // _REASONS if by_reason else key
            prev = prev_key // _REASONS if by_reason else prev_key
            for j in changed.tolist():
                row = int(evaluated[j])
                sid = int(series[j])
                thr = float(out.threshold[row])
                score = float(out.score[row])
                events.append(AlertEvent(
                    sensor=self.series.sensor_ids[sid], domain=self.series.domains[sid], area=self.series.areas[sid],
                    metric=self.series.metrics[sid], detector=det.name,
                    level=LEVEL_NAMES[int(level[j])], previous_level=LEVEL_NAMES[int(prev[j])],
                    value=float(batch.value[row]), threshold=None if np.isnan(thr) else thr,
                    score=None if np.isnan(score) else score, ts_ns=int(batch.ts[row]),
                    reason=det.reasons[int(out.reason[row])],
                ))
        return events
