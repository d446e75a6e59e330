"""Partitions, leases, fencing, start-up checks and state hand-over of the NATS source (real nats-server)."""

from __future__ import annotations

import asyncio
import doctest
import time
from pathlib import Path

import numpy as np
import pytest

import citywatch.handover
import citywatch.nats_service
import citywatch.partitions
from citywatch.config import ConfigError, Settings
from citywatch.evaluate import Evaluator
from citywatch.handover import PartitionStates, PartitionStateStore, StateFenced, evaluator_arrays, read_blob
from citywatch.ingest.nats_source import NatsSource
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Validator
from citywatch.partitions import LeaseLost, Leases, assign, check_ids, partition_of
from citywatch.pipeline import Engine
from citywatch.registry import Registry, SeriesIndex
from citywatch.stats import Stats
from nats_helpers import lease_owners, registry_doc, registry_of, saved_seqs, settings_for, telemetry
from pipeline_helpers import Device, Listener, count, wait_for

REPO_REGISTRY = Path(__file__).resolve().parent.parent / "config" / "sensors" / "bienhoa.yaml"


def _run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("module", [citywatch.partitions, citywatch.handover, citywatch.nats_service])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_partition_of_is_what_the_server_maps_every_sensor_to(nats_server):
    import nats

    registry = Registry.load(REPO_REGISTRY)

    async def go():
        nc = await nats.connect(nats_server.url)
        got: dict[str, int] = {}

        async def on_msg(msg):
            tokens = msg.subject.split(".")
            got[tokens[4]] = int(tokens[2])

        await nc.subscribe("citywatch.telemetry.>", cb=on_msg)
        for s in registry.sensors.values():
            await nc.publish(f"city.{s.domain}.{s.id}.telemetry", b"{}")
        await nc.flush()
        for _ in range(100):
            if len(got) == len(registry.sensors):
                break
            await asyncio.sleep(0.02)
        await nc.close()
        return got

    got = _run(go())
    assert len(got) == len(registry.sensors) == 120
    assert got == {s: partition_of(s, 8) for s in registry.sensors}
    assert len(set(got.values())) == 8


def test_ids_that_cannot_be_subject_tokens_are_refused_by_name():
    from citywatch.registry import Sensor

    def sensor(sensor_id: str, domain: str = "air") -> Sensor:
        return Sensor.model_construct(id=sensor_id, domain=domain, area="x", lat=0.0, lon=0.0, interval=60.0,
                                      metrics={})

    bad = Registry({s.id: s for s in (sensor("aq.001"), sensor("aq 002"), sensor("aq-003", "air+"), sensor("aq-004"))})
    with pytest.raises(ConfigError) as err:
        check_ids(bad)
    text = str(err.value)
    assert "'aq.001'" in text and "'aq 002'" in text and "'air+'" in text and "aq-004" not in text
    check_ids(Registry.load(REPO_REGISTRY))  # the sample registry is fine


def test_assignment_is_balanced_deterministic_and_mostly_stable_on_join_and_leave():
    three = assign(8, ["a", "b", "c"])
    assert three == assign(8, ["c", "a", "b"])
    loads = sorted(list(three.values()).count(m) for m in "abc")
    assert loads == [2, 3, 3]
    four = assign(8, ["a", "b", "c", "d"])
    assert sorted(list(four.values()).count(m) for m in "abcd") == [2, 2, 2, 2]
    # A join moves at least 2 of 8 partitions (the newcomer's share); reassigning at random would move 6.
    moves = []
    for k in range(50):
        members = [f"host{k}-{j}" for j in range(4)]
        before, after = assign(8, members[:3]), assign(8, members)
        moves.append(sum(before[p] != after[p] for p in range(8)))
    assert min(moves) >= 2 and max(moves) <= 5 and sum(moves) / len(moves) < 4, moves
    two = assign(8, ["a", "c"])
    kept = [p for p in range(8) if three[p] != "b"]
    assert sum(two[p] == three[p] for p in kept) >= len(kept) - 2
    assert assign(8, []) == {}


