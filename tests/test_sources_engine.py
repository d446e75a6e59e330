"""Device families end to end: the documented messages of every family (tests/data/devices/), published
as the devices publish them (JSON, plain text, Sparkplug B protobuf; LWT and status retained), through
the real broker into the engine running the sample registry and the shipped profiles, and what lands
in the real InfluxDB: readings under the registry sensor with the canonical metric in the registry
unit and the right event time, sensor health, dead letters, offline alerts, Sparkplug rebirth requests.

One engine and one run for the module: two publishing phases (the second holds what must come after
the first was processed: the Sparkplug messages after the sequence gap, and the devices' last wills),
then one test per family on what was stored. Fixture times are moved to the present.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from citywatch.ingest.sources.profile import FAMILIES
from citywatch.ingest.sources.sparkplug_payload import parse_payload
from citywatch.pipeline import Engine
from citywatch.registry import Registry
from citywatch.services import InfluxDB

from pipeline_helpers import Device, Listener, engine_settings, rows, wait_for
from sources_helpers import (DEVICES, RawListener, device_message, payload_bytes, shift_frigate_event,
                             shift_sparkplug, shifted_message)

pytestmark = pytest.mark.integration

REGISTRY = Path(__file__).resolve().parent.parent / "config" / "sensors" / "bienhoa.yaml"
S = 1_000_000_000
MS = 1_000_000

# The newest event time (epoch s) among each family's fixtures. Each family is moved by a whole number
# of seconds so that this time is 60 s before the run: recent enough for the no-data logic to judge
# the devices ok until they announce otherwise.
FIXTURE_NEWEST_S = {
    "tasmota": 1795789200,      # sensor_sds011_missing: Time 21:20:00 local = 14:20:00Z
    "ttn": 1795793512,          # uplink_decoder_failed: uplink_message.received_at 15:31:52.688190457Z
    "chirpstack": 1795790700,   # status: time 14:45:00.051735810Z
    "zigbee2mqtt": 1795791633,  # state_last_seen_epoch: last_seen 1795791633208 ms
    "sparkplug": 1795766760,    # 06-ddeath: 08:06:00Z
}
IMPLAUSIBLE = {"sensor_time_not_synced", "sensor_time_far_future"}  # never moved: implausible on purpose
RETAINED = ("tele/aq_tasmota_01/LWT", "aq-esphome-01/status", "zigbee2mqtt/forest/station 3/soil/availability",
            "frigate/available")
# Subscribed (zigbee2mqtt/# covers the base topic itself) but claimed by no topic rule: a device
# misconfigured with an empty friendly name publishes there.
UNMATCHED_TOPIC = "zigbee2mqtt"
UNKNOWN_TASMOTA_TOPIC = "tele/aq_tasmota_99/SENSOR"
# Sensors whose devices say they went offline in the second phase: Tasmota LWT, ESPHome status,
# Zigbee2MQTT availability, Sparkplug DDEATH/NDEATH, Frigate's "offline" (every camera it counted).
ANNOUNCED_OFFLINE = ("aq-013", "aq-014", "fr-002", "wq-002", "tc-001")


@dataclass
class Run:
    influx: InfluxDB
    db: str
    engine: Engine
    delta: dict[str, int]
    frigate_t: int  # start (epoch s) of the first Frigate interval of the replayed sequence
    published_ns: int = 0  # before the first message of the first phase was published
    stored_ns: int = 0  # after the engine acknowledged (stored) the first phase
    deadletters: list[tuple[str, dict]] = field(default_factory=list)
    alerts: list[tuple[str, dict]] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    commands_before_phase_two: list[tuple[str, bytes]] = field(default_factory=list)

    def points(self, measurement: str, sensor: str) -> list[dict]:
        """The points of a sensor, in time order, with only the fields they have."""
        found = rows(self.influx, self.db, f"SELECT * FROM \"{measurement}\" WHERE sensor = '{sensor}' ORDER BY time")
        return [{k: v for k, v in r.items() if v is not None} for r in found]

    def tag_values(self, measurement: str, key: str) -> set[str]:
        return {r["value"] for r in rows(self.influx, self.db, f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"')}

    def deadletter_reasons(self, sensor: str | None) -> list[str]:
        return sorted(m["reason"] for _, m in self.deadletters if m["sensor"] == sensor)

    def offline_alerts(self, sensor: str) -> list[dict]:
        return [m for _, m in self.alerts
                if m["detector"] == "no_data" and m["sensor"] == sensor and m["reason"] == "offline"]

    def in_arrival_window(self, ts: int) -> bool:
        return self.published_ns <= ts <= self.stored_ns


def _ts(fixture_s: int, delta_s: int, frac_ns: int = 0) -> int:
    """A fixture time (epoch s + ns fraction) moved by the family's delta, in ns."""
    return (fixture_s + delta_s) * S + frac_ns


