"""Forest fire danger: the Nesterov index as applied in Vietnam (Kiểm lâm practice), vectorised.

``P = sum over the days since the last significant rain of t13 x d13`` where t13 is the air
temperature at 13:00 (°C) and d13 the saturation deficit at 13:00 (hPa, E - e). A day with rain
R >= `rain_reset_mm` (default 5 mm) resets P to 0, and that day's t13 x d13 is not added
(k = 0); otherwise k = 1. Danger levels (QĐ 127/2000/QĐ-BNN-KL framework): I P <= 1000,
II <= 2500, III <= 5000, IV <= 10000, V above (`LEVEL_UPPER_BOUNDS`, upper bounds inclusive:
the source's "<1 000" / "1 001-2 500" leave P = 1000 undefined; we put it in level I).

Inputs are arrays shaped (n_stations, n_days) or (n_days,), oldest day first; the running sum is
a vectorised segmented cumulative sum (no loop over days or stations). `p0` carries the index of
the day before the first one (e.g. from yesterday's run). Missing data: a day with no t13 or d13
adds nothing (the sum holds), a day with no rain value does not reset. A NaN `p0` (unknown
history) makes the days before the first reset NaN.

When only the relative humidity is measured (the registry's ``relativeHumidity`` is a fraction
0..1): ``d = E(T) x (1 - RH)`` with the Magnus/Tetens ``E = 6.1078 exp(17.27 T / (T + 237.3))``
hPa (a standard approximation, not from a Vietnamese source): `saturation_deficit`.

Configurable because the reference flags local calibration: the reset threshold (Quảng Bình used
6 mm; a study proposes 7-8 mm) and the level bounds (a Vĩnh Cửu, Đồng Nai study re-banded them).
No colours are defined: the reference found none verified for the five levels (`LEVELS` has
labels only). This is *not* the international Nesterov index (15:00 dew-point deficit, 3 mm reset).

>>> import numpy as np
>>> t13 = np.array([30, 32, 33, 34, 35, 31, 33.0])
>>> d13 = np.array([12, 15, 18, 20, 22, 10, 16.0])
>>> rain = np.array([12, 0, 2, 0, 0, 6, 0.0])
>>> p = nesterov_vn(t13, d13, rain)
>>> p.tolist()
[0.0, 480.0, 1074.0, 1754.0, 2524.0, 0.0, 528.0]
>>> fire_danger_level(p).tolist()
[1, 1, 2, 2, 3, 1, 1]
>>> round(float(saturation_deficit(33.0, 0.5)), 2)
25.15

Sample configuration (a proposed ``indices:`` section; not read by the engine yet): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "LEVELS",
    "LEVEL_UPPER_BOUNDS",
    "RAIN_RESET_MM",
    "SAMPLE_CONFIG",
    "fire_danger_index",
    "fire_danger_level",
    "nesterov_vn",
    "saturation_deficit",
    "saturation_vapour_pressure",
]

SAMPLE_CONFIG = """\
indices:
  fire:
    ## Nesterov index (Vietnamese formulation): t13 x d13 summed since the last rain >= reset
    rain_reset_mm: 5.0                            # Quảng Bình used 6; calibrate locally
    level_upper_bounds: [1000, 2500, 5000, 10000] # I..IV inclusive upper bounds; above -> V
    observation_hour: 13                          # local time of t13 / d13
"""

RAIN_RESET_MM = 5.0
LEVEL_UPPER_BOUNDS = (1000.0, 2500.0, 5000.0, 10000.0)


class Level(NamedTuple):
    number: int
    roman: str
    label_vi: str
    label_en: str


LEVELS = (
    Level(1, "I", "Ít khả năng cháy", "Low"),
    Level(2, "II", "Nguy cơ thấp", "Low-moderate"),
    Level(3, "III", "Trung bình", "Moderate"),
    Level(4, "IV", "Cao (cấp nguy hiểm)", "High (dangerous)"),
    Level(5, "V", "Rất cao (cấp cực kỳ nguy hiểm)", "Very high (extremely dangerous)"),
)


def saturation_vapour_pressure(temperature) -> np.ndarray:
    """Magnus/Tetens saturation vapour pressure over water (hPa) at T (°C).

    >>> round(float(saturation_vapour_pressure(33.0)), 2)
    50.3
    """
    t = np.asarray(temperature, dtype=np.float64)
    return 6.1078 * np.exp(17.27 * t / (t + 237.3))


def saturation_deficit(temperature, relative_humidity) -> np.ndarray:
    """Saturation deficit E - e (hPa) from T (°C) and RH as a fraction 0..1 (clipped to it)."""
    rh = np.clip(np.asarray(relative_humidity, dtype=np.float64), 0.0, 1.0)
    return saturation_vapour_pressure(temperature) * (1.0 - rh)


def nesterov_vn(t13, d13, rain_mm, *, rain_reset_mm: float = RAIN_RESET_MM, p0=0.0) -> np.ndarray:
    """Nesterov index P per day along the last axis (segmented cumulative sum with rain resets).

    `t13` (°C), `d13` (hPa) and `rain_mm` (daily total) broadcast to (..., n_days); `p0` (shape
    (...) or scalar) is the index on the day before the first one.
    """
    t, d, r = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (t13, d13, rain_mm)))
    reset = r >= rain_reset_mm  # NaN rain compares False: no reset
    daily = np.where(reset | np.isnan(t) | np.isnan(d), 0.0, t * d)
    cs = np.cumsum(daily, axis=-1)
    n = cs.shape[-1]
    idx = np.where(reset, np.arange(n), -1)
    last_reset = np.maximum.accumulate(idx, axis=-1)
    base = np.take_along_axis(cs, np.maximum(last_reset, 0), axis=-1)
    p0 = np.asarray(p0, dtype=np.float64)[..., None]
    return np.where(last_reset >= 0, cs - base, p0 + cs)


def fire_danger_level(p, upper_bounds=LEVEL_UPPER_BOUNDS) -> np.ndarray:
    """Level 1..5 (I..V) of P with inclusive upper bounds; 0 for NaN.

    >>> fire_danger_level([0, 1000, 1000.5, 2500, 5001, 10000, 10001, float("nan")]).tolist()
    [1, 1, 2, 2, 4, 4, 5, 0]
    """
    v = np.asarray(p, dtype=np.float64)
    lvl = np.searchsorted(np.asarray(upper_bounds, dtype=np.float64), v, side="left") + 1
    return np.where(np.isnan(v), 0, lvl).astype(np.int8)


def fire_danger_index(t13, rh13, rain_mm, *, rain_reset_mm: float = RAIN_RESET_MM,
                upper_bounds=LEVEL_UPPER_BOUNDS, p0=0.0) -> tuple[np.ndarray, np.ndarray]:
    """(P, level) from the 13:00 temperature (°C), 13:00 relative humidity (fraction 0..1) and
    the daily rain (mm), each (..., n_days)."""
    p = nesterov_vn(t13, saturation_deficit(t13, rh13), rain_mm, rain_reset_mm=rain_reset_mm, p0=p0)
    return p, fire_danger_level(p, upper_bounds)
