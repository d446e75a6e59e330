"""End to end on real Mosquitto and InfluxDB: device -> MQTT -> engine -> InfluxDB / alert topic."""

from __future__ import annotations

import math
import time

import orjson
import pytest

from citywatch.pipeline import Engine
from citywatch.services import InfluxDB

from pipeline_helpers import Device, Listener, count, engine_settings, rows, small_registry, wait_for

pytestmark = pytest.mark.integration

T0_MS = (int(time.time()) - 3600) * 1000  # an hour ago: inside max_age, never in the future


@pytest.fixture
def engine_factory(mosquitto, influxdb, db_name, tmp_path):
    engines = []

    def make(client_id="engine", influx_url=None, **sections):
        settings = engine_settings(mosquitto.url, influx_url or influxdb.url, db_name, tmp_path / client_id,
                                   f"{db_name}-{client_id}", **sections)
        engine = Engine(settings, small_registry())
        engine.start()
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)  # subscription settles
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        if e._thread is not None and e._thread.is_alive():
            e.stop()


@pytest.fixture
def device(mosquitto):
    d = Device(mosquitto.port)
    yield d
    d.close()


def test_every_payload_format_lands_with_exact_values_and_timestamps(engine_factory, device, influxdb, db_name):
    engine_factory()
    t = T0_MS
    device.publish_all([
        # (a) one JSON object, epoch milliseconds
        ("city/air/aq-001/telemetry", {"ts": t, "pm25": 12.3, "no2": 40.1}),
        # (b) a backlog array, RFC 3339 and epoch seconds
        ("city/air/aq-002/telemetry", [
            {"ts": (t + 60_000) / 1000, "pm25": 20.5},
            {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((t + 120_000) / 1000)) + ".250+00:00", "pm25": 21.75},
        ]),
        # (c) SenML with base name, base time, relative time and a convertible unit
        ("city/water/wq-001/telemetry", [
            {"bn": "wq-001:", "bt": (t + 180_000) / 1000, "n": "pH", "v": 7.12, "u": "pH"},
            {"n": "dissolvedOxygen", "v": 6.5, "t": 30, "u": "mg/L"},
        ]),
    ])
    wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 3 and count(influxdb, db_name, "water", "pH") == 1, 15,
             "readings stored")
    air = rows(influxdb, db_name, 'SELECT pm25, no2, sensor, area FROM air ORDER BY time')
    assert [(r["time"], r["sensor"], r["pm25"]) for r in air] == [
        (t * 1_000_000, "aq-001", 12.3),
        ((t + 60_000) * 1_000_000, "aq-002", 20.5),
        ((t + 120_250) * 1_000_000, "aq-002", 21.75),
    ]
    assert air[0]["no2"] == 40.1 and air[0]["area"] == "Tân Phong"
    water = rows(influxdb, db_name, 'SELECT "pH", "dissolvedOxygen" FROM water ORDER BY time')
    assert water[0]["time"] == (t + 180_000) * 1_000_000 and water[0]["pH"] == 7.12
    assert water[1]["time"] == (t + 210_000) * 1_000_000 and water[1]["dissolvedOxygen"] == 6.5
    # the detectors scored every reading
    assert count(influxdb, db_name, "scores", "score") == 6


def test_reading_without_timestamp_gets_arrival_time_and_is_flagged(engine_factory, device, influxdb, db_name):
    engine = engine_factory()
    before = time.time_ns()
    device.publish_all([("city/air/aq-003/telemetry", {"pm25": 17.5})])
    wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 1, 10, "reading stored")
    stored = rows(influxdb, db_name, "SELECT pm25 FROM air")[0]
    assert before <= stored["time"] <= time.time_ns() and stored["pm25"] == 17.5
    flagged = rows(influxdb, db_name, "SELECT ts_from_arrival FROM scores WHERE ts_from_arrival = true")
    assert [r["time"] for r in flagged] == [stored["time"]]
    assert engine.stats.get("readings_ts_from_arrival") == 1


