"""Invariants shared by the atheris harnesses (this folder) and tests/test_fuzz.py.

Each `check_*` raises AssertionError when an output breaks the contract of the code under test, and
returns the outcome kinds (reason codes) to count.
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from citywatch.batch import FLAG_TS_FROM_ARRIVAL, ReadingBatch
from citywatch.config import ValidationConfig
from citywatch.ingest.payloads import Decoded
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import REASONS, Rejection, Validator
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.sinks.line_protocol import split_lines
from citywatch.stats import Stats

INT64_MAX = (1 << 63) - 1
DECODER_REASONS = frozenset({"malformed_json", "bad_structure", "bad_timestamp", "no_readings"})
TOPIC = TopicPattern("city/{domain}/{sensor}/telemetry")
ARRIVAL_NS = 1_795_000_000_000_000_000  # 2026-11-17

REGISTRY_DOC = {
    "profiles": {
        "air": {"domain": "air", "interval": "60s", "metrics": {
            "pm25": {"unit": "ug/m3", "min": 0, "max": 1000},
            "no2": {"unit": "ug/m3", "min": 0, "max": 2000},
            "relativeHumidity": {"unit": "1", "min": 0, "max": 1},
            "temperature": {"unit": "Cel"},
        }},
    },
    "sensors": [
        {"id": "aq-001", "domain": "air", "area": "Tân Phong", "lat": 10.96, "lon": 106.82, "profile": "air"},
        {"id": "aq-002", "domain": "air", "area": "Hố Nai", "lat": 10.97, "lon": 106.88, "profile": "air"},
        {"id": "wq-001", "domain": "water", "area": "Bửu Long", "lat": 10.95, "lon": 106.80, "interval": "5m",
         "metrics": {"pH": {"unit": "pH", "min": 0, "max": 14}}},
    ],
}


def make_validator(**cfg) -> Validator:
    parsed = RegistryFile.model_validate(REGISTRY_DOC)
    registry = Registry({s.id: s for s in parsed.sensors})
    series = SeriesIndex(registry)
    series.add_registry()
    return Validator(registry, series, ValidationConfig(**cfg), TOPIC, Stats())


def check_decoded(decoded: Decoded, arrival_ns: int = ARRIVAL_NS) -> list[str]:
    assert isinstance(decoded.readings, list) and isinstance(decoded.errors, list)
    for reading in decoded.readings:
        ts, metric, _raw, unit, flags = reading
        assert type(ts) is int and 0 < ts <= INT64_MAX, reading
        assert isinstance(metric, str), reading
        assert unit is None or isinstance(unit, str), reading
        assert flags in (0, int(FLAG_TS_FROM_ARRIVAL)), reading
        if flags:
            assert ts == arrival_ns or 0 < ts, reading
    kinds = []
    for err in decoded.errors:
        code, sep, detail = err.partition(": ")
        assert sep and detail and code in DECODER_REASONS, err
        kinds.append(code)
    if not decoded.readings:
        assert decoded.errors, "no readings and no error"
    else:
        kinds.append("readings")
    return kinds


def check_validated(v: Validator, n_messages: int, batch: ReadingBatch, rejections: list[Rejection],
                    rate_dropped: int = 0, deadletter=TopicPattern("city/deadletter/{domain}/{sensor}")) -> list[str]:
    """`rate_dropped`: messages of the call dropped by the rate limit without a dead letter."""
    assert len(batch) + len(rejections) + rate_dropped >= n_messages
    assert np.isfinite(batch.value).all()
    assert (batch.ts > 0).all()
    assert ((batch.series >= 0) & (batch.series < len(v.series))).all()
    kinds = []
    for r in rejections:
        assert r.reason in REASONS and r.reason != "internal_error", (r.reason, r.detail)
        doc = orjson.loads(r.to_json())
        assert doc["reason"] == r.reason
        topic = r.deadletter_topic(deadletter)
        assert topic.startswith("city/deadletter/") and "+" not in topic and "#" not in topic, topic
        kinds.append(r.reason)
    if len(batch):
        kinds.append("readings")
    return kinds


def check_counters(stats: Stats) -> None:
    """Every rejection is counted once, under its reason."""
    snap = stats.snapshot()
    by_reason = sum(v for k, v in snap.items() if k.startswith("rejected_"))
    assert by_reason == snap.get("readings_rejected", 0), snap


def stored_tag(value: str) -> str:
    """What InfluxDB stores for a tag value (line protocol cannot carry newlines and tabs in tags)."""
    text = value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text[:-1] + " " if text.endswith("\\") else text


def check_line_round_trip(line: str, tags: dict[str, str], fields: dict, parse_line) -> None:
    """One line, whatever the strings held, and it parses back to the same tags and fields."""
    assert len(split_lines(line.encode())) == 1, line
    parsed = parse_line(line)
    expected_tags = {k: stored_tag(v) for k, v in tags.items() if v}
    assert parsed["tags"] == expected_tags, (line, parsed["tags"], expected_tags)
    for key, value in fields.items():
        got = parsed["fields"][key]
        if isinstance(value, float):
            assert got == value or (math.isnan(got) and math.isnan(value)), (key, got, value)
        else:
            assert got == value, (key, got, value)
