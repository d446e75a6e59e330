"""Routing to a duty rota, escalation tiers and storm control.

A *route* matches alerts by domain, severity, area and rule, and by the local time of day and day of
the week (Asia/Ho_Chi_Minh: the rota of the operations centre) at the moment a message is sent. Its
*tiers* say who is told: tier 0 at once, tier 1 when the alert is still unacknowledged `after` the
first notification, and so on. Routes are tried in order; the first that matches wins, unless it says
`continue: true`, in which case later matching routes add their recipients too (a rota plus an
always-on log channel, for instance).

*Storm control* caps the messages one recipient gets per window; what comes beyond the cap is held
and sent as one digest when the window has room again, so an incident across fifty sensors cannot
bury a phone.

>>> import yaml
>>> cfg = RoutingConfig.model_validate(yaml.safe_load(SAMPLE_CONFIG)["alerting"]["routing"])
>>> router = Router(cfg)
>>> night = 1_764_277_200_000_000_000  # 2025-11-27 21:00 UTC = 04:00 local
>>> [r.name for r in router.recipients(domain="air", severity="critical", area="tan-phong", rule="threshold",
...                                     tier=0, wall_ns=night)]
['night-desk', 'ops-log']
>>> router.tier_count(domain="air", severity="critical", area="tan-phong", rule="threshold", wall_ns=night)
2
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from citywatch.config import Duration, StrictModel
from citywatch.alerting.model import Alert, Recipient

SAMPLE_CONFIG = """\
alerting:
  routing:
    timezone: Asia/Ho_Chi_Minh
    recipients:
      duty-officer: {channel: mqtt, address: city/notifications/duty-officer, language: vi}
      night-desk:   {channel: telegram, address: "-1001234567890", language: vi}
      shift-lead:   {channel: email, address: truongca@example.org, language: vi}
      ops-log:      {channel: webhook, address: "https://ops.example.org/hooks/citywatch", language: en}
    routes:
      - match: {hours: "22:00-06:00"}          # night shift, every domain
        tiers:
          - {after: 0s, recipients: [night-desk]}
          - {after: 15m, recipients: [shift-lead]}   # still unacknowledged after 15 minutes
        continue: true
      - match: {severities: [critical]}
        tiers:
          - {after: 0s, recipients: [ops-log]}
      - tiers:                                 # everything else: the day desk
          - {after: 0s, recipients: [duty-officer]}
          - {after: 30m, recipients: [shift-lead]}
  storm:
    window: 10m                 # at most max_per_window messages per recipient in any such window
    max_per_window: 10          # beyond it, alerts are held and sent as one digest