def test_threshold_crossing_gives_one_alert_and_reset_gives_recovery(engine_factory, device, mosquitto, influxdb, db_name):
    engine_factory()
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-alerts")
    try:
        # crit at 250 and stays there; 150 is below crit_reset (180) but above warn_reset (144): warning
        values = [100, 120, 250, 260, 255, 240, 150, 150, 100, 90]
        device.publish_all([("city/air/aq-003/telemetry", {"ts": T0_MS + i * 60_000, "no2": v})
                            for i, v in enumerate(values)])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == len(values), 15, "readings stored")
        wait_for(lambda: len(listener.messages) >= 3, 10, "alert messages")
        time.sleep(0.5)  # any repeated alert would arrive now
        alerts = [m for _, m in listener.messages if m["detector"] == "threshold"]
        assert [(a["previous_level"], a["level"]) for a in alerts] == [
            ("ok", "critical"), ("critical", "warning"), ("warning", "ok")]
        fired, eased, recovered = alerts
        assert listener.messages[0][0] == "city/alerts/air/aq-003"
        assert fired["value"] == 250 and fired["threshold"] == 200 and fired["metric"] == "no2"
        assert fired["ts"] == T0_MS + 2 * 60_000 and fired["reading_time"].endswith("Z")
        assert eased["value"] == 150 and eased["ts"] == T0_MS + 6 * 60_000
        assert recovered["value"] == 100 and recovered["ts"] == T0_MS + 8 * 60_000
        points = rows(influxdb, db_name, "SELECT * FROM alerts WHERE detector = 'threshold' ORDER BY time")
        assert [(p["level"], p["time"] // 60_000_000_000) for p in points] == [
            ("critical", T0_MS // 60_000 + 2), ("warning", T0_MS // 60_000 + 6), ("ok", T0_MS // 60_000 + 8)]
        # why each reading was flagged: one `anomalies` point per flagged reading and detector
        flagged = rows(influxdb, db_name, "SELECT value, level, threshold, reason FROM anomalies "
                                          "WHERE detector = 'threshold' ORDER BY time")
        assert [(p["value"], p["level"], p["threshold"]) for p in flagged] == [
            (250, 2, 200), (260, 2, 200), (255, 2, 200), (240, 2, 200), (150, 1, 160), (150, 1, 160)]
        assert {p["reason"] for p in flagged[:4]} == {"above_crit"}
    finally:
        listener.close()


def test_bad_payloads_are_dead_lettered_and_good_data_kept(engine_factory, device, mosquitto, influxdb, db_name):
    engine = engine_factory()
    listener = Listener(mosquitto.port, "city/deadletter/#", f"{db_name}-dl")
    far_future = (int(time.time()) + 86400) * 1000
    try:
        device.publish_all([
            ("city/air/aq-001/telemetry", b"{not json"),
            ("city/air/aq-001/telemetry", b'{"ts": %d, "pm25": NaN, "no2": 33.0}' % T0_MS),
            ("city/air/aq-001/telemetry", {"ts": T0_MS + 1000, "pm25": "high"}),
            ("city/air/aq-999/telemetry", {"ts": T0_MS, "pm25": 5.0}),
            ("city/air/aq-001/telemetry", {"ts": T0_MS + 2000, "co": {"value": 3, "unit": "ppm"}}),
            ("city/air/aq-001/telemetry", {"ts": far_future, "pm25": 9.0}),
            ("city/air/aq-001,area=evil pm25=1 0/telemetry", {"ts": T0_MS, "pm25": 1.0}),
            ("city/air/aq-002/telemetry", {"ts": T0_MS + 3000, "pm25": 44.0}),
        ])
        wait_for(lambda: len(listener.messages) >= 7, 10, "dead letters")
        reasons = sorted(m["reason"] for _, m in listener.messages)
        assert reasons == sorted(["malformed_json", "not_finite", "non_numeric", "unknown_sensor", "wrong_unit",
                                  "future_timestamp", "invalid_sensor_id"])
        assert ("city/deadletter/air/aq-999") in [t for t, _ in listener.messages]
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 1 and count(influxdb, db_name, "air", "no2") == 1,
                 10, "good readings stored")
        assert rows(influxdb, db_name, "SELECT pm25 FROM air WHERE pm25 > 0")[0]["pm25"] == 44.0
        assert rows(influxdb, db_name, "SELECT no2 FROM air WHERE no2 > 0")[0]["no2"] == 33.0
        # nothing with an injected tag made it into the database
        assert rows(influxdb, db_name, 'SHOW TAG VALUES FROM air WITH KEY = "sensor"') == [
            {"key": "sensor", "value": "aq-001"}, {"key": "sensor", "value": "aq-002"}]
        assert engine.stats.get("readings_rejected") == 7
        assert engine._thread.is_alive()
    finally:
        listener.close()


def test_influxdb_down_mid_stream_spools_and_replays_everything(mosquitto, db_name, tmp_path):
    influx = InfluxDB(tmp_path / "own-influx")
    influx.start()
    settings = engine_settings(mosquitto.url, influx.url, db_name, tmp_path / "engine", f"{db_name}-spool")
    engine = Engine(settings, small_registry())
    engine.start()
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        n = 0

        def send(k: int) -> None:
            nonlocal n
            device.publish_all([("city/air/aq-001/telemetry", {"ts": T0_MS + (n + i) * 1000, "pm25": float(n + i)})
                                for i in range(k)])
            n += k

        send(200)
        wait_for(lambda: count(influx, db_name, "air", "pm25") == 200, 15, "first readings")
        influx.stop()
        send(300)
        wait_for(lambda: engine.stats.get("spooled_points") > 0 and engine.stats.get("messages_acked") >= 500, 20,
                 "readings spooled and acknowledged")
        influx.start()
        send(100)
        wait_for(lambda: count(influx, db_name, "air", "pm25") == 600, 30, "spool replayed")
        values = sorted(r["pm25"] for r in rows(influx, db_name, "SELECT pm25 FROM air"))
        assert values == [float(i) for i in range(600)]
        wait_for(lambda: len(engine.spool) == 0, 10, "spool drained")
    finally:
        device.close()
        engine.stop()
        influx.stop()


def test_late_and_resent_readings_are_stored_but_do_not_realert(engine_factory, device, mosquitto, influxdb, db_name):
    engine_factory()
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-late")
    try:
        burst = [("city/air/aq-001/telemetry", {"ts": T0_MS + i * 60_000, "no2": v})
                 for i, v in enumerate([50, 300, 310, 50])]
        device.publish_all(burst)
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 4, 10, "first pass")
        device.publish_all(burst)  # the device resends everything
        device.publish_all([("city/air/aq-001/telemetry", {"ts": T0_MS + 90_000, "no2": 400})])  # late, out of order
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 5, 10, "late reading stored")
        time.sleep(0.5)
        levels = [(m["previous_level"], m["level"]) for _, m in listener.messages if m["detector"] == "threshold"]
        assert levels == [("ok", "critical"), ("critical", "ok")]
        assert not math.isnan(rows(influxdb, db_name, "SELECT no2 FROM air WHERE no2 = 400")[0]["no2"])
    finally:
        listener.close()