def test_leases_are_exclusive_renewed_by_cas_and_expire(nats_server):
    import nats

    async def go():
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().create_key_value(bucket="leases_t", ttl=1.5, history=1)
        a, b = Leases(kv, "a"), Leases(kv, "b")
        await a.heartbeat()
        await b.heartbeat()
        assert await a.members() == ["a", "b"]
        assert await a.acquire(0)
        assert not await b.acquire(0)  # held
        await a.renew(0)
        assert await b.owner(0) == "a"
        await a.release(0)
        assert await b.acquire(0)  # released: free at once
        for _ in range(4):  # b keeps renewing past the TTL; a stops heart-beating
            await asyncio.sleep(0.6)
            await b.renew(0)
            await b.heartbeat()
        assert await a.members() == ["b"]  # a's membership expired
        assert await b.owner(0) == "b"
        await asyncio.sleep(2.0)  # b stalls past the TTL: the lease expires, a takes it
        assert await a.acquire(0)
        with pytest.raises(LeaseLost):
            await b.renew(0)
        await nc.close()

    _run(go())


def _source_settings(tmp_path, nats_server, influxdb, db, instance, **overrides) -> Settings:
    raw = settings_for(nats_server.url, nats_server.mqtt_url, influxdb.url, db, tmp_path / instance, instance,
                       **overrides)
    return Settings.model_validate(raw)


def test_a_stale_owner_is_fenced_out_by_lease_and_by_state_revision(tmp_path, nats_server, influxdb, db_name):
    import nats

    registry = registry_of(registry_doc(32))
    engine = Engine(_source_settings(tmp_path, nats_server, influxdb, db_name, "x"), registry, source=NatsSource)
    engine.start()
    device = Device(nats_server.mqtt_port, client_id="fence-dev")
    try:
        wait_for(lambda: engine.consumer.owned() == list(range(8)), 20, "x owning every partition")
        by_partition = {p: [s for s in registry.sensors if partition_of(s, 8) == p] for p in range(8)}
        t0 = (time.time_ns() // 10**6) - 3_600_000
        device.publish_all([telemetry(s, t0, 50.0, 10.0) for s in registry.sensors])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 32, 20, "first readings stored")
        wait_for(lambda: saved_seqs(nats_server.url).get(0, 0) > 0 and saved_seqs(nats_server.url).get(1, 0) > 0, 20,
                 "partition states saved")

        async def steal():
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            leases = await js.key_value("citywatch_leases")
            state = await js.key_value("citywatch_state")
            # Partition 0: x "stalled", its lease expired and y took it (and fenced the state key).
            await leases.purge("lease.0")
            await leases.create("lease.0", b"y")
            store = PartitionStateStore(state)
            _, blob0 = await store.fence(0, "y")
            # Partition 1: only the state key is taken over by a new owner: x's next save must fail.
            _, blob1 = await store.fence(1, "y")
            await nc.close()
            return blob0, blob1

        blob0, blob1 = _run(steal())
        assert read_blob(blob0)[0] > 0 and read_blob(blob1)[0] > 0  # x's saved states, reassembled from chunks
        wait_for(lambda: 0 not in engine.consumer.owned(), 10, "x dropping partition 0 (lease lost)")
        device.publish_all([telemetry(s, t0 + 60_000, 51.0, 11.0) for s in registry.sensors])
        wait_for(lambda: 1 not in engine.consumer.owned(), 10, "x dropping partition 1 (state write fenced)")
        others = 32 - len(by_partition[0]) - len(by_partition[1])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") >= 32 + others, 20, "other partitions stored")
        time.sleep(1.0)
        stored = count(influxdb, db_name, "air", "no2", "WHERE time > %d" % ((t0 + 30_000) * 10**6))
        # What x processed of partitions 0 and 1 after losing them at most: partition 1 may have been
        # fenced only at its save, after storing (harmless: the same points the new owner writes).
        assert others <= stored <= others + len(by_partition[1])
        assert lease_owners(nats_server.url)[0] == "y"
        # Bad input through the partitioned stream is dead-lettered and counted; the engine goes on.
        sensor = by_partition[2][0]
        device.publish_all([(f"city/air/{sensor}/telemetry", b"not json"),
                            telemetry(sensor, t0 + 120_000, 52.0, 12.0)])
        wait_for(lambda: engine.stats.snapshot().get("deadletters", 0) >= 1, 10, "the bad message dead-lettered")
        wait_for(lambda: count(influxdb, db_name, "air", "no2", f"WHERE sensor = '{sensor}'") == 3, 10,
                 "the next good reading stored")
        assert engine.running
        # Alerts reach MQTT subscribers of the same server (published as core NATS on the topic's subject).
        listener = Listener(nats_server.mqtt_port, "city/alerts/#", "alert-listener")
        try:
            device.publish_all([telemetry(sensor, t0 + 180_000, 250.0, 12.0)])
            wait_for(lambda: any(t == f"city/alerts/air/{sensor}" and m["level"] == "critical"
                                 for t, m in listener.messages), 10, "the NO2 alert over MQTT")
        finally:
            listener.close()
        assert engine.stats.snapshot().get("nats_partitions_dropped", 0) >= 2
    finally:
        device.close()
        engine.stop()


