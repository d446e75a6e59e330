"""The default anomaly profile: one calibrated anomaly score in [0, 1] per reading, no tuning.

(Docstring: work in progress.)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import special

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import (
    StreamingDetector,
    levels_from_score,
    normal_two_sided_p,
    score_from_p,
)
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.detectors.ewma_cusum import CUSUM_FIELDS, CusumConfig, cusum_p, cusum_step
from citywatch.detectors.robust_zscore import ROBUST_FIELDS, RobustZConfig, robust_step
from citywatch.detectors.variance_shift import VARIANCE_FIELDS, VarianceConfig, variance_p, variance_step
from citywatch.registry import SeriesIndex

__all__ = ["AnomalyConfig", "AnomalyScore", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  anomaly: {}
"""

REASON_OK, REASON_SPIKE, REASON_LEVEL, REASON_VARIANCE = 0, 1, 2, 3


class AnomalyConfig(StrictModel):
    robust: RobustZConfig = Field(default_factory=RobustZConfig)
    cusum: CusumConfig = Field(default_factory=CusumConfig)
    variance: VarianceConfig = Field(default_factory=VarianceConfig)
    likelihood_memory: float = Field(default=1000.0, ge=2.0)
    likelihood_short: float = Field(default=5.0, ge=1.0)
    likelihood_warmup: int = Field(default=100, ge=1)
    refractory: float = Field(default=200.0, ge=0.0)
    warning: float = Field(default=0.4, gt=0.0, le=1.0)
    critical: float = Field(default=0.7, gt=0.0, le=1.0)


LIKELIHOOD_FIELDS: dict[str, tuple[type, float]] = {
    "lk_n": (np.float64, 0.0),
    "lk_mean": (np.float64, 0.0),
    "lk_var": (np.float64, 0.0),
    "lk_short": (np.float64, 0.0),
    "al_peak": (np.float64, 0.0),
}


class AnomalyScore(StreamingDetector):
    name = "anomaly"
    reasons = ("ok", "spike", "level_shift", "variance_shift")
    state_fields = {**ROBUST_FIELDS, **CUSUM_FIELDS, **VARIANCE_FIELDS, **LIKELIHOOD_FIELDS}
    step_outputs = ("seen", "z", "stat", "ratio", "surprise", "lz", "score", "out", "which")

    def __init__(self, series: SeriesIndex, cfg: AnomalyConfig | None = None) -> None:
        self.cfg = cfg or AnomalyConfig()
        self._warmup = max(self.cfg.robust.warmup, self.cfg.cusum.warmup, self.cfg.variance.warmup)
        super().__init__(series)

    def _step(self, state, x, ts):
        cfg = self.cfg
        seen = state["rz_n"].copy()
        z, sigma, _ = robust_step(state, x, cfg.robust)
        stat = cusum_step(state, x, sigma, cfg.cusum)
        ratio = variance_step(state, x, cfg.variance)
        p = np.stack([normal_two_sided_p(z), cusum_p(stat, cfg.cusum.k), variance_p(ratio, cfg.variance.short_memory)])
        which = np.argmin(p, axis=0)
        pmin = np.minimum(1.0, 3.0 * p[which, np.arange(len(x))])
        surprise = -np.log10(np.maximum(pmin, 1e-300))
        warm = seen < self._warmup
        surprise = np.where(warm, 0.0, surprise)
        # likelihood of the surprise against this series' own history of surprises
        ln, mean, var, short = state["lk_n"], state["lk_mean"], state["lk_var"], state["lk_short"]
        short_new = np.where(ln > 0, short + (surprise - short) / cfg.likelihood_short, surprise)
        lz = (short_new - mean) / np.sqrt(var + 1e-4)
        lwarm = ln < cfg.likelihood_warmup
        lz = np.where(lwarm, 0.0, lz)
        a = np.where(warm, 0.0, np.maximum(1.0 / (ln + 1.0), 1.0 / cfg.likelihood_memory))
        delta = surprise - mean
        mean_new = mean + a * delta
        var[...] = (1.0 - a) * (var + a * delta * delta)
        mean[...] = mean_new
        short[...] = np.where(warm, 0.0, short_new)
        ln += np.where(warm, 0.0, 1.0)
        score = score_from_p(special.ndtr(-lz))
        score = np.where(warm, 0.0, score)
        peak = state["al_peak"]
        decay = 0.0 if cfg.refractory <= 0 else np.exp(-1.0 / cfg.refractory)
        prior = peak * decay
        out = np.where(score > prior, score, 0.0)
        peak[...] = np.maximum(prior, score)
        return seen, z, stat, ratio, surprise, lz, score, out, which.astype(np.float64)

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        score = stats["out"].copy()
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = np.where(level > LEVEL_OK, stats["which"].astype(np.int16) + 1, 0).astype(np.int16)
        threshold = np.where(level == 2, self.cfg.critical, self.cfg.warning)
        warm = stats["seen"] < self._warmup
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        threshold[warm] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
