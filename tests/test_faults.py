"""Fault tests on real Mosquitto and InfluxDB, counting every reading end to end.

* the engine (`citywatch run`) SIGKILLed at random (seeded) moments under a steady QoS 1 stream,
  several times, restarted each time: every reading stored exactly once, with its exact value, and
  every level change alerted (at least once);
* InfluxDB SIGKILLed for 60 s under load, then restarted: nothing lost, the spool replayed in order;
* the broker restarted with a backlog queued for the engine's persistent session: nothing lost;
* the spool limit reached: `drop_oldest` drops the oldest readings and counts them, `block` loses
  nothing and pauses acknowledgements (the broker keeps the messages);
* a device resending its messages (duplicates, shuffled, also within one batch): no second alert,
  detector state and scores unchanged.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from citywatch.pipeline import Engine
from citywatch.services import InfluxDB, Mosquitto
from citywatch.sinks.line_protocol import split_lines

from pipeline_helpers import Device, Listener, count, engine_settings, rows, small_registry, \
    start_citywatch_run, wait_for, write_engine_config

pytestmark = pytest.mark.integration

SENSORS = ("aq-001", "aq-002", "aq-003")


class SteadyStream:
    """A device thread publishing `total` readings at QoS 1, round-robin over `SENSORS`, at about
    `rate` messages/s. Reading k has time t0 + k s and value k: anything lost or garbled shows."""

    def __init__(self, port: int, client_id: str, total: int, rate: float, t0_ms: int, no2: bool = False) -> None:
        self.device = Device(port, client_id=client_id)
        self.total, self.rate, self.t0_ms, self.no2 = total, rate, t0_ms, no2
        self.sent = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def message(self, k: int) -> tuple[str, dict]:
        doc = {"ts": self.t0_ms + k * 1000, "co": float(k)}
        if self.no2:
            doc["no2"] = no2_value(k)
        return f"city/air/{SENSORS[k % len(SENSORS)]}/telemetry", doc

    def _run(self) -> None:
        start = time.monotonic()
        infos = []
        for k in range(self.total):
            infos.append(self.device.publish(*self.message(k)))
            self.sent = k + 1
            lag = start + (k + 1) / self.rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        for info in infos:
            info.wait_for_publish(60)
        self.done.set()

    def start(self) -> "SteadyStream":
        self.thread.start()
        return self

    def close(self) -> None:
        self.thread.join(120)
        self.device.close()


def no2_value(k: int) -> float:
    """Every sensor's NO2 goes from 50 (ok) to 250 (critical, see NO2_RULE) and back every 40 readings."""
    return 250.0 if (k // len(SENSORS) // 40) % 2 else 50.0


def expected_no2_alerts(total: int, t0_ms: int) -> set[tuple[str, int, str, str]]:
    """(sensor, reading time in ns, previous level, level) of every level change in the stream."""
    out = set()
    for k in range(len(SENSORS), total):
        before, now = no2_value(k - len(SENSORS)), no2_value(k)
        if before != now:
            out.add((SENSORS[k % len(SENSORS)], (t0_ms + k * 1000) * 1_000_000,
                     "ok" if before < 200 else "critical", "ok" if now < 200 else "critical"))
    return out


def stored_values(influx: InfluxDB, db: str) -> list[float]:
    return sorted(r["co"] for r in rows(influx, db, "SELECT co FROM air"))


# -- the engine SIGKILLed ----------------------------------------------------------------------------


def test_engine_sigkilled_at_random_moments_loses_and_duplicates_nothing(mosquitto, influxdb, db_name, tmp_path):
    rng = random.Random(20261127)
    config = write_engine_config(tmp_path, mosquitto.url, influxdb.url, db_name, snapshot_interval="1s")
    log_path = tmp_path / "engine.log"
    log = log_path.open("ab")
    kills = 4
    total, rate = 12000, 400.0  # 30 s of stream: room for 4 kills and restarts on a busy machine

    def up(n: int) -> None:  # the n-th engine is subscribed and storing
        wait_for(lambda: log_path.read_text(errors="replace").count("mqtt connected") >= n, 30, f"engine {n} up")

    engine = start_citywatch_run(config, log)
    up(1)
    time.sleep(0.5)  # SUBACK: the persistent session exists from here on
    t0_ms = (int(time.time()) - 4 * 3600) * 1000  # reading k at t0 + k s: all in the past
    stream = SteadyStream(mosquitto.port, f"{db_name}-dev", total, rate, t0_ms, no2=True).start()
    stored_at_kill = [0]
    try:
        for k in range(kills):
            # a random moment while this engine is storing the stream
            wait_for(lambda: count(influxdb, db_name, "air", "co") > stored_at_kill[-1], 30, "engine storing")
            time.sleep(rng.uniform(0.2, 1.5))
            engine.send_signal(signal.SIGKILL)
            assert engine.wait(10) == -signal.SIGKILL
            stored_at_kill.append(count(influxdb, db_name, "air", "co"))
            time.sleep(rng.uniform(0.0, 0.5))  # the stream goes on while the engine is dead
            engine = start_citywatch_run(config, log)
            up(k + 2)
        stored_at_kill.pop(0)
        assert stream.done.wait(60), "the device could not publish everything"
        assert stream.sent == total
        wait_for(lambda: count(influxdb, db_name, "air", "co") == total, 60, "every reading stored")
        time.sleep(1.0)  # a late duplicate would show now
        # the kills hit mid-stream, not before or after it
        assert 0 < stored_at_kill[0] < stored_at_kill[1] < stored_at_kill[2] < stored_at_kill[3] < total, stored_at_kill
        assert engine_readings_rejected(tmp_path) == 0
        # every reading exactly once, with its exact value and time
        assert stored_values(influxdb, db_name) == [float(k) for k in range(total)]
        per_series = rows(influxdb, db_name, 'SELECT count(co) FROM air GROUP BY sensor')
        assert {r["sensor"]: r["count"] for r in per_series} == {
            s: len(range(i, total, len(SENSORS))) for i, s in enumerate(SENSORS)}
        times = rows(influxdb, db_name, "SELECT co FROM air")
        assert all(r["time"] == stream.t0_ms * 1_000_000 + int(r["co"]) * 1_000_000_000 for r in times)
        # every reading scored, once per (series, time): no double evaluation stored
        assert count(influxdb, db_name, "scores", "score") == 2 * total
        # Every level change alerted, and none again after a kill: the state saved with the
        # acknowledgement of an alerting batch already knows its alerts.
        expected = expected_no2_alerts(total, t0_ms)
        stored = {(a["sensor"], a["time"], a["previous_level"], a["level"])
                  for a in rows(influxdb, db_name, "SELECT * FROM alerts WHERE detector = 'threshold'")}
        assert stored == expected, (sorted(expected - stored)[:5], sorted(stored - expected)[:5])
        print(f"\nFIGURES engine SIGKILLed {kills}x mid-stream (stored at each kill: {stored_at_kill}): "
              f"{total}/{total} messages ({2 * total} readings) stored, each once; {len(expected)}/{len(expected)} "
              f"level changes alerted once")
    finally:
        stream.close()
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)
        log.close()
    text = log_path.read_text(errors="replace")
    assert text.count('"engine started"') == kills + 1


