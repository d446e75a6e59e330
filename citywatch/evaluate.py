"""Everything stateful between validation and storage, with no broker or database attached.

`Evaluator` takes validated, (series, ts)-sorted micro-batches and returns the line-protocol points
and alert events they produce: per-series watermarks (LATE and DUPLICATE flags), the reorder buffer
of `detectors.allowed_lateness`, the detectors, the alert tracker and the index stages. The engine
(`citywatch.pipeline`) wraps it with MQTT, InfluxDB and acknowledgements; tests (the simulated
city of `tests/test_simulator_scenarios.py`) drive it directly, so they exercise exactly the
engine's logic.

Event time: each series has a watermark, the newest event time it has processed. Readings at or
before it are LATE (a resend, or a backlog older than what was seen): they are stored - data is
never dropped for being late - but they do not move detector state or raise alerts.
"""

from __future__ import annotations

import math

import numpy as np

from citywatch.air_indices import HOUR_NS, AirIndices
from citywatch.alerts import AlertEvent, AlertTracker
from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, FLAG_TS_FROM_ARRIVAL, ReadingBatch
from citywatch.config import Settings
from citywatch.detectors import build_detectors
from citywatch.detectors.no_data import NoDataDetector
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NAMES, Detector, DetectorOutput, SeriesState
from citywatch.detectors.seasonal_baseline import Band, SeasonalBaseline
from citywatch.fire_index import FireDanger
from citywatch.forecast_stage import ForecastStage
from citywatch.registry import SeriesIndex
from citywatch.reorder import ReorderBuffer
from citywatch.sinks.line_protocol import encode_line, escape_tag, series_prefix
from citywatch.stats import Stats
from citywatch.traffic_index import TrafficLos
from citywatch.water_index import WaterQuality

__all__ = ["Evaluator", "PointEncoder", "Watermarks", "INT64_MIN"]

INT64_MIN = np.iinfo(np.int64).min
_NO_DATA_LEVEL = {"ok": "ok", "late": "warning", "offline": "critical"}


class Watermarks(SeriesState):
    """Newest processed event time per series."""

    state_fields = {"ts": (np.int64, INT64_MIN)}

    def flag(self, batch: ReadingBatch) -> None:
        """Flag LATE and DUPLICATE readings of a sorted batch."""
        self._grow()
        if len(batch) == 0:
            return
        same_as_prev = np.zeros(len(batch), bool)
        same_as_prev[1:] = (batch.series[1:] == batch.series[:-1]) & (batch.ts[1:] == batch.ts[:-1])
        batch.flags[same_as_prev] |= FLAG_DUPLICATE
        batch.flags[batch.ts <= self.state["ts"][batch.series]] |= FLAG_LATE

    def advance(self, batch: ReadingBatch) -> None:
        """The readings of a sorted batch have been processed: move the watermarks past them."""
        self._grow()
        if len(batch) == 0:
            return
        ts = self.state["ts"]
        last = batch.is_last
        s = batch.series[last]
        ts[s] = np.maximum(ts[s], batch.ts[last])

    def mark(self, batch: ReadingBatch) -> None:
        self.flag(batch)
        self.advance(batch)


