"""Validation of decoded MQTT micro-batches against the sensor registry.

`Validator.validate(messages)` takes ``(topic, payload, arrival_ns)`` tuples, decodes each payload
(`citywatch.ingest.payloads`), checks every reading, and returns one `ReadingBatch` of the good
readings (value in the registry's unit, ts in ns) plus a `Rejection` for everything else. It never
raises for bad input: every message yields readings and/or rejections. A partly bad message keeps
its good readings.

Checks, in order (reason codes are stable, for dashboards and the dead-letter topic):

==================  =====================================================================  =========
reason              when                                                                   rejects
==================  =====================================================================  =========
oversize_payload    payload longer than ``max_payload_bytes`` (not decoded at all)         message
topic_mismatch      topic does not fit ``mqtt.topic`` (or a segment is empty/a wildcard)   message
invalid_sensor_id   sensor segment does not match `SENSOR_ID_PATTERN` (spaces, commas...)  message
unknown_sensor      sensor not in the registry (policy ``reject``), or ``auto_register``   message
                    asked for a domain that is not one of `DOMAINS`
domain_mismatch     topic domain differs from the sensor's registry domain                 message
malformed_json      payload is not UTF-8 JSON                                              message
bad_structure       JSON, but not a payload shape (see `payloads`)                         record
no_readings         well-formed but no metric values (``{}``, ``[]``, only metadata)        message
bad_timestamp       record timestamp unreadable (naive RFC 3339 string, "yesterday", ...)  record
unknown_metric      metric not declared for the sensor (policy ``reject``), or an          reading
                    undeclared metric whose name is not like a sensor id
non_numeric         value is not a JSON number: strings (even "12.5": a device sending     reading
                    strings is misconfigured), booleans, null, objects, SenML vs/vb/vd
not_finite          NaN, Infinity, or a number beyond float64 (also after conversion)     reading
wrong_unit          unit given and not convertible to the registry unit                    reading
future_timestamp    ts > arrival + ``max_future_skew``                                     reading
too_old             ts < arrival - ``max_age``                                             reading
rate_limited        the sensor is over ``max_messages_per_sensor_per_s`` (see below)      message
internal_error      a bug in this module (never expected; counted, message kept out)       message
unknown_device      a device family's message from a device neither the registry           record
                    (``source:``) nor the profile's ``aliases`` know
malformed_text ...  errors of the device-family decoders (``citywatch.ingest.sources``):   record
                    malformed_text, bad_availability, bad_topic, malformed_protobuf,
                    sparkplug_* (sequence gaps, unknown aliases, ...), frigate_* (late
                    events, implausible times, too many cameras)
==================  =====================================================================  =========

Device families: a topic that does not fit ``mqtt.topic`` goes to the source profiles
(`citywatch.ingest.sources.mapper.SourceMapper`) before it is a ``topic_mismatch``; their records
get the checks below from ``unknown_metric`` on. What they say besides readings is left in
`Validator.health` and `Validator.availability` for the engine.

Units: a reading without a unit is taken to be in the registry unit. A different unit is converted
with `citywatch.units.conversion` (e.g. 0.035 mg/m3 -> 35 ug/m3, 45 % -> 0.45 for a unit "1"); the
conversion is done with the exact ratio (``(x * 5 - 160) / 9`` for degF -> Cel), one rounding per
operation, so most decimal values convert without float noise (a division can still leave one unit in
the last place: 71.22 % -> 0.7121999999999999). Metrics that have no registry spec (auto-registered sensors, or
``unknown_metric: accept``) are stored as sent; their unit is not checked.

Unknown sensors: with ``unknown_sensor: auto_register`` a sensor whose message yields at least one
decodable reading is added with ``registry.auto_register(sensor, domain)``; all its metrics are then
accepted and get series ids from ``series.add``. Undeclared metric names must match
`METRIC_NAME_PATTERN` (the same rule as sensor ids): they end up in InfluxDB points and alert topics.

Time checks are relative to each message's arrival time, so a replayed spool is judged as it
was when it arrived. Both windows are taken literally (0 means no tolerance at all).

Counters (in `Stats`): ``messages_received``, ``readings_accepted``, ``readings_rejected`` (one per
`Rejection`: a whole-message rejection counts once) and ``rejected_<reason>``.

Rate limit: with ``max_messages_per_sensor_per_s`` set, each sensor has a token bucket (that many
tokens per second of arrival time, at most ``rate_limit_burst`` saved up); a message of a sensor
whose bucket is empty is dropped before it is decoded. Only the first dropped message of a run is
a `Rejection` (``rate_limited``, dead-lettered like any other); the rest of the run is counted in
``rate_limited_dropped`` and not dead-lettered, since a dead letter per message would pass the
flood on to the dead-letter topic and file. A run ends when a message of the sensor is accepted
again. So over-limit messages = ``rejected_rate_limited`` + ``rate_limited_dropped``. The check is
a dictionary lookup and a few float operations per message. Devices that upload a backlog should
send it as arrays (one message) rather than one message per reading.

Configuration (``validation:`` in ``config/citywatch.yaml``; paste and adapt)::

    validation:
      unknown_sensor: reject        # reject | auto_register
      unknown_metric: reject        # reject | accept (auto-registered sensors always accept)
      max_future_skew: 5m           # device clock ahead of arrival by more -> future_timestamp
      max_age: 30d                  # older than arrival - max_age -> too_old
      max_payload_bytes: 262144     # larger payloads are rejected without decoding
      deadletter_file: .citywatch/deadletter.jsonl   # used by the MQTT client, not here
      log_every: 10s                # rate limit of rejection log lines (MQTT client)
      max_messages_per_sensor_per_s: null   # e.g. 2: messages/s per sensor on average; null = no limit
      rate_limit_burst: 60          # messages a sensor may send at once after a quiet spell

Dead letters: `Rejection.to_json()` is the body for ``mqtt.deadletter_topic``;
`Rejection.deadletter_topic(pattern)` builds the topic, with ``_unknown`` for a missing domain or
sensor.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction

import numpy as np
import orjson

from citywatch.batch import FLAG_TS_FROM_ARRIVAL, ReadingBatch
from citywatch.config import ValidationConfig
from citywatch.ingest.payloads import decode_payload
from citywatch.ingest.sources.mapper import MappedRecord, SourceMapper
from citywatch.ingest.topics import TopicPattern
from citywatch.registry import DOMAINS, SENSOR_ID_PATTERN, Registry, SeriesIndex, Sensor
from citywatch.stats import Stats
from citywatch.units import conversion

__all__ = ["Validator", "Rejection", "REASONS", "METRIC_NAME_PATTERN", "SENSOR_ID_PATTERN"]

REASONS: tuple[str, ...] = (
    "oversize_payload",
    "topic_mismatch",
    "invalid_sensor_id",
    "unknown_sensor",
    "domain_mismatch",
    "malformed_json",
    "bad_structure",
    "no_readings",
    "bad_timestamp",
    "unknown_metric",
    "non_numeric",
    "not_finite",
    "wrong_unit",
    "future_timestamp",
    "too_old",
    "rate_limited",
    "internal_error",
    # device families (citywatch.ingest.sources): messages matched by a source profile
    "unknown_device",
    "malformed_text",
    "bad_availability",
    "bad_topic",
    "malformed_protobuf",
    "sparkplug_no_birth",
    "sparkplug_seq_gap",
    "sparkplug_stale_death",
    "sparkplug_unknown_alias",
    "sparkplug_unnamed_metric",
    "sparkplug_unsupported_type",
    "sparkplug_too_many_nodes",
    "frigate_late_event",
    "frigate_implausible_time",
    "frigate_too_many_devices",
)
METRIC_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_PAYLOAD_EXCERPT = 512
_VALUE_EXCERPT = 128
_WINDOW_MAX_NS = 1 << 62


def _value_excerpt(raw: object) -> str:
    t = type(raw)
    try:
        if t is float or t is int:
            text = repr(raw)
        elif t is str:
            text = raw
        else:
            text = orjson.dumps(raw).decode()
    except Exception:
        try:
            text = repr(raw)
        except Exception:
            text = f"<{t.__name__}>"
    return text if len(text) <= _VALUE_EXCERPT else text[: _VALUE_EXCERPT - 3] + "..."


def _clean(s: str | None) -> str | None:
    """Strings from the stdlib JSON parser may hold lone surrogates, which orjson cannot encode."""
    if s is None:
        return None
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


@dataclass(slots=True)
class Rejection:
    topic: str
    domain: str | None
    sensor: str | None
    reason: str  # one of REASONS
    detail: str
    metric: str | None
    value: str | None  # excerpt of the raw value, for per-reading rejections
    arrival_ns: int
    payload: str  # first 512 bytes, decoded as UTF-8 with errors="replace"
    ts_ns: int | None = None  # the reading's timestamp, when known

    def to_json(self) -> bytes:
        arrival = None
        try:
            secs, frac = divmod(self.arrival_ns, 1_000_000_000)
            arrival = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
        except (OverflowError, OSError, ValueError, TypeError):
            pass
        doc = {
            "reason": self.reason,
            "detail": _clean(self.detail),
            "topic": _clean(self.topic),
            "domain": _clean(self.domain),
            "sensor": _clean(self.sensor),
            "metric": _clean(self.metric),
            "value": _clean(self.value),
            "ts_ns": self.ts_ns,
            "arrival_ns": self.arrival_ns,
            "arrival": arrival,
            "payload": _clean(self.payload),
        }
        try:
            return orjson.dumps(doc)
        except TypeError:  # e.g. a non-int arrival_ns: keep the dead letter rather than lose it
            return orjson.dumps({k: (v if isinstance(v, (str, type(None))) else repr(v)) for k, v in doc.items()})

    def deadletter_topic(self, pattern: TopicPattern, missing: str = "_unknown") -> str:
        """The dead-letter topic for this rejection, e.g. ``city/deadletter/air/aq-001``."""
        values = {"domain": self.domain or missing, "sensor": self.sensor or missing}
        try:
            return pattern.format(**values)
        except ValueError:
            return pattern.format(domain=missing, sensor=missing)


class _Converter:
    """value -> registry unit: (x * num + off) / den with small integers when the ratio is exact."""

    __slots__ = ("num", "off", "den", "scale", "offset", "exact")

    def __init__(self, scale: float, offset: float) -> None:
        self.scale, self.offset = scale, offset
        a = Fraction(scale).limit_denominator(1_000_000)
        b = Fraction(offset).limit_denominator(1_000_000)
        self.exact = float(a) == scale and float(b) == offset
        den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
        self.num = float(a * den)
        self.off = float(b * den)
        self.den = float(den)

    def __call__(self, x: float) -> float:
        if not self.exact:
            return x * self.scale + self.offset
        if self.num != 1.0:
            x = x * self.num
        if self.off != 0.0:
            x = x + self.off
        if self.den != 1.0:
            x = x / self.den
        return x


_IDENTITY = object()


class _Msg:
    """Per-message context for building rejections."""

    __slots__ = ("topic", "domain", "sensor", "arrival_ns", "raw", "_excerpt")

    def __init__(self, topic, domain, sensor, arrival_ns, raw) -> None:
        self.topic, self.domain, self.sensor, self.arrival_ns, self.raw = topic, domain, sensor, arrival_ns, raw
        self._excerpt = None

    @property
    def excerpt(self) -> str:
        if self._excerpt is None:
            try:
                self._excerpt = bytes(self.raw[:_PAYLOAD_EXCERPT]).decode("utf-8", errors="replace")
            except Exception:
                self._excerpt = _value_excerpt(self.raw)[:_PAYLOAD_EXCERPT]
        return self._excerpt

    def reject(self, reason: str, detail: str, metric=None, value=None, ts_ns=None) -> Rejection:
        topic = self.topic if isinstance(self.topic, str) else repr(self.topic)
        return Rejection(topic, self.domain, self.sensor, reason, detail, metric, value,
                         self.arrival_ns, self.excerpt, ts_ns)


class Validator:
    """Decode + validate micro-batches of MQTT messages. Not thread-safe: one per ingest loop."""

    def __init__(self, registry: Registry, series: SeriesIndex, cfg: ValidationConfig, topic: TopicPattern,
                 stats: Stats, sources: SourceMapper | None = None) -> None:
        missing = {"domain", "sensor"} - set(topic.names)
        if missing:
            raise ValueError(f"topic pattern {topic.pattern!r} needs the segments {sorted(missing)}")
        self.registry = registry
        self.series = series
        self.cfg = cfg
        self.topic = topic
        self.stats = stats
        self._max_bytes = cfg.max_payload_bytes
        # clamped so that arrival +/- the window stays inside int64 for any configured duration
        self._skew_ns = min(int(round(cfg.max_future_skew * 1e9)), _WINDOW_MAX_NS)
        self._age_ns = min(int(round(cfg.max_age * 1e9)), _WINDOW_MAX_NS)
        self._auto_register = cfg.unknown_sensor == "auto_register"
        self._accept_metrics = cfg.unknown_metric == "accept"
        self._converters: dict[tuple[str, str], object] = {}
        rate = cfg.max_messages_per_sensor_per_s
        self._rate_per_ns = rate / 1e9 if rate else 0.0
        self._burst = float(cfg.rate_limit_burst)
        self._buckets: dict[str, list] = {}  # sensor -> [tokens, last arrival ns, in a dropped run]
        self._rate_dropped = 0
        self.sources = sources
        # What device families said besides readings, taken by the engine after each `validate`:
        # (sensor, family, ts_ns, {field: value}) and (sensor id, online, ts_ns).
        self.health: list[tuple[Sensor, str, int, dict[str, float]]] = []
        self.availability: list[tuple[str, bool, int]] = []

    def _over_limit(self, sensor_id: str, arrival_ns: int) -> int:
        """0: within the sensor's rate; 1: the first message of a dropped run; 2: later in the run."""
        bucket = self._buckets.get(sensor_id)
        if bucket is None:
            bucket = self._buckets[sensor_id] = [self._burst, arrival_ns, False]
        tokens = min(self._burst, bucket[0] + max(0, arrival_ns - bucket[1]) * self._rate_per_ns)
        bucket[1] = max(bucket[1], arrival_ns)
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            bucket[2] = False
            return 0
        bucket[0] = tokens
        if bucket[2]:
            return 2
        bucket[2] = True
        return 1

    def _converter(self, unit: str, target: str):
        key = (unit, target)
        conv = self._converters.get(key, False)
        if conv is False:
            pair = conversion(unit, target) if isinstance(unit, str) else None
            if pair is None:
                conv = None
            elif pair == (1.0, 0.0):
                conv = _IDENTITY
            else:
                conv = _Converter(*pair)
            if len(self._converters) < 10_000:  # units come from devices: bound the cache
                self._converters[key] = conv
        return conv

    def validate(self, messages: list[tuple[str, bytes, int]]) -> tuple[ReadingBatch, list[Rejection]]:
        rejections: list[Rejection] = []
        cols: tuple[list, ...] = ([], [], [], [], [], [])  # series, ts, value, flags, arrival, (msg, metric, raw)
        for topic, payload, arrival_ns in messages:
            start = len(cols[0])
            n_rej = len(rejections)
            try:
                self._message(topic, payload, arrival_ns, rejections, cols)
            except Exception as exc:  # pragma: no cover - a bug; keep the ingest loop alive
                for col in cols:
                    del col[start:]
                del rejections[n_rej:]
                msg = _Msg(topic, None, None, arrival_ns, payload)
                rejections.append(msg.reject("internal_error", f"{type(exc).__name__}: {exc}"))
        return self._columns_to_batch(cols, rejections, len(messages))

    def validate_records(self, records: list[MappedRecord], now_ns: int) -> tuple[ReadingBatch, list[Rejection]]:
        """Records a source produced on its own clock (Frigate's closed intervals), judged at `now_ns`."""
        rejections: list[Rejection] = []
        cols: tuple[list, ...] = ([], [], [], [], [], [])
        for record in records:
            self._mapped(record, f"<{record.family}>", b"", now_ns, rejections, cols)
        return self._columns_to_batch(cols, rejections, 0)

    def _columns_to_batch(self, cols: tuple[list, ...], rejections: list[Rejection],
                          n_messages: int) -> tuple[ReadingBatch, list[Rejection]]:
        col_sid, col_ts, col_val, col_flags, col_arrival, col_ref = cols
        batch = ReadingBatch.empty()
        if col_sid:
            ts = np.array(col_ts, dtype=np.int64)
            arrival = np.array(col_arrival, dtype=np.int64)
            value = np.array(col_val, dtype=np.float64)
            not_finite = ~np.isfinite(value)
            future = ts > arrival + np.int64(self._skew_ns)
            too_old = ts < arrival - np.int64(self._age_ns)
            bad = not_finite | future | too_old
            if bad.any():
                for i in np.flatnonzero(bad).tolist():
                    msg, metric, raw = col_ref[i]
                    t = col_ts[i]
                    if not_finite[i]:
                        reason = "not_finite"
                        detail = f"{metric}: {_value_excerpt(raw)} is not a finite number"
                        if math.isfinite(raw):
                            detail += f" after conversion to the registry unit ({col_val[i]!r})"
                    elif future[i]:
                        reason = "future_timestamp"
                        ahead = (t - col_arrival[i]) / 1e9
                        detail = (f"{metric}: timestamp {t} is {ahead:.0f} s after arrival "
                                  f"(max_future_skew {self.cfg.max_future_skew:g} s)")
                    else:
                        reason = "too_old"
                        age = (col_arrival[i] - t) / 1e9
                        detail = f"{metric}: timestamp {t} is {age:.0f} s before arrival (max_age {self.cfg.max_age:g} s)"
                    rejections.append(msg.reject(reason, detail, metric, _value_excerpt(raw), t))
                keep = ~bad
                batch = ReadingBatch.from_columns(np.array(col_sid, dtype=np.int32)[keep], ts[keep], value[keep],
                                                  np.array(col_flags, dtype=np.uint8)[keep])
            else:
                batch = ReadingBatch.from_columns(np.array(col_sid, dtype=np.int32), ts, value,
                                                  np.array(col_flags, dtype=np.uint8))

        self._count(n_messages, batch, rejections)
        if self._rate_dropped:
            self.stats.inc("rate_limited_dropped", self._rate_dropped)
            self._rate_dropped = 0
        return batch, rejections

    def _count(self, n_messages: int, batch: ReadingBatch, rejections: list[Rejection]) -> None:
        stats = self.stats
        stats.inc("messages_received", n_messages)
        if len(batch):
            stats.inc("readings_accepted", len(batch))
            no_time = int(np.count_nonzero(batch.flags & FLAG_TS_FROM_ARRIVAL))
            if no_time:
                stats.inc("readings_ts_from_arrival", no_time)
        if rejections:
            stats.inc("readings_rejected", len(rejections))
            for reason, n in Counter(r.reason for r in rejections).items():
                stats.inc(f"rejected_{reason}", n)

    def _message(self, topic, payload, arrival_ns, rejections, cols) -> None:
        m = self.topic.match(topic)
        domain = m["domain"] if m else None
        sensor_id = m["sensor"] if m else None
        msg = _Msg(topic, domain, sensor_id, arrival_ns, payload)
        size = len(payload)
        if size > self._max_bytes:
            rejections.append(msg.reject("oversize_payload",
                                         f"payload is {size} bytes, max_payload_bytes is {self._max_bytes}"))
            return
        if m is None:
            mapped = self.sources.map(topic, payload, arrival_ns) if self.sources is not None else None
            if mapped is None:
                rejections.append(msg.reject("topic_mismatch", f"topic does not match {self.topic.pattern!r}"
                                             + (" nor any source profile" if self.sources is not None else "")))
                return
            for record in mapped:
                self._mapped(record, topic, payload, arrival_ns, rejections, cols)
            return
        if not SENSOR_ID_PATTERN.match(sensor_id):
            rejections.append(msg.reject(
                "invalid_sensor_id",
                f"sensor id {sensor_id!r} must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"))
            return
        sensor: Sensor | None = self.registry.get(sensor_id)
        if sensor is None:
            if not self._auto_register:
                rejections.append(msg.reject("unknown_sensor", f"sensor {sensor_id!r} is not in the registry"))
                return
            if domain not in DOMAINS:
                rejections.append(msg.reject(
                    "unknown_sensor",
                    f"sensor {sensor_id!r} is not in the registry and cannot be auto-registered: "
                    f"domain {domain!r} is not one of {', '.join(DOMAINS)}"))
                return
        elif sensor.domain != domain:
            rejections.append(msg.reject(
                "domain_mismatch", f"sensor {sensor_id!r} is in domain {sensor.domain!r}, the topic says {domain!r}"))
            return

        if self._rate_per_ns:
            over = self._over_limit(sensor_id, arrival_ns)
            if over == 1:
                rejections.append(msg.reject(
                    "rate_limited",
                    f"sensor {sensor_id!r} is over {self.cfg.max_messages_per_sensor_per_s:g} messages/s "
                    f"(bursts of {self.cfg.rate_limit_burst}): this message and the next ones over the limit are "
                    "dropped; only this one is dead-lettered, the others are counted in rate_limited_dropped"))
                return
            if over == 2:
                self._rate_dropped += 1
                return

        decoded = decode_payload(payload, arrival_ns)
        for err in decoded.errors:
            reason, _, detail = err.partition(": ")
            rejections.append(msg.reject(reason, detail))
        readings = decoded.readings
        if not readings:
            return
        if sensor is None:
            sensor = self.registry.auto_register(sensor_id, domain)
        self._readings(msg, sensor, readings, rejections, cols)

    def _mapped(self, record: MappedRecord, topic, payload, arrival_ns, rejections, cols) -> None:
        """One device record of a source profile: the same checks as the house format from here on."""
        sensor = record.sensor
        msg = _Msg(topic, sensor.domain if sensor else None, sensor.id if sensor else None, arrival_ns, payload)
        for err in record.errors:
            reason, _, detail = err.partition(": ")
            rejections.append(msg.reject(reason, f"{record.family} device {record.device!r}: {detail}"))
        if sensor is None:
            if record.readings or record.health or record.available is not None:
                rejections.append(msg.reject(
                    "unknown_device",
                    f"{record.family} device {record.device!r} is not in the registry: give a sensor "
                    f"`source: {{family: {record.family}, device: {record.device!r}}}` or add an alias to the profile"))
            return
        if record.health:
            self.health.append((sensor, record.family, record.ts_ns, record.health))
        if record.available is not None:
            self.availability.append((sensor.id, record.available, record.ts_ns))
        if not record.readings:
            return
        if self._rate_per_ns and self._over_limit(sensor.id, arrival_ns):
            self._rate_dropped += 1
            return
        self._readings(msg, sensor, record.readings, rejections, cols)

    def _readings(self, msg: _Msg, sensor: Sensor, readings, rejections, cols) -> None:
        col_sid, col_ts, col_val, col_flags, col_arrival, col_ref = cols
        sensor_id = sensor.id
        arrival_ns = msg.arrival_ns
        metrics = sensor.metrics
        accept_unknown = sensor.auto_registered or self._accept_metrics
        series = self.series
        for ts, metric, raw, unit, flags in readings:
            spec = metrics.get(metric)
            sid = series.get(sensor_id, metric)
            if spec is None:
                if not accept_unknown:
                    rejections.append(msg.reject(
                        "unknown_metric", f"{metric!r} is not a metric of sensor {sensor_id!r}",
                        metric, _value_excerpt(raw), ts))
                    continue
                if sid is None:
                    if not METRIC_NAME_PATTERN.match(metric):
                        rejections.append(msg.reject(
                            "unknown_metric",
                            f"undeclared metric {_value_excerpt(metric)} is not a valid metric name "
                            "(1-64 letters, digits, '-', '_' or '.')",
                            metric, _value_excerpt(raw), ts))
                        continue
                    sid = series.add(sensor, metric)
            elif sid is None:
                sid = series.add(sensor, metric)

            t = type(raw)
            if t is float:
                value = raw
            elif t is int:
                try:
                    value = float(raw)
                except OverflowError:
                    rejections.append(msg.reject(
                        "not_finite", f"{metric}: integer too large for float64", metric, _value_excerpt(raw), ts))
                    continue
            else:
                kind = "a boolean" if t is bool else ("null" if raw is None else f"a {t.__name__}")
                rejections.append(msg.reject(
                    "non_numeric", f"{metric}: value is {kind}, not a JSON number", metric, _value_excerpt(raw), ts))
                continue

            if unit is not None and spec is not None and unit != spec.unit:
                conv = self._converter(unit, spec.unit)
                if conv is None:
                    rejections.append(msg.reject(
                        "wrong_unit", f"{metric}: unit {_value_excerpt(unit)} cannot be converted to {spec.unit!r}",
                        metric, _value_excerpt(raw), ts))
                    continue
                if conv is not _IDENTITY:
                    value = conv(value)

            col_sid.append(sid)
            col_ts.append(ts)
            col_val.append(value)
            col_flags.append(flags)
            col_arrival.append(arrival_ns)
            col_ref.append((msg, metric, raw))
