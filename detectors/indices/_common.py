"""Helpers shared by the index modules: rounding, windows, piecewise-linear lookups, categories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "Category",
    "IndexResult",
    "round_half_up",
    "truncate",
    "trailing_windows",
    "rolling_mean",
    "nowcast",
    "category_index",
    "daily_reduce",
]

# Rounding to this many decimals first removes floating-point noise, so that e.g. 109.4999999999
# (which is 109.5 computed in floating point) rounds to 110, and 35.9 truncates to 35.9, not 35.8.
NOISE_DECIMALS = 6


class Category(NamedTuple):
    """One category of an index scale: number (1 = best), value range, labels and colour."""

    number: int
    low: float
    high: float
    label_vi: str
    label_en: str
    colour_vi: str
    rgb: tuple[int, int, int]


@dataclass(slots=True)
class IndexResult:
    """An index over arrays of stations and times.

    value: float64, the (rounded) index; NaN where there is no valid index ("no data").
    category: int8, 1-based category number (1 = best); 0 where there is no valid index.
    dominant: str array, the pollutant/parameter that sets the index ("" where none applies).
    subindices: per pollutant/parameter, float64 arrays (NaN where not computable).
    """

    value: np.ndarray
    category: np.ndarray
    dominant: np.ndarray
    subindices: dict[str, np.ndarray] = field(default_factory=dict)


def round_half_up(x, decimals: int = 0) -> np.ndarray:
    """Round half up (x.5 -> x+1) after removing floating-point noise; NaN stays NaN.

    >>> round_half_up([109.5, 109.49999999999, 72.5, 0.5, 1.4999]).tolist()
    [110.0, 110.0, 73.0, 1.0, 1.0]
    """
    x = np.asarray(x, dtype=np.float64)
    scale = 10.0**decimals
    return np.floor(np.round(x * scale, NOISE_DECIMALS) + 0.5) / scale


def truncate(x, decimals: int) -> np.ndarray:
    """Truncate (towards zero for x >= 0) to `decimals` places after removing floating-point noise.

    >>> truncate([35.9, 9.04, 0.0874, 154.9], 1).tolist()
    [35.9, 9.0, 0.0, 154.9]
    """
    x = np.asarray(x, dtype=np.float64)
    scale = 10.0**decimals
    return np.trunc(np.round(x * scale, NOISE_DECIMALS)) / scale


def trailing_windows(x: np.ndarray, width: int) -> np.ndarray:
    """View of shape (..., n, width): window t holds x[..., t-width+1 .. t] (NaN before the start).

    The last axis is time, oldest first; the last element of each window is the current hour.
    """
    x = np.asarray(x, dtype=np.float64)
    pad = np.full(x.shape[:-1] + (width - 1,), np.nan)
    return np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, x], axis=-1), width, axis=-1)


def rolling_mean(x, width: int, min_count: int) -> np.ndarray:
    """Trailing mean over `width` steps (current one included) along the last axis; NaN values are
    skipped; NaN when fewer than `min_count` values are present."""
    win = trailing_windows(x, width)
    valid = ~np.isnan(win)
    n = valid.sum(axis=-1)
    s = np.where(valid, win, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= min_count, s / n, np.nan)


def nowcast(hourly, hours: int = 12, min_recent: int = 2, recent: int = 3, weight_floor: float = 0.5) -> np.ndarray:
    """NowCast of hourly means along the last axis (oldest first), for every hour at once.

    For hour t, c1 = x[t], ..., c12 = x[t-11]. w* = min/max over the present values; w = max(w*, 1/2);
    NowCast = sum w^(i-1) c_i / sum w^(i-1) over the present values (a missing hour weighs 0 in both
    sums). NaN ("no data") unless at least `min_recent` of c1..c`recent` are present. Negative inputs
    are clipped to 0. The normalised form is used also when w = 1/2 (see vn_aqi for why).

    >>> float(np.round(nowcast([26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6])[-1], 3))
    20.266
    """
    win = trailing_windows(np.clip(np.asarray(hourly, dtype=np.float64), 0.0, None), hours)
    valid = ~np.isnan(win)
    cmax = np.where(valid, win, -np.inf).max(axis=-1)
    cmin = np.where(valid, win, np.inf).min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        wstar = np.where(cmax > 0, cmin / cmax, 1.0)
    w = np.maximum(wstar, weight_floor)
    # Exponent i-1 for c_i: the window's last element (the current hour) gets exponent 0.
    expo = np.arange(hours - 1, -1, -1, dtype=np.float64)
    weights = np.where(valid, w[..., None] ** expo, 0.0)
    num = (weights * np.where(valid, win, 0.0)).sum(axis=-1)
    den = weights.sum(axis=-1)
    ok = valid[..., hours - recent :].sum(axis=-1) >= min_recent
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok & (den > 0), num / den, np.nan)


def category_index(value, upper_bounds) -> np.ndarray:
    """1-based category of `value` with inclusive upper bounds (ascending); 0 where value is NaN.

    >>> category_index([0, 50, 51, 100, 301, np.nan], [50, 100, 150, 200, 300]).tolist()
    [1, 1, 2, 2, 6, 0]
    """
    v = np.asarray(value, dtype=np.float64)
    cat = np.searchsorted(np.asarray(upper_bounds, dtype=np.float64), v, side="left") + 1
    return np.where(np.isnan(v), 0, cat).astype(np.int8)


def daily_reduce(x, hours_per_day: int, min_hours: int, how: str) -> np.ndarray:
    """Per-day mean or max of hourly values (..., n_days * hours_per_day) -> (..., n_days), NaN
    skipped; NaN for a day with fewer than `min_hours` values."""
    x = np.asarray(x, dtype=np.float64)
    days = x.reshape(x.shape[:-1] + (-1, hours_per_day))
    valid = ~np.isnan(days)
    n = valid.sum(axis=-1)
    if how == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(valid, days, 0.0).sum(axis=-1) / n
    elif how == "max":
        out = np.where(valid, days, -np.inf).max(axis=-1)
    else:
        raise ValueError(f"unknown reduction {how!r}")
    return np.where(n >= min_hours, out, np.nan)
