"""Robust z-score: how far a reading lies from its series' recent median, in robust standard deviations.

For each series the detector tracks a *streaming median* ``med`` and *median absolute deviation*
``mad`` of its recent readings in four numbers (no window of past values is kept), and scores each
reading x by ``z = (x - med) / sigma`` with the state as it was *before* x (so a spike does not
hide itself), where ``sigma = max(1.4826 * mad, 0.63 * mean_abs_dev, 1e-9 * (1 + |med|))``.
1.4826 * MAD estimates the standard deviation of normal data and, unlike it, ignores outliers. The
mean absolute deviation (with outliers clipped at 5 sigma) is a floor for series whose MAD collapses
to 0 (e.g. counts that are mostly equal), at half its normal-data weight so that it does not bias
sigma otherwise; the last term only keeps a constant series from dividing by zero.

Updates, with eta = 1 / ``memory`` (the number of recent readings the estimates reflect):

* warm-up, the first ``warmup`` readings: running mean and mean absolute deviation (MAD taken as
  0.845 times the latter, their ratio for normal data); no score (level -1, NaN);
* then stochastic approximation of the quantiles (Robbins-Monro on the pinball loss):
  ``med += eta * sigma * sign(x - med)`` converges to the median of recent readings, and
  ``mad *= exp(eta * sign(|x - med| - mad))`` to the median of ``|x - med|``, i.e. the MAD; both
  steps are bounded, so an outlier moves them no more than an ordinary reading. After a level shift
  the MAD grows geometrically until the median has caught up, so the detector re-adapts.

Score: the two-sided normal tail probability p = P(|Z| >= |z|), reported as -log10(p) / 10 clipped
to [0, 1] (0.4 is p = 1e-4, |z| ~ 3.9; 0.7 is p = 1e-7, |z| ~ 5.3). Levels: warning from
``warning``, critical from ``critical`` (scores). Reason ``spike`` when not ok. Output threshold:
the value at which the reading would have reached warning, on its side of the median.

The estimates are per reading, whatever the time between readings (irregular timestamps are fine);
the memory is a number of readings, so that one configuration suits 1-minute and 1-hour sensors.

Sample configuration: see `SAMPLE_CONFIG`.

Example: a steady NO2 series with noise, then a spike.

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> sensor = Sensor(id="aq-01", domain="air", area="a", lat=10.95, lon=106.82, interval=60,
...                 metrics={"no2": MetricSpec(unit="ug/m3")})
>>> series = SeriesIndex(Registry({sensor.id: sensor}))
>>> series.add_registry()
>>> values = 40 + np.random.default_rng(1).normal(0, 2, 200)
>>> values[150] = 80.0
>>> det = RobustZScore(series)
>>> out = det.process(ReadingBatch.from_columns([0] * 200, np.arange(200) * 60 * 10**9, values))
>>> bool(np.isnan(out.score[:32]).all()), int(out.level[150]), det.reason_names(out.reason)[150]
(True, 2, 'spike')
>>> int((out.level[32:] > 0).sum())
1
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy.special import ndtri

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import (
    MAD_TO_SIGMA,
    MEANAD_TO_SIGMA,
    StreamingDetector,
    levels_from_score,
    normal_two_sided_p,
    p_from_score,
    score_from_p,
)
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.registry import SeriesIndex

__all__ = ["RobustZConfig", "RobustZScore", "SAMPLE_CONFIG", "ROBUST_FIELDS", "robust_step", "robust_sigma"]

SAMPLE_CONFIG = """\
detectors:
  robust_zscore:
    memory: 32          # readings the streaming median/MAD reflect
    warmup: 32          # readings learned before the first score
    clip: 5.0           # deviations beyond this many sigma count as this many in the mean abs. deviation
    warning: 0.4        # score (= -log10(p) / 10): p <= 1e-4, |z| >= 3.9
    critical: 0.7       # p <= 1e-7, |z| >= 5.3
"""


class RobustZConfig(StrictModel):
    memory: float = Field(default=32.0, ge=2.0)
    warmup: int = Field(default=32, ge=2)
    clip: float = Field(default=5.0, gt=0.0)
    warning: float = Field(default=0.4, gt=0.0, le=1.0)
    critical: float = Field(default=0.7, gt=0.0, le=1.0)


ROBUST_FIELDS: dict[str, tuple[type, float]] = {
    "rz_n": (np.float64, 0.0),  # readings seen
    "rz_med": (np.float64, 0.0),  # streaming median
    "rz_mad": (np.float64, 0.0),  # streaming median absolute deviation
    "rz_ad": (np.float64, 0.0),  # mean absolute deviation, outliers clipped
}

_MAD_PER_MEANAD = MEANAD_TO_SIGMA / MAD_TO_SIGMA


def robust_sigma(med: np.ndarray, mad: np.ndarray, ad: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(MAD_TO_SIGMA * mad, 0.5 * MEANAD_TO_SIGMA * ad), 1e-9 * (1.0 + np.abs(med)))


def robust_step(s: dict[str, np.ndarray], x: np.ndarray, cfg: RobustZConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One reading per active series: (z, sigma, median) from the state before x; updates `s` in place."""
    n, med, mad, ad = s["rz_n"], s["rz_med"], s["rz_mad"], s["rz_ad"]
    sigma = robust_sigma(med, mad, ad)
    prior_med = med.copy()
    dev = x - med
    absdev = np.abs(dev)
    eta = 1.0 / cfg.memory
    warm = n < cfg.warmup
    if warm.any():
        z = np.where(n > 0, dev / sigma, 0.0)
        ad_new = np.where(
            warm,
            np.where(n > 0, ad + (absdev - ad) / np.maximum(n, 1.0), 0.0),
            ad + eta * (np.minimum(absdev, cfg.clip * sigma) - ad),
        )
        med[...] = np.where(warm, med + dev / (n + 1.0), med + eta * sigma * np.sign(dev))
        mad[...] = np.where(warm | (mad <= 0.0), _MAD_PER_MEANAD * ad_new, mad * np.exp(eta * np.sign(absdev - mad)))
    else:  # the steady state, without the warm-up branch
        z = dev / sigma
        ad_new = ad + eta * (np.minimum(absdev, cfg.clip * sigma) - ad)
        med += eta * sigma * np.sign(dev)
        mad[...] = np.where(mad <= 0.0, _MAD_PER_MEANAD * ad_new, mad * np.exp(eta * np.sign(absdev - mad)))
    ad[...] = ad_new
    n += 1.0
    return z, sigma, prior_med


class RobustZScore(StreamingDetector):
    """Robust z-score against a streaming median/MAD per series; see the module docstring."""

    name = "robust_zscore"
    reasons = ("ok", "spike")
    state_fields = ROBUST_FIELDS
    step_outputs = ("z", "sigma", "median", "seen")

    def __init__(self, series: SeriesIndex, cfg: RobustZConfig | None = None) -> None:
        self.cfg = cfg or RobustZConfig()
        self._z_warning = float(-ndtri(p_from_score(self.cfg.warning) / 2.0))
        super().__init__(series)

    def _step(self, state, x, ts):
        seen = state["rz_n"].copy()
        z, sigma, med = robust_step(state, x, self.cfg)
        return z, sigma, med, seen

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        z = stats["z"]
        score = score_from_p(normal_two_sided_p(z))
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = (level > LEVEL_OK).astype(np.int16)
        threshold = stats["median"] + np.where(z < 0, -1.0, 1.0) * self._z_warning * stats["sigma"]
        warm = stats["seen"] < self.cfg.warmup
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        threshold[warm] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
