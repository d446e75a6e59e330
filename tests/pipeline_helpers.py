"""Helpers for end-to-end tests: a small registry, engine settings on the test services, a device."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from citywatch.config import Settings, ThresholdRule
from citywatch.registry import Registry, RegistryFile
from citywatch.services import InfluxDB

REGISTRY_DOC = {
    "profiles": {
        "air": {"domain": "air", "interval": "60s", "metrics": {
            "pm25": {"unit": "ug/m3", "min": 0, "max": 1000},
            "no2": {"unit": "ug/m3", "min": 0, "max": 2000},
            "co": {"unit": "ug/m3", "min": 0, "max": 100000},
            "o3": {"unit": "ug/m3", "min": 0, "max": 2000},
            "relativeHumidity": {"unit": "1", "min": 0, "max": 1},
        }},
        "water": {"domain": "water", "interval": "300s", "metrics": {
            "pH": {"unit": "pH", "min": 0, "max": 14},
            "dissolvedOxygen": {"unit": "mg/L", "min": 0, "max": 20},
        }},
    },
    "sensors": [
        {"id": "aq-001", "domain": "air", "area": "Tân Phong", "lat": 10.96, "lon": 106.82, "profile": "air"},
        {"id": "aq-002", "domain": "air", "area": "Hố Nai", "lat": 10.97, "lon": 106.88, "profile": "air"},
        {"id": "aq-003", "domain": "air", "area": "Long Bình", "lat": 10.93, "lon": 106.87, "profile": "air"},
        {"id": "wq-001", "domain": "water", "area": "Bửu Long", "lat": 10.95, "lon": 106.80, "profile": "water"},
    ],
}

NO2_RULE = ThresholdRule(metric="no2", domain="air", warn=160, warn_reset=144, crit=200, crit_reset=180)


def small_registry() -> Registry:
    parsed = RegistryFile.model_validate(REGISTRY_DOC)
    return Registry({s.id: s for s in parsed.sensors})


def engine_settings(mqtt_url: str, influx_url: str, db: str, data_dir: Path, client_id: str, **sections) -> Settings:
    raw = {
        "data_dir": str(data_dir),
        "mqtt": {"url": mqtt_url, "client_id": client_id},
        "influxdb": {"url": influx_url, "database": db},
        "batching": {"max_age": "100ms", "retry_backoff": "50ms", "write_retries": 1},
        "spool": {"replay_interval": "200ms", "fsync": False},
        "detectors": {"thresholds": [NO2_RULE.model_dump(by_alias=True)], "snapshot_interval": "1s"},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Settings.model_validate(raw)


class Device:
    """A separate MQTT client publishing at QoS 1, as a field device would."""

    def __init__(self, port: int, client_id: str = "test-device", protocol: str = "3.1.1",
                 username: str | None = None, password: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False):
        if not isinstance(payload, (bytes, str)):
            payload = orjson.dumps(payload)
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_all(self, messages, timeout: float = 30.0) -> None:
        """Publish (topic, payload) or (topic, payload, retain) in order; wait until the broker has each."""
        infos = [self.publish(*m[:2], retain=len(m) > 2 and m[2]) for m in messages]
        for info in infos:
            info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """Collects messages of a topic filter (alerts, dead letters)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, orjson.loads(m.payload)))
        self._subscribed = False
        self.client.on_subscribe = lambda *a: setattr(self, "_subscribed", True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        wait_for(lambda: self._subscribed, 5, "listener subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rows(influx: InfluxDB, db: str, query: str) -> list[dict]:
    """Result rows of an InfluxQL query as dicts (time in ns)."""
    out = []
    for result in influx.query(query, db=db).get("results", []):
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                out.append({**tags, **dict(zip(series["columns"], values))})
    return out


def count(influx: InfluxDB, db: str, measurement: str, field: str, where: str = "") -> int:
    try:
        r = rows(influx, db, f'SELECT count("{field}") FROM "{measurement}" {where}')
    except Exception:
        return 0
    return int(r[0]["count"]) if r else 0


def write_engine_config(tmp_path: Path, mqtt_url: str, influx_url: str, db: str, **detectors) -> str:
    """A config file and registry for `citywatch run` on the test services; returns the config's path."""
    (tmp_path / "sensors").mkdir()
    (tmp_path / "sensors" / "test.yaml").write_text(yaml.safe_dump(REGISTRY_DOC, allow_unicode=True))
    cfg = {
        "registry": "sensors/test.yaml",
        "data_dir": str(tmp_path / "data"),
        "mqtt": {"url": mqtt_url, "client_id": f"{db}-engine"},
        "influxdb": {"url": influx_url, "database": db},
        "batching": {"max_age": "100ms"},
        "detectors": {"thresholds": [NO2_RULE.model_dump(by_alias=True)], **detectors},
    }
    path = tmp_path / "citywatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def start_citywatch_run(config: str, log) -> subprocess.Popen:
    """`citywatch run` as users start it, logging JSON to `log`."""
    return subprocess.Popen([sys.executable, "-m", "citywatch", "run", "--config", config, "--json-logs"],
                            stdout=log, stderr=subprocess.STDOUT)
