"""Seasonal-naive forecasts: the value of the same hour one period (a day or a week) earlier.

``y(t + h) = y(t + h - k * period)`` with the smallest ``k`` that reaches an hour already seen. It
is the baseline every other model is judged against (MASE): a model that cannot beat "same as
yesterday" (or "same as last week", for traffic) is not worth running. The last 168 hourly values
of each series are kept in a ring indexed by hour of the week, with the hour each slot holds; a
source hour that was missing gives a NaN forecast. Intervals come from the past errors (see
`citywatch.detectors.forecast.base`).

>>> import numpy as np
>>> from citywatch.detectors.forecast.base import SeriesKeys
>>> f = SeasonalNaive(SeriesKeys([("cam-1", "flow")]), horizon=2, period=24)
>>> for t in range(24):
...     f.update(np.array([0]), np.array([t]), np.array([float(10 * t)]))
>>> f.forecast(np.array([0]))[0].tolist()  # hours 24 and 25: hours 0 and 1 of the day before
[[0.0, 10.0]]
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.forecast.base import NO_HOUR, Forecaster

__all__ = ["SeasonalNaive", "SAMPLE_CONFIG"]

WEEK = 168

SAMPLE_CONFIG = """\
forecasts:
  model: seasonal_naive
  seasonal_naive_period: 24     # hours: 24 (same hour yesterday) or 168 (same hour last week)
"""


class SeasonalNaive(Forecaster):
    name = "seasonal_naive"
    model_fields = {"ring": (np.float64, np.nan, WEEK), "ring_hour": (np.int64, NO_HOUR, WEEK)}

    def __init__(self, series, horizon: int = 24, level: float = 0.8, period: int = 24, **kwargs) -> None:
        if period not in (24, WEEK):
            raise ValueError(f"seasonal-naive period must be 24 or 168 hours, got {period}")
        self.period = int(period)
        super().__init__(series, horizon=horizon, level=level, **kwargs)

    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        slot = hours % WEEK
        self.state["ring"][ids, slot] = values
        self.state["ring_hour"][ids, slot] = hours

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        h = np.arange(1, self.horizon + 1)
        k = -(-h // self.period)  # ceil(h / period)
        source = hours[:, None] + h[None, :] - k[None, :] * self.period
        slot = source % WEEK
        value = np.take_along_axis(self.state["ring"][ids], slot, axis=1)
        held = np.take_along_axis(self.state["ring_hour"][ids], slot, axis=1)
        return np.where(held == source, value, np.nan)
