"""Stuck and flat-lined sensors: a value that repeats exactly, or a signal whose variation collapsed.

Two checks per series (sensor x metric), in event time:

* **stuck** - a run of identical values. How many repeats are suspicious depends on the series: a
  pH probe reporting two decimals repeats its last value by chance far more often than a CO analyser
  reporting integers in ug/m3. The detector learns each series' *repeat probability* ``p`` (how
  often a reading equals the previous one; an EWMA over `learn_readings` readings, starting from
  `prior_repeat_probability`) and asks how many repeats in a row would happen by chance only once
  in `false_alarm_days` days at the sensor's expected interval: with
  ``eps = interval / (false_alarm_days x 1 day)``, a run is stuck once it holds
  ``k = ceil(log(eps) / log(p))`` repeats (clipped to [`min_repeats`, `max_repeats`]). So the count
  depends on the metric's resolution (through ``p``) and on the sensor's interval (through ``eps``).
  ``p`` is the larger of the long-run estimate and one over the last `recent_window` (a day), which
  follows a change in a series' behaviour sooner.
  WARNING from the k-th repeat, CRITICAL once the run has lasted `critical_after`.
  Score: ``repeats / k`` (1.0 at the alarm point), clipped to [0, 1].
* **flatline** - variation collapsed relative to the series' own history: the mean absolute change
  between consecutive readings over the last `flatline_window` intervals (a time EWMA) falls below
  `flatline_ratio` x its long-run level (a count EWMA over `learn_readings`), after
  `flatline_min_history` readings have been learned. WARNING; score ``1 - short / (ratio x long)``.

Legitimately constant values are exempt (`exempt`: per metric, an inclusive [min, max] range of
values): rain 0 mm, no vehicles counted at night, relative humidity at saturation. A reading whose
value is in its metric's exempt range is never flagged, and teaches neither the repeat probability
nor the variation levels. The defaults (`DEFAULT_EXEMPT`) cover the registry's metrics. So is a
value at the series' own floor or ceiling - its lowest or highest value so far, where at least
`saturation_visits` earlier runs began: a speed floor in a jam, a probe saturating, a
concentration clipped at 0.

Readings that are stuck or flat-lined do not teach the learned levels either, so a long fault does
not become "normal". Not evaluated (level -1, score NaN) and leaving the state untouched: LATE or
DUPLICATE readings, rows in `skip`, NaN, infinite or absurd (beyond 1e150) values.

Reasons: ``ok``, ``stuck``, ``flatline``; output `threshold`: the number of repeats ``k`` that makes
a run stuck (for stuck and ok readings), the collapsed-variation limit for flatline.

State per series: 14 numbers (112 bytes).

Sample configuration: see `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from citywatch.batch import ReadingBatch, last_index_where
from citywatch.config import Duration, StrictModel
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput
from citywatch.registry import SeriesIndex

__all__ = ["StuckDetector", "StuckConfig", "ConstantRange", "DEFAULT_EXEMPT", "SAMPLE_CONFIG",
           "segmented_linear_scan", "previous_in_run", "series_intervals", "count_in_run", "usable",
           "require_sorted"]

SAMPLE_CONFIG = """\
detectors:
  stuck:
    enabled: true
    false_alarm_days: 90          # a run this unlikely happens by chance once per series in this many days
    min_repeats: 2                # never flag fewer repeats than this (2 = three identical readings)
    max_repeats: 30               # always flag this many repeats (outside the exempt values)
    prior_repeat_probability: 0.05  # assumed until the series has taught its own
    prior_weight: 50              # readings' worth of trust in the prior
    learn_readings: 2000          # horizon of the learned repeat probability and variation level
    recent_window: 1d             # also learned over the last day; the larger of the two decides
    critical_after: 30m           # a stuck run lasting this long is critical
    flatline_ratio: 0.05          # flat-lined: recent variation below this fraction of the usual one
    flatline_window: 10           # recent variation over this many expected intervals
    flatline_min_history: 500     # readings to learn before flatline is judged
    saturation_visits: 3          # lowest/highest value 3 runs began at: a floor/ceiling, exempt (0: off)
    exempt:                       # values that are legitimately constant, per metric: [min, max]
      precipitation: {min: 0, max: 0}        # no rain
      intensity: {min: 0, max: 2}            # (almost) no vehicles: quiet nights repeat small counts
      occupancy: {min: 0, max: 0.02}         # empty road
      averageVehicleSpeed: {min: 0, max: 0}  # no vehicles to measure
      relativeHumidity: {min: 0.98, max: 1}  # saturated air
      windSpeed: {min: 0, max: 0}            # calm
