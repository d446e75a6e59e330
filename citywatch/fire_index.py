"""Live forest fire danger: the Vietnamese Nesterov index per forest station, one value per local day.

From event-time hourly means (`BucketMeans`) of each forest station: t13 and RH13 are the means of
the hour starting at 13:00 local time (Asia/Ho_Chi_Minh; the hourly mean stands in for the 13:00
observation), and the day's rain is the sum of its `precipitation` readings (each is the rain of
its reporting period). A local day is judged when the first hourly bucket of the station's next
day closes (by then, the next reading of every metric has closed the day's last hours); the index then
steps by `nesterov_vn` from the station's previous value (a rain of `rain_reset_mm` or more resets
it) and its level (I..V) goes to the `indices` measurement (index `fire_danger`, time = the local
day's start). A change of level raises an alert.

The closed buckets are few (a handful of stations, one per hour and metric), so they are taken one
by one in time order; the readings themselves were reduced with NumPy by `BucketMeans`.

Options (section `indices:` of config/citywatch.yaml)::

    indices:
      fire: true
      fire_rain_reset_mm: 5.0                        # Quảng Bình used 6; calibrate locally
      fire_level_bounds: [1000, 2500, 5000, 10000]   # inclusive upper bounds of levels I..IV
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.detectors.bucket_means import BucketMeans, Buckets
from citywatch.detectors.indices import fire_danger
from citywatch.registry import SeriesIndex, remap_ids
from citywatch.sinks.line_protocol import encode_line

HOUR_NS = 3_600_000_000_000
LOCAL_UTC_OFFSET_H = 7
OBSERVATION_HOUR = 13
VARIABLES = ("temperature", "relativeHumidity", "precipitation")


def _level_alert(level: int) -> str:
    return "ok" if level <= 2 else "warning" if level == 3 else "critical"


class FireDanger:
    def __init__(self, series: SeriesIndex, rain_reset_mm: float = fire_danger.RAIN_RESET_MM,
                 level_bounds: Sequence[float] = fire_danger.LEVEL_UPPER_BOUNDS) -> None:
        self.series = series
        self.rain_reset_mm = float(rain_reset_mm)
        self.level_bounds = tuple(level_bounds)
        self.means = BucketMeans(series)
        self.stations = [s.id for s in series.registry.by_domain("forest")
                         if {"temperature", "relativeHumidity"} <= set(s.metrics)]
        self.areas = [series.registry.sensors[s].area for s in self.stations]
        self._station_of = {sid: i for i, sid in enumerate(self.stations)}
        n = len(self.stations)
        self.day = np.full(n, -1, np.int64)  # local day number being collected
        self.t13 = np.full(n, np.nan)
        self.rh13 = np.full(n, np.nan)
        self.rain = np.full(n, np.nan)
        self.p = np.zeros(n)  # index after the last judged day
        self.level = np.zeros(n, np.int8)
        self._lookup: dict[int, tuple[int, str]] = {}
        self._known = 0

    def _series_of(self, sid: int) -> tuple[int, str] | None:
        while self._known < len(self.series):
            k = self._known
            st = self._station_of.get(self.series.sensor_ids[k])
            if st is not None and self.series.metrics[k] in VARIABLES:
                self._lookup[k] = (st, self.series.metrics[k])
            self._known += 1
        return self._lookup.get(sid)

    def process(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        return self._closed(self.means.update(batch))

    def process_quiet(self, event_time_ns: int) -> tuple[list[str], list[AlertEvent]]:
        return self._closed(self.means.flush(event_time_ns))

    def _closed(self, buckets: Buckets) -> tuple[list[str], list[AlertEvent]]:
        lines: list[str] = []
        events: list[AlertEvent] = []
        if len(buckets) == 0 or not self.stations:
            return lines, events
        for i in np.argsort(buckets.start_ns, kind="stable").tolist():
            found = self._series_of(int(buckets.series[i]))
            if found is None:
                continue
            st, var = found
            local = int(buckets.start_ns[i] // HOUR_NS) + LOCAL_UTC_OFFSET_H
            day, hour = local // 24, local % 24
            if self.day[st] < 0:
                self.day[st] = day
            if day > self.day[st]:
                self._judge(st, lines, events)
                self.day[st] = day
            elif day < self.day[st]:
                continue  # a late hour of a day already judged
            if var == "precipitation":
                rain = float(buckets.mean[i] * buckets.count[i])
                self.rain[st] = rain if math.isnan(self.rain[st]) else self.rain[st] + rain
            elif hour == OBSERVATION_HOUR:
                (self.t13 if var == "temperature" else self.rh13)[st] = buckets.mean[i]
        return lines, events

    def _judge(self, st: int, lines: list[str], events: list[AlertEvent]) -> None:
        p, level = fire_danger.fire_danger_index(
            self.t13[st:st + 1], self.rh13[st:st + 1], self.rain[st:st + 1], rain_reset_mm=self.rain_reset_mm,
            upper_bounds=self.level_bounds, p0=self.p[st])
        p, level = float(p[0]), int(level[0])
        start_ns = (int(self.day[st]) * 24 - LOCAL_UTC_OFFSET_H) * HOUR_NS
        info = fire_danger.LEVELS[level - 1]
        lines.append(encode_line("indices", {"sensor": self.stations[st], "area": self.areas[st], "index": "fire_danger"},
                                 {"value": p, "category": level, "label_vi": f"Cấp {info.roman}: {info.label_vi}",
                                  "label_en": f"Level {info.roman}: {info.label_en}", "dominant": ""}, start_ns))
        if self.level[st] and level != self.level[st]:
            old = fire_danger.LEVELS[int(self.level[st]) - 1]
            events.append(AlertEvent(
                sensor=self.stations[st], domain="forest", area=self.areas[st], metric="fire_danger", detector="index",
                level=_level_alert(level), previous_level=_level_alert(old.number), value=p,
                threshold=None, score=None, ts_ns=start_ns,
                reason=f"fire danger level {old.roman} -> {info.roman}: {info.label_vi} / {info.label_en}"))
        self.p[st], self.level[st] = p, level
        self.t13[st] = self.rh13[st] = self.rain[st] = np.nan

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = {f"means.{k}": v for k, v in self.means.snapshot().items()}
        snap.update({"day": self.day, "t13": self.t13, "rh13": self.rh13, "rain": self.rain, "p": self.p,
                     "level": self.level, "__stations": np.asarray(self.stations, dtype=str)})
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.means.restore({k[len("means."):]: v for k, v in snap.items() if k.startswith("means.")})
        src, dst = remap_ids(snap["__stations"], self._station_of)
        for name in ("day", "t13", "rh13", "rain", "p", "level"):
            getattr(self, name)[dst] = snap[name][src]
