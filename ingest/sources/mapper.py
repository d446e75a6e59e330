"""The mapping layer: messages of configured device families -> registry readings.

`SourceMapper.map(topic, payload, arrival_ns)` tries the topic rules of every profile (in order);
``None`` means no profile claims the topic (the engine then dead-letters it as ``topic_mismatch``).
Otherwise it returns `MappedRecord`s, one per device record, each already resolved to a registry
sensor (or ``sensor=None``: an unknown device, dead-lettered as ``unknown_device``) with readings in
the validator's form ``(ts_ns, metric, raw value, unit, flags)``. The validator then applies the
same checks as for the house format: registry metric, number, unit conversion, time window.

What the mapper does, in order, for each record:

1. decode: ``json`` (selectors over the document; ``records`` splits it), ``text`` (one value per
   message, named by the topic), ``sparkplug`` (protobuf, alias cache, sequence checks) or
   ``frigate`` (distinct vehicle events per camera and zone, counted per interval);
2. name: the metric table (`SourceProfile.metrics`) turns source keys into registry metrics; keys
   not in it are ignored and counted (``source_unmapped_keys``), unless ``keep_unmapped``;
3. value: numbers pass; numeric strings become numbers; ``"nan"``, ``null``, ``""`` and the like
   are *missing*: nothing is stored (counted ``source_missing_values``), never a 0;
4. unit: fixed per key, read from the payload (``unit_from``, e.g. Tasmota's ``TempUnit``) or the
   payload's own; the validator converts to the registry unit (F -> Cel, Pa -> hPa, mV -> V, % -> 1);
5. counters: keys marked ``counter`` become increases (`citywatch.ingest.sources.counters`);
6. time: the record's timestamp by `TimestampRule` (priority fields, formats, zone), or arrival time
   when missing or implausible (flagged, counted ``source_ts_<missing|unreadable|implausible>``);
7. device: topic captures or a payload field, then the profile's ``aliases``, then the registry's
   ``source: {family, device}`` entries;
8. health: radio and battery fields (rssi, snr, battery, linkquality ...), converted to their unit,
   the best of several gateways (a metric-table entry ``health.<field>`` sends a value there too,
   e.g. ESPHome's ``wifi_signal`` entity); and availability (LWT, status, DEATH) as online/offline.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import orjson

from citywatch.batch import FLAG_TS_FROM_ARRIVAL
from citywatch.config_types import ConfigError, read_yaml
from citywatch.ingest.sources.counters import CounterDeltas
from citywatch.ingest.sources.profile import HEALTH_UNITS, HealthRule, MetricRule, SourceProfile, TopicRule
from citywatch.ingest.sources.records import DeviceRecord
from citywatch.ingest.sources.selectors import Selector
from citywatch.ingest.sources.timestamps import SourceClock
from citywatch.ingest.sources.topic_filter import TopicFilter
from citywatch.registry import Registry, Sensor
from citywatch.stats import Stats
from citywatch.units import conversion

__all__ = ["SourceMapper", "MappedRecord", "load_profiles", "shipped_profile_names", "configuration_problems"]

_ARRIVAL = int(FLAG_TS_FROM_ARRIVAL)
MISSING_MARKERS = frozenset({"", "nan", "null", "none", "n/a", "na", "-", "--", "unavailable", "unknown", "undefined"})


@dataclass(slots=True)
class MappedRecord:
    family: str
    device: str
    sensor: Sensor | None
    readings: list[tuple[int, str, object, str | None, int]] = field(default_factory=list)
    health: dict[str, float] = field(default_factory=dict)
    available: bool | None = None
    ts_ns: int = 0
    errors: list[str] = field(default_factory=list)


def shipped_profile_names() -> list[str]:
    folder = resources.files("citywatch.sample_config") / "sources"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profiles(entries: Iterable[str | SourceProfile | dict], base_dir: Path | None = None) -> list[SourceProfile]:
    """Profiles from shipped names (``tasmota``), YAML paths (relative to `base_dir`) or inline ones."""
    out: list[SourceProfile] = []
    for entry in entries:
        if isinstance(entry, SourceProfile):
            out.append(entry)
            continue
        if isinstance(entry, dict):
            out.append(SourceProfile.model_validate(entry))
            continue
        if entry.endswith((".yaml", ".yml")):
            path = Path(entry)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
        else:
            path = Path(str(resources.files("citywatch.sample_config") / "sources" / f"{entry}.yaml"))
            if not path.exists():
                raise ConfigError(f"sources.profiles: no shipped profile {entry!r} "
                                  f"(shipped: {', '.join(shipped_profile_names())})")
        try:
            out.append(SourceProfile.model_validate(read_yaml(path)))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return out


def configuration_problems(profiles: list[SourceProfile], registry: Registry) -> list[str]:
    """What would silently lose a device's data: checked by `citywatch check-config` and at start-up."""
    problems: list[str] = []
    families = [p.family for p in profiles]
    for family in sorted({f for f in families if families.count(f) > 1}):
        problems.append(f"sources: family {family!r} has {families.count(family)} profiles; only the first "
                        "one's topics can match")
    for p in profiles:
        for device, sensor_id in p.aliases.items():
            if registry.get(sensor_id) is None:
                problems.append(f"sources: {p.family} alias {device!r} -> {sensor_id!r}: no such sensor in the registry")
    for s in registry.sensors.values():
        if s.source is not None and s.source.family not in families:
            problems.append(f"registry: sensor {s.id!r} names a {s.source.family} device, but no source profile of "
                            f"that family is configured (sources.profiles)")
    return problems


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(bytes(payload).decode("utf-8"))  # NaN literals: the stdlib parser reads them


