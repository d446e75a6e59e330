"""Recent median: a flat forecast at the median of the last values, no seasonal profile at all.

``y(t + h) = median(y(t - window + 1), ..., y(t))`` for every ``h``, over the last `window` values
seen (missing hours are skipped, not counted: across a gap the median is that of the values before
it). With ``window = 24`` it is the level of the last day with its daily rhythm and its spikes
averaged out by the median. On a series whose daily profile is weak or keeps changing (a road's
speed, a travel time) this level-only forecast beats the same hour yesterday, which repeats
yesterday's noise; the combination (`combination`) runs it as a member so that such series can
follow it. The last `window` values of each series are kept in a ring; the median is one NumPy
operation over all the series updated.

>>> import numpy as np
>>> from citywatch.detectors.forecast.base import SeriesKeys
>>> f = RecentMedian(SeriesKeys([("rs-1", "speed"), ("rs-2", "speed")]), horizon=3, window=5)
>>> for t, (a, b) in enumerate([(60, 10), (62, 10), (300, 11), (61, 12), (59, 12), (63, 13)]):
...     f.update(np.array([0, 1]), np.array([t, t]), np.array([a, b], dtype=float))
>>> f.forecast(np.array([0, 1]))[0].tolist()  # the spike of 300 does not move it
[[62.0, 62.0, 62.0], [12.0, 12.0, 12.0]]
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.forecast.base import Forecaster

__all__ = ["RecentMedian", "SAMPLE_CONFIG", "DEFAULTS"]

DEFAULTS = {"window": 24}

SAMPLE_CONFIG = """\
forecasts:
  # runs as a member of the combination (window 24), which weighs it per series and horizon
  models: {aqi: combination, water: combination, traffic: combination}
"""


class RecentMedian(Forecaster):
    name = "recent_median"

    def __init__(self, series, horizon: int = 24, level: float = 0.8, *, window: int = DEFAULTS["window"],
                 **kwargs) -> None:
        if window < 1:
            raise ValueError(f"recent_median.window must be at least 1 value, got {window}")
        self.window = int(window)
        self.model_fields = {"recent": (np.float64, np.nan, self.window), "n": (np.int64, 0)}
        super().__init__(series, horizon=horizon, level=level, **kwargs)

    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        n = self.state["n"][ids]
        self.state["recent"][ids, n % self.window] = values
        self.state["n"][ids] = n + 1

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        recent = self.state["recent"][ids]
        seen = np.isfinite(recent).any(axis=1)
        med = np.full(len(ids), np.nan)
        if seen.any():
            med[seen] = np.nanmedian(recent[seen], axis=1)
        return np.repeat(med[:, None], self.horizon, axis=1)
