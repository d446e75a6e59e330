"""Validator: registry checks, units, time windows, dead letters, counters; TopicPattern."""

from __future__ import annotations


import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citywatch.batch import FLAG_TS_FROM_ARRIVAL
from citywatch.config import ValidationConfig
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import REASONS, Rejection, Validator
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.stats import Stats

T0 = 1717243200  # 2024-06-01T12:00:00Z
T0_NS = T0 * 1_000_000_000
ARRIVAL = T0_NS + 30_000_000_000
TOPIC = TopicPattern("city/{domain}/{sensor}/telemetry")
AQ = "city/air/aq-001/telemetry"

REGISTRY_DOC = {
    "profiles": {
        "aq": {
            "domain": "air",
            "interval": "60s",
            "metrics": {
                "pm25": {"unit": "ug/m3", "min": 0, "max": 1000},
                "pm10": {"unit": "µg/m³", "min": 0, "max": 2000},
                "rh": {"unit": "1", "min": 0, "max": 1},
                "temperature": {"unit": "Cel"},
            },
        }
    },
    "sensors": [
        {"id": "aq-001", "domain": "air", "area": "bien-hung", "lat": 10.95, "lon": 106.82, "profile": "aq"},
        {"id": "aq-002", "domain": "air", "area": "tan-mai", "lat": 10.96, "lon": 106.84, "profile": "aq"},
        {"id": "wq-001", "domain": "water", "area": "dong-nai", "lat": 10.94, "lon": 106.81, "interval": "5m",
         "metrics": {"ph": {"unit": "pH", "min": 0, "max": 14}, "do": {"unit": "mg/L"}}},
    ],
}


def make(**cfg) -> Validator:
    parsed = RegistryFile.model_validate(REGISTRY_DOC)
    registry = Registry({s.id: s for s in parsed.sensors})
    series = SeriesIndex(registry)
    series.add_registry()
    return Validator(registry, series, ValidationConfig(**cfg), TOPIC, Stats())


def run(v: Validator, payload, topic: str = AQ, arrival: int = ARRIVAL):
    if not isinstance(payload, bytes):
        payload = orjson.dumps(payload)
    return v.validate([(topic, payload, arrival)])


def rows(v: Validator, batch) -> list[tuple[str, str, int, float, int]]:
    s = v.series
    return [(s.sensor_ids[i], s.metrics[i], int(t), float(x), int(f))
            for i, t, x, f in zip(batch.series, batch.ts, batch.value, batch.flags)]


def reasons(rejections: list[Rejection]) -> list[str]:
    return [r.reason for r in rejections]


# --- accepted readings ----------------------------------------------------------------------------


def test_good_object_becomes_batch_with_series_ids():
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": 35.2, "pm10": 51, "id": "aq-001"})
    assert rej == []
    assert batch.series.dtype == np.int32 and batch.ts.dtype == np.int64
    assert batch.value.dtype == np.float64 and batch.flags.dtype == np.uint8
    assert rows(v, batch) == [("aq-001", "pm25", T0_NS, 35.2, 0), ("aq-001", "pm10", T0_NS, 51.0, 0)]
    assert list(batch.series) == [v.series.get("aq-001", "pm25"), v.series.get("aq-001", "pm10")]


def test_missing_timestamp_flagged():
    v = make()
    batch, rej = run(v, {"pm25": 35.2})
    assert rej == []
    assert rows(v, batch) == [("aq-001", "pm25", ARRIVAL, 35.2, int(FLAG_TS_FROM_ARRIVAL))]


