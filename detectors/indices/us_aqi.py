"""US EPA AQI with the 2024 PM2.5 breakpoints (89 FR 16202; EPA-454/B-24-002), vectorised.

citywatch stores every gas in ug/m3; the EPA breakpoints for gases are in ppm (O3, CO) and ppb
(SO2, NO2). Conversion at 25 °C and 1 atm (molar volume 24.45 L): ``ppb = ug/m3 x 24.45 / MW``
with MW (g/mol) NO2 46.0055, SO2 64.066, O3 48.00, CO 28.01 (`MOLECULAR_WEIGHTS`; 1 ppb NO2 =
1.882 ug/m3, SO2 2.620, O3 1.963, CO 1.146); ppm = ppb / 1000. `ugm3_to_native` does it.

* **Sub-index**: the concentration (in the table's unit) is first **truncated** (PM2.5 0.1 ug/m3,
  PM10 1 ug/m3, O3 0.001 ppm, CO 0.1 ppm, SO2 and NO2 1 ppb), then looked up in the band whose
  ``[C_lo, C_hi]`` holds it and interpolated; the result is rounded half up to an integer. Above
  the top breakpoint ("Beyond the AQI") the sub-index is capped at 500. 8-h O3 above 0.200 ppm
  has no 8-h sub-index (EPA: use 1-h O3), and 1-h O3 below 0.125 ppm has none (the 1-h table
  starts at AQI 101). 1-h SO2 is used through the whole table, as most implementations do,
  although the TAD uses 24-h SO2 for AQI >= 200.
* **NowCast** (PM2.5, PM10) from the raw hourly values: w* = min/max over the last 12 hours,
  w = max(w*, 1/2), missing hours weigh 0, valid only when 2 of the 3 latest hours are present;
  then truncated like the concentration.
* **Hourly report** (`us_aqi_hourly`): PM NowCast; O3 the larger of the 8-h sub-index (trailing
  8-h mean) and the 1-h one; CO the trailing 8-h mean; SO2 and NO2 the 1-h mean. A trailing 8-h
  mean needs `min_hours_8h` (default 6) of its 8 hours (a completeness rule not in the reference).
* **Daily** (`us_aqi_daily`, `us_aqi_daily_from_aggregates`): PM 24-h means, O3 and CO max 8-h
  mean, SO2 and NO2 max 1-h (and O3 max 1-h, which counts from 0.125 ppm). A 24-h mean or daily
  max needs `min_hours` (default 18) hours of the day.
* AQI = max of the sub-indices, categories `CATEGORIES` (colours 00e400 ffff00 ff7e00 ff0000
  8f3f97 7e0023).

Confidence (domain reference): high for PM2.5 2024, the equation, truncation and NowCast;
medium-high for the other pollutants' rows, so the table is the `breakpoints` parameter.

>>> import numpy as np
>>> us_aqi_subindex("pm25", [35.9, 9.04, 12.0, 150.0, 300.0, 400.0]).tolist()
[102.0, 50.0, 56.0, 225.0, 449.0, 500.0]
>>> float(us_aqi_subindex("no2", ugm3_to_native("no2", 225.8)))  # 120.003 ppb -> 120
105.0

EPA's NowCast training example (oldest first) gives 17.4 ug/m3, AQI 66 with the 2024 table:

>>> pm25 = np.array([50, 80, 75, 90, 82, 53, 64, 74, 21, 10, 16, 13], dtype=float)
>>> r = us_aqi_hourly({"pm25": pm25})
>>> float(r.value[-1]), CATEGORIES[r.category[-1] - 1].label_en, str(r.dominant[-1])
(66.0, 'Moderate', 'pm25')

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
    truncate,
)

__all__ = [
    "BREAKPOINTS",
    "CATEGORIES",
    "MOLAR_VOLUME_25C",
    "MOLECULAR_WEIGHTS",
    "POLLUTANTS",
    "SAMPLE_CONFIG",
    "TRUNCATE_DECIMALS",
    "ugm3_to_native",
    "us_aqi_category",
    "us_aqi_daily",
    "us_aqi_daily_from_aggregates",
    "us_aqi_hourly",
    "us_aqi_subindex",
]

SAMPLE_CONFIG = """\
indices:
  us_aqi:
    ## US EPA AQI (2024 PM2.5 table); inputs in ug/m3, gases converted at 25 °C (24.45 L/mol)
    nowcast_min_recent: 2     # NowCast needs this many of the 3 latest hours (EPA: 2)
    min_hours_8h: 6           # hours needed for a trailing 8-h O3 / CO mean
