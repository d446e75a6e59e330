"""The engine's MQTT connection against real brokers: reconnect and resubscribe, 3.1.1 and 5,
username/password and TLS with a throw-away CA."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from citywatch.pipeline import Engine
from citywatch.services import Mosquitto, find_binary

from pipeline_helpers import Device, count, engine_settings, small_registry, wait_for

pytestmark = pytest.mark.integration
T0_MS = (int(time.time()) - 3600) * 1000


def _run_engine(settings) -> Engine:
    engine = Engine(settings, small_registry())
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.3)
    return engine


def _send(device: Device, start: int, n: int, sensor: str = "aq-001") -> None:
    device.publish_all([(f"city/air/{sensor}/telemetry", {"ts": T0_MS + (start + i) * 1000, "pm25": float(start + i)})
                        for i in range(n)])


def test_broker_restart_engine_reconnects_and_resubscribes(influxdb, db_name, tmp_path):
    broker = Mosquitto(tmp_path / "broker")  # no persistence: the restarted broker forgets every session
    broker.start()
    engine = _run_engine(engine_settings(broker.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-e"))
    try:
        device = Device(broker.port, client_id=f"{db_name}-d1")
        _send(device, 0, 50)
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 50, 10, "before restart")
        device.close()
        broker.stop()
        wait_for(lambda: not engine.consumer.connected.is_set(), 10, "engine noticed the outage")
        broker.start()
        wait_for(lambda: engine.stats.get("mqtt_connects") >= 2 and engine.consumer.connected.is_set(), 40,
                 "engine reconnected")
        time.sleep(0.3)
        device = Device(broker.port, client_id=f"{db_name}-d2")
        _send(device, 50, 50)
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 100, 15, "after restart: resubscribed")
        device.close()
    finally:
        engine.stop()
        broker.stop()


def test_mqtt_311_consumer(mosquitto, influxdb, db_name, tmp_path):
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-311",
                               mqtt={"protocol": "3.1.1"})
    engine = _run_engine(settings)
    device = Device(mosquitto.port, client_id=f"{db_name}-dev", protocol="5")
    try:
        _send(device, 0, 200, sensor="aq-002")
        wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 200, 15, "readings over MQTT 3.1.1")
    finally:
        device.close()
        engine.stop()


def _throwaway_ca(directory):
    """A CA and a server certificate for 127.0.0.1, valid for a day."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citywatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def test_username_password_and_tls(influxdb, db_name, tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run([find_binary("mosquitto_passwd"), "-b", "-c", str(passwd), "engine", "s3cret-pw"], check=True)
    subprocess.run([find_binary("mosquitto_passwd"), "-b", str(passwd), "device", "dev-pw"], check=True)
    passwd.chmod(0o600)
    ca, cert, key = _throwaway_ca(tmp_path)
    broker = Mosquitto(tmp_path / "broker", password_file=passwd, tls=(ca, cert, key))
    broker.start()
    try:
        # wrong password: refused, and the engine keeps trying rather than crashing
        bad = engine_settings(broker.tls_url, influxdb.url, db_name, tmp_path / "bad", f"{db_name}-bad",
                              mqtt={"tls_ca_file": str(ca), "username": "engine", "password": "wrong"})
        engine = Engine(bad, small_registry())
        engine.start()
        wait_for(lambda: engine.stats.get("mqtt_connect_failures") >= 1, 15, "refused connection")
        assert not engine.consumer.connected.is_set()
        engine.stop()

        good = engine_settings(broker.tls_url, influxdb.url, db_name, tmp_path / "good", f"{db_name}-good",
                               mqtt={"tls_ca_file": str(ca), "username": "engine", "password": "s3cret-pw"})
        engine = _run_engine(good)
        device = Device(broker.port, client_id=f"{db_name}-dev", username="device", password="dev-pw")
        try:
            _send(device, 0, 20, sensor="aq-003")
            wait_for(lambda: count(influxdb, db_name, "air", "pm25") == 20, 15, "readings over TLS")
        finally:
            device.close()
            engine.stop()
    finally:
        broker.stop()
