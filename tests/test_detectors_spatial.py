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


# ------------------------------------------------------------------------------------------------
# Spatial detector: synthetic known answers

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch  # noqa: E402
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK, LEVEL_WARNING  # noqa: E402
from citywatch.detectors.spatial import SAMPLE_CONFIG, SpatialConfig, SpatialDetector  # noqa: E402

MINUTE = 60 * 10**9


def _cluster(n: int = 6, spacing_deg: float = 0.002, metric: str = "pm25") -> SeriesIndex:
    """n air sensors a couple of hundred metres apart (all neighbours of each other), one metric."""
    spec = {metric: MetricSpec(unit="ug/m3", min=0, max=1000)}
    sensors = [Sensor(id=f"s{i}", domain="air", area="Tân Phong", lat=10.95 + spacing_deg * i, lon=106.82,
                      interval=60, metrics=spec) for i in range(n)]
    series = SeriesIndex(Registry({s.id: s for s in sensors}))
    series.add_registry()
    return series


def _readings(series: SeriesIndex, minutes, offsets, seed: int, noise: float = 2.0, level: float = 30.0):
    """All series at each minute (synchronised clocks); `offsets[i]` added to series i (may be arrays
    over the minutes)."""
    rng = np.random.default_rng(seed)
    minutes = np.asarray(minutes)
    n = len(series)
    sid = np.repeat(np.arange(n), len(minutes))
    ts = np.tile(minutes * MINUTE, n)
    off = np.concatenate([np.broadcast_to(np.asarray(o, float), minutes.shape) for o in offsets])
    value = level + rng.normal(0, noise, len(sid)) + off
    return ReadingBatch.from_columns(sid, ts, value)


def _warm(det: SpatialDetector, series: SeriesIndex, seed: int = 0) -> None:
    det.process(_readings(series, range(120), [0] * len(series), seed))


def test_lone_offset_is_sensor_suspect_and_neighbours_stay_ok():
    series = _cluster()
    det = SpatialDetector(series)
    _warm(det, series)
    offsets = [0, 0, 60, 0, 0, 0]
    out = det.process(_readings(series, [120], offsets, seed=1))
    reasons = det.reason_names(out.reason).tolist()
    assert reasons == ["ok", "ok", "sensor_suspect", "ok", "ok", "ok"]
    assert out.level[2] == LEVEL_CRITICAL and out.score[2] == 1.0
    assert np.all(out.level[[0, 1, 3, 4, 5]] == LEVEL_OK)
    assert det.event_sensors(2) == ["s2"]


@pytest.mark.parametrize("sign", [1, -1])
def test_same_offset_on_most_neighbours_is_area_event_for_each(sign):
    series = _cluster()
    det = SpatialDetector(series)
    _warm(det, series)
    offsets = [sign * 25] * 5 + [0]  # five of six sensors move together; s5 does not
    out = det.process(_readings(series, [120], offsets, seed=2))
    reasons = det.reason_names(out.reason).tolist()
    assert reasons[:5] == ["area_event"] * 5
    assert reasons[5] == "ok"
    assert "sensor_suspect" not in reasons
    assert np.all(out.level[:5] >= LEVEL_WARNING)
    members = det.event_sensors(0)
    assert members[0] == "s0" and set(members[1:]) == {"s1", "s2", "s3", "s4"}
    # The threshold output is the baseline the reading was compared with.
    assert np.all(np.abs(out.threshold[:5] - 30.0) < 1.5)


def test_a_deviation_without_neighbours_is_not_called_lone():
    spec = {"pm25": MetricSpec(unit="ug/m3", min=0, max=1000)}
    far = [Sensor(id=f"f{i}", domain="air", area="x", lat=10.5 + i, lon=106.8, interval=60, metrics=spec)
           for i in range(2)]
    series = SeriesIndex(Registry({s.id: s for s in far}))
    series.add_registry()
    det = SpatialDetector(series)
    _warm(det, series)
    out = det.process(_readings(series, [120], [80, 0], seed=3))
    assert det.reason_names(out.reason).tolist() == ["no_neighbours", "ok"]
    assert out.level[0] == LEVEL_CRITICAL


def test_stale_neighbours_are_not_used():
    series = _cluster(3)
    det = SpatialDetector(series, SpatialConfig(max_age="5m"))
    _warm(det, series)
    # s1 and s2 fall silent for 10 minutes; s0 then jumps: its neighbours' news is too old.
    quiet = _readings(series, range(120, 130), [0, 0, 0], seed=4).take(np.arange(10))  # s0 only
    det.process(quiet)
    out = det.process(_readings(series, [130], [60, 60, 60], seed=5).take(np.array([0])))
    assert det.reason_names(out.reason).tolist() == ["no_neighbours"]


