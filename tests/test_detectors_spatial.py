"""Neighbour graph and spatial detector: known answers on synthetic registries."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest

from citywatch.detectors.neighbours import NeighbourConfig, NeighbourGraph, haversine_km
from citywatch.registry import MetricSpec, Registry, Sensor, SeriesIndex

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "config" / "sensors" / "bienhoa.yaml"


def test_neighbours_doctest():
    result = doctest.testmod(importlib.import_module("citywatch.detectors.neighbours"))
    assert result.attempted > 0 and result.failed == 0


def test_haversine_known_distance():
    # One degree of latitude is about 111.2 km; Biên Hòa to Hồ Chí Minh City centre about 25 km.
    assert haversine_km(10.0, 106.0, 11.0, 106.0) == pytest.approx(111.19, abs=0.01)
    assert haversine_km(10.9574, 106.8427, 10.7769, 106.7009) == pytest.approx(25.2, abs=0.5)


def _brute_force(series: SeriesIndex, radius: float | None, k: int) -> list[list[int]]:
    sensors = series.registry.sensors
    out = []
    for a in range(len(series)):
        sa = sensors[series.sensor_ids[a]]
        cands = []
        for b in range(len(series)):
            sb = sensors[series.sensor_ids[b]]
            if sb.id == sa.id or series.metrics[b] != series.metrics[a] or sb.domain != sa.domain:
                continue
            d = float(haversine_km(sa.lat, sa.lon, sb.lat, sb.lon))
            if radius is None or d <= radius:
                cands.append((d, b))
        out.append([b for _, b in sorted(cands)[:k]])
    return out


@pytest.mark.parametrize("radius,k", [(3.0, 8), (1.5, 4), (None, 5)])
def test_graph_matches_brute_force_on_the_sample_registry(radius, k):
    series = SeriesIndex(Registry.load(REGISTRY_PATH))
    series.add_registry()
    graph = NeighbourGraph(series, NeighbourConfig(radius_km=radius, k=k))
    expected = _brute_force(series, radius, k)
    assert graph.index.shape == (len(series), k)
    for sid in range(len(series)):
        assert graph.neighbours(sid) == expected[sid]
        real = graph.index[sid] >= 0
        assert np.all(np.isinf(graph.distance_km[sid][~real]))
        assert np.all(np.diff(graph.distance_km[sid][real]) >= 0)
    assert graph.count.sum() > 0


def _sensor(sid: str, lat: float, lon: float, domain: str = "air", **extra) -> Sensor:
    return Sensor(id=sid, domain=domain, area="x", lat=lat, lon=lon, interval=60,
                  metrics={"pm25": MetricSpec(unit="ug/m3"), "no2": MetricSpec(unit="ug/m3")}, **extra)


def test_graph_grows_and_separates_domains_metrics_and_unknown_coordinates():
    reg = Registry({s.id: s for s in [_sensor("a", 10.95, 106.82), _sensor("b", 10.951, 106.82),
                                      _sensor("w", 10.9505, 106.82, domain="water")]})
    series = SeriesIndex(reg)
    series.add_registry()
    graph = NeighbourGraph(series, NeighbourConfig(radius_km=1.0, k=4))
    a_pm, b_pm, b_no2 = series.get("a", "pm25"), series.get("b", "pm25"), series.get("b", "no2")
    assert graph.neighbours(a_pm) == [b_pm]
    assert graph.neighbours(series.get("a", "no2")) == [b_no2]
    assert graph.neighbours(series.get("w", "pm25")) == []  # another domain

    c = _sensor("c", 10.9502, 106.82)
    reg.sensors["c"] = c
    series.add(c, "pm25")
    auto = reg.auto_register("ghost", "air")
    series.add(auto, "pm25")
    assert graph.update() is True
    assert graph.index.shape == (len(series), 4)
    c_pm = series.get("c", "pm25")
    assert graph.neighbours(a_pm) == [c_pm, b_pm]
    assert graph.neighbours(series.get("ghost", "pm25")) == []
    assert series.get("ghost", "pm25") not in graph.index
    assert graph.update() is False
