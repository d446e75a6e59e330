"""Vietnam AQI (VN_AQI) per Decision 1459/QĐ-TCMT (12 Nov 2019), vectorised over stations and hours.

Inputs are hourly means in ug/m3 (CO too), as NumPy arrays shaped ``(n_stations, n_hours)`` or
``(n_hours,)``: time on the last axis, oldest first, one column per hour (NaN = missing hour). The
result for hour t uses hours up to and including t, so one call computes every hour of every station.

* **Sub-index** (formula 1): linear interpolation in Bảng 2, a *continuous* table (the upper
  breakpoint of band i is the lower breakpoint of band i+1: no EPA-style ".1" gaps). Above the top
  breakpoint (level 8, written "≥" in the decision) the sub-index is capped at 500, the common
  convention (the decision does not say).
* **Hourly** (`vn_aqi_hourly`): PM2.5 and PM10 use the NowCast of the last 12 hours (formula 2);
  O3, NO2, SO2, CO the current 1-h mean (O3 with the 1-h column).
  NowCast: w* = min/max over the 12 hours, w = 1/2 when w* <= 1/2; a missing hour weighs 0 in both
  sums; "no data" unless at least 2 of the 3 most recent hours are present. The decision writes
  the w = 1/2 case un-normalised (sum (1/2)^i c_i); like EPA we use the normalised form in both
  cases (the two differ by < 0.03 %). The NowCast itself is not rounded before the lookup.
* **Daily** (`vn_aqi_daily`): PM 24-h mean; SO2, NO2, CO the day's max 1-h mean; O3 the larger of
  AQI(max 1-h, 1-h column) and AQI(max 8-h mean, 8-h column), where the 8-h sub-index is dropped
  when the day's max 8-h mean exceeds 400 ug/m3. The 8-h mean at hour h is the mean of hours
  h-7 .. h. The day is the decision's 01:00 .. 00:00 (next day) in end-of-hour labels, i.e. the
  24 hourly means *starting* 00:00 .. 23:00.
* **AQI** = max of the sub-indices; it needs PM2.5 or PM10 (else no data). Rounding: half up
  after rounding to 6 decimals (109.4999999 -> 110). Categories (Bảng 1) 1..6 with the official
  RGB colours: `CATEGORIES`.
* Not in the reference and therefore parameters: the data completeness needed for a daily 24-h
  mean / max (`min_hours`, default 18 of 24, i.e. 75 %) and for an 8-h mean (`min_hours_8h`,
  default 6 of 8).

Known discrepancy: the decision's worked example prints an hourly NO2 sub-index of 60 for
118.7 ug/m3; formula 1 gives 59.35 -> 59, which is what this module returns.

Example: the official hourly example of 1459 §2.3 (PM2.5 09:00..20:00, then O3 and NO2 at 20:00):

>>> import numpy as np
>>> pm25 = np.array([26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6])
>>> gas = np.full(12, np.nan)
>>> o3, no2 = gas.copy(), gas.copy()
>>> o3[-1], no2[-1] = 136.1, 118.7
>>> r = vn_aqi_hourly({"pm25": pm25, "o3": o3, "no2": no2})
>>> {k: float(v[-1]) for k, v in r.subindices.items()}
{'pm25': 41.0, 'o3': 43.0, 'no2': 59.0}
>>> float(r.value[-1]), int(r.category[-1]), str(r.dominant[-1]), CATEGORIES[r.category[-1] - 1].label_vi
(59.0, 2, 'no2', 'Trung bình')

Two stations at once (shape (2, n_hours)), the second with too few recent PM hours:

>>> both = {"pm25": np.stack([pm25, np.r_[pm25[:10], np.nan, np.nan]])}
>>> vn_aqi_hourly(both).value[:, -1].tolist()
[41.0, nan]

Daily AQI from the day's aggregates (the decision's daily example):

>>> d = vn_aqi_daily_from_aggregates({"o3_8h": 89.3, "o3_1h": 114.6, "no2": 130.8, "pm25": 55.7})
>>> float(d.value), str(d.dominant), CATEGORIES[int(d.category) - 1].label_en
(110.0, 'pm25', 'Poor')

Sample configuration (a proposed ``indices:`` section; not read by the engine yet): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from citywatch.detectors.indices._common import (
    Category,
    IndexResult,
    category_index,
    daily_reduce,
    nowcast,
    rolling_mean,
    round_half_up,
)

__all__ = [
    "AQI_LEVELS",
    "BREAKPOINTS",
    "CATEGORIES",
    "POLLUTANTS",
    "SAMPLE_CONFIG",
    "vn_aqi_category",
    "vn_aqi_daily",
    "vn_aqi_daily_from_aggregates",
    "vn_aqi_hourly",
    "vn_aqi_subindex",
]

SAMPLE_CONFIG = """\
indices:
  vn_aqi:
    ## VN_AQI per QĐ 1459/QĐ-TCMT; inputs are the air metrics in ug/m3 (pm25, pm10, o3, no2, so2, co)
    require_pm: true          # an AQI needs PM2.5 or PM10 (1459); false = report gas-only AQIs
    nowcast_min_recent: 2     # NowCast needs this many of the 3 latest hours (1459: 2)
    daily_min_hours: 18       # hours needed for a 24-h mean / daily max (not in 1459; 75 %)
    min_hours_8h: 6           # hours needed for an 8-h O3 mean (not in 1459; 75 %)