def test_start_up_refuses_a_stream_that_keeps_readings_too_briefly(tmp_path, nats_server, influxdb, db_name):
    import nats
    from nats.js import api

    async def make_stream():
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(api.StreamConfig(name="CITYWATCH_TELEMETRY", subjects=["citywatch.telemetry.>"],
                                                         max_age=120.0))
        await nc.close()

    _run(make_stream())
    engine = Engine(_source_settings(tmp_path, nats_server, influxdb, db_name, "x"), registry_of(registry_doc(4)),
                    source=NatsSource)
    with pytest.raises(ConfigError, match="keeps readings 120s"):
        engine.consumer.start()


def test_settings_refuse_retention_shorter_than_snapshot_interval_plus_failover():
    with pytest.raises(Exception, match="stream_max_age"):
        Settings.model_validate({"nats": {"stream_max_age": "10m", "snapshot_interval": "1m", "lease_ttl": "30s",
                                          "max_failover_time": "10m"}})
    Settings.model_validate({"nats": {"stream_max_age": "12m", "snapshot_interval": "1m", "lease_ttl": "30s",
                                      "max_failover_time": "10m"}})


def test_partition_state_merges_into_a_running_evaluator(tmp_path):
    """B owns other partitions; taking partition p from A's state changes p's series only, to A's values."""
    registry = registry_of(registry_doc(24))
    settings = Settings.model_validate({"detectors": {"state_file": None, "spatial": None, "drift": None},
                                        "indices": {"water": False}})

    def evaluator_fed(values_offset: float):
        series = SeriesIndex(registry)
        series.add_registry()
        ev = Evaluator(settings, series)
        validator = Validator(registry, series, settings.validation, TopicPattern(settings.mqtt.topic), Stats())
        t0 = (time.time_ns() // 10**6) - 7_200_000
        now = time.time_ns()
        for r in range(40):
            msgs = [telemetry(s, t0 + r * 60_000, 40 + values_offset + (r * 3 + i) % 11, 12.0 + (r + i) % 5)
                    for i, s in enumerate(registry.sensors)]
            batch, rejected = validator.validate([(t, p, now) for t, p in msgs])
            assert not rejected
            ev.ingest(batch.sorted_by_series_time(), now)
        return ev

    a, b = evaluator_fed(0.0), evaluator_fed(100.0)
    p = 2
    blob = PartitionStates(settings, registry, a, 8).snapshot(p, seq=1234)
    before_b = evaluator_arrays(b)
    assert PartitionStates(settings, registry, b, 8).restore(blob) == 1234
    after_b, from_a = evaluator_arrays(b), evaluator_arrays(a)
    rows_p = np.asarray([partition_of(s, 8) == p for s in b.series.sensor_ids])
    assert rows_p.any() and not rows_p.all()
    compared = 0
    for key, arr in after_b.items():
        if key.startswith(("__air_indices", "__forecasts")) or arr.shape[:1] != rows_p.shape:
            continue  # per-station stages have their own row layout; the detectors' are per series
        np.testing.assert_array_equal(arr[rows_p], from_a[key][rows_p], err_msg=key)
        np.testing.assert_array_equal(arr[~rows_p], before_b[key][~rows_p], err_msg=key)
        compared += 1
    assert compared > 30
    # B's own state for p was different (the comparison above would be vacuous otherwise)
    assert not np.array_equal(before_b["stuck/last_value"][rows_p], after_b["stuck/last_value"][rows_p])


def test_state_store_chunks_large_states_and_fences_stale_writers(nats_server):
    import os as _os

    import nats

    async def go():
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().create_key_value(bucket="state_t", history=1)
        store = PartitionStateStore(kv, chunk_bytes=512 * 1024)
        rev_x, none = await store.fence(3, "x")
        assert none is None
        big = _os.urandom(1_300_000)  # above nats-server's default 1 MB message limit
        rev_x = await store.write(3, "x", big, seq=10, last=rev_x)
        assert await store.read(3) == big
        rev_x = await store.write(3, "x", big[::-1], seq=20, last=rev_x)
        assert await store.read(3) == big[::-1]
        chunks = [k for k in await kv.keys() if k.startswith("chunk.3.")]
        assert len(chunks) == 3  # the first state's chunks are gone
        rev_y, taken = await store.fence(3, "y")  # a new owner takes the partition over
        assert taken == big[::-1]
        with pytest.raises(StateFenced):
            await store.write(3, "x", b"stale", seq=30, last=rev_x)
        assert await store.read(3) == big[::-1]
        assert len([k for k in await kv.keys() if k.startswith("chunk.3.")]) == 3  # the stale chunks removed
        await store.write(3, "y", b"fresh", seq=31, last=rev_y)
        assert await store.read(3) == b"fresh"
        await nc.close()

    _run(go())


def test_the_documented_sample_config_is_valid_engine_config():
    import yaml

    import citywatch.ingest.nats_source as module

    block = module.__doc__.split("Options (select with")[1].split("::", 1)[1]
    doc = yaml.safe_load(block)
    settings = Settings.model_validate(doc)
    assert settings.source == "nats" and settings.nats.partitions == 8 and settings.nats.lease_ttl == 10.0
    assert settings.nats.stream_max_age == 86400.0 and settings.detectors.allowed_lateness == 0


def test_check_config_with_the_nats_source_checks_ids_and_prints_the_server_mapping(tmp_path, capsys):
    import yaml

    from citywatch.cli import main

    doc = registry_doc(2)
    (tmp_path / "sensors.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "citywatch.yaml").write_text(yaml.safe_dump({"registry": "sensors.yaml", "source": "nats"}))
    assert main(["check-config", "--config", str(tmp_path / "citywatch.yaml")]) == 0
    out = capsys.readouterr().out
    assert '"city.*.*.telemetry": "citywatch.telemetry.{{partition(8,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"' in out
    doc["sensors"][1]["id"] = "aq.002"
    (tmp_path / "sensors.yaml").write_text(yaml.safe_dump(doc))
    assert main(["check-config", "--config", str(tmp_path / "citywatch.yaml")]) == 2
    assert "'aq.002'" in capsys.readouterr().err


def test_a_failing_snapshot_is_counted_and_logged_and_the_engine_goes_on(tmp_path, nats_server, influxdb, db_name,
                                                                        monkeypatch):
    registry = registry_of(registry_doc(8))
    engine = Engine(_source_settings(tmp_path, nats_server, influxdb, db_name, "x"), registry, source=NatsSource)

    def broken(*args, **kwargs):
        raise RuntimeError("snapshot bug")

    monkeypatch.setattr(engine.consumer.states, "snapshot_arrays", broken)
    engine.start()
    device = Device(nats_server.mqtt_port, client_id="snap-dev")
    try:
        wait_for(lambda: engine.consumer.owned() == list(range(8)), 20, "x owning every partition")
        t0 = (time.time_ns() // 10**6) - 3_600_000
        device.publish_all([telemetry(s, t0, 50.0, 10.0) for s in registry.sensors])
        wait_for(lambda: engine.stats.snapshot().get("nats_snapshot_errors", 0) >= 1, 20, "a failed snapshot counted")
        device.publish_all([telemetry(s, t0 + 60_000, 51.0, 10.0) for s in registry.sensors])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 16, 20, "later readings stored")
        assert engine.running
    finally:
        device.close()
        engine.stop()


def test_devices_on_a_mosquitto_bridged_into_nats_reach_the_partitions(tmp_path, nats_server, influxdb, db_name):
    from citywatch.services import Mosquitto

    # nats-server's MQTT listener refuses Mosquitto's private bridge flag, and '.' in client ids or in
    # the bridge's notification topic (which carries the client id).
    bridge = "\n".join(["connection citywatch-nats", f"address 127.0.0.1:{nats_server.mqtt_port}",
                        "bridge_protocol_version mqttv311", "try_private false", "notifications false",
                        "remote_clientid citywatch-bridge", "cleansession false", "topic city/+/+/telemetry out 1"])
    broker = Mosquitto(tmp_path / "mosquitto", extra_config=bridge)
    broker.start()
    registry = registry_of(registry_doc(8))
    engine = Engine(_source_settings(tmp_path, nats_server, influxdb, db_name, "x"), registry, source=NatsSource)
    engine.start()
    device = Device(broker.port, client_id="bridged-dev")
    try:
        wait_for(lambda: engine.consumer.owned() == list(range(8)), 20, "x owning every partition")
        t0 = (time.time_ns() // 10**6) - 3_600_000
        device.publish_all([telemetry(s, t0 + k * 60_000, 50.0 + k, 10.0) for k in range(5) for s in registry.sensors])
        wait_for(lambda: count(influxdb, db_name, "air", "no2") == 40, 20, "bridged readings stored")
    finally:
        device.close()
        engine.stop()
        broker.stop()
