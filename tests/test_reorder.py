"""Allowed lateness: readings that arrive out of order within it are processed in event-time order."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from citywatch.batch import FLAG_DUPLICATE, ReadingBatch
from citywatch.pipeline import Engine
from citywatch.reorder import ReorderBuffer

from pipeline_helpers import Device, Listener, count, engine_settings, rows, small_registry, wait_for


def _batch(series, ts, values=None):
    values = np.arange(len(ts), dtype=float) if values is None else values
    return ReadingBatch.from_columns(series, ts, values).sorted_by_series_time()


def test_shuffled_readings_within_the_lateness_come_out_in_order():
    buf = ReorderBuffer(allowed_lateness_ns=30)
    out = []
    for chunk in ([10, 30], [20, 50], [40, 70], [60, 90]):
        out += buf.push(_batch([0, 0], chunk, np.array(chunk, float)), now_ns=0).ts.tolist()
    assert out == [10, 20, 30, 40, 50, 60]  # 70 and 90 are within 30 of the newest: still held
    assert buf.drain().ts.tolist() == [70, 90]
    assert len(buf) == 0


def test_wall_clock_releases_a_series_that_went_quiet():
    buf = ReorderBuffer(allowed_lateness_ns=1_000)
    assert len(buf.push(_batch([3], [5]), now_ns=10_000)) == 0
    assert len(buf.release_due(now_ns=10_999)) == 0
    released = buf.release_due(now_ns=11_000)
    assert released.series.tolist() == [3] and released.ts.tolist() == [5]


def test_release_never_skips_an_earlier_held_reading_of_the_same_series():
    buf = ReorderBuffer(allowed_lateness_ns=100)
    buf.push(_batch([1], [500]), now_ns=0)       # arrives first, waits
    buf.push(_batch([1], [450]), now_ns=90)      # earlier reading, arrives later
    # at 100 the first one's wall wait is over: the earlier one must go with it, in order
    assert buf.release_due(now_ns=100).ts.tolist() == [450, 500]


def test_a_resent_held_reading_is_processed_once():
    buf = ReorderBuffer(allowed_lateness_ns=100)
    first = _batch([0, 0], [10, 20], np.array([1.0, 2.0]))
    buf.push(first, now_ns=0)
    buf.push(_batch([0], [20], np.array([9.0])), now_ns=1)
    out = buf.drain()
    assert out.ts.tolist() == [10, 20] and out.value.tolist() == [1.0, 2.0]  # the first copy wins
    flagged = first.take(np.array([0]))  # the batches given to push are not modified
    assert (flagged.flags & FLAG_DUPLICATE).sum() == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000)), min_size=1, max_size=200),
       st.integers(1, 50), st.integers(1, 5_000))
def test_any_arrival_order_gives_per_series_sorted_output_and_loses_nothing(readings, chunk, lateness):
    readings = list(dict.fromkeys(readings))  # distinct (series, ts)
    buf = ReorderBuffer(allowed_lateness_ns=lateness)
    out_series, out_ts = [], []
    last_out = {}
    for i in range(0, len(readings), chunk):
        part = readings[i:i + chunk]
        b = _batch([s for s, _ in part], [t for _, t in part])
        # what the engine's watermarks would flag LATE: at or before the last processed reading
        late = np.array([t <= last_out.get(s, -1) for s, t in zip(b.series.tolist(), b.ts.tolist())])
        b.flags[late] |= np.uint8(2)
        for released in (buf.push(b, now_ns=i), buf.release_due(now_ns=i)):
            out_series += released.series.tolist()
            out_ts += released.ts.tolist()
            for s, t in zip(released.series.tolist(), released.ts.tolist()):
                assert t > last_out.get(s, -1), "a series went back in event time"
                last_out[s] = t
    drained = buf.drain()
    out_series += drained.series.tolist()
    out_ts += drained.ts.tolist()
    # every reading was either processed exactly once or arrived behind what was already processed
    processed = list(zip(out_series, out_ts))
    assert len(processed) == len(set(processed))
    assert set(processed) <= set(readings)


@pytest.mark.integration
def test_engine_processes_out_of_order_readings_in_event_time_order(mosquitto, influxdb, db_name, tmp_path):
    t0 = (int(time.time()) - 3600) * 1000
    settings_ = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path, f"{db_name}-engine",
                                detectors={"allowed_lateness": "5m"})
    engine = Engine(settings_, small_registry())
    engine.start()
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-alerts")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        values = [100, 250, 260, 100, 90, 95, 100, 98, 97, 96]
        order = [0, 2, 1, 4, 3, 6, 5, 8, 7, 9]  # pairs swapped: within 5 minutes of event time
        device.publish_all([("city/air/aq-002/telemetry", {"ts": t0 + i * 60_000, "no2": values[i]}) for i in order])
        # beyond the lateness: 20 minutes behind the newest reading, after it was processed
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 10, 15, "readings stored at once")
        wait_for(lambda: count(influxdb, db_name, "scores", "score") >= 4, 10, "readings 0..3 evaluated")
        device.publish_all([("city/air/aq-002/telemetry", {"ts": t0 + 30_000, "no2": 500})])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 11, 10, "too-late reading stored")
        engine.stop()  # a graceful stop evaluates what is still held
        time.sleep(0.3)
        alerts = [(m["previous_level"], m["level"], m["ts"]) for _, m in listener.messages if m["detector"] == "threshold"]
        # in event-time order: 100, 250 (critical), 260, 100 (ok) ... - as if nothing had been swapped
        assert alerts == [("ok", "critical", t0 + 60_000), ("critical", "ok", t0 + 180_000)]
        scored = rows(influxdb, db_name, "SELECT score FROM scores WHERE sensor = 'aq-002' AND metric = 'no2'")
        assert len(scored) == 10  # every in-lateness reading evaluated once; the too-late one not at all
        assert engine.stats.snapshot().get("readings_late") == 1
    finally:
        device.close()
        listener.close()
        if engine.running:
            engine.stop()