def _json_family(family: str, names: list[str], delta: int, retained: tuple[str, ...] = ()) -> list[tuple[str, bytes, bool]]:
    out = []
    for name in names:
        topic, payload = shifted_message(family, name, 0 if name in IMPLAUSIBLE else delta)
        out.append((topic, payload, name in retained))
    return out


def _sparkplug(files: list[str], delta: int, seqs: dict[str, int] | None = None) -> list[tuple[str, bytes, bool]]:
    index = {m["file"]: m["topic"] for m in device_message("sparkplug", "messages")["messages"]}
    out = []
    for name in files:
        raw = (DEVICES / "sparkplug" / name).read_bytes()
        body = raw if name == "09-malformed.bin" else shift_sparkplug(raw, delta, (seqs or {}).get(name))
        out.append((index[name], body, False))
    return out


def _frigate(frigate_t: int) -> list[tuple[str, bytes, bool]]:
    seq = device_message("frigate", "sequence")
    delta = frigate_t - seq["base_time"]
    out = []
    for m in seq["messages"]:
        payload = m["payload"] if m["payload_is_text"] else shift_frigate_event(m["payload"], delta)
        out.append((m["topic"], payload_bytes(payload, m["payload_is_text"]), m["topic"] == "frigate/available"))
    return out


def phase_one(run: Run) -> list[tuple[str, bytes, bool]]:
    d = run.delta
    good_tasmota = shifted_message("tasmota", "sensor_sds011_bme280", d["tasmota"])[1]
    return [
        # availability first, retained as the devices publish it
        *_json_family("tasmota", ["lwt_online"], 0, retained=("lwt_online",)),
        *_json_family("esphome", ["status_online"], 0, retained=("status_online",)),
        *_json_family("zigbee2mqtt", ["availability_online", "availability_legacy_online"], 0,
                      retained=("availability_online", "availability_legacy_online")),
        # arrival-time families first: the engine's event clock starts at the present
        *_json_family("esphome", ["pm_2_5_state", "pm_10_0_state", "temperature_state", "humidity_state",
                                  "wifi_signal_state", "temperature_nan"], 0),
        *_json_family("sensor_community", ["sds011_bme280", "sds011_only"], 0),
        *_json_family("tasmota", ["sensor_sds011_bme280", "state", "sensor_fahrenheit", "sensor_time_with_offset",
                                  "sensor_sds011_missing", "sensor_time_not_synced", "sensor_time_far_future",
                                  "sensor_truncated"], d["tasmota"]),
        (UNKNOWN_TASMOTA_TOPIC, good_tasmota, False),
        (UNMATCHED_TOPIC, b'{"temperature": 26.8, "humidity": 79.0}', False),
        *_json_family("ttn", ["uplink", "uplink_null_and_string", "uplink_decoder_failed"], d["ttn"]),
        *_json_family("chirpstack", ["join", "up", "status"], d["chirpstack"]),
        *_json_family("zigbee2mqtt", ["bridge_state", "bridge_event", "command_set", "state", "state_last_seen_epoch",
                                      "state_no_last_seen"], d["zigbee2mqtt"]),
        # births and alias-only data, then seq 6 after 2: the gap alone must make the engine ask for a rebirth
        *_sparkplug(["01-nbirth.bin", "02-dbirth.bin", "03-ddata.bin", "05-ddata-gap.bin"], d["sparkplug"]),
        *_frigate(run.frigate_t),
    ]


