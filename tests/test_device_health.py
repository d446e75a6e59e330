"""Silent devices through the real engine: late / offline alerts on the event-time clock, and recovery."""

from __future__ import annotations

import time

import pytest

from citywatch.pipeline import Engine

from pipeline_helpers import Device, Listener, engine_settings, rows, small_registry, wait_for

pytestmark = pytest.mark.integration

MIN = 60_000


def test_devices_that_stop_reporting_go_offline_and_come_back(mosquitto, influxdb, db_name, tmp_path):
    t0 = (int(time.time()) - 7200) * 1000
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path, f"{db_name}-engine",
                               detectors={"no_data": {"late_factor": 1.5, "offline_factor": 2, "offline_min": 0}})
    engine = Engine(settings, small_registry())
    engine.start()
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-alerts")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")

    def no_data_alerts():
        return [(m["sensor"], m["previous_level"], m["level"], m["reason"]) for _, m in listener.messages
                if m["detector"] == "no_data"]

    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        time.sleep(0.2)
        # aq-001 and aq-002 report every minute for 10 minutes; aq-003 and wq-001 never report
        device.publish_all([(f"city/air/{s}/telemetry", {"ts": t0 + i * MIN, "no2": 40 + i})
                            for i in range(11) for s in ("aq-001", "aq-002")])
        wait_for(lambda: engine.evaluator.no_data.start_ns is not None, 15, "first device check")
        # then only aq-001 goes on, for 20 minutes of event time
        device.publish_all([("city/air/aq-001/telemetry", {"ts": t0 + i * MIN, "no2": 40.0}) for i in range(11, 31)])
        wait_for(lambda: {("aq-002", "ok", "critical", "offline"), ("aq-003", "ok", "critical", "offline"),
                          ("wq-001", "ok", "critical", "offline")} <= set(no_data_alerts()), 20, "offline alerts")
        assert not any(a[0] == "aq-001" for a in no_data_alerts())
        # aq-002 comes back
        device.publish_all([("city/air/aq-002/telemetry", {"ts": t0 + 31 * MIN, "no2": 41.0})])
        wait_for(lambda: ("aq-002", "critical", "ok", "ok") in no_data_alerts(), 15, "recovery")
        assert [a for a in no_data_alerts() if a[0] == "aq-002"] == [
            ("aq-002", "ok", "critical", "offline"), ("aq-002", "critical", "ok", "ok")]
        offline = {m["sensor"]: m for _, m in listener.messages if m["detector"] == "no_data" and m["level"] == "critical"}
        # the alert carries how long the device had been silent (event time), and the expected interval
        assert offline["aq-002"]["value"] >= 20 * 60 - 1 and offline["aq-002"]["threshold"] == 60
        assert offline["wq-001"]["threshold"] == 300
        stored = rows(influxdb, db_name, "SELECT * FROM alerts WHERE detector = 'no_data'")
        assert {(p["sensor"], p["level"]) for p in stored} >= {("aq-002", "critical"), ("aq-002", "ok"), ("aq-003", "critical")}
    finally:
        device.close()
        listener.close()
        engine.stop()
