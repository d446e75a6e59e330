"""Live traffic congestion per camera and hour: flow (veh/h, PCU/h), speed ratio, travel-time index, LOS.

From event-time hourly buckets of each camera: the flow is the sum of `intensity` (vehicles counted
per reporting period) over the hour, PCU/h applies the mean PCU factor of the configured vehicle
mix (the cameras count all vehicles together), and the speed ratio is the hourly mean
`averageVehicleSpeed` over the camera's free-flow speed (by road class), banded into a level of
service A..F (urban streets, % of free-flow speed). Written to `indices` (index `traffic_los`,
time = start of the hour; value = speed ratio in %, category = LOS 1..6 for A..F) with fields
flow_veh_h, pcu_h and tti. Like the AQI, a station-hour is rewritten as its second metric closes.

Alerts: LOS changes every rush hour, so an alert is raised when the *alert level* of the LOS changes
(A-C ok, D-E warning, F critical), not on every letter, to keep duty officers' phones quiet.

Options (section `indices:` of config/citywatch.yaml)::

    indices:
      traffic: true
      traffic_free_flow_kmh: {main: 50, secondary: 40, side: 30}
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.detectors.bucket_means import BucketMeans, Buckets
from citywatch.detectors.indices import traffic
from citywatch.registry import SeriesIndex, remap_ids
from citywatch.sinks.line_protocol import encode_line

HOUR_NS = 3_600_000_000_000
DEFAULT_FREE_FLOW_KMH = {"main": 50.0, "secondary": 40.0, "side": 30.0}
LOS = traffic.LOS_LETTERS
ALERT_LEVEL = {"A": "ok", "B": "ok", "C": "ok", "D": "warning", "E": "warning", "F": "critical"}
_VARS = {"intensity": 0, "averageVehicleSpeed": 1}


class TrafficLos:
    def __init__(self, series: SeriesIndex, free_flow_kmh: Mapping[str, float] = DEFAULT_FREE_FLOW_KMH) -> None:
        self.series = series
        self.means = BucketMeans(series)
        cams = [s for s in series.registry.by_domain("traffic") if set(_VARS) <= set(s.metrics)]
        self.cameras = [s.id for s in cams]
        self.areas = [s.area for s in cams]
        self.free_flow = np.array([free_flow_kmh.get(s.road_class or "secondary", 40.0) for s in cams])
        self._camera_of = {sid: i for i, sid in enumerate(self.cameras)}
        n = len(cams)
        self.hour = np.full(n, -1, np.int64)
        self.values = np.full((n, 2), np.nan)  # flow veh/h, mean speed km/h of `hour`
        self.last_level = np.full(n, "", dtype=object)
        self.pcu_factor = traffic.effective_pcu_factor()
        self._cam = np.zeros(0, np.int64)
        self._var = np.zeros(0, np.int64)

    def _lookup(self) -> None:
        for sid in range(len(self._cam), len(self.series)):
            cam = self._camera_of.get(self.series.sensor_ids[sid], -1)
            var = _VARS.get(self.series.metrics[sid], -1) if cam >= 0 else -1
            self._cam = np.append(self._cam, cam if var >= 0 else -1)
            self._var = np.append(self._var, var)

    def process(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        return self._closed(self.means.update(batch))

    def process_quiet(self, event_time_ns: int) -> tuple[list[str], list[AlertEvent]]:
        return self._closed(self.means.flush(event_time_ns))

    def _closed(self, b: Buckets) -> tuple[list[str], list[AlertEvent]]:
        self._lookup()
        lines: list[str] = []
        events: list[AlertEvent] = []
        if len(b) == 0 or not self.cameras:
            return lines, events
        cam, var = self._cam[b.series], self._var[b.series]
        keep = cam >= 0
        cam, var, hour = cam[keep], var[keep], b.start_ns[keep] // HOUR_NS
        # flow: vehicles in the hour = mean count per period x periods; speed: the hourly mean
        value = np.where(var == 0, b.mean[keep] * b.count[keep], b.mean[keep])
        for h in np.unique(hour).tolist():
            at = np.flatnonzero(hour == h)
            c, v, x = cam[at], var[at], value[at]
            fresh = h >= self.hour[c]
            c, v, x = c[fresh], v[fresh], x[fresh]
            newer = c[h > self.hour[c]]
            self.values[newer] = np.nan
            self.hour[c] = h
            self.values[c, v] = x
            self._emit(np.unique(c), h, lines, events)
        return lines, events

    def _emit(self, c: np.ndarray, h: int, lines: list[str], events: list[AlertEvent]) -> None:
        flow, speed = self.values[c, 0], self.values[c, 1]
        ratio = 100.0 * speed / self.free_flow[c]
        letters = traffic.level_of_service(ratio, "urban_speed_pct")
        tti = self.free_flow[c] / speed
        for i, cam in enumerate(c.tolist()):
            letter = str(letters[i])
            fields: dict[str, object] = {"flow_veh_h": float(flow[i]), "pcu_h": float(flow[i] * self.pcu_factor)}
            if letter:
                fields.update({"value": float(ratio[i]), "category": LOS.index(letter) + 1, "tti": float(tti[i]),
                               "label_vi": f"Mức phục vụ {letter}", "label_en": f"LOS {letter}"})
            fields = {k: v for k, v in fields.items() if not (isinstance(v, float) and np.isnan(v))}
            if not fields:
                continue
            lines.append(encode_line("indices", {"sensor": self.cameras[cam], "area": self.areas[cam],
                                                 "index": "traffic_los"}, fields, h * HOUR_NS))
            if not letter:
                continue
            level, before = ALERT_LEVEL[letter], self.last_level[cam]
            if before and level != before:
                events.append(AlertEvent(
                    sensor=self.cameras[cam], domain="traffic", area=self.areas[cam], metric="traffic_los",
                    detector="index", level=level, previous_level=before, value=float(ratio[i]), threshold=None,
                    score=None, ts_ns=h * HOUR_NS,
                    reason=f"level of service {letter}: speed {speed[i]:.0f} km/h = {ratio[i]:.0f} % of free flow"))
            self.last_level[cam] = level

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = {f"means.{k}": v for k, v in self.means.snapshot().items()}
        snap.update({"hour": self.hour, "values": self.values, "last_level": self.last_level.astype(str),
                     "__cameras": np.asarray(self.cameras, dtype=str)})
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.means.restore({k[len("means."):]: v for k, v in snap.items() if k.startswith("means.")})
        src, dst = remap_ids(snap["__cameras"], self._camera_of)
        self.hour[dst] = snap["hour"][src]
        self.values[dst] = snap["values"][src]
        self.last_level[dst] = snap["last_level"][src]
