"""The alert manager: detector level changes in, one open alert per key and the notifications to send out.

Input is the engine's `AlertEvent`s: a change of a detector's level for a sensor and metric
(ok -> warning -> critical -> ok), stamped with the READING's time. Per key (sensor or area, rule,
metric) the manager keeps at most one open alert and moves it through

    pending --(condition held `for`)--> firing --(condition gone for `resolve_for`)--> resolved

* **Dedup.** A new warning or critical reading of a key that already has an open alert updates it
  (value, severity) instead of opening another. A change that is not newer (in event time) than the
  last one seen for the key - a redelivery after a restart - is ignored.
* **Hysteresis.** The threshold detector already has warn/reset levels; on top of that the manager
  resolves an alert only when the condition has been gone for `resolve_for` of event time (a
  recovery hold-down): a value that dips under the limit for one reading does not close and reopen
  the alert. A drop from critical to warning does not notify; a rise from warning to critical does.
* **Flap detection with damping** (Nagios-style, like Kapacitor's `.flapping(low, high)`): event time
  is cut into slots of `flapping.slot`; the percent state change is the weighted share of the last
  `flapping.history` slots (counted from the key's first change) in which the level changed, newer
  slots weighing more (0.8 -> 1.2). At `high` percent (with at least `min_changes` changes) the key is
  flapping: ONE "flapping" notification goes out and per-change notifications stop; resolution waits
  until the percentage falls below `low`.
* **Repeats.** An open, unacknowledged, unmuted alert is re-sent every `repeat_interval` (wall clock).
* **Acknowledge** stops repeats and escalation; the resolution is still sent.
* **Silences / maintenance windows** mute the alerts whose labels they match (sensor, area, domain,
  rule, metric) when the alert's reading time, or the current time, falls in the window. When the
  window is over (in wall-clock and in event time), an alert it muted that is still open is reported.
* **Grouping, inhibition** (`grouping.py`), **routing, escalation, storm control** (`routing.py`).
* **Persistence**: the whole state (open alerts, flap history, group buffers, silences, audit log,
  ids of the notifications already sent) goes atomically to a JSON file - at once after notifications
  were handed to the sink, otherwise at most every `save_interval`, and on `save()`. After a restart,
  replayed readings change nothing and nothing is sent twice; notifications still waiting in a group
  go out.

Event time drives the alert's own clock (for-duration, hold-down, flapping, group wait); the injectable
wall `clock` drives what is about people (repeats, escalation, storm windows, the duty rota).

>>> from types import SimpleNamespace as Ev
>>> now = [0]
>>> m = AlertManager(AlertingConfig(), clock=lambda: now[0])
>>> def ev(level, t, value): return Ev(sensor="aq-005", domain="air", area="tan-phong", metric="no2",
...     detector="threshold", level=level, previous_level="ok", value=value, threshold=200.0, score=1.0,
...     ts_ns=t * 10**9, reason="above_crit")
>>> [n.kind for n in m.ingest([ev("critical", 0, 231.0)])]   # held for group_wait (30 s event time)
[]
>>> [(n.kind, n.recipient.name, [a.key for a in n.alerts]) for n in m.ingest([ev("critical", 40, 240.0)])]
[('firing', 'duty-officer', ['aq-005|threshold:no2'])]
>>> m.acknowledge("aq-005|threshold:no2", who="lan").acked_by
'lan'
>>> [n.kind for n in m.ingest([ev("ok", 100, 150.0)])], [n.kind for n in m.tick(event_now_ns=500 * 10**9)]
([], ['resolved'])
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import urlencode

from pydantic import Field, model_validator

from citywatch.config import Duration, StrictModel
from citywatch.alerting.grouping import (OFFLINE_METRIC, OFFLINE_RULE, GroupBuffer, Grouper, GroupingConfig,
                                         InhibitionConfig, SensorDirectory, area_offline_key, explains, offline_areas,
                                         offline_need)
from citywatch.alerting.model import (AREA_PREFIX, Alert, AlertNotFound, AuditRecord, Notification, NotificationSink,
                                      Recipient, Silence, SilenceNotFound, alert_key, notification_id)
from citywatch.alerting.persistence import read_state, set_aside, write_state_atomic
from citywatch.alerting.routing import Router, RoutingConfig, StormConfig, StormControl

if TYPE_CHECKING:
    from citywatch.alerts import AlertEvent

log = logging.getLogger("citywatch.alerting")

SAMPLE_CONFIG = """\
alerting:
  enabled: true
  state_file: alerting-state.json   # under data_dir; open alerts, silences, sent notification ids
  save_interval: 5s                 # state changes that sent nothing are saved at most this often
  repeat_interval: 1h               # re-send an open, unacknowledged alert this often (0: never)
  defaults:
    for: 0s                         # condition must hold this long (event time) before firing
    resolve_for: 5m                 # and be gone this long before the alert resolves (hold-down)
  rules:                            # per detector / rule name, replacing the defaults
    physical_range: {for: 2m, resolve_for: 5m}
    no_data: {for: 0s, resolve_for: 0s}
  flapping:
    enabled: true
    slot: 1m                        # event time is cut into slots; a slot with a level change counts
    history: 21                     # the last 21 slots (Nagios keeps 21 checks)
    high: 50                        # percent state change at which a key starts flapping
    low: 25                         # and below which it stops
    min_changes: 4
  grafana:
    base_url: http://localhost:3000 # links to the sensor's panel in notifications (null: no link)
