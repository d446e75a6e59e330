"""`citywatch sources test` / `sources list`: the documented device messages of tests/data/devices/
through the command, with the exact readings, health, availability and rejections it prints (JSON),
and its exit codes. A few go through `python -m citywatch` in a subprocess, the rest call the
module's `run` in-process. Arrival times are given with --arrival (just after each message's own
time), so the plausibility windows judge the fixed 2026 fixtures the same way in any year."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from citywatch import sources_cli
from citywatch.ingest.sources.profile import FAMILIES, SourceProfile

ROOT = Path(__file__).parent.parent
DEVICES = Path(__file__).parent / "data" / "devices"
SPARKPLUG = DEVICES / "sparkplug"
CONFIG = ROOT / "config" / "citywatch.yaml"  # the sample config, whatever CITYWATCH_CONFIG says


def payload_file(tmp_path: Path, family: str, name: str) -> tuple[str, Path]:
    """(topic, file holding the payload exactly as the device publishes it) of a documented message."""
    doc = json.loads((DEVICES / family / f"{name}.json").read_text())
    body = doc["payload"].encode() if doc["payload_is_text"] else json.dumps(doc["payload"]).encode()
    path = tmp_path / f"{family}-{name}.payload"
    path.write_bytes(body)
    return doc["topic"], path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="citywatch sources")
    sources_cli.add_arguments(parser)
    return parser.parse_args([argv[0], "--config", str(CONFIG), *argv[1:]])


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = sources_cli.run(parse(*argv, "--format", "json"))
    out = capsys.readouterr().out
    return rc, json.loads(out)


def try_message(capsys, tmp_path, family: str, name: str, arrival: str, *extra: str) -> tuple[int, dict]:
    topic, path = payload_file(tmp_path, family, name)
    return run_json(capsys, "test", "--family", family, "--topic", topic, "--payload", str(path),
                    "--arrival", arrival, *extra)


def rows(report: dict) -> list[tuple]:
    """The readings printed; values to 12 significant digits (a unit conversion such as 71.22 % -> 1
    divides by 100 in binary floating point: 0.7121999999999999)."""
    return [(r["sensor"], r["metric"], float(f"{r['value']:.12g}"), r["unit"], r["ts"], r["ts_from_arrival"])
            for r in report["readings"]]


def reasons(report: dict) -> list[str]:
    return [r["reason"] for r in report["rejections"]]


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citywatch", "sources", argv[0], "--config", str(CONFIG), *argv[1:]],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


# -- every family ---------------------------------------------------------------------------------

def test_tasmota_sensor_through_the_command_line(tmp_path):
    topic, path = payload_file(tmp_path, "tasmota", "sensor_sds011_bme280")
    proc = cli("test", "--family", "tasmota", "--topic", topic, "--payload", str(path),
               "--arrival", "2026-11-27T14:05:02Z", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # Local time 21:05 without offset in Asia/Ho_Chi_Minh; "PM2.5" is one key; humidity % -> fraction.
    assert rows(report) == [
        ("aq-013", "temperature", 31.4, "Cel", "2026-11-27T14:05:00Z", False),
        ("aq-013", "relativeHumidity", 0.682, "1", "2026-11-27T14:05:00Z", False),
        ("aq-013", "pm25", 38.4, "ug/m3", "2026-11-27T14:05:00Z", False),
        ("aq-013", "pm10", 61.7, "ug/m3", "2026-11-27T14:05:00Z", False),
    ]
    assert report["readings"][0]["ts_ns"] == 1795788300000000000
    assert report["rejections"] == [] and report["ok"] is True
    assert report["messages"][0]["rule"] == {"filter": "tele/{device}/SENSOR", "kind": "readings", "decoder": "json",
                                             "captures": {"device": "aq_tasmota_01"}}
    assert report["counters"] == {"source_unmapped_keys": 2}  # DewPoint and Pressure


def test_tasmota_table_output_names_sensor_metric_value_unit_and_time(tmp_path):
    topic, path = payload_file(tmp_path, "tasmota", "sensor_fahrenheit")
    proc = cli("test", "--family", "tasmota", "--topic", topic, "--payload", str(path),
               "--arrival", "2026-11-27T14:10:03Z")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "aq-013" in line]
    cells = [[c.strip() for c in re.split(r"[│|]", line) if c.strip()] for line in lines]
    assert cells[0] == ["aq-013", "temperature", "31.38888889", "Cel", "2026-11-27T14:10:00Z", "payload"]
    assert proc.stdout.rstrip().endswith("ok")


def test_tasmota_fahrenheit_state_lwt_and_implausible_time(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "tasmota", "sensor_fahrenheit", "2026-11-27T14:10:03Z")
    assert rc == 0
    assert rows(report)[:2] == [("aq-013", "temperature", 31.3888888889, "Cel", "2026-11-27T14:10:00Z", False),
                                ("aq-013", "relativeHumidity", 0.68, "1", "2026-11-27T14:10:00Z", False)]

    rc, report = try_message(capsys, tmp_path, "tasmota", "state", "2026-11-27T14:05:02Z")
    assert rc == 0 and report["readings"] == []
    assert report["health"] == [{"sensor": "aq-013", "family": "tasmota", "fields": {"rssi": -69.0},
                                 "ts": "2026-11-27T14:05:00Z", "ts_ns": 1795788300000000000}]

    rc, report = try_message(capsys, tmp_path, "tasmota", "lwt_offline", "2026-11-27T14:20:00Z")
    assert rc == 0
    assert report["availability"] == [{"sensor": "aq-013", "online": False, "ts": "2026-11-27T14:20:00Z",
                                       "ts_ns": 1795789200000000000}]

    rc, report = try_message(capsys, tmp_path, "tasmota", "sensor_time_far_future", "2026-11-27T14:30:00Z")
    assert rc == 0
    assert rows(report) == [("aq-013", "temperature", 31.0, "Cel", "2026-11-27T14:30:00Z", True),
                            ("aq-013", "relativeHumidity", 0.69, "1", "2026-11-27T14:30:00Z", True),
                            ("aq-013", "pm25", 36.4, "ug/m3", "2026-11-27T14:30:00Z", True),
                            ("aq-013", "pm10", 59.0, "ug/m3", "2026-11-27T14:30:00Z", True)]
    assert report["counters"]["source_ts_implausible"] == 1


def test_esphome_text_states_nan_and_status(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "esphome", "pm_2_5_state", "2026-11-27T14:00:00.5Z")
    assert rc == 0
    assert rows(report) == [("aq-014", "pm25", 35.2, "ug/m3", "2026-11-27T14:00:00.5Z", True)]

    rc, report = try_message(capsys, tmp_path, "esphome", "wifi_signal_state", "2026-11-27T14:00:00Z")
    assert rc == 0 and report["readings"] == []
    assert [h["fields"] for h in report["health"]] == [{"rssi": -67.0}]

    rc, report = try_message(capsys, tmp_path, "esphome", "temperature_nan", "2026-11-27T14:00:00Z")
    assert rc == 1  # "nan" is missing: nothing comes out (never a 0), and that is not a success
    assert report["readings"] == [] and report["rejections"] == []
    assert report["counters"] == {"source_missing_values": 1}

    rc, report = run_json(capsys, "test", "-f", "esphome", "-t", "aq-esphome-01/status", "--text", "-p", "offline",
                          "--arrival", "2026-11-27T14:00:00Z")
    assert rc == 0
    assert [(a["sensor"], a["online"]) for a in report["availability"]] == [("aq-014", False)]
    assert report["messages"][0]["payload"] == "'offline'"


def test_ttn_uplink_nanosecond_time_best_gateway_null_and_strings(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "ttn", "uplink", "2026-11-27T14:31:08Z")
    assert rc == 0
    ts = "2026-11-27T14:31:07.512846129Z"
    assert rows(report) == [("wq-001", "temperature", 29.4, "Cel", ts, False),
                            ("wq-001", "pH", 7.12, "pH", ts, False),
                            ("wq-001", "conductivity", 412.0, "uS/cm", ts, False),
                            ("wq-001", "turbidity", 18.6, "NTU", ts, False),
                            ("wq-001", "dissolvedOxygen", 5.84, "mg/L", ts, False)]
    assert report["readings"][0]["ts_ns"] == 1795789867512846129
    assert report["health"][0]["fields"] == {"rssi": -97.0, "snr": 7.25, "battery_voltage": 3.587}

    rc, report = try_message(capsys, tmp_path, "ttn", "uplink_null_and_string", "2026-11-27T15:01:45Z")
    assert rc == 0
    ts = "2026-11-27T15:01:44.090417703Z"
    assert rows(report) == [("wq-001", "temperature", 29.1, "Cel", ts, False),
                            ("wq-001", "pH", 7.08, "pH", ts, False),
                            ("wq-001", "conductivity", 405.0, "uS/cm", ts, False),
                            ("wq-001", "turbidity", 21.3, "NTU", ts, False)]
    assert report["counters"]["source_missing_values"] == 1  # dissolved_oxygen null: no reading, not 0

    rc, report = try_message(capsys, tmp_path, "ttn", "uplink_decoder_failed", "2026-11-27T15:31:53Z")
    assert rc == 1 and reasons(report) == ["no_readings"]


def test_chirpstack_uplink_codec_strings(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "chirpstack", "up", "2026-11-27T14:40:13Z")
    assert rc == 0
    ts = "2026-11-27T14:40:12.618263144Z"
    assert rows(report) == [("fr-001", "soilMoisture", 0.3152, "1", ts, False)]
    assert report["health"][0]["fields"] == {"rssi": -104.0, "snr": 3.8, "battery_voltage": 3.605}


def test_zigbee2mqtt_multi_level_name_availability_and_bridge(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "zigbee2mqtt", "state", "2026-11-27T14:50:34Z")
    assert rc == 0
    ts = "2026-11-27T14:50:33.208Z"
    assert rows(report) == [("fr-002", "relativeHumidity", 0.784, "1", ts, False),
                            ("fr-002", "soilMoisture", 0.342, "1", ts, False),
                            ("fr-002", "temperature", 26.9, "Cel", ts, False)]
    assert report["health"][0]["fields"] == {"battery": 87.0, "linkquality": 112.0, "battery_voltage": 2.98}
    assert report["messages"][0]["rule"]["captures"] == {"device": "forest/station 3/soil"}

    rc, report = try_message(capsys, tmp_path, "zigbee2mqtt", "availability_offline", "2026-11-27T15:00:00Z")
    assert rc == 0 and [(a["sensor"], a["online"]) for a in report["availability"]] == [("fr-002", False)]

    rc, report = try_message(capsys, tmp_path, "zigbee2mqtt", "bridge_state", "2026-11-27T15:00:00Z")
    assert rc == 1  # known and ignored: nothing to store, and no dead letter either
    assert report["rejections"] == [] and report["readings"] == []
    assert report["messages"][0]["rule"]["kind"] == "ignore" and "ignored" in report["messages"][0]["note"]


def test_sensor_community_pivot_p1_is_pm10(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "sensor_community", "sds011_bme280", "2026-11-27T14:00:00Z")
    assert rc == 0
    ts = "2026-11-27T14:00:00Z"
    assert rows(report) == [("aq-015", "pm10", 15.3, "ug/m3", ts, True),
                            ("aq-015", "pm25", 7.1, "ug/m3", ts, True),
                            ("aq-015", "temperature", 29.64, "Cel", ts, True),
                            ("aq-015", "relativeHumidity", 0.7122, "1", ts, True)]
    assert report["health"][0]["fields"] == {"rssi": -71.0}


def test_sparkplug_session_through_the_command_line():
    topics = ["spBv1.0/bienhoa/NBIRTH/gw-dongnai-01", "spBv1.0/bienhoa/DBIRTH/gw-dongnai-01/wq-probe-01",
              "spBv1.0/bienhoa/DDATA/gw-dongnai-01/wq-probe-01"]
    files = ["01-nbirth.bin", "02-dbirth.bin", "03-ddata.bin"]
    argv = ["test", "--family", "sparkplug", "--arrival", "2026-11-27T08:01:02Z", "--format", "json"]
    for topic, name in zip(topics, files):
        argv += ["--topic", topic, "--payload", str(SPARKPLUG / name)]
    proc = cli(*argv)
    report = json.loads(proc.stdout)
    assert rows(report) == [
        ("wq-002", "temperature", 28.4, "Cel", "2026-11-27T08:00:00.03Z", False),
        ("wq-002", "pH", 7.12, "pH", "2026-11-27T08:00:00.05Z", False),
        ("wq-002", "turbidity", 23.5, "NTU", "2026-11-27T08:00:00.05Z", False),
        ("wq-002", "dissolvedOxygen", 5.6, "mg/L", "2026-11-27T08:00:00.05Z", False),
        ("wq-002", "temperature", 28.6, "Cel", "2026-11-27T08:01:00Z", False),
        ("wq-002", "pH", 7.05, "pH", "2026-11-27T08:01:00Z", False),
        ("wq-002", "turbidity", 24.0, "NTU", "2026-11-27T08:01:00Z", False),
        ("wq-002", "dissolvedOxygen", 5.25, "mg/L", "2026-11-27T08:01:00Z", False),
    ]
    assert [(a["sensor"], a["online"]) for a in report["availability"]] == [("wq-002", True)]
    # The edge node itself is no registry sensor: the profile's ignore_devices counts its NBIRTH
    assert reasons(report) == []
    assert report["counters"]["source_unknown_devices_ignored"] == 1
    assert proc.returncode == 0


def test_sparkplug_data_before_birth_is_explained_and_asks_for_a_rebirth(capsys):
    rc, report = run_json(capsys, "test", "-f", "sparkplug", "-t", "spBv1.0/bienhoa/DDATA/gw-dongnai-01/wq-probe-01",
                          "-p", str(SPARKPLUG / "03-ddata.bin"), "--arrival", "2026-11-27T08:01:02Z")
    assert rc == 1
    assert reasons(report) == ["sparkplug_no_birth"]
    assert "before its BIRTH" in report["rejections"][0]["detail"]
    assert [c["topic"] for c in report["commands"]] == ["spBv1.0/bienhoa/NCMD/gw-dongnai-01"]

    rc, report = run_json(capsys, "test", "-f", "sparkplug", "-t", "spBv1.0/bienhoa/DDATA/gw-dongnai-01/wq-probe-01",
                          "-p", str(SPARKPLUG / "09-malformed.bin"), "--arrival", "2026-11-27T08:01:02Z")
    assert rc == 1 and reasons(report) == ["malformed_protobuf"]


def test_frigate_sequence_counts_closed_intervals(capsys, tmp_path):
    seq = json.loads((DEVICES / "frigate" / "sequence.json").read_text())
    # arrival after the last frame time (base + 215 s): the clock then closes the interval holding it
    argv = ["test", "--family", "frigate", "--arrival", "2026-11-27T03:03:40Z"]
    for i, m in enumerate(seq["messages"]):
        path = tmp_path / f"{i:02d}.payload"
        path.write_bytes(m["payload"].encode() if m["payload_is_text"] else json.dumps(m["payload"]).encode())
        argv += ["--topic", m["topic"], "--payload", str(path)]
    rc, report = run_json(capsys, *argv)
    camera = [(r["ts_ns"], r["value"]) for r in seq["expected_readings"] if r["device"] == "nga_tu_vung_tau"]
    got = [(r["ts_ns"], r["value"]) for r in report["readings"]]
    assert {r["sensor"] for r in report["readings"]} == {"tc-001"}
    assert {(r["metric"], r["unit"]) for r in report["readings"]} == {("intensity", "veh")}
    # What the messages close themselves, then what the clock closes after them: 03:03, which the
    # sequence leaves open.
    assert seq["base_time"] == 1795748400
    assert got[:len(camera)] == [(ts, float(v)) for ts, v in camera]
    assert got[len(camera):] == [(1795748580000000000, 1.0)]
    assert reasons(report) == ["frigate_late_event"]  # the event for a bucket already closed
    assert report["counters"]["source_unknown_devices_ignored"] > 0  # zones: counted, not dead-lettered
    assert rc == 1


# -- what goes wrong ------------------------------------------------------------------------------

def test_unknown_family_is_a_usage_error_listing_the_families(tmp_path):
    topic, path = payload_file(tmp_path, "tasmota", "sensor_sds011_bme280")
    proc = cli("test", "--family", "shelly", "--topic", topic, "--payload", str(path))
    assert proc.returncode == 2
    assert "no source profile of family 'shelly'" in proc.stderr
    for family in FAMILIES:
        assert family in proc.stderr
    assert proc.stdout == ""


def test_unmatched_topic_is_a_topic_mismatch(capsys, tmp_path):
    _, path = payload_file(tmp_path, "tasmota", "sensor_sds011_bme280")
    rc, report = run_json(capsys, "test", "-f", "tasmota", "-t", "stat/aq_tasmota_01/RESULT", "-p", str(path),
                          "--arrival", "2026-11-27T14:05:02Z")
    assert rc == 1
    assert reasons(report) == ["topic_mismatch"]
    assert "rule" not in report["messages"][0]


def test_a_topic_of_another_family_is_not_claimed(capsys, tmp_path):
    topic, path = payload_file(tmp_path, "tasmota", "sensor_sds011_bme280")
    rc, report = run_json(capsys, "test", "-f", "esphome", "-t", topic, "-p", str(path),
                          "--arrival", "2026-11-27T14:05:02Z")
    assert rc == 1 and reasons(report) == ["topic_mismatch"]


def test_unknown_device_names_the_source_entry_to_add(capsys, tmp_path):
    _, path = payload_file(tmp_path, "tasmota", "sensor_sds011_bme280")
    rc, report = run_json(capsys, "test", "-f", "tasmota", "-t", "tele/aq_tasmota_99/SENSOR", "-p", str(path),
                          "--arrival", "2026-11-27T14:05:02Z")
    assert rc == 1 and report["readings"] == []
    assert reasons(report) == ["unknown_device"]
    assert report["rejections"][0]["source"] == {"family": "tasmota", "device": "aq_tasmota_99"}

    rc = sources_cli.run(parse("test", "-f", "tasmota", "-t", "tele/aq_tasmota_99/SENSOR", "-p", str(path),
                               "--arrival", "2026-11-27T14:05:02Z"))
    out = capsys.readouterr().out
    assert rc == 1
    assert 'source: {family: tasmota, device: "aq_tasmota_99"}' in out


def test_malformed_payload_is_rejected_not_raised(capsys, tmp_path):
    rc, report = try_message(capsys, tmp_path, "tasmota", "sensor_truncated", "2026-11-27T14:05:02Z")
    assert rc == 1 and reasons(report) == ["malformed_json"]
    assert report["rejections"][0]["detail"].startswith("tasmota device 'aq_tasmota_01':")


def test_payload_from_stdin(tmp_path):
    topic, path = payload_file(tmp_path, "esphome", "pm_10_0_state")
    proc = subprocess.run([sys.executable, "-m", "citywatch", "sources", "test", "-c", str(CONFIG), "-f", "esphome",
                           "-t", topic, "-p", "-", "--arrival", "2026-11-27T14:00:00Z", "--format", "json"],
                          input=path.read_bytes(), capture_output=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(r["sensor"], r["metric"], r["unit"]) for r in report["readings"]] == [("aq-014", "pm10", "ug/m3")]
    assert report["messages"][0]["payload"] == "<stdin>"


@pytest.mark.parametrize("argv, message", [
    (["-t", "a", "-t", "b", "-p", "x", "-p", "y", "-p", "z", "--text"], "3 --payload"),
    (["-t", "tele/x/LWT", "-p", "no-such-file.json"], "no-such-file.json"),
    (["-t", "tele/x/LWT", "-p", "Online", "--text", "--arrival", "2026-11-27T14:00:00"], "no offset"),
    (["-t", "tele/x/LWT", "-p", "Online", "--text", "--arrival", "yesterday"], "RFC 3339"),
])
def test_usage_errors_exit_2(capsys, argv, message):
    rc = sources_cli.run(parse("test", "-f", "tasmota", *argv))
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err


# -- your own profile -----------------------------------------------------------------------------

def readme_profile_example() -> tuple[str, str]:
    """The paste-able profile of README "Connecting devices" and its example message (the yaml and
    json blocks that follow "### Writing your own profile")."""
    section = (ROOT / "README.md").read_text().split("### Writing your own profile", 1)[1]
    profile = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    message = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    return profile, message


def test_readme_profile_is_valid_and_maps_its_example(capsys, tmp_path):
    block, message = readme_profile_example()
    profile = SourceProfile.model_validate(yaml.safe_load(block))
    path = tmp_path / "my_gateway.yaml"
    path.write_text(block)
    body = tmp_path / "gw17.json"
    body.write_text(message)
    rc, report = run_json(capsys, "test", "--profile", str(path), "-t", "gw/bienhoa/gw-17/data", "-p", str(body),
                          "--arrival", "2026-11-27T14:05:05Z")
    assert report["family"] == profile.family == "my_gateway"
    assert rc == 0, report["rejections"]
    # local time 21:05 in Asia/Ho_Chi_Minh; "PM2.5" a numeric string; temp in the payload's unit F
    assert rows(report) == [("aq-021", "pm25", 35.2, "ug/m3", "2026-11-27T14:05:00Z", False),
                            ("aq-021", "pm10", 51.0, "ug/m3", "2026-11-27T14:05:00Z", False),
                            ("aq-021", "temperature", 31.3888888889, "Cel", "2026-11-27T14:05:00Z", False)]
    assert report["health"][0]["fields"] == {"rssi": -81.0, "battery_voltage": 3.61}  # best receiver; mV -> V
    assert report["counters"]["source_missing_values"] == 1  # rh "nan"

    # the counter, through the pivot: baseline, then the increase
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"id": "gw-18", "ts": 1795788300, "extra": [{"name": "vehicles_total", "val": 1200}]}))
    second.write_text(json.dumps({"id": "gw-18", "ts": 1795788360, "extra": [{"name": "vehicles_total", "val": 1234}]}))
    rc, report = run_json(capsys, "test", "--profile", str(path), "-t", "gw/bienhoa/gw-18/data", "-p", str(first),
                          "-p", str(second), "--arrival", "2026-11-27T14:06:05Z")
    assert rc == 0
    assert rows(report) == [("tc-002", "intensity", 34.0, "veh", "2026-11-27T14:06:00Z", False)]
    assert report["counters"] == {"counter_baseline": 1}

    rc, report = run_json(capsys, "test", "--profile", str(path), "-t", "gw/bienhoa/gw-17/lwt", "--text", "-p", "0",
                          "--arrival", "2026-11-27T14:06:05Z")
    assert rc == 0 and [(a["sensor"], a["online"]) for a in report["availability"]] == [("aq-021", False)]


def test_profile_option_checks_the_file(capsys, tmp_path):
    rc = sources_cli.run(parse("test", "--profile", str(tmp_path / "missing.yaml"), "-t", "x", "-p", "y", "--text"))
    assert rc == 2 and "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: x\ntopics: []\n")
    rc = sources_cli.run(parse("test", "--profile", str(bad), "-t", "x", "-p", "y", "--text"))
    err = capsys.readouterr().err
    assert rc == 2 and "topics" in err


# -- sources list ---------------------------------------------------------------------------------

def test_list_shows_every_configured_profile(capsys):
    rc = sources_cli.run(parse("list", "--format", "json"))
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["enabled"] is True
    by_family = {p["family"]: p for p in doc["profiles"]}
    assert sorted(by_family) == sorted(FAMILIES)
    tasmota = by_family["tasmota"]
    assert [(t["filter"], t["kind"], t["subscription"]) for t in tasmota["topics"]] == [
        ("tele/{device}/SENSOR", "readings", "tele/+/SENSOR"),
        ("tele/{device}/STATE", "health", "tele/+/STATE"),
        ("tele/{device}/LWT", "availability", "tele/+/LWT")]
    assert tasmota["metrics"]["PM2.5"] == {"metric": "pm25", "unit": "ug/m3"}
    assert tasmota["metrics"]["Temperature"] == {"metric": "temperature", "unit_from": "TempUnit",
                                                 "units": {"C": "Cel", "F": "degF"}}
    assert by_family["ttn"]["metrics"]["vehicle_count_total"]["counter"] is True
    assert by_family["ttn"]["device_from"] == "end_device_ids.device_id"
    assert by_family["zigbee2mqtt"]["topics"][1]["filter"] == "zigbee2mqtt/{device+}/availability"

    rc = sources_cli.run(parse("list"))
    table = capsys.readouterr().out
    assert rc == 0 and "8 source profiles" in table and "SDS_P1 -> pm10 [ug/m3]" in table
