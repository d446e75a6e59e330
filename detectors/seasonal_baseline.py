"""Seasonal baseline: is this reading unusual for this time of day and this kind of day?

Per series, an expected level and spread is learned for each *bin*: a slot of local time of day
(``bin_minutes``, local time = UTC + ``utc_offset_hours``, Asia/Ho_Chi_Minh is UTC+7 all year) on a
*day type* (``all`` days alike, ``weekday_weekend``, ``weekday_saturday_sunday`` or
``day_of_week``). Each reading is scored against its bin's estimate *before* the reading is
learned (causal), then learned:

* learning is an exponentially weighted mean and variance per bin. The weight of a new reading is
  ``max(alpha, 1 / (n + 1))`` (a plain running mean until the bin has ``1 / alpha`` readings), and
  ``alpha`` is set from the sensor's reporting interval so that a bin's memory has a half-life of
  ``half_life_days`` *days of that bin's data*, whatever the interval. Once the bin is warm,
  deviations are clipped at ``winsor_sd`` standard deviations before they are learned, so a fault
  barely moves the baseline;
* a bin is evaluated once it has ``warmup_samples`` readings; before that the reading is learned
  but not evaluated (level -1, reason ``warming_up``);
* *count metrics* (``count_metrics``, by default the traffic cameras' vehicle counts
  ``intensity``) are judged with a count distribution, not a Gaussian: Poisson with the bin's mean
  when the bin's variance does not exceed its mean, otherwise a negative binomial with the same mean
  and variance (method of moments; the overdispersion comes from day-to-day variation and from the
  rate changing within the bin). The mean used is at least ``count_floor`` (a bin that has only
  ever seen zeros still allows the odd vehicle). The tail probability is two-sided and discrete:
  ``p = min(1, 2 * min(P(X <= x), P(X >= x)))``;
* other metrics use a Gaussian tail with the bin's mean and standard deviation (at least
  ``min_sd_fraction`` of the metric's physical range, so a quantised, nearly constant series does
  not get a zero spread): ``p = 2 * P(Z >= |x - mean| / sd)``.

Level: CRITICAL when ``p < crit_p``, WARNING when ``p < warn_p``, else OK; reason
``above_expected`` / ``below_expected`` by the side of the deviation. Score, in [0, 1], rises
linearly in ``-log10(p)``: 0 at p = 1, 0.5 at ``warn_p``, 1.0 at ``crit_p`` and beyond. Output
`threshold`: the bin's expected value (the mean the reading was compared with). After each batch,
`last_band()` gives the evaluated readings' expectation as a band: the bin's mean and the central
99 % interval of the same model (Poisson / negative binomial quantiles for counts, normal quantiles
otherwise); the engine writes it to the ``baseline`` measurement, which Grafana draws around the counts.

Not evaluated and not learned: LATE/DUPLICATE readings, NaN values, skipped rows and series whose
metric is not in ``metrics`` (when given).

State per series (2-D, one column per bin): float32 mean, float32 variance, uint16 count:
10 bytes a bin, so 24 one-hour bins x 3 day types = 720 bytes; a configuration needing more than
2 KiB per series is refused. Processing is vectorised: the batch is grouped by (series, bin) and
the k-th readings of all groups are handled together, so the only Python loop is over k (1 or 2 for
live micro-batches; the readings per bin in a backlog), and the result does not depend on how the
readings are cut into batches.

Sample configuration: see `SAMPLE_CONFIG`.

Examples
--------
A traffic camera counting vehicles per minute, with 60 minutes of history at 07:00-08:00 on
weekdays at a steady 40 vehicles a minute (Poisson):

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> cam = Sensor(id="tc-1", domain="traffic", area="a", lat=10.95, lon=106.82, interval=60,
...              road_class="main", metrics={"intensity": MetricSpec(unit="veh", min=0, max=500)})
>>> series = SeriesIndex(Registry({cam.id: cam}))
>>> series.add_registry()
>>> det = SeasonalBaseline(series, SeasonalConfig(warmup_samples=30, day_types="weekday_weekend"))
>>> monday_7h = 1_717_372_800 * 10**9   # 2024-06-03 07:00 local (00:00 UTC)
>>> minute = 60 * 10**9
>>> counts = np.random.default_rng(1).poisson(40, 55)
>>> sid = series.get("tc-1", "intensity")
>>> history = ReadingBatch.from_columns([sid] * 55, monday_7h + np.arange(55) * minute, counts)
>>> out = det.process(history)
>>> det.reason_names(out.reason[:3]).tolist(), int((out.level == 0).sum())
(['warming_up', 'warming_up', 'warming_up'], 25)
>>> now = ReadingBatch.from_columns([sid] * 4, monday_7h + np.arange(56, 60) * minute, [41, 25, 12, 0])
>>> out = det.process(now)
>>> out.level.tolist()
[0, 0, 1, 2]
>>> det.reason_names(out.reason).tolist()
['ok', 'ok', 'below_expected', 'below_expected']
>>> out.threshold.round(1).tolist()   # the expectation each reading was compared with
[40.3, 40.3, 40.0, 39.6]
>>> out.score.round(2).tolist()
[0.0, 0.23, 0.9, 1.0]

>>> band = det.last_band()   # the central 99 % of the expected counts, for the chart
>>> band.lower.tolist(), band.upper.tolist()
([25.0, 25.0, 25.0, 24.0], [58.0, 58.0, 57.0, 57.0])

25 vehicles where about 40 are expected is unusual but not alarming; 12 has a Poisson tail
probability of about 3e-6 (warning), and 0 is all but impossible (critical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput
from citywatch.registry import SeriesIndex

__all__ = ["SeasonalBaseline", "SeasonalConfig", "Expectation", "Band", "count_tails", "count_pmf0", "tail_score",
           "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  seasonal:
    metrics: [intensity]            # the engine's default: traffic counts (weather moves temperature,
                                    # humidity and dust off their time-of-day expectation every day,
                                    # which is not news to anyone on duty); null for every metric
    bin_minutes: 60                 # time-of-day bin; must divide a day
    day_types: weekday_saturday_sunday   # all | weekday_weekend | weekday_saturday_sunday | day_of_week
    utc_offset_hours: 7             # local time for the bins (Asia/Ho_Chi_Minh, no daylight saving)
    half_life_days: 7               # memory of a bin, in days of that bin's data
    warmup_samples: 30              # readings a bin needs before it is evaluated
    count_metrics: [intensity]      # judged as counts (Poisson / negative binomial), not Gaussian
    count_floor: 0.5                # smallest expected count used in a count tail
    min_sd_fraction: 0.001          # smallest spread, as a fraction of the physical range
    winsor_sd: 4.0                  # deviations are clipped at this many sd before being learned
    warn_p: 1.0e-4                  # two-sided tail probability below which: warning
    crit_p: 1.0e-7                  # ... critical
"""

