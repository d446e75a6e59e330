"""Payload decoding: every accepted format with exact values and ns timestamps, and the error codes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch.batch import FLAG_TS_FROM_ARRIVAL
from citywatch.ingest.payloads import Decoded, TimestampError, decode_payload, timestamp_ns

T0 = 1717243200  # 2024-06-01T12:00:00Z
T0_NS = T0 * 1_000_000_000
ARRIVAL = T0_NS + 30_000_000_000  # 30 s after T0
ARR = int(FLAG_TS_FROM_ARRIVAL)


def dec(doc) -> Decoded:
    payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_payload(payload, ARRIVAL)


def codes(d: Decoded) -> list[str]:
    return [e.split(":", 1)[0] for e in d.errors]


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (T0, T0_NS),  # seconds
        (T0 * 1000, T0_NS),  # milliseconds
        (T0 * 1_000_000, T0_NS),  # microseconds
        (T0_NS, T0_NS),  # nanoseconds
        (1717243200.123, T0_NS + 123_000_000),  # float seconds: exact through the decimal repr
        (1717243200123.456, T0_NS + 123_456_000),  # float milliseconds
        (1717243200123456.5, T0_NS + 123_456_500),  # float microseconds
        (float(T0), T0_NS),
        (9_000_000_000, 9_000_000_000 * 1_000_000_000),  # 2255: seconds, still within int64 ns
        (100_000_000_000, 100_000_000_000 * 1_000_000),  # smallest milliseconds value
        (10**14, 10**14 * 1000),  # smallest microseconds value
        (10**17, 10**17),  # smallest nanoseconds value
        ("2024-06-01T12:00:00Z", T0_NS),
        ("2024-06-01T12:00:00z", T0_NS),
        ("2024-06-01t12:00:00Z", T0_NS),
        ("2024-06-01 12:00:00Z", T0_NS),
        ("2024-06-01T19:00:00+07:00", T0_NS),
        ("2024-06-01T19:00:00+0700", T0_NS),
        ("2024-06-01T06:30:00-05:30", T0_NS),
        ("2024-06-01T12:00:00+00:00", T0_NS),
        ("2024-06-01T12:00:00-00:00", T0_NS),
        ("2024-06-01T12:00:00.5Z", T0_NS + 500_000_000),
        ("2024-06-01T12:00:00.123456789Z", T0_NS + 123_456_789),
        ("2024-06-01T12:00:00.1234567891Z", T0_NS + 123_456_789),  # digits beyond ns truncated
        ("2024-06-02T02:00:00.000001+14:00", T0_NS + 1_000),
        ("2016-12-31T23:59:60Z", 1483228800 * 1_000_000_000),  # leap second -> next second
        ("2024-02-29T00:00:00Z", 1709164800 * 1_000_000_000),
    ],
)
def test_timestamp_ns(raw, expected):
    assert timestamp_ns(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "2024-06-01T12:00:00",  # naive: ambiguous
        "2024-06-01",
        "1717243200",  # numeric string
        "yesterday",
        "2024-02-30T00:00:00Z",
        "2024-06-01T24:00:00Z",
        "2024-06-01T12:00:00+24:00",
        "٢٠٢٤-06-01T12:00:00Z",  # non-ASCII digits
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",  # beyond int64 ns
        0,
        -5,
        0.0,
        True,
        [T0],
        {"t": T0},
        2**63,  # ns beyond int64
        99_999_999_999,  # seconds: year 5138, beyond int64 ns
        float("nan"),
        float("inf"),
    ],
)
def test_timestamp_rejected(raw):
    with pytest.raises(TimestampError):
        timestamp_ns(raw)


def test_naive_string_detail_says_why():
    d = dec({"ts": "2024-06-01T12:00:00", "pm25": 1})
    assert d.readings == []
    assert codes(d) == ["bad_timestamp"]
    assert "UTC offset" in d.errors[0]


# --- (a) one object ---------------------------------------------------------------------------


def test_object_exact_values_and_metadata_ignored():
    d = dec(b'{"id": "aq-001", "sensor": "aq-001", "device": "x", "deviceId": "y", "type": "AQ", "seq": 7,'
            b' "ts": 1717243200, "pm25": 35.2, "pm10": 51, "temperature": -3.5}')
    assert d.errors == []
    assert d.readings == [
        (T0_NS, "pm25", 35.2, None, 0),
        (T0_NS, "pm10", 51, None, 0),
        (T0_NS, "temperature", -3.5, None, 0),
    ]


@pytest.mark.parametrize("key", ["ts", "timestamp", "time", "dateObserved"])
def test_object_timestamp_keys(key):
    d = dec({key: "2024-06-01T19:00:00+07:00", "pm25": 1.5})
    assert d.readings == [(T0_NS, "pm25", 1.5, None, 0)]


def test_object_first_timestamp_key_wins_and_others_are_not_metrics():
    d = dec({"time": T0 + 60, "ts": T0, "pm25": 1})
    assert d.readings == [(T0_NS, "pm25", 1, None, 0)]


def test_object_value_with_unit_and_unitcode():
    d = dec({"ts": T0 * 1000, "pm25": {"value": 0.035, "unit": "mg/m3"}, "rh": {"value": 45, "unitCode": "P1"},
             "no2": {"value": 12}})
    assert d.readings == [
        (T0_NS, "pm25", 0.035, "mg/m3", 0),
        (T0_NS, "rh", 45, "P1", 0),
        (T0_NS, "no2", 12, None, 0),
    ]


def test_object_ngsi_ld_entity():
    d = dec({
        "id": "urn:ngsi-ld:AirQualityObserved:aq-001",
        "type": "AirQualityObserved",
        "dateObserved": {"type": "Property", "value": "2024-06-01T12:00:00Z"},
        "pm25": {"type": "Property", "value": 35.2, "unitCode": "GQ"},
    })
    assert d.errors == []
    assert d.readings == [(T0_NS, "pm25", 35.2, "GQ", 0)]


def test_object_without_timestamp_uses_arrival_and_flags():
    d = dec({"pm25": 35.2, "id": "aq-001"})
    assert d.readings == [(ARRIVAL, "pm25", 35.2, None, ARR)]
    d = dec({"ts": None, "pm25": 35.2})
    assert d.readings == [(ARRIVAL, "pm25", 35.2, None, ARR)]


def test_object_non_numeric_values_are_passed_raw():
    # The validator, which knows the metric, rejects them (non_numeric).
    d = dec({"ts": T0, "a": "12.5", "b": True, "c": None, "d": [1], "e": {"unit": "ug/m3"}})
    assert d.errors == []
    assert [(m, v, u) for _, m, v, u, _ in d.readings] == [
        ("a", "12.5", None), ("b", True, None), ("c", None, None), ("d", [1], None), ("e", {"unit": "ug/m3"}, "ug/m3"),
    ]


def test_object_bad_timestamp_loses_only_that_record():
    d = dec({"ts": "yesterday", "pm25": 1})
    assert d.readings == [] and codes(d) == ["bad_timestamp"]


# --- (b) array of objects -----------------------------------------------------------------------


def test_backlog_array_each_record_with_its_own_timestamp():
    d = dec([
        {"ts": T0, "pm25": 35.2},
        {"ts": (T0 + 60) * 1000, "pm25": 36.0, "pm10": 50},
        {"timestamp": "2024-06-01T12:02:00.250Z", "pm25": {"value": 0.037, "unit": "mg/m3"}},
        {"pm25": 38},
    ])
    assert d.errors == []
    assert d.readings == [
        (T0_NS, "pm25", 35.2, None, 0),
        (T0_NS + 60_000_000_000, "pm25", 36.0, None, 0),
        (T0_NS + 60_000_000_000, "pm10", 50, None, 0),
        (T0_NS + 120_250_000_000, "pm25", 0.037, "mg/m3", 0),
        (ARRIVAL, "pm25", 38, None, ARR),
    ]


def test_backlog_array_bad_records_reported_good_kept():
    d = dec([{"ts": T0, "pm25": 1}, 42, {"ts": "2024-06-01", "pm25": 2}, {"ts": T0 + 1, "pm25": 3}])
    assert [r[2] for r in d.readings] == [1, 3]
    assert codes(d) == ["bad_structure", "bad_timestamp"]
    assert "record 1" in d.errors[0] and "record 2" in d.errors[1]


# --- (c) SenML ----------------------------------------------------------------------------------


def test_senml_base_name_time_unit_and_relative_offsets():
    d = dec([
        {"bn": "urn:dev:aq-001:", "bt": T0, "bu": "ug/m3", "n": "pm25", "v": 35.2},
        {"n": "pm10", "v": 51, "t": 60},
        {"n": "temperature", "u": "Cel", "v": 31.5, "t": -0.5},
    ])
    assert d.errors == []
    assert d.readings == [
        (T0_NS, "pm25", 35.2, "ug/m3", 0),
        (T0_NS + 60_000_000_000, "pm10", 51, "ug/m3", 0),
        (T0_NS - 500_000_000, "temperature", 31.5, "Cel", 0),
    ]


def test_senml_float_base_time_is_exact():
    d = dec([{"bn": "aq-001/", "bt": 1717243200.125, "n": "pm25", "v": 1, "t": 0.001}])
    assert d.readings == [(T0_NS + 126_000_000, "pm25", 1, None, 0)]


@pytest.mark.parametrize("bt, scale", [(T0 * 1000, "ms"), (T0 * 1_000_000, "us"), (T0_NS, "ns")])
def test_senml_absolute_time_magnitude_rule(bt, scale):
    d = dec([{"bn": "aq-001/", "bt": bt, "n": "pm25", "v": 1}])
    assert d.readings == [(T0_NS, "pm25", 1, None, 0)], scale


def test_senml_base_value_and_base_changes_apply_to_following_records():
    d = dec([
        {"bn": "aq-001/", "bt": T0, "bv": 100, "n": "a", "v": 1},
        {"n": "b", "v": 2.5},
        {"bv": 0, "bu": "ug/m3", "bt": T0 + 10, "n": "c", "v": 3},
        {"n": "d", "v": 4, "t": 1},
    ])
    assert d.readings == [
        (T0_NS, "a", 101, None, 0),
        (T0_NS, "b", 102.5, None, 0),
        (T0_NS + 10_000_000_000, "c", 3, "ug/m3", 0),
        (T0_NS + 11_000_000_000, "d", 4, "ug/m3", 0),
    ]


def test_senml_relative_times_are_relative_to_arrival_and_flagged():
    d = dec([{"bn": "aq-001/", "n": "pm25", "v": 1}, {"n": "pm25", "v": 2, "t": -60}, {"n": "pm25", "v": 3, "t": -0.25}])
    assert d.readings == [
        (ARRIVAL, "pm25", 1, None, ARR),
        (ARRIVAL - 60_000_000_000, "pm25", 2, None, ARR),
        (ARRIVAL - 250_000_000, "pm25", 3, None, ARR),
    ]
    # a relative base time (< 2**28) with record offsets
    d = dec([{"bt": -120, "n": "x", "v": 1, "t": 30}])
    assert d.readings == [(ARRIVAL - 90_000_000_000, "x", 1, None, ARR)]


def test_senml_metric_from_base_name_when_n_is_missing_or_empty():
    d = dec([{"bn": "aq-001/pm25", "bt": T0, "v": 1}, {"bn": "urn:dev:aq-001:pm10", "n": "", "v": 2}])
    assert [(r[1], r[2]) for r in d.readings] == [("pm25", 1), ("pm10", 2)]
    d = dec([{"bn": "urn:dev:aq-001:", "bt": T0, "v": 1}])
    assert d.readings == [] and codes(d) == ["bad_structure"]


def test_senml_non_numeric_value_kinds_are_passed_raw_per_record():
    d = dec([{"bn": "aq-001/", "bt": T0, "n": "status", "vs": "ok"}, {"n": "door", "vb": True},
             {"n": "blob", "vd": "aGk="}, {"n": "pm25", "v": 7}])
    assert d.errors == []
    assert [(r[1], r[2]) for r in d.readings] == [("status", "ok"), ("door", True), ("blob", "aGk="), ("pm25", 7)]


def test_senml_invalid_base_field_drops_following_records():
    d = dec([{"bn": "aq-001/", "bt": T0, "n": "a", "v": 1}, {"bt": "later", "n": "b", "v": 2}, {"n": "c", "v": 3}])
    assert [r[1] for r in d.readings] == ["a"]
    assert codes(d) == ["bad_timestamp"] and "1 following" in d.errors[0]


def test_senml_record_errors():
    d = dec([
        {"bn": "aq-001/", "bt": T0},  # base fields only: fine, no reading
        {"n": "a", "v": 1},
        {"n": "b"},  # no value
        {"n": "c", "s": 10},  # sum-only
        {"n": 5, "v": 1},
        {"n": "d", "v": 1, "t": "soon"},
        "x",
        {"n": "e", "v": 2},
    ])
    assert [(r[1], r[2]) for r in d.readings] == [("a", 1), ("e", 2)]
    assert codes(d) == ["bad_structure", "bad_structure", "bad_structure", "bad_timestamp", "bad_structure"]


def test_senml_single_record_object():
    d = dec({"bn": "aq-001/", "bt": T0, "n": "pm25", "v": 3.5, "u": "ug/m3"})
    assert d.readings == [(T0_NS, "pm25", 3.5, "ug/m3", 0)]


# --- malformed and odd documents ----------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"{", b"pm25=3", b'{"a": 1,}', b"\xff\xfe{}", b"[" * 5000])
def test_malformed_json(payload):
    d = decode_payload(payload, ARRIVAL)
    assert d.readings == [] and codes(d) == ["malformed_json"]


def test_nan_and_infinity_literals_keep_the_rest_of_the_message():
    d = decode_payload(b'{"ts": 1717243200, "pm25": NaN, "pm10": Infinity, "no2": -Infinity, "o3": 1e400, "co": 2}',
                       ARRIVAL)
    assert d.errors == []
    values = {m: v for _, m, v, _, _ in d.readings}
    assert values["pm25"] != values["pm25"]
    assert values["pm10"] == float("inf") and values["no2"] == float("-inf") and values["o3"] == float("inf")
    assert values["co"] == 2


@pytest.mark.parametrize("payload", [b"{}", b"[]", b'{"id": "aq-001", "ts": 1717243200}', b"[{}]"])
def test_no_readings(payload):
    d = decode_payload(payload, ARRIVAL)
    assert d.readings == [] and codes(d) == ["no_readings"]


@pytest.mark.parametrize("payload", [b"42", b'"pm25"', b"null", b"true", b"[1, 2]"])
def test_wrong_structure(payload):
    d = decode_payload(payload, ARRIVAL)
    assert d.readings == [] and set(codes(d)) == {"bad_structure"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(payload):
    d = decode_payload(payload, ARRIVAL)
    assert d.readings or d.errors
    for e in d.errors:
        assert e.split(": ", 1)[0] in {"malformed_json", "bad_structure", "bad_timestamp", "no_readings"}
