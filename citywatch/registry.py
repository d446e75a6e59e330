"""Sensor registry (`config/sensors/*.yaml`) and the dense series index the detectors work on.

A *series* is one (sensor, metric) pair. Detectors keep their state in NumPy arrays indexed by a
dense series id; `SeriesIndex` hands those ids out, and grows as sensors and metrics appear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from citywatch.config_types import ConfigError, Duration, StrictModel, format_validation_error, read_yaml
from citywatch.units import canonical_unit

Domain = Literal["air", "water", "traffic", "forest"]
DOMAINS: tuple[str, ...] = ("air", "water", "traffic", "forest")
SENSOR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MetricSpec(StrictModel):
    unit: str
    min: float | None = None
    max: float | None = None
    description: str | None = None

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        canon = canonical_unit(v)
        if canon is None:
            raise ValueError(f"unknown unit {v!r}")
        return canon

    @model_validator(mode="after")
    def _range(self) -> "MetricSpec":
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class Profile(StrictModel):
    domain: Domain
    interval: Duration
    metrics: dict[str, MetricSpec]


class SensorSource(StrictModel):
    """Which device publishes this sensor's readings in a device family's own format (issue: sources)."""

    family: str  # a source profile's family (see citywatch.ingest.sources), e.g. tasmota
    device: str  # the id as the device publishes it (topic segment, DevEUI, friendly name ...)


class Sensor(StrictModel):
    id: str
    domain: Domain
    area: str
    name: str | None = None
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    interval: Duration | None = None
    profile: str | None = None
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    road_class: Literal["main", "secondary", "side"] | None = None
    source: SensorSource | None = None
    auto_registered: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not SENSOR_ID_PATTERN.match(v):
            raise ValueError("an id is 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        return v


class RegistryFile(StrictModel):
    profiles: dict[str, Profile] = Field(default_factory=dict)
    sensors: list[Sensor]

    @model_validator(mode="after")
    def _resolve_profiles(self) -> "RegistryFile":
        seen: set[str] = set()
        sources: dict[tuple[str, str], str] = {}
        for i, s in enumerate(self.sensors):
            if s.id in seen:
                raise ValueError(f"sensors.{i}.id: duplicate sensor id {s.id!r}")
            seen.add(s.id)
            if s.source is not None:
                key = (s.source.family, s.source.device)
                if key in sources:
                    raise ValueError(f"sensors.{i}.source: device {key[1]!r} of {key[0]} is already sensor {sources[key]!r}")
                sources[key] = s.id
            if s.profile is not None:
                prof = self.profiles.get(s.profile)
                if prof is None:
                    raise ValueError(f"sensors.{i}.profile: unknown profile {s.profile!r}")
                if prof.domain != s.domain:
                    raise ValueError(f"sensors.{i}.profile: profile {s.profile!r} is for domain {prof.domain}")
                s.metrics = {**prof.metrics, **s.metrics}
                if s.interval is None:
                    s.interval = prof.interval
            if not s.metrics:
                raise ValueError(f"sensors.{i}.metrics: sensor {s.id!r} has no metrics (give metrics or a profile)")
            if s.interval is None:
                raise ValueError(f"sensors.{i}.interval: sensor {s.id!r} has no expected reporting interval")
        return self


@dataclass
class Registry:
    sensors: dict[str, Sensor]
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> "Registry":
        path = Path(path)
        raw = read_yaml(path)
        try:
            parsed = RegistryFile.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(format_validation_error(str(path), err)) from None
        return cls({s.id: s for s in parsed.sensors}, source=str(path))

    def get(self, sensor_id: str) -> Sensor | None:
        return self.sensors.get(sensor_id)

    def by_source(self, family: str, device: str) -> Sensor | None:
        """The sensor whose `source` names this device of this family."""
        index = self.__dict__.get("_by_source")
        if index is None or len(index) != sum(1 for s in self.sensors.values() if s.source):
            index = self.__dict__["_by_source"] = {(s.source.family, s.source.device): s
                                                    for s in self.sensors.values() if s.source}
        return index.get((family, device))

    def by_domain(self, domain: str | None = None) -> list[Sensor]:
        return [s for s in self.sensors.values() if domain is None or s.domain == domain]

    def auto_register(self, sensor_id: str, domain: str) -> Sensor:
        sensor = Sensor(id=sensor_id, domain=domain, area="unknown", lat=0.0, lon=0.0, interval=0.0,
                        metrics={}, auto_registered=True)
        self.sensors[sensor_id] = sensor
        return sensor


def remap_ids(saved: np.ndarray, index_of: dict[str, int]) -> tuple[list[int], list[int]]:
    """(positions in a snapshot's id list, positions now) for the ids still known."""
    pairs = [(i, index_of[s]) for i, s in enumerate(saved.tolist()) if s in index_of]
    return [a for a, _ in pairs], [b for _, b in pairs]


class KeyedSeries:
    """Snapshot keys of dense (sensor, metric) ids: what per-series state needs to survive a restart.

    Subclasses keep `_ids` ((sensor, metric) -> id), `sensor_ids` and `metrics`.
    """

    _ids: dict[tuple[str, str], int]
    sensor_ids: list[str]
    metrics: list[str]

    def snapshot_keys(self) -> dict[str, np.ndarray]:
        """The (sensor, metric) of every series id, stored beside per-series state in snapshots."""
        return {"__sensor": np.asarray(self.sensor_ids, dtype=str), "__metric": np.asarray(self.metrics, dtype=str)}

    def remap(self, snap: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(rows of a snapshot, series ids now) for the snapshot's series this index still knows."""
        src, dst = [], []
        for i, key in enumerate(zip(snap["__sensor"].tolist(), snap["__metric"].tolist())):
            sid = self._ids.get(key)
            if sid is not None:
                src.append(i)
                dst.append(sid)
        return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)


@dataclass
class SeriesIndex(KeyedSeries):
    """Dense ids for (sensor, metric) series, with per-series attributes as NumPy arrays."""

    registry: Registry
    _ids: dict[tuple[str, str], int] = field(default_factory=dict)
    sensor_ids: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    areas: list[str] = field(default_factory=list)
    _min: list[float] = field(default_factory=list)
    _max: list[float] = field(default_factory=list)
    _arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def get(self, sensor_id: str, metric: str) -> int | None:
        return self._ids.get((sensor_id, metric))

    def add(self, sensor: Sensor, metric: str) -> int:
        key = (sensor.id, metric)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        sid = len(self.sensor_ids)
        self._ids[key] = sid
        spec = sensor.metrics.get(metric)
        self.sensor_ids.append(sensor.id)
        self.metrics.append(metric)
        self.domains.append(sensor.domain)
        self.areas.append(sensor.area)
        self._min.append(np.nan if spec is None or spec.min is None else spec.min)
        self._max.append(np.nan if spec is None or spec.max is None else spec.max)
        self._arrays = None
        return sid

    def add_registry(self) -> None:
        for sensor in self.registry.sensors.values():
            for metric in sensor.metrics:
                self.add(sensor, metric)

    def _array(self, name: str) -> np.ndarray:
        if self._arrays is None:
            self._arrays = {
                "min": np.asarray(self._min, dtype=np.float64),
                "max": np.asarray(self._max, dtype=np.float64),
                "metric": np.asarray(self.metrics, dtype=object),
                "domain": np.asarray(self.domains, dtype=object),
            }
        return self._arrays[name]

    @property
    def physical_min(self) -> np.ndarray:
        return self._array("min")

    @property
    def physical_max(self) -> np.ndarray:
        return self._array("max")

    @property
    def metric_array(self) -> np.ndarray:
        return self._array("metric")

    @property
    def domain_array(self) -> np.ndarray:
        return self._array("domain")

    def keys(self) -> list[tuple[str, str]]:
        return list(zip(self.sensor_ids, self.metrics))

