"""Live hourly AQI: hourly means in event time -> VN_AQI / US AQI per station, category-change alerts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from citywatch.air_indices import HOUR_NS, AirIndices
from citywatch.batch import ReadingBatch
from citywatch.detectors.indices import us_aqi_hourly, vn_aqi_hourly
from citywatch.pipeline import Engine
from citywatch.registry import SeriesIndex

from pipeline_helpers import Device, Listener, engine_settings, rows, small_registry, wait_for

MIN = 60_000_000_000
H0 = 480_000  # an hour number (2024-10-04T00:00Z)


def series_index() -> SeriesIndex:
    s = SeriesIndex(small_registry())
    s.add_registry()
    return s


def readings(series: SeriesIndex, sensor: str, metric: str, hourly_values: list[float], start_hour: int = H0,
             every_min: int = 10):
    """Readings every `every_min` minutes whose hourly mean is the given value (constant in the hour)."""
    sid = series.get(sensor, metric)
    ts, vals = [], []
    for h, v in enumerate(hourly_values):
        for m in range(0, 60, every_min):
            ts.append((start_hour + h) * HOUR_NS + m * MIN)
            vals.append(v)
    return np.full(len(ts), sid), np.asarray(ts), np.asarray(vals)


def feed(agg: AirIndices, cols, cuts=()):
    series, ts, value = (np.concatenate(c) for c in zip(*cols))
    batch = ReadingBatch.from_columns(series, ts, value).sorted_by_series_time()
    out = []
    bounds = [0, *cuts, len(batch)]
    # split by time, so every series only moves forward from one batch to the next
    order = np.argsort(batch.ts, kind="stable")
    for a, b in zip(bounds, bounds[1:]):
        part = batch.take(np.sort(order[a:b])).sorted_by_series_time()
        out += agg.update(part)
    return out


def table(results, index):
    return {(int(h), int(c), float(v)) for r in results if r.index == index
            for h, c, v in zip(r.hour, r.category, r.value) if c > 0}


def test_hourly_vn_and_us_aqi_match_the_index_functions_on_the_hourly_means():
    series = series_index()
    pm = [12.0, 35.0, 80.0, 160.0, 20.0]
    no2 = [40.0, 60.0, 250.0, 90.0, 30.0]
    agg = AirIndices(series)
    results = feed(agg, [readings(series, "aq-001", "pm25", pm), readings(series, "aq-001", "no2", no2)])
    results += agg.flush((H0 + 10) * HOUR_NS)
    expect_vn = vn_aqi_hourly({"pm25": np.array(pm), "no2": np.array(no2)})
    expect_us = us_aqi_hourly({"pm25": np.array(pm), "no2": np.array(no2)})
    for name, expect in (("vn_aqi_hourly", expect_vn), ("us_aqi", expect_us)):
        want = {(H0 + h, int(c), float(v)) for h, (c, v) in enumerate(zip(expect.category, expect.value)) if c > 0}
        assert table(results, name) == want
    # NowCast needs 2 of the 3 latest hours: the first hour has no index
    assert min(h for h, _, _ in table(results, "vn_aqi_hourly")) == H0 + 1


def test_result_does_not_depend_on_how_readings_are_batched():
    series = series_index()
    cols = [readings(series, "aq-001", "pm25", [10.0, 50.0, 120.0, 30.0]),
            readings(series, "aq-002", "pm25", [5.0, 5.0, 300.0, 6.0]),
            readings(series, "aq-002", "co", [900.0, 12000.0, 40000.0, 800.0])]
    one = AirIndices(series)
    a = feed(one, cols) + one.flush((H0 + 10) * HOUR_NS)
    many = AirIndices(series)
    b = feed(many, cols, cuts=(3, 7, 8, 20, 33)) + many.flush((H0 + 10) * HOUR_NS)
    for name in ("vn_aqi_hourly", "us_aqi"):
        # the last computation of each station-hour is what InfluxDB keeps
        last_a = {(r.index, int(s), int(h)): (int(c), float(v)) for r in a for s, h, c, v in
                  zip(r.station, r.hour, r.category, r.value) if r.index == name and c > 0}
        last_b = {(r.index, int(s), int(h)): (int(c), float(v)) for r in b for s, h, c, v in
                  zip(r.station, r.hour, r.category, r.value) if r.index == name and c > 0}
        assert last_a == last_b and last_a


def test_category_changes_raise_alerts_once():
    series = series_index()
    agg = AirIndices(series)
    results = feed(agg, [readings(series, "aq-003", "pm25", [10.0, 10.0, 10.0, 150.0, 150.0, 150.0, 150.0])])
    events = [e for e in agg.category_changes(results) if e.metric == "vn_aqi_hourly"]
    assert events, "pm2.5 from 10 to 150 ug/m3 must change the VN_AQI category"
    assert all(e.sensor == "aq-003" and e.detector == "index" for e in events)
    cats = [int(e.reason.split()[3].rstrip(":")) for e in events]
    assert cats == sorted(cats) and len(set(cats)) == len(cats)  # rising step by step, no repeats
    assert agg.category_changes(results) == []  # the same results again: nothing new to say


def test_snapshot_restore_continues_the_window():
    series = series_index()
    cols = [readings(series, "aq-001", "pm25", [10.0, 40.0, 90.0, 30.0])]
    straight = AirIndices(series)
    a = feed(straight, cols)
    resumed = AirIndices(series)
    series_all, ts_all, v_all = cols[0]
    half = len(ts_all) // 2
    resumed.update(ReadingBatch.from_columns(series_all[:half], ts_all[:half], v_all[:half]))
    again = AirIndices(series_index())
    again.restore(resumed.snapshot())
    b = again.update(ReadingBatch.from_columns(series_all[half:], ts_all[half:], v_all[half:]))
    last = {(int(h)): float(v) for r in a if r.index == "vn_aqi_hourly" for h, v in zip(r.hour, r.value)}
    after = {(int(h)): float(v) for r in b if r.index == "vn_aqi_hourly" for h, v in zip(r.hour, r.value)}
    assert after and all(last[h] == v or (np.isnan(v) and np.isnan(last[h])) for h, v in after.items())


@pytest.mark.integration
def test_engine_writes_indices_and_alerts_on_category_change(mosquitto, influxdb, db_name, tmp_path):
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-idx")
    engine = Engine(settings, small_registry())
    engine.start()
    listener = Listener(mosquitto.port, "city/alerts/air/aq-002", f"{db_name}-l")
    device = Device(mosquitto.port, client_id=f"{db_name}-d")
    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        start_hour = int(time.time()) // 3600 - 8
        pm = [8.0, 9.0, 10.0, 95.0, 95.0, 95.0, 9.0]
        msgs = [("city/air/aq-002/telemetry", {"ts": (start_hour + h) * 3_600_000 + m * 60_000, "pm25": v})
                for h, v in enumerate(pm) for m in range(0, 60, 15)]
        device.publish_all(msgs)
        wait_for(lambda: len(rows(influxdb, db_name, "SELECT value FROM indices WHERE index = 'vn_aqi_hourly'")) >= 5,
                 15, "hourly indices")
        stored = rows(influxdb, db_name,
                      "SELECT value, category, label_en, dominant FROM indices WHERE index = 'vn_aqi_hourly' ORDER BY time")
        expect = vn_aqi_hourly({"pm25": np.array(pm[:-1])})  # the last hour is still open
        want = [(start_hour + h) * HOUR_NS for h, c in enumerate(expect.category) if c > 0]
        assert [r["time"] for r in stored] == want
        assert [r["value"] for r in stored] == [float(v) for v in expect.value if not np.isnan(v)]
        assert {r["dominant"] for r in stored} == {"pm25"} and stored[0]["label_en"] == "Good"
        wait_for(lambda: any(m["detector"] == "index" for _, m in listener.messages), 10, "category alert")
        alert = next(m for _, m in listener.messages if m["detector"] == "index" and m["metric"] == "vn_aqi_hourly")
        assert alert["ts"] == (start_hour + 3) * 3_600_000 and "category 1 ->" in alert["reason"]
    finally:
        device.close()
        listener.close()
        engine.stop()


def test_daily_vn_aqi_at_local_day_boundaries():
    from citywatch.detectors.indices import vn_aqi_daily

    series = series_index()
    start = (H0 // 24) * 24 + 17  # 17:00 UTC = 00:00 in Asia/Ho_Chi_Minh
    rng = np.random.default_rng(3)
    pm = rng.uniform(10, 90, 48).round(1).tolist()
    o3 = rng.uniform(20, 240, 48).round(1).tolist()
    agg = AirIndices(series)
    results = feed(agg, [readings(series, "aq-001", "pm25", pm, start_hour=start),
                         readings(series, "aq-001", "o3", o3, start_hour=start)])
    results += agg.flush((start + 60) * HOUR_NS)
    daily = {int(h): (int(c), float(v), str(d)) for r in results if r.index == "vn_aqi_daily"
             for h, c, v, d in zip(r.hour, r.category, r.value, r.dominant)}
    assert sorted(daily) == [start, start + 24]  # one value per local day, stamped at local midnight
    lead = np.full(7, np.nan)
    for day, h0 in enumerate((start, start + 24)):
        hours = slice(day * 24, day * 24 + 24)
        before = np.array(pm[day * 24 - 7: day * 24]) if day else lead
        before_o3 = np.array(o3[day * 24 - 7: day * 24]) if day else lead
        want = vn_aqi_daily({"pm25": np.concatenate([before, pm[hours]]),
                             "o3": np.concatenate([before_o3, o3[hours]])}, lead_hours=7)
        assert daily[h0] == (int(want.category[0]), float(want.value[0]), str(want.dominant[0]))


def test_a_backlog_longer_than_the_window_in_one_batch():
    series = series_index()
    pm = np.random.default_rng(5).uniform(5, 200, 45).round(1)
    agg = AirIndices(series)
    results = feed(agg, [readings(series, "aq-002", "pm25", pm.tolist())]) + agg.flush((H0 + 60) * HOUR_NS)
    expect = vn_aqi_hourly({"pm25": pm})
    want = {(H0 + h, int(c), float(v)) for h, (c, v) in enumerate(zip(expect.category, expect.value)) if c > 0}
    assert table(results, "vn_aqi_hourly") == want and len(want) == 44
