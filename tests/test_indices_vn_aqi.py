"""VN_AQI (QĐ 1459/QĐ-TCMT): the worked examples and test vectors of the domain reference, §1."""

from __future__ import annotations

import numpy as np
import pytest

from citywatch.detectors.indices import nowcast, round_half_up
from citywatch.detectors.indices.vn_aqi import (
    CATEGORIES,
    vn_aqi_category,
    vn_aqi_daily,
    vn_aqi_daily_from_aggregates,
    vn_aqi_hourly,
    vn_aqi_subindex,
)

NAN = np.nan

# 1459 §2.3: PM2.5 hourly means 09:00 .. 20:00 (oldest first).
EXAMPLE_PM25 = [26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6]


def chronological(c1_first):
    """The reference lists c1 (current hour) first; the functions want the oldest hour first."""
    return np.asarray(c1_first[::-1], dtype=np.float64)


def last_hour(values):
    """A 12-hour series with only the last (current) hour present."""
    x = np.full(12, NAN)
    x[-1] = values
    return x


# --- worked example A ---------------------------------------------------------------------------


def test_example_a_nowcast():
    assert nowcast(EXAMPLE_PM25)[-1] == pytest.approx(20.266, abs=5e-4)


def test_example_a_hourly():
    r = vn_aqi_hourly({"pm25": EXAMPLE_PM25, "o3": last_hour(136.1), "no2": last_hour(118.7)})
    assert r.subindices["o3"][-1] == 43
    assert r.subindices["pm25"][-1] == 41
    # The decision prints 60 for NO2 118.7 ug/m3; formula 1 gives 59.35 -> 59 (domain.md §1.5 A).
    assert vn_aqi_subindex("no2", 118.7) == pytest.approx(59.35)
    assert r.subindices["no2"][-1] == 59
    assert r.value[-1] == 59
    assert r.dominant[-1] == "no2"
    assert r.category[-1] == 2


def test_example_a_daily():
    assert vn_aqi_subindex("o3_8h", 89.3) == pytest.approx(44.65)
    assert vn_aqi_subindex("o3_1h", 114.6) == pytest.approx(35.8125)
    r = vn_aqi_daily_from_aggregates({"o3_8h": 89.3, "o3_1h": 114.6, "no2": 130.8, "pm25": 55.7})
    assert r.subindices["o3"] == 45
    assert r.subindices["no2"] == 65
    assert r.subindices["pm25"] == 110  # 109.5 in exact arithmetic: half up
    assert r.value == 110
    assert r.dominant == "pm25"
    assert CATEGORIES[int(r.category) - 1].label_vi == "Kém"


# --- vectors B..E ---------------------------------------------------------------------------------


def test_vector_b_low_w_nowcast_normalised():
    x = chronological([80, 60, 40, 30] + [20] * 8)
    assert nowcast(x)[-1] == pytest.approx(63.136, abs=5e-4)
    r = vn_aqi_hourly({"pm25": x})
    assert r.value[-1] == 122
    assert r.category[-1] == 3


def test_vector_c_missing_current_hour():
    x = chronological([NAN, 40, 38, 36, 35, 34, 33, 33, 32, 31, 30, 30])
    assert nowcast(x)[-1] == pytest.approx(36.36, abs=5e-3)
    assert vn_aqi_hourly({"pm25": x}).value[-1] == 73
    y = chronological([NAN, NAN, 38, 36, 35, 34, 33, 33, 32, 31, 30, 30])
    assert np.isnan(nowcast(y)[-1])
    r = vn_aqi_hourly({"pm25": y})
    assert np.isnan(r.value[-1]) and r.category[-1] == 0 and r.dominant[-1] == ""


def test_nowcast_needs_two_of_three_recent_hours():
    x = chronological([30, NAN, NAN, 36, 35, 34, 33, 33, 32, 31, 30, 30])
    assert np.isnan(nowcast(x)[-1])
    x = chronological([30, NAN, 38] + [NAN] * 9)
    # Valid with only two hours in the whole window: w* = 30/38.
    w = 30 / 38
    assert nowcast(x)[-1] == pytest.approx((30 + w * w * 38) / (1 + w * w))


def test_nowcast_first_hours_of_series():
    # The first hour alone is not enough (1 of 3); from the second hour on it is.
    out = nowcast([10.0, 20.0, 30.0])
    assert np.isnan(out[0])
    assert out[1] == pytest.approx((20 + 0.5 * 10) / 1.5)


def test_vector_d_daily_several_pollutants():
    r = vn_aqi_daily_from_aggregates(
        {"pm10": 95, "pm25": 38, "o3_1h": 210, "o3_8h": 130, "no2": 180, "so2": 90, "co": 8000}
    )
    s = {k: float(v) for k, v in r.subindices.items()}
    assert s == {"pm25": 76, "pm10": 73, "o3": 110, "no2": 90, "so2": 36, "co": 40}
    assert r.value == 110 and r.dominant == "o3" and r.category == 3


