"""Per-partition detector state: what one instance hands to the next when a partition changes owner.

An instance evaluates all the partitions it owns with one `Evaluator`. The state of one partition
is cut out of it generically: the evaluator's full snapshot is restored into a *scratch* evaluator
whose series index holds only that partition's series (every stateful part's `restore` keeps the
series its index knows and drops the rest, whatever the part's layout: per-series detector arrays,
per-station index state, per-sensor device clocks), and the scratch evaluator's snapshot is the
partition's state. Restoring a partition's state into a running evaluator touches only the series
it holds, so it merges with the partitions the instance already owns.

A blob is a compressed `.npz` holding `<part>/<array>` entries (as the engine's state file) plus
`__meta/seq` (the last stream sequence of this partition whose readings the state includes),
`__meta/partition` and `__meta/partitions`.

    >>> from importlib import resources
    >>> from citywatch.config import Settings
    >>> from citywatch.registry import Registry, SeriesIndex
    >>> from citywatch.evaluate import Evaluator
    >>> registry = Registry.load(str(resources.files("citywatch.sample_config") / "sensors" / "bienhoa.yaml"))
    >>> settings = Settings(detectors={"state_file": None})
    >>> series = SeriesIndex(registry); series.add_registry()
    >>> ev = Evaluator(settings, series)
    >>> states = PartitionStates(settings, registry, ev, partitions=8)
    >>> blob = states.snapshot(3, seq=41)
    >>> read_blob(blob)[0], sorted({s for s in read_blob(blob)[1]["__watermarks/__sensor"].tolist()}) == \\
    ...     sorted(s for s in registry.sensors if partition_of(s, 8) == 3)
    (41, True)

What does not hand over: cross-sensor comparisons (`spatial`, the neighbour side of `drift`) see
only neighbours in partitions the same instance owns, and pair baselines with a neighbour in another
partition start afresh on a new owner; the device-silence clock of `no_data` is per instance. The
readings held by `detectors.allowed_lateness` when an owner dies are stored but not evaluated (as
for any crash of the engine).
"""

from __future__ import annotations

import io
import uuid

import numpy as np
import orjson

from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.partitions import partition_of  # noqa: F401 (also used by the doctest)
from citywatch.registry import Registry, SeriesIndex

__all__ = ["PartitionStates", "PartitionStateStore", "StateFenced", "encode_blob", "read_blob", "evaluator_arrays"]


def evaluator_arrays(evaluator: Evaluator) -> dict[str, np.ndarray]:
    """The evaluator's whole state as `<part>/<array>` entries (the engine's state-file layout)."""
    out: dict[str, np.ndarray] = {}
    for name, part in evaluator.stateful().items():
        out.update({f"{name}/{k}": np.array(v, copy=True) for k, v in part.snapshot().items()})
    return out