"""

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _parse_hhmm(text: str) -> dt.time:
    try:
        hh, mm = text.strip().split(":")
        return dt.time(int(hh), int(mm))
    except ValueError:
        raise ValueError(f"not a time of day: {text!r} (use HH:MM)") from None


class RecipientConfig(StrictModel):
    channel: str = "mqtt"
    address: str
    language: Literal["vi", "en"] = "vi"


class RouteMatch(StrictModel):
    domains: list[str] | None = None
    severities: list[Literal["warning", "critical"]] | None = None
    areas: list[str] | None = None
    rules: list[str] | None = None
    hours: str | None = None  # "HH:MM-HH:MM" local time; may wrap past midnight ("22:00-06:00")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.split("-")
        if len(parts) != 2:
            raise ValueError(f"hours must look like '22:00-06:00', got {v!r}")
        start, end = (_parse_hhmm(p) for p in parts)
        if start == end:
            raise ValueError("hours: start and end are the same; leave hours out to match all day")
        return v

    def matches(self, domain: str, severity: str, area: str, rule: str, local: dt.datetime) -> bool:
        for allowed, value in ((self.domains, domain), (self.severities, severity), (self.areas, area),
                               (self.rules, rule)):
            if allowed is not None and value not in allowed:
                return False
        if self.days is not None and WEEKDAYS[local.weekday()] not in self.days:
            return False
        if self.hours is not None:
            start, end = (_parse_hhmm(p) for p in self.hours.split("-"))
            now = local.time()
            inside = start <= now < end if start < end else (now >= start or now < end)
            if not inside:
                return False
        return True


class Tier(StrictModel):
    after: Duration = 0.0  # since the first notification of the alert, while unacknowledged
    recipients: list[str] = Field(min_length=1)


class Route(StrictModel):
    match: RouteMatch = Field(default_factory=RouteMatch)
    tiers: list[Tier] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _ordered(self) -> "Route":
        afters = [t.after for t in self.tiers]
        if afters != sorted(afters) or afters[0] != 0:
            raise ValueError("tiers: the first tier starts at 0s and each later tier comes later")
        return self


def _default_recipients() -> dict[str, RecipientConfig]:
    return {"duty-officer": RecipientConfig(channel="mqtt", address="city/notifications/duty-officer", language="vi")}


def _default_routes() -> list[Route]:
    return [Route(tiers=[Tier(after=0.0, recipients=["duty-officer"])])]


class RoutingConfig(StrictModel):
    timezone: str = "Asia/Ho_Chi_Minh"
    recipients: dict[str, RecipientConfig] = Field(default_factory=_default_recipients)
    routes: list[Route] = Field(default_factory=_default_routes, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "RoutingConfig":
        ZoneInfo(self.timezone)
        for i, route in enumerate(self.routes):
            for tier in route.tiers:
                unknown = [r for r in tier.recipients if r not in self.recipients]
                if unknown:
                    raise ValueError(f"routes[{i}]: unknown recipient(s) {unknown}; define them under recipients")
        return self


class StormConfig(StrictModel):
    window: Duration = 600.0
    max_per_window: int = Field(default=10, ge=1)


class Router:
    """Recipients of an alert for an escalation tier, at a wall-clock time."""

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self.tz = ZoneInfo(config.timezone)
        self._recipients = {name: Recipient(name, c.channel, c.address, c.language)
                            for name, c in config.recipients.items()}

    def recipient(self, name: str) -> Recipient | None:
        return self._recipients.get(name)

    def routes(self, *, domain: str, severity: str, area: str, rule: str, wall_ns: int) -> list[Route]:
        local = dt.datetime.fromtimestamp(wall_ns / 1e9, tz=self.tz)
        chosen: list[Route] = []
        for route in self.config.routes:
            if route.match.matches(domain, severity, area, rule, local):
                chosen.append(route)
                if not route.continue_:
                    break
        return chosen

    def tier_count(self, *, domain: str, severity: str, area: str, rule: str, wall_ns: int) -> int:
        return max((len(r.tiers) for r in self.routes(domain=domain, severity=severity, area=area, rule=rule,
                                                       wall_ns=wall_ns)), default=0)

    def tier_after(self, tier: int, *, domain: str, severity: str, area: str, rule: str, wall_ns: int) -> float | None:
        """Seconds after the first notification at which `tier` is due (None: no such tier)."""
        afters = [r.tiers[tier].after for r in self.routes(domain=domain, severity=severity, area=area, rule=rule,
                                                            wall_ns=wall_ns) if tier < len(r.tiers)]
        return min(afters) if afters else None

    def recipients(self, *, domain: str, severity: str, area: str, rule: str, tier: int,
                   wall_ns: int) -> list[Recipient]:
        seen: dict[str, Recipient] = {}
        for route in self.routes(domain=domain, severity=severity, area=area, rule=rule, wall_ns=wall_ns):
            if tier < len(route.tiers):
                for name in route.tiers[tier].recipients:
                    seen.setdefault(name, self._recipients[name])
        return list(seen.values())

    def for_alert(self, alert: Alert, tier: int, wall_ns: int) -> list[Recipient]:
        return self.recipients(domain=alert.domain, severity=alert.severity, area=alert.area, rule=alert.rule,
                               tier=tier, wall_ns=wall_ns)


@dataclass
class _RecipientWindow:
    sent: deque[int] = field(default_factory=deque)  # wall times of messages in the current window
    held: dict[str, Alert] = field(default_factory=dict)  # alert key -> latest snapshot, for the digest
    held_since_ns: int | None = None


class StormControl:
    """Per-recipient message cap over a sliding window; what exceeds it waits for a digest."""

    def __init__(self, config: StormConfig) -> None:
        self.window_ns = int(config.window * 1e9)
        self.cap = config.max_per_window
        self._windows: dict[str, _RecipientWindow] = {}

    def _trim(self, w: _RecipientWindow, now_ns: int) -> None:
        while w.sent and w.sent[0] <= now_ns - self.window_ns:
            w.sent.popleft()

    def admit(self, recipient: str, alerts: list[Alert], now_ns: int) -> bool:
        """True if a message may go now (and count it); False if its alerts were held for the digest."""
        w = self._windows.setdefault(recipient, _RecipientWindow())
        self._trim(w, now_ns)
        if len(w.sent) < self.cap and not w.held:
            w.sent.append(now_ns)
            return True
        if w.held_since_ns is None:
            w.held_since_ns = now_ns
        for a in alerts:
            w.held[a.key] = a
        return False

    def due_digests(self, now_ns: int) -> list[tuple[str, int, list[Alert]]]:
        """(recipient, held since, alerts) for every recipient whose window has room again."""
        out = []
        for name, w in self._windows.items():
            self._trim(w, now_ns)
            if w.held and len(w.sent) < self.cap:
                out.append((name, w.held_since_ns or now_ns, list(w.held.values())))
                w.sent.append(now_ns)
                w.held = {}
                w.held_since_ns = None
        return out

    def held(self, recipient: str) -> list[Alert]:
        w = self._windows.get(recipient)
        return list(w.held.values()) if w else []

    def to_dict(self) -> dict[str, Any]:
        return {name: {"sent": list(w.sent), "held": [a.to_dict() for a in w.held.values()],
                       "held_since_ns": w.held_since_ns} for name, w in self._windows.items()}

    def restore(self, data: dict[str, Any]) -> None:
        self._windows = {}
        for name, d in data.items():
            held = [Alert.from_dict(a) for a in d.get("held", [])]
            self._windows[name] = _RecipientWindow(deque(d.get("sent", [])), {a.key: a for a in held},
                                                   d.get("held_since_ns"))
