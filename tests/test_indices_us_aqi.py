"""US EPA AQI (2024 PM2.5 table): the test vectors of the domain reference, §2."""

from __future__ import annotations

import numpy as np
import pytest

from citywatch.detectors.indices import nowcast
from citywatch.detectors.indices.us_aqi import (
    CATEGORIES,
    MOLECULAR_WEIGHTS,
    ugm3_to_native,
    us_aqi_category,
    us_aqi_daily_from_aggregates,
    us_aqi_hourly,
    us_aqi_subindex,
)

NAN = np.nan
EPA_NOWCAST_EXAMPLE = [50, 80, 75, 90, 82, 53, 64, 74, 21, 10, 16, 13]  # oldest first


@pytest.mark.parametrize(
    "table, conc, aqi",
    [
        ("pm25", 35.9, 102),
        ("pm25", 9.04, 50),  # truncated to 9.0
        ("pm25", 12.0, 56),
        ("pm25", 150.0, 225),
        ("pm25", 300.0, 449),
        ("o3_8h", 0.0874, 154),  # truncated to 0.087
        ("pm10", 154.9, 100),  # truncated to 154
        ("pm10", 155, 101),
        ("co", 9.46, 100),  # truncated to 9.4
    ],
)
def test_reference_vectors(table, conc, aqi):
    assert us_aqi_subindex(table, conc) == aqi


def test_no2_from_ugm3():
    ppb = ugm3_to_native("no2", 225.8)
    assert ppb == pytest.approx(120.003, abs=5e-4)
    assert us_aqi_subindex("no2", ppb) == 105


def test_conversion_factors_at_25c():
    # 1 ppb in ug/m3: NO2 1.882, SO2 2.620, O3 1.963, CO 1.146 (domain.md §2.4 step 5)
    for gas, ug_per_ppb in {"no2": 1.882, "so2": 2.620, "o3": 1.963, "co": 1.146}.items():
        assert MOLECULAR_WEIGHTS[gas] / 24.45 == pytest.approx(ug_per_ppb, abs=5e-4)
    assert ugm3_to_native("o3", 1963.0) == pytest.approx(1.0, abs=1e-3)  # ppm
    assert ugm3_to_native("so2", 2.620) == pytest.approx(1.0, abs=1e-3)  # ppb
    assert ugm3_to_native("pm25", 12.3) == 12.3


def test_truncation_not_rounding():
    assert us_aqi_subindex("pm25", 35.49) == 100  # 35.4 -> 100, not 35.5 -> 101
    assert us_aqi_subindex("pm25", 35.5) == 101
    assert us_aqi_subindex("pm25", 35.9) == 102  # 35.9 must not become 35.8 by float noise
    assert us_aqi_subindex("so2", 35.99) == 50
    assert us_aqi_subindex("no2", 53.999) == 50


def test_band_edges_exactly_on_breakpoints():
    assert us_aqi_subindex("pm25", [0.0, 9.0, 9.1, 35.4, 55.4, 55.5, 125.4, 125.5, 225.4, 225.5, 325.4]).tolist() == [
        0, 50, 51, 100, 150, 151, 200, 201, 300, 301, 500,
    ]
    assert us_aqi_subindex("o3_1h", [0.124, 0.125, 0.604]).tolist()[1:] == [101, 500]
    assert np.isnan(us_aqi_subindex("o3_1h", 0.124))  # the 1-h table starts at AQI 101


def test_caps_at_500():
    assert us_aqi_subindex("pm25", [325.45, 325.5, 1000.0]).tolist() == [500, 500, 500]
    assert us_aqi_subindex("no2", 5000) == 500
    assert us_aqi_subindex("co", 80) == 500
    assert np.isnan(us_aqi_subindex("o3_8h", 0.205))  # no 8-h value above 0.200 ppm: use 1-h


def test_categories():
    assert us_aqi_category([50, 51, 100, 101, 150, 151, 200, 201, 300, 301, 500, NAN]).tolist() == [
        1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 0,
    ]
    assert [c.label_en for c in CATEGORIES][2] == "Unhealthy for Sensitive Groups"
    assert ["%02x%02x%02x" % c.rgb for c in CATEGORIES] == ["00e400", "ffff00", "ff7e00", "ff0000", "8f3f97", "7e0023"]


