"""Variance shift: the short-term variability of a series against its long-term variability.

Per series, two exponentially weighted means of the squared first differences d = x - x_prev:
a short one (``short_memory`` readings) and a long one (``long_memory`` readings), and the ratio
``r = short / long``. First differences remove the level (and most of a slow trend or daily cycle),
so what is left is the reading-to-reading variability: noisier sensors (a failing probe, a camera in
rain) push r up, a stuck or saturated sensor (a flat line) pulls it towards 0. Squared differences
are clipped at ``clip`` times the long-term mean before they enter either mean, so that a lone spike
counts as a spike (robust z-score) and not as a change of variance.

Score: for independent normal differences an EWMA of their squares with weight a is approximately
a scaled chi-square with nu = (2 - a) / a degrees of freedom (same mean and variance), so
``nu * r ~ chi2(nu)``; the two-sided tail probability p = min(1, 2 * min(P(chi2 >= nu r),
P(chi2 <= nu r))) is reported as -log10(p) / 10 in [0, 1]. Levels from ``warning`` and
``critical`` (scores). Reasons ``variance_up`` / ``variance_down``. Output threshold: NaN.

The first ``warmup`` readings learn the variance (running means; level -1, NaN). A constant series
has ratio 1 (0/0 is read as "no change"); the comparison is per reading, whatever the time between
readings.

Sample configuration: see `SAMPLE_CONFIG`.

Example: a forest-station humidity series whose noise triples at reading 300:

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> sensor = Sensor(id="fr-01", domain="forest", area="a", lat=11.1, lon=107.0, interval=600,
...                 metrics={"rh": MetricSpec(unit="%")})
>>> series = SeriesIndex(Registry({sensor.id: sensor}))
>>> series.add_registry()
>>> noise = np.random.default_rng(5).normal(0, 1, 400)
>>> values = 70 + np.where(np.arange(400) < 300, 1.0, 3.0) * noise
>>> det = VarianceShift(series)
>>> out = det.process(ReadingBatch.from_columns([0] * 400, np.arange(400) * 600 * 10**9, values))
>>> first = int(np.flatnonzero(out.level > 0)[0]); 300 <= first < 320
True
>>> det.reason_names(out.reason)[first]
'variance_up'
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import special

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import StreamingDetector, levels_from_score, score_from_p
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.registry import SeriesIndex

__all__ = ["VarianceConfig", "VarianceShift", "SAMPLE_CONFIG", "VARIANCE_FIELDS", "variance_step", "variance_p"]

SAMPLE_CONFIG = """\
detectors:
  variance_shift:
    short_memory: 10    # readings in the short-term variance
    long_memory: 200    # readings in the long-term variance
    clip: 25.0          # squared differences beyond clip x the long-term variance count as that
    warmup: 32          # readings learned before the first score
    warning: 0.4        # score (= -log10(p) / 10): p <= 1e-4
    critical: 0.7       # p <= 1e-7
"""


class VarianceConfig(StrictModel):
    short_memory: float = Field(default=10.0, ge=1.5)
    long_memory: float = Field(default=200.0, ge=2.0)
    clip: float = Field(default=25.0, gt=1.0)
    warmup: int = Field(default=32, ge=3)
    warning: float = Field(default=0.4, gt=0.0, le=1.0)
    critical: float = Field(default=0.7, gt=0.0, le=1.0)


VARIANCE_FIELDS: dict[str, tuple[type, float]] = {
    "vs_n": (np.float64, 0.0),  # readings seen
    "vs_prev": (np.float64, 0.0),  # previous reading
    "vs_short": (np.float64, 0.0),  # short-term mean squared difference
    "vs_long": (np.float64, 0.0),  # long-term mean squared difference
}


def variance_step(s: dict[str, np.ndarray], x: np.ndarray, cfg: VarianceConfig) -> np.ndarray:
    """One reading per active series: the ratio short / long after x; updates `s` in place."""
    n, prev, short, long_ = s["vs_n"], s["vs_prev"], s["vs_short"], s["vs_long"]
    warm = n < cfg.warmup
    tiny = 1e-18 * (1.0 + x * x)
    if warm.any():
        d2 = np.where(n > 0, (x - prev) ** 2, 0.0)
        # During warm-up both are the running mean of the n differences seen so far.
        running = np.where(n > 0, long_ + (d2 - long_) / np.maximum(n, 1.0), 0.0)
        clipped = np.minimum(d2, cfg.clip * long_)
        short_new = np.where(warm, running, short + (clipped - short) / cfg.short_memory)
        ratio = np.where(warm, 1.0, (short_new + tiny) / (long_ + tiny))
        long_[...] = np.where(warm, running, long_ + (clipped - long_) / cfg.long_memory)
        short[...] = short_new
    else:
        d = x - prev
        clipped = np.minimum(d * d, cfg.clip * long_)
        short += (clipped - short) / cfg.short_memory
        ratio = (short + tiny) / (long_ + tiny)
        long_ += (clipped - long_) / cfg.long_memory
    prev[...] = x
    n += 1.0
    return ratio


def variance_p(ratio: np.ndarray, short_memory: float) -> np.ndarray:
    """Two-sided tail probability of a short/long variance ratio (scaled chi-square model)."""
    a = 1.0 / short_memory
    nu = (2.0 - a) / a
    q = nu * ratio
    return np.minimum(1.0, 2.0 * np.minimum(special.chdtrc(nu, q), special.chdtr(nu, q)))


class VarianceShift(StreamingDetector):
    """Short/long variance ratio of first differences per series; see the module docstring."""

    name = "variance_shift"
    reasons = ("ok", "variance_up", "variance_down")
    state_fields = VARIANCE_FIELDS
    step_outputs = ("ratio", "seen")

    def __init__(self, series: SeriesIndex, cfg: VarianceConfig | None = None) -> None:
        self.cfg = cfg or VarianceConfig()
        super().__init__(series)

    def _step(self, state, x, ts):
        seen = state["vs_n"].copy()
        return variance_step(state, x, self.cfg), seen

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        ratio = stats["ratio"]
        score = score_from_p(variance_p(ratio, self.cfg.short_memory))
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = np.where(level > LEVEL_OK, np.where(ratio >= 1.0, 1, 2), 0).astype(np.int16)
        warm = stats["seen"] < self.cfg.warmup
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        return DetectorOutput(score=score, level=level, reason=reason, threshold=np.full(len(ratio), np.nan))