def test_several_messages_one_batch_and_counters():
    v = make()
    msgs = [
        (AQ, orjson.dumps({"ts": T0, "pm25": 1}), ARRIVAL),
        ("city/air/aq-002/telemetry", orjson.dumps([{"ts": T0, "pm25": 2}, {"ts": T0 + 60, "pm25": 3}]), ARRIVAL),
        ("city/water/wq-001/telemetry",
         orjson.dumps([{"bn": "wq-001/", "bt": T0, "n": "ph", "v": 7.1}, {"n": "do", "v": 6.5, "u": "mg/l"}]),
         ARRIVAL),
        (AQ, b"{not json", ARRIVAL),
    ]
    batch, rej = v.validate(msgs)
    assert rows(v, batch) == [
        ("aq-001", "pm25", T0_NS, 1.0, 0),
        ("aq-002", "pm25", T0_NS, 2.0, 0),
        ("aq-002", "pm25", T0_NS + 60_000_000_000, 3.0, 0),
        ("wq-001", "ph", T0_NS, 7.1, 0),
        ("wq-001", "do", T0_NS, 6.5, 0),
    ]
    assert reasons(rej) == ["malformed_json"]
    snap = v.stats.snapshot()
    assert snap["messages_received"] == 4
    assert snap["readings_accepted"] == 5
    assert snap["readings_rejected"] == 1
    assert snap["rejected_malformed_json"] == 1


def test_empty_input():
    v = make()
    batch, rej = v.validate([])
    assert len(batch) == 0 and rej == []


def test_known_metric_missing_from_series_index_is_added():
    v = make()
    v.series = SeriesIndex(v.registry)  # nothing added up front
    batch, rej = run(v, {"ts": T0, "pm25": 1, "pm10": 2})
    assert rej == [] and list(batch.series) == [0, 1]
    assert v.series.keys() == [("aq-001", "pm25"), ("aq-001", "pm10")]


# --- units ----------------------------------------------------------------------------------------


def test_convertible_units_are_converted_exactly():
    v = make()
    batch, rej = run(v, {
        "ts": T0,
        "pm25": {"value": 0.035, "unit": "mg/m3"},
        "pm10": {"value": 51.3, "unitCode": "GQ"},  # alias of the registry unit: unchanged
        "rh": {"value": 45, "unit": "%"},
        "temperature": {"value": 212, "unit": "degF"},
    })
    assert rej == []
    assert [r[3] for r in rows(v, batch)] == [35.0, 51.3, 0.45, 100.0]


def test_senml_units_are_converted():
    v = make()
    batch, rej = run(v, [{"bn": "aq-001/", "bt": T0, "bu": "mg/m3", "n": "pm25", "v": 0.012},
                         {"n": "rh", "u": "%", "v": 61}])
    assert rej == []
    assert [r[3] for r in rows(v, batch)] == [12.0, 0.61]


@pytest.mark.parametrize("unit", ["Cel", "ppm", "", "furlongs"])
def test_wrong_unit_rejected(unit):
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": {"value": 3, "unit": unit}, "pm10": 4})
    assert [r[1] for r in rows(v, batch)] == ["pm10"]
    assert reasons(rej) == ["wrong_unit"]
    assert rej[0].metric == "pm25" and rej[0].value == "3" and rej[0].ts_ns == T0_NS
    assert v.stats.get("rejected_wrong_unit") == 1


def test_non_string_unit_rejected():
    v = make()
    _, rej = run(v, {"ts": T0, "pm25": {"value": 3, "unit": 5}})
    assert reasons(rej) == ["wrong_unit"]


# --- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["12.5", True, False, None, {"v": 1}, [1], "NaN"])
def test_non_numeric(raw):
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": raw, "pm10": 4})
    assert [r[1] for r in rows(v, batch)] == ["pm10"]
    assert reasons(rej) == ["non_numeric"]
    assert rej[0].metric == "pm25"


def test_senml_string_value_non_numeric():
    v = make()
    batch, rej = run(v, [{"bn": "aq-001/", "bt": T0, "n": "pm25", "vs": "high"}, {"n": "pm10", "v": 9}])
    assert [r[1] for r in rows(v, batch)] == ["pm10"]
    assert reasons(rej) == ["non_numeric"] and rej[0].value == "high"


