"""Live traffic indicators: hourly flow, PCU, speed ratio and level of service per camera."""

from __future__ import annotations

import re

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.indices.traffic import effective_pcu_factor, level_of_service
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.traffic_index import HOUR_NS, TrafficLos

MIN = 60_000_000_000
H0 = 480_000


def cameras() -> SeriesIndex:
    doc = {"sensors": [{"id": f"tc-00{i}", "domain": "traffic", "area": "Tân Hiệp", "lat": 10.96, "lon": 106.86,
                        "interval": 60, "road_class": rc,
                        "metrics": {"intensity": {"unit": "veh"}, "occupancy": {"unit": "1"},
                                    "averageVehicleSpeed": {"unit": "km/h"}}}
                       for i, rc in ((1, "main"), (2, "side"))]}
    sensors = RegistryFile.model_validate(doc).sensors
    idx = SeriesIndex(Registry({s.id: s for s in sensors}))
    idx.add_registry()
    return idx


def minute_readings(series, camera, hours):
    """One reading a minute: `count` vehicles per minute and a constant speed, per hour."""
    s, t, v = [], [], []
    for h, (count, speed) in enumerate(hours):
        for m in range(60):
            ts = (H0 + h) * HOUR_NS + m * MIN
            for metric, value in (("intensity", count), ("averageVehicleSpeed", speed)):
                s.append(series.get(camera, metric))
                t.append(ts)
                v.append(value)
    return s, t, v


def parse(lines):
    out = {}
    for line in lines:
        cam = re.search(r"sensor=([^, ]+)", line).group(1)
        fields = dict(re.findall(r"[ ,](\w+)=(-?[\d.e+]+)i?(?=[, ])", line))
        out[(cam, int(line.rsplit(" ", 1)[1]) // HOUR_NS)] = {k: float(v) for k, v in fields.items()}
    return out


def test_hourly_flow_speed_ratio_and_los():
    series = cameras()
    stage = TrafficLos(series)
    hours = [(10, 45.0), (40, 30.0), (90, 12.0), (20, 44.0)]
    cols = [a + b for a, b in zip(minute_readings(series, "tc-001", hours),
                                  minute_readings(series, "tc-002", [(2, 29.0)] * 4))]
    batch = ReadingBatch.from_columns(*cols).sorted_by_series_time()
    lines, events = stage.process(batch)
    got = parse(lines)
    for h, (count, speed) in enumerate(hours[:-1]):  # the last hour is still open
        row = got[("tc-001", H0 + h)]
        ratio = 100 * speed / 50.0  # a main road: free flow 50 km/h
        assert row["flow_veh_h"] == count * 60 and np.isclose(row["pcu_h"], count * 60 * effective_pcu_factor())
        assert np.isclose(row["value"], ratio) and np.isclose(row["tti"], 50.0 / speed)
        assert row["category"] == "ABCDEF".index(str(level_of_service(ratio))) + 1
    assert np.isclose(got[("tc-002", H0)]["value"], 100 * 29 / 30.0)  # a side road: free flow 30 km/h
    # 90 % (A) -> 60 % (C) -> 24 % (F): one alert, when the alert level leaves "ok" for "critical"
    assert [(e.sensor, e.previous_level, e.level, e.ts_ns // HOUR_NS) for e in events] == [
        ("tc-001", "ok", "critical", H0 + 2)]


def test_restart_keeps_the_open_hour():
    series = cameras()
    cols = minute_readings(series, "tc-001", [(10, 45.0), (30, 35.0), (5, 40.0)])
    batch = ReadingBatch.from_columns(*cols).sorted_by_series_time()
    first = TrafficLos(series)
    cut = (H0 + 1) * HOUR_NS + 30 * MIN
    a, _ = first.process(batch.take(np.flatnonzero(batch.ts < cut)).sorted_by_series_time())
    again = TrafficLos(cameras())
    again.restore(first.snapshot())
    b, _ = again.process(batch.take(np.flatnonzero(batch.ts >= cut)).sorted_by_series_time())
    assert parse(b)[("tc-001", H0 + 1)]["flow_veh_h"] == 30 * 60  # both halves of hour 1 counted
    assert ("tc-001", H0) in parse(a)
