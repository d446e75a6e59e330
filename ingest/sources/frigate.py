"""Vehicle counts from Frigate NVR events: distinct tracked objects per camera and zone, per interval.

Frigate (an NVR with object detection) does not publish counts per period. It publishes one JSON
message on ``<prefix>/events`` each time a tracked object changes: ``{"type": "new" | "update" |
"end", "before": {...}, "after": {...}}``, where both states carry ``id``, ``camera``, ``label``,
``false_positive``, ``frame_time``, ``start_time``, ``end_time`` (epoch seconds), ``current_zones``
and ``entered_zones``; and ``<prefix>/available`` = ``online`` / ``offline``. `FrigateVehicleCounter`
turns these into the readings a traffic camera would send: vehicles counted per interval.

Counting, by distinct event id (the message's ``after`` state):

* the camera (device ``"<camera>"``) counts an object once, the first time it is seen with
  ``false_positive`` false and a label in ``labels``, at that message's ``frame_time`` (else its
  ``start_time``). Later updates and the end message of the same id never count again; an object
  whose label changes from a non-vehicle to a vehicle (or that stops being a false positive) counts
  then;
* with ``zones`` on (true, or a list of the zone names to count), each zone (device
  ``"<camera>/<zone>"``) counts a counted object once, the first time the zone appears in its
  ``entered_zones``, at that message's ``frame_time``. A zone left and re-entered is not counted
  again.

Buckets: counts fall into fixed event-time intervals of ``interval`` aligned to the epoch. A bucket
is emitted once closed, as the reading ``(bucket start ns, "vehicles", count, "veh")``: when the
camera's event-time watermark (the newest ``frame_time`` seen from it) reaches bucket end + ``grace``,
or on ``tick(now_ns)`` when the wall clock does. Events that arrive for a bucket already closed get
an error record ``frigate_late_event`` and are dropped; out-of-order events within the grace count.

True zeros and dead cameras: a bucket with no vehicles is emitted as 0 for every camera and zone seen
so far, but only when Frigate was known to be running for the whole bucket. ``offline`` (until
``online`` or the next event), the time before the first message (or before the earliest event
time seen, for a backlog) and the time the engine was stopped between `snapshot` and `restore` are
gaps: a bucket that overlaps a gap is emitted only if it saw vehicles (a lower bound), never as
0, so the no-data logic sees a silent camera rather than an empty road. ``offline`` also yields
``DeviceRecord(available=False)`` for every known camera and zone, ``online`` (or any event, which
proves Frigate runs) ``available=True``.

Bad input never raises: malformed JSON -> ``malformed_json``, a wrong shape -> ``bad_structure``, a
topic other than the two -> ``bad_topic``, an event time more than ``max_clock_skew`` ahead of its
arrival or older than ``id_retention`` -> ``frigate_implausible_time``, a camera or zone beyond
``max_devices`` -> ``frigate_too_many_devices``. Message-level errors name the Frigate instance (the
topic prefix) as device. Memory is bounded: ids are forgotten ``id_retention`` after their last
message (at most ``max_ids``); an unknown id whose ``start_time`` is older than that is taken as one
already counted and forgotten (a car parked for hours), not a new vehicle.

Not handled: Frigate gives parked cars new ids when it restarts, and counts them as new vehicles
(use Frigate's zones and ``required_zones`` for the road).

Example: a car on camera ``cam1`` entering zone ``lane_in`` at 10:00:12, then a person at 10:01:45
on the same camera moves its watermark past 10:01:00 + 30 s, which closes the 10:00 bucket:

>>> import json
>>> counter = FrigateVehicleCounter(interval_s=60, grace_s=30)
>>> t0 = 1_700_042_400                      # 2023-11-15 10:00:00 UTC
>>> def event(kind, oid, label, frame_time, zones):
...     state = {"id": oid, "camera": "cam1", "label": label, "false_positive": False,
...              "start_time": frame_time - 1.0, "frame_time": frame_time, "end_time": None,
...              "current_zones": zones, "entered_zones": zones}
...     return json.dumps({"type": kind, "before": state, "after": state}).encode()
>>> _ = counter.feed("frigate/available", b"online", (t0 - 600) * 10**9)
>>> counter.feed("frigate/events", event("new", "a", "car", t0 + 12.0, ["lane_in"]), (t0 + 13) * 10**9)
[]
>>> for record in counter.feed("frigate/events", event("new", "b", "person", t0 + 105.0, []), (t0 + 106) * 10**9):
...     print(record.device, record.readings)
cam1 [(1700042400000000000, 'vehicles', 1, 'veh')]
cam1/lane_in [(1700042400000000000, 'vehicles', 1, 'veh')]
>>> for record in counter.tick((t0 + 151) * 10**9):   # 10:01 closed on the wall clock: true zeros
...     print(record.device, record.readings)
cam1 [(1700042460000000000, 'vehicles', 0, 'veh')]
cam1/lane_in [(1700042460000000000, 'vehicles', 0, 'veh')]

Sample source profile (``sources.profiles`` in the engine config; the registry names the camera as a
sensor's source, e.g. ``source: {family: frigate, device: nga_tu_vung_tau}``): see `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import structlog
from pydantic import Field, field_validator

from citywatch.config_types import Duration, StrictModel
from citywatch.ingest.sources.records import DeviceRecord

__all__ = ["FrigateOptions", "FrigateVehicleCounter", "SAMPLE_CONFIG", "METRIC", "UNIT"]

METRIC = "vehicles"
UNIT = "veh"
SNAPSHOT_FORMAT = 1
DEFAULT_LABELS = ("car", "motorcycle", "bus", "truck", "bicycle")
_NS = 1_000_000_000
_EVENT_TYPES = frozenset({"new", "update", "end"})

SAMPLE_CONFIG = """\
sources:
  profiles:
    ## Vehicle counts from a Frigate NVR (one profile per Frigate instance, i.e. per topic prefix).
    - family: frigate
      description: Frigate NVR, vehicles counted per camera and zone
      topics:
        - {filter: frigate/events, decoder: frigate}
        - {filter: frigate/available, kind: availability, decoder: frigate}
      options:                       # FrigateVehicleCounter's arguments
        topic_prefix: frigate        # the prefix of the two topics above
        interval_s: 60               # count per fixed interval, aligned to the epoch ("60s", "5m" work too)
        labels: [car, motorcycle, bus, truck, bicycle]   # Frigate labels counted as vehicles
        grace_s: 30                  # a bucket closes this long after its end (late events still count)
        zones: true                  # also count per zone, device "<camera>/<zone>": true, false or [names]
        id_retention_s: 6h           # how long an event id is remembered after its last message
        max_clock_skew_s: 5m         # event times further ahead of their arrival are rejected
      metrics: {vehicles: intensity} # source metric -> registry metric (unit veh)
      # the registry names a camera (or "<camera>/<zone>") as a sensor's source, e.g. on tc-001:
      #   source: {family: frigate, device: nga_tu_vung_tau}
