"""EWMA baseline with a two-sided CUSUM: level shifts, including small ones a spike test misses.

Per series, a slow baseline ``mu`` (an exponentially weighted moving average) and Page's two-sided
CUSUM of the standardised residuals ``e = clip((x - mu) / sigma, -clip, clip)``, where sigma is
the robust spread of the series (the streaming MAD of `robust_zscore`, which this detector keeps
too):

    S+ = max(0, S+ + e - k)        S- = max(0, S- - e - k)        stat = max(S+, S-)

A shift of delta sigma makes the statistic grow by about delta - k per reading; ``k`` = 0.5 is the
optimal reference value for shifts of one sigma. Clipping each residual keeps a lone spike (the
robust z-score's business) from making a level shift on its own. The baseline follows the series
(``mu += alpha * sigma * e``, alpha = 1 / ``memory``), so after a lasting shift the residuals shrink
and the statistic decays by k per reading: the detector reports the change, then accepts the new
level as normal.

Score: for independent normal residuals the CUSUM's stationary tail is P(stat > s) ~ exp(-2 k s)
(Siegmund's approximation: 2k is the root of E[exp(theta (e - k))] = 1 for e ~ N(0, 1)); doubled
for the two sides, p = min(1, 2 exp(-2 k stat)), reported as -log10(p) / 10 in [0, 1]. Levels from
``warning`` and ``critical`` (scores; with k = 0.5, 0.4 is a statistic of ~9.9). Reasons
``level_up`` / ``level_down``. Output threshold: the baseline mu.

The first ``warmup`` readings only learn (level -1, NaN). Memories count readings, not time.

Sample configuration: see `SAMPLE_CONFIG`.

Example: a water-level series that steps up by 1.5 sigma at reading 120:

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> sensor = Sensor(id="wl-01", domain="water", area="a", lat=10.95, lon=106.82, interval=300,
...                 metrics={"level": MetricSpec(unit="m")})
>>> series = SeriesIndex(Registry({sensor.id: sensor}))
>>> series.add_registry()
>>> values = 2.0 + np.random.default_rng(3).normal(0, 0.1, 200)
>>> values[120:] += 0.15
>>> det = EwmaCusum(series)
>>> out = det.process(ReadingBatch.from_columns([0] * 200, np.arange(200) * 300 * 10**9, values))
>>> first = int(np.flatnonzero(out.level > 0)[0]); 120 <= first < 140
True
>>> det.reason_names(out.reason)[first]
'level_up'
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import StreamingDetector, levels_from_score, score_from_p
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.detectors.robust_zscore import ROBUST_FIELDS, RobustZConfig, robust_step
from citywatch.registry import SeriesIndex

__all__ = ["CusumConfig", "EwmaCusum", "SAMPLE_CONFIG", "CUSUM_FIELDS", "cusum_step", "cusum_p"]

SAMPLE_CONFIG = """\
detectors:
  ewma_cusum:
    memory: 50          # readings the EWMA baseline reflects (alpha = 1/memory)
    k: 0.5              # CUSUM reference value, in sigma (half the smallest shift of interest)
    clip: 3.0           # residuals are clipped to +-clip sigma (a spike alone is not a shift)
    warmup: 32          # readings learned before the first score
    warning: 0.4        # score (= -log10(p) / 10); with k 0.5: statistic >= 9.9
    critical: 0.7       # statistic >= 16.8
    robust:             # the robust spread sigma (see robust_zscore)
      memory: 32
"""


class CusumConfig(StrictModel):
    memory: float = Field(default=50.0, ge=2.0)
    k: float = Field(default=0.5, gt=0.0)
    clip: float = Field(default=3.0, gt=0.0)
    warmup: int = Field(default=32, ge=2)
    warning: float = Field(default=0.4, gt=0.0, le=1.0)
    critical: float = Field(default=0.7, gt=0.0, le=1.0)
    robust: RobustZConfig = Field(default_factory=RobustZConfig)


CUSUM_FIELDS: dict[str, tuple[type, float]] = {
    "cu_n": (np.float64, 0.0),  # readings seen
    "cu_mu": (np.float64, 0.0),  # EWMA baseline
    "cu_pos": (np.float64, 0.0),  # upper CUSUM S+
    "cu_neg": (np.float64, 0.0),  # lower CUSUM S-
}


def cusum_step(s: dict[str, np.ndarray], x: np.ndarray, sigma: np.ndarray, cfg: CusumConfig) -> np.ndarray:
    """One reading per active series: the signed statistic (S+ if S+ >= S-, else -S-); updates `s`."""
    n, mu, pos, neg = s["cu_n"], s["cu_mu"], s["cu_pos"], s["cu_neg"]
    warm = n < cfg.warmup
    if warm.any():
        base = np.where(n > 0, mu, x)
        e = np.clip((x - base) / sigma, -cfg.clip, cfg.clip)
        pos[...] = np.where(warm, 0.0, np.maximum(0.0, pos + e - cfg.k))
        neg[...] = np.where(warm, 0.0, np.maximum(0.0, neg - e - cfg.k))
        # In warm-up the baseline is the running mean; then the EWMA of the clipped residuals.
        mu[...] = np.where(warm, base + (x - base) / (n + 1.0), base + sigma * e / cfg.memory)
    else:
        e = np.clip((x - mu) / sigma, -cfg.clip, cfg.clip)
        pos[...] = np.maximum(0.0, pos + e - cfg.k)
        neg[...] = np.maximum(0.0, neg - e - cfg.k)
        mu += sigma * e / cfg.memory
    n += 1.0
    return np.where(pos >= neg, pos, -neg)


def cusum_p(stat: np.ndarray, k: float) -> np.ndarray:
    """Two-sided tail probability of a CUSUM statistic (Siegmund's exponential approximation)."""
    return np.minimum(1.0, 2.0 * np.exp(-2.0 * k * np.abs(stat)))


class EwmaCusum(StreamingDetector):
    """EWMA baseline and two-sided CUSUM per series; see the module docstring."""

    name = "ewma_cusum"
    reasons = ("ok", "level_up", "level_down")
    state_fields = {**ROBUST_FIELDS, **CUSUM_FIELDS}
    step_outputs = ("stat", "baseline", "seen")

    def __init__(self, series: SeriesIndex, cfg: CusumConfig | None = None) -> None:
        self.cfg = cfg or CusumConfig()
        super().__init__(series)

    def _step(self, state, x, ts):
        seen = state["cu_n"].copy()
        baseline = state["cu_mu"].copy()
        _, sigma, _ = robust_step(state, x, self.cfg.robust)
        stat = cusum_step(state, x, sigma, self.cfg)
        return stat, np.where(seen > 0, baseline, x), seen

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        stat = stats["stat"]
        score = score_from_p(cusum_p(stat, self.cfg.k))
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = np.where(level > LEVEL_OK, np.where(stat >= 0, 1, 2), 0).astype(np.int16)
        threshold = stats["baseline"].copy()
        warm = stats["seen"] < max(self.cfg.warmup, self.cfg.robust.warmup)
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        threshold[warm] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