class PointEncoder:
    """Line protocol for readings, scores and alerts, with the per-series prefix cached."""

    def __init__(self, series: SeriesIndex) -> None:
        self.series = series
        self._reading_prefix: list[str] = []
        self._score_prefix: list[str] = []
        self._anomaly_prefix: dict[tuple[int, str, int], str] = {}
        self._baseline_prefix: list[str] = []

    def _grow(self) -> None:
        s = self.series
        for sid in range(len(self._reading_prefix), len(s)):
            tags = {"sensor": s.sensor_ids[sid], "area": s.areas[sid]}
            self._reading_prefix.append(series_prefix(s.domains[sid], tags) + " " + escape_tag(s.metrics[sid]) + "=")
            self._score_prefix.append(
                series_prefix("scores", {**tags, "domain": s.domains[sid], "metric": s.metrics[sid]}) + " ")
            self._baseline_prefix.append(
                series_prefix("baseline", {**tags, "domain": s.domains[sid], "metric": s.metrics[sid]}) + " ")

    def readings(self, batch: ReadingBatch) -> list[str]:
        self._grow()
        prefix = self._reading_prefix
        return [f"{prefix[s]}{v!r} {t}" for s, v, t in zip(batch.series.tolist(), batch.value.tolist(), batch.ts.tolist())]

    def scores(self, batch: ReadingBatch, names: list[str], outputs: list[DetectorOutput], mode: str) -> list[str]:
        if mode == "none" or not outputs:
            return []
        self._grow()
        levels = np.stack([o.level for o in outputs])
        evaluated_by = levels >= 0
        evaluated = evaluated_by.any(axis=0)
        level = levels.max(axis=0)
        score = np.where(evaluated_by, np.nan_to_num(np.stack([o.score for o in outputs])), 0.0).max(axis=0)
        keep = evaluated if mode == "all" else evaluated & (level > 0)
        # A late reading is often a resend of one already scored: its point (same series and time)
        # would overwrite that score with a partial one, the stateful detectors having skipped it.
        keep &= (batch.flags & (FLAG_LATE | FLAG_DUPLICATE)) == 0
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            return []
        prefix = self._score_prefix
        per_det = [
            [f",{n}_level={lv}i" if lv >= 0 else "" for lv in o.level[rows].tolist()] for n, o in zip(names, outputs)
        ]
        # a reading that came without a timestamp is marked, so that Grafana can show it
        per_det.append([",ts_from_arrival=true" if f else "" for f in (batch.flags[rows] & FLAG_TS_FROM_ARRIVAL).tolist()])
        extra = ["".join(parts) for parts in zip(*per_det)]
        return [
            f"{prefix[s]}score={sc!r},level={lv}i{ex} {t}"
            for s, sc, lv, ex, t in zip(batch.series[rows].tolist(), score[rows].tolist(), level[rows].tolist(),
                                        extra, batch.ts[rows].tolist())
        ]

    def baseline(self, band: Band | None) -> list[str]:
        """The seasonal expectation of each evaluated reading: expected value and its central band."""
        if band is None:
            return []
        self._grow()
        prefix = self._baseline_prefix
        return [f"{prefix[s]}expected={e!r},lower={lo!r},upper={hi!r} {t}"
                for s, e, lo, hi, t in zip(band.series.tolist(), band.expected.tolist(), band.lower.tolist(),
                                           band.upper.tolist(), band.ts.tolist())]

    def anomalies(self, batch: ReadingBatch, detectors: list[Detector], outputs: list[DetectorOutput]) -> list[str]:
        """Why a reading was flagged: one point per (reading, detector) whose level is above ok."""
        s = self.series
        prefixes = self._anomaly_prefix
        lines: list[str] = []
        for det, out in zip(detectors, outputs):
            rows = np.flatnonzero(out.level > 0)
            if len(rows) == 0:
                continue
            for sid, code, score, level, value, threshold, ts in zip(
                    batch.series[rows].tolist(), out.reason[rows].tolist(), np.nan_to_num(out.score[rows]).tolist(),
                    out.level[rows].tolist(), batch.value[rows].tolist(), out.threshold[rows].tolist(),
                    batch.ts[rows].tolist()):
                prefix = prefixes.get((sid, det.name, code))
                if prefix is None:
                    prefix = prefixes[(sid, det.name, code)] = series_prefix("anomalies", {
                        "sensor": s.sensor_ids[sid], "area": s.areas[sid], "domain": s.domains[sid],
                        "metric": s.metrics[sid], "detector": det.name, "reason": det.reasons[code]})
                # Python floats, finite (score through nan_to_num, values validated): repr is their field text
                limit = f"threshold={threshold!r}," if math.isfinite(threshold) else ""
                lines.append(f"{prefix} level={level}i,score={score!r},{limit}value={value!r} {ts}")
        return lines

    @staticmethod
    def alert(a: AlertEvent) -> str:
        fields: dict[str, object] = {"value": a.value, "reason": a.reason, "previous_level": a.previous_level,
                                     "level_code": {v: k for k, v in LEVEL_NAMES.items()}[a.level]}
        if a.threshold is not None:
            fields["threshold"] = a.threshold
        if a.score is not None:
            fields["score"] = a.score
        tags = {"sensor": a.sensor, "domain": a.domain, "area": a.area, "metric": a.metric,
                "detector": a.detector, "level": a.level}
        return encode_line("alerts", tags, fields, a.ts_ns)


