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

    >>> from citywatch.config import Settings
    >>> from citywatch.registry import Registry, SeriesIndex
    >>> from citywatch.evaluate import Evaluator
    >>> registry = Registry.load(Settings().resolve("config/sensors/bienhoa.yaml"))
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

import numpy as np

from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.partitions import partition_of  # noqa: F401 (also used by the doctest)
from citywatch.registry import Registry, SeriesIndex

__all__ = ["PartitionStates", "read_blob", "evaluator_arrays"]


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
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

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