"""

REASON_OK = 0
REASON_STUCK = 1
REASON_FLATLINE = 2

DAY_S = 86400.0
DEFAULT_INTERVAL_S = 60.0


class ConstantRange(StrictModel):
    """Values of a metric that may legitimately stay constant for long (inclusive bounds)."""

    min: float = -math.inf
    max: float = math.inf

    @model_validator(mode="after")
    def _order(self) -> "ConstantRange":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        return self


DEFAULT_EXEMPT: dict[str, ConstantRange] = {
    "precipitation": ConstantRange(min=0.0, max=0.0),
    "intensity": ConstantRange(min=0.0, max=2.0),
    "occupancy": ConstantRange(min=0.0, max=0.02),
    "averageVehicleSpeed": ConstantRange(min=0.0, max=0.0),
    "relativeHumidity": ConstantRange(min=0.98, max=1.0),
    "windSpeed": ConstantRange(min=0.0, max=0.0),
}


class StuckConfig(StrictModel):
    enabled: bool = True
    false_alarm_days: float = Field(default=90.0, gt=0)
    min_repeats: int = Field(default=2, ge=1)
    max_repeats: int = Field(default=30, ge=1)
    prior_repeat_probability: float = Field(default=0.05, gt=0, lt=1)
    prior_weight: float = Field(default=50.0, ge=1)
    learn_readings: float = Field(default=2000.0, ge=10)
    recent_window: Duration = 86400.0
    critical_after: Duration = 1800.0
    flatline_ratio: float = Field(default=0.05, gt=0, lt=1)
    flatline_window: float = Field(default=10.0, gt=0)
    flatline_min_history: int = Field(default=500, ge=1)
    exempt: dict[str, ConstantRange] = Field(default_factory=lambda: dict(DEFAULT_EXEMPT))
    saturation_visits: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _repeats(self) -> "StuckConfig":
        if self.min_repeats > self.max_repeats:
            raise ValueError(f"min_repeats ({self.min_repeats}) must not exceed max_repeats ({self.max_repeats})")
        return self


# ------------------------------------------------------------------------------ shared helpers


def segmented_linear_scan(a: np.ndarray, b: np.ndarray, first: np.ndarray, init: np.ndarray) -> np.ndarray:
    """``y[i] = a[i] * y[i-1] + b[i]`` within each series run, ``y[-1] = init[i]`` at a run's first row.

    The per-series EWMA recursion, vectorised over the whole batch as a prefix scan (Hillis-Steele)
    of the affine maps ``y -> a y + b``: ``log2(longest run)`` array passes, no division, so it stays
    exact for any run length. A row with ``a = 1, b = 0`` leaves the value unchanged.
    """
    n = len(a)
    if n == 0:
        return np.empty(0, np.float64)
    a = np.array(a, dtype=np.float64)
    b = np.array(b, dtype=np.float64)
    b[first] += a[first] * init[first]
    a[first] = 0.0
    starts = np.flatnonzero(first)
    longest = int(np.max(np.diff(np.append(starts, n))))
    d = 1
    while d < longest:
        b[d:] = a[d:] * b[:-d] + b[d:]
        a[d:] = a[d:] * a[:-d]
        d *= 2
    return b


MAX_ABS_VALUE = 1e150  # beyond this, squares and differences overflow


def usable(values: np.ndarray) -> np.ndarray:
    """Values a detector may learn from: finite and not absurdly large (NaN, inf and overflowing
    values are not evaluated and leave the state alone; they would poison the batch-wide scans)."""
    with np.errstate(invalid="ignore"):
        return np.abs(values) < MAX_ABS_VALUE


def require_sorted(batch: ReadingBatch) -> None:
    """The detectors need each series' readings together and in event-time order."""
    s, t = batch.series, batch.ts
    if len(s) > 1 and np.any((s[1:] < s[:-1]) | ((s[1:] == s[:-1]) & (t[1:] < t[:-1]))):
        raise ValueError("the batch must be sorted by (series, ts): use ReadingBatch.sorted_by_series_time()")