class Evaluator:
    """Watermarks -> reorder buffer -> detectors -> alert tracker -> index stages, for one series index."""

    def __init__(self, settings: Settings, series: SeriesIndex, stats: Stats | None = None) -> None:
        self.settings = settings
        self.series = series
        self.stats = stats or Stats()
        self.detectors = build_detectors(series, settings.detectors)
        self.alerts = AlertTracker(series, self.detectors)
        self.watermarks = Watermarks(series)
        lateness_ns = int(settings.detectors.allowed_lateness * 1e9)
        self.reorder = ReorderBuffer(lateness_ns) if lateness_ns > 0 else None
        ix = settings.indices
        self.air_indices = AirIndices(series) if ix.air else None
        self.fire = FireDanger(series, ix.fire_rain_reset_mm, ix.fire_level_bounds) if ix.fire else None
        self.traffic = TrafficLos(series, ix.traffic_free_flow_kmh) if ix.traffic else None
        self.water = WaterQuality(series, ix.water_class, ix.water_class_by_station, ix.water_lab_max_age,
                                  ix.water_weighted) if ix.water else None
        # Index stages: process(batch) and process_quiet(event time) -> (points, alerts).
        fc = settings.forecasts
        self.forecasts = ForecastStage(series, fc, ix, self.air_indices) if fc.enabled else None  # after the air stage
        self.index_stages = [s for s in (self.air_indices, self.fire, self.traffic, self.water, self.forecasts)
                             if s is not None]
        self.encoder = PointEncoder(series)
        self.seasonal = next((d for d in self.detectors if isinstance(d, SeasonalBaseline)), None)
        nd = settings.detectors.no_data
        self.no_data = NoDataDetector(series, nd) if nd is not None and nd.enabled else None
        self._clock = INT64_MIN  # event-time clock of the device checks (see `event_clock`)
        self._clock_wall = 0

    def ingest(self, batch: ReadingBatch, now_ns: int) -> tuple[list[str], list[AlertEvent]]:
        """A validated, sorted batch: its readings' points plus whatever evaluation is now due."""
        self.watermarks.flag(batch)
        self.stats.inc("readings_late", int(((batch.flags & FLAG_LATE) != 0).sum()))
        lines = self.encoder.readings(batch)
        ready = batch if self.reorder is None else self.reorder.push(batch, now_ns)
        evaluated, events = self.evaluate(ready)
        return lines + evaluated, events

    def release_held(self, now_ns: int, drain: bool = False) -> tuple[list[str], list[AlertEvent]]:
        """Evaluate the held readings whose wait is over (all of them when draining)."""
        if self.reorder is None or len(self.reorder) == 0:
            return [], []
        return self.evaluate(self.reorder.drain() if drain else self.reorder.release_due(now_ns))

    def evaluate(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        """Detectors, alerts and index stages over readings due for processing, in event-time order."""
        if len(batch) == 0:
            return [], []
        self.watermarks.advance(batch)
        if self.no_data is not None:
            self.no_data.observe(batch)
        outputs = self.detect(batch)
        events = self.alerts.update(batch, outputs)
        lines = self.encoder.scores(batch, [d.name for d in self.detectors], outputs, self.settings.detectors.write_scores)
        lines += self.encoder.anomalies(batch, self.detectors, outputs)
        if self.seasonal is not None:
            lines += self.encoder.baseline(self.seasonal.last_band())
        for stage in self.index_stages:
            stage_lines, stage_events = stage.process(batch)
            lines += stage_lines
            events += stage_events
            self.stats.inc("index_points", len(stage_lines))
        if self.settings.alerts.influxdb:
            lines += [self.encoder.alert(a) for a in events]
        return lines, events

    def detect(self, batch: ReadingBatch) -> list[DetectorOutput]:
        outputs: list[DetectorOutput] = []
        skip: np.ndarray | None = None
        for det in self.detectors:
            out = det.process(batch, skip=skip)
            outputs.append(out)
            if det.name == "physical_range":
                skip = out.level == LEVEL_CRITICAL
                self.stats.inc("readings_out_of_range", int(skip.sum()))
        return outputs

    def flush_quiet(self) -> tuple[list[str], list[AlertEvent]]:
        """Close the hourly aggregates of stations that have been quiet for an hour of event time."""
        newest = int(self.watermarks.state["ts"][: len(self.series)].max(initial=INT64_MIN))
        if newest == INT64_MIN:
            return [], []
        lines: list[str] = []
        events: list[AlertEvent] = []
        for stage in self.index_stages:
            stage_lines, stage_events = stage.process_quiet(newest - HOUR_NS)
            lines += stage_lines
            events += stage_events
        if events and self.settings.alerts.influxdb:
            lines += [self.encoder.alert(a) for a in events]
        return lines, events

    def event_clock(self, wall_ns: int | None = None) -> int:
        """The engine's event-time "now" for judging silent devices; INT64_MIN before any reading.

        The 90th percentile of the series' watermarks, so one device with a fast clock does not make
        every other one look late; while it stands still it advances with the wall clock (if given),
        so that when everything goes quiet (the centre's uplink is down) devices still go offline.
        During a backlog the watermarks move and the clock follows event time, not the wall clock.
        """
        marks = self.watermarks.state["ts"][: len(self.series)]
        marks = marks[marks != INT64_MIN]
        if len(marks) == 0:
            return INT64_MIN
        q = int(np.quantile(marks, 0.9, method="nearest"))
        if wall_ns is None:
            return q
        if q != self._clock:
            self._clock, self._clock_wall = q, wall_ns
        return q + max(0, wall_ns - self._clock_wall)

    def check_devices(self, wall_ns: int | None = None) -> tuple[list[str], list[AlertEvent]]:
        """Late and offline devices at the event clock: an alert per change of state."""
        if self.no_data is None:
            return [], []
        now = self.event_clock(wall_ns)
        if now == INT64_MIN:
            return [], []
        expected = dict(zip(self.no_data.sensor_ids, self.no_data.expected_s().tolist()))
        events = [AlertEvent(
            sensor=t.sensor, domain=t.domain, area=t.area, metric="device", detector="no_data",
            level=_NO_DATA_LEVEL[t.state], previous_level=_NO_DATA_LEVEL[t.previous],
            # value: seconds of silence (since the start, for a device never heard from)
            value=round((t.now_ns - (t.last_seen_ns if t.last_seen_ns is not None else self.no_data.start_ns)) / 1e9, 3),
            threshold=expected.get(t.sensor), score=None, ts_ns=t.now_ns, reason=t.state,
        ) for t in self.no_data.check(now)]
        lines = [self.encoder.alert(a) for a in events] if self.settings.alerts.influxdb else []
        return lines, events

    def stateful(self) -> dict[str, SeriesState | AirIndices | FireDanger | TrafficLos | WaterQuality | ForecastStage]:
        """Everything whose per-series state survives a restart, by snapshot prefix."""
        parts = {**{d.name: d for d in self.detectors}, "__alerts": self.alerts, "__watermarks": self.watermarks}
        if self.air_indices is not None:
            parts["__air_indices"] = self.air_indices
        if self.fire is not None:
            parts["__fire"] = self.fire
        if self.traffic is not None:
            parts["__traffic"] = self.traffic
        if self.no_data is not None:
            parts["__no_data"] = self.no_data
        if self.water is not None:
            parts["__water"] = self.water
        if self.forecasts is not None:
            parts["__forecasts"] = self.forecasts
        return parts
