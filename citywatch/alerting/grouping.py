"""Grouping of neighbouring alerts into one notification, and inhibition by root alerts.

**Grouping.** A pollution plume or a flood crest trips several neighbouring sensors within minutes.
Alerts of the same rule, metric and domain whose sensors are in the same area, or within
`radius_km` of a sensor already in the group, are collected for `group_wait` (event time: from
the reading that opened the group) and leave as ONE notification listing them all. `group_wait: 0s`
still merges the alerts raised by the same micro-batch. Resolutions are grouped the same way.

**Inhibition.** A root alert explains others, which are then kept (and shown as inhibited) but not
notified, like Alertmanager's inhibit rules or Kapacitor's `.inhibit()`:

* an *area offline* alert (`area:<area>|no_data:offline`) explains every sensor alert in that area;
  it is raised by the alert manager itself when at least `area_offline_fraction` of an area's
  sensors (and at least `area_offline_min_sensors`) have an open no-data alert: the gateway or the
  area's power or network is down, not each sensor;
* a *sensor offline* alert (a rule in `source_rules`, e.g. `no_data`, at its critical `offline`
  level: `late` does not count) explains that sensor's other alerts (a dead device's flat-line or
  stale-value alerts).

>>> from citywatch.alerting.model import Alert
>>> d = SensorDirectory({"a1": ("air", "bh", 10.950, 106.82), "a2": ("air", "bh", 10.955, 106.82),
...                      "a3": ("air", "tp", 10.958, 106.82), "a4": ("air", "tp", 11.30, 106.82)})
>>> g = Grouper(GroupingConfig(group_wait=30, radius_km=2.0), d)
>>> def alert(s, area): return Alert(key=f"{s}|threshold:no2", scope="sensor", sensor=s, area=area, domain="air",
...     metric="no2", rule="threshold", severity="warning", state="firing", value=1.0, threshold=None,
...     reason="above_warn", started_ns=0)
>>> for s, area in [("a1", "bh"), ("a2", "bh"), ("a3", "tp"), ("a4", "tp")]:
...     g.add("firing", alert(s, area), event_ns=0, wall_ns=0)
>>> [sorted(b.keys) for b in g.due(event_now_ns=30 * 10**9, wall_now_ns=0)]  # a3 is 900 m from a2
[['a1|threshold:no2', 'a2|threshold:no2', 'a3|threshold:no2', 'a4|threshold:no2']]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from pydantic import Field

from citywatch.config import Duration, StrictModel
from citywatch.alerting.model import AREA_PREFIX, Alert

SAMPLE_CONFIG = """\
alerting:
  grouping:
    group_wait: 30s          # collect neighbouring alerts of the same rule and metric this long (event time)
    radius_km: 2.0           # neighbours: same area, or within this distance of a member (null: same area only)
  inhibition:
    source_rules: [no_data]  # a sensor's alert of these rules mutes that sensor's other alerts
    area_offline_fraction: 0.5   # this share of an area's sensors offline = the area is offline
    area_offline_min_sensors: 2
