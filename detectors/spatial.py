"""Spatial: a lone deviation is a suspect sensor; the same deviation on the neighbours is an area event.

Each reading is first compared with its own series' recent baseline, then with what its neighbours
(same metric, same domain, nearby: `NeighbourGraph`) are doing at the same moment:

* *own deviation*: a robust z-score ``z = (x - mean) / scale`` against an exponentially weighted
  mean and variance of the series, in event time with half-life ``half_life``. Deviations are
  clipped at ``winsor_z`` scales before they are learned (from the second reading on: a fault
  during the warm-up must not inflate the scale for hours), and while a reading deviates
  (``|z| >= z_warn``) it is learned ``alarm_learning`` times more slowly, so an event does not
  become the baseline while it lasts. The scale is at least ``min_scale_fraction`` of the metric's
  physical range (or the metric's entry in ``min_scale``) and ``min_scale_level_fraction`` of the
  baseline level (a saturated series, e.g. humidity pinned at 99 %, has almost no variance).
  Count metrics (``count_metrics``) are first put through the Anscombe transform
  ``2 * sqrt(x + 3/8)`` (about unit variance for Poisson counts; their scale is at least 1).
  A series is evaluated once it has learned ``warmup`` readings;
* *the neighbours' deviations*: for every neighbour, its latest z at or before the reading's event
  time (from the same batch or from the state carried over), ignored if older (in event time)
  than ``max_age`` or two of the sensor's reporting intervals, whichever is longer, or if the
  neighbour is not warmed up. A neighbour *supports* the reading when its z has the same sign
  and ``|z| >= max(support_z, support_ratio * |z of the reading|)``: neighbours moving a little
  do not explain a huge jump.

A reading with ``|z| >= z_warn`` (WARNING; CRITICAL from ``z_crit``) is then:

* ``area_event`` when at least ``max(min(min_support, available), ceil(support_fraction *
  available))`` of its available neighbours support it (a sensor at the rim of an event has
  neighbours outside it, hence a fraction well below one half): something real is happening
  around the sensor. `area_events()` lists, for the last batch, each such reading with the
  sensors involved (the sensor and its supporting neighbours) and the sensor's registry area;
* ``sensor_suspect`` when it has available neighbours but too few support it: the sensor alone
  sees it;
* ``no_neighbours`` when no neighbour is available (none within the radius, or none recent).

A deviation lasts until ``|z|`` falls below ``reset_fraction`` (0.75) of ``z_warn`` (WARNING
meanwhile), and while it lasts an ``area_event`` turns ``sensor_suspect`` only after ``area_hold``
(3) readings in a row say so: a deviation hovering around ``z_warn``, or neighbours hovering around
the support bar, are one situation, not an alert every few readings.

Otherwise OK. Score in [0, 1]: 0.5 * |z| / z_warn below z_warn, then linear to 1.0 at z_crit.
Output `threshold`: the baseline mean the reading was compared with (in the metric's unit).

Not evaluated and not learned: LATE/DUPLICATE rows, NaN values, skipped rows, series whose metric
is not in ``metrics`` (by default the pollutants and the water-quality metrics the simulator
scenarios validate: ``pm25``, ``pm10``, ``no2``, ``dissolvedOxygen``, ``turbidity``). Warm-up rows are learned but not evaluated.

Vectorised: the readings of a batch are taken in rounds, the k-th reading of every series in round
k (a live micro-batch has one or two per series), and the neighbour look-up is one
``searchsorted`` over the batch for the whole (readings x neighbours) matrix. State per series:
six numbers (44 bytes).

Sample configuration: see `SAMPLE_CONFIG`.

Examples
--------
Four PM2.5 sensors within a few hundred metres of each other, a minute apart, quiet for an hour:

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> pm = {"pm25": MetricSpec(unit="ug/m3", min=0, max=1000)}
>>> sensors = [Sensor(id=f"aq-{i}", domain="air", area="Trung Dũng", lat=10.95 + 0.002 * i, lon=106.82,
...                   interval=60, metrics=pm) for i in range(4)]
>>> series = SeriesIndex(Registry({s.id: s for s in sensors}))
>>> series.add_registry()
>>> det = SpatialDetector(series)
>>> rng = np.random.default_rng(3)
>>> minute = 60 * 10**9
>>> def batch(minutes, offsets):
...     sid = np.repeat(np.arange(4), len(minutes))
...     ts = np.tile(np.asarray(minutes) * minute, 4)   # synchronised clocks
...     value = 30 + rng.normal(0, 2, len(sid)) + np.repeat(offsets, len(minutes))
...     return ReadingBatch.from_columns(sid, ts, value)
>>> _ = det.process(batch(range(60), [0, 0, 0, 0]))

Sensor 0 alone jumps by 40 µg/m³: a suspect sensor. Then all four rise by 40: an area event.

>>> out = det.process(batch([60], [40, 0, 0, 0]))
>>> det.reason_names(out.reason).tolist(), out.level.tolist()
(['sensor_suspect', 'ok', 'ok', 'ok'], [2, 0, 0, 0])
>>> out = det.process(batch([61], [40, 40, 40, 40]))
>>> det.reason_names(out.reason).tolist()
['area_event', 'area_event', 'area_event', 'area_event']
>>> det.area_events()[3]["sensors"], det.area_events()[3]["area"]
(['aq-3', 'aq-2', 'aq-1', 'aq-0'], 'Trung Dũng')

A deviation lasts until it falls below 0.75 z_warn: sensor 0 alone jumps by 40, then reads 14 high
(about 5.6 and 5.9 scales, under z_warn) and then normal: one alert, not three.

>>> det = SpatialDetector(series)
>>> rng = np.random.default_rng(3)
>>> _ = det.process(batch(range(60), [0, 0, 0, 0]))
>>> [int(det.process(batch([60 + k], [off, 0, 0, 0])).level[0]) for k, off in enumerate([40, 14, 14, 0])]
[2, 1, 1, 0]

Causality has a cost: a reading is compared with what its neighbours had reported *by its event
time*. When an area changes suddenly, the sensors that report first still see their neighbours'
old readings and come out as ``sensor_suspect``; the neighbours reporting after them see the
change and come out as ``area_event``. Real events (episodes, rain) usually build up over several
readings, so the neighbours have started to move when the first sensor crosses ``z_warn``.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from citywatch.batch import ReadingBatch, last_index_where
from citywatch.config import Duration, StrictModel
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput
from citywatch.detectors.neighbours import NeighbourConfig, NeighbourGraph, latest_neighbour_values
from citywatch.registry import SeriesIndex

__all__ = ["SpatialDetector", "SpatialConfig", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  spatial:
    metrics: [pm25, no2, dissolvedOxygen, turbidity]   # the default; null = every metric (not
                                  # advised: occupancy and speeds are far from Gaussian and flood)
    neighbours:
      radius_km: 3.0              # same-metric sensors of the same domain within this distance
      k: 8                        # at most this many, nearest first
    half_life: 30m                # memory of a series' own baseline (event time)
    warmup: 30                    # readings before a series is evaluated
    z_warn: 6.0                   # |robust z| for a warning (real noise has heavier tails than Gaussian)
    z_crit: 12.0                  # ... and for critical
    support_z: 2.0                # a neighbour deviating the same way by this much supports an area event,
    support_ratio: 0.2            # ... and by at least this fraction of the reading's own |z|
    min_support: 2                # area event: at least this many supporting neighbours (or all there are)
    support_fraction: 0.3         # ... and at least this fraction of the available neighbours
    max_age: 10m                  # a neighbour's latest reading older than this (or than two of the
                                  # sensor's reporting intervals, if longer) is not used
    winsor_z: 3.0                 # deviations are clipped at this many scales before being learned
    alarm_learning: 0.1           # learning rate factor while a reading deviates
    count_metrics: [intensity]    # Anscombe-transformed counts
    min_scale_fraction: 0.002     # smallest scale, as a fraction of the physical range ...
    min_scale_level_fraction: 0.01   # ... and of the baseline level (saturated, nearly constant series)
    min_scale: {}                 # per-metric smallest scale in the metric's unit, e.g. {pm25: 2.0}
    area_hold: 3                  # an area event turns "sensor suspect" after this many such readings in a row
    reset_fraction: 0.75          # a deviation lasts until |z| falls below this fraction of z_warn
"""