def test_epa_nowcast_example():
    x = np.asarray(EPA_NOWCAST_EXAMPLE, dtype=float)
    assert nowcast(x)[-1] == pytest.approx(17.414, abs=5e-4)
    r = us_aqi_hourly({"pm25": x})
    assert r.value[-1] == 66 and r.category[-1] == 2


def test_nowcast_truncated_before_lookup():
    # A constant 9.04 series: NowCast 9.04 -> truncated 9.0 -> 50 (not 51)
    assert us_aqi_hourly({"pm25": np.full(12, 9.04)}).value[-1] == 50
    # PM10 NowCast 154.9 -> 154 -> 100
    assert us_aqi_hourly({"pm10": np.full(12, 154.9)}).value[-1] == 100


def test_nowcast_validity():
    x = np.asarray(EPA_NOWCAST_EXAMPLE, dtype=float)
    x[-1] = x[-2] = NAN
    assert np.isnan(us_aqi_hourly({"pm25": x}).value[-1])


def test_hourly_gases_in_ugm3():
    hours = 8
    o3 = np.full(hours, 0.0874 * 1000 * 48.00 / 24.45)  # 0.0874 ppm for 8 hours
    no2 = np.full(hours, 225.8)
    r = us_aqi_hourly({"o3": o3, "no2": no2})
    assert r.subindices["o3"][-1] == 154
    assert r.subindices["no2"][-1] == 105
    assert r.value[-1] == 154 and r.dominant[-1] == "o3"
    # 5 of 8 hours: no 8-h O3 mean with the default min_hours_8h = 6
    assert np.isnan(r.subindices["o3"][4])
    assert r.subindices["o3"][5] == 154


def test_hourly_o3_uses_1h_when_higher():
    o3 = np.full(8, 0.050 * 1000 * 48.00 / 24.45)
    o3[-1] = 0.300 * 1000 * 48.00 / 24.45  # 1-h 0.300 ppm -> 201 + 99/0.199 * 0.095 = 248.3
    r = us_aqi_hourly({"o3": o3})
    assert r.subindices["o3"][-1] == 248


def test_daily_aggregates():
    r = us_aqi_daily_from_aggregates({"pm25": 35.9, "no2": 225.8, "co": 9.46 * 1000 * 28.01 / 24.45})
    assert r.subindices["pm25"] == 102 and r.subindices["no2"] == 105 and r.subindices["co"] == 100
    assert r.value == 105 and r.dominant == "no2"


def test_many_stations_equal_each_alone():
    rng = np.random.default_rng(2024)
    n_st, n_h = 6, 60
    data = {p: rng.gamma(2.0, s, (n_st, n_h)) for p, s in
            {"pm25": 15, "pm10": 40, "o3": 50, "no2": 40, "so2": 30, "co": 3000}.items()}
    for v in data.values():
        v[rng.random(v.shape) < 0.2] = NAN
    together = us_aqi_hourly(data)
    for s in range(n_st):
        alone = us_aqi_hourly({k: v[s] for k, v in data.items()})
        np.testing.assert_array_equal(together.value[s], alone.value)
        np.testing.assert_array_equal(together.dominant[s], alone.dominant)
        np.testing.assert_array_equal(together.category[s], alone.category)


def test_daily_from_hourly():
    from citywatch.detectors.indices.us_aqi import us_aqi_daily

    lead = 7
    pm25 = np.full(lead + 48, 12.0)
    pm25[lead + 24 :] = 35.9
    no2 = np.full(lead + 48, 20.0)
    no2[lead + 30] = 225.8
    r = us_aqi_daily({"pm25": pm25, "no2": no2}, lead_hours=lead)
    assert r.value.tolist() == [56, 105]
    assert r.dominant.tolist() == ["pm25", "no2"]
    assert r.subindices["pm25"].tolist() == [56, 102]