def previous_in_run(values: np.ndarray, first: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """Each row's previous value in its series run; `carried` (the state) for a run's first row."""
    prev = np.empty_like(values)
    prev[1:] = values[:-1]
    prev[first] = carried[first]
    return prev


def series_intervals(series: SeriesIndex, start: int, stop: int) -> np.ndarray:
    """Expected reporting interval (s) of series ids [start, stop) from the registry (60 s if unknown)."""
    out = np.full(stop - start, DEFAULT_INTERVAL_S)
    for j, sid in enumerate(range(start, stop)):
        sensor = series.registry.get(series.sensor_ids[sid])
        if sensor is not None and sensor.interval:
            out[j] = float(sensor.interval)
    return out


def grow_param(arr: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    if len(arr) >= capacity:
        return arr
    grown = np.full(capacity, fill, dtype=arr.dtype)
    grown[: len(arr)] = arr
    return grown


# ------------------------------------------------------------------------------ the detector


class StuckDetector(Detector):
    """Runs of identical values (``stuck``) and collapsed variation (``flatline``), per series.

    Examples
    --------
    A water-quality sonde reports every 5 minutes. Say exact repeats of its pH are rare (p = 1 %,
    given here as the prior): with one false alarm per 90 days allowed, a run is stuck at
    ``ceil(log(300 / (90 x 86400)) / log(0.01)) = 3`` repeats:

    >>> from citywatch.batch import ReadingBatch
    >>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
    >>> sonde = Sensor(id="wq-01", domain="water", area="dong-nai", lat=10.95, lon=106.82, interval=300,
    ...                metrics={"pH": MetricSpec(unit="pH", min=0, max=14)})
    >>> series = SeriesIndex(Registry({sonde.id: sonde}))
    >>> series.add_registry()
    >>> cfg = StuckConfig(prior_repeat_probability=0.01)
    >>> detector = StuckDetector(series, cfg)
    >>> ph = [7.01, 7.03, 6.98, 7.02, 7.02, 7.02, 7.02, 7.02, 7.05]
    >>> batch = ReadingBatch.from_columns(series=[0] * len(ph), ts=[i * 300 * 10**9 for i in range(len(ph))],
    ...                                   value=ph)
    >>> out = detector.process(batch)
    >>> out.level.tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 0]
    >>> detector.reason_names(out.reason).tolist()
    ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'stuck', 'stuck', 'ok']
    >>> out.threshold.tolist()[:3]
    [3.0, 3.0, 3.0]

    Rain stays at 0 mm for days without being stuck (`exempt`).
    """

    name = "stuck"
    reasons = ("ok", "stuck", "flatline")
    state_fields = {
        "last_value": (np.float64, np.nan),
        "run_start": (np.int64, 0),  # event time (ns) of the first reading of the current run
        "run_count": (np.int64, 0),  # readings in the current run
        "p_repeat": (np.float64, np.nan),  # learned repeat probability (NaN: the prior)
        "p_recent": (np.float64, np.nan),  # the same over the last `recent_window`
        "n_learned": (np.float64, 0.0),  # readings the repeat probability learned from
        "diff_short": (np.float64, 0.0),  # recent mean |change| (time EWMA)
        "diff_long": (np.float64, 0.0),  # long-run mean |change| (count EWMA)
        "n_diff": (np.int64, 0),  # readings the long-run level learned from
        "last_ts": (np.int64, 0),
        "lowest": (np.float64, np.inf),  # the lowest value seen ...
        "lowest_visits": (np.int64, 0),  # ... and how many runs began at it
        "highest": (np.float64, -np.inf),
        "highest_visits": (np.int64, 0),
    }

    def __init__(self, series: SeriesIndex, config: StuckConfig | None = None) -> None:
        self.config = config or StuckConfig()
        self._interval = np.zeros(0)
        self._log_eps = np.zeros(0)
        self._exempt_lo = np.zeros(0)
        self._exempt_hi = np.zeros(0)
        super().__init__(series)

    def _on_new_series(self, start: int, stop: int) -> None:
        cap = self._capacity
        self._interval = grow_param(self._interval, cap, DEFAULT_INTERVAL_S)
        self._log_eps = grow_param(self._log_eps, cap, 0.0)
        self._exempt_lo = grow_param(self._exempt_lo, cap, np.inf)
        self._exempt_hi = grow_param(self._exempt_hi, cap, -np.inf)
        iv = series_intervals(self.series, start, stop)
        self._interval[start:stop] = iv
        self._log_eps[start:stop] = np.log(np.minimum(iv / (self.config.false_alarm_days * DAY_S), 0.5))
        for sid in range(start, stop):
            rng = self.config.exempt.get(self.series.metrics[sid])
            if rng is not None:
                self._exempt_lo[sid], self._exempt_hi[sid] = rng.min, rng.max

    def required_repeats(self, p_repeat: np.ndarray, sid: np.ndarray) -> np.ndarray:
        """Repeats in a row that make a run stuck, for repeat probabilities `p_repeat` of series `sid`."""
        self._grow()
        cfg = self.config
        k = np.ceil(self._log_eps[sid] / np.log(np.clip(p_repeat, 1e-9, 0.999)))
        return np.clip(k, cfg.min_repeats, cfg.max_repeats)

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        out = DetectorOutput.not_evaluated(n)
        require_sorted(batch)
        keep = np.flatnonzero(self.in_order(batch) & usable(batch.value))
        if len(keep) == 0:
            return out
        b = batch.take(keep) if len(keep) < n else batch
        cfg = self.config
        st = self.state
        sid, ts, x = b.series, b.ts, b.value
        m = len(b)
        first, last = b.is_first, b.is_last
        gs = b.group_start
        rows = np.arange(m)

        seen_before = st["run_count"][sid] > 0
        prev_x = previous_in_run(x, first, st["last_value"][sid])
        prev_ts = previous_in_run(ts, first, st["last_ts"][sid])
        has_prev = ~first | seen_before
        same = has_prev & (x == prev_x)
        exempt = (x >= self._exempt_lo[sid]) & (x <= self._exempt_hi[sid])
        if cfg.saturation_visits > 0:
            # A value the series has come back to again and again at its floor or ceiling is where the
            # device saturates or the quantity bottoms out (a speed floor in a jam, humidity at 100 %).
            lo0, hi0 = st["lowest"][sid], st["highest"][sid]
            exempt |= (x == lo0) & (st["lowest_visits"][sid] >= cfg.saturation_visits)
            exempt |= (x == hi0) & (st["highest_visits"][sid] >= cfg.saturation_visits)

        # Runs of identical values: count and start time, carried across batches.
        restart = ~same
        at = last_index_where(restart, gs)
        count = np.where(at >= 0, rows - at + 1, st["run_count"][sid] + rows - gs + 1)
        run_start = np.where(at >= 0, ts[np.maximum(at, 0)], st["run_start"][sid])
        repeats = count - 1

        # The repeat probability as it stood at the start of the batch decides the alarm point.
        p0 = np.where(np.isnan(st["p_repeat"][sid]), cfg.prior_repeat_probability, st["p_repeat"][sid])
        q0 = np.where(np.isnan(st["p_recent"][sid]), p0, st["p_recent"][sid])
        k = self.required_repeats(np.maximum(p0, q0), sid)
        stuck = (repeats >= k) & ~exempt

        # Variation: |change| between consecutive readings, recent (time EWMA) vs long-run (count EWMA).
        diff = np.abs(x - prev_x)
        dt_s = np.maximum((ts - prev_ts) / 1e9, 0.0)
        long0 = st["diff_long"][sid]
        short0 = st["diff_short"][sid]
        n_diff0 = st["n_diff"][sid]
        history = (n_diff0 >= cfg.flatline_min_history) & (long0 > 0)
        varies = has_prev & ~exempt & ~stuck
        alpha_short = np.where(varies, -np.expm1(-dt_s / (cfg.flatline_window * self._interval[sid])), 0.0)
        short = segmented_linear_scan(1.0 - alpha_short, alpha_short * np.where(varies, diff, 0.0), first,
                                      short0)
        limit = cfg.flatline_ratio * long0
        flat = history & varies & (short < limit)

        # Learning (readings that are neither exempt nor flagged).
        # The repeat probability learns from runs once they have ended, and only from runs that did not
        # raise the alarm: a stuck sensor must not teach that repeats are normal. A run of L readings
        # is L - 1 repeats and one change, weighted as L readings.
        ended = restart & has_prev
        run_len = np.maximum(previous_in_run(count, first, st["run_count"][sid]), 1).astype(np.float64)
        prev_exempt = (prev_x >= self._exempt_lo[sid]) & (prev_x <= self._exempt_hi[sid])
        learn_p = ended & ~prev_exempt & (run_len - 1 < k)
        weight = np.where(learn_p, run_len, 0.0)
        n_p = st["n_learned"][sid] + count_in_run(weight, first)
        keep_p = np.where(learn_p, (1.0 - 1.0 / np.minimum(cfg.prior_weight + n_p, cfg.learn_readings)) ** run_len, 1.0)
        share = np.where(learn_p, (run_len - 1.0) / run_len, 0.0)
        p = segmented_linear_scan(keep_p, (1.0 - keep_p) * share, first, p0)
        keep_q = np.where(learn_p, np.minimum(np.exp(-run_len * self._interval[sid] / cfg.recent_window), keep_p), 1.0)
        q = segmented_linear_scan(keep_q, (1.0 - keep_q) * share, first, q0)
        learn_d = varies & ~flat
        n_d = n_diff0 + count_in_run(learn_d, first)
        alpha_d = np.where(learn_d, 1.0 / np.clip(n_d, 1, cfg.learn_readings), 0.0)
        long = segmented_linear_scan(1.0 - alpha_d, alpha_d * np.where(learn_d, diff, 0.0), first,
                                     long0)

        ls = sid[last]
        starts = np.flatnonzero(first)
        run_begins = restart.astype(np.int64)
        for end, better in (("lowest", np.minimum), ("highest", np.maximum)):
            old = st[end][ls]
            new = better(old, better.reduceat(x, starts))
            at_new = (x == np.repeat(new, np.diff(np.append(starts, m)))) & (run_begins > 0)
            visits = np.add.reduceat(at_new.astype(np.int64), starts)
            st[f"{end}_visits"][ls] = np.where(new == old, st[f"{end}_visits"][ls], 0) + visits
            st[end][ls] = new
        st["last_value"][ls] = x[last]
        st["last_ts"][ls] = ts[last]
        st["run_count"][ls] = count[last]
        st["run_start"][ls] = run_start[last]
        st["p_repeat"][ls] = p[last]
        st["p_recent"][ls] = q[last]
        st["n_learned"][ls] = n_p[last]
        st["diff_short"][ls] = short[last]
        st["diff_long"][ls] = long[last]
        st["n_diff"][ls] = n_d[last]

        level = np.where(stuck | flat, np.int8(LEVEL_WARNING), np.int8(LEVEL_OK))
        level[stuck & (ts - run_start >= int(cfg.critical_after * 1e9))] = LEVEL_CRITICAL
        reason = np.where(stuck, REASON_STUCK, np.where(flat, REASON_FLATLINE, REASON_OK)).astype(np.int16)
        stuck_score = np.clip(repeats / k, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            flat_score = np.where(history, np.clip(1.0 - short / limit, 0.0, 1.0), 0.0)
        score = np.where(exempt, 0.0, np.where(flat & ~stuck, flat_score, stuck_score))
        threshold = np.where(flat & ~stuck, limit, k)

        out.score[keep] = score
        out.level[keep] = level
        out.reason[keep] = reason
        out.threshold[keep] = threshold
        return out


def count_in_run(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """For each row, how many rows of its series run up to and including it have `mask` (or the sum of
    a float `mask`, a weight per row)."""
    c = np.cumsum(mask, dtype=np.result_type(mask.dtype, np.int64))
    starts = np.flatnonzero(first)
    before = np.repeat(c[starts] - mask[starts], np.diff(np.append(starts, len(mask))))
    return c - before