def engine_readings_rejected(tmp_path: Path) -> int:
    deadletters = tmp_path / "data" / "deadletter.jsonl"
    return len(deadletters.read_bytes().splitlines()) if deadletters.exists() else 0


# -- InfluxDB SIGKILLed for 60 s -----------------------------------------------------------------------


class WriteLog:
    """Records every body the engine's writer posts to InfluxDB and whether it was accepted. It only
    observes: the request still goes to the real server."""

    def __init__(self, writer) -> None:
        self.entries: list[tuple[bool, bytes]] = []
        self._post = writer._post
        writer._post = self

    def __call__(self, body: bytes):
        try:
            response = self._post(body)
        except Exception:
            self.entries.append((False, body))
            raise
        self.entries.append((200 <= response.status_code < 300, body))
        return response


def test_influxdb_sigkilled_for_60s_under_load_loses_nothing_and_replays_in_order(mosquitto, db_name, tmp_path):
    influx = InfluxDB(tmp_path / "influx")
    influx.start()
    # One writer thread, so the order of spooled segments is the order of the batches.
    settings = engine_settings(mosquitto.url, influx.url, db_name, tmp_path / "engine", f"{db_name}-e",
                               batching={"concurrent_writes": 1})
    engine = Engine(settings, small_registry())
    writes = WriteLog(engine.writer)
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.2)
    total, rate = 7000, 100.0  # 70 s of stream: the outage is under load from start to end
    stream = SteadyStream(mosquitto.port, f"{db_name}-dev", total, rate, (int(time.time()) - 7200) * 1000).start()
    try:
        wait_for(lambda: count(influx, db_name, "air", "co") >= 300, 20, "first readings")
        influx.kill()  # SIGKILL
        killed_at = time.monotonic()
        acked_at_kill = engine.stats.get("messages_acked")
        time.sleep(60)
        # during the outage every message was stored in the spool and acknowledged
        assert engine.stats.get("spooled_points") > 0
        assert engine.stats.get("messages_acked") - acked_at_kill >= 0.8 * rate * 60
        assert engine.stats.get("influx_up") == 0
        influx.start()
        outage = time.monotonic() - killed_at
        assert stream.done.wait(60)
        wait_for(lambda: count(influx, db_name, "air", "co") == total, 60, "every reading stored")
        wait_for(lambda: len(engine.spool) == 0, 20, "spool drained")
        assert stored_values(influx, db_name) == [float(k) for k in range(total)]
        assert engine.stats.get("spool_dropped_points") == 0
        assert engine.stats.get("replayed_points") >= engine.stats.get("spooled_points") > 0
        assert outage >= 60
        print(f"\nFIGURES InfluxDB SIGKILLed for {outage:.0f} s under {rate:.0f} readings/s: "
              f"{engine.stats.get('spooled_points'):.0f} points spooled, {engine.stats.get('replayed_points'):.0f} "
              f"replayed, {total}/{total} readings stored")
    finally:
        stream.close()
        engine.stop()
        influx.stop()
    # Replayed in order: the accepted bodies, read one after another, give each sensor's readings in
    # increasing time (the device sent them in that order); the spool did not reorder them.
    last_ts: dict[bytes, int] = {}
    replayed = 0
    for ok, body in writes.entries:
        if not ok:
            continue
        for line in split_lines(body):
            if not line.startswith(b"air,"):
                continue
            key, _, ts = line.rpartition(b" ")
            series = key.split(b" ")[0]
            t = int(ts)
            assert t > last_ts.get(series, 0), f"out of order: {line!r}"
            last_ts[series] = t
            replayed += 1
    assert replayed == total  # each reading accepted exactly once: nothing written twice


