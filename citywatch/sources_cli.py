"""`citywatch sources test` and `citywatch sources list`: onboard a device without restarting the engine.

``sources test`` runs messages through one family's source profile and the engine's validation,
exactly as the engine would process them (same `SourceMapper`, same `Validator`, the config's
registry and validation limits), and prints what would be stored: readings in the registry's unit,
health fields, availability, and every rejection with its reason (an unknown device gets the
``source:`` entry to add to its registry sensor). Nothing is published or written.

* ``--payload FILE`` is read as bytes (JSON, plain text or Sparkplug B protobuf; ``-`` is stdin);
  with ``--text`` the ``--payload`` values are the message bodies themselves (``--text --payload
  Online``).
* ``--payload`` may be repeated: the messages go through one mapper in order, so stateful families
  work (a Sparkplug NBIRTH, DBIRTH, then DDATA; a Sparkplug DATA before its BIRTH is rejected with
  the decoder's reason). ``--topic`` is given once for all payloads, or once per payload.
* ``--arrival`` fixes the arrival time (default: now), which decides arrival-time fallbacks and the
  plausibility windows; messages are taken to arrive 1 ms apart.
* Frigate counts are emitted when an interval closes. After the messages, the wall clock is moved
  to the last arrival + ``interval_s`` + ``grace_s``, as the engine's clock would move with no
  further events, so every interval up to the one holding the last arrival closes and shows (a
  true 0 for an interval without vehicles while Frigate is online). Give ``--arrival`` after the
  events' frame times.

Exit status: 0 when something came out (a reading, health or availability) and nothing was
rejected; 1 when a message was rejected or nothing came out; 2 on usage errors.

``sources list`` prints the configured profiles: family, topic filters and their kinds, the metric
table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from citywatch.batch import FLAG_TS_FROM_ARRIVAL
from citywatch.config import ConfigError, Settings, load_settings
from citywatch.ingest.sources.mapper import MappedRecord, SourceMapper, load_profiles
from citywatch.ingest.sources.profile import SourceProfile
from citywatch.ingest.sources.topic_filter import TopicFilter
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Rejection, Validator
from citywatch.registry import Registry, SeriesIndex
from citywatch.stats import Stats

__all__ = ["add_arguments", "run", "try_messages", "describe_profiles"]

_NS = 1_000_000_000
_MESSAGE_SPACING_NS = 1_000_000
# Counters of the mapping layer worth showing to whoever onboards a device (keys skipped, values missing ...).
_COUNTER_PREFIXES = ("source_unmapped", "source_missing", "source_ts_", "source_ignored", "counter_",
                     "source_unknown_devices")


class UsageError(Exception):
    """A command line that cannot run (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sources_command", required=True, metavar="SUBCOMMAND")
    t = sub.add_parser(
        "test", help="show what a device message maps to (readings, health, availability, rejections)",
        description="Run device messages through one family's source profile and the engine's validation, and "
                    "print the readings they become (or why they are rejected). Nothing is published or stored. "
                    "Repeat --payload for a sequence (e.g. Sparkplug NBIRTH, DBIRTH, DDATA).")
    _config_arg(t)
    t.add_argument("--family", "-f", default=None,
                   help="the source family whose configured profile(s) to use, e.g. tasmota")
    t.add_argument("--profile", type=Path, default=None,
                   help="a profile YAML file to use instead of the configured ones (a profile you are writing)")
    t.add_argument("--topic", "-t", action="append", required=True,
                   help="the MQTT topic; once for all payloads or once per --payload")
    t.add_argument("--payload", "-p", action="append", required=True,
                   help="file holding the message body as published (JSON, text, protobuf; '-' = stdin); repeat "
                        "for a sequence processed in order")
    t.add_argument("--text", action="store_true", help="the --payload values are the message bodies, not files")
    t.add_argument("--arrival", default=None,
                   help="arrival time of the (first) message, RFC 3339 with offset, e.g. 2026-11-27T14:06:00Z "
                        "(default: now)")
    t.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")

    ls = sub.add_parser("list", help="list the configured source profiles",
                        description="List the configured device source profiles: family, topic filters and what "
                                    "each carries, the metric table.")
    _config_arg(ls)
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="config file (default: $CITYWATCH_CONFIG, ./config/citywatch.yaml, or the packaged sample)")