def test_nan_rejected_rest_of_message_kept():
    v = make()
    batch, rej = run(v, b'{"ts": 1717243200, "pm25": NaN, "pm10": 7}')
    assert rows(v, batch) == [("aq-001", "pm10", T0_NS, 7.0, 0)]
    assert reasons(rej) == ["not_finite"]
    assert rej[0].metric == "pm25" and rej[0].value == "nan"


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 400])
def test_infinity_rejected(literal):
    v = make()
    batch, rej = run(v, b'{"ts": 1717243200, "pm25": ' + literal + b', "pm10": 7}')
    assert [r[1] for r in rows(v, batch)] == ["pm10"]
    assert reasons(rej) == ["not_finite"]


def test_conversion_overflow_is_not_finite():
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": {"value": 1e307, "unit": "mg/m3"}})
    assert len(batch) == 0 and reasons(rej) == ["not_finite"]
    assert "conversion" in rej[0].detail


def test_malformed_json_rejects_message():
    v = make()
    batch, rej = run(v, b'{"ts": 1717243200, "pm25": 3')
    assert len(batch) == 0 and reasons(rej) == ["malformed_json"]
    assert rej[0].payload == '{"ts": 1717243200, "pm25": 3' and rej[0].metric is None


def test_bad_timestamp_and_no_readings():
    v = make()
    _, rej = run(v, {"ts": "2024-06-01T12:00:00", "pm25": 3})
    assert reasons(rej) == ["bad_timestamp"]
    _, rej = run(v, {"id": "aq-001"})
    assert reasons(rej) == ["no_readings"]


# --- time windows ---------------------------------------------------------------------------------


def test_future_timestamp():
    v = make(max_future_skew="5m")
    batch, rej = run(v, [{"ts": T0 + 30 + 299, "pm25": 1}, {"ts": T0 + 30 + 301, "pm25": 2},
                         {"ts": (T0 + 86400 * 365) * 1000, "pm25": 3}])
    assert [r[3] for r in rows(v, batch)] == [1.0]
    assert reasons(rej) == ["future_timestamp", "future_timestamp"]
    assert rej[0].ts_ns == (T0 + 331) * 1_000_000_000 and rej[0].value == "2"
    assert v.stats.get("rejected_future_timestamp") == 2


def test_too_old():
    v = make(max_age="1d")
    batch, rej = run(v, [{"ts": T0 - 86400 + 31, "pm25": 1}, {"ts": T0 - 86400 + 29, "pm25": 2},
                         {"ts": "2020-01-01T00:00:00Z", "pm25": 3}])
    assert [r[3] for r in rows(v, batch)] == [1.0]
    assert reasons(rej) == ["too_old", "too_old"]


def test_huge_windows_do_not_overflow():
    v = make(max_age="1000000d", max_future_skew="1000000d")
    batch, rej = run(v, [{"ts": 100_000_000, "pm25": 1}, {"ts": 6_000_000_000, "pm25": 2}])
    assert rej == [] and len(batch) == 2


def test_senml_relative_time_in_the_future():
    v = make()
    _, rej = run(v, [{"bn": "aq-001/", "n": "pm25", "v": 1, "t": 3600}])
    assert reasons(rej) == ["future_timestamp"]


# --- topics, sensors, registry policies ----------------------------------------------------------


def test_oversize_payload():
    v = make(max_payload_bytes=64)
    payload = orjson.dumps({"ts": T0, "pm25": 1, "comment": "x" * 80})
    batch, rej = run(v, payload)
    assert len(batch) == 0 and reasons(rej) == ["oversize_payload"]
    assert rej[0].sensor == "aq-001" and rej[0].domain == "air" and len(rej[0].payload) == len(payload)
    batch, rej = run(v, orjson.dumps({"ts": T0, "pm25": 1}))
    assert len(batch) == 1