"""

POLLUTANTS = ("pm25", "pm10", "o3", "no2", "so2", "co")

MOLAR_VOLUME_25C = 24.45  # L/mol at 25 °C, 1 atm
MOLECULAR_WEIGHTS = {"no2": 46.0055, "so2": 64.066, "o3": 48.00, "co": 28.01}
_PER_PPM = {"o3": 1000.0, "co": 1000.0}  # O3 and CO breakpoints are in ppm, SO2/NO2 in ppb

# (C_lo, C_hi, I_lo, I_hi) per band. Units: PM ug/m3, O3 and CO ppm, SO2 and NO2 ppb.
_I = ((0, 50), (51, 100), (101, 150), (151, 200), (201, 300), (301, 500))
BREAKPOINTS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "pm25": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0.0, 9.0), (9.1, 35.4), (35.5, 55.4), (55.5, 125.4), (125.5, 225.4), (225.5, 325.4)], _I)),
    "pm10": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0, 54), (55, 154), (155, 254), (255, 354), (355, 424), (425, 604)], _I)),
    "o3_8h": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0.000, 0.054), (0.055, 0.070), (0.071, 0.085), (0.086, 0.105), (0.106, 0.200)], _I)),
    "o3_1h": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0.125, 0.164), (0.165, 0.204), (0.205, 0.404), (0.405, 0.604)], _I[2:])),
    "co": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0.0, 4.4), (4.5, 9.4), (9.5, 12.4), (12.5, 15.4), (15.5, 30.4), (30.5, 50.4)], _I)),
    "so2": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0, 35), (36, 75), (76, 185), (186, 304), (305, 604), (605, 1004)], _I)),
    "no2": tuple((lo, hi, *i) for (lo, hi), i in zip(
        [(0, 53), (54, 100), (101, 360), (361, 649), (650, 1249), (1250, 2049)], _I)),
}
TRUNCATE_DECIMALS = {"pm25": 1, "pm10": 0, "o3_8h": 3, "o3_1h": 3, "co": 1, "so2": 0, "no2": 0}
# Tables that stop below 500 by design: above their top, no sub-index (instead of the 500 cap).
_NO_CAP = {"o3_8h"}

CATEGORIES = (
    Category(1, 0, 50, "Tốt", "Good", "Xanh lá", (0, 228, 0)),
    Category(2, 51, 100, "Trung bình", "Moderate", "Vàng", (255, 255, 0)),
    Category(3, 101, 150, "Không tốt cho nhóm nhạy cảm", "Unhealthy for Sensitive Groups", "Da cam", (255, 126, 0)),
    Category(4, 151, 200, "Không tốt cho sức khỏe", "Unhealthy", "Đỏ", (255, 0, 0)),
    Category(5, 201, 300, "Rất không tốt cho sức khỏe", "Very Unhealthy", "Tím", (143, 63, 151)),
    Category(6, 301, 500, "Nguy hại", "Hazardous", "Nâu", (126, 0, 35)),
)
_UPPER = tuple(c.high for c in CATEGORIES[:-1])


def ugm3_to_native(pollutant: str, conc_ugm3) -> np.ndarray:
    """ug/m3 to the EPA table unit at 25 °C: ppb for NO2/SO2, ppm for O3/CO; PM unchanged.

    >>> round(float(ugm3_to_native("no2", 1.882)), 3), round(float(ugm3_to_native("co", 1146)), 3)
    (1.0, 1.0)
    """
    x = np.asarray(conc_ugm3, dtype=np.float64)
    base = pollutant.split("_")[0]
    if base not in MOLECULAR_WEIGHTS:
        return x
    return x * MOLAR_VOLUME_25C / MOLECULAR_WEIGHTS[base] / _PER_PPM.get(base, 1.0)


def us_aqi_subindex(table: str, conc, *, breakpoints=BREAKPOINTS, truncate_decimals=TRUNCATE_DECIMALS,
                    rounded: bool = True) -> np.ndarray:
    """Sub-index for one table (pm25, pm10, o3_8h, o3_1h, co, so2, no2), concentration in the
    table's unit (see `ugm3_to_native`): truncate, look up, interpolate, round half up; capped at
    500; NaN where the table does not apply (o3_8h > 0.200 ppm, o3_1h < 0.125 ppm) or input NaN.

    >>> us_aqi_subindex("o3_8h", [0.0874, 0.200, 0.201]).tolist()
    [154.0, 300.0, nan]
    >>> us_aqi_subindex("pm10", [154.9, 155, 604, 605]).tolist()
    [100.0, 101.0, 500.0, 500.0]
    """
    rows = np.asarray(breakpoints[table], dtype=np.float64)
    c_lo, c_hi, i_lo, i_hi = rows.T
    c = truncate(np.clip(np.asarray(conc, dtype=np.float64), 0.0, None), truncate_decimals[table])
    band = np.clip(np.searchsorted(c_lo, c, side="right") - 1, 0, len(rows) - 1)
    with np.errstate(invalid="ignore"):
        out = (i_hi[band] - i_lo[band]) / (c_hi[band] - c_lo[band]) * (c - c_lo[band]) + i_lo[band]
    above = c > c_hi[-1]
    out = np.where(above, np.nan if table in _NO_CAP else 500.0, out)
    out = np.where((c < c_lo[0]) | np.isnan(c), np.nan, out)
    out = np.minimum(out, 500.0)
    return round_half_up(out) if rounded else out


def us_aqi_category(aqi) -> np.ndarray:
    """Category number 1..6 of an AQI (0 for NaN). See `CATEGORIES`."""
    return category_index(aqi, _UPPER)


def _combine(sub: dict[str, np.ndarray]) -> IndexResult:
    names = [p for p in POLLUTANTS if p in sub]
    if not names:
        raise ValueError(f"no AQI pollutant among the inputs (expected some of {', '.join(POLLUTANTS)})")
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(*(sub[p] for p in names))])
    present = ~np.isnan(stack)
    ok = present.any(axis=0)
    best = np.where(present, stack, -np.inf).argmax(axis=0)
    value = np.where(ok, np.take_along_axis(np.where(present, stack, 0.0), best[None], axis=0)[0], np.nan)
    return IndexResult(
        value=value,
        category=us_aqi_category(value),
        dominant=np.where(ok, np.asarray(names)[best], ""),
        subindices={p: stack[i] for i, p in enumerate(names)},
    )


def us_aqi_hourly(
    hourly_ugm3: Mapping[str, np.ndarray],
    *,
    breakpoints=BREAKPOINTS,
    nowcast_min_recent: int = 2,
    min_hours_8h: int = 6,
) -> IndexResult:
    """Hourly US AQI for every hour of every station.

    `hourly_ugm3` maps pollutant names (`POLLUTANTS`) to hourly means in ug/m3 shaped
    (n_stations, n_hours) or (n_hours,), oldest first, NaN = missing. Ties for the dominant
    pollutant go to the first in `POLLUTANTS`.
    """
    sub: dict[str, np.ndarray] = {}
    for p in POLLUTANTS:
        if p not in hourly_ugm3:
            continue
        x = ugm3_to_native(p, hourly_ugm3[p])
        if p in ("pm25", "pm10"):
            sub[p] = us_aqi_subindex(p, nowcast(x, min_recent=nowcast_min_recent), breakpoints=breakpoints)
        elif p == "o3":
            eight = us_aqi_subindex("o3_8h", rolling_mean(x, 8, min_hours_8h), breakpoints=breakpoints)
            sub[p] = np.fmax(eight, us_aqi_subindex("o3_1h", x, breakpoints=breakpoints))
        elif p == "co":
            sub[p] = us_aqi_subindex("co", rolling_mean(x, 8, min_hours_8h), breakpoints=breakpoints)
        else:
            sub[p] = us_aqi_subindex(p, x, breakpoints=breakpoints)
    return _combine(sub)


def us_aqi_daily_from_aggregates(aggregates_ugm3: Mapping[str, np.ndarray | float], *, breakpoints=BREAKPOINTS) -> IndexResult:
    """Daily US AQI from the day's aggregates in ug/m3 (any common shape, NaN = missing).

    Keys: ``pm25``, ``pm10`` (24-h means), ``o3_8h`` (max 8-h mean), ``o3_1h`` (max 1-h, optional),
    ``co`` (max 8-h mean), ``so2``, ``no2`` (max 1-h means).
    """
    sub: dict[str, np.ndarray] = {}
    for p in ("pm25", "pm10", "co", "so2", "no2"):
        if p in aggregates_ugm3:
            sub[p] = us_aqi_subindex(p, ugm3_to_native(p, aggregates_ugm3[p]), breakpoints=breakpoints)
    if "o3_8h" in aggregates_ugm3 or "o3_1h" in aggregates_ugm3:
        sub["o3"] = np.fmax(
            us_aqi_subindex("o3_8h", ugm3_to_native("o3", aggregates_ugm3.get("o3_8h", np.nan)), breakpoints=breakpoints),
            us_aqi_subindex("o3_1h", ugm3_to_native("o3", aggregates_ugm3.get("o3_1h", np.nan)), breakpoints=breakpoints),
        )
    return _combine(sub)


def us_aqi_daily(
    hourly_ugm3: Mapping[str, np.ndarray],
    *,
    hours_per_day: int = 24,
    lead_hours: int = 0,
    min_hours: int = 18,
    min_hours_8h: int = 6,
    breakpoints=BREAKPOINTS,
) -> IndexResult:
    """Daily US AQI from hourly means in ug/m3 shaped (..., lead_hours + n_days * 24), oldest
    first; the first `lead_hours` hours only feed the 8-h means of the first day (as in
    `citywatch.detectors.indices.vn_aqi.vn_aqi_daily`). Returns an `IndexResult` (..., n_days)."""
    agg: dict[str, np.ndarray] = {}
    for p in POLLUTANTS:
        if p not in hourly_ugm3:
            continue
        x = np.asarray(hourly_ugm3[p], dtype=np.float64)
        if (x.shape[-1] - lead_hours) % hours_per_day or x.shape[-1] < lead_hours:
            raise ValueError(f"{p}: {x.shape[-1]} hours is not lead_hours + whole days of {hours_per_day} hours")
        body = x[..., lead_hours:]
        if p in ("pm25", "pm10"):
            agg[p] = daily_reduce(body, hours_per_day, min_hours, "mean")
        elif p in ("o3", "co"):
            m8 = rolling_mean(x, 8, min_hours_8h)[..., lead_hours:]
            agg["o3_8h" if p == "o3" else p] = daily_reduce(m8, hours_per_day, 1, "max")
            if p == "o3":
                agg["o3_1h"] = daily_reduce(body, hours_per_day, min_hours, "max")
        else:
            agg[p] = daily_reduce(body, hours_per_day, min_hours, "max")
    return us_aqi_daily_from_aggregates(agg, breakpoints=breakpoints)
