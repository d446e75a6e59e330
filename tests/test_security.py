"""Security defaults: the sample Mosquitto ACL on the real broker, TLS to InfluxDB with a throw-away
CA, per-sensor rate limits, secrets from 0600 files, and nothing listening beyond loopback."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import psutil
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from citywatch.config import BatchingConfig, ConfigError, InfluxConfig, load_settings
from citywatch.pipeline import Engine
from citywatch.services import InfluxDB, Mosquitto, ServiceError, find_binary
from citywatch.sinks.influxdb import InfluxWriter
from citywatch.sinks.spool import Spool
from citywatch.stats import Stats

from pipeline_helpers import REGISTRY_DOC, Device, Listener, count, engine_settings, small_registry, wait_for
from test_mqtt_connection import _throwaway_ca
from test_validate import ARRIVAL, T0, make

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "citywatch.yaml"


# -- rate limits -------------------------------------------------------------------------------------


def _msg(sensor: str, i: int, arrival: int) -> tuple[str, bytes, int]:
    return f"city/air/{sensor}/telemetry", orjson.dumps({"ts": T0 - i, "pm25": float(i % 500)}), arrival


def test_rate_limit_burst_then_one_dead_letter_per_run_and_counted_drops():
    v = make(max_messages_per_sensor_per_s=2, rate_limit_burst=5)
    flood = [_msg("aq-001", i, ARRIVAL) for i in range(20)]
    calm = [_msg("aq-002", i, ARRIVAL) for i in range(3)]
    batch, rejections = v.validate(flood + calm)
    assert len(batch) == 5 + 3  # the burst of aq-001, and aq-002 is not affected
    assert [r.reason for r in rejections] == ["rate_limited"]
    assert rejections[0].sensor == "aq-001" and "2 messages/s" in rejections[0].detail
    assert rejections[0].payload == flood[5][1].decode()  # the first dropped message is the dead letter
    assert v.stats.get("rejected_rate_limited") == 1 and v.stats.get("rate_limited_dropped") == 14
    assert v.stats.get("readings_rejected") == 1

    # one second later the bucket holds two tokens: two messages pass, which ends the run ...
    later = ARRIVAL + 1_000_000_000
    batch, rejections = v.validate([_msg("aq-001", 100 + i, later) for i in range(4)])
    assert len(batch) == 2
    # ... so the next run over the limit is dead-lettered again, once
    assert [r.reason for r in rejections] == ["rate_limited"]
    assert v.stats.get("rate_limited_dropped") == 14 + 1


def test_rate_limit_lets_a_steady_device_through():
    v = make(max_messages_per_sensor_per_s=2, rate_limit_burst=1)
    batch, rejections = v.validate([_msg("aq-001", i, ARRIVAL + i * 500_000_000) for i in range(200)])
    assert len(batch) == 200 and rejections == []


def test_rate_limit_is_off_unless_configured_and_on_in_the_sample_config():
    v = make()
    batch, rejections = v.validate([_msg("aq-001", i, ARRIVAL) for i in range(5000)])
    assert len(batch) == 5000 and not rejections
    s = load_settings(SAMPLE, env={})
    assert s.validation.max_messages_per_sensor_per_s == 5 and s.validation.rate_limit_burst == 600


@pytest.mark.integration
def test_rate_limited_flood_on_the_real_broker(mosquitto, influxdb, db_name, tmp_path):
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-rl",
                               validation={"max_messages_per_sensor_per_s": 5, "rate_limit_burst": 20})
    engine = Engine(settings, small_registry())
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.2)
    dead = Listener(mosquitto.port, "city/deadletter/#", f"{db_name}-dl")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    t0 = (int(time.time()) - 3600) * 1000
    try:
        started = time.monotonic()
        flood = 1000
        device.publish_all([("city/air/aq-001/telemetry", {"ts": t0 + i, "co": float(i)}) for i in range(flood)]
                           + [("city/air/aq-002/telemetry", {"ts": t0 + i, "co": float(i)}) for i in range(10)])
        wait_for(lambda: engine.stats.get("messages_received") == flood + 10, 20, "flood received")
        elapsed = time.monotonic() - started
        wait_for(lambda: count(influxdb, db_name, "air", "co", "WHERE sensor = 'aq-002'") == 10, 10, "aq-002 stored")
        stored = count(influxdb, db_name, "air", "co", "WHERE sensor = 'aq-001'")
        assert 20 <= stored <= 20 + 5 * elapsed + 1
        over = engine.stats.get("rejected_rate_limited") + engine.stats.get("rate_limited_dropped")
        assert stored + over == flood
        wait_for(lambda: len(dead.messages) >= 1, 5, "dead letter")
        time.sleep(0.3)
        assert [(t, m["reason"]) for t, m in dead.messages] == [("city/deadletter/air/aq-001", "rate_limited")] * int(
            engine.stats.get("rejected_rate_limited"))
        assert len(dead.messages) <= 1 + elapsed * 5  # a run ends only when a message passes again
        deadletter_file = tmp_path / "e" / "deadletter.jsonl"
        assert len(deadletter_file.read_bytes().splitlines()) == len(dead.messages)
    finally:
        device.close()
        dead.close()
        engine.stop()


# -- secrets from files ----------------------------------------------------------------------------


def _secret(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("var, section, key", [
    ("CITYWATCH_MQTT_PASSWORD", "mqtt", "password"),
    ("CITYWATCH_INFLUX_TOKEN", "influxdb", "token"),
    ("CITYWATCH_INFLUX_PASSWORD", "influxdb", "password"),
])
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_secret_from_a_file_readable_by_its_owner_only(tmp_path, var, section, key, mode):
    path = _secret(tmp_path, "s3cret from a file\n", mode)
    s = load_settings(SAMPLE, env={var + "_FILE": str(path)})
    assert getattr(getattr(s, section), key).get_secret_value() == "s3cret from a file"
    assert "s3cret" not in s.model_dump_json()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_secret_file_readable_by_others_is_refused(tmp_path, mode):
    path = _secret(tmp_path, "pw", mode)
    with pytest.raises(ConfigError, match=rf"CITYWATCH_MQTT_PASSWORD_FILE: .* has mode {mode:04o}.*chmod 600"):
        load_settings(SAMPLE, env={"CITYWATCH_MQTT_PASSWORD_FILE": str(path)})


def test_secret_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"CITYWATCH_INFLUX_TOKEN_FILE: cannot read .*missing"):
        load_settings(SAMPLE, env={"CITYWATCH_INFLUX_TOKEN_FILE": str(tmp_path / "missing")})
    path = _secret(tmp_path, "pw", 0o600)
    with pytest.raises(ConfigError, match="CITYWATCH_INFLUX_TOKEN is set too"):
        load_settings(SAMPLE, env={"CITYWATCH_INFLUX_TOKEN_FILE": str(path), "CITYWATCH_INFLUX_TOKEN": "x"})


def test_check_config_cli_refuses_a_world_readable_secret(tmp_path):
    path = _secret(tmp_path, "pw", 0o644)
    env = {**os.environ, "CITYWATCH_MQTT_PASSWORD_FILE": str(path)}
    r = subprocess.run([sys.executable, "-m", "citywatch", "check-config", "--config", str(SAMPLE)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "mode 0644" in r.stdout + r.stderr


# -- nothing listens beyond loopback ------------------------------------------------------------------


def _listening(pid: int) -> list[str]:
    proc = psutil.Process(pid)
    return [c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.mark.integration
def test_private_services_listen_on_loopback_only(mosquitto, influxdb):
    for service in (mosquitto, influxdb):
        addresses = _listening(service.proc.pid)
        assert addresses, f"{service} listens nowhere?"
        assert set(addresses) <= {"127.0.0.1"}, addresses


@pytest.mark.integration
def test_the_engine_listens_on_nothing(mosquitto, influxdb, db_name, tmp_path):
    (tmp_path / "sensors").mkdir()
    (tmp_path / "sensors" / "test.yaml").write_text(yaml.safe_dump(REGISTRY_DOC, allow_unicode=True))
    cfg = {"registry": "sensors/test.yaml", "data_dir": str(tmp_path / "data"),
           "mqtt": {"url": mosquitto.url, "client_id": f"{db_name}-listen"},
           "influxdb": {"url": influxdb.url, "database": db_name}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "engine.log"
    with log.open("ab") as fh:
        engine = subprocess.Popen([sys.executable, "-m", "citywatch", "run", "--config", str(tmp_path / "c.yaml")],
                                  stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "mqtt connected" in log.read_text(errors="replace"), 60, "engine connected")
        assert _listening(engine.pid) == []
        remote = [c.raddr.ip for c in psutil.Process(engine.pid).net_connections(kind="inet") if c.raddr]
        assert remote and set(remote) <= {"127.0.0.1"}
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)


# -- the sample Mosquitto ACL on the real broker ----------------------------------------------------


class Client:
    """An MQTT 5 client of the ACL test: records what it receives and the reason codes it gets."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.received: list[str] = []
        self.connect_rc = None
        self.suback: list[int] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self._got(m.topic, m.payload)
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        self.connect_rc = rc
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, rcs, props):
        self.suback = [rc.value for rc in rcs]
        self.subscribed.set()

    def _got(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.received.append(f"{topic} {payload.decode()}")

    def subscribe(self, topic: str) -> list[int]:
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)
        return self.suback

    def publish(self, topic: str, text: str) -> None:
        self.c.publish(topic, text, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.integration
def test_sample_acl_devices_publish_only_to_their_own_topic_and_read_nothing(tmp_path):
    passwd = tmp_path / "passwd"
    users = {"citywatch": "engine-pw", "aq-001": "pw-1", "aq-002": "pw-2", "dutyofficer": "duty-pw"}
    binary = find_binary("mosquitto_passwd")
    for i, (user, pw) in enumerate(users.items()):
        subprocess.run([binary, "-b"] + (["-c"] if i == 0 else []) + [str(passwd), user, pw], check=True)
    passwd.chmod(0o600)
    acl = REPO / "deploy" / "mosquitto" / "acl"
    broker = Mosquitto(tmp_path / "broker", password_file=passwd, extra_config=f"acl_file {acl}")
    broker.start()
    clients: list[Client] = []

    def client(user, pw=None, cid=None) -> Client:
        c = Client(broker.port, user, pw if pw is not None else users.get(user), cid or f"acl-{user}-{len(clients)}")
        clients.append(c)
        assert c.connected.wait(5)
        return c

    try:
        anonymous = client(None, cid="acl-anon")
        assert anonymous.connect_rc.is_failure  # authentication is required
        wrong = client("aq-001", "not-the-password", cid="acl-wrong")
        assert wrong.connect_rc.is_failure

        engine = client("citywatch")
        aq1, aq2, duty = client("aq-001"), client("aq-002"), client("dutyofficer")
        assert engine.subscribe("city/#") == [1]
        assert duty.subscribe("city/#") == [1]  # granted, but the ACL filters what it reads
        aq1.subscribe("city/#")
        aq1.subscribe("city/air/aq-002/telemetry")

        aq1.publish("city/air/aq-002/telemetry", "spoofed by aq-001")  # another device's topic
        aq1.publish("city/water/aq-002/telemetry", "spoofed in another domain")
        aq1.publish("city/alerts/air/aq-001", "forged alert")
        aq1.publish("city/deadletter/air/aq-001", "forged dead letter")
        aq2.publish("city/air/aq-002/telemetry", "real aq-002")
        engine.publish("city/alerts/air/aq-002", "alert from the engine")
        aq1.publish("city/air/aq-001/telemetry", "real aq-001")  # own topic (last: it marks the end)

        wait_for(lambda: "city/air/aq-001/telemetry real aq-001" in engine.received, 5, "aq-001's own reading")
        wait_for(lambda: len(duty.received) >= 1, 5, "the alert")
        time.sleep(0.3)
        assert sorted(engine.received) == sorted([
            "city/air/aq-002/telemetry real aq-002", "city/alerts/air/aq-002 alert from the engine",
            "city/air/aq-001/telemetry real aq-001"])
        assert duty.received == ["city/alerts/air/aq-002 alert from the engine"]  # no telemetry
        assert aq1.received == [] and aq2.received == []  # devices read nothing, not even each other
    finally:
        for c in clients:
            c.close()
        broker.stop()


# -- TLS to InfluxDB with a throw-away CA -----------------------------------------------------------


class HttpsInfluxDB(InfluxDB):
    """influxd with its own HTTPS settings (`https-enabled`, `https-certificate`, `https-private-key`)."""

    def __init__(self, workdir: Path, ca: Path, cert: Path, key: Path) -> None:
        super().__init__(workdir)
        self.ca, self.cert, self.key = ca, cert, key

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def write_config(self, binary: str) -> Path:
        path = super().write_config(binary)
        conf = path.read_text()
        conf = re.sub(r"https-enabled = false", "https-enabled = true", conf)
        conf = re.sub(r'https-certificate = ".*"', f'https-certificate = "{self.cert}"', conf)
        conf = re.sub(r'https-private-key = ".*"', f'https-private-key = "{self.key}"', conf)
        path.write_text(conf)
        return path

    def start(self, timeout: float = 30.0) -> None:
        binary = find_binary("influxd")
        self._spawn([binary, "-config", str(self.write_config(binary))])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(self.log_path.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{self.url}/ping", verify=ssl.create_default_context(cafile=str(self.ca)), timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise ServiceError("influxd (https) did not answer /ping")

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> dict:
        r = httpx.post(f"{self.url}/query", data={"q": q, "epoch": epoch, **({"db": db} if db else {})},
                       verify=ssl.create_default_context(cafile=str(self.ca)), timeout=30)
        r.raise_for_status()
        return r.json()


@pytest.mark.integration
def test_influxdb_over_tls_with_a_private_ca(mosquitto, db_name, tmp_path):
    ca, cert, key = _throwaway_ca(tmp_path)
    influx = HttpsInfluxDB(tmp_path / "influx", ca, cert, key)
    influx.start()
    try:
        # without the CA the certificate is not trusted: nothing is written, the points are spooled
        stats = Stats()
        spool = Spool(tmp_path / "untrusted-spool", 1 << 20, "block", False, stats)
        writer = InfluxWriter(InfluxConfig(url=influx.url, database=db_name), BatchingConfig(write_retries=0),
                              spool, stats)
        assert writer.write([f"air,sensor=aq-001 co=1 {T0 * 10**9}"]) == "spooled"
        assert stats.get("influx_writes") == 0 and stats.get("spooled_points") == 1
        writer.close(5)
        spool.close()

        # with influxdb.ca_file the engine writes over TLS, end to end from the device
        settings = engine_settings(mosquitto.url, influx.url, db_name, tmp_path / "e", f"{db_name}-tls",
                                   influxdb={"ca_file": str(ca)})
        engine = Engine(settings, small_registry())
        engine.start()
        device = Device(mosquitto.port, client_id=f"{db_name}-dev")
        try:
            wait_for(engine.consumer.connected.is_set, 15, "engine connected")
            time.sleep(0.2)
            t0 = (int(time.time()) - 3600) * 1000
            device.publish_all([("city/air/aq-001/telemetry", {"ts": t0 + i * 1000, "co": float(i)}) for i in range(50)])
            wait_for(lambda: count(influx, db_name, "air", "co") == 50, 15, "readings over https")
            assert engine.stats.get("spooled_points") == 0
        finally:
            device.close()
            engine.stop()
    finally:
        influx.stop()
