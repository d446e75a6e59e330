"""Shared types of the alert lifecycle: alerts, recipients, notifications, silences, audit records.

These are plain dataclasses with `to_dict()` / `from_dict()` (JSON-ready: the state file, the HTTP API
and the notification channels all use the same shape). Times ending in `_ns` are nanoseconds since the
epoch; `started_ns`, `last_ns` and `resolved_ns` are EVENT times (the readings' timestamps), never the
time a message arrived. Only acknowledgements, silences and audit records carry wall-clock times
(when a person acted).

An alert is identified by its key: `<sensor>|<rule>:<metric>` for a sensor alert
(`aq-005|threshold:no2`) and `area:<area>|<rule>:<metric>` for an area alert
(`area:tan-phong|spatial:pm25`). There is at most one open alert per key.

>>> a = Alert(key=alert_key("aq-005", "threshold", "no2"), scope="sensor", sensor="aq-005", area="tan-phong",
...           domain="air", metric="no2", rule="threshold", severity="critical", state="firing", value=231.0,
...           threshold=200.0, reason="above_crit", started_ns=1_700_000_000_000_000_000)
>>> a.key, a.is_open
('aq-005|threshold:no2', True)
>>> Alert.from_dict(a.to_dict()) == a
True
>>> s = Silence(id="s1", sensor="aq-005", start_ns=0, end_ns=2_000_000_000_000_000_000, created_by="duty")
>>> s.matches(a, a.started_ns)
True
>>> first = notification_id(a.key, "firing", a.started_ns, "duty-officer")
>>> first == notification_id(a.key, "firing", a.started_ns, "duty-officer")  # deterministic
True
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, runtime_checkable

Scope = Literal["sensor", "area"]
Severity = Literal["warning", "critical"]
State = Literal["pending", "firing", "resolved"]
NotificationKind = Literal["firing", "resolved", "repeat", "escalation", "digest", "flapping"]
Language = Literal["vi", "en"]

SCOPES: tuple[str, ...] = ("sensor", "area")
SEVERITIES: tuple[str, ...] = ("warning", "critical")
STATES: tuple[str, ...] = ("pending", "firing", "resolved")
NOTIFICATION_KINDS: tuple[str, ...] = ("firing", "resolved", "repeat", "escalation", "digest", "flapping")
AREA_PREFIX = "area:"


def alert_key(sensor_or_area: str, rule: str, metric: str, scope: Scope = "sensor") -> str:
    """`aq-005|threshold:no2` (sensor scope) or `area:tan-phong|spatial:pm25` (area scope)."""
    subject = f"{AREA_PREFIX}{sensor_or_area}" if scope == "area" and not sensor_or_area.startswith(AREA_PREFIX) \
        else sensor_or_area
    return f"{subject}|{rule}:{metric}"


def iso_time(ns: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-27T03:00:00.000Z`."""
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**data)


@dataclass
class Alert:
    key: str
    scope: Scope
    sensor: str | None
    area: str
    domain: str
    metric: str
    rule: str  # the detector or rule that raised it (threshold, physical_range, no_data, index, ...)
    severity: Severity
    state: State
    value: float
    threshold: float | None
    reason: str
    started_ns: int  # event time the condition began (the first reading past the limit)
    last_ns: int = 0  # event time of the latest transition seen for this key
    resolved_ns: int | None = None  # event time the condition ended
    sensors: list[str] = field(default_factory=list)  # members: the sensor itself, or the sensors of a group
    acked_by: str | None = None
    acked_at_ns: int | None = None  # wall clock: when the person acknowledged
    ack_note: str | None = None
    silenced_by: str | None = None  # id of the silence that mutes it
    inhibited_by: str | None = None  # key of the root alert (area / gateway offline) that explains it
    flapping: bool = False
    notifications: int = 0  # notifications sent about this alert (all kinds, all recipients)
    panel_url: str | None = None  # the Grafana panel of this sensor and metric

    def __post_init__(self) -> None:
        if not self.last_ns:
            self.last_ns = self.started_ns
        if not self.sensors and self.sensor:
            self.sensors = [self.sensor]

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"

    @property
    def acknowledged(self) -> bool:
        return self.acked_by is not None

    @property
    def muted(self) -> bool:
        """Silenced or explained by a root alert: kept and shown, but nobody is notified."""
        return self.silenced_by is not None or self.inhibited_by is not None

    @property
    def reading_time(self) -> str:
        return iso_time(self.last_ns) or ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Alert":
        return _from_dict(cls, dict(data))


