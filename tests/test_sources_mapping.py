"""The device-family mapping layer (citywatch.ingest.sources) without a broker: selectors, topic
filters, timestamps, counters, the shipped profiles on the documented messages of
tests/data/devices/, and the validator's checks on mapped readings."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from citywatch.batch import FLAG_TS_FROM_ARRIVAL, ReadingBatch
from citywatch.config import ValidationConfig
from citywatch.config_types import ConfigError
from citywatch.detectors.no_data import NoDataDetector
from citywatch.ingest.sources.counters import CounterDeltas
from citywatch.ingest.sources.mapper import SourceMapper, load_profiles, shipped_profile_names
from citywatch.ingest.sources.profile import FAMILIES, SourceProfile, TimestampRule
from citywatch.ingest.sources.selectors import Selector, SelectorError
from citywatch.ingest.sources.timestamps import SourceClock
from citywatch.ingest.sources.topic_filter import TopicFilter
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Validator
from citywatch.registry import Registry, SeriesIndex
from citywatch.stats import Stats

DEVICES = Path(__file__).parent / "data" / "devices"
REGISTRY = Path(__file__).parent.parent / "config" / "sensors" / "bienhoa.yaml"
S = 1_000_000_000
ARRIVAL = 1795788400 * S  # 2026-11-27T14:06:40Z, a little after the fixtures' Tasmota times


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REGISTRY)


def fixture(family: str, name: str) -> tuple[str, bytes]:
    doc = json.loads((DEVICES / family / f"{name}.json").read_text())
    payload = doc["payload"]
    return doc["topic"], (payload.encode() if doc["payload_is_text"] else json.dumps(payload).encode())


def mapper(registry: Registry, *families: str, stats: Stats | None = None) -> SourceMapper:
    return SourceMapper(load_profiles(families or FAMILIES), registry, stats or Stats())


def readings(records) -> list[tuple]:
    return [(r.sensor.id if r.sensor else None, *reading) for r in records for reading in r.readings]


# -- selectors ------------------------------------------------------------------------------------

def test_selector_keys_with_dots_quotes_and_brackets():
    doc = {"SDS0X1": {"PM2.5": 35.2, "PM10": 51}, "a.b": {"c": 1}}
    assert Selector('SDS0X1."PM2.5"').values(doc) == [35.2]
    assert Selector("SDS0X1['PM2.5']").values(doc) == [35.2]
    assert Selector('$.SDS0X1["PM2.5"]').values(doc) == [35.2]
    assert Selector("SDS0X1.PM2.5").values(doc) == []  # PM2 then 5: not the key with the dot
    assert Selector("'a.b'.c").values(doc) == [1]


def test_selector_wildcards_capture_and_arrays():
    doc = {"rx": [{"rssi": -80, "gw": "a"}, {"rssi": -71, "gw": "b"}], "x": 1}
    assert Selector("rx[*].rssi").values(doc) == [-80, -71]
    assert Selector("rx[-1].gw").values(doc) == ["b"]
    assert Selector("rx[5].gw").values(doc) == []
    found = Selector("rx.{i}.gw").find(doc)
    assert [(v, c["i"]) for v, _, c in found] == [("a", "0"), ("b", "1")]
    assert Selector("x.y").values(doc) == []  # a step that does not fit the value's type


def test_selector_fallbacks_take_the_first_alternative_that_matches():
    doc = {"received_at": "t2", "uplink_message": {"received_at": "t1"}}
    assert Selector("uplink_message.received_at | received_at").first(doc) == "t1"
    assert Selector("uplink_message.nope | received_at").first(doc) == "t2"
    assert Selector("a | b").first(doc, "default") == "default"


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a|", "[x", "a.{1x}"])
def test_selector_syntax_errors_are_clear(bad):
    with pytest.raises(SelectorError):
        Selector(bad)


_key = st.text(alphabet=string.ascii_letters + string.digits + ". -_", min_size=1, max_size=6)


@given(st.lists(_key, min_size=1, max_size=4), st.floats(allow_nan=False))
def test_selector_quoted_path_finds_exactly_the_nested_value(keys, value):
    doc: object = value
    for k in reversed(keys):
        doc = {k: doc, "other": 0}
    path = ".".join('"' + k + '"' for k in keys)
    assert Selector(path).find(doc) == [(value, keys[-1], {})]


# -- topic filters --------------------------------------------------------------------------------

def test_topic_filter_multi_level_capture_in_the_middle():
    f = TopicFilter("zigbee2mqtt/{device+}/availability")
    assert f.subscription == "zigbee2mqtt/#"
    assert f.match("zigbee2mqtt/forest/station 3/soil/availability") == {"device": "forest/station 3/soil"}
    assert f.match("zigbee2mqtt/availability") is None  # the capture is never empty
    assert f.match("zigbee2mqtt/forest/soil") is None


def test_topic_filter_mixed_level_and_anonymous_wildcards():
    f = TopicFilter("v3/{app}@{tenant}/devices/{device}/up")
    assert f.subscription == "v3/+/devices/+/up"
    assert f.match("v3/water@ttn/devices/wq-1/up") == {"app": "water", "tenant": "ttn", "device": "wq-1"}
    assert f.match("v3/water/devices/wq-1/up") is None
    g = TopicFilter("spBv1.0/+/{type}/#")
    assert g.subscription == "spBv1.0/+/+/#"
    assert g.match("spBv1.0/g/NDATA/node") == {"type": "NDATA"}
    assert g.match("spBv1.0/g/NDATA") == {"type": "NDATA"}


@pytest.mark.parametrize("bad", ["a/#/b", "a/{x}/{x}", "a/b{x+}", "a/{x+}/{y+}", "a/b+c"])
def test_topic_filter_errors(bad):
    with pytest.raises(ValueError):
        TopicFilter(bad)


# -- timestamps -----------------------------------------------------------------------------------

def test_clock_local_time_offset_epoch_and_patterns():
    clock = SourceClock(TimestampRule(fields=["t"], formats=["epoch", "rfc3339", "local", "%d/%m/%Y %H:%M"],
                                      timezone="Asia/Ho_Chi_Minh", max_past=10 * 365 * 86400))
    noon = 1717243200 * S  # 2024-06-01T12:00:00Z
    assert clock.parse("2024-06-01T19:00:00") == noon  # local, UTC+7
    assert clock.parse("2024-06-01T19:00:00+07:00") == noon  # the offset wins, not the zone
    assert clock.parse("2024-06-01T12:00:00Z") == noon
    assert clock.parse(1717243200000) == noon  # ms by magnitude
    assert clock.parse("1717243200") == noon
    assert clock.parse("01/06/2024 19:00") == noon
    assert clock.parse("yesterday") is None
    assert clock.resolve({"t": "2024-06-01T19:00:00.5"}, None, noon + 60 * S) == (noon + S // 2, False)


def test_clock_falls_back_to_arrival_and_counts_why():
    clock = SourceClock(TimestampRule(fields=["t", "u"], max_future=300, max_past=86400))
    arrival = 1717243200 * S
    assert clock.resolve({}, None, arrival) == (arrival, True)
    assert clock.resolve({"t": "garbage"}, None, arrival) == (arrival, True)
    assert clock.resolve({"t": 4070908800}, None, arrival) == (arrival, True)  # 2099
    assert clock.resolve({"t": 12}, None, arrival) == (arrival, True)  # an unset clock: 1970
    assert clock.resolve({"u": 1717243100}, {"t": None}, arrival) == (1717243100 * S, False)  # the second field
    assert clock.resolve({}, {"t": 1717243150}, arrival) == (1717243150 * S, False)  # from the whole document
    assert dict(clock.fallbacks) == {"missing": 1, "unreadable": 1, "implausible": 2}


def test_unknown_timezone_is_a_config_error():
    with pytest.raises(ValueError, match="unknown time zone"):
        TimestampRule(timezone="Mars/Olympus")


# -- counters -------------------------------------------------------------------------------------

def test_counter_deltas_reset_stale_gap_and_snapshot():
    c = CounterDeltas(max_gap_s=300)
    out = [c.delta("cam", t * S, v) for t, v in [(0, 100), (60, 130), (120, 130), (90, 999), (180, 5), (900, 50),
                                                     (960, 62)]]
    assert out == [None, 30.0, 0.0, None, 5.0, None, 12.0]
    assert dict(c.events) == {"baseline": 1, "stale": 1, "reset": 1, "gap": 1}
    d = CounterDeltas(max_gap_s=300)
    d.restore(c.snapshot())
    assert d.delta("cam", 1020 * S, 70) == 8.0


# -- shipped profiles on documented messages -------------------------------------------------------

def test_every_family_is_shipped_and_valid():
    assert set(FAMILIES) <= set(shipped_profile_names())
    profiles = load_profiles(FAMILIES)
    assert [p.family for p in profiles] == list(FAMILIES)
    with pytest.raises(ConfigError, match="no shipped profile 'nope'"):
        load_profiles(["nope"])


def test_tasmota_sensor_local_time_dots_and_unit_from_payload(registry):
    m = mapper(registry, "tasmota")
    topic, payload = fixture("tasmota", "sensor_sds011_bme280")
    t = 1795788300 * S  # "2026-11-27T21:05:00" at UTC+7
    assert readings(m.map(topic, payload, ARRIVAL)) == [
        ("aq-013", t, "temperature", 31.4, "Cel", 0), ("aq-013", t, "relativeHumidity", 68.2, "%", 0),
        ("aq-013", t, "pm25", 38.4, "ug/m3", 0), ("aq-013", t, "pm10", 61.7, "ug/m3", 0)]
    topic, payload = fixture("tasmota", "sensor_fahrenheit")
    got = readings(m.map(topic, payload, ARRIVAL + 600 * S))
    assert ("aq-013", 1795788600 * S, "temperature", 88.5, "degF", 0) in got


def test_tasmota_implausible_times_use_arrival_flagged(registry):
    stats = Stats()
    m = mapper(registry, "tasmota", stats=stats)
    for name in ("sensor_time_far_future", "sensor_time_not_synced"):
        topic, payload = fixture("tasmota", name)
        got = readings(m.map(topic, payload, ARRIVAL))
        assert got and all(r[1] == ARRIVAL and r[5] == int(FLAG_TS_FROM_ARRIVAL) for r in got)
    assert stats.snapshot()["source_ts_implausible"] == 2


def test_tasmota_state_health_is_signal_in_dbm_and_lwt_is_availability(registry):
    m = mapper(registry, "tasmota")
    (rec,) = m.map(*fixture("tasmota", "state"), ARRIVAL)
    assert (rec.sensor.id, rec.readings, rec.health) == ("aq-013", [], {"rssi": -69.0})  # not Wifi.RSSI 62
    assert [r.available for r in m.map(*fixture("tasmota", "lwt_offline"), ARRIVAL)] == [False]
    assert [r.available for r in m.map(*fixture("tasmota", "lwt_online"), ARRIVAL)] == [True]


def test_esphome_text_states_nan_is_missing_and_wifi_signal_is_health(registry):
    stats = Stats()
    m = mapper(registry, "esphome", stats=stats)
    assert readings(m.map(*fixture("esphome", "pm_2_5_state"), ARRIVAL)) == [
        ("aq-014", ARRIVAL, "pm25", 35.2, "ug/m3", int(FLAG_TS_FROM_ARRIVAL))]
    (rec,) = m.map(*fixture("esphome", "temperature_nan"), ARRIVAL)
    assert rec.readings == [] and rec.errors == []
    assert stats.snapshot()["source_missing_values"] == 1
    (rec,) = m.map(*fixture("esphome", "wifi_signal_state"), ARRIVAL)
    assert rec.health == {"rssi": -67.0}
    assert [r.available for r in m.map(*fixture("esphome", "status_offline"), ARRIVAL)] == [False]


def test_ttn_decoded_payload_best_gateway_and_battery_in_volts(registry):
    m = mapper(registry, "ttn")
    later = ARRIVAL + 3600 * S  # after the uplinks' times
    (rec,) = m.map(*fixture("ttn", "uplink"), later)
    t = 1795789867512846129  # uplink_message.received_at, ns kept
    assert rec.sensor.id == "wq-001"
    assert rec.readings == [(t, "temperature", 29.4, "Cel", 0), (t, "pH", 7.12, None, 0),
                            (t, "conductivity", 412, "uS/cm", 0), (t, "turbidity", 18.6, "NTU", 0),
                            (t, "dissolvedOxygen", 5.84, "mg/L", 0)]
    assert rec.health == {"rssi": -97.0, "snr": 7.25, "battery_voltage": pytest.approx(3.587)}
    (rec,) = m.map(*fixture("ttn", "uplink_null_and_string"), later)
    metrics = {r[1]: r[2] for r in rec.readings}
    assert "dissolvedOxygen" not in metrics and metrics["pH"] == 7.08  # null: missing; "7.08": a number
    (rec,) = m.map(*fixture("ttn", "uplink_decoder_failed"), later)
    assert rec.readings == [] and rec.errors[0].startswith("no_readings")


def test_chirpstack_numeric_strings_status_health_and_ignored_events(registry):
    m = mapper(registry, "chirpstack")
    later = ARRIVAL + 3600 * S
    (rec,) = m.map(*fixture("chirpstack", "up"), later)
    assert rec.sensor.id == "fr-001"
    assert rec.readings == [(1795790412618263144, "soilMoisture", 31.52, "%", 0)]
    assert rec.health == {"rssi": -104.0, "snr": 3.8, "battery_voltage": 3.605}
    (rec,) = m.map(*fixture("chirpstack", "status"), later)
    assert rec.health == {"battery": 76.38, "margin": 7.0} and rec.readings == []
    assert m.map(*fixture("chirpstack", "join"), ARRIVAL) == []


def test_zigbee2mqtt_names_with_slashes_availability_and_bridge(registry):
    m = mapper(registry, "zigbee2mqtt")
    (rec,) = m.map(*fixture("zigbee2mqtt", "state"), ARRIVAL + 3600 * S)
    t = 1795791033208000000  # last_seen 2026-11-27T14:50:33.208Z
    assert rec.sensor.id == "fr-002" and rec.device == "forest/station 3/soil"
    assert sorted(rec.readings) == sorted([(t, "relativeHumidity", 78.4, "%", 0), (t, "soilMoisture", 34.2, "%", 0),
                                           (t, "temperature", 26.9, "Cel", 0)])
    assert rec.health == {"battery": 87.0, "linkquality": 112.0, "battery_voltage": pytest.approx(2.98)}
    for name, state in (("availability_online", True), ("availability_offline", False),
                        ("availability_legacy_online", True)):
        (rec,) = m.map(*fixture("zigbee2mqtt", name), ARRIVAL)
        assert (rec.sensor.id, rec.available) == ("fr-002", state)
    for name in ("bridge_state", "bridge_event", "command_set"):
        assert m.map(*fixture("zigbee2mqtt", name), ARRIVAL) == []


def test_sensor_community_pivot_p1_is_pm10(registry):
    m = mapper(registry, "sensor_community")
    (rec,) = m.map(*fixture("sensor_community", "sds011_bme280"), ARRIVAL)
    got = {r[1]: (r[2], r[3]) for r in rec.readings}
    assert got["pm10"] == (15.3, "ug/m3") and got["pm25"] == (7.1, "ug/m3")
    assert rec.sensor.id == "aq-015" and rec.health == {"rssi": -71.0}
    assert all(r[0] == ARRIVAL and r[4] == int(FLAG_TS_FROM_ARRIVAL) for r in rec.readings)


def test_unmatched_topic_unknown_device_and_malformed_payload(registry):
    m = mapper(registry)
    assert m.map("some/other/topic/deep/down", b"{}", ARRIVAL) is None
    (rec,) = m.map("tele/unknown_plug/SENSOR", b'{"SDS0X1": {"PM2.5": 3}}', ARRIVAL)
    assert rec.sensor is None and rec.device == "unknown_plug"
    (rec,) = m.map(*fixture("tasmota", "sensor_truncated"), ARRIVAL)
    assert rec.errors and rec.errors[0].startswith("malformed_json")


# -- through the validator: units, rejections, side channels ----------------------------------------

def make_validator(registry: Registry, *families: str) -> Validator:
    series = SeriesIndex(registry)
    series.add_registry()
    return Validator(registry, series, ValidationConfig(max_age=10 * 365 * 86400.0),
                     TopicPattern("city/{domain}/{sensor}/telemetry"), Stats(), sources=mapper(registry, *families))


def batch_rows(v: Validator, batch: ReadingBatch) -> dict[str, float]:
    return {v.series.metrics[s]: float(x) for s, x in zip(batch.series.tolist(), batch.value.tolist())}


def test_validator_converts_mapped_units_to_the_registry(registry):
    v = make_validator(registry, "tasmota", "sensor_community", "zigbee2mqtt")
    batch, rej = v.validate([(*fixture("tasmota", "sensor_fahrenheit"), ARRIVAL + 600 * S)])
    assert rej == []
    got = batch_rows(v, batch)
    assert got["temperature"] == pytest.approx((88.5 - 32) * 5 / 9) and got["relativeHumidity"] == pytest.approx(0.68)
    batch, rej = v.validate([(*fixture("zigbee2mqtt", "state"), ARRIVAL + 3600 * S)])
    assert rej == [] and batch_rows(v, batch)["soilMoisture"] == pytest.approx(0.342)
    assert v.health[-1][0].id == "fr-002" and v.health[-1][3]["battery_voltage"] == pytest.approx(2.98)


def test_validator_dead_letters_unknown_devices_and_keeps_good_readings(registry):
    v = make_validator(registry, "tasmota")
    batch, rej = v.validate([("tele/unknown_plug/SENSOR", b'{"SDS0X1": {"PM2.5": 3}}', ARRIVAL),
                             (*fixture("tasmota", "sensor_sds011_bme280"), ARRIVAL),
                             ("not/a/profile/topic/at/all", b"{}", ARRIVAL),
                             (*fixture("tasmota", "lwt_offline"), ARRIVAL)])
    assert [r.reason for r in rej] == ["unknown_device", "topic_mismatch"]
    assert "source: {family: tasmota, device: 'unknown_plug'}" in rej[0].detail
    assert len(batch) == 4
    assert v.availability == [("aq-013", False, ARRIVAL)]


def test_counter_profile_turns_totals_into_increases(registry):
    profile = SourceProfile.model_validate({
        "family": "counter_cam", "topics": [{"filter": "counters/{device}"}],
        "metrics": {"total": {"metric": "intensity", "unit": "veh", "counter": True}},
        "timestamp": {"fields": ["ts"], "max_past": 10 * 365 * 86400}, "aliases": {"cam-7": "tc-002"},
        "counter_max_gap": 300})
    stats = Stats()
    m = SourceMapper([profile], registry, stats)
    out = []
    for t, total in [(0, 5000), (60, 5012), (120, 5030), (180, 3), (240, 11)]:
        payload = json.dumps({"ts": 1795788000 + t, "total": total}).encode()
        out += readings(m.map("counters/cam-7", payload, ARRIVAL))
    assert [(r[0], r[2], r[3]) for r in out] == [("tc-002", "intensity", 12.0), ("tc-002", "intensity", 18.0),
                                                 ("tc-002", "intensity", 3.0), ("tc-002", "intensity", 8.0)]
    assert stats.snapshot()["counter_reset"] == 1 and stats.snapshot()["counter_baseline"] == 1


def test_keep_unmapped_passes_source_names(registry):
    profile = SourceProfile.model_validate({"family": "raw", "topics": [{"filter": "raw/{device}"}],
                                            "keep_unmapped": True, "aliases": {"x": "aq-013"}})
    (rec,) = SourceMapper([profile], registry).map("raw/x", b'{"pm25": "12.5", "flag": true}', ARRIVAL)
    assert [(r[1], r[2]) for r in rec.readings] == [("pm25", 12.5), ("flag", True)]  # the validator rejects the bool


def test_availability_makes_a_device_offline_until_it_reports(registry):
    series = SeriesIndex(registry)
    series.add_registry()
    nd = NoDataDetector(series, start_ns=ARRIVAL)
    sid = series.get("aq-013", "pm25")
    nd.observe(ReadingBatch.from_columns(np.array([sid], np.int32), np.array([ARRIVAL], np.int64),
                                         np.array([1.0]), np.zeros(1, np.uint8)))
    nd.check(ARRIVAL + S)
    i = nd.sensor_ids.index("aq-013")
    nd.announce("aq-013", False, ARRIVAL + 2 * S)
    assert [(t.sensor, t.state) for t in nd.check(ARRIVAL + 3 * S) if t.sensor == "aq-013"] == [("aq-013", "offline")]
    nd.observe(ReadingBatch.from_columns(np.array([sid], np.int32), np.array([ARRIVAL + 4 * S], np.int64),
                                         np.array([1.0]), np.zeros(1, np.uint8)))
    assert nd.states(ARRIVAL + 5 * S)[i] == 0  # back to ok with a reading
    nd.announce("aq-013", False, ARRIVAL + 6 * S)
    nd.announce("aq-013", True, ARRIVAL + 7 * S)
    assert nd.states(ARRIVAL + 8 * S)[i] == 0  # online cancels the announced offline


def test_mapper_state_survives_a_restart(registry):
    profile = SourceProfile.model_validate({
        "family": "counter_cam", "topics": [{"filter": "counters/{device}"}],
        "metrics": {"total": {"metric": "intensity", "counter": True}}, "aliases": {"cam-7": "tc-002"},
        "timestamp": {"fields": ["ts"], "max_past": 10 * 365 * 86400}})
    first = SourceMapper([profile, *load_profiles(["frigate"])], registry)
    first.map("counters/cam-7", b'{"ts": 1795788000, "total": 100}', ARRIVAL)
    second = SourceMapper([profile, *load_profiles(["frigate"])], registry)
    second.restore(first.snapshot())
    assert readings(second.map("counters/cam-7", b'{"ts": 1795788060, "total": 107}', ARRIVAL)) == [
        ("tc-002", 1795788060 * S, "intensity", 7.0, None, 0)]


_json = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_topics = st.sampled_from(["tele/aq_tasmota_01/SENSOR", "tele/x/STATE", "tele/aq_tasmota_01/LWT",
                           "aq-esphome-01/sensor/pm_2_5/state", "aq-esphome-01/status", "v3/a@ttn/devices/wq-lora-01/up",
                           "application/a/device/70b3d57ed005a1b2/event/up", "zigbee2mqtt/forest/station 3/soil",
                           "zigbee2mqtt/forest/station 3/soil/availability", "sensor_community/15072310",
                           "spBv1.0/bienhoa/DDATA/gw-dongnai-01/wq-probe-01", "spBv1.0/g/NBIRTH/n", "frigate/events",
                           "frigate/available"])


@given(_topics, st.one_of(_json.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64)))
def test_no_payload_makes_the_mapping_layer_raise(topic, payload):
    registry = _FUZZ_REGISTRY
    series = SeriesIndex(registry)
    v = Validator(registry, series, ValidationConfig(), TopicPattern("city/{domain}/{sensor}/telemetry"), Stats(),
                  sources=_FUZZ_MAPPER)
    batch, rejections = v.validate([(topic, payload, ARRIVAL)])
    assert all(r.reason != "internal_error" for r in rejections), [r.detail for r in rejections]
    assert np.isfinite(batch.value).all()


_FUZZ_REGISTRY = Registry.load(REGISTRY)
_FUZZ_MAPPER = SourceMapper(load_profiles(FAMILIES), _FUZZ_REGISTRY)


def test_configuration_problems_name_what_would_lose_data(registry):
    from citywatch.ingest.sources.mapper import configuration_problems

    assert configuration_problems(load_profiles(FAMILIES), registry) == []
    bad = SourceProfile.model_validate({"family": "tasmota", "topics": [{"filter": "x/{device}"}],
                                        "aliases": {"plug": "aq-999"}})
    problems = configuration_problems([*load_profiles(["tasmota", "esphome"]), bad], registry)
    assert any("family 'tasmota' has 2 profiles" in p for p in problems)
    assert any("'plug' -> 'aq-999'" in p for p in problems)
    assert any("'wq-001' names a ttn device" in p for p in problems)


def test_records_split_a_backlog_and_captures_name_readings(registry):
    profile = SourceProfile.model_validate({
        "family": "gw", "topics": [{"filter": "gw/{site}/{device}"}], "device": "{site}-{device}",
        "records": "samples[*]", "readings": [{"select": "{chip}.*", "name": "{chip}_{key}"}],
        "metrics": {"sds_pm25": "pm25", "bme_t": {"metric": "temperature", "unit": "degF"}},
        "timestamp": {"fields": ["t"], "max_past": 10 * 365 * 86400}, "aliases": {"bh-17": "aq-016"}})
    payload = json.dumps({"samples": [{"t": 1795788000, "sds": {"pm25": 30}, "bme": {"t": 86}},
                                      {"t": 1795788060, "sds": {"pm25": "31.5"}},
                                      {"sds": {"pm25": 33}}]}).encode()
    records = SourceMapper([profile], registry).map("gw/bh/17", payload, ARRIVAL)
    assert [r.device for r in records] == ["bh-17"] * 3
    assert readings(records) == [("aq-016", 1795788000 * S, "pm25", 30, None, 0),
                                 ("aq-016", 1795788000 * S, "temperature", 86, "degF", 0),
                                 ("aq-016", 1795788060 * S, "pm25", 31.5, None, 0),
                                 ("aq-016", ARRIVAL, "pm25", 33, None, int(FLAG_TS_FROM_ARRIVAL))]


def test_sensors_list_json_shows_each_family_source(capsys):
    from citywatch.cli import main

    assert main(["sensors", "list", "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    sources = {r["source"]["family"]: (sid, r["source"]["device"]) for sid, r in rows.items() if r["source"]}
    assert set(sources) == set(FAMILIES)
    assert sources["zigbee2mqtt"] == ("fr-002", "forest/station 3/soil")
    assert rows["aq-001"]["source"] is None