"""


class FrigateOptions(StrictModel):
    """The options of a Frigate source profile (``options:`` in `SAMPLE_CONFIG`): the counter's arguments."""

    topic_prefix: str = "frigate"
    interval_s: Duration = 60.0
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), min_length=1)
    grace_s: Duration = 30.0
    zones: bool | list[str] = True  # every zone, none, or only these zone names
    id_retention_s: Duration = 6 * 3600.0
    max_clock_skew_s: Duration = 300.0
    max_ids: int = Field(default=200_000, ge=1)
    max_devices: int = Field(default=1_000, ge=1)

    @field_validator("interval_s", "id_retention_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        if not all(label.strip() for label in value):
            raise ValueError("labels are Frigate object labels such as 'car'")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#") or value.endswith("/"):
            raise ValueError("topic_prefix is a plain topic such as 'frigate' (no wildcards, no trailing '/')")
        return value


@dataclass(slots=True)
class _Device:
    camera: str
    cursor: int  # every bucket before this one is closed (emitted or skipped)
    counts: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _TrackedObject:
    camera: str
    counted: bool
    zones: set[str]
    last_clock_ns: int


class _Reject(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _seconds_to_ns(value: Any, name: str) -> int:
    """Epoch seconds as Frigate writes them (a JSON number) -> ns, exact to the printed digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject("bad_structure", f"{name} is not a number of epoch seconds: {value!r}")
    if isinstance(value, int):
        return value * _NS
    if not math.isfinite(value):
        raise _Reject("bad_structure", f"{name} is not finite: {value!r}")
    # repr() is the shortest decimal that round-trips, i.e. the digits Frigate printed.
    return int((Decimal(repr(value)) * _NS).to_integral_value())


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // _NS, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FrigateVehicleCounter:
    """Counts distinct Frigate vehicle events per camera and zone in closed event-time buckets."""

    def __init__(
        self,
        interval_s: float | str = 60,
        labels: tuple[str, ...] | list[str] = DEFAULT_LABELS,
        grace_s: float | str = 30,
        zones: bool | list[str] | tuple[str, ...] = True,
        *,
        topic_prefix: str = "frigate",
        id_retention_s: float | str = 6 * 3600,
        max_clock_skew_s: float | str = 300,
        max_ids: int = 200_000,
        max_devices: int = 1_000,
        logger: Any = None,
    ) -> None:
        # The profile's `options:` arrive here as keyword arguments: validated like any config section
        # (pydantic's ValidationError is a ValueError naming the option).
        o = FrigateOptions(
            topic_prefix=topic_prefix,
            interval_s=interval_s,
            labels=labels if isinstance(labels, str) else list(labels),
            grace_s=grace_s,
            zones=zones if isinstance(zones, (bool, str)) else list(zones),
            id_retention_s=id_retention_s,
            max_clock_skew_s=max_clock_skew_s,
            max_ids=max_ids,
            max_devices=max_devices,
        )
        self.options = o
        self.interval_ns = int(round(o.interval_s * _NS))
        self.grace_ns = int(round(o.grace_s * _NS))
        self.labels = frozenset(o.labels)
        self.zones = bool(o.zones)
        self.zone_names = None if isinstance(o.zones, bool) else frozenset(o.zones)  # None: every zone
        self.topic_prefix = o.topic_prefix
        self.events_topic = f"{o.topic_prefix}/events"
        self.available_topic = f"{o.topic_prefix}/available"
        self.id_retention_ns = int(round(o.id_retention_s * _NS))
        self.max_clock_skew_ns = int(round(o.max_clock_skew_s * _NS))
        self.max_ids = o.max_ids
        self.max_devices = o.max_devices
        self._max_catchup = max(1, -(-self.id_retention_ns // self.interval_ns))
        self.log = logger or structlog.get_logger("citywatch.sources.frigate")
        self.stats: Counter[str] = Counter()
        self._devices: dict[str, _Device] = {}
        self._watermarks: dict[str, int] = {}  # camera -> newest event time seen (ns)
        self._objects: OrderedDict[str, _TrackedObject] = OrderedDict()  # least recently seen first
        # Periods in which Frigate was not known to run: (start or None = -inf, end or None = open).
        self._gaps: list[tuple[int | None, int | None]] = []
        self._online: bool | None = None
        self._clock_ns: int | None = None
        self._restored_clock_ns: int | None = None

    @classmethod
    def from_options(cls, options: FrigateOptions, logger: Any = None) -> "FrigateVehicleCounter":
        return cls(**options.model_dump(), logger=logger)

    # ---- public API

    def feed(self, topic: str, payload: bytes, arrival_ns: int) -> list[DeviceRecord]:
        """The records one message yields: closed buckets, availability, errors."""
        self.stats["messages"] += 1
        self._observe_clock(arrival_ns)
        try:
            if topic == self.events_topic:
                return self._on_event(payload, arrival_ns)
            if topic == self.available_topic:
                return self._on_available(payload, arrival_ns)
            raise _Reject("bad_topic", f"{topic!r} is neither {self.events_topic!r} nor {self.available_topic!r}")
        except _Reject as rej:
            return [self._error(self.topic_prefix, rej.code, rej.detail)]

    def tick(self, now_ns: int) -> list[DeviceRecord]:
        """Close, on the wall clock, every bucket whose end + grace is at or before `now_ns`."""
        self._observe_clock(now_ns)
        self._forget_old_ids()
        out: list[DeviceRecord] = []
        for name in sorted(self._devices):
            record = self._close(name, now_ns)
            if record is not None:
                out.append(record)
        self._prune_gaps()
        return out

    @property
    def devices(self) -> list[str]:
        return sorted(self._devices)

    def snapshot(self) -> dict[str, Any]:
        """The counter state as plain JSON-serialisable data (open buckets, seen ids, gaps)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "interval_ns": self.interval_ns,
            "clock_ns": self._clock_ns,
            "online": self._online,
            "gaps": [[start, end] for start, end in self._gaps],
            "watermarks": dict(self._watermarks),
            "devices": [
                {"device": name, "camera": dev.camera, "cursor": dev.cursor, "counts": sorted(dev.counts.items())}
                for name, dev in sorted(self._devices.items())
            ],
            "ids": [
                [oid, obj.camera, obj.counted, sorted(obj.zones), obj.last_clock_ns]
                for oid, obj in self._objects.items()
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a `snapshot()`. The time from the snapshot to the next message or tick is a gap."""
        if state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown Frigate counter snapshot format {state.get('format')!r}")
        if state["interval_ns"] != self.interval_ns:
            raise ValueError(
                f"snapshot was taken with an interval of {state['interval_ns'] / _NS:g} s, "
                f"this counter counts per {self.interval_ns / _NS:g} s"
            )
        try:
            devices = {
                d["device"]: _Device(d["camera"], int(d["cursor"]), {int(k): int(n) for k, n in d["counts"]})
                for d in state["devices"]
            }
            watermarks = {camera: int(ns) for camera, ns in state["watermarks"].items()}
            objects = OrderedDict(
                (oid, _TrackedObject(camera, bool(counted), set(zones), int(last)))
                for oid, camera, counted, zones, last in state["ids"]
            )
            gaps = [(start, end) for start, end in state["gaps"]]
            online, clock = state["online"], state["clock_ns"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a Frigate counter snapshot: {exc!r}") from None
        self._devices, self._watermarks, self._objects, self._gaps = devices, watermarks, objects, gaps
        self._online, self._clock_ns, self._restored_clock_ns = online, clock, clock

    # ---- messages

    def _on_available(self, payload: bytes, arrival_ns: int) -> list[DeviceRecord]:
        text = payload.decode("utf-8", "replace").strip().lower()
        if text not in ("online", "offline"):
            raise _Reject("bad_structure", f"availability payload must be 'online' or 'offline', got {text[:40]!r}")
        if text == "offline":
            if self._online is not False:
                self._gaps.append((arrival_ns, None))
            self._online = False
        else:
            self._set_online(arrival_ns)
        self._prune_gaps()
        return self._availability_records(text == "online", arrival_ns)

    def _on_event(self, payload: bytes, arrival_ns: int) -> list[DeviceRecord]:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _Reject("malformed_json", str(exc)) from None
        after = self._validate(message)
        camera: str = after["camera"]
        frame_ns = _seconds_to_ns(after["frame_time"], "frame_time") if after.get("frame_time") is not None else None
        start_ns = _seconds_to_ns(after["start_time"], "start_time") if after.get("start_time") is not None else None
        message_ns = frame_ns if frame_ns is not None else start_ns
        if message_ns is None:
            raise _Reject("bad_structure", "the event has neither frame_time nor start_time")
        out: list[DeviceRecord] = []
        if self._online is False:
            # An event proves Frigate runs again (its "online" was missed).
            self._set_online(arrival_ns)
            out.extend(self._availability_records(True, arrival_ns))
        self._online = True
        if message_ns > arrival_ns + self.max_clock_skew_ns or message_ns < arrival_ns - self.id_retention_ns:
            out.append(
                self._error(
                    camera,
                    "frigate_implausible_time",
                    f"event {after['id']} at {_iso(message_ns)} arrived at {_iso(arrival_ns)}",
                )
            )
            return out
        self._known_running_at(message_ns)

        out.extend(self._count(after, camera, message_ns, start_ns, arrival_ns))
        if camera in self._watermarks:
            self._watermarks[camera] = max(self._watermarks[camera], message_ns)
            for name in self._camera_devices(camera):
                record = self._close(name, self._watermarks[camera])
                if record is not None:
                    out.append(record)
        self._forget_old_ids()
        self._prune_gaps()
        return out

    @staticmethod
    def _validate(message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise _Reject("bad_structure", f"an event is a JSON object, got {type(message).__name__}")
        kind = message.get("type")
        if kind not in _EVENT_TYPES:
            raise _Reject("bad_structure", f"type must be new, update or end, got {kind!r}")
        after = message.get("after")
        if not isinstance(after, dict):
            raise _Reject("bad_structure", "the event has no 'after' object")
        for key in ("id", "camera", "label"):
            if not isinstance(after.get(key), str) or not after[key]:
                raise _Reject("bad_structure", f"after.{key} must be a non-empty string")
        if "/" in after["camera"]:
            raise _Reject("bad_structure", f"after.camera {after['camera']!r} contains '/'")
        zones = after.get("entered_zones", [])
        if zones is None:
            zones = []
        if not isinstance(zones, list) or not all(isinstance(z, str) and z for z in zones):
            raise _Reject("bad_structure", "after.entered_zones must be a list of zone names")
        if not isinstance(after.get("false_positive", False), bool):
            raise _Reject("bad_structure", "after.false_positive must be true or false")
        return after

    # ---- counting

    def _count(
        self, after: dict[str, Any], camera: str, message_ns: int, start_ns: int | None, arrival_ns: int
    ) -> list[DeviceRecord]:
        oid: str = after["id"]
        obj = self._objects.get(oid)
        if obj is None:
            forgotten = start_ns is not None and start_ns < arrival_ns - self.id_retention_ns
            obj = _TrackedObject(camera, counted=forgotten, zones=set(), last_clock_ns=arrival_ns)
            if forgotten:
                # Started longer ago than ids are remembered: counted then, forgotten since.
                obj.zones.update(after.get("entered_zones") or ())
                self.stats["frigate_forgotten_event"] += 1
            self._objects[oid] = obj
            while len(self._objects) > self.max_ids:
                self._objects.popitem(last=False)
                self.stats["frigate_ids_evicted"] += 1
        else:
            obj.last_clock_ns = arrival_ns
            self._objects.move_to_end(oid)

        out: list[DeviceRecord] = []
        if not obj.counted:
            if after["label"] not in self.labels or after.get("false_positive", False):
                return out
            if camera not in self._devices:
                if len(self._devices) >= self.max_devices:
                    return [self._too_many(camera)]
                self._devices[camera] = _Device(camera, cursor=message_ns // self.interval_ns)
                self._watermarks.setdefault(camera, message_ns)
            obj.counted = True
            late = self._add(camera, message_ns, oid)
            if late is not None:
                out.append(late)
        if self.zones and camera in self._devices:
            for zone in after.get("entered_zones") or ():
                if zone in obj.zones or (self.zone_names is not None and zone not in self.zone_names):
                    continue
                obj.zones.add(zone)
                name = f"{camera}/{zone}"
                if name not in self._devices:
                    if len(self._devices) >= self.max_devices:
                        out.append(self._too_many(name))
                        continue
                    # A zone starts where its camera stands: it cannot open a bucket the camera closed.
                    start = max(message_ns // self.interval_ns, self._devices[camera].cursor)
                    self._devices[name] = _Device(camera, cursor=start)
                late = self._add(name, message_ns, oid)
                if late is not None:
                    out.append(late)
        return out

    def _add(self, name: str, event_ns: int, oid: str) -> DeviceRecord | None:
        device = self._devices[name]
        bucket = event_ns // self.interval_ns
        if bucket < device.cursor:
            return self._error(
                name,
                "frigate_late_event",
                f"event {oid} at {_iso(event_ns)} is for the bucket {_iso(bucket * self.interval_ns)}, already closed",
            )
        device.counts[bucket] = device.counts.get(bucket, 0) + 1
        self.stats["vehicles_counted"] += 1
        return None

    # ---- closing buckets

    def _close(self, name: str, clock_ns: int) -> DeviceRecord | None:
        """Emit every bucket of `name` whose end + grace is at or before `clock_ns`."""
        device = self._devices[name]
        last = (clock_ns - self.grace_ns) // self.interval_ns - 1  # the newest closable bucket
        if last < device.cursor:
            return None
        readings = []
        first = max(device.cursor, last + 1 - self._max_catchup)
        for bucket in sorted(b for b in device.counts if b < first):
            # Far behind (after a long stop): only real counts, no run of zeros from the past.
            readings.append((bucket * self.interval_ns, METRIC, device.counts.pop(bucket), UNIT))
        for bucket in range(first, last + 1):
            count = device.counts.pop(bucket, 0)
            if count > 0 or self._complete(bucket):
                readings.append((bucket * self.interval_ns, METRIC, count, UNIT))
            else:
                self.stats["frigate_zero_withheld"] += 1
        device.cursor = last + 1
        return DeviceRecord(device=name, readings=readings) if readings else None

    def _complete(self, bucket: int) -> bool:
        """Frigate was known to run for the whole bucket."""
        start = bucket * self.interval_ns
        end = start + self.interval_ns
        for gap_start, gap_end in self._gaps:
            if (gap_start is None or gap_start < end) and (gap_end is None or gap_end > start):
                return False
        return True

    # ---- availability, clock, memory

    def _observe_clock(self, clock_ns: int) -> None:
        if self._clock_ns is None:
            self._gaps.append((None, clock_ns))  # before the first message nothing is known
        elif self._restored_clock_ns is not None:
            self._gaps.append((self._restored_clock_ns, clock_ns))  # the engine was stopped
        self._restored_clock_ns = None
        self._clock_ns = clock_ns if self._clock_ns is None else max(self._clock_ns, clock_ns)

    def _known_running_at(self, event_ns: int) -> None:
        """An event proves Frigate ran at its time: the unknown period before the first message ends there."""
        for i, (start, end) in enumerate(self._gaps):
            if start is None and end is not None and end > event_ns:
                self._gaps[i] = (None, event_ns)

    def _set_online(self, arrival_ns: int) -> None:
        for i, (start, end) in enumerate(self._gaps):
            if end is None:
                self._gaps[i] = (start, arrival_ns if start is None else max(arrival_ns, start))
        self._online = True

    def _availability_records(self, available: bool, arrival_ns: int) -> list[DeviceRecord]:
        return [DeviceRecord(device=name, available=available, ts_ns=arrival_ns) for name in sorted(self._devices)]

    def _camera_devices(self, camera: str) -> list[str]:
        return sorted(name for name, dev in self._devices.items() if dev.camera == camera)

    def _forget_old_ids(self) -> None:
        if self._clock_ns is None:
            return
        cutoff = self._clock_ns - self.id_retention_ns
        while self._objects:
            oid, obj = next(iter(self._objects.items()))
            if obj.last_clock_ns >= cutoff:
                break
            del self._objects[oid]
            self.stats["frigate_ids_expired"] += 1

    def _prune_gaps(self) -> None:
        """Drop closed gaps no bucket that may still close can overlap."""
        if self._clock_ns is None:
            return
        # A device created later starts no earlier than the oldest plausible event time.
        horizon = self._clock_ns - self.id_retention_ns - self.interval_ns
        if self._devices:
            horizon = min(horizon, min(dev.cursor for dev in self._devices.values()) * self.interval_ns)
        open_gaps = [g for g in self._gaps if g[1] is None]
        closed = sorted((g for g in self._gaps if g[1] is not None and g[1] > horizon), key=lambda g: g[1])
        if len(closed) > 64:  # a flapping Frigate: merge the oldest gaps into one (more zeros withheld, never fewer)
            closed = [(closed[0][0], closed[-64][1])] + closed[-63:]
        self._gaps = closed + open_gaps

    def _error(self, device: str, code: str, detail: str) -> DeviceRecord:
        self.stats[code] += 1
        # debug only: the engine counts, dead-letters and logs the error (rate-limited) from the record
        self.log.debug("frigate_message_rejected", code=code, device=device, detail=detail)
        return DeviceRecord(device=device, errors=[f"{code}: {detail}"])

    def _too_many(self, name: str) -> DeviceRecord:
        return self._error(name, "frigate_too_many_devices", f"more than {self.max_devices} cameras and zones")
