"""Config validation, environment overrides, and the `citywatch` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from citywatch.cli import build_parser, main
from citywatch.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "citywatch.yaml"


def test_sample_config_is_valid_and_has_the_qcvn_air_limits():
    s = load_settings(SAMPLE, env={})
    limits = {r.metric: r.crit for r in s.detectors.thresholds}
    assert limits == {"no2": 200, "so2": 350, "o3": 200, "co": 30000}
    assert s.mqtt.topic == "city/{domain}/{sensor}/telemetry" and s.mqtt.qos == 1
    assert s.batching.max_age == 0.2 and s.validation.max_future_skew == 300


def test_environment_overrides_the_file_and_carries_the_secrets():
    env = {
        "CITYWATCH_MQTT_URL": "mqtts://broker.example:8883",
        "CITYWATCH_MQTT_USERNAME": "engine",
        "CITYWATCH_MQTT_PASSWORD": "s3cret",
        "CITYWATCH_INFLUX_URL": "https://influx.example:8086",
        "CITYWATCH_INFLUX_DB": "bienhoa",
        "CITYWATCH_INFLUX_TOKEN": "tok-9f3a",
        "CITYWATCH_INFLUX_USERNAME": "writer",
        "CITYWATCH_INFLUX_PASSWORD": "pw",
    }
    s = load_settings(SAMPLE, env=env)
    assert (s.mqtt.use_tls, s.mqtt.host, s.mqtt.port) == (True, "broker.example", 8883)
    assert s.mqtt.username == "engine" and s.mqtt.password.get_secret_value() == "s3cret"
    assert s.influxdb.url == "https://influx.example:8086" and s.influxdb.database == "bienhoa"
    assert s.influxdb.token.get_secret_value() == "tok-9f3a"
    assert s.influxdb.username == "writer" and s.influxdb.password.get_secret_value() == "pw"
    assert "s3cret" not in s.model_dump_json() and "tok-9f3a" not in s.model_dump_json() + repr(s.influxdb)


@pytest.mark.parametrize("section, key", [("mqtt", "password"), ("influxdb", "token"), ("influxdb", "password")])
def test_secrets_in_the_file_are_refused(tmp_path, section, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({section: {key: "in-a-file"}}))
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: secrets are not read from files"):
        load_settings(cfg, env={})


@pytest.mark.parametrize("doc, path, reason", [
    ({"mqtt": {"qos": 3}}, "mqtt.qos", "Input should be 0 or 1"),
    ({"mqtt": {"url": "http://x"}}, "mqtt", "mqtt:// or mqtts://"),
    ({"batching": {"max_age": "soon"}}, "batching.max_age", "not a duration"),
    ({"detectors": {"thresholds": [{"metric": "no2", "warn": 200, "crit": 100}]}}, "detectors.thresholds.0",
     "warn (200.0) must come before crit"),
    ({"influxdb": {"databse": "typo"}}, "influxdb.databse", "Extra inputs are not permitted"),
])
def test_a_bad_config_names_file_key_path_and_reason(tmp_path, doc, path, reason):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    msg = str(err.value)
    assert str(cfg) in msg and f": {path}" in msg and reason in msg


def test_check_config_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mqtt:\n  qos: 7\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert f"{cfg}: mqtt.qos" in capsys.readouterr().err
    assert main(["check-config", "--config", str(SAMPLE)]) == 0
    assert "120 sensors" in capsys.readouterr().out


def test_sensors_list_json_and_domain_filter(capsys):
    assert main(["sensors", "list", "--config", str(SAMPLE), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 120 and {"id", "domain", "lat", "lon", "area", "interval", "metrics"} <= set(rows[0])
    assert main(["sensors", "list", "--config", str(SAMPLE), "--format", "json", "--domain", "water"]) == 0
    water = json.loads(capsys.readouterr().out)
    assert water and {r["domain"] for r in water} == {"water"} and len(water) < len(rows)
    assert main(["sensors", "list", "--config", str(SAMPLE), "--domain", "traffic"]) == 0
    assert "tc-001" in capsys.readouterr().out


def _subcommands(parser) -> list[list[str]]:
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append([name])
                out += [[name, *rest] for rest in _subcommands(sub)]
    return out


def test_every_subcommand_has_help():
    commands = _subcommands(build_parser())
    assert {"run", "check-config", "sensors", "simulate", "demo"} <= {c[0] for c in commands}
    assert ["sensors", "list"] in commands
    for cmd in [[], *commands]:
        r = subprocess.run([sys.executable, "-m", "citywatch", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "usage: citywatch" in r.stdout and len(r.stdout.splitlines()) > 3


def test_installed_under_one_namespace_only():
    import importlib.util

    assert importlib.util.find_spec("citywatch.ingest") is not None
    for bare in ("ingest", "detectors", "sinks"):
        spec = importlib.util.find_spec(bare)
        # only the repository checkout itself (tests run from it) may expose the bare folders
        assert spec is None or Path(spec.origin or spec.submodule_search_locations[0]).resolve().is_relative_to(REPO)


def test_pyproject_lists_every_package_so_the_wheel_is_complete():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    found = set()
    for top, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([top, *rel.parts]) if rel.parts else top)
    assert found == set(cfg["packages"])


def test_index_command_over_a_csv(tmp_path, capsys):
    import numpy as np

    from citywatch.detectors.indices import vn_aqi_hourly

    pm25 = [26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6]
    csv_in = tmp_path / "hourly.csv"
    csv_in.write_text("timestamp,pm25\n" + "".join(
        f"2026-11-27T{h:02d}:00:00+07:00,{v}\n" for h, v in enumerate(pm25, start=9)))
    out = tmp_path / "aqi.csv"
    assert main(["index", "vn-aqi", "--input", str(csv_in), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    header, last = lines[0].split(","), dict(zip(lines[0].split(","), lines[-1].split(",")))
    assert {"timestamp", "value", "category", "dominant"} <= set(header) and len(lines) == 13
    expect = vn_aqi_hourly({"pm25": np.array(pm25)})
    assert float(last["value"]) == float(expect.value[-1]) and int(last["category"]) == int(expect.category[-1])
    assert main(["index", "vn-aqi", "--input", str(tmp_path / "missing.csv")]) == 2


def test_check_config_checks_the_device_source_profiles(tmp_path, capsys):
    assert main(["check-config", "--config", str(SAMPLE)]) == 0
    assert "8 registry sensors name their device" in capsys.readouterr().out
    registry = (SAMPLE.parent / "sensors" / "bienhoa.yaml").resolve()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"registry: {registry}\nsources:\n  profiles: [tasmota, nope]\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "no shipped profile 'nope'" in capsys.readouterr().err
    odd = tmp_path / "odd.yaml"
    odd.write_text(f"registry: {registry}\nsources:\n  profiles:\n    - tasmota\n"
                   "    - {family: gw, topics: [{filter: 'gw/{device}'}], aliases: {gw-1: aq-999}}\n")
    assert main(["check-config", "--config", str(odd)]) == 0
    out = capsys.readouterr().out
    assert "'gw-1' -> 'aq-999': no such sensor" in out and "names a ttn device" in out