REASON_OK = 0
REASON_SENSOR_SUSPECT = 1
REASON_AREA_EVENT = 2
REASON_NO_NEIGHBOURS = 3

_LN2 = math.log(2.0)
_CLIP_FROM = 2  # readings learned before deviations are clipped


# PM10 is left out by default: at a station it follows its own PM2.5 closely (an area event shows in
# PM2.5 as well), and its dust-driven, multiplicative noise made lone PM10 deviations the largest
# source of false "sensor suspect" alerts on simulated data.
DEFAULT_METRICS = ["pm25", "no2", "dissolvedOxygen", "turbidity"]


class SpatialConfig(StrictModel):
    metrics: list[str] | None = Field(default_factory=lambda: list(DEFAULT_METRICS))
    neighbours: NeighbourConfig = Field(default_factory=NeighbourConfig)
    half_life: Duration = 1800.0
    scale_half_life: Duration = 21600.0
    warmup: int = Field(default=30, ge=2)
    z_warn: float = Field(default=6.0, gt=0)
    z_crit: float = Field(default=12.0, gt=0)
    support_z: float = Field(default=2.0, gt=0)
    support_ratio: float = Field(default=0.2, ge=0, le=1)
    min_support: int = Field(default=2, ge=1)
    support_fraction: float = Field(default=0.3, gt=0, le=1)
    max_age: Duration = 600.0
    winsor_z: float = Field(default=3.0, gt=0)
    alarm_learning: float = Field(default=0.1, ge=0, le=1)
    count_metrics: list[str] = Field(default_factory=lambda: ["intensity"])
    min_scale_fraction: float = Field(default=0.002, ge=0)
    min_scale_level_fraction: float = Field(default=0.01, ge=0)
    min_scale: dict[str, float] = Field(default_factory=dict)
    area_hold: int = Field(default=3, ge=1)
    reset_fraction: float = Field(default=0.75, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> "SpatialConfig":
        if self.z_crit <= self.z_warn:
            raise ValueError(f"z_crit ({self.z_crit}) must be above z_warn ({self.z_warn})")
        if self.half_life <= 0 or self.scale_half_life <= 0:
            raise ValueError("half_life and scale_half_life must be positive")
        return self


def anscombe(x: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(x, 0.0) + 0.375)


def _inverse_anscombe(y: np.ndarray) -> np.ndarray:
    return (y / 2.0) ** 2 - 0.375


class SpatialDetector(Detector):
    """Lone deviation (sensor suspect) vs coherent deviation (area event); see the module docstring.

    `graph`: a `NeighbourGraph` over the same series index to share with other detectors; by
    default one is built from ``config.neighbours``.
    """

    name = "spatial"
    reasons = ("ok", "sensor_suspect", "area_event", "no_neighbours")
    alert_on_reason_change = True  # "sensor suspect" and "area event" go to different people
    state_fields = {
        "mean": (np.float64, np.nan),
        "var": (np.float64, 0.0),
        "n": (np.int32, 0),
        "ts": (np.int64, 0),  # event time of the last reading learned
        "z": (np.float64, np.nan),  # the latest evaluated deviation ...
        "z_ts": (np.int64, 0),  # ... and its event time
        "shown": (np.int16, REASON_OK),  # the reason reported for the deviation in progress ...
        "doubt": (np.int32, 0),  # ... and how many readings in a row have since looked like a lone sensor
    }

    def __init__(self, series: SeriesIndex, config: SpatialConfig | None = None,
                 graph: NeighbourGraph | None = None) -> None:
        self.config = config or SpatialConfig()
        self.graph = graph if graph is not None else NeighbourGraph(series, self.config.neighbours)
        self._applies = np.zeros(0, bool)
        self._is_count = np.zeros(0, bool)
        self._floor = np.zeros(0)
        self._max_age_ns = np.zeros(0, np.int64)
        self._last_area_sid = np.zeros(0, np.int64)
        self._last_area_ts = np.zeros(0, np.int64)
        self._last_area_nb = np.zeros((0, self.graph.k), np.int64)
        self._last_area_support = np.zeros((0, self.graph.k), bool)
        super().__init__(series)

    def _on_new_series(self, start: int, stop: int) -> None:
        self.graph.update()
        cap = self._capacity

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros(cap, a.dtype)
            out[: len(a)] = a[:cap]
            return out

        self._applies, self._is_count, self._floor = grown(self._applies), grown(self._is_count), grown(self._floor)
        self._max_age_ns = grown(self._max_age_ns)
        cfg = self.config
        wanted = None if cfg.metrics is None else set(cfg.metrics)
        counts = set(cfg.count_metrics)
        reg = self.series.registry
        for sid in range(start, stop):
            metric = self.series.metrics[sid]
            self._applies[sid] = wanted is None or metric in wanted
            sensor = reg.get(self.series.sensor_ids[sid])
            interval = float(sensor.interval) if sensor is not None and sensor.interval else 0.0
            self._max_age_ns[sid] = int(round(max(cfg.max_age, 2 * interval) * 1e9))
            self._is_count[sid] = metric in counts
            if self._is_count[sid]:
                self._floor[sid] = max(1.0, cfg.min_scale.get(metric, 0.0))
                continue
            lo, hi = self.series.physical_min[sid], self.series.physical_max[sid]
            rng = hi - lo if np.isfinite(lo) and np.isfinite(hi) else 0.0
            self._floor[sid] = max(cfg.min_scale.get(metric, cfg.min_scale_fraction * rng), 1e-9)

    def area_events(self) -> list[dict]:
        """The area events of the last batch processed, one per reading reported as ``area_event``:
        its sensor, metric, event time (ns), registry area, and the sensors involved (the sensor
        first, then its supporting neighbours, nearest first)."""
        ids, areas = self.series.sensor_ids, self.series.areas
        out = []
        for sid, ts, nb, sup in zip(self._last_area_sid.tolist(), self._last_area_ts.tolist(),
                                    self._last_area_nb, self._last_area_support):
            out.append({"sensor": ids[sid], "metric": self.series.metrics[sid], "ts": ts, "area": areas[sid],
                        "sensors": [ids[sid]] + [ids[j] for j in nb[sup].tolist()]})
        return out

    def _deviations(self, batch: ReadingBatch, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each active row's z against its series' baseline before it, learning row by row in order.

        Returns (z, expected value in the metric's unit); NaN where not evaluated."""
        cfg = self.config
        n = len(batch)
        sid, ts = batch.series, batch.ts
        z = np.full(n, np.nan)
        expected = np.full(n, np.nan)
        rows = np.flatnonzero(active)
        if len(rows) == 0:
            return z, expected
        is_count = self._is_count[sid]
        y = np.where(is_count, anscombe(batch.value), batch.value)
        s_rows = sid[rows]
        new = np.ones(len(rows), bool)
        new[1:] = s_rows[1:] != s_rows[:-1]
        rank = np.arange(len(rows)) - np.maximum.accumulate(np.where(new, np.arange(len(rows)), 0))
        by_rank = rows[np.argsort(rank, kind="stable")]
        bounds = np.concatenate(([0], np.cumsum(np.bincount(rank))))
        st = self.state
        decay_m, decay_v = _LN2 / cfg.half_life, _LN2 / cfg.scale_half_life
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            r = by_rank[lo:hi]
            s = sid[r]
            m, v, cnt = st["mean"][s], st["var"][s], st["n"][s].astype(np.int64)
            level_floor = np.where(is_count[r] | (cnt == 0), 0.0, cfg.min_scale_level_fraction * np.abs(m))
            scale = np.sqrt(np.maximum(v, np.maximum(self._floor[s], level_floor) ** 2))
            dev = np.where(cnt > 0, y[r] - m, 0.0)
            zr = dev / scale
            evaluated = cnt >= cfg.warmup
            z[r] = np.where(evaluated, zr, np.nan)
            expected[r] = np.where(evaluated, m, np.nan)
            dt = np.maximum(ts[r] - st["ts"][s], 0) / 1e9
            first = 1.0 / (cnt + 1)
            slow = np.where(evaluated & (np.abs(zr) >= cfg.z_warn), cfg.alarm_learning, 1.0)
            a_m = np.maximum(-np.expm1(-decay_m * dt), first) * slow
            a_v = np.maximum(-np.expm1(-decay_v * dt), first) * slow
            # Clipped once a few readings give a first scale (a fault during the warm-up must not
            # inflate the scale for hours).
            d = np.where(cnt >= _CLIP_FROM, np.clip(dev, -cfg.winsor_z * scale, cfg.winsor_z * scale), dev)
            st["mean"][s] = np.where(cnt == 0, y[r], m + a_m * d)
            st["var"][s] = np.where(cnt == 0, 0.0, (1 - a_v) * (v + a_v * d * d))
            st["n"][s] = np.minimum(cnt + 1, np.iinfo(np.int32).max)
            st["ts"][s] = ts[r]
        expected = np.where(is_count, _inverse_anscombe(expected), expected)
        return z, expected

    def _neighbour_z(self, batch: ReadingBatch, z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows) x k) the neighbours' latest z at or before each row's time; NaN if none/too old."""
        return latest_neighbour_values(self.graph, batch.series, batch.ts, z, rows, self.state["z"],
                                       self.state["z_ts"], self._max_age_ns)

    def _hysteresis(self, sid: np.ndarray, az: np.ndarray, level: np.ndarray, reason: np.ndarray,
                    supported: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The levels and reasons reported, given those found for the (series, ts)-sorted evaluated
        rows: a deviation lasts until |z| falls below `reset_fraction` x z_warn, and during it an area
        event becomes a suspect sensor only after `area_hold` readings in a row say so (the
        neighbours' deviations hover around the support bar); anything else changes at once."""
        cfg = self.config
        lasting = (level == LEVEL_OK) & (az >= cfg.reset_fraction * cfg.z_warn)
        # readings between the reset and the warning level: classified too, in case the deviation goes on
        found = np.where(available == 0, REASON_NO_NEIGHBOURS,
                         np.where(supported, REASON_AREA_EVENT, REASON_SENSOR_SUSPECT))
        reason = np.where(lasting, found, reason)
        out = reason.copy()
        level = level.copy()
        if len(sid) == 0:
            return level, out
        new = np.ones(len(sid), bool)
        new[1:] = sid[1:] != sid[:-1]
        rank = np.arange(len(sid)) - np.maximum.accumulate(np.where(new, np.arange(len(sid)), 0))
        shown, doubt = self.state["shown"], self.state["doubt"]
        hold = self.config.area_hold
        for r in range(int(rank.max()) + 1):
            at = np.flatnonzero(rank == r)
            s = sid[at]
            # a reading between the reset and the warning level continues a deviation, or is ok
            goes_on = lasting[at] & (shown[s] != REASON_OK)
            found = np.where(lasting[at] & ~goes_on, REASON_OK, reason[at])
            level[at] = np.where(goes_on, LEVEL_WARNING, level[at])
            doubting = (shown[s] == REASON_AREA_EVENT) & (found == REASON_SENSOR_SUSPECT)
            d = np.where(doubting, doubt[s] + 1, 0)
            keep = doubting & (d < hold)
            out[at] = np.where(keep, REASON_AREA_EVENT, found)
            shown[s] = out[at]
            doubt[s] = np.where(keep, d, 0)
        return level, out

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        cfg = self.config
        n = len(batch)
        sid = batch.series
        if n > 1 and np.any(sid[1:] < sid[:-1]):
            raise ValueError("the batch must be sorted by (series, ts): use ReadingBatch.sorted_by_series_time()")
        active = self.in_order(batch) & ~np.isnan(batch.value) & self._applies[sid]
        z, expected = self._deviations(batch, active)
        out = DetectorOutput.not_evaluated(n)
        rows = np.flatnonzero(np.isfinite(z))
        zn = self._neighbour_z(batch, z, rows)

        zr = z[rows]
        az = np.abs(zr)
        available = np.isfinite(zn).sum(axis=1)
        # A neighbour supports when it deviates the same way, by at least support_z and by a
        # comparable amount (a huge spike is not explained by neighbours moving a little).
        bar = np.maximum(cfg.support_z, cfg.support_ratio * az)[:, None]
        support_mask = np.isfinite(zn) & (np.sign(zn) == np.sign(zr)[:, None]) & (np.abs(zn) >= bar)
        support = support_mask.sum(axis=1)
        needed = np.maximum(np.minimum(cfg.min_support, available), np.ceil(cfg.support_fraction * available))
        deviating = az >= cfg.z_warn
        level = np.where(az >= cfg.z_crit, LEVEL_CRITICAL, np.where(deviating, LEVEL_WARNING, LEVEL_OK))
        reason = np.where(
            ~deviating, REASON_OK,
            np.where(available == 0, REASON_NO_NEIGHBOURS,
                     np.where(support >= needed, REASON_AREA_EVENT, REASON_SENSOR_SUSPECT)))
        level, reason = self._hysteresis(sid[rows], az, level, reason, support >= needed, available)
        out.level[rows] = level
        out.reason[rows] = reason
        out.score[rows] = np.where(az < cfg.z_warn, 0.5 * az / cfg.z_warn,
                                   0.5 + 0.5 * np.clip((az - cfg.z_warn) / (cfg.z_crit - cfg.z_warn), 0.0, 1.0))
        out.threshold[rows] = expected[rows]

        is_area = reason == REASON_AREA_EVENT
        self._last_area_sid, self._last_area_ts = sid[rows][is_area].astype(np.int64), batch.ts[rows][is_area]
        self._last_area_nb, self._last_area_support = self.graph.index[sid[rows][is_area]], support_mask[is_area]
        # Carry each series' latest evaluated deviation to the next batch.
        last = batch.is_last
        at = last_index_where(np.isfinite(z), batch.group_start)[last]
        ok = at >= 0
        self.state["z"][sid[last][ok]] = z[at[ok]]
        self.state["z_ts"][sid[last][ok]] = batch.ts[at[ok]]
        return out
