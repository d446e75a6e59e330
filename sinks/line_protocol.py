"""InfluxDB line protocol encoding, byte-for-byte compatible with influxdb-client's serializer.

A point is written as::

    measurement,tag1=v1,tag2=v2 field1=1.5,field2=3i,field3="text" 1700000000000000000

Escaping rules (the ones `influxdb_client.Point.to_line_protocol()` applies, so that points written by
citywatch and by any tool built on the official client land in the same series):

* measurement: `,` and space are backslash-escaped;
* tag keys, tag values and field keys: `,`, `=` and space are backslash-escaped;
* in all three, newline, carriage return and tab become the two-character sequences `\\n`, `\\r`, `\\t`
  (line protocol has no way to carry them, so they are stored as that text and can never end a line);
* backslashes are left as they are: InfluxDB only treats a backslash as an escape when it precedes one of
  the characters above, and it decides whether a separator is escaped by looking at the byte before it;
* a tag value ending with a backslash gets a trailing space, so the backslash cannot escape the separator
  that follows (InfluxDB then stores the value with that last backslash read as an escaped space);
* string field values are double-quoted, with `"` and `\\` backslash-escaped (newlines are kept as is:
  InfluxDB accepts them inside a quoted string);
* tags are sorted by key, tags with an empty key or value are dropped; fields are sorted by key too.

Values: float -> shortest round-trip repr with a trailing ".0" trimmed (`12.3`, `12`, `1e-07`),
int -> `12i` (must fit in a signed 64-bit integer), bool -> `true` / `false`, str -> quoted.
NaN and infinities cannot be stored by InfluxDB and raise `LineProtocolError` (influxdb-client silently
drops such fields instead; an engine should know it produced one).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Mapping, Union

FieldValue = Union[float, int, bool, str]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


class LineProtocolError(ValueError):
    """A point that cannot be represented in line protocol (no field, NaN, empty name, ...)."""


def escape_measurement(s: str) -> str:
    return s.translate(_ESCAPE_MEASUREMENT)


def escape_tag(s: str) -> str:
    """Escape a tag key or field key (and, apart from the trailing-backslash rule, a tag value)."""
    return s.translate(_ESCAPE_KEY)


def _escape_tag_value(s: str) -> str:
    out = s.translate(_ESCAPE_KEY)
    if out.endswith("\\"):
        out += " "
    return out


def field_string(s: str) -> str:
    """A string field value, quoted."""
    return '"' + s.translate(_ESCAPE_STRING) + '"'


def format_field_value(v: FieldValue) -> str:
    # bool before int: bool is an int subclass. numpy scalars are handled via the numbers ABCs.
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise LineProtocolError(f"field value {v!r} cannot be stored in InfluxDB")
        s = float.__repr__(v)  # not repr(): numpy 2 scalars repr as 'np.float64(...)'
        return s[:-2] if s.endswith(".0") else s
    if isinstance(v, str):
        return field_string(v)
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise LineProtocolError(f"integer field value {v} does not fit in a signed 64-bit integer")
        return f"{v}i"
    type_name = type(v).__name__
    if getattr(getattr(v, "dtype", None), "kind", None) == "b":  # numpy.bool_ is neither bool nor Integral
        return "true" if bool(v) else "false"
    if isinstance(v, Integral):
        return format_field_value(int(v))
    if isinstance(v, Real):
        return format_field_value(float(v))
    raise LineProtocolError(f"unsupported field value type {type_name}: {v!r}")


def series_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """The escaped `measurement,tag=v,...` part of a line (tags sorted, empty keys/values dropped).

    It is the same for every point of a series, so the engine can compute it once and cache it."""
    if not measurement:
        raise LineProtocolError("empty measurement name")
    out = escape_measurement(measurement)
    if out.startswith("#"):
        raise LineProtocolError(f"measurement {measurement!r} starts with '#': InfluxDB would read a comment")
    if tags:
        parts = [out]
        for key in sorted(tags):
            value = tags[key]
            if value is None or key == "":
                continue
            if not isinstance(value, str):
                value = str(value)
            if value == "":
                continue
            parts.append(f"{escape_tag(key)}={_escape_tag_value(value)}")
        out = ",".join(parts)
    return out


def encode_fields(fields: Mapping[str, FieldValue]) -> str:
    """`key=value,...` sorted by key; at least one field is required."""
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    parts = []
    for key in sorted(fields):
        if key == "":
            raise LineProtocolError("empty field key")
        parts.append(f"{escape_tag(key)}={format_field_value(fields[key])}")
    return ",".join(parts)


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ns: int) -> str:
    """One point, without the trailing newline. `ts_ns` is nanoseconds since the Unix epoch."""
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, Integral):
        raise LineProtocolError(f"timestamp must be an integer number of nanoseconds, got {ts_ns!r}")
    return f"{series_prefix(measurement, tags)} {encode_fields(fields)} {int(ts_ns)}"


def encode_line_with_prefix(prefix: str, fields: Mapping[str, FieldValue], ts_ns: int) -> str:
    """Hot path: a line from a cached `series_prefix()`."""
    return f"{prefix} {encode_fields(fields)} {int(ts_ns)}"


def split_lines(payload: bytes) -> list[bytes]:
    """Split a line-protocol body into its lines the way InfluxDB does.

    A plain `split(b"\\n")` is wrong as soon as a string field holds a newline, so bodies containing a
    double quote are scanned like InfluxDB's own `scanLine` (escapes, quoted string field values).
    Empty lines and `#` comments are dropped."""
    if b'"' not in payload:
        return [ln for ln in payload.split(b"\n") if ln.strip() and not ln.lstrip().startswith(b"#")]
    out: list[bytes] = []
    n = len(payload)
    i = 0
    while i < n:
        start = i
        quoted = fields = False
        equals = commas = 0
        while i < n:
            c = payload[i]
            if c == 0x5C and i + 2 < n:  # backslash: skip the escaped byte
                i += 2
                continue
            if c == 0x20:
                fields = True
            if fields:
                if not quoted and c == 0x3D:  # '='
                    equals += 1
                elif not quoted and c == 0x2C:  # ','
                    commas += 1
                elif c == 0x22 and equals > commas:  # '"'
                    quoted = not quoted
            if c == 0x0A and not quoted:
                break
            i += 1
        line = payload[start:i]
        i += 1
        if line.strip() and not line.lstrip().startswith(b"#"):
            out.append(line)
    return out
