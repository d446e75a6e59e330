"""Range novelty: a reading outside everything its series has shown for a long time.

Per series, a slowly forgetting envelope ``[lo, hi]`` of the readings seen so far: a new reading
above ``hi`` (below ``lo``) becomes the new ``hi`` (``lo``), and between readings both edges move
towards each other by ``(hi - lo) / memory`` so that the envelope forgets extremes older than about
``memory`` readings (a sensor's range after a recalibration, last season's peak). The novelty of a
reading is how far it lies outside the envelope *before* it, as a fraction of the envelope's width:

    novelty = max(x - hi, lo - x, 0) / (hi - lo)

It is 0 for every reading inside the known range, whatever its distribution, so the many ordinary
ups and downs of a noisy or seasonal series cost nothing, and it needs no model of the series: the
envelope's width is the series' own scale (unit-free, one configuration for every sensor). What it
sees: new highs and lows — a pollution episode beyond any recent peak, a river level above last
month's, a temperature probe failing low — and how far beyond. What it does not see: anomalies
inside the range (a spike smaller than earlier ones, a flat line, a missing daily peak): the other
components of the default profile (`anomaly_score`) cover those.

Score: ``novelty / (novelty + half)``, in [0, 1): 0.5 when the reading is ``half`` (default 5 %)
of the range beyond it. Levels from ``warning`` and ``critical`` (scores; by default 5 % and 20 %
of the range beyond it). Reasons ``new_high`` / ``new_low``. Output threshold: the envelope edge
the reading crossed (``hi`` or ``lo``; for readings inside, the nearer one).

The first ``warmup`` readings build the envelope (level -1, NaN). The memory counts readings.

Sample configuration: see `SAMPLE_CONFIG`.

Example: a PM2.5 series that stays between 20 and 60, then reaches 90:

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
>>> sensor = Sensor(id="aq-02", domain="air", area="a", lat=10.95, lon=106.82, interval=60,
...                 metrics={"pm25": MetricSpec(unit="ug/m3")})
>>> series = SeriesIndex(Registry({sensor.id: sensor}))
>>> series.add_registry()
>>> values = 40 + 20 * np.sin(np.arange(500) / 20)
>>> values[400] = 90.0
>>> det = RangeNovelty(series)
>>> out = det.process(ReadingBatch.from_columns([0] * 500, np.arange(500) * 60 * 10**9, values))
>>> np.flatnonzero(out.level > 0).tolist(), det.reason_names(out.reason)[400]
([400], 'new_high')
>>> round(float(out.score[400]), 2)  # ~30 above an envelope ~40 wide: novelty ~0.8
0.94
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from citywatch.batch import ReadingBatch
from citywatch.config import StrictModel
from citywatch.detectors._streaming import StreamingDetector, levels_from_score
from citywatch.detectors.base import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.registry import SeriesIndex

__all__ = ["NoveltyConfig", "RangeNovelty", "SAMPLE_CONFIG", "NOVELTY_FIELDS", "envelope_step", "novelty_step", "novelty_score"]

SAMPLE_CONFIG = """\
detectors:
  range_novelty:
    memory: 5000        # readings after which an old extreme is forgotten
    warmup: 100         # readings that build the envelope before the first score
    half: 0.05          # novelty (fraction of the range beyond it) that scores 0.5
    warning: 0.5        # score: 5 % of the range beyond it
    critical: 0.8       # score: 20 % of the range beyond it
"""


class NoveltyConfig(StrictModel):
    memory: float = Field(default=5000.0, ge=2.0)
    warmup: int = Field(default=100, ge=2)
    half: float = Field(default=0.05, gt=0.0)
    warning: float = Field(default=0.5, gt=0.0, le=1.0)
    critical: float = Field(default=0.8, gt=0.0, le=1.0)


NOVELTY_FIELDS: dict[str, tuple[type, float]] = {
    "nv_n": (np.float64, 0.0),  # readings seen
    "nv_hi": (np.float64, 0.0),  # envelope top
    "nv_lo": (np.float64, 0.0),  # envelope bottom
}


def envelope_step(hi: np.ndarray, lo: np.ndarray, started: np.ndarray, x: np.ndarray, memory: float) -> np.ndarray:
    """Signed novelty of x against the envelope [lo, hi] (+ above, - below, as a fraction of its width),
    then the envelope update, in place. Where `started` is False the envelope starts at x."""
    hi0 = np.where(started, hi, x)
    lo0 = np.where(started, lo, x)
    tiny = 1e-12 * (1.0 + np.abs(hi0) + np.abs(lo0))
    above = np.maximum(x - hi0, 0.0)
    below = np.maximum(lo0 - x, 0.0)
    novelty = np.where(above >= below, above, -below) / np.maximum(hi0 - lo0, tiny)
    hi_new = np.maximum(x, hi0)
    lo_new = np.minimum(x, lo0)
    shrink = (hi_new - lo_new) / memory
    hi[...] = np.maximum(hi_new - shrink, x)
    lo[...] = np.minimum(lo_new + shrink, x)
    return novelty


def novelty_step(s: dict[str, np.ndarray], x: np.ndarray, cfg: NoveltyConfig) -> np.ndarray:
    """One reading per active series: the signed novelty (+ above hi, - below lo); updates `s`."""
    novelty = envelope_step(s["nv_hi"], s["nv_lo"], s["nv_n"] > 0, x, cfg.memory)
    s["nv_n"] += 1.0
    return novelty


def novelty_score(novelty: np.ndarray, half: float) -> np.ndarray:
    a = np.abs(novelty)
    return a / (a + half)


class RangeNovelty(StreamingDetector):
    """Readings outside a slowly forgetting envelope of the series' history; see the module docstring."""

    name = "range_novelty"
    reasons = ("ok", "new_high", "new_low")
    state_fields = NOVELTY_FIELDS
    step_outputs = ("novelty", "hi", "lo", "seen")

    def __init__(self, series: SeriesIndex, cfg: NoveltyConfig | None = None) -> None:
        self.cfg = cfg or NoveltyConfig()
        super().__init__(series)

    def _step(self, state, x, ts):
        seen = state["nv_n"].copy()
        hi = np.where(seen > 0, state["nv_hi"], x)
        lo = np.where(seen > 0, state["nv_lo"], x)
        return novelty_step(state, x, self.cfg), hi, lo, seen

    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput:
        novelty = stats["novelty"]
        score = novelty_score(novelty, self.cfg.half)
        level = levels_from_score(score, self.cfg.warning, self.cfg.critical)
        reason = np.where(level > LEVEL_OK, np.where(novelty >= 0, 1, 2), 0).astype(np.int16)
        x = batch.value
        nearer_hi = (stats["hi"] - x) <= (x - stats["lo"])
        threshold = np.where(novelty > 0, stats["hi"], np.where(novelty < 0, stats["lo"],
                                                                np.where(nearer_hi, stats["hi"], stats["lo"])))
        warm = stats["seen"] < self.cfg.warmup
        score[warm] = np.nan
        level[warm] = LEVEL_NOT_EVALUATED
        reason[warm] = 0
        threshold[warm] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