def phase_two(run: Run) -> list[tuple[str, bytes, bool]]:
    d = run.delta
    return [
        # the unknown alias and the device death, numbered on from the gap (7, 8) so that seq is in order
        *_sparkplug(["04-ddata-unknown-alias.bin", "06-ddeath.bin", "07-ndeath-stale.bin", "08-ndeath.bin",
                     "09-malformed.bin"], d["sparkplug"], seqs={"04-ddata-unknown-alias.bin": 7, "06-ddeath.bin": 8}),
        *_json_family("tasmota", ["lwt_offline"], 0, retained=("lwt_offline",)),
        *_json_family("esphome", ["status_offline"], 0, retained=("status_offline",)),
        *_json_family("zigbee2mqtt", ["availability_offline"], 0, retained=("availability_offline",)),
        *_json_family("frigate", ["available_offline"], 0, retained=("available_offline",)),
    ]


def _frigate_interval_start(now_s: int) -> int:
    """A minute boundary at most 30 s ago or ahead: the sequence's events (up to 215 s after it) stay
    within Frigate's clock skew, and no wall-clock tick closes its first interval during the run."""
    t = now_s // 60 * 60
    return t if now_s - t <= 30 else t + 60


@pytest.fixture(scope="module")
def run(mosquitto, influxdb, tmp_path_factory):
    db = "t_" + uuid.uuid4().hex[:12]
    settings = engine_settings(mosquitto.url, influxdb.url, db, tmp_path_factory.mktemp("sources-engine"),
                               f"{db}-engine", sources={"profiles": list(FAMILIES)})
    engine = Engine(settings, Registry.load(REGISTRY))
    now_s = int(time.time())
    result = Run(influxdb, db, engine, {f: now_s - 60 - newest for f, newest in FIXTURE_NEWEST_S.items()},
                 _frigate_interval_start(now_s))
    deadletters = Listener(mosquitto.port, "city/deadletter/#", f"{db}-deadletters")
    alerts = Listener(mosquitto.port, "city/alerts/#", f"{db}-alerts")
    commands = RawListener(mosquitto.port, "spBv1.0/+/NCMD/+", f"{db}-ncmd")
    device = Device(mosquitto.port, f"{db}-devices")
    result.deadletters, result.alerts, result.commands = deadletters.messages, alerts.messages, commands.messages
    engine.start()
    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected and subscribed")
        first = phase_one(result)
        result.published_ns = time.time_ns()
        device.publish_all(first)
        wait_for(lambda: engine.stats.get("messages_acked") >= len(first), 20, "first phase stored")
        result.stored_ns = time.time_ns()
        wait_for(lambda: commands.messages, 5, "a Sparkplug rebirth request")
        result.commands_before_phase_two = list(commands.messages)
        second = phase_two(result)
        device.publish_all(second)
        wait_for(lambda: engine.stats.get("messages_acked") >= len(first) + len(second), 20, "second phase stored")
        wait_for(lambda: all(result.offline_alerts(s) for s in ANNOUNCED_OFFLINE), 15, "offline alerts of announced devices")
        wait_for(lambda: len(deadletters.messages) >= engine.stats.get("deadletters"), 5, "every dead letter published")
        time.sleep(0.3)  # anything unexpected still on its way arrives now
        yield result
    finally:
        engine.stop()
        for topic in RETAINED:  # leave no retained device state on the shared broker
            device.publish_all([(topic, b"", True)])
        device.close()
        for listener in (deadletters, alerts, commands):
            listener.close()


# -- Tasmota --------------------------------------------------------------------------------------

