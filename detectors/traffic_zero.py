"""Traffic zero counts: a true zero (03:00 on a side street) or a dead camera (08:00 on a main road)?

A traffic camera that has died, is blinded or lost its video analytics usually goes on reporting,
and reports zero vehicles. A zero is only suspicious when traffic was expected. This detector keeps
a `SeasonalBaseline` of the vehicle counts (its own instance, learning the same way as the seasonal
detector: per local time-of-day bin and day type) and, for every zero reading, asks how likely a
zero was:

* the expected count ``mu`` is the bin's learned mean, but never less than the road-class floor in
  the daytime (``daytime_floor_per_minute`` by the registry's ``road_class``, between
  ``daytime_hours`` local time, scaled to the sensor's reporting interval): a main road is never
  empty at 08:00, so neither a bin still warming up nor a baseline that has learned the zeros of a
  camera that died weeks ago can excuse a zero there;
* ``P(X = 0)`` comes from the same count model as the baseline: Poisson with mean ``mu``, or a
  negative binomial with the bin's variance when the counts are overdispersed;
* consecutive zeros of a series form a *run* (carried across batches; a non-zero count ends it;
  LATE/DUPLICATE and NaN readings neither extend nor end it). The run's joint probability is the
  product of the ``P(X = 0)`` of its readings.

Per zero reading: reason ``dead_camera`` (CRITICAL) when the run's joint probability is below
``crit_p``; ``zero_unlikely`` (WARNING) below ``warn_p``; else ``true_zero`` (OK: zero traffic is
plausible then). A non-zero count is OK (reason ``ok``, score 0). A zero that cannot be judged (its
bin has fewer than the baseline's ``warmup_samples`` readings and no road-class floor applies) is
not evaluated (reason ``warming_up``). Score: 0 at joint probability 1, 0.5 at ``warn_p``, 1.0 at
``crit_p`` (linear in ``-log10``). Output `threshold`: the expected count ``mu``.

Why ``warn_p`` is 1e-4: every zero reading tests its run again, and a city's cameras see many
zero runs a night, so at 1e-3 a few warnings a day came from ordinary quiet minutes (3 to 8 per
simulated day, `tests/test_simulator_scenarios.py`); at 1e-4 they are rare, and a dead camera on a
main road in the daytime is still critical at its first zero (the example below).

One zero at 08:00 on a main road (``mu`` around 60, ``P(X = 0)`` about 1e-26) is a dead camera at
once; at 03:00 on a main road (``mu`` about 2, ``P(X = 0)`` about 0.13) a handful of zeros in a row
is; on a side street at night (``mu`` about 0.3, ``P(X = 0)`` about 0.74) a long run of zeros is
still a true zero.

Applies to series of the traffic domain whose metric is in ``metrics`` (default ``intensity``).
State per series: the baseline's bins (720 bytes with its defaults) plus the run's log-probability
and length (12 bytes).

Sample configuration: see `SAMPLE_CONFIG`.

Examples
--------
A camera on a main road and one on a side street, each warmed up on Monday 03:00-04:00 and
08:00-09:00 local time (about 2 and 60 vehicles a minute on the main road, 0.3 and 5 on the side
street):

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> spec = {"intensity": MetricSpec(unit="veh", min=0, max=500)}
>>> cams = [Sensor(id=i, domain="traffic", area="a", lat=10.95, lon=106.82, interval=60, road_class=rc,
...                metrics=spec) for i, rc in [("main-1", "main"), ("side-1", "side")]]
>>> series = SeriesIndex(Registry({c.id: c for c in cams}))
>>> series.add_registry()
>>> det = TrafficZeroDetector(series)
>>> main, side = series.get("main-1", "intensity"), series.get("side-1", "intensity")
>>> monday = 1_717_347_600 * 10**9     # 2024-06-03 00:00 local (UTC+7)
>>> minute, hour = 60 * 10**9, 3600 * 10**9
>>> rng = np.random.default_rng(0)
>>> ts = np.concatenate([monday + 3 * hour + np.arange(60) * minute, monday + 8 * hour + np.arange(60) * minute])
>>> warm = ReadingBatch.from_columns(
...     [main] * 120 + [side] * 120, np.concatenate([ts, ts]),
...     np.concatenate([rng.poisson(2, 60), rng.poisson(60, 60), rng.poisson(0.3, 60), rng.poisson(5, 60)]))
>>> _ = det.process(warm)

A week later (same bins), five zeros in a row at 03:00 from both, then one zero at 08:00 from both:

>>> week = 7 * 24 * hour
>>> t3 = monday + week + 3 * hour + np.arange(5) * minute
>>> t8 = monday + week + 8 * hour + np.array([0])
>>> batch = ReadingBatch.from_columns([main] * 6 + [side] * 6, np.concatenate([t3, t8, t3, t8]), np.zeros(12))
>>> out = det.process(batch)
>>> det.reason_names(out.reason[:6]).tolist()   # main road
['true_zero', 'true_zero', 'true_zero', 'true_zero', 'zero_unlikely', 'dead_camera']
>>> det.reason_names(out.reason[6:]).tolist()   # side street
['true_zero', 'true_zero', 'true_zero', 'true_zero', 'true_zero', 'true_zero']
>>> out.level.tolist()
[0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]

On the main road, the fifth zero in a row at 03:00 makes the run unlikely, and the zero at 08:00
is a dead camera by itself. On the side street, five zeros at night are ordinary, and even a zero
at 08:00, where about 5 vehicles a minute are expected (P(X = 0) about 0.007), keeps the run
plausible: one more zero minute there would not be.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from citywatch.batch import ReadingBatch, last_index_where
from citywatch.config import StrictModel
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput
from citywatch.detectors.seasonal_baseline import SeasonalBaseline, SeasonalConfig, count_pmf0, tail_score
from citywatch.registry import SeriesIndex

__all__ = ["TrafficZeroDetector", "TrafficZeroConfig", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  traffic_zero:
    metrics: [intensity]            # traffic count metrics to judge
    warn_p: 1.0e-4                  # joint probability of the zero run below which: warning
    crit_p: 1.0e-6                  # ... critical: dead camera
    daytime_hours: [6, 21]          # local hours [from, to) when the road-class floor applies
    daytime_floor_per_minute:       # least traffic expected per minute in the daytime, by road_class
      main: 5.0
      secondary: 1.0
      side: 0.0
    seasonal:                       # the count baseline (see the seasonal detector)
      bin_minutes: 60
      day_types: weekday_saturday_sunday
      half_life_days: 7
      warmup_samples: 30
"""