# -- the broker restarted -----------------------------------------------------------------------------


def test_broker_restart_with_messages_in_flight_loses_nothing_with_the_persistent_session(influxdb, db_name,
                                                                                           tmp_path):
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    # a small receive maximum: most of the backlog waits in the broker's session queue, not in the engine
    settings = engine_settings(broker.url, influxdb.url, db_name, tmp_path / "engine", f"{db_name}-e",
                               mqtt={"receive_maximum": 10})
    engine = Engine(settings, small_registry())
    engine.start()
    t0 = (int(time.time()) - 7200) * 1000
    try:
        wait_for(engine.consumer.connected.is_set, 15, "engine connected")
        time.sleep(0.2)
        device = Device(broker.port, client_id=f"{db_name}-d1")
        _publish(device, 0, 3000, t0)  # the broker has all of them (PUBACK) ...
        device.close()
        stored_at_stop = count(influxdb, db_name, "air", "co")
        broker.stop()  # ... and is restarted before the engine has taken them all
        broker.start()
        wait_for(lambda: engine.stats.get("mqtt_connects") >= 2 and engine.consumer.connected.is_set(), 40,
                 "engine reconnected")
        device = Device(broker.port, client_id=f"{db_name}-d2")
        _publish(device, 3000, 500, t0)
        device.close()
        wait_for(lambda: count(influxdb, db_name, "air", "co") == 3500, 30, "every reading stored")
        assert stored_values(influxdb, db_name) == [float(k) for k in range(3500)]
        print(f"\nFIGURES broker restarted with {3000 - stored_at_stop} of 3000 readings not yet stored: "
              f"3500/3500 stored after the reconnect")
    finally:
        engine.stop()
        broker.stop()


