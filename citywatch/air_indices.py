"""Live hourly air-quality indices: VN_AQI (Decision 1459/QĐ-TCMT) and US AQI, in event time.

Raw readings become hourly means per (station, pollutant) (`BucketMeans`); each closed hour goes into
a 24-hour window per station (a ring buffer indexed by hour number, so a backlog or a gap lands in
the right column); then the index of that station-hour is computed with the vectorised functions of
`citywatch.detectors.indices`, for all affected station-hours of a micro-batch at once. When a
pollutant's hour closes after another's, the station-hour is computed again: the point written to
InfluxDB has the same series and time, so it is overwritten, and the stored value ends complete.

When the last hour of a local day (Asia/Ho_Chi_Minh) closes, the daily VN_AQI of that day is
computed too (24-hour PM means, daily maximum 1-hour gas means, 8-hour O3 means).

Output: points for the `indices` measurement (tags sensor, area, index; fields value, category,
label_vi, label_en, dominant; time = start of the hour, or of the local day) and an alert whenever a
station's category changes from one hour (or day) to a later one, or as an hour fills in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from citywatch.air_limits import AirLimits
from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.detectors.bucket_means import BucketMeans, Buckets
from citywatch.detectors.indices import us_aqi, vn_aqi
from citywatch.registry import SeriesIndex, remap_ids
from citywatch.sinks.line_protocol import encode_line

HOUR_NS = 3_600_000_000_000
# Hours kept per station: a local day (24) plus the 7 hours before it that the day's first 8-hour
# O3 means need; the hourly indices use the last 12 (NowCast) or 8 (US 8-hour means).
WINDOW = 32
DAY_LEAD_HOURS = 7
# Asia/Ho_Chi_Minh is UTC+7 all year (no daylight saving): local days start at 17:00 UTC.
LOCAL_UTC_OFFSET_H = 7
POLLUTANTS = vn_aqi.POLLUTANTS
HOURLY = {"vn_aqi_hourly": vn_aqi.vn_aqi_hourly, "us_aqi": us_aqi.us_aqi_hourly}
CATEGORIES = {"vn_aqi_hourly": vn_aqi.CATEGORIES, "us_aqi": us_aqi.CATEGORIES, "vn_aqi_daily": vn_aqi.CATEGORIES}


def _level(category: int) -> str:
    """Alert level for an AQI category: 1-2 ok, 3-4 warning, 5-6 critical."""
    return "ok" if category <= 2 else "warning" if category <= 4 else "critical"


@dataclass(slots=True)
class IndexValues:
    """One index for a set of station-hours (aligned arrays)."""

    index: str
    station: np.ndarray  # int: position in AirIndices.stations
    hour: np.ndarray  # int64: hour number since the epoch (start = hour * HOUR_NS)
    value: np.ndarray  # float64, NaN = no valid index
    category: np.ndarray  # int8, 0 = no valid index
    dominant: np.ndarray  # str


class AirIndices:
    def __init__(self, series: SeriesIndex) -> None:
        self.series = series
        self.means = BucketMeans(series)
        self.stations = [s.id for s in series.registry.by_domain("air") if set(s.metrics) & set(POLLUTANTS)]
        self.areas = [series.registry.sensors[s].area for s in self.stations]
        self._station_of = {sid: i for i, sid in enumerate(self.stations)}
        n = len(self.stations)
        self.hist = np.full((n, len(POLLUTANTS), WINDOW), np.nan)
        self.col_hour = np.full((n, WINDOW), -1, np.int64)
        self.last_hour = {name: np.full(n, -1, np.int64) for name in CATEGORIES}
        self.last_category = {name: np.zeros(n, np.int8) for name in CATEGORIES}
        self._series_station = np.zeros(0, np.int64)
        self._series_pollutant = np.zeros(0, np.int64)
        self.limits = AirLimits(self.stations, self.areas, POLLUTANTS)
        self._limit_lines: list[str] = []
        self._limit_events: list[AlertEvent] = []
        # Called with every batch of hourly results before they become points (the forecasts use them).
        self.hourly_listeners: list[Callable[[list[IndexValues]], None]] = []

    def _lookup(self) -> None:
        n = len(self.series)
        for sid in range(len(self._series_station), n):
            st = self._station_of.get(self.series.sensor_ids[sid], -1)
            metric = self.series.metrics[sid]
            pol = POLLUTANTS.index(metric) if st >= 0 and metric in POLLUTANTS else -1
            self._series_station = np.append(self._series_station, st if pol >= 0 else -1)
            self._series_pollutant = np.append(self._series_pollutant, pol)

    def update(self, batch: ReadingBatch) -> list[IndexValues]:
        """Feed a (series, ts)-sorted batch; the indices of every station-hour it completed or changed."""
        return self._closed(self.means.update(batch))

    def flush(self, event_time_ns: int) -> list[IndexValues]:
        """Close hours that ended before `event_time_ns` (stations that went quiet)."""
        return self._closed(self.means.flush(event_time_ns))

    def _closed(self, buckets: Buckets) -> list[IndexValues]:
        self._lookup()
        if len(buckets) == 0 or not self.stations:
            return []
        st = self._series_station[buckets.series]
        keep = st >= 0
        st, pol = st[keep], self._series_pollutant[buckets.series[keep]]
        hour, mean = buckets.start_ns[keep] // HOUR_NS, buckets.mean[keep]
        out: list[IndexValues] = []
        # Hour by hour (vectorised over stations), so that a backlog longer than the window never
        # overwrites hours that an earlier station-hour of the same backlog still needs.
        for h in np.unique(hour).tolist():
            at = hour == h
            stations = self._insert(st[at], pol[at], h, mean[at])
            if len(stations):
                out += self._compute(stations, h)
        return out

    def _insert(self, st: np.ndarray, pol: np.ndarray, h: int, mean: np.ndarray) -> np.ndarray:
        """Put hour `h`'s means in the ring; return the stations whose window took them."""
        col = h % WINDOW
        held = self.col_hour[st, col]
        fresh = h >= held  # a column holding a later hour means this one fell out of the window
        st, pol, mean, held = st[fresh], pol[fresh], mean[fresh], held[fresh]
        newer = st[h > held]
        self.hist[newer, :, col] = np.nan
        self.col_hour[st, col] = h
        self.hist[st, pol, col] = mean
        return np.unique(st)

    def _compute(self, st: np.ndarray, h: int) -> list[IndexValues]:
        hours = h - np.arange(WINDOW - 1, -1, -1)
        cols = hours % WINDOW
        valid = self.col_hour[st[:, None], cols] == hours
        window = {p: np.where(valid, self.hist[st[:, None], i, cols], np.nan) for i, p in enumerate(POLLUTANTS)}
        hour = np.full(len(st), h, np.int64)
        lines, events = self.limits.judge(st, h, window)
        self._limit_lines += lines
        self._limit_events += events
        out = []
        for name, compute in HOURLY.items():
            r = compute(window)
            out.append(IndexValues(name, st, hour, r.value[:, -1], r.category[:, -1].astype(np.int8), r.dominant[:, -1]))
        if (h + LOCAL_UTC_OFFSET_H) % 24 == 23:  # the last hour of a local day
            r = vn_aqi.vn_aqi_daily({p: w[:, -(24 + DAY_LEAD_HOURS):] for p, w in window.items()},
                                    lead_hours=DAY_LEAD_HOURS)
            out.append(IndexValues("vn_aqi_daily", st, hour - 23, r.value[:, 0], r.category[:, 0].astype(np.int8),
                                   r.dominant[:, 0]))
        return out

    # -- what the engine writes ----------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        """Points and alerts for a batch: the index stages' common interface (see the pipeline)."""
        return self._output(self.update(batch))

    def process_quiet(self, event_time_ns: int) -> tuple[list[str], list[AlertEvent]]:
        return self._output(self.flush(event_time_ns))

    def _output(self, results: list[IndexValues]) -> tuple[list[str], list[AlertEvent]]:
        for listener in self.hourly_listeners:
            listener(results)
        limit_lines, limit_events = self.take_limit_output()
        return self.lines(results) + limit_lines, self.category_changes(results) + limit_events

    def take_limit_output(self) -> tuple[list[str], list[AlertEvent]]:
        """QCVN 05 exceedance points and alerts judged since the last call."""
        out = (self._limit_lines, self._limit_events)
        self._limit_lines, self._limit_events = [], []
        return out

    def lines(self, results: list[IndexValues]) -> list[str]:
        lines = []
        for r in results:
            cats = CATEGORIES[r.index]
            for st, hour, value, cat, dom in zip(r.station.tolist(), r.hour.tolist(), r.value.tolist(),
                                                 r.category.tolist(), r.dominant.tolist()):
                if cat <= 0:
                    continue  # not enough data for a valid index this hour
                c = cats[cat - 1]
                lines.append(encode_line(
                    "indices", {"sensor": self.stations[st], "area": self.areas[st], "index": r.index},
                    {"value": value, "category": cat, "label_vi": c.label_vi, "label_en": c.label_en,
                     "dominant": dom}, hour * HOUR_NS))
        return lines

    def category_changes(self, results: list[IndexValues]) -> list[AlertEvent]:
        """Alerts for category changes, hour after hour, per station (results in time order)."""
        events = []
        for r in results:
            ok = r.category > 0
            st, hour, cat, value = r.station[ok], r.hour[ok], r.category[ok], r.value[ok]
            last_hour, last_cat = self.last_hour[r.index], self.last_category[r.index]
            current = hour >= last_hour[st]  # an hour older than one already judged does not alert
            st, hour, cat, value = st[current], hour[current], cat[current], value[current]
            prev = last_cat[st]  # one hour per result, each station once: no run within a result
            changed = np.flatnonzero((cat != prev) & (prev > 0))
            last_hour[st], last_cat[st] = hour, cat
            cats = CATEGORIES[r.index]
            for j in changed.tolist():
                new, old = cats[int(cat[j]) - 1], cats[int(prev[j]) - 1]
                events.append(AlertEvent(
                    sensor=self.stations[st[j]], domain="air", area=self.areas[st[j]], metric=r.index,
                    detector="index", level=_level(new.number), previous_level=_level(old.number),
                    value=float(value[j]), threshold=float(new.low), score=None, ts_ns=int(hour[j]) * HOUR_NS,
                    reason=f"category {old.number} -> {new.number}: {new.label_vi} / {new.label_en}"))
        return events

    # -- restart --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        snap = {f"means.{k}": v for k, v in self.means.snapshot().items()}
        snap.update({f"limits.{k}": v for k, v in self.limits.snapshot().items()})
        snap.update({"hist": self.hist, "col_hour": self.col_hour, "__stations": np.asarray(self.stations, dtype=str)})
        for name in CATEGORIES:
            snap[f"last_hour.{name}"] = self.last_hour[name]
            snap[f"last_category.{name}"] = self.last_category[name]
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.means.restore({k[len("means."):]: v for k, v in snap.items() if k.startswith("means.")})
        src, dst = remap_ids(snap["__stations"], self._station_of)
        if snap["hist"].shape[1:] == self.hist.shape[1:]:
            self.hist[dst] = snap["hist"][src]
            self.col_hour[dst] = snap["col_hour"][src]
        self.limits.restore({k[len("limits."):]: v for k, v in snap.items() if k.startswith("limits.")}, src, dst)
        for name in CATEGORIES:
            if f"last_hour.{name}" in snap:
                self.last_hour[name][dst] = snap[f"last_hour.{name}"][src]
                self.last_category[name][dst] = snap[f"last_category.{name}"][src]
