"""Fuzzing the decoders, the validator and the line-protocol encoder.

Property-based (hypothesis) here; coverage-guided (atheris) harnesses are in fuzz/ (`make fuzz`).
Both use the invariants of fuzz/checks.py. The seeded generator below sends 100 000 hostile payloads
through the real validation path, and a share of them through the running engine on the real broker.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import orjson
import pytest
from paho.mqtt.client import topic_matches_sub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from line_protocol_parser import parse_line

from citywatch.ingest.payloads import TimestampError, decode_payload, timestamp_ns
from citywatch.pipeline import Engine
from citywatch.sinks.line_protocol import encode_line, split_lines

from pipeline_helpers import Device, Listener, count, engine_settings, rows, small_registry, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
from checks import (ARRIVAL_NS, check_counters, check_decoded, check_line_round_trip,  # noqa: E402
                    check_validated, make_validator)

T0_S = ARRIVAL_NS // 10**9 - 3600


# -- regression: found by fuzz/fuzz_timestamps.py ------------------------------------------------------


@pytest.mark.parametrize("raw", [5e-324, 1e-300, 4e-10])
def test_positive_epoch_below_one_nanosecond_is_a_bad_timestamp(raw):
    with pytest.raises(TimestampError, match="not after 1970-01-01"):
        timestamp_ns(raw)
    decoded = decode_payload(orjson.dumps({"ts": raw, "pm25": 1.0}), ARRIVAL_NS)
    assert decoded.readings == [] and decoded.errors[0].startswith("bad_timestamp: ")


# -- decoders: structure-aware SenML, exact round trips -----------------------------------------------

_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from([T0_S, T0_S * 1000, -60, 0, 2**28, "aq-001:", "ug/m3", "mg/m3", "Cel", "%"]))
_senml_key = st.sampled_from(["bn", "bt", "bu", "bv", "bs", "bver", "n", "v", "vs", "vb", "vd", "s", "t", "u", "ut"])
_senml_record = st.dictionaries(_senml_key, _scalar | st.lists(_scalar, max_size=2), max_size=7)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_senml_record, max_size=8) | _senml_record)
def test_senml_structures_keep_the_decoder_contract(doc):
    payload = json.dumps(doc, allow_nan=True).encode()
    check_decoded(decode_payload(payload, ARRIVAL_NS))


_metric = st.sampled_from(["pm25", "no2", "relativeHumidity", "temperature"])
_value = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
_reading = st.tuples(st.integers(0, 86_400), _metric, _value)


def _expected(readings):
    return sorted((ARRIVAL_NS - 86_400 * 10**9 + s * 10**9, m, v) for s, m, v in readings)


@settings(max_examples=300, deadline=None)
@given(st.lists(_reading, min_size=1, max_size=20, unique_by=lambda r: (r[0], r[1])),
       st.sampled_from(["object", "array", "senml"]))
def test_valid_payloads_round_trip_exactly_in_every_format(readings, fmt):
    base_s = ARRIVAL_NS // 10**9 - 86_400
    if fmt == "object":  # one object per timestamp, sent one by one
        by_ts: dict[int, dict] = {}
        for s, m, v in readings:
            by_ts.setdefault(s, {"ts": (base_s + s) * 1000})[m] = v
        decoded = [decode_payload(orjson.dumps(doc), ARRIVAL_NS) for doc in by_ts.values()]
    elif fmt == "array":
        decoded = [decode_payload(orjson.dumps([{"ts": base_s + s, m: v} for s, m, v in readings]), ARRIVAL_NS)]
    else:
        records = [{"bn": "aq-001:", "bt": base_s, "n": readings[0][1], "v": readings[0][2], "t": readings[0][0]}]
        records += [{"n": m, "v": v, "t": s} for s, m, v in readings[1:]]
        decoded = [decode_payload(orjson.dumps(records), ARRIVAL_NS)]
    got = []
    for d in decoded:
        check_decoded(d)
        assert d.errors == []
        got += [(ts, m, v) for ts, m, v, _u, flags in d.readings if flags == 0]
    assert sorted(got) == _expected(readings)
    for (_ts, _m, v), (_ts2, _m2, v2) in zip(sorted(got), _expected(readings)):
        assert type(v) is type(v2)  # an int stays an int, a float a float: the validator decides


# -- the validator on mutated valid payloads ----------------------------------------------------------

_valid = st.sampled_from([
    b'{"ts": %d, "pm25": 12.5, "no2": 40}' % (T0_S * 1000),
    b'[{"ts": %d, "pm25": 20.5}, {"ts": "2026-11-17T06:00:00Z", "no2": 21}]' % T0_S,
    b'[{"bn": "aq-001:", "bt": %d, "n": "pm25", "v": 1.5, "u": "mg/m3"}, {"n": "no2", "v": 2, "t": 60}]' % T0_S,
])


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(_valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[i:i] = draw(st.sampled_from([b"NaN", b"1e999", b"-0", b'"x"', b"null", b"[[[[", b"}", b"\\u0000",
                                              b'"\\ud800"', b"9" * 400, b",", b'"ts":']))
    return bytes(data)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["city/air/aq-001/telemetry", "city/water/wq-001/telemetry",
                                           "city/air/aq-9/telemetry"]), _mutated()), min_size=1, max_size=5),
       st.sampled_from([{}, {"unknown_sensor": "auto_register", "unknown_metric": "accept"},
                        {"max_messages_per_sensor_per_s": 1, "rate_limit_burst": 2}]))
def test_mutated_payloads_are_accepted_or_rejected_with_a_reason(messages, cfg):
    v = make_validator(**cfg)
    batch, rejections = v.validate([(t, p, ARRIVAL_NS) for t, p in messages])
    check_validated(v, len(messages), batch, rejections, int(v.stats.get("rate_limited_dropped")))
    check_counters(v.stats)


# -- the line-protocol encoder: injection strings round-trip through a parser ---------------------------

_hostile = st.text(alphabet=st.one_of(st.sampled_from(list(' ,=\\"\'\n\r\t#')),
                                      st.characters(codec="utf-8", exclude_characters="\x00")), max_size=16)
_finite = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x == 0 or abs(x) >= sys.float_info.min)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(_hostile, _hostile, _hostile, _finite), min_size=1, max_size=6))
def test_tag_and_string_values_cannot_inject_line_protocol(points):
    lines = []
    for i, (sensor, area, reason, value) in enumerate(points):
        tags = {"sensor": sensor, "area": area}
        fields = {"reason": reason, "value": value, "i": i}
        line = encode_line("alerts", tags, fields, 1_700_000_000_000_000_000 + i)
        check_line_round_trip(line, tags, fields, parse_line)
        lines.append(line)
    body = "\n".join(lines).encode()
    parsed = [parse_line(ln.decode()) for ln in split_lines(body)]
    assert [(p["fields"]["i"], p["measurement"], p["time"]) for p in parsed] == [
        (i, "alerts", 1_700_000_000_000_000_000 + i) for i in range(len(points))]


# -- 100 000 hostile payloads through the real validation path ------------------------------------------

GOOD_TOPIC = "city/air/aq-002/telemetry"
INJECTIONS = ["pm25,area=x pm25=1 0\n", "\n", '"', "\\", "aq-001 pm25=9", "#", "\x00", "\u2028", "'; DROP", "${x}"]


class HostilePayloads:
    """A seeded stream of (topic, payload, kind) messages: truncated and mutated valid payloads,
    random bytes, huge numbers, deep nesting, wrong types, injection strings, oversized payloads and
    hostile topics; and, between them, good readings of aq-002 (kind "good") that must come out exact."""

    OVERSIZE = b'{"ts": 1, "pm25": 1, "pad": "' + b"x" * 300_000 + b'"}'
    KINDS = ("truncated", "mutated", "random_bytes", "huge_number", "deep_nesting", "wrong_type", "injection",
             "oversize", "bad_topic", "senml")

    def __init__(self, seed: int, t0_s: int) -> None:
        self.rng = random.Random(seed)
        self.t0_s = t0_s
        self.good = 0

    def valid(self) -> bytes:
        r, t = self.rng, self.t0_s + self.rng.randrange(3600)
        return r.choice([
            b'{"ts": %d, "pm25": %r, "no2": %r}' % (t * 1000, r.uniform(0, 500), r.uniform(0, 300)),
            b'[{"ts": %d, "pm25": %r}, {"ts": "2026-11-17T06:00:00Z", "no2": %d}]' % (t, r.random(), r.randrange(99)),
            b'[{"bn": "aq-001:", "bt": %d, "n": "pm25", "v": %r, "u": "mg/m3"}, {"n": "no2", "v": 2, "t": 60}]'
            % (t, r.random()),
            b'{"time": "2026-11-17T06:00:00+07:00", "pm25": {"value": %r, "unit": "ug/m3"}}' % r.random(),
        ])

    def hostile(self) -> tuple[str, bytes, str]:
        r = self.rng
        kind = r.choice(self.KINDS)
        topic = r.choice(["city/air/aq-001/telemetry", "city/water/wq-001/telemetry", "city/air/aq-404/telemetry"])
        if kind == "truncated":
            v = self.valid()
            payload = v[: r.randrange(len(v))]
        elif kind == "mutated":
            data = bytearray(self.valid())
            for _ in range(r.randint(1, 6)):
                data[r.randrange(len(data))] = r.randrange(256)
            payload = bytes(data)
        elif kind == "random_bytes":
            payload = r.randbytes(r.randrange(0, 300))
        elif kind == "huge_number":
            big = r.choice(["1" + "0" * r.randint(20, 400), "1e%d" % r.randint(300, 400), "-" + "9" * 330,
                            str(2**63), str(2**64 + 1), "1.7976931348623159e308"])
            payload = r.choice([b'{"ts": %s, "pm25": 1}', b'{"ts": %d, "pm25": %%s}' % (self.t0_s * 1000),
                                b'[{"bn": "x:", "bt": %s, "n": "pm25", "v": 1}]']) % big.encode()
        elif kind == "deep_nesting":
            depth = r.choice([10, 100, 1000, 5000, 20000])
            payload = r.choice([b"[" * depth + b"]" * depth, b'{"pm25": ' * depth + b"1" + b"}" * depth,
                                b'{"ts": 1, "pm25": ' + b"[" * depth + b"]" * depth + b"}"])
        elif kind == "wrong_type":
            value = r.choice(['"12.5"', "true", "null", "{}", "[]", '{"value": "x"}', '{"value": 1, "unit": 5}',
                              '[1, 2]', '"NaN"'])
            key = r.choice(["pm25", "ts", "no2", "unit"])
            payload = ('{"ts": %d, "%s": %s}' % (self.t0_s * 1000, key, value)).encode()
            if key == "ts":
                payload = ('{"ts": %s, "pm25": 1}' % value).encode()
        elif kind == "injection":
            template = r.choice(['{"ts": %d, %s: 1}', '{"ts": %d, "pm25": {"value": 1, "unit": %s}}',
                                 '{"ts": %d, "pm25": %s}'])
            payload = (template % (self.t0_s * 1000, json.dumps(r.choice(INJECTIONS)))).encode()
            topic = r.choice([topic, "city/air/aq-001,area=x pm25=1 0/telemetry", "city/air/aq 1/telemetry",
                              "city/air/aq-001\n/telemetry"])
        elif kind == "oversize":
            payload = self.OVERSIZE
        elif kind == "bad_topic":
            payload = self.valid()
            topic = r.choice(["city/air/aq-001", "city/air//telemetry", "city/noise/n-1/telemetry",
                              "city/water/aq-001/telemetry", "other/air/aq-001/telemetry", "city/air/aq-001/x/y"])
        else:  # SenML with broken base fields, string values, sums, relative times
            recs = [{"bn": r.choice(["aq-001:", 5, None, ""]), "bt": r.choice([self.t0_s, "x", -1, 1e400, None]),
                     r.choice(["n", "x"]): r.choice(["pm25", "", 3]), r.choice(["v", "vs", "vb", "s"]): r.random()}
                    for _ in range(r.randint(1, 4))]
            payload = json.dumps(recs, allow_nan=True).encode()
        return topic, payload, kind

    def good_message(self) -> tuple[str, bytes, str]:
        k = self.good
        self.good += 1
        return GOOD_TOPIC, b'{"ts": %d, "pm25": %d.25}' % ((self.t0_s * 1000) + k, k % 1000), "good"

    def messages(self, n: int, good_every: int = 10):
        for i in range(n):
            yield self.good_message() if i % good_every == 0 else self.hostile()


def test_100k_hostile_payloads_through_the_validation_path():
    v = make_validator()
    stream = HostilePayloads(seed=20261127, t0_s=ARRIVAL_NS // 10**9 - 7200)
    total, batch_size = 100_000, 500
    kinds: dict[str, int] = {}
    n_rejections = 0
    good_seen = 0
    aq2 = {v.series.get("aq-002", "pm25")}
    arrival = ARRIVAL_NS
    messages = stream.messages(total)
    for _ in range(0, total, batch_size):
        chunk = [next(messages) for _ in range(batch_size)]
        for _, _, kind in chunk:
            kinds[kind] = kinds.get(kind, 0) + 1
        batch, rejections = v.validate([(t, p, arrival) for t, p, _ in chunk])
        arrival += 10**9
        check_validated(v, len(chunk), batch, rejections)
        n_rejections += len(rejections)
        # the good readings between the hostile ones come out exact, and nothing else lands on aq-002
        good = [(t, p) for t, p, k in chunk if k == "good"]
        got = sorted((int(ts), float(val)) for s, ts, val in zip(batch.series, batch.ts, batch.value) if s in aq2)
        want = sorted((orjson.loads(p)["ts"] * 10**6, orjson.loads(p)["pm25"]) for _, p in good)
        assert got == want
        good_seen += len(got)
        # a hostile message yields readings only when its mutation left a valid reading (never for aq-002)
        assert all(r.sensor != "aq-002" for r in rejections)
    check_counters(v.stats)
    assert v.stats.get("messages_received") == total
    assert v.stats.get("readings_rejected") == n_rejections
    assert good_seen == stream.good == total // 10
    assert set(kinds) == set(HostilePayloads.KINDS) | {"good"}
    # every hostile message was either rejected (with a reason) or gave readings from its valid part
    assert n_rejections >= 0.8 * (total - stream.good)
    reasons = {k[len("rejected_"):] for k in v.stats.snapshot() if k.startswith("rejected_")}
    assert {"malformed_json", "oversize_payload", "topic_mismatch", "invalid_sensor_id", "unknown_sensor",
            "domain_mismatch", "bad_timestamp", "non_numeric", "not_finite", "wrong_unit", "unknown_metric",
            "bad_structure"} <= reasons


@pytest.mark.integration
def test_hostile_payloads_through_the_live_engine_are_counted_and_dead_lettered(mosquitto, influxdb, db_name,
                                                                                  tmp_path):
    settings_ = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-fz")
    engine = Engine(settings_, small_registry())
    engine.start()
    wait_for(engine.consumer.connected.is_set, 15, "engine connected")
    time.sleep(0.2)
    dead = Listener(mosquitto.port, "city/deadletter/#", f"{db_name}-dl")
    device = Device(mosquitto.port, client_id=f"{db_name}-dev")
    stream = HostilePayloads(seed=7, t0_s=int(time.time()) - 7200)
    # the broker itself refuses wildcards and control characters in a topic a device publishes to
    messages = [(t, p) for t, p, _ in stream.messages(3000) if not any(c in "+#" or c < " " for c in t)]
    # topics outside the engine's subscription never reach it (the broker's ACL would refuse them anyway)
    delivered = sum(topic_matches_sub(engine.topic.subscription, t) for t, _ in messages)
    try:
        device.publish_all(messages, timeout=60)
        wait_for(lambda: engine.stats.get("messages_acked") >= delivered, 60, "every message processed")
        rejected = int(engine.stats.get("readings_rejected"))
        wait_for(lambda: len(dead.messages) >= rejected, 30, "every dead letter published")
        time.sleep(0.5)
        assert engine.running and engine.stats.get("batches_quarantined") == 0
        assert engine.stats.get("messages_received") == delivered
        assert rejected > 0.7 * (delivered - stream.good)
        assert len(dead.messages) == rejected
        lines = (tmp_path / "e" / "deadletter.jsonl").read_bytes().splitlines()
        assert len(lines) == rejected
        assert sorted(orjson.loads(ln)["reason"] for ln in lines) == sorted(m["reason"] for _, m in dead.messages)
        check_counters(engine.stats)
        wait_for(lambda: count(influxdb, db_name, "air", "pm25", "WHERE sensor = 'aq-002'") == stream.good, 15,
                 "good readings stored")
        stored = sorted((r["time"], r["pm25"]) for r in rows(influxdb, db_name,
                                                              "SELECT pm25 FROM air WHERE sensor = 'aq-002'"))
        assert stored == [((stream.t0_s * 1000 + k) * 10**6, (k % 1000) + 0.25) for k in range(stream.good)]
    finally:
        device.close()
        dead.close()
        engine.stop()