def test_restart_keeps_detector_and_alert_state(mosquitto, influxdb, db_name, tmp_path):
    """A restart restores thresholds' state, alert levels and watermarks: no repeated alert, and the
    recovery still comes."""
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-state")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")

    def run(values, first_minute, resend=False):
        settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "engine", f"{db_name}-eng")
        engine = Engine(settings, small_registry())
        engine.start()
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        before = count(influxdb, db_name, "air", "no2")
        device.publish_all([("city/air/aq-002/telemetry", {"ts": T0_MS + (first_minute + i) * 60_000, "no2": v})
                            for i, v in enumerate(values)])
        if resend:  # same series and time: InfluxDB overwrites the point, the count stays
            wait_for(lambda: engine.stats.get("readings_stored") == len(values), 10, "stored")
        else:
            wait_for(lambda: count(influxdb, db_name, "air", "no2") == before + len(values), 10, "stored")
        engine.stop()
        time.sleep(0.3)

    try:
        run([50, 300], 0)
        assert (tmp_path / "engine" / "detector-state.npz").exists()
        run([310, 320], 2)  # still critical after the restart: nothing new to say
        run([300], 1, resend=True)  # a resend of an old reading: late, ignored by the detectors
        run([40], 4)
        levels = [(m["previous_level"], m["level"], m["ts"]) for _, m in listener.messages if m["detector"] == "threshold"]
        assert levels == [("ok", "critical", T0_MS + 60_000), ("critical", "ok", T0_MS + 4 * 60_000)]
    finally:
        device.close()
        listener.close()


def test_a_batch_that_trips_a_bug_is_quarantined_and_the_engine_goes_on(engine_factory, device, influxdb, db_name,
                                                                         tmp_path):
    engine = engine_factory()
    detector = engine.evaluator.detectors[0]
    original = detector.process
    calls = {"n": 0}

    def broken_once(batch, skip=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated bug")
        return original(batch, skip=skip)

    detector.process = broken_once
    device.publish_all([("city/air/aq-001/telemetry", {"ts": T0_MS, "pm25": 1.25})])
    wait_for(lambda: engine.stats.get("batches_quarantined") == 1, 10, "quarantine")
    device.publish_all([("city/air/aq-001/telemetry", {"ts": T0_MS + 1000, "pm25": 2.5})])
    wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 1, 10, "next batch stored")
    assert engine.running
    quarantined = [orjson.loads(line) for line in engine._deadletter_file.read_bytes().splitlines()]
    assert [(q["reason"], orjson.loads(q["payload"])["pm25"]) for q in quarantined] == [("internal_error", 1.25)]
    assert "simulated bug" in quarantined[0]["detail"]