@dataclass(frozen=True)
class Recipient:
    name: str  # a person or a desk of the duty rota
    channel: str  # name of a configured channel: "mqtt", "webhook", "slack", "telegram", "email", ...
    address: str  # topic, URL, chat id or e-mail address, as the channel understands it
    language: Language = "vi"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipient":
        return _from_dict(cls, dict(data))


def notification_id(key: str, kind: str, sequence: int | str, recipient: str) -> str:
    """Deterministic: the same (alert or group key, kind, sequence, recipient) always gives the same id,
    so a notification re-created after a restart is recognised as already sent."""
    raw = f"{key}\x1f{kind}\x1f{sequence}\x1f{recipient}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


@dataclass
class Notification:
    id: str
    kind: NotificationKind
    recipient: Recipient
    alerts: list[Alert]  # snapshots: one for a single alert, several for a group or a digest
    created_ns: int  # wall clock when it was created
    group_key: str = ""  # the alert key, or the group key when it lists several alerts
    tier: int = 0  # escalation tier of the recipient (0 = first)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "recipient": self.recipient.to_dict(),
                "alerts": [a.to_dict() for a in self.alerts], "created_ns": self.created_ns,
                "group_key": self.group_key, "tier": self.tier}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Notification":
        d = dict(data)
        d["recipient"] = Recipient.from_dict(d["recipient"])
        d["alerts"] = [Alert.from_dict(a) for a in d["alerts"]]
        return _from_dict(cls, d)


@dataclass
class Silence:
    """Mutes the alerts it matches while it is in force (a maintenance window).

    Every matcher given must match (None = any). A silence applies to an alert whose latest event time
    falls in [start_ns, end_ns), or, for reminders and escalations, while the wall clock is in that range.
    """

    id: str
    start_ns: int
    end_ns: int
    created_by: str
    comment: str = ""
    sensor: str | None = None
    area: str | None = None
    domain: str | None = None
    rule: str | None = None
    metric: str | None = None
    created_at_ns: int = 0

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError("a silence must end after it starts")

    def covers(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns < self.end_ns

    def matches_labels(self, alert: Alert) -> bool:
        if self.sensor is not None and self.sensor != alert.sensor and self.sensor not in alert.sensors:
            return False
        return all(want is None or want == have for want, have in (
            (self.area, alert.area), (self.domain, alert.domain), (self.rule, alert.rule), (self.metric, alert.metric)))

    def matches(self, alert: Alert, t_ns: int) -> bool:
        return self.covers(t_ns) and self.matches_labels(alert)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Silence":
        return _from_dict(cls, dict(data))


@dataclass(frozen=True)
class AuditRecord:
    who: str
    when_ns: int  # wall clock
    action: str  # "acknowledge", "silence", "unsilence", ...
    target: str  # alert key or silence id
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditRecord":
        return _from_dict(cls, dict(data))


@runtime_checkable
class NotificationSink(Protocol):
    """Where notifications go (the dispatcher of the channels implements it). `deliver` must not raise
    for a failed channel: retries and the dead-letter log are the sink's business."""

    def deliver(self, notifications: list[Notification]) -> None: ...


class AlertNotFound(KeyError):
    """No open alert has that key."""


class SilenceNotFound(KeyError):
    """No silence has that id."""


@runtime_checkable
class AlertControl(Protocol):
    """What the HTTP API and the MQTT command topic call on the AlertManager. Thread-safe."""

    def open_alerts(self) -> list[Alert]: ...

    def acknowledge(self, key: str, who: str, note: str | None = None) -> Alert: ...

    def add_silence(self, *, who: str, start_ns: int, end_ns: int, comment: str = "", sensor: str | None = None,
                    area: str | None = None, domain: str | None = None, rule: str | None = None,
                    metric: str | None = None) -> Silence: ...

    def remove_silence(self, silence_id: str, who: str) -> Silence: ...

    def silences(self) -> list[Silence]: ...

    def audit(self) -> list[AuditRecord]: ...