"""

SECOND_NS = 1_000_000_000
NEVER = -(1 << 62)
TransitionState = str  # pending | firing | resolved | acknowledged | flapping | flapping_stopped | escalated ...


class RuleConfig(StrictModel):
    for_: Duration = Field(default=0.0, alias="for")
    resolve_for: Duration = 300.0

    model_config = StrictModel.model_config | {"populate_by_name": True}


class FlappingConfig(StrictModel):
    enabled: bool = True
    slot: Duration = 60.0
    history: int = Field(default=21, ge=3, le=1000)
    high: float = Field(default=50.0, gt=0, le=100)
    low: float = Field(default=25.0, ge=0, le=100)
    min_changes: int = Field(default=4, ge=2)

    @model_validator(mode="after")
    def _check(self) -> "FlappingConfig":
        if self.low >= self.high:
            raise ValueError("flapping.low must be below flapping.high")
        if self.slot <= 0:
            raise ValueError("flapping.slot must be positive")
        return self


DEFAULT_DASHBOARDS = {"air": "cw-air", "water": "cw-water", "traffic": "cw-traffic", "forest": "cw-forest"}


class GrafanaLinkConfig(StrictModel):
    base_url: str | None = "http://localhost:3000"
    dashboards: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_DASHBOARDS))
    # "domain/metric" -> panel id; filled from the generated boards by the engine when left empty
    panels: dict[str, int] = Field(default_factory=dict)


class AlertingConfig(StrictModel):
    enabled: bool = True
    state_file: str | None = "alerting-state.json"
    repeat_interval: Duration = 3600.0
    defaults: RuleConfig = Field(default_factory=RuleConfig)
    rules: dict[str, RuleConfig] = Field(default_factory=lambda: {"no_data": RuleConfig(resolve_for=0.0)})
    flapping: FlappingConfig = Field(default_factory=FlappingConfig)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    inhibition: InhibitionConfig = Field(default_factory=InhibitionConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    storm: StormConfig = Field(default_factory=StormConfig)
    grafana: GrafanaLinkConfig = Field(default_factory=GrafanaLinkConfig)
    keep_sent_ids: int = Field(default=20_000, ge=100)
    keep_audit: int = Field(default=10_000, ge=10)
    # state changes that sent nothing are written at most this often (sent notifications: at once)
    save_interval: Duration = 5.0
    # keys without an open alert are forgotten after this much quiet event time; so are ended silences
    forget_after: Duration = 7 * 86400.0
    # The notification channels (sinks/notify), the HTTP API and the MQTT command topic: validated into
    # their own models (NotifyConfig, ApiConfig, CommandConfig) after the rest, imported only then so
    # that loading the config does not load the channels.
    notify: Any = None
    api: Any = None
    commands: Any = None

    @model_validator(mode="after")
    def _sections(self) -> "AlertingConfig":
        from citywatch.alerting.api import ApiConfig
        from citywatch.alerting.commands import CommandConfig
        from citywatch.sinks.notify.dispatcher import NotifyConfig

        for name, model in (("notify", NotifyConfig), ("api", ApiConfig), ("commands", CommandConfig)):
            value = getattr(self, name)
            if not isinstance(value, model):
                if value is not None and not isinstance(value, dict):
                    raise ValueError(f"{name}: must be a mapping")
                setattr(self, name, model.model_validate(value or {}))
        return self

    def rule(self, name: str) -> RuleConfig:
        return self.rules.get(name, self.defaults)


class PanelLinks:
    """`<base>/d/<board uid>?orgId=1&var-area=..&var-sensor=..&viewPanel=<id>` for an alert."""

    def __init__(self, config: GrafanaLinkConfig) -> None:
        self.config = config

    def url(self, alert: Alert) -> str | None:
        base, uid = self.config.base_url, self.config.dashboards.get(alert.domain)
        if not base or not uid:
            return None
        query: dict[str, Any] = {"orgId": 1, "var-area": alert.area}
        if alert.sensor:
            query["var-sensor"] = alert.sensor
        panel = self.config.panels.get(f"{alert.domain}/{alert.metric}")
        if panel is not None:
            query["viewPanel"] = panel
        return f"{base.rstrip('/')}/d/{uid}?{urlencode(query)}"


@dataclass
class Transition:
    """One lifecycle step of an alert, for the `alerts` measurement (Grafana annotations, history)."""

    alert: Alert
    state: TransitionState
    at_ns: int  # event time for condition changes; wall time for what people did
    who: str | None = None
    detail: str = ""


@dataclass
class _Track:
    """Everything the manager remembers about one key, open alert or not."""

    key: str
    level: str = "ok"
    last_event_ns: int = NEVER
    changes: list[int] = field(default_factory=list)  # event times of recent level changes
    first_change_ns: int | None = None
    flapping: bool = False
    flap_started_ns: int | None = None
    alert: Alert | None = None
    clear_since_ns: int | None = None  # condition gone since (event time), while the alert is open
    notified: bool = False  # the firing notification went out
    told: list[str] = field(default_factory=list)  # recipients told about the current alert
    tier: int = 0
    first_notified_wall_ns: int | None = None
    last_notified_wall_ns: int | None = None
    repeats: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["alert"] = self.alert.to_dict() if self.alert else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "_Track":
        d = dict(d)
        d["alert"] = Alert.from_dict(d["alert"]) if d.get("alert") else None
        return cls(**d)


def group_key(members: list[Alert]) -> str:
    """The alert's own key for one alert; for several, a name derived from exactly who is in the group."""
    if len(members) == 1:
        return members[0].key
    first = members[0]
    digest = hashlib.blake2b("\x1f".join(sorted(a.key for a in members)).encode(), digest_size=6).hexdigest()
    return f"group:{first.domain}:{first.rule}:{first.metric}:{digest}"