def run(args: argparse.Namespace) -> int:
    from citywatch.cli import setup_logging

    setup_logging("warning")  # decoders' debug lines would mix with the report (stdout stays the report's)
    try:
        if args.sources_command == "list":
            return _run_list(args)
        return _run_test(args)
    except (UsageError, ConfigError) as exc:
        print(f"citywatch sources {args.sources_command}: {exc}", file=sys.stderr)
        return 2


# -- sources test ------------------------------------------------------------------------------------

class _RecordingMapper(SourceMapper):
    """The engine's mapper, keeping what it made of each message for the report."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.records: list[MappedRecord] = []
        self.claimed = False

    def map(self, topic: str, payload: bytes, arrival_ns: int) -> list[MappedRecord] | None:
        out = super().map(topic, payload, arrival_ns)
        self.claimed = out is not None
        if out:
            self.records.extend(out)
        return out


@dataclass
class SourceTestReport:
    family: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    readings: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    availability: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.readings or self.health or self.availability) and not self.rejections

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "ok": self.ok, "messages": self.messages, "readings": self.readings,
                "health": self.health, "availability": self.availability, "rejections": self.rejections,
                "commands": self.commands, "counters": self.counters}


def rfc3339(ns: int) -> str:
    """UTC RFC 3339 with only the fractional digits the time has (…:00Z, …:00.123Z, …:00.123456789Z)."""
    secs, frac = divmod(int(ns), _NS)
    text = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def _parse_arrival(text: str | None) -> int:
    if text is None:
        import time

        return time.time_ns()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--arrival {text!r} is not an RFC 3339 time such as 2026-11-27T14:06:00Z") from None
    if when.tzinfo is None:
        raise UsageError(f"--arrival {text!r} has no offset: add Z or +07:00")
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000


def _read_payloads(values: list[str], as_text: bool) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for value in values:
        if as_text:
            out.append((repr(value), value.encode("utf-8")))
        elif value == "-":
            out.append(("<stdin>", sys.stdin.buffer.read()))
        else:
            try:
                out.append((value, Path(value).read_bytes()))
            except OSError as exc:
                raise UsageError(f"--payload {value}: {exc.strerror or exc}") from None
    return out


def _profiles_for(settings: Settings, family: str | None, profile_file: Path | None) -> list[SourceProfile]:
    if profile_file is not None:
        if profile_file.suffix not in (".yaml", ".yml"):
            raise UsageError(f"--profile {profile_file}: a profile is a .yaml or .yml file")
        if not profile_file.is_file():
            raise UsageError(f"--profile {profile_file}: no such file")
        profiles = load_profiles([str(profile_file)])
        if family is not None and profiles[0].family != family:
            raise UsageError(f"--profile {profile_file} is family {profiles[0].family!r}, not {family!r}")
        return profiles
    if family is None:
        raise UsageError("give --family (or --profile FILE)")
    configured = load_profiles(settings.sources.profiles, settings.base_dir)
    chosen = [p for p in configured if p.family == family]
    if not chosen:
        families = sorted({p.family for p in configured})
        raise UsageError(f"no source profile of family {family!r} in the config; configured families: "
                         + (", ".join(families) if families else "none (sources.profiles is empty)"))
    return chosen


def _rule_for(profiles: list[SourceProfile], topic: str) -> dict[str, Any] | None:
    """The topic rule that claims `topic` (the mapper's order: profiles, then their rules)."""
    for prof in profiles:
        for rule in prof.topics:
            caps = TopicFilter(rule.filter).match(topic)
            if caps is not None:
                return {"filter": rule.filter, "kind": rule.kind, "decoder": rule.decoder, "captures": caps}
    return None


def try_messages(settings: Settings, registry: Registry, profiles: list[SourceProfile],
                  messages: list[tuple[str, str, bytes]], arrival_ns: int) -> SourceTestReport:
    """Run (topic, label, payload) messages through the mapper and the validator; what the engine would store."""
    stats = Stats()
    mapper = _RecordingMapper(profiles, registry, stats)
    series = SeriesIndex(registry)
    series.add_registry()
    validator = Validator(registry, series, settings.validation, TopicPattern(settings.mqtt.topic), stats,
                          sources=mapper)
    report = SourceTestReport(profiles[0].family)
    last_arrival = arrival_ns
    for i, (topic, label, payload) in enumerate(messages):
        arrival = arrival_ns + i * _MESSAGE_SPACING_NS
        last_arrival = arrival
        mapper.records = []
        mapper.claimed = False
        batch, rejections = validator.validate([(topic, payload, arrival)])
        entry: dict[str, Any] = {"topic": topic, "payload": label, "bytes": len(payload), "arrival": rfc3339(arrival)}
        rule = _rule_for(profiles, topic)
        if rule is not None and mapper.claimed:
            entry["rule"] = rule
        elif validator.topic.match(topic) is not None:
            entry["rule"] = {"house_topic": settings.mqtt.topic}
        if rule is not None and rule["kind"] == "ignore":
            entry["note"] = "the topic is known and ignored (an `ignore` rule): nothing is stored, no dead letter"
        report.messages.append(entry)
        _collect(report, validator, series, registry, batch, rejections, mapper.records)
        report.commands.extend({"topic": t, "bytes": len(p)} for t, p in mapper.commands())
    close_ns = _frigate_close_time(mapper, last_arrival)
    if close_ns is not None:
        mapper.records = []
        records = mapper.tick(close_ns)
        mapper.records = list(records)
        batch, rejections = validator.validate_records(records, close_ns)
        _collect(report, validator, series, registry, batch, rejections, mapper.records)
    report.counters = {k: int(v) for k, v in sorted(stats.snapshot().items())
                       if k.startswith(_COUNTER_PREFIXES) and v}
    return report


def _frigate_close_time(mapper: SourceMapper, last_arrival_ns: int) -> int | None:
    counters = [prof.frigate for prof in mapper.profiles if any(r.decoder == "frigate" for r in prof.p.topics)]
    if not counters:
        return None
    return last_arrival_ns + max(c.interval_ns + c.grace_ns for c in counters)


def _collect(report: SourceTestReport, validator: Validator, series: SeriesIndex, registry: Registry, batch,
             rejections: list[Rejection], records: list[MappedRecord]) -> None:
    for sid, ts, value, flags in zip(batch.series.tolist(), batch.ts.tolist(), batch.value.tolist(),
                                     batch.flags.tolist()):
        sensor_id, metric = series.sensor_ids[sid], series.metrics[sid]
        sensor = registry.get(sensor_id)
        spec = sensor.metrics.get(metric) if sensor is not None else None
        report.readings.append({"sensor": sensor_id, "metric": metric, "value": value,
                                "unit": spec.unit if spec is not None else None, "ts": rfc3339(ts), "ts_ns": ts,
                                "ts_from_arrival": bool(flags & int(FLAG_TS_FROM_ARRIVAL))})
    for sensor, family, ts, fields in validator.health:
        report.health.append({"sensor": sensor.id, "family": family, "fields": dict(fields), "ts": rfc3339(ts),
                              "ts_ns": ts})
    for sensor_id, online, ts in validator.availability:
        report.availability.append({"sensor": sensor_id, "online": online, "ts": rfc3339(ts), "ts_ns": ts})
    validator.health.clear()
    validator.availability.clear()
    unknown = iter([r for r in records if r.sensor is None and (r.readings or r.health or r.available is not None)])
    for rej in rejections:
        doc: dict[str, Any] = {"reason": rej.reason, "detail": rej.detail, "topic": rej.topic, "sensor": rej.sensor,
                               "metric": rej.metric, "value": rej.value}
        if rej.reason == "unknown_device":
            record = next(unknown, None)
            if record is not None:
                doc["source"] = {"family": record.family, "device": record.device}
        report.rejections.append(doc)


def _run_test(args: argparse.Namespace) -> int:
    payloads = _read_payloads(args.payload, args.text)
    topics = args.topic
    if len(topics) not in (1, len(payloads)):
        raise UsageError(f"{len(topics)} --topic for {len(payloads)} --payload: give one topic, or one per payload")
    arrival_ns = _parse_arrival(args.arrival)
    settings = load_settings(args.config)
    registry = Registry.load(settings.resolve(settings.registry))
    profiles = _profiles_for(settings, args.family, args.profile)
    messages = [(topics[0] if len(topics) == 1 else topics[i], label, body)
                for i, (label, body) in enumerate(payloads)]
    report = try_messages(settings, registry, profiles, messages, arrival_ns)
    if args.format == "json":
        json.dump(report.to_json(), sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _fmt(value: object) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _print_report(report: SourceTestReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(110, Console().width), highlight=False, markup=False)
    for m in report.messages:
        rule = m.get("rule")
        if rule is None:
            how = "no profile topic matches"
        elif "house_topic" in rule:
            how = f"house topic {rule['house_topic']}"
        else:
            caps = ", ".join(f"{k}={v!r}" for k, v in rule["captures"].items())
            kind = rule["kind"] + (f", {rule['decoder']}" if rule["kind"] in ("readings", "health") else "")
            how = f"matches {rule['filter']} ({kind})" + (f": {caps}" if caps else "")
        console.print(f"{m['topic']} <- {m['payload']} ({m['bytes']} bytes), arrival {m['arrival']}", soft_wrap=True)
        console.print(f"  {how}", soft_wrap=True)
        if "note" in m:
            console.print(f"  {m['note']}", soft_wrap=True)
    if report.readings:
        n = len(report.readings)
        table = Table(title=f"{n} reading{'' if n == 1 else 's'}")
        for col in ("sensor", "metric", "value", "unit", "timestamp (UTC)", "time from"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for r in report.readings:
            table.add_row(r["sensor"], r["metric"], _fmt(r["value"]), r["unit"] or "", r["ts"],
                          "arrival" if r["ts_from_arrival"] else "payload")
        console.print(table)
    else:
        console.print("no readings")
    for h in report.health:
        fields = ", ".join(f"{k}={_fmt(v)}" for k, v in h["fields"].items())
        console.print(f"health {h['sensor']} ({h['family']}) at {h['ts']}: {fields}", soft_wrap=True)
    for a in report.availability:
        console.print(f"availability {a['sensor']}: {'online' if a['online'] else 'offline'} at {a['ts']}")
    for c in report.commands:
        console.print(f"command to the device: {c['topic']} ({c['bytes']} bytes)")
    if report.counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in report.counters.items()), soft_wrap=True)
    for rej in report.rejections:
        console.print(f"rejected [{rej['reason']}] {rej['detail']}", soft_wrap=True)
        if "source" in rej:
            src = rej["source"]
            console.print("  to accept it, add to the sensor's registry entry:\n"
                          f"    source: {{family: {src['family']}, device: {json.dumps(src['device'])}}}")
    verdict = "ok" if report.ok else ("rejected" if report.rejections else "nothing mapped")
    console.print(verdict)


# -- sources list ------------------------------------------------------------------------------------

def describe_profiles(profiles: list[SourceProfile]) -> list[dict[str, Any]]:
    out = []
    for p in profiles:
        metrics = {}
        for key, rule in p.metrics.items():
            metrics[key] = {k: v for k, v in rule.model_dump(mode="json").items() if v not in (None, {}, False)}
        out.append({
            "family": p.family,
            "description": p.description,
            "topics": [{"filter": r.filter, "kind": r.kind, "decoder": r.decoder,
                        "subscription": TopicFilter(r.filter).subscription} for r in p.topics],
            "device": p.device,
            "device_from": p.device_from,
            "metrics": metrics,
            "health": {k: r.select for k, r in p.health.items()},
            "timestamp": p.timestamp.fields,
            "timezone": p.timestamp.timezone,
        })
    return out


def _run_list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    profiles = load_profiles(settings.sources.profiles, settings.base_dir)
    rows = describe_profiles(profiles)
    if args.format == "json":
        json.dump({"enabled": settings.sources.enabled, "profiles": rows}, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} source profiles" + ("" if settings.sources.enabled else " (sources disabled)"))
    for col in ("family", "topics [kind]", "device id", "metrics (source -> registry [unit])", "health"):
        table.add_column(col, overflow="fold")
    for row in rows:
        topics = "\n".join(f"{t['filter']} [{t['kind']}{', ' + t['decoder'] if t['decoder'] != 'json' else ''}]"
                           for t in row["topics"])
        metrics = "\n".join(f"{k} -> {m['metric']}" + _unit_note(m) for k, m in row["metrics"].items())
        device = f"topic {row['device']}" + (f"\npayload {row['device_from']}" if row["device_from"] else "")
        health = "\n".join(f"{k} <- {sel}" for k, sel in row["health"].items())
        table.add_row(row["family"], topics, device, metrics, health)
    Console(width=max(160, Console().width), highlight=False, markup=False).print(table)
    return 0


def _unit_note(m: dict[str, Any]) -> str:
    notes = []
    if "unit" in m:
        notes.append(m["unit"])
    if "unit_from" in m:
        notes.append(f"unit from {m['unit_from']}")
    if m.get("counter"):
        notes.append("counter")
    return f" [{', '.join(notes)}]" if notes else ""