def test_oversize_payload_excerpt_is_512_bytes():
    v = make()
    payload = b'{"pm25": 1, "x": "' + "é".encode() * 200_000 + b'"}'
    _, rej = run(v, payload)
    assert reasons(rej) == ["oversize_payload"]
    assert len(rej[0].payload.encode()) <= 512 + 3  # a cut character becomes U+FFFD


@pytest.mark.parametrize("topic", ["city/air/aq 001/telemetry", "city/air/aq,001/telemetry",
                                   "city/air/-aq/telemetry", "city/air/aq=1/telemetry", "city/air/" + "a" * 65 + "/telemetry"])
def test_invalid_sensor_id(topic):
    v = make()
    batch, rej = run(v, {"pm25": 1}, topic=topic)
    assert len(batch) == 0 and reasons(rej) == ["invalid_sensor_id"]


@pytest.mark.parametrize("topic", ["city/air/aq-001/status", "city/air/aq-001", "city/air//telemetry",
                                   "city/air/+/telemetry", "city/#/aq-001/telemetry", "town/air/aq-001/telemetry"])
def test_topic_mismatch(topic):
    v = make()
    batch, rej = run(v, {"pm25": 1}, topic=topic)
    assert len(batch) == 0 and reasons(rej) == ["topic_mismatch"]
    assert rej[0].sensor is None and rej[0].domain is None


def test_unknown_sensor_rejected():
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": 1}, topic="city/air/aq-999/telemetry")
    assert len(batch) == 0 and reasons(rej) == ["unknown_sensor"]
    assert v.registry.get("aq-999") is None


def test_unknown_sensor_auto_registered():
    v = make(unknown_sensor="auto_register")
    n_series = len(v.series)
    batch, rej = run(v, {"ts": T0, "pm25": {"value": 0.5, "unit": "mg/m3"}, "noise": 61.5},
                     topic="city/traffic/tr-9/telemetry")
    assert rej == []
    sensor = v.registry.get("tr-9")
    assert sensor is not None and sensor.auto_registered and sensor.domain == "traffic"
    # no registry unit for an auto-registered metric: stored as sent
    assert rows(v, batch) == [("tr-9", "pm25", T0_NS, 0.5, 0), ("tr-9", "noise", T0_NS, 61.5, 0)]
    assert len(v.series) == n_series + 2
    # second message reuses the series
    batch, _ = run(v, {"ts": T0 + 1, "noise": 60}, topic="city/traffic/tr-9/telemetry")
    assert list(batch.series) == [v.series.get("tr-9", "noise")]
    assert len(v.series) == n_series + 2


def test_auto_register_needs_a_known_domain_and_a_reading():
    v = make(unknown_sensor="auto_register")
    _, rej = run(v, {"ts": T0, "db": 1}, topic="city/noise/nz-1/telemetry")
    assert reasons(rej) == ["unknown_sensor"] and "domain" in rej[0].detail
    _, rej = run(v, b"garbage", topic="city/air/aq-777/telemetry")
    assert reasons(rej) == ["malformed_json"]
    assert v.registry.get("aq-777") is None and v.registry.get("nz-1") is None


def test_auto_registered_sensor_rejects_unusable_metric_names():
    v = make(unknown_sensor="auto_register")
    batch, rej = run(v, {"ts": T0, "bad name": 1, "ok_name": 2}, topic="city/air/aq-500/telemetry")
    assert [r[1] for r in rows(v, batch)] == ["ok_name"]
    assert reasons(rej) == ["unknown_metric"]


def test_domain_mismatch():
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": 1}, topic="city/water/aq-001/telemetry")
    assert len(batch) == 0 and reasons(rej) == ["domain_mismatch"]


def test_unknown_metric_rejected():
    v = make()
    batch, rej = run(v, {"ts": T0, "pm25": 1, "co2": 415})
    assert [r[1] for r in rows(v, batch)] == ["pm25"]
    assert reasons(rej) == ["unknown_metric"] and rej[0].metric == "co2" and rej[0].value == "415"