def _number(raw: object) -> float | None:
    t = type(raw)
    if t is float:
        return raw if math.isfinite(raw) else None
    if t is int:
        return float(raw)
    if t is str:
        try:
            v = float(raw.strip())
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


class _Profile:
    """A profile compiled once: filters, selectors, clock, counters, its decoders."""

    def __init__(self, profile: SourceProfile) -> None:
        self.p = profile
        self.rules = [(TopicFilter(r.filter), r) for r in profile.topics]
        self.state_at = {id(r): Selector(r.select) for r in profile.topics if r.select}  # availability in JSON
        self.readings = [(Selector(r.select) if r.select else None, r) for r in profile.readings]
        self.pivots = {id(r): (Selector(r.pivot.select), r.pivot) for r in profile.readings if r.pivot}
        self.records = Selector(profile.records) if profile.records else None
        self.device_from = Selector(profile.device_from) if profile.device_from else None
        self.health = [(name, Selector(r.select), r) for name, r in profile.health.items()]
        self.unit_from = {k: Selector(r.unit_from) for k, r in profile.metrics.items() if r.unit_from}
        self.clock = SourceClock(profile.timestamp)
        self.ignore_devices = re.compile(profile.ignore_devices) if profile.ignore_devices else None
        self.counters = CounterDeltas(profile.counter_max_gap)
        # Stateful decoders are built now, so that bad options fail at start-up, not on a first message.
        decoders = {r.decoder for r in profile.topics}
        self.sparkplug = self.frigate = None
        if "sparkplug" in decoders:
            from citywatch.ingest.sources.sparkplug import SparkplugDecoder

            self.sparkplug = SparkplugDecoder(**profile.options)
        if "frigate" in decoders:
            from citywatch.ingest.sources.frigate import FrigateVehicleCounter

            self.frigate = FrigateVehicleCounter(**profile.options)