def test_tasmota_local_time_units_from_payload_implausible_times_and_health(run):
    d = run.delta["tasmota"]
    points = run.points("air", "aq-013")
    dated, from_arrival = points[:4], points[4:]
    # SENSOR Time is local time (UTC+7) unless it carries an offset (SetOption52), which wins
    assert [p["time"] for p in dated] == [_ts(1795788300, d), _ts(1795788600, d), _ts(1795788900, d),
                                          _ts(1795789200, d)]
    assert dated[0] == {"time": _ts(1795788300, d), "sensor": "aq-013", "area": "Quang Vinh", "pm25": 38.4,
                        "pm10": 61.7, "temperature": 31.4, "relativeHumidity": pytest.approx(0.682, abs=1e-12)}
    # TempUnit F: degF -> Cel; humidity never follows TempUnit
    assert dated[1]["temperature"] == pytest.approx((88.5 - 32) * 5 / 9, abs=1e-9)
    assert (dated[1]["pm25"], dated[1]["pm10"], dated[1]["relativeHumidity"]) == (36.9, 58.2, pytest.approx(0.68))
    assert (dated[2]["pm25"], dated[2]["temperature"]) == (35.0, 31.1)
    # no SDS0X1 block: no PM readings at all, never 0
    assert {k for k in dated[3] if k not in ("time", "sensor", "area")} == {"temperature", "relativeHumidity"}
    assert dated[3]["temperature"] == 30.8
    # 1970 (before NTP sync) and 2099 (a bad clock): arrival time, values kept, flagged in scores
    assert len(from_arrival) == 2 and all(run.in_arrival_window(p["time"]) for p in from_arrival)
    assert [(p["pm25"], p["pm10"], p["temperature"]) for p in from_arrival] == [(37.2, 60.1, 30.9), (36.4, 59.0, 31.0)]
    flagged = rows(run.influx, run.db, "SELECT ts_from_arrival FROM scores WHERE sensor = 'aq-013' AND ts_from_arrival = true")
    assert {r["time"] for r in flagged} == {p["time"] for p in from_arrival}
    assert run.engine.stats.get("source_ts_implausible") == 2
    # STATE: rssi is Wifi.Signal in dBm, not the 0..100 Wifi.RSSI quality
    health = run.points("sensor_health", "aq-013")
    assert health == [{"time": _ts(1795788300, d), "sensor": "aq-013", "domain": "air", "area": "Quang Vinh",
                       "family": "tasmota", "rssi": -69}]


def test_malformed_unknown_device_and_unmatched_topic_are_dead_letters_beside_good_readings(run):
    by_reason = {m["reason"]: (topic, m) for topic, m in run.deadletters}
    topic, truncated = by_reason["malformed_json"]
    assert topic == "city/deadletter/air/aq-013" and truncated["topic"] == "tele/aq_tasmota_01/SENSOR"
    unknown = [(t, m) for t, m in run.deadletters if m["reason"] == "unknown_device" and m["topic"] == UNKNOWN_TASMOTA_TOPIC]
    assert len(unknown) == 1 and unknown[0][0] == "city/deadletter/_unknown/_unknown"
    assert "aq_tasmota_99" in unknown[0][1]["detail"]
    topic, unmatched = by_reason["topic_mismatch"]
    assert topic == "city/deadletter/_unknown/_unknown" and unmatched["topic"] == UNMATCHED_TOPIC
    # the good messages around them all landed, under registry sensors only
    assert len(run.points("air", "aq-013")) == 6
    assert run.tag_values("air", "sensor") == {"aq-013", "aq-014", "aq-015"}
    assert run.engine.running


def test_every_dead_letter_has_its_reason_and_nothing_else_is_dead_lettered(run):
    assert sorted(m["reason"] for _, m in run.deadletters) == sorted([
        "malformed_json", "unknown_device", "topic_mismatch",  # Tasmota truncated, unknown device; a stranger
        "no_readings",  # TTN uplink the payload formatter could not decode
        "sparkplug_seq_gap", "sparkplug_unknown_alias", "sparkplug_stale_death", "malformed_protobuf",
        "frigate_late_event",
    ])
    # the Sparkplug edge node itself is no sensor: its births and deaths are counted, not dead-lettered
    assert run.engine.stats.get("source_unknown_devices_ignored") >= 2
    # nothing from Zigbee2MQTT's bridge or commands, ChirpStack's join, ESPHome's "nan" or TTN's null
    assert not [m for _, m in run.deadletters if m["topic"].startswith(("zigbee2mqtt/", "application/", "aq-esphome-01/"))]
    assert run.engine.stats.get("source_missing_values") == 2


# -- ESPHome --------------------------------------------------------------------------------------

def test_esphome_text_states_at_arrival_time_nan_not_stored_wifi_signal_as_health(run):
    points = run.points("air", "aq-014")
    assert [{k: v for k, v in p.items() if k not in ("time", "sensor", "area")} for p in points] == [
        {"pm25": 35.2}, {"pm10": 52.0}, {"temperature": 29.8}, {"relativeHumidity": pytest.approx(0.746)}]
    assert all(run.in_arrival_window(p["time"]) for p in points)
    assert len({p["time"] for p in points}) == 4  # each state its own arrival time
    health = run.points("sensor_health", "aq-014")
    assert len(health) == 1 and health[0]["rssi"] == -67 and health[0]["family"] == "esphome"
    assert run.in_arrival_window(health[0]["time"])


