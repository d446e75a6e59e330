"""The default anomaly profile: one calibrated anomaly score in [0, 1] per reading, no tuning.

(Docstring: work in progress.)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import StreamingDetector, levels_from_score
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.detectors.ewma_cusum import CUSUM_FIELDS, CusumConfig, cusum_step
from citywatch.detectors.robust_zscore import ROBUST_FIELDS, RobustZConfig, robust_step
from citywatch.detectors.range_novelty import envelope_step
from citywatch.detectors.variance_shift import VARIANCE_FIELDS, VarianceConfig, variance_step
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
    level_memory: float = Field(default=33.0, ge=1.0)
    memory: float = Field(default=5000.0, ge=2.0)
    warmup: int = Field(default=100, ge=2)
    half: float = Field(default=0.05, gt=0.0)
    statistics_scale: float = Field(default=3.0, gt=0.0)
    refractory: float = Field(default=100.0, ge=0.0)
    damping: float = Field(default=0.5, ge=0.0, le=1.0)
    warning: float = Field(default=0.8, gt=0.0, le=1.0)
    critical: float = Field(default=0.9, gt=0.0, le=1.0)


# The statistics whose per-series envelopes calibrate the score, and the reason each one reports.
FEATURES = ("value", "level", "robust_z", "cusum", "variance")
_REASON_OF_FEATURE = np.array([1, 2, 3, 2, 4], dtype=np.int16)
_ONE_SIDED = np.array([False, False, True, True, False])

FEATURE_FIELDS: dict[str, tuple[type, float]] = {
    "ew_level": (np.float64, 0.0),
    **{f"env_hi_{f}": (np.float64, 0.0) for f in FEATURES},
    **{f"env_lo_{f}": (np.float64, 0.0) for f in FEATURES},
    "al_peak": (np.float64, 0.0),
}


class AnomalyScore(StreamingDetector):
    name = "anomaly"
    reasons = ("ok", "new_extreme", "level_shift", "spike", "variance_shift")
    state_fields = {**ROBUST_FIELDS, **CUSUM_FIELDS, **VARIANCE_FIELDS, **FEATURE_FIELDS}
    step_outputs = ("seen", *FEATURES, "combined", "out", "which")

    def __init__(self, series: SeriesIndex, cfg: AnomalyConfig | None = None) -> None:
        self.cfg = cfg or AnomalyConfig()
        c = self.cfg
        self._warmup = max(c.warmup, c.robust.warmup, c.cusum.warmup, c.variance.warmup)
        self._half = np.where(np.arange(len(FEATURES)) < 2, c.half, c.half * c.statistics_scale)[:, None]
        self._decay = 0.0 if c.refractory <= 0 else float(np.exp(-1.0 / c.refractory))
        super().__init__(series)

    def _step(self, state, x, ts):
        cfg = self.cfg
        seen = state["rz_n"].copy()
        z, sigma, _ = robust_step(state, x, cfg.robust)
        stat = cusum_step(state, x, sigma, cfg.cusum)
        ratio = variance_step(state, x, cfg.variance)
        first = seen == 0
        level = state["ew_level"]
        level[...] = np.where(first, x, level + (x - level) / cfg.level_memory)
        values = (x, level, np.abs(z), np.abs(stat), np.log(ratio))
        started = state["rz_n"] > 1.0  # the envelopes start at each series' first reading
        parts = np.empty((len(FEATURES), len(x)))
        for k, (name, v) in enumerate(zip(FEATURES, values)):
            nov = envelope_step(state[f"env_hi_{name}"], state[f"env_lo_{name}"], started, v, cfg.memory)
            if _ONE_SIDED[k]:
                nov = np.maximum(nov, 0.0)
            parts[k] = np.abs(nov)
        parts /= parts + self._half
        which = np.argmax(parts, axis=0)
        combined = parts[which, np.arange(len(x))]
        combined = np.where(seen < self._warmup, 0.0, combined)
        peak = state["al_peak"]
        prior = peak * self._decay
        out = np.where(combined > prior, combined, cfg.damping * combined)
        peak[...] = np.maximum(prior, combined)
        return (seen, *parts, combined, out, which.astype(np.float64))

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        score = stats["out"].copy()
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = np.where(level > LEVEL_OK, _REASON_OF_FEATURE[stats["which"].astype(np.intp)], 0).astype(np.int16)
        threshold = np.where(level == 2, self.cfg.critical, self.cfg.warning)
        warm = stats["seen"] < self._warmup
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        threshold[warm] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
