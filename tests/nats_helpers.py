"""Helpers for the NATS JetStream tests: a registry spread over the partitions, instance configs,
synchronous looks at the key-value buckets, and a single-instance reference evaluation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import yaml

from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.handover import PartitionStateStore, evaluator_arrays, read_blob
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Validator
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.stats import Stats
from pipeline_helpers import NO2_RULE

AIR_PROFILE = {"domain": "air", "interval": "60s", "metrics": {
    "pm25": {"unit": "ug/m3", "min": 0, "max": 1000},
    "no2": {"unit": "ug/m3", "min": 0, "max": 2000},
}}


def registry_doc(n_sensors: int) -> dict:
    return {"profiles": {"air": AIR_PROFILE}, "sensors": [
        {"id": f"aq-{i:03d}", "domain": "air", "area": f"area-{i % 4}", "lat": 10.9 + i * 0.01, "lon": 106.8 + (i % 5) * 0.01,
         "profile": "air"} for i in range(1, n_sensors + 1)]}


def registry_of(doc: dict) -> Registry:
    parsed = RegistryFile.model_validate(doc)
    return Registry({s.id: s for s in parsed.sensors})


# Cross-sensor comparisons (spatial, drift against neighbours) and the per-instance device clock of
# no_data depend on which partitions an instance happens to own: off for the equality check.
DETECTORS = {"thresholds": [NO2_RULE.model_dump(by_alias=True)], "spatial": None, "drift": None, "no_data": None,
             "allowed_lateness": 0}


def nats_section(url: str, instance: str, **overrides) -> dict:
    section = {"url": url, "instance_id": instance, "partitions": 8, "lease_ttl": "3s", "snapshot_interval": "1s",
               "max_failover_time": "60s", "stream_max_age": "1h"}
    section.update(overrides)
    return section


def settings_for(nats_url: str, mqtt_url: str, influx_url: str, db: str, data_dir: Path, instance: str,
                 **nats_overrides) -> dict:
    return {
        "data_dir": str(data_dir),
        "mqtt": {"url": mqtt_url, "client_id": f"{db}-{instance}"},
        "influxdb": {"url": influx_url, "database": db},
        "batching": {"max_age": "100ms", "retry_backoff": "50ms"},
        "spool": {"replay_interval": "200ms", "fsync": False},
        "source": "nats",
        "nats": nats_section(nats_url, instance, **nats_overrides),
        "detectors": dict(DETECTORS),
        "indices": {"water": False},  # no water station in these registries (the stage cannot be built without one)
    }


def write_instance_config(tmp_path: Path, doc: dict, raw: dict, instance: str) -> str:
    reg = tmp_path / "sensors.yaml"
    if not reg.exists():
        reg.write_text(yaml.safe_dump(doc, allow_unicode=True))
    cfg = {**raw, "registry": str(reg)}
    path = tmp_path / f"{instance}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def kv_snapshot(url: str, bucket: str) -> dict[str, bytes]:
    """Every key of a bucket with its value (a synchronous look from the test)."""
    import nats
    from nats.js.errors import NoKeysError

    async def go():
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            out = {}
            for k in keys:
                try:
                    out[k] = (await kv.get(k)).value or b""
                except Exception:  # noqa: BLE001 - expired meanwhile
                    pass
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def partition_blobs(url: str, partitions: int) -> dict[int, bytes]:
    """Each partition's saved state (reassembled from its chunks), for the partitions that have one."""
    import nats

    async def go():
        nc = await nats.connect(url)
        try:
            store = PartitionStateStore(await nc.jetstream().key_value("citywatch_state"))
            return {p: blob for p in range(partitions) if (blob := await store.read(p))}
        finally:
            await nc.close()

    return asyncio.run(go())


