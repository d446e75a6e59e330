"""The minimal alert tracker: alerts on level changes, and on reason changes where a detector asks for it."""

from __future__ import annotations

import numpy as np

from citywatch.alerts import AlertTracker
from citywatch.batch import ReadingBatch
from citywatch.detectors.base import Detector, DetectorOutput
from citywatch.registry import SeriesIndex

from pipeline_helpers import small_registry


class _Scripted(Detector):
    """Outputs the (level, reason) it is given in the batch's value column: value = level * 10 + reason."""

    name = "scripted"
    reasons = ("ok", "sensor_suspect", "area_event")

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        v = batch.value.astype(int)
        n = len(batch)
        return DetectorOutput(np.zeros(n), (v // 10).astype(np.int8), (v % 10).astype(np.int16), np.full(n, np.nan))


class _ByReason(_Scripted):
    name = "by_reason"
    alert_on_reason_change = True


def _run(det_cls, codes):
    series = SeriesIndex(small_registry())
    series.add_registry()
    det = det_cls(series)
    tracker = AlertTracker(series, [det])
    batch = ReadingBatch.from_columns(np.zeros(len(codes)), np.arange(len(codes)), np.asarray(codes, float))
    events = tracker.update(batch, [det.process(batch)])
    return [(e.previous_level, e.level, e.reason, e.ts_ns) for e in events], tracker


def test_level_changes_only_by_default():
    events, _ = _run(_Scripted, [0, 11, 12, 12, 0])
    assert events == [("ok", "warning", "sensor_suspect", 1), ("warning", "ok", "ok", 4)]


def test_a_reason_change_at_the_same_level_is_an_alert_when_the_detector_asks():
    events, tracker = _run(_ByReason, [0, 11, 12, 12, 22, 0])
    assert events == [("ok", "warning", "sensor_suspect", 1), ("warning", "warning", "area_event", 2),
                      ("warning", "critical", "area_event", 4), ("critical", "ok", "ok", 5)]
    # the carried state survives a snapshot and restore
    snap = tracker.snapshot()
    series = tracker.series
    again = AlertTracker(series, tracker.detectors)
    again.restore(snap)
    batch = ReadingBatch.from_columns([0], [9], [0.0])
    assert again.update(batch, [tracker.detectors[0].process(batch)]) == []