"""

OFFLINE_RULE = "no_data"
OFFLINE_METRIC = "offline"


class GroupingConfig(StrictModel):
    enabled: bool = True
    group_wait: Duration = 30.0
    radius_km: float | None = Field(default=2.0, gt=0)


class InhibitionConfig(StrictModel):
    enabled: bool = True
    source_rules: list[str] = Field(default_factory=lambda: [OFFLINE_RULE])
    area_offline_fraction: float = Field(default=0.5, gt=0, le=1)
    area_offline_min_sensors: int = Field(default=2, ge=1)


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(min(1.0, max(0.0, a))))


class SensorDirectory:
    """Domain, area and coordinates of every sensor: sensor id -> (domain, area, lat, lon)."""

    def __init__(self, sensors: dict[str, tuple[str, str, float | None, float | None]] | None = None) -> None:
        self.sensors = dict(sensors or {})
        self._ids = list(self.sensors)
        self._lat = np.array([np.nan if v[2] is None else v[2] for v in self.sensors.values()], float)
        self._lon = np.array([np.nan if v[3] is None else v[3] for v in self.sensors.values()], float)
        self._area_size: dict[str, int] = {}
        for _, area, _, _ in self.sensors.values():
            self._area_size[area] = self._area_size.get(area, 0) + 1
        self._near: dict[tuple[str, float], frozenset[str]] = {}

    @classmethod
    def from_registry(cls, registry: Any) -> "SensorDirectory":
        return cls({s.id: (s.domain, s.area, None if s.auto_registered else s.lat,
                           None if s.auto_registered else s.lon) for s in registry.sensors.values()})

    def area_size(self, area: str) -> int:
        return self._area_size.get(area, 0)

    def distance_km(self, a: str | None, b: str | None) -> float:
        sa, sb = self.sensors.get(a or ""), self.sensors.get(b or "")
        if sa is None or sb is None or sa[2] is None or sb[2] is None:
            return math.inf
        return _haversine_km(sa[2], sa[3], sb[2], sb[3])

    def near(self, sensor: str | None, radius_km: float) -> frozenset[str]:
        """The sensors within radius_km of `sensor` (itself included), computed once per sensor."""
        key = (sensor or "", radius_km)
        found = self._near.get(key)
        if found is None:
            me = self.sensors.get(sensor or "")
            if me is None or me[2] is None:
                found = frozenset([sensor]) if sensor else frozenset()
            else:
                p1, p2 = math.radians(me[2]), np.radians(self._lat)
                a = (np.sin((p2 - p1) / 2) ** 2
                     + math.cos(p1) * np.cos(p2) * np.sin(np.radians(self._lon - me[3]) / 2) ** 2)
                d = 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
                found = frozenset(self._ids[i] for i in np.flatnonzero(d <= radius_km)) | {sensor}
            self._near[key] = found
        return found


@dataclass
class GroupBuffer:
    kind: str  # "firing" or "resolved"
    rule: str
    metric: str
    domain: str
    opened_event_ns: int
    opened_wall_ns: int
    keys: list[str] = field(default_factory=list)
    sensors: list[str | None] = field(default_factory=list)
    areas: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupBuffer":
        return cls(**d)


class Grouper:
    """Open group buffers; `add` puts an alert in a matching buffer (or opens one), `due` hands out
    the buffers whose group_wait has passed in event time (or in wall time, when readings stop).

    Lookups go through indexes by (kind, alert key), (kind, rule, metric, domain, area) and
    (kind, rule, metric, domain, sensor), so an incident over thousands of sensors stays linear."""

    def __init__(self, config: GroupingConfig, directory: SensorDirectory | None = None) -> None:
        self.config = config
        self.directory = directory or SensorDirectory()
        self.wait_ns = int(config.group_wait * 1e9)
        self.buffers: list[GroupBuffer] = []
        self._reindex()

    def _reindex(self) -> None:
        self._by_key: dict[tuple[str, str], GroupBuffer] = {}
        self._by_area: dict[tuple[str, ...], GroupBuffer] = {}
        self._by_sensor: dict[tuple[str, ...], GroupBuffer] = {}
        for buf in self.buffers:
            for key, sensor, area in zip(buf.keys, buf.sensors, buf.areas):
                self._index(buf, key, sensor, area)

    def _index(self, buf: GroupBuffer, key: str, sensor: str | None, area: str) -> None:
        self._by_key[(buf.kind, key)] = buf
        base = (buf.kind, buf.rule, buf.metric, buf.domain)
        self._by_area.setdefault((*base, area), buf)
        if sensor:
            self._by_sensor.setdefault((*base, sensor), buf)

    def _matching(self, kind: str, alert: Alert) -> GroupBuffer | None:
        base = (kind, alert.rule, alert.metric, alert.domain)
        buf = self._by_area.get((*base, alert.area))
        if buf is None and self.config.radius_km is not None and alert.sensor:
            for other in self.directory.near(alert.sensor, self.config.radius_km):
                buf = self._by_sensor.get((*base, other))
                if buf is not None:
                    break
        return buf

    def add(self, kind: str, alert: Alert, event_ns: int, wall_ns: int) -> None:
        if (kind, alert.key) in self._by_key:
            return
        buf = self._matching(kind, alert) if self.config.enabled and alert.scope == "sensor" else None
        if buf is None:
            buf = GroupBuffer(kind, alert.rule, alert.metric, alert.domain, event_ns, wall_ns)
            self.buffers.append(buf)
        buf.keys.append(alert.key)
        buf.sensors.append(alert.sensor)
        buf.areas.append(alert.area)
        self._index(buf, alert.key, alert.sensor, alert.area)

    def discard(self, key: str) -> None:
        """Take an alert out of every buffer (it resolved before its firing went out, or vice versa)."""
        changed = False
        for buf in self.buffers:
            if key in buf.keys:
                i = buf.keys.index(key)
                del buf.keys[i], buf.sensors[i], buf.areas[i]
                changed = True
        if changed:
            self.buffers = [b for b in self.buffers if b.keys]
            self._reindex()

    def pending(self, kind: str, key: str) -> bool:
        return (kind, key) in self._by_key

    def due(self, event_now_ns: int, wall_now_ns: int, everything: bool = False) -> list[GroupBuffer]:
        ready, waiting = [], []
        for b in self.buffers:
            if (everything or not self.config.enabled or event_now_ns - b.opened_event_ns >= self.wait_ns
                    or wall_now_ns - b.opened_wall_ns >= self.wait_ns):
                ready.append(b)
            else:
                waiting.append(b)
        if ready:
            self.buffers = waiting
            self._reindex()
        return ready

    def to_list(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self.buffers]

    def restore(self, data: Iterable[dict[str, Any]]) -> None:
        self.buffers = [GroupBuffer.from_dict(d) for d in data]
        self._reindex()


def area_offline_key(area: str) -> str:
    return f"{AREA_PREFIX}{area}|{OFFLINE_RULE}:{OFFLINE_METRIC}"


def is_offline(alert: Alert) -> bool:
    """A no-data alert at its offline level (the no-data detector's `late` is only a warning)."""
    return alert.state == "firing" and (alert.severity == "critical" or alert.reason == "offline")


def explains(root: Alert, target: Alert, source_rules: list[str]) -> bool:
    """True if the root alert (offline area or sensor) accounts for the target alert."""
    if root.key == target.key or root.rule not in source_rules or not is_offline(root):
        return False
    if root.scope == "area":
        return target.scope == "sensor" and target.area == root.area
    return (target.scope == "sensor" and target.sensor == root.sensor and target.rule not in source_rules)


def offline_need(area: str, directory: SensorDirectory, config: InhibitionConfig, seen: int = 0) -> int:
    """How many of an area's sensors must be offline for the area to count as offline."""
    size = directory.area_size(area) or seen
    return max(config.area_offline_min_sensors, math.ceil(config.area_offline_fraction * size))


def offline_areas(open_alerts: Iterable[Alert], directory: SensorDirectory,
                  config: InhibitionConfig) -> dict[str, list[Alert]]:
    """area -> the firing sensor no-data alerts that make it count as offline."""
    by_area: dict[str, dict[str, Alert]] = {}
    for a in open_alerts:
        if a.scope == "sensor" and a.rule == OFFLINE_RULE and is_offline(a) and a.sensor:
            by_area.setdefault(a.area, {}).setdefault(a.sensor, a)
    out = {}
    for area, sensors in by_area.items():
        if len(sensors) >= offline_need(area, directory, config, len(sensors)):
            out[area] = sorted(sensors.values(), key=lambda a: (a.started_ns, a.key))
    return out