REASON_OK = 0
REASON_TRUE_ZERO = 1
REASON_ZERO_UNLIKELY = 2
REASON_DEAD_CAMERA = 3
REASON_WARMING_UP = 4


class TrafficZeroConfig(StrictModel):
    metrics: list[str] = Field(default_factory=lambda: ["intensity"])
    warn_p: float = Field(default=1e-4, gt=0, lt=1)
    crit_p: float = Field(default=1e-6, gt=0, lt=1)
    daytime_hours: tuple[float, float] = (6.0, 21.0)
    daytime_floor_per_minute: dict[str, float] = Field(
        default_factory=lambda: {"main": 5.0, "secondary": 1.0, "side": 0.0})
    seasonal: SeasonalConfig = Field(default_factory=SeasonalConfig)

    @field_validator("daytime_floor_per_minute")
    @classmethod
    def _floors(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if x < 0]
        if bad:
            raise ValueError(f"floors cannot be negative: {bad}")
        return v

    @field_validator("crit_p")
    @classmethod
    def _order(cls, v: float, info) -> float:
        warn = info.data.get("warn_p")
        if warn is not None and v >= warn:
            raise ValueError(f"crit_p ({v}) must be below warn_p ({warn})")
        return v


class TrafficZeroDetector(Detector):
    """True zero vs dead camera for traffic counts; see the module docstring."""

    name = "traffic_zero"
    reasons = ("ok", "true_zero", "zero_unlikely", "dead_camera", "warming_up")
    state_fields = {"run_logp": (np.float64, 0.0), "run_len": (np.int32, 0)}

    def __init__(self, series: SeriesIndex, config: TrafficZeroConfig | None = None) -> None:
        self.config = config or TrafficZeroConfig()
        base_cfg = self.config.seasonal.model_copy(
            update={"metrics": list(self.config.metrics),
                    "count_metrics": sorted(set(self.config.seasonal.count_metrics) | set(self.config.metrics))})
        self.baseline = SeasonalBaseline(series, base_cfg)
        self._applies = np.zeros(0, bool)
        self._floor = np.zeros(0)  # daytime floor, counts per reading
        super().__init__(series)

    def _on_new_series(self, start: int, stop: int) -> None:
        cap = self._capacity
        applies = np.zeros(cap, bool)
        applies[: len(self._applies)] = self._applies[:cap]
        floor = np.zeros(cap)
        floor[: len(self._floor)] = self._floor[:cap]
        wanted = set(self.config.metrics)
        reg = self.series.registry
        for sid in range(start, stop):
            sensor = reg.get(self.series.sensor_ids[sid])
            applies[sid] = self.series.domains[sid] == "traffic" and self.series.metrics[sid] in wanted
            if sensor is not None and sensor.road_class is not None:
                interval = float(sensor.interval) if sensor.interval else 60.0
                floor[sid] = self.config.daytime_floor_per_minute.get(sensor.road_class, 0.0) * interval / 60.0
        self._applies, self._floor = applies, floor

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = super().snapshot()
        for k, v in self.baseline.snapshot().items():
            if not k.startswith("__"):
                snap[f"baseline.{k}"] = v
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        super().restore(snap)
        inner = {k[len("baseline."):]: v for k, v in snap.items() if k.startswith("baseline.")}
        self.baseline.restore({**inner, "__sensor": snap["__sensor"], "__metric": snap["__metric"]})

    def _daytime(self, ts: np.ndarray) -> np.ndarray:
        off = int(round(self.config.seasonal.utc_offset_hours * 3600))
        hour = ((ts // 10**9 + off) % 86400) / 3600.0
        lo, hi = self.config.daytime_hours
        return (hour >= lo) & (hour < hi) if lo <= hi else (hour >= lo) | (hour < hi)

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        sid = batch.series
        exp = self.baseline.expect_and_learn(batch)  # also checks the sort order
        out = DetectorOutput.not_evaluated(n)
        active = exp.active & self._applies[sid]
        warm = exp.n >= self.baseline.config.warmup_samples
        floor = np.where(self._daytime(batch.ts), self._floor[sid], 0.0)
        mu = np.where(warm, np.fmax(exp.mean, floor), floor)
        var = np.where(warm, np.fmax(exp.var, mu), mu)
        judged = active & (warm | (floor > 0))
        zero = active & (np.round(batch.value) == 0)
        with np.errstate(divide="ignore"):
            logp0 = np.where(zero & judged, np.log(count_pmf0(np.where(judged, mu, 1.0), np.where(judged, var, 1.0))), 0.0)
        nonzero = active & ~zero

        # Zero runs: cumulative log-probability since the last non-zero count (or carried in).
        gs = batch.group_start
        cs = np.cumsum(logp0)
        cl = np.cumsum(zero.astype(np.int64))
        reset = last_index_where(nonzero, gs)
        before_cs = cs[gs] - logp0[gs]
        before_cl = cl[gs] - zero[gs]
        run_logp = np.where(reset >= 0, cs - cs[np.maximum(reset, 0)], cs - before_cs + self.state["run_logp"][sid])
        run_len = np.where(reset >= 0, cl - cl[np.maximum(reset, 0)], cl - before_cl + self.state["run_len"][sid])
        last = batch.is_last
        self.state["run_logp"][sid[last]] = run_logp[last]
        self.state["run_len"][sid[last]] = run_len[last]

        joint = np.exp(run_logp)
        cfg = self.config
        z = zero & judged
        out.level[z] = np.where(joint[z] < cfg.crit_p, LEVEL_CRITICAL, np.where(joint[z] < cfg.warn_p, LEVEL_WARNING, LEVEL_OK))
        out.reason[z] = np.where(joint[z] < cfg.crit_p, REASON_DEAD_CAMERA,
                                 np.where(joint[z] < cfg.warn_p, REASON_ZERO_UNLIKELY, REASON_TRUE_ZERO))
        out.score[z] = tail_score(joint[z], cfg.warn_p, cfg.crit_p)
        out.threshold[z] = mu[z]
        out.reason[zero & ~judged] = REASON_WARMING_UP
        out.level[nonzero] = LEVEL_OK
        out.score[nonzero] = 0.0
        out.threshold[nonzero] = mu[nonzero]
        return out