# -- The Things Stack -----------------------------------------------------------------------------

def test_ttn_decoded_payload_nanosecond_times_best_gateway_and_battery_volts(run):
    d = run.delta["ttn"]
    t_first, t_second = _ts(1795789867, d, 512846129), _ts(1795791704, d, 90417703)
    points = run.points("water", "wq-001")
    assert points == [
        {"time": t_first, "sensor": "wq-001", "area": "Tân Hạnh", "temperature": 29.4, "pH": 7.12,
         "conductivity": 412, "turbidity": 18.6, "dissolvedOxygen": 5.84},
        # pH as a numeric string; dissolved_oxygen null: no reading, never 0
        {"time": t_second, "sensor": "wq-001", "area": "Tân Hạnh", "temperature": 29.1, "pH": 7.08,
         "conductivity": 405, "turbidity": 21.3},
    ]
    health = [{k: v for k, v in p.items() if k in ("time", "rssi", "snr", "battery_voltage")}
              for p in run.points("sensor_health", "wq-001")]
    assert health == [
        {"time": t_first, "rssi": -97, "snr": 7.25, "battery_voltage": pytest.approx(3.587)},
        {"time": t_second, "rssi": -99, "snr": 6.0, "battery_voltage": pytest.approx(3.581)},
        # the undecodable uplink: no readings (dead letter), its radio health kept
        {"time": _ts(1795793512, d, 688190457), "rssi": -98, "snr": 6.75},
    ]
    assert run.deadletter_reasons("wq-001") == ["no_readings"]


# -- ChirpStack -----------------------------------------------------------------------------------

def test_chirpstack_codec_strings_percent_to_fraction_status_health_join_ignored(run):
    d = run.delta["chirpstack"]
    t_up, t_status = _ts(1795790412, d, 618263144), _ts(1795790700, d, 51735810)
    # the shipped profile takes the LSE01's water_SOIL; its probe temperatures (TempC_DS18B20, temp_SOIL) are not mapped
    assert run.points("forest", "fr-001") == [
        {"time": t_up, "sensor": "fr-001", "area": "Mã Đà", "soilMoisture": pytest.approx(0.3152)}]
    health = [{k: v for k, v in p.items() if k not in ("sensor", "domain", "area")}
              for p in run.points("sensor_health", "fr-001")]
    assert health == [
        {"time": t_up, "family": "chirpstack", "rssi": -104, "snr": 3.8, "battery_voltage": 3.605},
        {"time": t_status, "family": "chirpstack", "battery": 76.38, "margin": 7},
    ]
    assert run.deadletter_reasons("fr-001") == []


# -- Zigbee2MQTT ----------------------------------------------------------------------------------

def test_zigbee2mqtt_name_with_slashes_last_seen_formats_health_and_bridge_ignored(run):
    d = run.delta["zigbee2mqtt"]
    points = run.points("forest", "fr-002")
    assert [p["time"] for p in points[:2]] == [_ts(1795791033, d, 208_000_000), _ts(1795791633, d, 208_000_000)]
    assert run.in_arrival_window(points[2]["time"])  # no last_seen: arrival time
    assert [(p["temperature"], p["relativeHumidity"], p["soilMoisture"]) for p in points] == [
        (26.9, pytest.approx(0.784), pytest.approx(0.342)),
        (26.5, pytest.approx(0.796), pytest.approx(0.337)),
        (26.7, pytest.approx(0.791), pytest.approx(0.339)),
    ]
    health = [{k: v for k, v in p.items() if k in ("time", "battery", "linkquality", "battery_voltage")}
              for p in run.points("sensor_health", "fr-002")]
    assert health == [
        {"time": points[0]["time"], "battery": 87, "linkquality": 112, "battery_voltage": pytest.approx(2.98)},
        {"time": points[1]["time"], "battery": 86, "linkquality": 109, "battery_voltage": pytest.approx(2.975)},
        {"time": points[2]["time"], "battery": 86, "linkquality": 105, "battery_voltage": pytest.approx(2.975)},
    ]
    # bridge messages and the /set command: neither stored nor dead-lettered
    assert run.tag_values("forest", "sensor") == {"fr-001", "fr-002"}
    assert run.tag_values("sensor_health", "sensor") == {"aq-013", "aq-014", "aq-015", "wq-001", "fr-001", "fr-002"}