def test_unknown_metric_accepted_by_policy():
    v = make(unknown_metric="accept")
    batch, rej = run(v, {"ts": T0, "pm25": 1, "co2": {"value": 415, "unit": "ppm"}})
    assert rej == []
    assert rows(v, batch) == [("aq-001", "pm25", T0_NS, 1.0, 0), ("aq-001", "co2", T0_NS, 415.0, 0)]
    assert v.series.get("aq-001", "co2") is not None


def test_mixed_message_good_readings_survive():
    v = make(max_age="7d")
    payload = (b'[{"ts": 1717243200, "pm25": 12.5, "pm10": "high", "co2": 400, "rh": {"value": 1, "unit": "K"}},'
               b' {"ts": "noon", "pm25": 13},'
               b' {"ts": 1717243260000, "pm25": NaN, "pm10": 20, "temperature": {"value": 95, "unit": "degF"}},'
               b' {"ts": 1600000000, "pm25": 14},'
               b' {"ts": 1817243200, "pm25": 15},'
               b' 7]')
    batch, rej = run(v, payload)
    assert rows(v, batch) == [
        ("aq-001", "pm25", T0_NS, 12.5, 0),
        ("aq-001", "pm10", T0_NS + 60_000_000_000, 20.0, 0),
        ("aq-001", "temperature", T0_NS + 60_000_000_000, 35.0, 0),
    ]
    assert sorted(reasons(rej)) == sorted([
        "bad_timestamp", "bad_structure", "non_numeric", "unknown_metric", "wrong_unit", "not_finite", "too_old",
        "future_timestamp",
    ])
    snap = v.stats.snapshot()
    assert snap["readings_accepted"] == 3 and snap["readings_rejected"] == 8
    assert all(r.topic == AQ and r.sensor == "aq-001" and r.arrival_ns == ARRIVAL for r in rej)


# --- dead letters ---------------------------------------------------------------------------------


def test_rejection_to_json_and_deadletter_topic():
    v = make()
    _, rej = run(v, b'{"ts": 1717243200, "pm25": "x"}')
    (r,) = rej
    doc = orjson.loads(r.to_json())
    assert doc == {
        "reason": "non_numeric",
        "detail": "pm25: value is a str, not a JSON number",
        "topic": AQ,
        "domain": "air",
        "sensor": "aq-001",
        "metric": "pm25",
        "value": "x",
        "ts_ns": T0_NS,
        "arrival_ns": ARRIVAL,
        "arrival": "2024-06-01T12:00:30.000000000Z",
        "payload": '{"ts": 1717243200, "pm25": "x"}',
    }
    dl = TopicPattern("city/deadletter/{domain}/{sensor}")
    assert r.deadletter_topic(dl) == "city/deadletter/air/aq-001"
    _, rej = run(v, b"{}", topic="elsewhere")
    assert rej[0].deadletter_topic(dl) == "city/deadletter/_unknown/_unknown"


def test_rejection_json_survives_lone_surrogates_and_bad_bytes():
    v = make(unknown_sensor="auto_register")
    _, rej = run(v, b'{"ts": 1717243200, "\\ud800x": NaN, "a": 1}', topic="city/air/aq-600/telemetry")
    for r in rej:
        orjson.loads(r.to_json())
    _, rej = run(v, b"\xff\xfe\x00junk")
    assert reasons(rej) == ["malformed_json"] and "\ufffd" in rej[0].payload
    orjson.loads(rej[0].to_json())


# --- TopicPattern ---------------------------------------------------------------------------------