def saved_seqs(url: str) -> dict[int, int]:
    """The stream sequence each partition's saved state covers (from the manifests)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    async def go():
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value("citywatch_state")
            out = {}
            for p in range(8):
                try:
                    manifest = (await kv.get(f"partition.{p}")).value
                except KeyNotFoundError:
                    continue
                if manifest:
                    out[p] = orjson.loads(manifest)["seq"]
            return out
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except Exception:  # noqa: BLE001 - the bucket does not exist yet
        return {}


def lease_owners(url: str) -> dict[int, str]:
    try:
        entries = kv_snapshot(url, "citywatch_leases")
    except Exception:  # noqa: BLE001 - the bucket does not exist yet
        return {}
    return {int(k.split(".")[1]): v.decode() for k, v in entries.items() if k.startswith("lease.")}


def merged_partition_states(url: str, settings: Settings, registry: Registry) -> tuple[dict[str, np.ndarray], dict[int, int]]:
    """The union of every partition's saved state, restored into one fresh evaluator; and each partition's sequence."""
    series = SeriesIndex(registry)
    series.add_registry()
    evaluator = Evaluator(settings, series)
    seqs = {}
    for p, blob in partition_blobs(url, 8).items():
        seq, arrays = read_blob(blob)
        seqs[p] = seq
        groups: dict[str, dict[str, np.ndarray]] = {}
        for k, v in arrays.items():
            group, _, name = k.partition("/")
            if group != "__meta":
                groups.setdefault(group, {})[name] = v
        for name, part in evaluator.stateful().items():
            if name in groups:
                part.restore(groups[name])
    return evaluator_arrays(evaluator), seqs


def reference_state(settings: Settings, registry: Registry, messages: list[tuple[str, bytes]],
                    batch: int = 50) -> dict[str, np.ndarray]:
    """What one plain evaluator computes over the same messages, in publication order."""
    series = SeriesIndex(registry)
    series.add_registry()
    evaluator = Evaluator(settings, series)
    validator = Validator(registry, series, settings.validation, TopicPattern(settings.mqtt.topic), Stats())
    now = time.time_ns()
    for i in range(0, len(messages), batch):
        readings, rejections = validator.validate([(t, p, now) for t, p in messages[i:i + batch]])
        assert not rejections, rejections[:3]
        evaluator.ingest(readings.sorted_by_series_time(), now)
    return evaluator_arrays(evaluator)


def telemetry(sensor: str, ts_ms: int, no2: float, pm25: float) -> tuple[str, bytes]:
    return f"city/air/{sensor}/telemetry", orjson.dumps({"ts": ts_ms, "no2": no2, "pm25": pm25})


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    if np.issubdtype(a.dtype, np.floating):
        return not np.allclose(a, b, rtol=1e-12, atol=0, equal_nan=True)
    return not np.array_equal(a, b)


def batch_dependent_keys(settings: Settings, registry: Registry, messages: list[tuple[str, bytes]],
                         reference: dict[str, np.ndarray]) -> set[str]:
    """State arrays that one evaluator computes differently when only the micro-batch sizes change.

    Some detectors decide with the state as it stood at the start of a batch (e.g. `stuck`'s flat-line
    history), so a backlog evaluated in one batch and the same readings evaluated as they come end in
    different states: no hand-over can make those equal to one particular single-instance run.
    """
    keys: set[str] = set()
    for size in (500, len(messages)):
        other = reference_state(settings, registry, messages, batch=size)
        keys |= {k for k, v in reference.items() if _differs(other[k], v)}
    return keys


def assert_same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[int, float]:
    """Every array of the reference is in `got` with equal values; returns (arrays compared, largest
    relative float difference).

    Integers, booleans and strings (levels, counts, timestamps, keys) must be identical. Floats may
    differ in the last bits only (relative 1e-12): the detectors' recurrences are evaluated in closed
    form over a micro-batch, so where the batch boundaries fall changes the rounding (one instance fed
    the same stream in other batches differs the same way). NaN equals NaN.
    """
    missing = sorted(set(want) - set(got))
    assert not missing, f"parts missing from the partition states: {missing[:10]}"
    worst = 0.0
    for key, ref in want.items():
        have = got[key]
        msg = f"state {key} differs from the single evaluator's"
        if np.issubdtype(ref.dtype, np.floating):
            np.testing.assert_allclose(have, ref, rtol=1e-12, atol=0, equal_nan=True, err_msg=msg)
            both = np.isfinite(ref) & np.isfinite(have) & (ref != 0)
            if both.any():
                worst = max(worst, float(np.max(np.abs(have[both] - ref[both]) / np.abs(ref[both]))))
        else:
            np.testing.assert_array_equal(have, ref, err_msg=msg)
    return len(want), worst
