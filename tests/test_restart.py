"""The engine as users run it (`citywatch run`), stopped with SIGTERM mid-stream and restarted: nothing lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from pipeline_helpers import NO2_RULE, REGISTRY_DOC, Device, count, rows, wait_for

pytestmark = pytest.mark.integration


def write_config(tmp_path, mqtt_url, influx_url, db) -> str:
    (tmp_path / "sensors").mkdir()
    (tmp_path / "sensors" / "test.yaml").write_text(yaml.safe_dump(REGISTRY_DOC, allow_unicode=True))
    cfg = {
        "registry": "sensors/test.yaml",
        "data_dir": str(tmp_path / "data"),
        "mqtt": {"url": mqtt_url, "client_id": f"{db}-engine"},
        "influxdb": {"url": influx_url, "database": db},
        "batching": {"max_age": "100ms"},
        "detectors": {"thresholds": [NO2_RULE.model_dump(by_alias=True)]},
    }
    path = tmp_path / "citywatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def start_engine(config: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "citywatch", "run", "--config", config, "--json-logs"],
                            stdout=log, stderr=subprocess.STDOUT)


def test_sigterm_mid_stream_then_restart_loses_nothing(mosquitto, influxdb, db_name, tmp_path):
    config = write_config(tmp_path, mosquitto.url, influxdb.url, db_name)
    log = (tmp_path / "engine.log").open("ab")
    engine = start_engine(config, log)
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
        engine = start_engine(config, log)
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
