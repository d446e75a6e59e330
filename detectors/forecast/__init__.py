"""Short-term forecasts of hourly series, vectorised over all series: the early-warning models.

* `SeasonalNaive` (`seasonal_naive`): the same hour a day or a week earlier (the baseline);
* `HoltWinters` (`holt_winters`): double-seasonal exponential smoothing (daily and weekly profiles)
  with an AR(1) adjustment of its errors;
* `ArDeseasonalised` (`ar_deseasonalised`): an hour-of-week profile and an AR(p) on the rest,
  estimated online by recursive least squares;
* `RecentMedian` (`recent_median`): a flat forecast at the median of the last day's values (no
  seasonal profile: the level of a series whose daily rhythm is weak or keeps changing);
* `Combination` (`combination`): all of them at once, weighted per series and horizon by their
  recent out-of-sample errors.

All share `Forecaster` (`base.py`): online updates in event time, revisions of the latest hour,
empirical prediction intervals per horizon, snapshot and restore. `build_forecaster` makes one
from a model name and its parameters.
"""

from __future__ import annotations

from citywatch.detectors.forecast.ar_deseasonalised import ArDeseasonalised
from citywatch.detectors.forecast.base import Forecaster, SeriesKeys
from citywatch.detectors.forecast.combination import Combination
from citywatch.detectors.forecast.holt_winters import HoltWinters
from citywatch.detectors.forecast.recent_median import RecentMedian
from citywatch.detectors.forecast.seasonal_naive import SeasonalNaive

__all__ = ["ArDeseasonalised", "Combination", "Forecaster", "HoltWinters", "MODELS", "RecentMedian", "SeasonalNaive",
           "SeriesKeys", "build_forecaster"]

MODELS: dict[str, type[Forecaster]] = {
    "seasonal_naive": SeasonalNaive, "holt_winters": HoltWinters, "ar_deseasonalised": ArDeseasonalised,
    "recent_median": RecentMedian, "combination": Combination,
}


def build_forecaster(model: str, series, horizon: int = 24, level: float = 0.8, **params) -> Forecaster:
    """A forecaster by model name (`MODELS`), with its parameters."""
    try:
        cls = MODELS[model]
    except KeyError:
        raise ValueError(f"unknown forecast model {model!r}; choose from {', '.join(MODELS)}") from None
    return cls(series, horizon=horizon, level=level, **params)