def _snapshot(alert: Alert) -> Alert:
    return replace(alert, sensors=list(alert.sensors))


class AlertManager:
    """See the module docstring. All public methods are thread-safe."""

    def __init__(self, config: AlertingConfig | None = None, sink: NotificationSink | None = None,
                 clock: Callable[[], int] = time.time_ns, directory: SensorDirectory | None = None,
                 state_file: str | Path | None = None) -> None:
        self.config = config or AlertingConfig()
        self.sink = sink
        self.clock = clock
        self.directory = directory or SensorDirectory()
        self.state_file = Path(state_file) if state_file else None
        self.router = Router(self.config.routing)
        self.storm = StormControl(self.config.storm)
        self.grouper = Grouper(self.config.grouping, self.directory)
        self.links = PanelLinks(self.config.grafana)
        self._lock = threading.RLock()
        self._dirty, self._saved_at = False, time.monotonic()
        self._empty()
        self.counters: dict[str, int] = {"events": 0, "events_replayed": 0, "events_bad": 0, "notifications": 0,
                                         "duplicates_suppressed": 0, "held_for_digest": 0, "muted": 0}
        self._flap_slot_ns = int(self.config.flapping.slot * SECOND_NS)
        self._flap_weights = [0.8 + 0.4 * i / (self.config.flapping.history - 1)
                              for i in range(self.config.flapping.history)]

    def _empty(self) -> None:
        self._tracks: dict[str, _Track] = {}
        self._resolved: dict[str, Alert] = {}  # resolved alerts whose resolution is still in a group buffer
        self._silences: dict[str, Silence] = {}
        self._audit: list[AuditRecord] = []
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._transitions: list[Transition] = []
        self._outbox: list[Notification] = []
        self._last_forget_ns = NEVER
        self._root_keys: set[str] = set()  # keys whose open alert may explain others
        self.event_now_ns: int = NEVER
        self.grouper.restore([])
        self.storm.restore({})

    # -- public: the engine ----------------------------------------------------------------------
    def ingest(self, events: Iterable["AlertEvent"], event_now_ns: int | None = None) -> list[Notification]:
        """Apply level changes (any order; sorted by event time here), then run what became due.
        Returns the notifications, already handed to the sink when there is one."""
        with self._lock:
            wall = self.clock()
            good = []
            for ev in events:
                try:
                    good.append(((int(ev.ts_ns), str(ev.sensor), str(ev.detector), str(ev.metric)), ev))
                except (AttributeError, TypeError, ValueError) as exc:
                    self.counters["events_bad"] += 1
                    log.warning("alert event ignored: %s: %r", exc, ev)
            for _, ev in sorted(good, key=lambda item: item[0]):
                try:
                    self._apply(ev, wall)
                except (AttributeError, TypeError, ValueError) as exc:
                    self.counters["events_bad"] += 1
                    log.warning("alert event ignored: %s: %r", exc, ev)
            if event_now_ns is not None:
                self.event_now_ns = max(self.event_now_ns, event_now_ns)
            self._housekeeping(wall)
            return self._finish()

    def tick(self, event_now_ns: int | None = None) -> list[Notification]:
        """Timers: for-durations, hold-downs and flapping decay (event time, advanced to `event_now_ns`),
        group waits, repeats, escalations and digests (wall clock)."""
        with self._lock:
            if event_now_ns is not None:
                self.event_now_ns = max(self.event_now_ns, event_now_ns)
            self._housekeeping(self.clock())
            return self._finish()

    def take_transitions(self) -> list[Transition]:
        with self._lock:
            out, self._transitions = self._transitions, []
            return out

    # -- public: people (the HTTP API and the MQTT command topic) --------------------------------
    def open_alerts(self) -> list[Alert]:
        with self._lock:
            wall = self.clock()
            out = []
            roots = self._roots()
            for t in self._tracks.values():
                if t.alert is not None:
                    self._refresh_mutes(t.alert, wall, roots)
                    out.append(_snapshot(t.alert))
            return sorted(out, key=lambda a: (a.started_ns, a.key))

    def open_count(self) -> int:
        with self._lock:
            return sum(1 for t in self._tracks.values() if t.alert is not None)

    def get(self, key: str) -> Alert | None:
        with self._lock:
            t = self._tracks.get(key)
            return _snapshot(t.alert) if t and t.alert else None

    def acknowledge(self, key: str, who: str, note: str | None = None) -> Alert:
        with self._lock:
            t = self._tracks.get(key)
            if t is None or t.alert is None:
                raise AlertNotFound(key)
            wall = self.clock()
            a = t.alert
            a.acked_by, a.acked_at_ns, a.ack_note = who, wall, note
            self._record(who, wall, "acknowledge", key, note or "")
            self._transitions.append(Transition(_snapshot(a), "acknowledged", wall, who, note or ""))
            self._save()
            return _snapshot(a)

    def add_silence(self, *, who: str, start_ns: int, end_ns: int, comment: str = "", sensor: str | None = None,
                    area: str | None = None, domain: str | None = None, rule: str | None = None,
                    metric: str | None = None, silence_id: str | None = None) -> Silence:
        with self._lock:
            wall = self.clock()
            s = Silence(id=silence_id or uuid.uuid4().hex[:12], start_ns=start_ns, end_ns=end_ns, created_by=who,
                        comment=comment, sensor=sensor, area=area, domain=domain, rule=rule, metric=metric,
                        created_at_ns=wall)
            self._silences[s.id] = s
            matchers = {k: v for k, v in (("sensor", sensor), ("area", area), ("domain", domain), ("rule", rule),
                                          ("metric", metric)) if v is not None}
            self._record(who, wall, "silence", s.id, f"{matchers} {start_ns}..{end_ns} {comment}".strip())
            for t in self._tracks.values():
                if t.alert is not None and s.matches_labels(t.alert):
                    before = t.alert.silenced_by
                    self._refresh_mutes(t.alert, wall)
                    if t.alert.silenced_by and not before:
                        self._transitions.append(Transition(_snapshot(t.alert), "silenced", wall, who, s.id))
            self._save()
            return copy.deepcopy(s)

    def remove_silence(self, silence_id: str, who: str) -> Silence:
        with self._lock:
            s = self._silences.pop(silence_id, None)
            if s is None:
                raise SilenceNotFound(silence_id)
            wall = self.clock()
            self._record(who, wall, "unsilence", silence_id, s.comment)
            for t in self._tracks.values():
                if t.alert is not None and t.alert.silenced_by == silence_id:
                    self._refresh_mutes(t.alert, wall)
                    if not t.alert.silenced_by:
                        self._transitions.append(Transition(_snapshot(t.alert), "unsilenced", wall, who, silence_id))
            self._save()
            return s

    def silences(self) -> list[Silence]:
        with self._lock:
            return [copy.deepcopy(s) for s in sorted(self._silences.values(), key=lambda s: (s.start_ns, s.id))]

    def audit(self) -> list[AuditRecord]:
        with self._lock:
            return list(self._audit)

    # -- level changes -----------------------------------------------------------------------------
    def _apply(self, ev: "AlertEvent", wall: int) -> None:
        ts = int(ev.ts_ns)
        scope = "area" if str(ev.sensor).startswith(AREA_PREFIX) else "sensor"
        key = alert_key(ev.sensor, ev.detector, ev.metric)
        t = self._tracks.get(key)
        if t is None:
            t = self._tracks[key] = _Track(key)
        if ts <= t.last_event_ns:
            self.counters["events_replayed"] += 1
            return
        self.counters["events"] += 1
        self.event_now_ns = max(self.event_now_ns, ts)
        t.last_event_ns = ts
        level = "ok" if ev.level in ("ok", "not_evaluated") else ev.level
        if level == t.level:
            return
        t.level = level
        self._note_change(t, ts, wall)
        active = level != "ok"
        severity = "warning" if level == "warning" else "critical"
        a = t.alert
        if active:
            t.clear_since_ns = None
            if a is None:
                a = t.alert = Alert(
                    key=key, scope=scope, sensor=None if scope == "area" else ev.sensor,
                    area=ev.area or str(ev.sensor)[len(AREA_PREFIX):], domain=ev.domain, metric=ev.metric,
                    rule=ev.detector, severity=severity, state="pending", value=float(ev.value),
                    threshold=ev.threshold, reason=ev.reason, started_ns=ts, last_ns=ts, flapping=t.flapping)
                a.panel_url = self.links.url(a)
                if a.rule in self.config.inhibition.source_rules:
                    self._root_keys.add(key)
                t.notified, t.told, t.tier, t.repeats = False, [], 0, 0
                t.first_notified_wall_ns = t.last_notified_wall_ns = None
                self._transitions.append(Transition(_snapshot(a), "pending", ts))
                if self.config.rule(a.rule).for_ <= 0:
                    self._fire(t, ts, wall)
            else:
                rising = a.severity == "warning" and severity == "critical"
                a.severity, a.value, a.threshold, a.reason, a.last_ns = (
                    severity, float(ev.value), ev.threshold, ev.reason, ts)
                a.resolved_ns = None
                if rising and a.state == "firing":
                    self._transitions.append(Transition(_snapshot(a), "firing", ts, detail="severity critical"))
                    if t.notified and not t.flapping:
                        t.notified = False  # told again, as a new firing at the higher severity
                        self._queue_firing(t, ts, wall)
        elif a is not None:
            a.value, a.last_ns = float(ev.value), ts
            if a.state == "pending":
                self._close(t, ts, notify=False, wall=wall)
            else:
                t.clear_since_ns = ts
                if self.config.rule(a.rule).resolve_for <= 0 and not t.flapping:
                    self._close(t, ts, notify=True, wall=wall)

    def _fire(self, t: _Track, at_ns: int, wall: int) -> None:
        a = t.alert
        assert a is not None
        a.state = "firing"
        self._transitions.append(Transition(_snapshot(a), "firing", at_ns))
        if t.flapping:
            self._announce_flapping(t, wall)
        else:
            self._queue_firing(t, at_ns, wall)

    def _queue_firing(self, t: _Track, at_ns: int, wall: int) -> None:
        a = t.alert
        assert a is not None
        self._refresh_mutes(a, wall)
        if a.muted:
            self.counters["muted"] += 1
            return
        self.grouper.add("firing", a, at_ns, wall)

    def _close(self, t: _Track, at_ns: int, notify: bool, wall: int) -> None:
        a = t.alert
        assert a is not None
        a.state = "resolved"
        a.resolved_ns = t.clear_since_ns if t.clear_since_ns is not None else at_ns
        t.alert, t.clear_since_ns = None, None
        self._transitions.append(Transition(_snapshot(a), "resolved", a.resolved_ns))
        if self.grouper.pending("firing", a.key):
            self.grouper.discard(a.key)  # nobody was told it fired: nobody needs to hear it ended
        if notify and t.notified and t.told:
            self._resolved[a.key] = a
            self.grouper.add("resolved", a, a.resolved_ns, wall)

    # -- flapping ------------------------------------------------------------------------------------
    def _flap_percent(self, t: _Track, now_ns: int) -> float:
        cfg = self.config.flapping
        now_slot = now_ns // self._flap_slot_ns
        first_slot = (t.first_change_ns or now_ns) // self._flap_slot_ns
        start = max(first_slot, now_slot - cfg.history + 1)
        n = int(now_slot - start + 1)
        if n <= 0:
            return 0.0
        weights = self._flap_weights[cfg.history - n:]
        changed = {c // self._flap_slot_ns for c in t.changes if c // self._flap_slot_ns >= start}
        num = sum(weights[int(s - start)] for s in changed if s - start < n)
        return 100.0 * num / sum(weights)

    def _note_change(self, t: _Track, ts: int, wall: int) -> None:
        cfg = self.config.flapping
        if t.first_change_ns is None:
            t.first_change_ns = ts
        t.changes.append(ts)
        horizon = ts - cfg.history * self._flap_slot_ns
        t.changes = [c for c in t.changes if c > horizon]
        if cfg.enabled and not t.flapping and len(t.changes) >= cfg.min_changes \
                and self._flap_percent(t, ts) >= cfg.high:
            t.flapping, t.flap_started_ns = True, ts
            a = t.alert
            if a is not None:
                a.flapping = True
                self._transitions.append(Transition(_snapshot(a), "flapping", ts))
                if a.state == "firing":
                    self._announce_flapping(t, wall)

    def _announce_flapping(self, t: _Track, wall: int) -> None:
        """One "flapping" notification per alert, instead of its per-change ones (damping)."""
        a = t.alert
        assert a is not None
        self._refresh_mutes(a, wall)
        if a.muted:
            return
        self.grouper.discard(a.key)
        self._send_each("flapping", self._recipients_for(a, t, wall), [a], a.key, a.started_ns, t, wall)
        t.notified = True

    def _flap_decay(self, t: _Track, now_ns: int) -> None:
        if t.flapping and self._flap_percent(t, now_ns) < self.config.flapping.low:
            t.flapping = False
            if t.alert is not None:
                t.alert.flapping = False
                self._transitions.append(Transition(_snapshot(t.alert), "flapping_stopped", now_ns))

    # -- timers ------------------------------------------------------------------------------------
    def _housekeeping(self, wall: int) -> None:
        now = self.event_now_ns
        for t in list(self._tracks.values()):
            self._flap_decay(t, now)
            a = t.alert
            if a is None:
                continue
            rule = self.config.rule(a.rule)
            if a.state == "pending" and t.level != "ok" and now - a.started_ns >= rule.for_ * SECOND_NS:
                self._fire(t, a.started_ns + int(rule.for_ * SECOND_NS), wall)
            elif (a.state == "firing" and t.clear_since_ns is not None and not t.flapping
                  and now - t.clear_since_ns >= rule.resolve_for * SECOND_NS):
                self._close(t, now, notify=True, wall=wall)
        self._derive_area_offline(wall)
        self._forget_old(wall)
        for buf in self.grouper.due(now, wall):
            self._flush(buf, wall)
        self._reminders(wall)
        for name, since, alerts in self.storm.due_digests(wall):
            r = self.router.recipient(name)
            if r is not None:
                self._make("digest", r, alerts, f"digest:{name}", since, wall)

    def _forget_old(self, wall: int) -> None:
        """Drop keys quiet for `forget_after` of event time, and silences that ended that long ago."""
        horizon = int(self.config.forget_after * SECOND_NS)
        if wall - self._last_forget_ns < 60 * SECOND_NS:
            return
        self._last_forget_ns = wall
        quiet = [k for k, t in self._tracks.items() if t.alert is None and not t.flapping
                 and t.last_event_ns < self.event_now_ns - horizon and k not in self._resolved]
        for k in quiet:
            del self._tracks[k]
        for sid in [sid for sid, s in self._silences.items() if s.end_ns < min(wall, self.event_now_ns) - horizon]:
            del self._silences[sid]

    def _derive_area_offline(self, wall: int) -> None:
        if not self.config.inhibition.enabled:
            return
        opened = [t.alert for t in self._tracks.values() if t.alert is not None]
        offline = offline_areas(opened, self.directory, self.config.inhibition)
        for area, members in offline.items():
            key = area_offline_key(area)
            t = self._tracks.setdefault(key, _Track(key))
            if t.alert is None:
                # it went offline when the sensor that made the count went offline
                need = offline_need(area, self.directory, self.config.inhibition, len(members))
                started = members[min(need, len(members)) - 1].started_ns
                t.alert = Alert(key=key, scope="area", sensor=None, area=area, domain=members[0].domain,
                                metric=OFFLINE_METRIC, rule=OFFLINE_RULE, severity="critical", state="pending",
                                value=float(len(members)), threshold=None, reason="offline", started_ns=started,
                                sensors=[m.sensor for m in members if m.sensor])
                t.alert.panel_url = self.links.url(t.alert)
                self._root_keys.add(key)
                t.level, t.notified, t.told, t.tier, t.repeats = "critical", False, [], 0, 0
                t.first_notified_wall_ns = t.last_notified_wall_ns = None
                self._transitions.append(Transition(_snapshot(t.alert), "pending", started))
                self._fire(t, started, wall)
            else:
                t.alert.sensors = [m.sensor for m in members if m.sensor]
                t.alert.value = float(len(members))
        for t in list(self._tracks.values()):
            a = t.alert
            if a is not None and a.scope == "area" and a.rule == OFFLINE_RULE and a.metric == OFFLINE_METRIC \
                    and a.area not in offline:
                t.level = "ok"
                t.clear_since_ns = self.event_now_ns
                self._close(t, self.event_now_ns, notify=True, wall=wall)

    def _reminders(self, wall: int) -> None:
        """Escalations and repeats that are due. Those due at the same pass for the same recipient go
        out as one message listing the alerts (an unacknowledged incident escalates as one)."""
        repeat_ns = int(self.config.repeat_interval * SECOND_NS)
        roots = self._roots()
        batches: dict[tuple[str, str], tuple[Recipient, list[tuple[Alert, str, int]]]] = {}
        for t in list(self._tracks.values()):
            a = t.alert
            if a is None or a.state != "firing":
                continue
            self._refresh_mutes(a, wall, roots)
            if not t.notified:
                if not a.muted and not t.flapping and not self.grouper.pending("firing", a.key):
                    self.grouper.add("firing", a, self.event_now_ns, wall)  # its silence or root alert ended
                continue
            if a.acknowledged or a.muted or t.first_notified_wall_ns is None:
                continue
            nxt = t.tier + 1
            after = self.router.tier_after(nxt, domain=a.domain, severity=a.severity, area=a.area, rule=a.rule,
                                           wall_ns=wall)
            if after is not None and wall - t.first_notified_wall_ns >= after * SECOND_NS:
                t.tier = nxt
                self._transitions.append(Transition(_snapshot(a), "escalated", wall, detail=f"tier {nxt}"))
                kind, recipients, seq = "escalation", self.router.for_alert(a, nxt, wall), f"{a.started_ns}:{nxt}"
            elif (repeat_ns > 0 and not t.flapping and t.last_notified_wall_ns is not None
                    and wall - t.last_notified_wall_ns >= repeat_ns):
                t.repeats += 1
                kind, seq = "repeat", f"{a.started_ns}:{t.repeats}"
                recipients = [r for r in (self.router.recipient(n) for n in t.told) if r is not None]
            else:
                continue
            for r in recipients:
                batches.setdefault((kind, r.name), (r, []))[1].append((a, seq, t.tier))
                if r.name not in t.told:
                    t.told.append(r.name)
            t.last_notified_wall_ns = wall
        for (kind, _), (r, items) in batches.items():
            members = [a for a, _, _ in items]
            seq = items[0][1] if len(items) == 1 else hashlib.blake2b(
                "\x1f".join(sorted(f"{a.key}={s}" for a, s, _ in items)).encode(), digest_size=6).hexdigest()
            self._make(kind, r, members, group_key(members), seq, wall, tier=max(tier for _, _, tier in items))

    # -- muting ------------------------------------------------------------------------------------
    def _roots(self) -> list[Alert]:
        """Open alerts that may explain others (offline sensors and areas)."""
        rules = self.config.inhibition.source_rules
        roots = []
        for key in list(self._root_keys):
            t = self._tracks.get(key)
            if t is None or t.alert is None or t.alert.rule not in rules:
                self._root_keys.discard(key)
            else:
                roots.append(t.alert)
        return roots

    def _refresh_mutes(self, a: Alert, wall: int, roots: list[Alert] | None = None) -> None:
        # In force now (wall clock), or covering the alert's reading time and not yet over (in wall
        # clock and in event time): once a window is over, an alert still open is reported.
        ended_before = min(wall, self.event_now_ns)
        a.silenced_by = next((s.id for s in self._silences.values() if s.matches_labels(a) and (
            s.covers(wall) or (s.covers(a.last_ns) and s.end_ns > ended_before))), None)
        a.inhibited_by = None
        if self.config.inhibition.enabled:
            rules = self.config.inhibition.source_rules
            for root in self._roots() if roots is None else roots:
                if explains(root, a, rules):
                    # an area root outranks a sensor root; either mutes the alert
                    if a.inhibited_by is None or root.scope == "area":
                        a.inhibited_by = root.key

    # -- sending -----------------------------------------------------------------------------------
    def _recipients_for(self, a: Alert, t: _Track, wall: int) -> list[Recipient]:
        names = set()
        out = []
        for tier in range(t.tier + 1):
            for r in self.router.for_alert(a, tier, wall):
                if r.name not in names:
                    names.add(r.name)
                    out.append(r)
        for n in t.told:
            r = self.router.recipient(n)
            if r is not None and n not in names:
                names.add(n)
                out.append(r)
        return out

    def _flush(self, buf: GroupBuffer, wall: int) -> None:
        if buf.kind == "firing":
            alerts = []
            roots = self._roots()
            for key in buf.keys:
                t = self._tracks.get(key)
                if t is None or t.alert is None or t.alert.state != "firing" or t.flapping or t.notified:
                    continue
                self._refresh_mutes(t.alert, wall, roots)
                if t.alert.muted:
                    self.counters["muted"] += 1
                    continue
                alerts.append(t.alert)
            by_recipient: dict[str, tuple[Recipient, list[Alert]]] = {}
            for a in alerts:
                for r in self.router.for_alert(a, 0, wall):
                    by_recipient.setdefault(r.name, (r, []))[1].append(a)
            for r, members in by_recipient.values():
                # the sequence: when it started, at which severity (a rise to critical is news)
                worst = "critical" if any(a.severity == "critical" for a in members) else "warning"
                self._make("firing", r, members, group_key(members), f"{min(a.started_ns for a in members)}:{worst}",
                           wall)
            for a in alerts:
                t = self._tracks[a.key]
                t.notified = True
                t.first_notified_wall_ns = t.first_notified_wall_ns or wall
                t.last_notified_wall_ns = wall
                t.told = sorted(set(t.told) | {r.name for r, m in by_recipient.values() if a in m})
            return
        resolved = [self._resolved.pop(k) for k in buf.keys if k in self._resolved]
        by_recipient = {}
        for a in resolved:
            t = self._tracks.get(a.key)
            for name in (t.told if t else []):
                r = self.router.recipient(name)
                if r is not None:
                    by_recipient.setdefault(name, (r, []))[1].append(a)
        for r, members in by_recipient.values():
            self._make("resolved", r, members, group_key(members), min(a.started_ns for a in members), wall)
        for a in resolved:
            t = self._tracks.get(a.key)
            if t is not None and t.alert is None:
                t.told, t.notified = [], False

    def _send_each(self, kind: str, recipients: list[Recipient], alerts: list[Alert], key: str, seq: Any,
                   t: _Track, wall: int) -> None:
        for r in recipients:
            self._make(kind, r, alerts, key, seq, wall, tier=t.tier)
            if r.name not in t.told:
                t.told.append(r.name)
        t.last_notified_wall_ns = wall
        if t.first_notified_wall_ns is None:
            t.first_notified_wall_ns = wall

    def _make(self, kind: str, r: Recipient, alerts: list[Alert], key: str, seq: Any, wall: int,
              tier: int = 0) -> Notification | None:
        nid = notification_id(key, kind, seq, r.name)
        if nid in self._sent:
            self.counters["duplicates_suppressed"] += 1
            return None
        self._sent[nid] = None
        while len(self._sent) > self.config.keep_sent_ids:
            self._sent.popitem(last=False)
        if kind != "digest" and not self.storm.admit(r.name, alerts, wall):
            self.counters["held_for_digest"] += 1
            return None
        for a in alerts:
            a.notifications += 1
        self.counters["notifications"] += 1
        n = Notification(id=nid, kind=kind, recipient=r, alerts=[_snapshot(a) for a in alerts], created_ns=wall,
                         group_key=key, tier=tier)
        self._outbox.append(n)
        return n

    def _finish(self) -> list[Notification]:
        notifications, self._outbox = self._outbox, []
        if notifications and self.sink is not None:
            try:
                self.sink.deliver(notifications)
            except Exception:  # the sink owns retries; a failure here must not stop the engine
                log.exception("notification sink failed")
        if notifications:
            self._save()  # before anything else happens: what was handed to the sink is never sent again
        elif self._transitions or self._dirty:
            self._dirty = True  # the rest is replayed identically after a crash: saved at most every save_interval
            if time.monotonic() - self._saved_at >= self.config.save_interval:
                self._save()
        return notifications

    # -- audit and persistence ---------------------------------------------------------------------
    def _record(self, who: str, when: int, action: str, target: str, detail: str) -> None:
        self._audit.append(AuditRecord(who=who, when_ns=when, action=action, target=target, detail=detail))
        if len(self._audit) > self.config.keep_audit:
            del self._audit[: len(self._audit) - self.config.keep_audit]

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "event_now_ns": self.event_now_ns,
                "tracks": [t.to_dict() for t in self._tracks.values()],
                "resolved": [a.to_dict() for a in self._resolved.values()],
                "silences": [s.to_dict() for s in self._silences.values()],
                "audit": [r.to_dict() for r in self._audit],
                "sent": list(self._sent),
                "groups": self.grouper.to_list(),
                "storm": self.storm.to_dict(),
            }

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            if state.get("version") != 1:
                raise ValueError(f"alert state: unknown version {state.get('version')!r}")
            self.event_now_ns = int(state["event_now_ns"])
            self._tracks = {d["key"]: _Track.from_dict(d) for d in state["tracks"]}
            self._root_keys = {k for k, t in self._tracks.items() if t.alert is not None}  # pruned by _roots()
            self._resolved = {d["key"]: Alert.from_dict(d) for d in state["resolved"]}
            self._silences = {d["id"]: Silence.from_dict(d) for d in state["silences"]}
            self._audit = [AuditRecord.from_dict(d) for d in state["audit"]]
            self._sent = OrderedDict((i, None) for i in state["sent"])
            self.grouper.restore(state["groups"])
            self.storm.restore(state["storm"])

    def _save(self) -> None:
        if self.state_file is not None:
            write_state_atomic(self.state_file, self.state_dict())
        self._dirty, self._saved_at = False, time.monotonic()

    def save(self) -> None:
        with self._lock:
            self._save()

    def load(self) -> bool:
        """Restore from the state file; False when there is none yet."""
        if self.state_file is None:
            return False
        state = read_state(self.state_file)
        if state is None:
            return False
        try:
            self.restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            set_aside(self.state_file, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._empty()
            return False
        return True