def _groups(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group != "__meta":
            groups.setdefault(group, {})[name] = value
    return groups


def encode_blob(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed `.npz` of the arrays (zlib releases the interpreter lock while it compresses)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_blob(blob: bytes) -> tuple[int, dict[str, np.ndarray]]:
    """(stream sequence covered, `<part>/<array>` entries) of a partition state blob."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return int(arrays["__meta/seq"][0]), arrays


class PartitionStates:
    """Snapshots and restores of single partitions of a running evaluator (one thread: the pipeline's)."""

    def __init__(self, settings: Settings, registry: Registry, evaluator: Evaluator, partitions: int) -> None:
        self.settings = settings
        self.registry = registry
        self.evaluator = evaluator
        self.partitions = partitions
        self._scratch: dict[int, tuple[int, Evaluator]] = {}  # partition -> (series count it was built for, evaluator)

    def _scratch_for(self, partition: int) -> Evaluator:
        series = self.evaluator.series
        cached = self._scratch.get(partition)
        if cached is not None and cached[0] == len(series):
            return cached[1]
        # The partition's series as the running index knows them (auto-registered sensors included).
        sensors = {s for s in set(series.sensor_ids) if partition_of(s, self.partitions) == partition}
        sub = Registry({s: self.registry.sensors[s] for s in sensors if s in self.registry.sensors})
        index = SeriesIndex(sub)
        for sensor_id, metric in series.keys():
            if sensor_id in sub.sensors:
                index.add(sub.sensors[sensor_id], metric)
        settings = self.settings
        if settings.indices.water and not any(s.domain == "water" for s in sub.sensors.values()):
            # The water-quality stage cannot be built without a water station (and holds nothing then).
            settings = settings.model_copy(update={"indices": settings.indices.model_copy(update={"water": False})})
        scratch = Evaluator(settings, index)
        self._scratch[partition] = (len(series), scratch)
        return scratch

    def snapshot(self, partition: int, seq: int, full: dict[str, dict[str, np.ndarray]] | None = None) -> bytes:
        """The partition's state as a blob; `full` (from `full_state()`) saves work over several partitions."""
        return encode_blob(self.snapshot_arrays(partition, seq, full))

    def snapshot_arrays(self, partition: int, seq: int,
                        full: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
        """The partition's state as arrays (copies): `encode_blob` them on another thread, it is most of the cost."""
        if full is None:
            full = self.full_state()
        scratch = self._scratch_for(partition)
        for name, part in scratch.stateful().items():
            if name in full:
                part.restore(full[name])
        arrays = evaluator_arrays(scratch)
        arrays["__meta/seq"] = np.asarray([seq], np.int64)
        arrays["__meta/partition"] = np.asarray([partition], np.int64)
        arrays["__meta/partitions"] = np.asarray([self.partitions], np.int64)
        return arrays

    def full_state(self) -> dict[str, dict[str, np.ndarray]]:
        return _groups(evaluator_arrays(self.evaluator))

    def restore(self, blob: bytes) -> int:
        """Merge a partition's state into the running evaluator; returns the stream sequence it covers."""
        seq, arrays = read_blob(blob)
        partitions = int(arrays["__meta/partitions"][0])
        if partitions != self.partitions:
            raise ValueError(f"a state saved with {partitions} partitions cannot be restored with {self.partitions}")
        groups = _groups(arrays)
        for name, part in self.evaluator.stateful().items():
            if name in groups:
                part.restore(groups[name])
        return seq


class StateFenced(Exception):
    """The partition's state key was rewritten by another owner since we last wrote it."""


class PartitionStateStore:
    """Partition states in a NATS key-value bucket, in chunks (asyncio; nats-py `KeyValue`).

    A state of a busy partition outgrows one NATS message (1 MB by default: about 17 kB per series
    after a few days, compressed), so it is stored as chunks `chunk.<p>.<token>.<i>` of at most
    `chunk_bytes`, and `partition.<p>` holds a small manifest (sequence, token, chunk count, size)
    written with compare-and-set: the manifest's revision is the fencing token of the lease protocol
    (`citywatch.partitions`). A write puts the new chunks first, then the manifest; only after the
    manifest is in place are the previous chunks removed, so a reader that fenced the manifest always
    finds the chunks it names. An empty manifest means "no state yet".
    """

    def __init__(self, kv, chunk_bytes: int = 512 * 1024) -> None:
        self.kv = kv
        self.chunk_bytes = chunk_bytes

    async def fence(self, partition: int, owner: str) -> tuple[int, bytes | None]:
        """Take the state key over (rewrite its manifest): (revision to write against, the state or None)."""
        from nats.js.errors import KeyNotFoundError

        key = f"partition.{partition}"
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return await self.kv.create(key, b""), None
        manifest = entry.value or b""
        rev = await self.kv.update(key, manifest, last=entry.revision)
        return rev, (await self._read(partition, manifest) if manifest else None)

    async def read(self, partition: int) -> bytes | None:
        from nats.js.errors import KeyNotFoundError

        try:
            manifest = (await self.kv.get(f"partition.{partition}")).value or b""
        except KeyNotFoundError:
            return None
        return await self._read(partition, manifest) if manifest else None

    async def _read(self, partition: int, manifest: bytes) -> bytes:
        meta = orjson.loads(manifest)
        parts = [(await self.kv.get(f"chunk.{partition}.{meta['token']}.{i}")).value for i in range(meta["chunks"])]
        blob = b"".join(parts)
        if len(blob) != meta["size"]:
            raise ValueError(f"partition {partition}: state has {len(blob)} bytes, its manifest says {meta['size']}")
        return blob

    async def write(self, partition: int, owner: str, blob: bytes, seq: int, last: int) -> int:
        """Store a state if the manifest is still at revision `last`; returns the new revision."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = f"partition.{partition}"
        token = f"{owner}-{uuid.uuid4().hex[:12]}"  # unique even across restarts of the same instance
        chunks = [blob[i:i + self.chunk_bytes] for i in range(0, len(blob), self.chunk_bytes)] or [b""]
        for i, chunk in enumerate(chunks):
            await self.kv.put(f"chunk.{partition}.{token}.{i}", chunk)
        try:
            previous = (await self.kv.get(key)).value or b""
        except KeyNotFoundError:
            previous = b""
        manifest = orjson.dumps({"seq": seq, "token": token, "chunks": len(chunks), "size": len(blob), "owner": owner})
        try:
            rev = await self.kv.update(key, manifest, last=last)
        except KeyWrongLastSequenceError:
            await self._remove(partition, token, len(chunks))
            raise StateFenced(partition) from None
        if previous:
            meta = orjson.loads(previous)
            if meta["token"] != token:
                await self._remove(partition, meta["token"], meta["chunks"])
        return rev

    async def _remove(self, partition: int, token: str, chunks: int) -> None:
        for i in range(chunks):
            try:
                await self.kv.purge(f"chunk.{partition}.{token}.{i}")
            except Exception:  # noqa: BLE001 - a leftover chunk only costs space
                pass
