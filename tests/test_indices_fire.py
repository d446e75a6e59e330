"""Forest fire danger (Nesterov, Vietnamese formulation): domain reference §5."""

from __future__ import annotations

import numpy as np
import pytest

from citywatch.detectors.indices.fire_danger import (
    LEVELS,
    fire_danger_index,
    fire_danger_level,
    nesterov_vn,
    saturation_deficit,
    saturation_vapour_pressure,
)

NAN = np.nan
# domain.md §5.4
T13 = [30, 32, 33, 34, 35, 31, 33]
D13 = [12, 15, 18, 20, 22, 10, 16]
RAIN = [12, 0, 2, 0, 0, 6, 0]
P = [0, 480, 1074, 1754, 2524, 0, 528]
LEVEL = [1, 1, 2, 2, 3, 1, 1]


def test_reference_vector():
    p = nesterov_vn(T13, D13, RAIN)
    assert p.tolist() == P
    assert fire_danger_level(p).tolist() == LEVEL
    assert [LEVELS[i - 1].roman for i in LEVEL] == ["I", "I", "II", "II", "III", "I", "I"]


def test_magnus_tetens():
    assert saturation_vapour_pressure(33.0) == pytest.approx(50.30, abs=5e-3)
    assert saturation_deficit(33.0, 0.5) == pytest.approx(25.15, abs=5e-3)
    assert saturation_deficit(20.0, 1.0) == 0.0


def test_reset_threshold_is_inclusive_and_configurable():
    assert nesterov_vn([30, 30, 30], [10, 10, 10], [0, 4.99, 5.0]).tolist() == [300, 600, 0]
    assert nesterov_vn([30, 30, 30], [10, 10, 10], [0, 4.99, 5.0], rain_reset_mm=6).tolist() == [300, 600, 900]


def test_level_bounds_and_configurable():
    assert fire_danger_level([999, 1000, 1001, 2500, 2501, 5000, 5001, 10000, 10001]).tolist() == [
        1, 1, 2, 2, 3, 3, 4, 4, 5,
    ]
    assert fire_danger_level([1500], upper_bounds=(2000, 4000, 8000, 16000)).tolist() == [1]


def test_carry_over_and_missing_days():
    # p0 from yesterday; a day without t13 holds the sum; a day without rain data does not reset
    p = nesterov_vn([30, NAN, 30, 30], [10, 10, 10, 10], [0, 0, NAN, 7], p0=9500)
    assert p.tolist() == [9800, 9800, 10100, 0]
    assert fire_danger_level(p).tolist() == [4, 4, 5, 1]
    assert np.isnan(nesterov_vn([30, 30], [10, 10], [0, 9], p0=NAN)).tolist() == [True, False]


def test_hand_vector_from_humidity():
    # T 35 °C, RH 0.40 for three dry days: E(35) = 56.225 hPa, d = 33.735, t*d = 1180.72 per day
    p, lvl = fire_danger_index([35, 35, 35], [0.4, 0.4, 0.4], [0, 0, 0])
    e35 = 6.1078 * np.exp(17.27 * 35 / (35 + 237.3))
    assert p == pytest.approx(35 * e35 * 0.6 * np.array([1, 2, 3]))
    assert p[0] == pytest.approx(1180.72, abs=0.01)
    assert lvl.tolist() == [2, 2, 3]


def test_many_stations_equal_each_alone():
    rng = np.random.default_rng(127)
    n_st, n_d = 15, 120
    t = rng.uniform(24, 38, (n_st, n_d))
    rh = rng.uniform(0.3, 0.95, (n_st, n_d))
    rain = np.where(rng.random((n_st, n_d)) < 0.15, rng.uniform(0, 30, (n_st, n_d)), 0.0)
    t[rng.random(t.shape) < 0.05] = NAN
    p0 = rng.uniform(0, 3000, n_st)
    p, lvl = fire_danger_index(t, rh, rain, p0=p0)
    for s in range(n_st):
        p1, l1 = fire_danger_index(t[s], rh[s], rain[s], p0=p0[s])
        np.testing.assert_allclose(p[s], p1, rtol=1e-12)
        np.testing.assert_array_equal(lvl[s], l1)
    # against a plain loop
    d = saturation_deficit(t, rh)
    for s in range(3):
        acc, ref = p0[s], []
        for i in range(n_d):
            if rain[s, i] >= 5:
                acc = 0.0
            elif not np.isnan(t[s, i]):
                acc += t[s, i] * d[s, i]
            ref.append(acc)
        np.testing.assert_allclose(p[s], ref, rtol=1e-9)
