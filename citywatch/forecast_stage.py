"""Short-term forecasts and early warnings, as an index stage of the engine.

Every closed hour, in event time, feeds the forecasters (`citywatch.detectors.forecast`):

* ``aqi``: the hourly VN_AQI (``vn_aqi_hourly``) and US AQI (``us_aqi``) of each air station, as
  the air stage computes them (it hands its hourly results over through `AirIndices.hourly_listeners`;
  an hour recomputed as its last pollutant closes is a revision, not a new hour);
* ``water``: the hourly means of the water stations' probes (pH, DO, NH4, temperature, ...);
* ``traffic``: the vehicles counted per hour by each traffic camera (``flow_veh_h``).

For the series a batch moved, the forecasts for the next `horizon` hours are written to the
``forecasts`` measurement: tags sensor, area, kind, metric and horizon (hours ahead); fields value
(the median), lower and upper (the central `level` interval, absent while the series is too young
to have one) and issued_at (epoch seconds of the end of the last observed hour); the point's time
is the start of the hour forecast, so Grafana draws it on the same time axis as the observations.
Each forecast is written twice: under its horizon (1..H, to judge the forecasts made h hours
ahead) and under ``horizon = latest``, which every newer forecast of the same hour overwrites: the
newest path ahead of the observations, and behind them what was forecast last for each hour.

Early warning (``detector`` = ``forecast``): when the forecast of a series crosses a limit within
the horizon, a "forecast" alert is raised, saying when and how likely; it resolves itself (level
ok) when a later forecast no longer crosses. What must cross is the interval's bound on the side
of the limit (`bound: upper`: the upper bound for a limit from above, the lower bound for one from
below) or the median (`bound: median`). Limits:

* AQI: the category boundaries; an AQI forecast to reach category `aqi_category` (default 3,
  Kém / Unhealthy for Sensitive Groups) or above warns, at the level of the highest category
  reached (3-4 warning, 5-6 critical);
* water: the QCVN 08:2023 limits of the station's class (`indices.water_class`,
  `indices.water_class_by_station`) and the Bảng 1 health limits; a forecast crossing is a warning;
* traffic counts have no limit: forecasts only.

The likelihood ``p`` is the share of the series' past forecast errors at that horizon that would
put the value at or beyond the limit.

Options (section ``forecasts:`` of config/citywatch.yaml)::

    forecasts:
      enabled: true
      horizon: 24                   # hours ahead (1..48)
      level: 0.8                    # central prediction interval
      bound: upper                  # upper | median: what must cross a limit to warn
      aqi_category: 3               # warn when an AQI is forecast to reach this category
      models: {aqi: holt_winters, water: holt_winters, traffic: ar_deseasonalised}  # or combination
      holt_winters: {}              # parameters, see citywatch/detectors/forecast/holt_winters.py
      ar_deseasonalised: {}         # parameters, see citywatch/detectors/forecast/ar_deseasonalised.py
      combination: {}               # parameters, see citywatch/detectors/forecast/combination.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from citywatch.air_indices import CATEGORIES as AQI_CATEGORIES
from citywatch.air_indices import HOUR_NS, LOCAL_UTC_OFFSET_H, AirIndices, IndexValues
from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.config import ConfigError, ForecastsConfig, IndicesConfig
from citywatch.detectors.bucket_means import BucketMeans, Buckets
from citywatch.detectors.forecast import Forecaster, SeriesKeys, build_forecaster
from citywatch.detectors.indices import us_aqi, vn_aqi
from citywatch.registry import SeriesIndex
from citywatch.sinks.line_protocol import encode_line
from citywatch.water_index import LAB_METRICS, qcvn08_bounds

__all__ = ["ForecastStage", "DEFAULT_MODELS"]

DEFAULT_MODELS = {"aqi": "holt_winters", "water": "holt_winters", "traffic": "ar_deseasonalised"}
AQI_INDICES = {"vn_aqi_hourly": vn_aqi.vn_aqi_category, "us_aqi": us_aqi.us_aqi_category}
TRAFFIC_METRIC = "flow_veh_h"
LATEST = "latest"  # the horizon tag of the newest forecast of each hour
LEVELS = ("ok", "warning", "critical")
_LOCAL = timezone(timedelta(hours=LOCAL_UTC_OFFSET_H))


def _aqi_level(category: int) -> int:
    return 2 if category >= 5 else 1


@dataclass
class _Kind:
    """The forecaster of one kind of series, its keys and per-key attributes."""

    name: str
    domain: str
    keys: SeriesKeys
    forecaster: Forecaster
    areas: list[str] = field(default_factory=list)
    low: list[float] = field(default_factory=list)  # water limits (NaN: none)
    high: list[float] = field(default_factory=list)
    alert_level: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    def add(self, sensor: str, metric: str, area: str, low: float = np.nan, high: float = np.nan) -> None:
        self.keys.add(sensor, metric)
        self.areas.append(area)
        self.low.append(low)
        self.high.append(high)
        self.alert_level = np.append(self.alert_level, np.int8(0))


class ForecastStage:
    def __init__(self, series: SeriesIndex, config: ForecastsConfig, indices: IndicesConfig | None = None,
                 air: AirIndices | None = None) -> None:
        self.series = series
        self.config = config
        indices = indices or IndicesConfig()
        models = {**DEFAULT_MODELS, **config.models}
        params = {"holt_winters": dict(config.holt_winters), "ar_deseasonalised": dict(config.ar_deseasonalised),
                  "combination": dict(config.combination)}
        if "order" in params["ar_deseasonalised"]:
            params["ar_deseasonalised"]["order"] = int(params["ar_deseasonalised"]["order"])
        if "min_evidence" in params["combination"]:
            params["combination"]["min_evidence"] = int(params["combination"]["min_evidence"])

        def make(kind: str) -> _Kind:
            keys = SeriesKeys()
            p = dict(params.get(models[kind], {}))
            if kind == "traffic" and models[kind] == "holt_winters":
                p.setdefault("omega", 0.1)  # traffic has a week; the backtest picked 0.1
            try:
                f = build_forecaster(models[kind], keys, horizon=config.horizon, level=config.level, **p)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"forecasts: {models[kind]} for {kind}: {exc}") from None
            return _Kind(kind, {"aqi": "air", "water": "water", "traffic": "traffic"}[kind], keys, f)

        self.kinds = {k: make(k) for k in ("aqi", "water", "traffic")}
        registry = series.registry
        aqi = self.kinds["aqi"]
        self.air = air
        if air is not None:
            for st, area in zip(air.stations, air.areas):
                for index in AQI_INDICES:
                    aqi.add(st, index, area)
            air.hourly_listeners.append(self._take_air)
        classes = indices.water_class_by_station
        water = self.kinds["water"]
        traffic = self.kinds["traffic"]
        for s in registry.by_domain("water"):
            for m in s.metrics:
                if m in LAB_METRICS:
                    continue
                lo, hi = qcvn08_bounds(m, classes.get(s.id, indices.water_class))
                water.add(s.id, m, s.area, np.nan if lo is None else lo, np.nan if hi is None else hi)
        for s in registry.by_domain("traffic"):
            if "intensity" in s.metrics:
                traffic.add(s.id, TRAFFIC_METRIC, s.area)
        self.means = BucketMeans(series)
        self._series_kind = np.zeros(0, np.int8)  # 0 none, 1 water, 2 traffic
        self._series_key = np.zeros(0, np.int64)
        self._air_results: list[IndexValues] = []
        self.ignored_hours = 0

    # -- inputs ----------------------------------------------------------------------------------
    def _take_air(self, results: list[IndexValues]) -> None:
        self._air_results += [r for r in results if r.index in AQI_INDICES]

    def _lookup(self) -> None:
        kinds, keys = [], []
        water, traffic = self.kinds["water"].keys, self.kinds["traffic"].keys
        for sid in range(len(self._series_kind), len(self.series)):
            sensor, metric = self.series.sensor_ids[sid], self.series.metrics[sid]
            w = water.get(sensor, metric)
            t = traffic.get(sensor, TRAFFIC_METRIC) if metric == "intensity" else None
            kinds.append(1 if w is not None else 2 if t is not None else 0)
            keys.append(w if w is not None else t if t is not None else -1)
        if kinds:
            self._series_kind = np.append(self._series_kind, np.asarray(kinds, np.int8))
            self._series_key = np.append(self._series_key, np.asarray(keys, np.int64))

    # -- the index stage interface ---------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        return self._run(self.means.update(batch))

    def process_quiet(self, event_time_ns: int) -> tuple[list[str], list[AlertEvent]]:
        return self._run(self.means.flush(event_time_ns))

    def _run(self, buckets: Buckets) -> tuple[list[str], list[AlertEvent]]:
        self._lookup()
        touched: dict[str, set[int]] = {k: set() for k in self.kinds}
        results, self._air_results = self._air_results, []
        aqi = self.kinds["aqi"]
        for r in results:
            ids = np.array([aqi.keys.get(self.air.stations[s], r.index) for s in r.station.tolist()], np.int64)
            self._update(aqi, ids, r.hour, r.value, touched)
        if len(buckets):
            kind = self._series_kind[buckets.series]
            key = self._series_key[buckets.series]
            hour = buckets.start_ns // HOUR_NS
            for code, name in ((1, "water"), (2, "traffic")):
                at = kind == code
                if not at.any():
                    continue
                value = buckets.mean[at] * (buckets.count[at] if name == "traffic" else 1)
                k, h = key[at], hour[at]
                for hr in np.unique(h).tolist():
                    sel = h == hr
                    self._update(self.kinds[name], k[sel], h[sel], value[sel], touched)
        lines: list[str] = []
        events: list[AlertEvent] = []
        for name, ids in touched.items():
            if ids:
                self._emit(self.kinds[name], np.asarray(sorted(ids), np.int64), lines, events)
        return lines, events

    def _update(self, kind: _Kind, ids: np.ndarray, hours: np.ndarray, values: np.ndarray,
                touched: dict[str, set[int]]) -> None:
        f = kind.forecaster
        before = f.ignored
        f.update(ids, hours, values)
        self.ignored_hours += f.ignored - before
        touched[kind.name].update(ids[np.isfinite(values)].tolist())

    # -- outputs ---------------------------------------------------------------------------------
    def _emit(self, kind: _Kind, ids: np.ndarray, lines: list[str], events: list[AlertEvent]) -> None:
        f = kind.forecaster
        lo, hi = self._physical_range(kind, ids)
        # an index or a concentration is never forecast below zero (or beyond its physical range)
        median, lower, upper = (np.clip(a, lo[:, None], hi[:, None]) for a in f.forecast(ids))
        # The interval comes from the series' own past errors: for a model biased one way it can miss
        # the point forecast, which is drawn inside it; widen it to hold the forecast.
        lower, upper = np.minimum(lower, median), np.maximum(upper, median)  # NaN (no interval yet) stays
        last = f.latest_hour(ids)
        H = f.horizon
        issued_s = (last + 1) * 3600
        for i, key in enumerate(ids.tolist()):
            sensor, metric = kind.keys.sensor_ids[key], kind.keys.metrics[key]
            tags = {"sensor": sensor, "area": kind.areas[key], "kind": kind.name, "metric": metric}
            for k in range(H):
                v = median[i, k]
                if not np.isfinite(v):
                    continue
                fields: dict[str, object] = {"value": float(v), "issued_at": int(issued_s[i])}
                if np.isfinite(lower[i, k]) and np.isfinite(upper[i, k]):
                    fields["lower"], fields["upper"] = float(lower[i, k]), float(upper[i, k])
                target = int(last[i] + k + 1) * HOUR_NS
                lines.append(encode_line("forecasts", {**tags, "horizon": str(k + 1)}, fields, target))
                lines.append(encode_line("forecasts", {**tags, "horizon": LATEST}, fields, target))
        if kind.name == "aqi":
            self._aqi_warnings(kind, ids, median, lower, upper, last, events)
        elif kind.name == "water":
            self._water_warnings(kind, ids, median, lower, upper, last, events)

    def _bound(self, median: np.ndarray, side: np.ndarray) -> np.ndarray:
        return median if self.config.bound == "median" else side

    @staticmethod
    def _local(hour: int) -> str:
        return datetime.fromtimestamp(hour * 3600, tz=_LOCAL).strftime("%H:%M %d/%m")

    def _physical_range(self, kind: _Kind, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key: the registry's physical min/max of its metric (AQI: 0 to 500); +-inf where none."""
        lo, hi = np.full(len(ids), -np.inf), np.full(len(ids), np.inf)
        for i, key in enumerate(ids.tolist()):
            if kind.name == "aqi":
                lo[i], hi[i] = 0.0, 500.0
                continue
            sid = self.series.get(kind.keys.sensor_ids[key], kind.keys.metrics[key])
            if sid is not None:
                lo[i] = np.nan_to_num(self.series.physical_min[sid], nan=-np.inf)
                hi[i] = np.nan_to_num(self.series.physical_max[sid], nan=np.inf)
        return lo, hi

    def _aqi_warnings(self, kind: _Kind, ids: np.ndarray, median: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      last: np.ndarray, events: list[AlertEvent]) -> None:
        bound = self._bound(median, upper)
        for index, category_of in AQI_INDICES.items():
            rows = np.flatnonzero(np.array([kind.keys.metrics[k] == index for k in ids.tolist()]))
            if not len(rows):
                continue
            cats = category_of(np.round(np.where(np.isfinite(bound[rows]), bound[rows], np.nan)))
            top = cats.max(axis=1)
            crossing = top >= self.config.aqi_category
            level = np.where(crossing, [_aqi_level(int(c)) for c in top], 0).astype(np.int8)
            labels = AQI_CATEGORIES[index]
            for j in np.flatnonzero(level != kind.alert_level[ids[rows]]).tolist():
                key, row = int(ids[rows[j]]), int(rows[j])
                prev = int(kind.alert_level[key])
                if crossing[j]:
                    cat = labels[int(top[j]) - 1]
                    k = int(np.argmax(cats[j] >= top[j]))
                    p = kind.forecaster.exceedance_probability(np.array([key]), np.array([float(cat.low)]))[0, k]
                    reason = (f"{index} forecast to reach category {cat.number} ({cat.label_vi} / {cat.label_en}) "
                              f"at {self._local(int(last[row]) + k + 1)}" + (f", p≈{p:.1f}" if np.isfinite(p) else ""))
                    value, threshold, score = float(bound[row, k]), float(cat.low), None if not np.isfinite(p) else float(p)
                else:
                    reason = f"{index} no longer forecast to reach category {self.config.aqi_category}"
                    value, threshold, score = float(median[row, 0]), None, None
                events.append(self._event(kind, key, int(level[j]), prev, value, threshold, score, int(last[row]), reason))
                kind.alert_level[key] = level[j]

    def _water_warnings(self, kind: _Kind, ids: np.ndarray, median: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                        last: np.ndarray, events: list[AlertEvent]) -> None:
        low = np.asarray(kind.low)[ids]
        high = np.asarray(kind.high)[ids]
        judged = np.isfinite(low) | np.isfinite(high)
        if not judged.any():
            return
        up, down = self._bound(median, upper), self._bound(median, lower)
        with np.errstate(invalid="ignore"):
            above = up >= high[:, None]
            below = down <= low[:, None]
        cross = above | below
        level = np.where(cross.any(axis=1) & judged, 1, 0).astype(np.int8)
        for j in np.flatnonzero(level != kind.alert_level[ids]).tolist():
            key = int(ids[j])
            metric = kind.keys.metrics[key]
            prev = int(kind.alert_level[key])
            if level[j]:
                k = int(np.argmax(cross[j]))
                is_above = bool(above[j, k])
                limit = float(high[j] if is_above else low[j])
                p = kind.forecaster.exceedance_probability(np.array([key]), np.array([limit]), is_above)[0, k]
                value = float(up[j, k] if is_above else down[j, k])
                reason = (f"{metric} forecast {'above' if is_above else 'below'} the QCVN 08:2023 limit {limit:g} "
                          f"at {self._local(int(last[j]) + k + 1)}" + (f", p≈{p:.1f}" if np.isfinite(p) else ""))
                events.append(self._event(kind, key, 1, prev, value, limit, float(p) if np.isfinite(p) else None,
                                          int(last[j]), reason))
            else:
                events.append(self._event(kind, key, 0, prev, float(median[j, 0]), None, None, int(last[j]),
                                          f"{metric} no longer forecast to cross the QCVN 08:2023 limits"))
            kind.alert_level[key] = level[j]

    def _event(self, kind: _Kind, key: int, level: int, previous: int, value: float, threshold: float | None,
               score: float | None, last_hour: int, reason: str) -> AlertEvent:
        if not np.isfinite(value):
            value = 0.0  # defensive: InfluxDB cannot store a NaN field (the median of h = 1 is always known)
        return AlertEvent(
            sensor=kind.keys.sensor_ids[key], domain=kind.domain, area=kind.areas[key], metric=kind.keys.metrics[key],
            detector="forecast", level=LEVELS[level], previous_level=LEVELS[previous], value=value,
            threshold=threshold, score=score, ts_ns=(last_hour + 1) * HOUR_NS, reason=reason)

    # -- restart ---------------------------------------------------------------------------------
    @staticmethod
    def _model_id(f: Forecaster) -> str:
        return f"{f.name}/h{f.horizon}/k{f.error_window}"

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = {f"means.{k}": v for k, v in self.means.snapshot().items()}
        for name, kind in self.kinds.items():
            snap.update({f"{name}.{k}": v for k, v in kind.forecaster.snapshot().items()})
            snap[f"{name}.alert_level"] = kind.alert_level.copy()
            snap[f"{name}.__model"] = np.asarray(self._model_id(kind.forecaster))
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.means.restore({k[len("means."):]: v for k, v in snap.items() if k.startswith("means.")})
        for name, kind in self.kinds.items():
            part = {k[len(name) + 1:]: v for k, v in snap.items() if k.startswith(name + ".")}
            if "__sensor" not in part or str(part.get("__model", "")) != self._model_id(kind.forecaster):
                continue  # another model, horizon or error window than the saved one: start afresh
            kind.forecaster.restore({k: v for k, v in part.items() if k not in ("alert_level", "__model")})
            if "alert_level" in part:
                src, dst = kind.keys.remap(part)
                kind.alert_level[dst] = part["alert_level"][src]
