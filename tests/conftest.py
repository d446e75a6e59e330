"""Shared fixtures: a private Mosquitto and InfluxDB per test session, on free loopback ports."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import structlog

from citywatch.nats_service import NatsServer
from citywatch.services import InfluxDB, Mosquitto, missing_binaries

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory) -> Path:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"integration tests need {missing}; run .ci/run or install the Debian packages")
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(services_dir) -> Mosquitto:
    broker = Mosquitto(services_dir / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxdb(services_dir) -> InfluxDB:
    db = InfluxDB(services_dir / "influxdb")
    db.start()
    yield db
    db.stop()


@pytest.fixture
def nats_server(tmp_path) -> NatsServer:
    """A private nats-server (JetStream, MQTT listener, 8 telemetry partitions) per test."""
    server = NatsServer(tmp_path / "nats", partitions=8)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db_name() -> str:
    """A fresh database name per test, so tests never see each other's points."""
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
def _default_logging():
    """A command run in-process configures logging for the whole process: undo it after each test."""
    yield
    structlog.reset_defaults()
