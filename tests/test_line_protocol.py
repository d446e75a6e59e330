"""Line protocol encoding: same bytes as influxdb-client's serializer, and safe against injection."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from citywatch.sinks.line_protocol import (
    LineProtocolError,
    encode_line,
    encode_line_with_prefix,
    escape_measurement,
    escape_tag,
    field_string,
    format_field_value,
    series_prefix,
    split_lines,
)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EVIL = "x,area=evil y=1 0\nair,sensor=z"


def client_line(measurement, tags, fields, ts) -> str:
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    return p.time(ts).to_line_protocol()


def write(influxdb, db: str, body: str) -> httpx.Response:
    return httpx.post(f"{influxdb.url}/write", params={"db": db, "precision": "ns"}, content=body.encode(), timeout=10)


def series_rows(result: dict) -> list[dict]:
    out = []
    for res in result.get("results", []):
        assert "error" not in res, res
        for s in res.get("series", []):
            out += [dict(zip(s["columns"], v)) for v in s["values"]]
    return out


# -- unit -------------------------------------------------------------------------------------------


def test_escapes():
    assert escape_measurement("a b,c=d\\e\n\r\t") == "a\\ b\\,c=d\\e\\n\\r\\t"
    assert escape_tag("a b,c=d\\e\n\r\t") == "a\\ b\\,c\\=d\\e\\n\\r\\t"
    assert field_string('say "hi" \\ \n') == '"say \\"hi\\" \\\\ \n"'


@pytest.mark.parametrize(
    "value, text",
    [(12.3, "12.3"), (12.0, "12"), (-0.0, "-0"), (1e16, "1e+16"), (1e-07, "1e-07"), (0.1 + 0.2, "0.30000000000000004"),
     (12, "12i"), (-5, "-5i"), (INT64_MAX, f"{INT64_MAX}i"), (True, "true"), (False, "false"), ("a", '"a"'),
     (np.float64(2.5), "2.5"), (np.float32(0.5), "0.5"), (np.int64(7), "7i"), (np.bool_(True), "true")],
)
def test_format_field_value(value, text):
    assert format_field_value(value) == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), INT64_MAX + 1, INT64_MIN - 1,
                                   None, b"bytes", [1]])
def test_format_field_value_rejects(value):
    with pytest.raises(LineProtocolError):
        format_field_value(value)
    assert issubclass(LineProtocolError, ValueError)


def test_encode_line_sorts_tags_and_fields_and_drops_empty_tags():
    line = encode_line("air", {"sensor": "s1", "area": "", "domain": "air quality"}, {"pm25": 12.5, "flag": True}, 17)
    assert line == "air,domain=air\\ quality,sensor=s1 flag=true,pm25=12.5 17"
    assert encode_line("m", {}, {"f": 1}, 0) == "m f=1i 0"


@pytest.mark.parametrize("args", [
    ("m", {}, {}, 1),                 # no field
    ("", {}, {"f": 1.0}, 1),          # no measurement
    ("#m", {}, {"f": 1.0}, 1),        # would be a comment
    ("m", {}, {"": 1.0}, 1),          # empty field key
    ("m", {}, {"f": math.nan}, 1),
    ("m", {}, {"f": 1.0}, 1.5),       # timestamps are integer ns
])
def test_encode_line_errors(args):
    with pytest.raises(LineProtocolError):
        encode_line(*args)


def test_series_prefix_is_the_start_of_the_line():
    tags = {"sensor": "s 1", "area": "a,b", "empty": ""}
    prefix = series_prefix("air", tags)
    assert prefix == "air,area=a\\,b,sensor=s\\ 1"
    assert encode_line("air", tags, {"pm25": 3.0}, 9) == prefix + " pm25=3 9"
    assert encode_line_with_prefix(prefix, {"pm25": 3.0}, 9) == prefix + " pm25=3 9"
    assert series_prefix("m", {}) == "m"


def test_tag_value_ending_with_backslash_cannot_escape_the_separator():
    assert series_prefix("m", {"a": "x\\", "b": "y"}) == "m,a=x\\ ,b=y"
    assert encode_line("m", {"a": "x\\"}, {"f": 1.0}, 1) == client_line("m", {"a": "x\\"}, {"f": 1.0}, 1)


def test_split_lines_respects_quoted_newlines():
    lines = [encode_line("m", {"t": "a\nb"}, {"s": 'x\ny " z', "f": 1.0}, 1), "m f=2 2",
             encode_line("m", {}, {"s": "\\"}, 3)]
    payload = ("\n".join(lines) + "\n# comment\n\n").encode()
    assert split_lines(payload) == [ln.encode() for ln in lines]
    assert split_lines(b"a f=1 1\nb f=2 2\n") == [b"a f=1 1", b"b f=2 2"]


# -- property: byte-for-byte what influxdb-client produces --------------------------------------------

field_values = st.one_of(
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    measurement=st.text(min_size=1).filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(st.text(), st.text(), max_size=5),
    fields=st.dictionaries(st.text(min_size=1), field_values, min_size=1, max_size=5),
    ts=st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
)
def test_matches_influxdb_client(measurement, tags, fields, ts):
    assert encode_line(measurement, tags, fields, ts) == client_line(measurement, tags, fields, ts)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" ,=\\\"\n\r\tab#")), max_size=12))
def test_matches_influxdb_client_on_special_characters(s):
    m = s if s and not s.startswith("#") else "m" + s
    fields = {s or "f": s, "v" + s: 1.5}
    assert encode_line(m, {s or "k": s, "t": s}, fields, 1) == client_line(m, {s or "k": s, "t": s}, fields, 1)


# -- against the real server ---------------------------------------------------------------------------


def test_tag_value_cannot_inject_points_or_tags(influxdb, db_name):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    line = encode_line("air", {"sensor": EVIL, "area": "a1"}, {"pm25": 1.0, "note": 'q"\nair,sensor=w pm25=9 5'},
                       1_700_000_000_123_456_789)
    assert "\n" in line  # the raw newline inside the quoted string field is legal line protocol
    r = write(influxdb, db_name, line)
    assert r.status_code == 204, r.text
    assert series_rows(influxdb.query("SHOW MEASUREMENTS", db=db_name)) == [{"name": "air"}]
    assert sorted(r["tagKey"] for r in series_rows(influxdb.query("SHOW TAG KEYS FROM air", db=db_name))) == [
        "area", "sensor"]
    rows = series_rows(influxdb.query("SELECT * FROM air", db=db_name))
    assert len(rows) == 1
    # Line protocol cannot carry a newline in a tag: it is stored as the two characters backslash and n.
    assert rows[0]["sensor"] == EVIL.replace("\n", "\\n")
    assert rows[0]["area"] == "a1"
    assert rows[0]["pm25"] == 1.0
    assert rows[0]["note"] == 'q"\nair,sensor=w pm25=9 5'
    assert rows[0]["time"] == 1_700_000_000_123_456_789


def _stored_tag(value: str) -> str:
    """What InfluxDB stores for a tag value encoded like influxdb-client does."""
    text = value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text[:-1] + " " if text.endswith("\\") else text


tag_text = st.text(alphabet=st.one_of(st.sampled_from(list(" ,=\\\"'\n\r\t#x")), st.characters(codec="utf-8")),
                   min_size=1, max_size=16)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(tag_text, st.text(max_size=16), st.floats(allow_nan=False, allow_infinity=False)),
                       min_size=1, max_size=8))
def test_random_tags_and_strings_round_trip_through_influxdb(influxdb, db_name, values):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    influxdb.query("DROP MEASUREMENT rt", db=db_name)
    lines = [encode_line("rt", {"t": t, "k": "fixed"}, {"s": s, "v": v, "i": i}, 1_000 + i)
             for i, (t, s, v) in enumerate(values)]
    r = write(influxdb, db_name, "\n".join(lines))
    assert r.status_code == 204, r.text
    rows = series_rows(influxdb.query("SELECT * FROM rt", db=db_name))
    assert len(rows) == len(values)
    for row in rows:
        t, s, v = values[row["i"]]
        assert row["time"] == 1_000 + row["i"]
        assert row["k"] == "fixed"
        assert row["t"] == _stored_tag(t)
        assert row["s"] == s
        assert float(row["v"]) == v  # InfluxDB prints large floats without an exponent