# -- the spool limit -----------------------------------------------------------------------------------


def _spool_engine(mosquitto, influx, db_name, tmp_path, when_full: str) -> Engine:
    settings = engine_settings(
        mosquitto.url, influx.url, db_name, tmp_path / "engine", f"{db_name}-{when_full}",
        spool={"max_bytes": 1 << 16, "when_full": when_full},
        detectors={"write_scores": "none"}, indices={"air": False, "fire": False, "traffic": False},
        batching={"concurrent_writes": 1, "max_messages": 50})
    engine = Engine(settings, small_registry())
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.2)
    return engine


def settled(value, quiet: float = 1.5, timeout: float = 30.0):
    """The value once it has not changed for `quiet` seconds."""
    last, since = value(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {timeout}s: {last}")


def _publish(device: Device, first: int, n: int, t0_ms: int) -> None:
    device.publish_all([(f"city/air/{SENSORS[k % 3]}/telemetry", {"ts": t0_ms + k * 1000, "co": float(k)})
                        for k in range(first, first + n)], timeout=60)


def test_spool_full_drop_oldest_drops_the_oldest_readings_and_counts_them(mosquitto, db_name, tmp_path):
    influx = InfluxDB(tmp_path / "influx")
    influx.start()
    engine = _spool_engine(mosquitto, influx, db_name, tmp_path, "drop_oldest")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    t0 = (int(time.time()) - 7200) * 1000
    started = time.monotonic()
    try:
        _publish(device, 0, 100, t0)
        wait_for(lambda: count(influx, db_name, "air", "co") == 100, 15, "before the outage")
        influx.kill()
        n = 3000  # about 200 KB of line protocol into a 64 KiB spool
        for first in range(100, 100 + n, 500):
            _publish(device, first, 500, t0)
        total = 100 + n
        wait_for(lambda: engine.stats.get("messages_acked") >= total, 30, "all acknowledged (spooled or dropped)")
        assert engine.spool.bytes <= 1 << 16
        influx.start()
        wait_for(lambda: len(engine.spool) == 0 and engine.stats.get("influx_up") == 1, 30, "spool drained")
        time.sleep(0.3)
        stored = stored_values(influx, db_name)
        missing = sorted(set(range(total)) - {int(v) for v in stored})
        dropped = engine.stats.get("spool_dropped_points")
        assert missing and dropped >= len(missing)
        # drop_oldest: what is missing is one block, the oldest readings of the outage
        assert missing == list(range(100, 100 + len(missing)))
        # the only other points in the spool are the engine's own health points (one per 10 s)
        health_points = int((time.monotonic() - started) // 10) + 1
        assert dropped - len(missing) <= health_points
        assert engine.stats.get("spool_dropped_segments") > 0
        print(f"\nFIGURES spool full, drop_oldest: {len(missing)} oldest readings dropped, "
              f"spool_dropped_points {dropped:.0f}, {len(stored)}/{total} stored")
    finally:
        device.close()
        engine.stop()
        influx.stop()


def test_spool_full_block_loses_nothing_and_stops_acknowledging(mosquitto, db_name, tmp_path):
    influx = InfluxDB(tmp_path / "influx")
    influx.start()
    engine = _spool_engine(mosquitto, influx, db_name, tmp_path, "block")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    t0 = (int(time.time()) - 7200) * 1000
    try:
        _publish(device, 0, 100, t0)
        wait_for(lambda: count(influx, db_name, "air", "co") == 100, 15, "before the outage")
        influx.kill()
        n = 3000
        for first in range(100, 100 + n, 500):
            _publish(device, first, 500, t0)
        total = 100 + n
        # ingest pauses: the spool is full, nothing more is acknowledged, the broker keeps the rest
        acked = settled(lambda: engine.stats.get("messages_acked"))
        assert acked < total
        assert engine.spool.bytes > (1 << 16) * 0.5
        assert engine.stats.get("spool_dropped_points") == 0
        influx.start()
        wait_for(lambda: count(influx, db_name, "air", "co") == total, 60, "every reading stored")
        assert stored_values(influx, db_name) == [float(k) for k in range(total)]
        wait_for(lambda: engine.stats.get("messages_acked") >= total, 20, "everything acknowledged")
        print(f"\nFIGURES spool full, block: acknowledgements paused at {acked:.0f}/{total}, then {total}/{total} stored")
    finally:
        device.close()
        engine.stop()
        influx.stop()


# -- a device resending its messages -------------------------------------------------------------------


def _detector_state(engine: Engine, path: Path) -> dict[str, np.ndarray]:
    """Everything the engine keeps per series (detectors, alert levels, watermarks, indices), as saved
    for a restart. Called while no message is in flight."""
    engine.save_state()
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_resent_duplicates_in_any_order_do_not_fool_detectors_or_alerts(mosquitto, influxdb, db_name, tmp_path):
    rng = random.Random(7)
    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "engine", f"{db_name}-dup",
                               detectors={"snapshot_interval": "1h"})
    state_file = settings.data_path(settings.detectors.state_file)
    engine = Engine(settings, small_registry())
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.2)
    listener = Listener(mosquitto.port, "city/alerts/#", f"{db_name}-alerts")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    t0 = (int(time.time()) - 3 * 3600) * 1000
    no2 = [50, 90, 170, 250, 260, 150, 100, 40, 210, 220, 60, 30]  # ok, warning, critical, ... ok
    original = [(f"city/air/{s}/telemetry", {"ts": t0 + i * 60_000, "no2": float(v) + j, "pm25": 10.0 + i})
                for i, v in enumerate(no2) for j, s in enumerate(SENSORS)]
    try:
        device.publish_all(original)
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == len(original), 15, "first pass stored")
        wait_for(lambda: engine.stats.get("messages_acked") >= len(original), 10, "first pass acknowledged")
        time.sleep(0.5)
        alerts_before = sorted(alert_key(m) for _, m in listener.messages)
        assert len(alerts_before) >= 3 * len(SENSORS)  # the stream really alerts
        state_before = _detector_state(engine, state_file)
        scores_before = rows(influxdb, db_name, "SELECT * FROM scores")
        alert_points_before = rows(influxdb, db_name, "SELECT * FROM alerts")

        # the device resends: everything twice, shuffled, and some messages twice within one batch
        resend = original * 2 + original[:5]
        rng.shuffle(resend)
        device.publish_all(resend)
        wait_for(lambda: engine.stats.get("messages_acked") >= len(original) + len(resend), 15, "resends processed")
        time.sleep(0.5)

        assert sorted(alert_key(m) for _, m in listener.messages) == alerts_before
        after = _detector_state(engine, state_file)
        assert after.keys() == state_before.keys()
        for key in state_before:
            np.testing.assert_array_equal(after[key], state_before[key], err_msg=key)
        assert rows(influxdb, db_name, "SELECT * FROM scores") == scores_before
        assert rows(influxdb, db_name, "SELECT * FROM alerts") == alert_points_before
        assert count(influxdb, db_name, "air", "no2") == len(original)
        assert engine.stats.get("readings_rejected") == 0  # resends are stored, not dead-lettered
        print(f"\nFIGURES {len(resend)} resent messages (shuffled, {len(original)} originals): "
              f"{len(alerts_before)} alerts before and after, detector state and scores unchanged")
    finally:
        device.close()
        listener.close()
        engine.stop()


def alert_key(alert: dict) -> tuple:
    return (alert["sensor"], alert["metric"], alert["detector"], alert["ts"], alert["previous_level"], alert["level"])
