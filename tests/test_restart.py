"""The engine as users run it (`citywatch run`), stopped with SIGTERM mid-stream and restarted: nothing lost."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from pipeline_helpers import Device, count, rows, start_citywatch_run, wait_for, write_engine_config

pytestmark = pytest.mark.integration


def test_sigterm_mid_stream_then_restart_loses_nothing(mosquitto, influxdb, db_name, tmp_path):
    config = write_engine_config(tmp_path, mosquitto.url, influxdb.url, db_name)
    log = (tmp_path / "engine.log").open("ab")
    engine = start_citywatch_run(config, log)
    wait_for(lambda: count(influxdb, db_name, "citywatch", "mqtt_connects") > 0 or _connected(tmp_path), 20,
             "engine up")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    total = 3000
    t0 = (int(time.time()) - 7200) * 1000
    done = threading.Event()

    def stream() -> None:
        for i in range(total):
            device.publish("city/air/aq-002/telemetry", {"ts": t0 + i * 1000, "pm25": float(i)})
            if i % 100 == 99:
                time.sleep(0.05)
        done.set()

    publisher = threading.Thread(target=stream)
    publisher.start()
    try:
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") >= 300, 20, "first readings stored")
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(30) == 0, "engine must exit cleanly on SIGTERM"
        stored_at_stop = count(influxdb, db_name, "air", "pm25")
        time.sleep(0.5)  # the stream goes on while the engine is down
        engine = start_citywatch_run(config, log)
        done.wait(60)
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") == total, 40, "every reading stored")
        assert stored_at_stop < total
        values = sorted(r["pm25"] for r in rows(influxdb, db_name, "SELECT pm25 FROM air"))
        assert values == [float(i) for i in range(total)]
    finally:
        publisher.join(60)
        device.close()
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)
        log.close()


def _connected(tmp_path) -> bool:
    text = (tmp_path / "engine.log").read_text(errors="replace")
    return "mqtt connected" in text