# -- Sensor.Community -----------------------------------------------------------------------------

def test_sensor_community_pivot_p1_is_pm10_numeric_strings_at_arrival_time(run):
    points = run.points("air", "aq-015")
    assert len(points) == 2 and all(run.in_arrival_window(p["time"]) for p in points)
    assert [{k: v for k, v in p.items() if k not in ("time", "sensor", "area")} for p in points] == [
        {"pm10": 15.3, "pm25": 7.1, "temperature": 29.64, "relativeHumidity": pytest.approx(0.7122)},
        {"pm10": 22.8, "pm25": 11.45},  # BME280 disabled: no temperature or humidity, never 0
    ]
    health = run.points("sensor_health", "aq-015")
    assert [(p["time"], p["rssi"]) for p in health] == [(points[0]["time"], -71), (points[1]["time"], -74)]


# -- Sparkplug B ----------------------------------------------------------------------------------

def test_sparkplug_births_alias_only_data_and_unknown_alias(run):
    d = run.delta["sparkplug"]

    def at(ms: int) -> int:
        return (ms + d * 1000) * MS

    fields = [{k: v for k, v in p.items() if k not in ("sensor", "area")} for p in run.points("water", "wq-002")]
    assert fields == [
        {"time": at(1795766400030), "temperature": 28.4},  # DBIRTH, the metric's own timestamp
        {"time": at(1795766400050), "pH": 7.12, "turbidity": 23.5, "dissolvedOxygen": 5.6},
        {"time": at(1795766460000), "temperature": 28.6, "pH": 7.05, "turbidity": 24.0, "dissolvedOxygen": 5.25},
        {"time": at(1795766520000), "temperature": 28.7},  # the known alias of a DDATA with an unknown one
        {"time": at(1795766700000), "turbidity": 26.5},  # after the gap: the data is kept
    ]
    assert run.deadletter_reasons("wq-002") == ["malformed_protobuf", "sparkplug_seq_gap", "sparkplug_unknown_alias"]


def test_sparkplug_seq_gap_makes_the_engine_ask_the_node_for_a_rebirth(run):
    # published before the unknown alias was: the gap alone asked for it
    assert [topic for topic, _ in run.commands_before_phase_two] == ["spBv1.0/bienhoa/NCMD/gw-dongnai-01"]
    command = parse_payload(run.commands_before_phase_two[0][1])
    assert [(m.name, m.boolean_value) for m in command.metrics] == [("Node Control/Rebirth", True)]
    assert run.published_ns // MS <= command.timestamp <= time.time_ns() // MS


# -- Frigate --------------------------------------------------------------------------------------

def test_frigate_vehicles_counted_per_interval_with_a_true_zero(run):
    t = run.frigate_t
    counts = rows(run.influx, run.db, f"SELECT intensity FROM traffic WHERE sensor = 'tc-001' "
                                      f"AND time <= {(t + 120) * S} ORDER BY time")
    # 3 distinct vehicles in the first interval (a person not counted, an end message not recounted),
    # 1 in the second, a true 0 in the third while Frigate ran
    assert [(r["time"], r["intensity"]) for r in counts] == [(t * S, 3), ((t + 60) * S, 1), ((t + 120) * S, 0)]
    # zones and the second camera are not registry sensors: counted, neither stored nor dead-lettered
    assert run.tag_values("traffic", "sensor") == {"tc-001"}
    assert run.deadletter_reasons("tc-001") == ["frigate_late_event"]


# -- availability ---------------------------------------------------------------------------------

def test_last_wills_status_and_deaths_make_offline_alerts_at_the_next_device_check(run):
    for sensor in ANNOUNCED_OFFLINE:
        alerts = run.offline_alerts(sensor)
        assert len(alerts) == 1 and alerts[0]["level"] == "critical"
        # announced, not inferred from silence: far less silence than offline_min (15 min)
        assert alerts[0]["value"] < 600
    stored = rows(run.influx, run.db, "SELECT sensor, reason FROM alerts WHERE detector = 'no_data' AND level = 'critical'")
    assert {r["sensor"] for r in stored if r["reason"] == "offline"} == set(ANNOUNCED_OFFLINE)
    # devices that announced nothing stay as they were
    for sensor in ("aq-015", "wq-001", "fr-001"):
        assert run.offline_alerts(sensor) == []
