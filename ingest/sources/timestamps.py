"""Timestamps of device messages: a priority list of fields, several formats, a zone for local times.

`SourceClock.resolve(record, doc, arrival_ns)` returns ``(ts_ns, from_arrival)``:

* the first of `TimestampRule.fields` present (and not null) in the record, else in the whole
  document, is parsed with the first of `formats` that reads it: ``epoch`` (s/ms/us/ns by magnitude,
  see `citywatch.ingest.payloads.timestamp_ns`), ``rfc3339`` (with Z or an offset), ``local``
  (ISO 8601 without an offset, read in `timezone`: Tasmota's ``"Time": "2024-06-01T19:00:00"``),
  or a strptime pattern (in `timezone` unless the pattern has ``%z``);
* no field, or no format reads it, or the time is implausible (after arrival + ``max_future`` or
  before arrival - ``max_past``, a device whose clock was never set): the arrival time, and
  ``from_arrival`` is True so the reading is flagged. `fallbacks` counts why.

    >>> from citywatch.ingest.sources.profile import TimestampRule
    >>> clock = SourceClock(TimestampRule(fields=["Time"], timezone="Asia/Ho_Chi_Minh"))
    >>> arrival = 1717243230 * 10**9                       # 2024-06-01T12:00:30Z
    >>> clock.resolve({"Time": "2024-06-01T19:00:00"}, None, arrival)   # 19:00 in Vietnam = 12:00Z
    (1717243200000000000, False)
    >>> clock.resolve({"Time": "2031-01-01T00:00:00"}, None, arrival)   # implausible: arrival time
    (1717243230000000000, True)
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

from citywatch.ingest.payloads import TimestampError, timestamp_ns
from citywatch.ingest.sources.profile import TimestampRule
from citywatch.ingest.sources.selectors import Selector

__all__ = ["SourceClock"]

_EPOCH = datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))


class SourceClock:
    def __init__(self, rule: TimestampRule) -> None:
        self.rule = rule
        self.fields = [Selector(f) for f in rule.fields]
        self.zone = ZoneInfo(rule.timezone)
        self.max_future_ns = int(rule.max_future * 1e9)
        self.max_past_ns = int(rule.max_past * 1e9)
        self.fallbacks: Counter[str] = Counter()  # missing / unreadable / implausible

    def parse(self, raw: object) -> int | None:
        """ns since the epoch, or None when no format reads `raw`."""
        for fmt in self.rule.formats:
            try:
                if fmt == "epoch":
                    if type(raw) in (int, float):
                        return timestamp_ns(raw)
                    if type(raw) is str and raw.strip().replace(".", "", 1).isdigit():
                        return timestamp_ns(float(raw) if "." in raw else int(raw))
                elif fmt == "rfc3339":
                    if type(raw) is str:
                        return timestamp_ns(raw.strip())
                elif type(raw) is str:
                    text = raw.strip()
                    dt = datetime.fromisoformat(text) if fmt == "local" else datetime.strptime(text, fmt)
                    if dt.tzinfo is None:
                        dt = dt.replace(tzinfo=self.zone)
                    elif fmt == "local":
                        continue  # an offset is rfc3339's business
                    delta = dt - _EPOCH
                    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
            except (TimestampError, ValueError, OverflowError):
                continue
        return None

    def plausible(self, ts_ns: int, arrival_ns: int) -> bool:
        return arrival_ns - self.max_past_ns <= ts_ns <= arrival_ns + self.max_future_ns

    def resolve(self, record: object, doc: object, arrival_ns: int) -> tuple[int, bool]:
        raw = None
        for sel in self.fields:
            raw = sel.first(record)
            if raw is None and doc is not None and doc is not record:
                raw = sel.first(doc)
            if raw is not None:
                break
        if raw is None:
            if self.fields:
                self.fallbacks["missing"] += 1
            return arrival_ns, True
        ts = self.parse(raw)
        if ts is None:
            self.fallbacks["unreadable"] += 1
            return arrival_ns, True
        return self.check(ts, arrival_ns)

    def check(self, ts_ns: int, arrival_ns: int) -> tuple[int, bool]:
        """A decoder's own timestamp through the plausibility window."""
        if self.plausible(ts_ns, arrival_ns):
            return ts_ns, False
        self.fallbacks["implausible"] += 1
        return arrival_ns, True
