"""Decoding what field devices publish: plain JSON objects, backlog arrays and SenML (RFC 8428).

`decode_payload(payload, arrival_ns)` runs for every MQTT message. It turns the bytes into
``(ts_ns, metric, raw_value, unit_or_None, flags)`` tuples and a list of error strings. It does not
know the sensor registry: values are passed on *raw* (a string, a bool, a dict, ...) and the
validator (`citywatch.ingest.validate`) decides whether they are usable numbers in the right unit.
The decoder only reports what it cannot attribute to a metric: unparseable JSON, a bad timestamp
(which loses the readings of that record), a record of the wrong shape.

Payload formats
---------------

The format is recognised from the structure of the JSON document:

(a) **One JSON object** — a timestamp, metrics, optional metadata::

        {"ts": 1717243200, "pm25": 35.2, "pm10": 51, "id": "aq-001"}
        {"time": "2024-06-01T19:00:00+07:00", "pm25": {"value": 35.2, "unit": "ug/m3"}}
        {"id": "urn:ngsi-ld:AirQualityObserved:aq-001", "type": "AirQualityObserved",
         "dateObserved": {"type": "Property", "value": "2024-06-01T12:00:00Z"},
         "pm25": {"type": "Property", "value": 35.2, "unitCode": "GQ"}}

   * timestamp keys, first present (and not null) wins: ``ts``, ``timestamp``, ``time``,
     ``dateObserved``; a ``{"value": ...}`` wrapper around the timestamp is unwrapped (NGSI);
   * metadata keys, ignored: ``id``, ``sensor``, ``device``, ``deviceId``, ``type``, ``seq``
     (`METADATA_KEYS`);
   * every other key is a metric. Its value is a number, or an object ``{"value": x, "unit": "..."}``
     (``unitCode`` is accepted in place of ``unit``). Anything else is passed on raw and rejected
     by the validator (``non_numeric``).

   A top-level object holding ``bn``, or ``n`` together with ``v``/``vs``/``vb``/``vd``, is read as a
   single SenML record instead.

(b) **A JSON array of such objects** — a device uploading a backlog; each object carries its own
    timestamp (or none: arrival time, flagged)::

        [{"ts": 1717243200, "pm25": 35.2}, {"ts": 1717243260, "pm25": 36.0}]

(c) **SenML JSON (RFC 8428)** — an array whose first object uses SenML keys (``n``, ``v``, ``bn``,
    ``bt``, ``bu``, ``bv``, ``vs``, ``vb``, ``vd``, ...)::

        [{"bn": "urn:dev:aq-001:", "bt": 1717243200, "bu": "ug/m3", "n": "pm25", "v": 35.2},
         {"n": "pm10", "v": 51, "t": 60},
         {"n": "temperature", "u": "Cel", "v": 31.5}]

   * base fields (``bn``, ``bt``, ``bu``, ``bv``) apply to their record and all following records
     until changed; a record holding only base fields is fine. Name = ``bn + n``, time = ``bt + t``,
     value = ``bv + v``, unit = ``u`` or else ``bu``;
   * **metric name rule**: the metric is ``n``; when ``n`` is absent or empty, it is the last
     segment of ``bn`` after the last ``:`` or ``/`` (``"bn": "aq-001/pm25"`` -> ``pm25``). The base
     name itself (usually the device id) is not checked against the topic's sensor id;
   * ``vs``, ``vb`` and ``vd`` (string, boolean, data values) are passed on raw, so each such record
     is rejected as ``non_numeric``; sum-only records (``s``) are not supported (``bad_structure``);
   * time: a resolved time below 2**28 (about 8.5 years of seconds) is *relative to now* (RFC 8428
     §4.5.3), "now" being the arrival time; 0 (no ``t``, no ``bt``) means "now". Such readings are
     flagged `FLAG_TS_FROM_ARRIVAL`, because their absolute time rests on the arrival time. Larger
     times are absolute, in seconds as RFC 8428 says — but the magnitude rule below is applied, so
     a device sending milliseconds still gets the right time;
   * an invalid base field (``bn`` not a string, ``bt`` not a number, ...) drops that record and all
     following ones: they would be resolved against the wrong base.

Timestamps
----------

* **Epoch numbers** (int or float, > 0), unit decided by magnitude:

  ================  ============  ==========================================
  value             read as       a correct clock reads this way from
  ================  ============  ==========================================
  < 1e11            seconds       1970 (1e11 s would be the year 5138)
  1e11 .. < 1e14    milliseconds  1973-03-03 (1e11 ms)
  1e14 .. < 1e17    microseconds  1973-03-03 (1e14 us)
  >= 1e17           nanoseconds   1973-03-03 (1e17 ns)
  ================  ============  ==========================================

  So any time after March 1973 is read right whatever the unit; times must also fit int64 ns
  (before 2262-04-11).
  Float epochs are converted through their shortest decimal repr, so ``1717243200.123`` is exactly
  ``1717243200123000000`` ns. Zero, negative, NaN/inf, or beyond int64 ns: ``bad_timestamp``.
* **RFC 3339 strings** with ``Z`` or a numeric offset: ``2024-06-01T12:00:00Z``,
  ``2024-06-01T19:00:00.5+07:00`` (``t``/space separator, lower-case ``z`` and ``+0700`` also
  accepted; up to 9 fractional digits are kept, more are truncated; a leap second ``:60`` is read as
  the next second). Strings without an offset are rejected: local time of which zone? Numeric
  strings (``"1717243200"``) are rejected too.
* ``null`` or absent: the arrival time is used and the reading carries `FLAG_TS_FROM_ARRIVAL`.

Errors
------

Each error string starts with a stable reason code, then ``": "`` and a human detail:

* ``malformed_json`` — not UTF-8 / not JSON (the whole message is lost);
* ``bad_structure`` — JSON, but not shaped like a payload (a top-level number, an array element
  that is not an object, a SenML record without a name or value, an invalid SenML base field);
* ``bad_timestamp`` — the record's timestamp cannot be read: that record's readings are lost;
* ``no_readings`` — well-formed but nothing to read (``{}``, ``[]``, only metadata).

Whenever `Decoded.readings` is empty, `Decoded.errors` is not. ``NaN``/``Infinity`` literals and
numbers too large for a double are not JSON and make orjson fail; the decoder then retries with
the standard library's parser, which accepts them, so only those values are lost (the validator
rejects them as ``not_finite``) and the rest of the message is kept.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import orjson

from citywatch.batch import FLAG_TS_FROM_ARRIVAL

__all__ = [
    "Decoded",
    "decode_payload",
    "timestamp_ns",
    "TimestampError",
    "TIMESTAMP_KEYS",
    "METADATA_KEYS",
    "SENML_KEYS",
]

TIMESTAMP_KEYS: tuple[str, ...] = ("ts", "timestamp", "time", "dateObserved")
METADATA_KEYS: frozenset[str] = frozenset({"id", "sensor", "device", "deviceId", "type", "seq"})
SENML_KEYS: frozenset[str] = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "v", "vs", "vb", "vd"})
_SENML_BASE_KEYS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver"})
# base fields: (key, must be a number (else a string), rejection reason when it is not)
_SENML_BASE_FIELDS = (("bn", False, "bad_structure"), ("bt", True, "bad_timestamp"),
                      ("bu", False, "bad_structure"), ("bv", True, "bad_structure"))
_SKIP_KEYS = METADATA_KEYS | frozenset(TIMESTAMP_KEYS)

_ARRIVAL = int(FLAG_TS_FROM_ARRIVAL)
_INT64_MAX = (1 << 63) - 1
_SENML_RELATIVE = 1 << 28
_S_LIMIT = 100_000_000_000  # 1e11
_MS_LIMIT = 100_000_000_000_000  # 1e14
_US_LIMIT = 100_000_000_000_000_000  # 1e17
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_FAILED = object()

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9})[0-9]*)?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))"
)
_NAIVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ][0-9:.]*)?")


@dataclass(slots=True)
class Decoded:
    """Readings ``(ts_ns, metric, raw value, unit or None, flags)`` and ``"code: detail"`` errors."""

    readings: list[tuple[int, str, object, str | None, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class TimestampError(ValueError):
    """A timestamp that cannot be turned into ns since the epoch; the message is the detail."""


def _short(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scaled(x: int | float | Decimal, scale: int) -> int:
    """x * scale as an exact int (floats through their shortest decimal repr)."""
    if type(x) is int:
        return x * scale
    if type(x) is float:
        if x.is_integer():
            return int(x) * scale
        x = Decimal(repr(x))
    return round(x * scale)


def _epoch_ns(x: int | float | Decimal) -> int:
    if x <= 0:
        raise TimestampError(f"{_short(x)} is not after 1970-01-01")
    if x < _S_LIMIT:
        ns = _scaled(x, 1_000_000_000)
    elif x < _MS_LIMIT:
        ns = _scaled(x, 1_000_000)
    elif x < _US_LIMIT:
        ns = _scaled(x, 1_000)
    else:
        ns = _scaled(x, 1)
    if ns <= 0:  # a positive float too small for 1 ns (5e-324) rounds to the epoch itself
        raise TimestampError(f"{_short(x)} is not after 1970-01-01")
    if ns > _INT64_MAX:
        raise TimestampError(f"{_short(x)} is beyond the year 2262")
    return ns


def _rfc3339_ns(s: str) -> int:
    m = _RFC3339.fullmatch(s)
    if m is None:
        if _NAIVE.fullmatch(s):
            raise TimestampError(f"{_short(s)} has no UTC offset (add Z or +hh:mm; naive times are ambiguous)")
        raise TimestampError(f"{_short(s)} is not an RFC 3339 time or an epoch number")
    y, mo, d, hh, mi, ss, frac, z, sign, oh, om = m.groups()
    hh, mi, ss = int(hh), int(mi), int(ss)
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise TimestampError(f"{_short(s)} is not a valid date") from None
    if hh > 23 or mi > 59 or ss > 60:
        raise TimestampError(f"{_short(s)} is not a valid time of day")
    secs = days * 86400 + hh * 3600 + mi * 60 + ss
    if z is None:
        oh, om = int(oh), int(om)
        if oh > 23 or om > 59:
            raise TimestampError(f"{_short(s)} has an invalid UTC offset")
        offset = oh * 3600 + om * 60
        secs = secs - offset if sign == "+" else secs + offset
    ns = secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    if ns <= 0:
        raise TimestampError(f"{_short(s)} is not after 1970-01-01")
    if ns > _INT64_MAX:
        raise TimestampError(f"{_short(s)} is beyond the year 2262")
    return ns


def timestamp_ns(value: object) -> int:
    """ns since the epoch from an epoch number (s/ms/us/ns by magnitude) or an RFC 3339 string.

    Raises `TimestampError` with a human detail when the value is not a usable timestamp.
    """
    t = type(value)
    if t is int:
        return _epoch_ns(value)
    if t is float:
        if not math.isfinite(value):
            raise TimestampError(f"{_short(value)} is not a finite number")
        return _epoch_ns(value)
    if t is str:
        return _rfc3339_ns(value)
    raise TimestampError(f"{_short(value)} is not a number or an RFC 3339 string")


def _loads(payload: bytes) -> tuple[object, str | None]:
    try:
        return orjson.loads(payload), None
    except orjson.JSONDecodeError as exc:
        first = str(exc)
    except TypeError as exc:  # not bytes/str at all
        return _FAILED, f"malformed_json: {exc}"
    # orjson refuses NaN/Infinity literals and numbers beyond a double; the stdlib parser accepts
    # them (as nan/inf), so the message's other readings can be kept.
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        return _FAILED, f"malformed_json: not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return _FAILED, f"malformed_json: {first}"


def _decode_object(obj: dict, arrival_ns: int, out: list, errors: list, where: str) -> None:
    raw_ts = None
    for key in TIMESTAMP_KEYS:
        raw_ts = obj.get(key)
        if raw_ts is not None:
            break
    if raw_ts is None:
        ts, flags = arrival_ns, _ARRIVAL
    else:
        if type(raw_ts) is dict and "value" in raw_ts:  # NGSI {"type": "Property", "value": ...}
            raw_ts = raw_ts["value"]
        try:
            ts = timestamp_ns(raw_ts)
        except TimestampError as exc:
            errors.append(f"bad_timestamp: {where}{exc}")
            return
        flags = 0
    skip = _SKIP_KEYS
    for key, value in obj.items():
        if key in skip:
            continue
        unit = None
        if type(value) is dict:
            unit = value.get("unit")
            if unit is None:
                unit = value.get("unitCode")
            if unit is not None and type(unit) is not str:
                unit = _short(unit)
            if "value" in value:
                value = value["value"]
        out.append((ts, key, value, unit, flags))


def _is_number(x: object) -> bool:
    t = type(x)
    return (t is int or t is float) and (t is int or math.isfinite(x))


def _decode_senml(records: list, arrival_ns: int, out: list, errors: list) -> None:
    base: dict[str, Any] = {"bn": "", "bt": 0, "bu": None, "bv": None}
    n_records = len(records)
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            errors.append(f"bad_structure: record {i}: a SenML record is an object, got {type(rec).__name__}")
            continue
        if not _SENML_BASE_KEYS.isdisjoint(rec):
            bad = None
            for key, numeric, reason in _SENML_BASE_FIELDS:
                if key in rec:
                    v = rec[key]
                    if _is_number(v) if numeric else type(v) is str:
                        base[key] = v
                    else:
                        bad = (reason, f"{key} {_short(v)} is not a {'finite number' if numeric else 'string'}")
            if bad is not None:
                rest = n_records - i - 1
                errors.append(f"{bad[0]}: record {i}: {bad[1]}; this record and the {rest} following dropped")
                return
        # value
        bn, bt, bu, bv = base["bn"], base["bt"], base["bu"], base["bv"]
        if "v" in rec:
            value = rec["v"]
            if bv is not None and _is_number(value):
                value = value + bv
        elif "vs" in rec:
            value = rec["vs"]
        elif "vb" in rec:
            value = rec["vb"]
        elif "vd" in rec:
            value = rec["vd"]
        elif "s" in rec:
            errors.append(f"bad_structure: record {i}: sum-only records (s) are not supported")
            continue
        else:
            if "n" in rec or "t" in rec or "u" in rec or _SENML_BASE_KEYS.isdisjoint(rec):
                errors.append(f"bad_structure: record {i}: no value (v, vs, vb or vd)")
            continue
        # name
        n = rec.get("n", "")
        if type(n) is not str:
            errors.append(f"bad_structure: record {i}: n {_short(n)} is not a string")
            continue
        if n:
            metric = n
        else:
            metric = bn[max(bn.rfind(":"), bn.rfind("/")) + 1 :]
            if not metric:
                errors.append(f"bad_structure: record {i}: no name (n is empty and bn {bn!r} ends with ':' or '/')")
                continue
        # unit
        unit = rec.get("u", bu)
        if unit is not None and type(unit) is not str:
            unit = _short(unit)
        # time
        t = rec.get("t", 0)
        if not _is_number(t):
            errors.append(f"bad_timestamp: record {i}: t {_short(t)} is not a finite number")
            continue
        if type(t) is int and type(bt) is int:
            resolved = bt + t
        elif (type(t) is int or t.is_integer()) and (type(bt) is int or bt.is_integer()):
            resolved = int(bt) + int(t)
        else:
            resolved = Decimal(repr(bt)) + Decimal(repr(t))
        try:
            if resolved < _SENML_RELATIVE:
                ts = arrival_ns + _scaled(resolved, 1_000_000_000)
                if ts <= 0 or ts > _INT64_MAX:
                    raise TimestampError(f"relative time {_short(resolved)} s is out of range")
                flags = _ARRIVAL
            else:
                ts = _epoch_ns(resolved)
                flags = 0
        except TimestampError as exc:
            errors.append(f"bad_timestamp: record {i}: {exc}")
            continue
        out.append((ts, metric, value, unit, flags))


def _looks_like_senml(items: list) -> bool:
    for rec in items:
        if type(rec) is dict:
            return not SENML_KEYS.isdisjoint(rec)
    return False


def decode_payload(payload: bytes, arrival_ns: int) -> Decoded:
    """Decode one MQTT payload. Never raises; see the module docstring for formats and error codes."""
    doc, err = _loads(payload)
    readings: list = []
    errors: list[str] = []
    if err is not None:
        errors.append(err)
        return Decoded(readings, errors)
    t = type(doc)
    if t is dict:
        if "bn" in doc or ("n" in doc and ("v" in doc or "vs" in doc or "vb" in doc or "vd" in doc)):
            _decode_senml([doc], arrival_ns, readings, errors)
        else:
            _decode_object(doc, arrival_ns, readings, errors, "")
    elif t is list:
        if _looks_like_senml(doc):
            _decode_senml(doc, arrival_ns, readings, errors)
        else:
            for i, rec in enumerate(doc):
                if type(rec) is dict:
                    _decode_object(rec, arrival_ns, readings, errors, f"record {i}: ")
                else:
                    errors.append(f"bad_structure: record {i}: expected an object, got {type(rec).__name__}")
    else:
        errors.append(f"bad_structure: expected a JSON object or array, got {type(doc).__name__}")
    if not readings and not errors:
        errors.append("no_readings: the message holds no metric values")
    return Decoded(readings, errors)