def test_vector_e_edges():
    assert round_half_up(vn_aqi_subindex("co", 12_000)) == 55
    assert round_half_up(vn_aqi_subindex("pm10", 180)) == 115
    assert vn_aqi_subindex("pm25", 500) == 500
    assert vn_aqi_subindex("pm25", 620) == 500  # capped
    assert np.isnan(vn_aqi_subindex("o3_8h", 450))
    r = vn_aqi_daily_from_aggregates({"o3_8h": 450, "o3_1h": 450, "pm25": 10})
    # domain.md §1.5 E prints "50/400 x 50 + 300 = 312.5 -> 313" for a 1-h max of 450, which
    # mixes the 8-h column's I = 300 at 400 ug/m3 into the 1-h column. Bảng 2's 1-h column puts
    # 400 -> 200 and 800 -> 300, so 450 -> 100/400 x 50 + 200 = 212.5 -> 213 (Rất xấu).
    assert vn_aqi_subindex("o3_1h", 450) == pytest.approx(212.5)
    assert r.subindices["o3"] == 213 and r.value == 213 and r.category == 5


def test_breakpoints_are_continuous():
    # On a breakpoint the two neighbouring bands agree: no ".1" gaps.
    assert vn_aqi_subindex("pm25", [25, 50, 80, 150, 250, 350]).tolist() == [50, 100, 150, 200, 300, 400]
    assert vn_aqi_subindex("pm25", 25.05) == pytest.approx(50.1)


def test_categories_on_band_edges():
    assert vn_aqi_category([0, 50, 51, 100, 101, 150, 151, 200, 201, 300, 301, 500]).tolist() == [
        1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
    ]
    assert [c.rgb for c in CATEGORIES] == [
        (0, 228, 0), (255, 255, 0), (255, 126, 0), (255, 0, 0), (143, 63, 151), (126, 0, 35),
    ]


def test_half_up_after_removing_float_noise():
    assert round_half_up(109.49999999999) == 110
    assert round_half_up(72.5) == 73  # numpy's round would give 72 (banker's)
    assert round_half_up(72.4999) == 72
    # PM10 24-h 95: 72.5 -> 73
    assert round_half_up(vn_aqi_subindex("pm10", 95)) == 73


def test_aqi_requires_pm():
    r = vn_aqi_hourly({"no2": last_hour(118.7)})
    assert np.isnan(r.value[-1])
    r = vn_aqi_hourly({"no2": last_hour(118.7)}, require_pm=False)
    assert r.value[-1] == 59


def test_missing_gas_does_not_hide_pm():
    r = vn_aqi_hourly({"pm25": EXAMPLE_PM25, "o3": np.full(12, NAN)})
    assert r.value[-1] == 41 and r.dominant[-1] == "pm25" and np.isnan(r.subindices["o3"][-1])


def test_daily_from_hourly_with_lead_hours():
    lead = 7
    o3 = np.full(lead + 24, 50.0)
    # hours 10..17 of the day: one hour at 210 and seven that bring the 8-h mean to 130
    o3[lead + 10 : lead + 18] = (1040 - 210) / 7
    o3[lead + 10] = 210
    pm25 = np.full(lead + 24, 38.0)
    pm25[:lead] = 500.0  # the previous day's PM does not count
    no2 = np.full(lead + 24, 20.0)
    no2[lead + 3] = 180.0
    r = vn_aqi_daily({"pm25": pm25, "o3": o3, "no2": no2}, lead_hours=lead)
    assert r.value.shape == (1,)
    assert r.subindices["pm25"][0] == 76
    assert r.subindices["o3"][0] == 110
    assert r.subindices["no2"][0] == 90
    assert r.value[0] == 110 and r.dominant[0] == "o3"


def test_daily_completeness():
    pm25 = np.full(48, 30.0)
    pm25[:7] = NAN  # day 0 has 17 hours: below the default 18
    r = vn_aqi_daily({"pm25": pm25})
    assert np.isnan(r.value[0]) and r.value[1] == 60
    assert vn_aqi_daily({"pm25": pm25}, min_hours=12).value[0] == 60
    with pytest.raises(ValueError):
        vn_aqi_daily({"pm25": np.zeros(30)})


def test_many_stations_equal_each_alone():
    rng = np.random.default_rng(1459)
    n_st, n_h = 7, 72
    data = {
        "pm25": rng.gamma(2.0, 20.0, (n_st, n_h)),
        "pm10": rng.gamma(2.0, 40.0, (n_st, n_h)),
        "o3": rng.gamma(2.0, 60.0, (n_st, n_h)),
        "no2": rng.gamma(2.0, 50.0, (n_st, n_h)),
        "so2": rng.gamma(2.0, 40.0, (n_st, n_h)),
        "co": rng.gamma(2.0, 4000.0, (n_st, n_h)),
    }
    for v in data.values():
        v[rng.random(v.shape) < 0.2] = NAN
    together = vn_aqi_hourly(data)
    daily = vn_aqi_daily(data)
    for s in range(n_st):
        alone = vn_aqi_hourly({k: v[s] for k, v in data.items()})
        np.testing.assert_array_equal(together.value[s], alone.value)
        np.testing.assert_array_equal(together.category[s], alone.category)
        np.testing.assert_array_equal(together.dominant[s], alone.dominant)
        for k in data:
            np.testing.assert_array_equal(together.subindices[k][s], alone.subindices[k])
        d_alone = vn_aqi_daily({k: v[s] for k, v in data.items()})
        np.testing.assert_array_equal(daily.value[s], d_alone.value)
    assert np.isfinite(together.value).sum() > n_st * n_h // 2