def test_late_and_duplicate_rows_do_not_move_state():
    series = _cluster(3)
    det = SpatialDetector(series)
    _warm(det, series)
    before = {k: v.copy() for k, v in det.snapshot().items()}
    batch = _readings(series, [119], [500, 500, 500], seed=6)
    batch.flags[:] = np.where(np.arange(3) % 2 == 0, FLAG_LATE, FLAG_DUPLICATE)
    out = det.process(batch)
    assert np.all(out.level == LEVEL_NOT_EVALUATED) and np.all(np.isnan(out.score))
    after = det.snapshot()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_scores_in_unit_interval_and_monotone_in_deviation():
    series = _cluster()
    det = SpatialDetector(series)
    _warm(det, series)
    snap = det.snapshot()
    scores = []
    for off in [0, 5, 10, 20, 40, 80, 160]:
        det.restore(snap)
        out = det.process(_readings(series, [120], [off, 0, 0, 0, 0, 0], seed=7))
        scores.append(out.score[0])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores) and scores[-1] == 1.0


def _episode_batches(series: SeriesIndex, seed: int) -> ReadingBatch:
    """A spike on s5 at minute 100, then s0..s3 ramp up by 60 over 20 minutes from minute 120 while
    s4 and s5 stay."""
    minutes = np.arange(180)
    ramp = np.clip((minutes - 120) / 20.0, 0, 1) * 60.0
    spike = np.where(minutes == 100, 80.0, 0.0)
    b = _readings(series, minutes, [ramp, ramp, ramp, ramp, 0, spike], seed=seed)
    return b.sorted_by_series_time()


def _run_in_batches(det: SpatialDetector, batch: ReadingBatch, cuts_minutes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Process a (series, ts)-sorted batch cut by event time at `cuts_minutes`; outputs in batch order."""
    level = np.empty(len(batch), np.int8)
    reason = np.empty(len(batch), np.int16)
    score = np.empty(len(batch))
    edges = [-np.inf, *[c * MINUTE for c in cuts_minutes], np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((batch.ts >= lo) & (batch.ts < hi))
        if len(idx) == 0:
            continue
        out = det.process(batch.take(idx))
        level[idx], reason[idx], score[idx] = out.level, out.reason, out.score
    return level, reason, score


def test_ramp_episode_and_spike_classified_and_batch_size_invariant():
    series = _cluster()
    batch = _episode_batches(series, seed=8)
    runs = []
    for cuts in ([], list(range(1, 180)), [7, 50, 121, 122, 140, 151, 170]):
        det = SpatialDetector(series)
        runs.append(_run_in_batches(det, batch, cuts))
    for level, reason, score in runs[1:]:
        np.testing.assert_array_equal(level, runs[0][0])
        np.testing.assert_array_equal(reason, runs[0][1])
        np.testing.assert_allclose(score, runs[0][2], rtol=1e-9, atol=1e-12)
    level, reason, _ = runs[0]
    names = np.asarray(SpatialDetector.reasons)[reason]
    minute = batch.ts // MINUTE
    ramp_rows = (batch.series <= 3) & (minute >= 120) & (minute < 180) & (level >= LEVEL_WARNING)
    assert ramp_rows.sum() > 100
    assert set(names[ramp_rows]) == {"area_event"}
    spike_row = (batch.series == 5) & (minute == 100)
    assert names[spike_row].tolist() == ["sensor_suspect"]
    quiet = (batch.series == 4) | ((batch.series == 5) & (minute != 100))
    assert np.all(level[quiet & (level >= 0)] == LEVEL_OK)


def test_snapshot_restore_continues_identically():
    series = _cluster()
    batch = _episode_batches(series, seed=9)
    first = np.flatnonzero(batch.ts < 125 * MINUTE)
    rest = np.flatnonzero(batch.ts >= 125 * MINUTE)
    a = SpatialDetector(series)
    a.process(batch.take(first))
    snap = a.snapshot()
    # A new engine whose series ids differ: the registry is the same, ids are assigned in another order.
    series_b = SeriesIndex(series.registry)
    for sensor_id, metric in reversed(series.keys()):
        series_b.add(series.registry.sensors[sensor_id], metric)
    b = SpatialDetector(series_b)
    b.restore(snap)
    out_a = a.process(batch.take(rest))
    remapped = batch.take(rest)
    ids = np.array([series_b.get(*series.keys()[s]) for s in remapped.series], np.int32)
    remapped = ReadingBatch.from_columns(ids, remapped.ts, remapped.value).sorted_by_series_time()
    out_b = b.process(remapped)
    key_a = [(series.keys()[s], t) for s, t in zip(batch.take(rest).series, batch.take(rest).ts)]
    key_b = [(series_b.keys()[s], t) for s, t in zip(remapped.series, remapped.ts)]
    order_b = {k: i for i, k in enumerate(key_b)}
    perm = np.array([order_b[k] for k in key_a])
    np.testing.assert_array_equal(out_a.level, out_b.level[perm])
    np.testing.assert_array_equal(out_a.reason, out_b.reason[perm])
    np.testing.assert_allclose(out_a.score, out_b.score[perm])
    assert (out_a.level >= LEVEL_WARNING).any()


def test_sample_config_parses():
    import yaml

    cfg = SpatialConfig.model_validate(yaml.safe_load(SAMPLE_CONFIG)["detectors"]["spatial"])
    assert cfg.neighbours.radius_km == 3.0 and cfg.half_life == 1800.0 and cfg.max_age == 600.0
    with pytest.raises(ValueError):
        SpatialConfig(z_warn=5, z_crit=4)