"""

#: Pollutants, in the order used to break ties for the dominant pollutant.
POLLUTANTS = ("pm25", "pm10", "o3", "no2", "so2", "co")

#: I_i of Bảng 2.
AQI_LEVELS = (0.0, 50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0)

#: Bảng 2 breakpoints BP_i in ug/m3 (CO too). The last value is level 8 ("≥"); the 8-h O3 column
#: stops at I = 300 (400 ug/m3).
BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "o3_1h": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "o3_8h": (0, 100, 120, 170, 210, 400),
    "co": (0, 10_000, 30_000, 45_000, 60_000, 90_000, 120_000, 150_000),
    "so2": (0, 125, 350, 550, 800, 1600, 2100, 2630),
    "no2": (0, 100, 200, 700, 1200, 2350, 3100, 3850),
    "pm10": (0, 50, 150, 250, 350, 420, 500, 600),
    "pm25": (0, 25, 50, 80, 150, 250, 350, 500),
}

#: Bảng 1: AQI ranges, labels and colours (number 1 = best).
CATEGORIES = (
    Category(1, 0, 50, "Tốt", "Good", "Xanh", (0, 228, 0)),
    Category(2, 51, 100, "Trung bình", "Moderate", "Vàng", (255, 255, 0)),
    Category(3, 101, 150, "Kém", "Poor", "Da cam", (255, 126, 0)),
    Category(4, 151, 200, "Xấu", "Bad", "Đỏ", (255, 0, 0)),
    Category(5, 201, 300, "Rất xấu", "Very bad", "Tím", (143, 63, 151)),
    Category(6, 301, 500, "Nguy hại", "Hazardous", "Nâu", (126, 0, 35)),
)
_UPPER = tuple(c.high for c in CATEGORIES[:-1])

_O3_8H_MAX = 400.0  # above this daily max 8-h mean, the 8-h O3 sub-index is not computed


def vn_aqi_subindex(column: str, conc, breakpoints: Mapping[str, tuple[float, ...]] = BREAKPOINTS) -> np.ndarray:
    """Unrounded sub-index (formula 1) for a Bảng 2 column: pm25, pm10, o3_1h, o3_8h, no2, so2, co.

    Concentrations in ug/m3, any shape; NaN in, NaN out; negative values count as 0. Above the top
    breakpoint: 500 (cap), except o3_8h above 400 ug/m3, which is NaN (not computed).

    >>> vn_aqi_subindex("co", [12_000, 150_000, 200_000]).tolist()
    [55.0, 500.0, 500.0]
    >>> vn_aqi_subindex("o3_8h", [400, 450]).tolist()
    [300.0, nan]
    """
    bp = np.asarray(breakpoints[column], dtype=np.float64)
    levels = np.asarray(AQI_LEVELS[: len(bp)], dtype=np.float64)
    c = np.asarray(conc, dtype=np.float64)
    out = np.interp(np.clip(c, 0.0, None), bp, levels)
    out = np.where(np.isnan(c), np.nan, out)
    if column == "o3_8h":
        out = np.where(c > bp[-1], np.nan, out)
    return out


def vn_aqi_category(aqi) -> np.ndarray:
    """Category number 1..6 of a rounded AQI (0 for NaN). See `CATEGORIES`."""
    return category_index(aqi, _UPPER)


def _combine(raw: dict[str, np.ndarray], require_pm: bool) -> IndexResult:
    """Overall AQI from unrounded sub-indices: rounded max, category, dominant pollutant."""
    names = [p for p in POLLUTANTS if p in raw]
    if not names:
        raise ValueError(f"no VN_AQI pollutant among the inputs (expected some of {', '.join(POLLUTANTS)})")
    arrays = np.broadcast_arrays(*(raw[p] for p in names))
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    present = ~np.isnan(stack)
    any_present = present.any(axis=0)
    best = np.where(present, stack, -np.inf).argmax(axis=0)
    top = np.take_along_axis(np.where(present, stack, np.nan), best[None], axis=0)[0]
    ok = any_present
    if require_pm:
        pm_rows = [i for i, p in enumerate(names) if p in ("pm25", "pm10")]
        ok = ok & (present[pm_rows].any(axis=0) if pm_rows else False)
    value = np.where(ok, round_half_up(top), np.nan)
    dominant = np.where(ok, np.asarray(names)[best], "")
    subindices = {p: round_half_up(stack[i]) for i, p in enumerate(names)}
    return IndexResult(value=value, category=vn_aqi_category(value), dominant=dominant, subindices=subindices)


def vn_aqi_hourly(
    hourly: Mapping[str, np.ndarray],
    *,
    breakpoints: Mapping[str, tuple[float, ...]] = BREAKPOINTS,
    require_pm: bool = True,
    nowcast_min_recent: int = 2,
) -> IndexResult:
    """Hourly VN_AQI for every hour of every station.

    `hourly` maps pollutant names (`POLLUTANTS`; others are ignored) to hourly means in ug/m3, each
    shaped (n_stations, n_hours) or (n_hours,), oldest hour first, NaN for a missing hour; all
    arrays share one time grid. Returns an `IndexResult` of the same shape; `subindices` are the
    rounded sub-indices (PM from the NowCast).
    """
    raw: dict[str, np.ndarray] = {}
    for p in POLLUTANTS:
        if p not in hourly:
            continue
        x = np.asarray(hourly[p], dtype=np.float64)
        if p in ("pm25", "pm10"):
            raw[p] = vn_aqi_subindex(p, nowcast(x, min_recent=nowcast_min_recent), breakpoints)
        else:
            raw[p] = vn_aqi_subindex("o3_1h" if p == "o3" else p, x, breakpoints)
    return _combine(raw, require_pm)


def vn_aqi_daily_from_aggregates(
    aggregates: Mapping[str, np.ndarray | float],
    *,
    breakpoints: Mapping[str, tuple[float, ...]] = BREAKPOINTS,
    require_pm: bool = True,
) -> IndexResult:
    """Daily VN_AQI from the day's aggregates (ug/m3, any common shape, NaN = missing).

    Keys: ``pm25``, ``pm10`` (24-h means), ``no2``, ``so2``, ``co`` (max 1-h means), ``o3_1h`` (max
    1-h mean) and ``o3_8h`` (max 8-h mean). The O3 sub-index is the larger of the 1-h and 8-h ones
    (the 8-h one only when the max 8-h mean is <= 400); its name in `subindices` is ``o3``.
    """
    raw: dict[str, np.ndarray] = {}
    for p in ("pm25", "pm10", "no2", "so2", "co"):
        if p in aggregates:
            raw[p] = vn_aqi_subindex(p, aggregates[p], breakpoints)
    if "o3_1h" in aggregates or "o3_8h" in aggregates:
        one = vn_aqi_subindex("o3_1h", aggregates.get("o3_1h", np.nan), breakpoints)
        eight = vn_aqi_subindex("o3_8h", aggregates.get("o3_8h", np.nan), breakpoints)
        raw["o3"] = np.fmax(one, eight)
    return _combine(raw, require_pm)


def vn_aqi_daily(
    hourly: Mapping[str, np.ndarray],
    *,
    hours_per_day: int = 24,
    lead_hours: int = 0,
    min_hours: int = 18,
    min_hours_8h: int = 6,
    breakpoints: Mapping[str, tuple[float, ...]] = BREAKPOINTS,
    require_pm: bool = True,
) -> IndexResult:
    """Daily VN_AQI from hourly means shaped (..., lead_hours + n_days * 24), oldest first.

    After the first `lead_hours` hours (e.g. 7 hours of the previous day, used only for the 8-h O3
    means of the first day's early hours) the hours are whole days, each starting with the hourly
    mean that starts at 00:00 (1459's "01:00"). Returns an `IndexResult` shaped (..., n_days).
    A 24-h mean or daily max needs `min_hours` present hours; an 8-h mean `min_hours_8h` of 8.
    """
    agg: dict[str, np.ndarray] = {}
    for p in POLLUTANTS:
        if p not in hourly:
            continue
        x = np.asarray(hourly[p], dtype=np.float64)
        if (x.shape[-1] - lead_hours) % hours_per_day or x.shape[-1] < lead_hours:
            raise ValueError(f"{p}: {x.shape[-1]} hours is not lead_hours + whole days of {hours_per_day} hours")
        body = x[..., lead_hours:]
        if p in ("pm25", "pm10"):
            agg[p] = daily_reduce(body, hours_per_day, min_hours, "mean")
        elif p == "o3":
            agg["o3_1h"] = daily_reduce(body, hours_per_day, min_hours, "max")
            m8 = rolling_mean(x, 8, min_hours_8h)[..., lead_hours:]
            agg["o3_8h"] = daily_reduce(m8, hours_per_day, 1, "max")
        else:
            agg[p] = daily_reduce(body, hours_per_day, min_hours, "max")
    return vn_aqi_daily_from_aggregates(agg, breakpoints=breakpoints, require_pm=require_pm)