class SourceMapper:
    def __init__(self, profiles: list[SourceProfile], registry: Registry, stats: Stats | None = None) -> None:
        self.registry = registry
        self.stats = stats or Stats()
        self.profiles = [_Profile(p) for p in profiles]

    @property
    def subscriptions(self) -> list[str]:
        subs: list[str] = []
        for prof in self.profiles:
            for flt, _ in prof.rules:
                if flt.subscription not in subs:
                    subs.append(flt.subscription)
        return subs

    # -- entry points ------------------------------------------------------------------------------
    def map(self, topic: str, payload: bytes, arrival_ns: int) -> list[MappedRecord] | None:
        for prof in self.profiles:
            for flt, rule in prof.rules:
                caps = flt.match(topic)
                if caps is not None:
                    self.stats.inc(f"source_messages_{prof.p.family}")
                    if rule.kind == "ignore":
                        self.stats.inc("source_ignored")
                        return []
                    return self._map(prof, rule, caps, topic, payload, arrival_ns)
        return None

    def tick(self, now_ns: int) -> list[MappedRecord]:
        """Records due by the clock alone (Frigate's closed count intervals)."""
        out: list[MappedRecord] = []
        for prof in self.profiles:
            if prof.frigate is not None:
                out.extend(self._finish(prof, r, None, now_ns) for r in prof.frigate.tick(now_ns))
                self._take_frigate_stats(prof)
        return out

    def _take_frigate_stats(self, prof: _Profile) -> None:
        """The counter's own events (ids forgotten or evicted, zeros withheld) into the engine's counters."""
        for name, n in prof.frigate.stats.items():
            self.stats.inc(name if name.startswith("frigate_") else f"frigate_{name}", n)
        prof.frigate.stats.clear()

    def commands(self) -> list[tuple[str, bytes]]:
        """Messages to publish back to devices (Sparkplug rebirth requests)."""
        out: list[tuple[str, bytes]] = []
        for prof in self.profiles:
            if prof.sparkplug is not None:
                out.extend(prof.sparkplug.rebirth_requests())
        return out

    # -- state across restarts ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Counter baselines and Frigate's open intervals, as one JSON string (the engine's state file)."""
        state = {prof.p.family: {"counters": prof.counters.snapshot(),
                                 "frigate": prof.frigate.snapshot() if prof.frigate is not None else None}
                 for prof in self.profiles}
        return {"json": np.asarray([orjson.dumps(state).decode()])}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        state = orjson.loads(str(snap["json"][0]))
        for prof in self.profiles:
            part = state.get(prof.p.family)
            if part is None:
                continue
            prof.counters.restore(part["counters"])
            if prof.frigate is not None and part.get("frigate"):
                prof.frigate.restore(part["frigate"])

    # -- decoding ----------------------------------------------------------------------------------
    def _map(self, prof: _Profile, rule: TopicRule, caps: dict[str, str], topic: str, payload: bytes,
             arrival_ns: int) -> list[MappedRecord]:
        if rule.decoder == "sparkplug":
            return [self._finish(prof, r, None, arrival_ns) for r in prof.sparkplug.decode(topic, payload, arrival_ns)]
        if rule.decoder == "frigate":
            records = prof.frigate.feed(topic, payload, arrival_ns)
            self._take_frigate_stats(prof)
            return [self._finish(prof, r, None, arrival_ns) for r in records]
        device = (rule.device or prof.p.device).format_map(_Caps(caps))
        if rule.decoder == "text" or rule.kind == "availability":
            try:
                text = bytes(payload).decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                return [self._finish(prof, DeviceRecord(device, errors=[f"malformed_text: not UTF-8 ({exc.reason})"]),
                                     None, arrival_ns)]
            if rule.kind == "availability":
                return [self._finish(prof, self._availability(rule, prof.state_at.get(id(rule)), device, text),
                                     None, arrival_ns)]
            name = (rule.name or "value").format_map(_Caps(caps))
            return [self._finish(prof, DeviceRecord(device, readings=[(None, name, text, None)]), None, arrival_ns)]
        try:
            doc = _loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return [self._finish(prof, DeviceRecord(device, errors=[f"malformed_json: {exc}"]), None, arrival_ns)]
        if prof.device_from is not None:
            found = prof.device_from.first(doc)
            if isinstance(found, (str, int)) and not isinstance(found, bool) and str(found):
                device = str(found)
        records = prof.records.values(doc) if prof.records is not None else [doc]
        out: list[MappedRecord] = []
        for rec in records:
            dr = DeviceRecord(device)
            if type(rec) is not dict:
                dr.errors.append(f"bad_structure: expected a JSON object, got {type(rec).__name__}")
                out.append(self._finish(prof, dr, None, arrival_ns))
                continue
            dr.ts_ns, from_arrival = prof.clock.resolve(rec, doc, arrival_ns)
            if rule.kind == "readings":
                dr.readings = [(None, name, raw, None) for name, raw in self._source_values(prof, rec, caps)]
                if not dr.readings:
                    dr.errors.append("no_readings: the message holds no values under the profile's selectors")
            dr.health = self._health(prof, rec, doc)
            out.append(self._finish(prof, dr, (rec, doc, from_arrival), arrival_ns))
        return out

    @staticmethod
    def _availability(rule: TopicRule, state_at: Selector | None, device: str, text: str) -> DeviceRecord:
        state: object = text
        if state_at is not None:
            try:
                state = state_at.first(orjson.loads(text), text)
            except orjson.JSONDecodeError:
                state = text  # Zigbee2MQTT's legacy plain "online" beside the JSON {"state": "online"}
        if state in rule.online:
            return DeviceRecord(device, available=True)
        if state in rule.offline:
            return DeviceRecord(device, available=False)
        return DeviceRecord(device, errors=[f"bad_availability: {str(state)[:80]!r} is neither "
                                            f"{rule.online[0]!r} nor {rule.offline[0]!r}"])

    def _source_values(self, prof: _Profile, rec: dict, caps: dict[str, str]) -> list[tuple[str, object]]:
        values: list[tuple[str, object]] = []
        for sel, rule in prof.readings:
            if sel is not None:
                for value, key, more in sel.find(rec):
                    if type(value) in (dict, list) or key is None:
                        continue  # an object on the way to the leaves, not a reading
                    name = rule.name.format_map(_Caps({**caps, **more, "key": key})) if rule.name else key
                    values.append((name, value))
            else:
                psel, pivot = prof.pivots[id(rule)]
                found = psel.values(rec)
                if len(found) == 1 and type(found[0]) is list:  # the list itself was selected: its elements
                    found = found[0]
                for el in found:
                    if type(el) is dict and isinstance(el.get(pivot.key), str):
                        values.append((el[pivot.key], el.get(pivot.value)))
        return values

    def _health(self, prof: _Profile, rec: dict, doc: object) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, sel, rule in prof.health:
            vals = [v for v in (_number(x) for x in sel.values(rec) or sel.values(doc)) if v is not None]
            if not vals:
                continue
            v = {"max": max, "min": min, "first": lambda xs: xs[0], "mean": lambda xs: sum(xs) / len(xs)}[rule.reduce](vals)
            self._health_value(out, name, v, rule.unit)
        return out

    @staticmethod
    def _health_value(out: dict[str, float], name: str, raw: object, unit: str | None) -> None:
        """A health field in its own unit (battery_voltage in V, battery in %); unusable values are skipped."""
        v = _number(raw)
        if v is None:
            return
        target = HEALTH_UNITS.get(name)
        if unit and target and unit != target:
            conv = conversion(unit, target)
            if conv is None:
                return
            v = v * conv[0] + conv[1]
        out[name] = float(v)

    # -- from source terms to registry terms ---------------------------------------------------------
    def _finish(self, prof: _Profile, dr: DeviceRecord, ctx: tuple | None, arrival_ns: int) -> MappedRecord:
        family = prof.p.family
        sensor_id = prof.p.aliases.get(dr.device)
        sensor = self.registry.get(sensor_id) if sensor_id else self.registry.by_source(family, dr.device)
        rec_ts, rec_from_arrival = (dr.ts_ns, ctx[2]) if ctx else (None, False)
        if rec_ts is None:
            rec_ts, rec_from_arrival = (prof.clock.check(dr.ts_ns, arrival_ns) if dr.ts_ns is not None
                                        else (arrival_ns, True))
        out = MappedRecord(family, dr.device, sensor, health=dr.health, available=dr.available, ts_ns=rec_ts,
                           errors=list(dr.errors))
        if sensor is None and (prof.p.unknown_device == "ignore" or
                               (prof.ignore_devices is not None and prof.ignore_devices.fullmatch(dr.device))):
            self.stats.inc("source_unknown_devices_ignored")
            out.health, out.available = {}, None  # the decoder's errors still count: they are not about the device
            return out
        metrics = prof.p.metrics
        for ts, name, raw, unit in dr.readings:
            rule = metrics.get(name)
            if rule is None:
                if not prof.p.keep_unmapped:
                    self.stats.inc("source_unmapped_keys")
                    continue
                rule = MetricRule(metric=name)
            if raw is None or (type(raw) is str and raw.strip().lower() in MISSING_MARKERS) or (
                    type(raw) is float and math.isnan(raw)):
                self.stats.inc("source_missing_values")
                continue
            if type(raw) is str:
                number = _number(raw)
                if number is not None:
                    raw = number
            if rule.metric.startswith("health."):  # e.g. ESPHome's wifi_signal entity: sensor health
                self._health_value(out.health, rule.metric[7:], raw, rule.unit)
                continue
            if ts is None:
                ts, flags = rec_ts, (_ARRIVAL if rec_from_arrival else 0)
            else:
                ts, from_arrival = prof.clock.check(ts, arrival_ns)
                flags = _ARRIVAL if from_arrival else 0
            unit = self._unit(prof, name, rule, ctx, unit)
            if rule.counter and type(raw) in (int, float):
                key = (sensor.id if sensor else dr.device, rule.metric)
                delta = prof.counters.delta(key, ts, float(raw))
                for event, n in prof.counters.events.items():
                    self.stats.inc(f"counter_{event}", n)
                prof.counters.events.clear()
                if delta is None:
                    continue
                raw = delta
            out.readings.append((ts, rule.metric, raw, unit, flags))
        for reason, n in prof.clock.fallbacks.items():
            self.stats.inc(f"source_ts_{reason}", n)
        prof.clock.fallbacks.clear()
        return out

    def _unit(self, prof: _Profile, name: str, rule: MetricRule, ctx: tuple | None, unit: str | None) -> str | None:
        if rule.unit_from and ctx is not None:
            sel = prof.unit_from[name]
            found = sel.first(ctx[0])
            if found is None:
                found = sel.first(ctx[1])
            if isinstance(found, str):
                return rule.units.get(found, found)
        return rule.unit or unit


class _Caps(dict):
    """Template values: a placeholder the topic did not capture stays visible instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