def test_topic_pattern():
    p = TopicPattern("city/{domain}/{sensor}/telemetry")
    assert p.subscription == "city/+/+/telemetry"
    assert p.names == ("domain", "sensor")
    assert p.match("city/air/aq-001/telemetry") == {"domain": "air", "sensor": "aq-001"}
    for bad in ["city/air/aq-001", "city/air/aq-001/telemetry/x", "city//aq-001/telemetry", "city/air/a+b/telemetry",
                "city/air/#/telemetry", "City/air/aq-001/telemetry", "/city/air/aq-001/telemetry"]:
        assert p.match(bad) is None, bad
    alerts = TopicPattern("city/alerts/{domain}/{sensor}")
    assert alerts.subscription == "city/alerts/+/+"
    assert alerts.format(domain="air", sensor="aq-001") == "city/alerts/air/aq-001"
    assert alerts.format(**p.match("city/water/wq-1/telemetry"), extra="ignored") == "city/alerts/water/wq-1"
    for values in [{"domain": "air"}, {"domain": "air", "sensor": ""}, {"domain": "air", "sensor": "a/b"},
                   {"domain": "+", "sensor": "x"}, {"domain": "air", "sensor": "x#"}]:
        with pytest.raises(ValueError):
            alerts.format(**values)
    assert TopicPattern("{site}/{sensor}/{domain}").match("hn/s1/air") == {"site": "hn", "sensor": "s1", "domain": "air"}


@pytest.mark.parametrize("pattern", ["", "city/+/{sensor}", "city/#", "city/{a}/{a}", "city/x{a}/t", "city/{1a}"])
def test_topic_pattern_rejects_bad_patterns(pattern):
    with pytest.raises(ValueError):
        TopicPattern(pattern)


def test_validator_needs_domain_and_sensor_segments():
    v = make()
    with pytest.raises(ValueError):
        Validator(v.registry, v.series, ValidationConfig(), TopicPattern("city/{sensor}"), Stats())


# --- never raises -----------------------------------------------------------------------------------

_json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
_json = st.recursive(_json_scalars,
                     lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5),
                     max_leaves=25)
_keys = st.sampled_from(["ts", "timestamp", "time", "dateObserved", "id", "pm25", "pm10", "rh", "temperature", "co2",
                         "bn", "bt", "bu", "bv", "n", "v", "t", "u", "vs", "vb", "vd", "s", "value", "unit", "unitCode"])
_values = (_json_scalars | st.integers(min_value=0, max_value=2**64) | st.sampled_from(
    [T0, T0 * 1000, T0_NS, "2024-06-01T12:00:00Z", "2024-06-01T12:00:00", "ug/m3", "mg/m3", "%", "pm25", "aq-001/"]))
_records = st.dictionaries(_keys, _values | st.dictionaries(_keys, _values, max_size=3), max_size=6)
_payload_like = _records | st.lists(_records, max_size=5)
_topics = st.sampled_from([AQ, "city/water/wq-001/telemetry", "city/air/aq-404/telemetry", "city/forest/f 1/telemetry",
                           "city/air/aq-001/telemetry/extra", "city/noise/nz/telemetry", "city/water/aq-001/telemetry"])


def _dump(doc) -> bytes:
    import json
    return json.dumps(doc).encode("utf-8", "surrogatepass")  # stdlib: writes NaN/Infinity literals too


def _check(v: Validator, topic: str, payload: bytes) -> None:
    batch, rej = v.validate([(topic, payload, ARRIVAL)])
    assert len(batch) + len(rej) >= 1
    assert all(r.reason in REASONS and r.reason != "internal_error" for r in rej), [(r.reason, r.detail) for r in rej]
    assert np.isfinite(batch.value).all()
    for r in rej:
        orjson.loads(r.to_json())


_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.binary(max_size=300), _topics, st.booleans())
def test_random_bytes_never_raise(payload, topic, auto):
    _check(make(unknown_sensor="auto_register" if auto else "reject"), topic, payload)


@_settings
@given(_json, _topics)
def test_random_json_never_raises(doc, topic):
    _check(make(unknown_sensor="auto_register", unknown_metric="accept"), topic, _dump(doc))


@_settings
@given(_payload_like, _topics, st.booleans())
def test_random_payload_like_documents_never_raise(doc, topic, accept):
    _check(make(unknown_sensor="auto_register", unknown_metric="accept" if accept else "reject"), topic, _dump(doc))
