"""Traffic indicators: domain reference §6."""

from __future__ import annotations

import numpy as np
import pytest

from citywatch.detectors.indices.traffic import (
    DEFAULT_MIX,
    LOS_TABLES,
    LosTable,
    PCU_FACTORS_TCVN4054_MOUNTAIN,
    density,
    effective_pcu_factor,
    flow_veh_per_hour,
    level_of_service,
    occupancy_percent,
    pcu_flow,
    peak_hour_factor,
    space_mean_speed,
    speed_ratio,
    travel_time_index,
    vc_ratio,
)

NAN = np.nan


def test_reference_vector():
    counts = {"motorbike": 900, "car": 120, "bus_large": 10, "truck_2axle": 20}
    assert flow_veh_per_hour(sum(counts.values()), 900) == 4200
    pcu = pcu_flow(counts, interval_s=900)
    assert pcu == pytest.approx(1820)
    assert pcu_flow(counts, interval_s=900, lanes=3) == pytest.approx(606.67, abs=5e-3)
    assert vc_ratio(pcu / 3, 1800) == pytest.approx(0.337, abs=5e-4)


def test_phf_and_space_mean_speed():
    assert peak_hour_factor([250, 300, 340, 290]) == pytest.approx(0.868, abs=5e-4)
    assert space_mean_speed([30, 40, 20, 35]) == pytest.approx(29.217, abs=5e-4)  # 29.2 in the reference
    assert np.mean([30, 40, 20, 35]) == 31.25  # the time-mean speed is higher
    assert space_mean_speed([30, NAN, 20]) == pytest.approx(24.0)


def test_pcu_from_total_and_mix():
    assert effective_pcu_factor() == pytest.approx(0.85 * 0.3 + 0.1 + 0.01 * 2 + 0.02 * 2 + 0.01 * 2.5 + 0.01 * 2.5)
    # 60 vehicles a minute with a 90 % motorbike / 10 % car mix: 60 x 60 x (0.27 + 0.1) = 1332 PCU/h
    mix = {"motorbike": 0.9, "car": 0.1}
    assert pcu_flow(total=60, interval_s=60, mix=mix) == pytest.approx(1332)
    assert pcu_flow(total=60, interval_s=60, mix=mix, factors=PCU_FACTORS_TCVN4054_MOUNTAIN) == pytest.approx(1008)
    with pytest.raises(ValueError):
        pcu_flow({"tractor": 3}, interval_s=60)
    with pytest.raises(ValueError):
        pcu_flow(interval_s=60)
    assert sum(DEFAULT_MIX.values()) == pytest.approx(1.0)


def test_occupancy_density_speed():
    assert occupancy_percent(0.25) == 25
    assert occupancy_percent(15, 60) == 25
    assert density(1800, 30) == 60
    assert np.isnan(density(1800, 0))
    assert speed_ratio(30, 50) == pytest.approx(0.6)
    assert travel_time_index(25, 50) == 2.0
    assert travel_time_index(0, 50) == np.inf


def test_los_bands_on_edges():
    # urban street, % of free-flow speed: A >80; B >67-80; C >50-67; D >40-50; E >30-40; F <=30
    assert level_of_service([80.1, 80, 67, 50, 40, 30.1, 30, 0]).tolist() == ["A", "B", "C", "D", "E", "E", "F", "F"]
    assert level_of_service(100 * speed_ratio(40, 50)).tolist() == "B"  # 80.00000000000001 -> 80
    assert level_of_service([10, 15, 15.5, 50, 51], "unsignalized_delay").tolist() == ["A", "B", "C", "E", "F"]
    d = level_of_service([6.8, 6.9, 27.9, 28.0], "freeway_density").tolist()
    assert d == ["A", "B", "E", "F"]
    assert level_of_service([NAN, 90]).tolist() == ["", "A"]


def test_los_vc_over_one_is_f():
    assert level_of_service([90, 90, 5], "urban_speed_pct", vc=[0.5, 1.01, 1.2]).tolist() == ["A", "F", "F"]
    assert level_of_service([5], "signalized_delay", vc=[1.0]).tolist() == ["A"]


def test_los_tables_configurable():
    tables = dict(LOS_TABLES, local=LosTable((0.9, 0.75, 0.6, 0.45, 0.3), True))
    assert level_of_service([0.95, 0.8, 0.2], "local", tables=tables).tolist() == ["A", "B", "F"]


def test_many_cameras_equal_each_alone():
    rng = np.random.default_rng(4054)
    n = (40, 30)
    count = rng.integers(0, 300, n).astype(float)
    speed = rng.uniform(0, 60, n)
    ffs = rng.uniform(40, 60, (n[0], 1))
    q = pcu_flow(total=count, interval_s=60, lanes=2)
    los = level_of_service(100 * speed_ratio(speed, ffs), vc=vc_ratio(q, 1800))
    for s in range(n[0]):
        q1 = pcu_flow(total=count[s], interval_s=60, lanes=2)
        np.testing.assert_array_equal(q[s], q1)
        np.testing.assert_array_equal(los[s], level_of_service(100 * speed_ratio(speed[s], ffs[s]), vc=vc_ratio(q1, 1800)))