DAY_TYPE_COUNT = {"all": 1, "weekday_weekend": 2, "weekday_saturday_sunday": 3, "day_of_week": 7}
MAX_STATE_BYTES = 2048
BYTES_PER_BIN = 10  # float32 mean + float32 variance + uint16 count
_DAY_S = 86400
_NS = 10**9

REASON_OK = 0
REASON_ABOVE = 1
REASON_BELOW = 2
REASON_WARMING_UP = 3


class SeasonalConfig(StrictModel):
    metrics: list[str] | None = None  # None: every metric (the engine's default is traffic counts)
    bin_minutes: int = Field(default=60, ge=5, le=1440)
    day_types: Literal["all", "weekday_weekend", "weekday_saturday_sunday", "day_of_week"] = "weekday_saturday_sunday"
    utc_offset_hours: float = Field(default=7.0, ge=-12, le=14)
    half_life_days: float = Field(default=7.0, gt=0)
    warmup_samples: int = Field(default=30, ge=2, le=65535)
    count_metrics: list[str] = Field(default_factory=lambda: ["intensity"])
    count_floor: float = Field(default=0.5, gt=0)
    min_sd_fraction: float = Field(default=0.001, ge=0)
    winsor_sd: float = Field(default=4.0, gt=0)
    warn_p: float = Field(default=1e-4, gt=0, lt=1)
    crit_p: float = Field(default=1e-7, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "SeasonalConfig":
        if 1440 % self.bin_minutes:
            raise ValueError(f"bin_minutes ({self.bin_minutes}) must divide a day (1440 minutes)")
        if self.crit_p >= self.warn_p:
            raise ValueError(f"crit_p ({self.crit_p}) must be below warn_p ({self.warn_p})")
        need = self.n_bins * BYTES_PER_BIN
        if need > MAX_STATE_BYTES:
            raise ValueError(f"{self.n_bins} bins need {need} bytes of state per series, more than "
                             f"{MAX_STATE_BYTES}: use wider bins or fewer day types")
        return self

    @property
    def bins_per_day(self) -> int:
        return 1440 // self.bin_minutes

    @property
    def n_bins(self) -> int:
        return self.bins_per_day * DAY_TYPE_COUNT[self.day_types]


@dataclass(slots=True)
class Expectation:
    """Per-row expectation of a processed batch, from the state *before* each row was learned."""

    active: np.ndarray  # bool: the row was evaluated or learned
    mean: np.ndarray  # float64: the bin's mean (NaN when inactive or the bin was empty)
    var: np.ndarray  # float64: the bin's variance
    n: np.ndarray  # int64: readings the bin had learned
    bin: np.ndarray  # int64: the bin of the row (-1 when inactive)
    is_count: np.ndarray  # bool: the series is a count metric


@dataclass(slots=True)
class Band:
    """The expectation of the readings a batch evaluated, as a central band of the tail model."""

    series: np.ndarray  # int: series id of each evaluated reading
    ts: np.ndarray  # int64: its event time (ns)
    expected: np.ndarray  # float64: the bin's mean (the detector's `threshold`)
    lower: np.ndarray  # float64: lower bound of the central band
    upper: np.ndarray  # float64: upper bound


def count_tails(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(X <= x), P(X >= x)) for a count with this mean and variance: Poisson when the variance does
    not exceed the mean, else negative binomial by the method of moments."""
    x, mu, v = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(mean, np.float64), np.asarray(var, np.float64))
    lower = stats.poisson.cdf(x, mu)
    upper = stats.poisson.sf(x - 1, mu)
    over = v > mu * (1 + 1e-9)
    if np.any(over):
        r, p = _nb_params(mu[over], v[over])
        lower = np.array(lower, dtype=np.float64)
        upper = np.array(upper, dtype=np.float64)
        lower[over] = stats.nbinom.cdf(x[over], r, p)
        upper[over] = stats.nbinom.sf(x[over] - 1, r, p)
    return np.asarray(lower, np.float64), np.asarray(upper, np.float64)


def count_pmf0(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """P(X = 0) for a count with this mean and variance (same model as `count_tails`)."""
    mu, v = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    out = np.exp(-mu)
    over = v > mu * (1 + 1e-9)
    if np.any(over):
        r, p = _nb_params(mu[over], v[over])
        out = np.array(out, dtype=np.float64)
        out[over] = p**r
    return out


def _nb_params(mu: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scipy's nbinom(n, p) with mean mu and variance v > mu."""
    return mu * mu / (v - mu), mu / v


def tail_score(p: np.ndarray, warn_p: float, crit_p: float) -> np.ndarray:
    """0 at p = 1, 0.5 at warn_p, 1.0 at crit_p and below; linear in -log10(p) in between."""
    lp = -np.log10(np.clip(p, 1e-300, 1.0))
    lw, lc = -np.log10(warn_p), -np.log10(crit_p)
    return np.where(lp <= lw, 0.5 * lp / lw, 0.5 + 0.5 * np.clip((lp - lw) / (lc - lw), 0.0, 1.0))


class SeasonalBaseline(Detector):
    """Per-series expected level by local time of day and day type; see the module docstring."""

    name = "seasonal"
    reasons = ("ok", "above_expected", "below_expected", "warming_up")

    def __init__(self, series: SeriesIndex, config: SeasonalConfig | None = None) -> None:
        self.config = config or SeasonalConfig()
        nb = self.config.n_bins
        self.state_fields = {
            "mean": (np.float32, np.nan, nb),
            "var": (np.float32, 0.0, nb),
            "n": (np.uint16, 0, nb),
        }
        self._offset_s = int(round(self.config.utc_offset_hours * 3600))
        self._applies = np.zeros(0, bool)
        self._is_count = np.zeros(0, bool)
        self._alpha = np.zeros(0)
        self._sd_floor = np.zeros(0)
        self._last: tuple[np.ndarray, np.ndarray, Expectation, np.ndarray] | None = None
        super().__init__(series)

    @property
    def state_bytes_per_series(self) -> int:
        return sum(np.dtype(dtype).itemsize * (spec[0] if spec else 1)
                   for dtype, _, *spec in self.state_fields.values())

    def _on_new_series(self, start: int, stop: int) -> None:
        cap = self._capacity

        def grown(a: np.ndarray, fill) -> np.ndarray:
            out = np.full(cap, fill, a.dtype)
            out[: len(a)] = a[:cap]
            return out

        self._applies, self._is_count = grown(self._applies, False), grown(self._is_count, False)
        self._alpha, self._sd_floor = grown(self._alpha, 0.0), grown(self._sd_floor, 0.0)
        cfg = self.config
        wanted = None if cfg.metrics is None else set(cfg.metrics)
        counts = set(cfg.count_metrics)
        bin_s = cfg.bin_minutes * 60.0
        reg = self.series.registry
        for sid in range(start, stop):
            metric = self.series.metrics[sid]
            self._applies[sid] = wanted is None or metric in wanted
            self._is_count[sid] = metric in counts
            sensor = reg.get(self.series.sensor_ids[sid])
            interval = float(sensor.interval) if sensor is not None and sensor.interval else 60.0
            per_day = max(1.0, bin_s / interval)  # readings a bin receives per day
            self._alpha[sid] = 1.0 - 0.5 ** (1.0 / (cfg.half_life_days * per_day))
            lo, hi = self.series.physical_min[sid], self.series.physical_max[sid]
            rng = hi - lo if np.isfinite(lo) and np.isfinite(hi) else 0.0
            self._sd_floor[sid] = max(cfg.min_sd_fraction * rng, 1e-9)

    def bins(self, ts: np.ndarray) -> np.ndarray:
        """The bin of each event time (ns since the epoch, UTC)."""
        cfg = self.config
        local = np.asarray(ts, np.int64) // _NS + self._offset_s
        day = local // _DAY_S
        slot = (local - day * _DAY_S) // (cfg.bin_minutes * 60)
        wd = (day + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
        if cfg.day_types == "all":
            kind = np.zeros_like(wd)
        elif cfg.day_types == "weekday_weekend":
            kind = (wd >= 5).astype(np.int64)
        elif cfg.day_types == "weekday_saturday_sunday":
            kind = np.maximum(wd - 4, 0)
        else:
            kind = wd
        return kind * cfg.bins_per_day + slot

    def expect_and_learn(self, batch: ReadingBatch) -> Expectation:
        """Each row's bin expectation from the state before it, then learn the row (in order)."""
        self._grow()
        n = len(batch)
        sid = batch.series
        if n > 1 and np.any(sid[1:] < sid[:-1]):
            raise ValueError("the batch must be sorted by (series, ts): use ReadingBatch.sorted_by_series_time()")
        active = self.in_order(batch) & ~np.isnan(batch.value)
        if n:
            active &= self._applies[sid]
        is_count = self._is_count[sid] if n else np.zeros(0, bool)
        x = np.where(is_count, np.round(batch.value), batch.value)
        exp = Expectation(active, np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.int64),
                          np.full(n, -1, np.int64), is_count)
        rows = np.flatnonzero(active)
        if len(rows) == 0:
            return exp
        b = self.bins(batch.ts[rows])
        exp.bin[rows] = b
        # Rank of each row among the rows of its (series, bin), in time order.
        key = sid[rows].astype(np.int64) * self.config.n_bins + b
        order = np.argsort(key, kind="stable")
        ks = key[order]
        new = np.ones(len(ks), bool)
        new[1:] = ks[1:] != ks[:-1]
        starts = np.maximum.accumulate(np.where(new, np.arange(len(ks)), 0))
        rank = np.empty(len(ks), np.int64)
        rank[order] = np.arange(len(ks)) - starts
        by_rank = rows[np.argsort(rank, kind="stable")]
        bounds = np.concatenate(([0], np.cumsum(np.bincount(rank))))
        st_mean, st_var, st_n = self.state["mean"], self.state["var"], self.state["n"]
        c = self.config.winsor_sd
        warm_n = self.config.warmup_samples
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            r = by_rank[lo:hi]
            s, bb = sid[r], exp.bin[r]
            m = st_mean[s, bb].astype(np.float64)
            v = st_var[s, bb].astype(np.float64)
            cnt = st_n[s, bb].astype(np.int64)
            exp.mean[r], exp.var[r], exp.n[r] = m, v, cnt
            xr = x[r]
            empty = cnt == 0
            d = np.where(empty, 0.0, xr - m)
            sd = np.sqrt(np.maximum(v, self._sd_floor[s] ** 2))
            sd = np.where(is_count[r], np.sqrt(np.maximum(sd * sd, np.maximum(m, self.config.count_floor))), sd)
            d = np.where(cnt >= warm_n, np.clip(d, -c * sd, c * sd), d)
            a = np.maximum(self._alpha[s], 1.0 / (cnt + 1))
            st_mean[s, bb] = np.where(empty, xr, m + a * d)
            st_var[s, bb] = np.where(empty, 0.0, (1 - a) * (v + a * d * d))
            st_n[s, bb] = np.minimum(cnt + 1, 65535)
        return exp

    def tail_probability(self, batch: ReadingBatch, exp: Expectation, rows: np.ndarray) -> np.ndarray:
        """Two-sided tail probability of the batch's values at `rows`, given their expectation."""
        x, m, v, is_count = batch.value[rows], exp.mean[rows], exp.var[rows], exp.is_count[rows]
        p = np.ones(len(rows))
        if is_count.any():
            mu = np.maximum(m[is_count], self.config.count_floor)
            lower, upper = count_tails(np.round(x[is_count]), mu, v[is_count])
            p[is_count] = np.minimum(1.0, 2.0 * np.minimum(lower, upper))
        cont = ~is_count
        if cont.any():
            sd = np.sqrt(np.maximum(v[cont], self._sd_floor[batch.series[rows][cont]] ** 2))
            p[cont] = 2.0 * stats.norm.sf(np.abs(x[cont] - m[cont]) / sd)
        return p

    def band(self, series: np.ndarray, exp: Expectation, rows: np.ndarray, coverage: float = 0.99
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expected, lower, upper) at `rows`: the bin's mean and the central `coverage` interval of
        the same model the tail probability uses (Poisson / negative binomial quantiles for counts,
        normal quantiles with the floored spread otherwise)."""
        m, v, is_count = exp.mean[rows], exp.var[rows], exp.is_count[rows]
        q_lo, q_hi = (1.0 - coverage) / 2.0, (1.0 + coverage) / 2.0
        lower, upper = np.empty(len(rows)), np.empty(len(rows))
        if is_count.any():
            mu, var = np.maximum(m[is_count], self.config.count_floor), v[is_count]
            lo, hi = stats.poisson.ppf(q_lo, mu), stats.poisson.ppf(q_hi, mu)
            over = var > mu * (1 + 1e-9)
            if over.any():
                r, p = _nb_params(mu[over], var[over])
                lo[over], hi[over] = stats.nbinom.ppf(q_lo, r, p), stats.nbinom.ppf(q_hi, r, p)
            lower[is_count], upper[is_count] = lo, hi
        cont = ~is_count
        if cont.any():
            sd = np.sqrt(np.maximum(v[cont], self._sd_floor[np.asarray(series)[rows][cont]] ** 2))
            z = stats.norm.ppf(q_hi)
            lower[cont], upper[cont] = m[cont] - z * sd, m[cont] + z * sd
        return m.astype(np.float64), lower, upper

    def last_band(self, coverage: float = 0.99) -> Band | None:
        """The band of every reading the last `process` call evaluated (None when it evaluated none)."""
        if self._last is None:
            return None
        series, ts, exp, rows = self._last
        expected, lower, upper = self.band(series, exp, rows, coverage)
        return Band(series[rows], ts[rows], expected, lower, upper)

    def process(self, batch: ReadingBatch, skip: np.ndarray | None = None) -> DetectorOutput:
        self._last = None  # a batch whose rows are all skipped must not leave the previous band
        return super().process(batch, skip)

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        exp = self.expect_and_learn(batch)
        out = DetectorOutput.not_evaluated(n)
        warming = exp.active & (exp.n < self.config.warmup_samples)
        out.reason[warming] = REASON_WARMING_UP
        rows = np.flatnonzero(exp.active & ~warming)
        if len(rows) == 0:
            return out
        self._last = (batch.series, batch.ts, exp, rows)
        x = batch.value[rows]
        p = self.tail_probability(batch, exp, rows)
        cfg = self.config
        level = np.where(p < cfg.crit_p, LEVEL_CRITICAL, np.where(p < cfg.warn_p, LEVEL_WARNING, LEVEL_OK))
        out.level[rows] = level
        side = np.where(x > exp.mean[rows], REASON_ABOVE, REASON_BELOW)
        out.reason[rows] = np.where(level > LEVEL_OK, side, REASON_OK)
        out.score[rows] = tail_score(p, cfg.warn_p, cfg.crit_p)
        out.threshold[rows] = exp.mean[rows]
        return out
