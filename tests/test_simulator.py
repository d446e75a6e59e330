"""The device simulator: determinism, realistic daily shapes, payload formats, labelled faults, MQTT."""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.registry import Registry
from citywatch.simulator import (
    continuous_metrics,
    EPISODE_RADIUS_KM,
    FAULT_KINDS,
    Simulator,
    add_arguments,
    local_hour,
    parse_payload,
    parse_start,
    run,
)
from citywatch.units import conversion

REPO = Path(__file__).resolve().parent.parent
REGISTRY_PATH = REPO / "config" / "sensors" / "bienhoa.yaml"
MONDAY = parse_start("2024-06-03T00:00:00+07:00")  # a weekday in the rainy season
DAY = 86400.0


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REGISTRY_PATH)


def decoded(registry: Registry, messages) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """sensor -> metric -> [(ts ms, value in the registry's unit)] from (topic, payload) pairs."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for topic, payload in messages:
        _, domain, sensor, _ = topic.split("/")
        spec = registry.get(sensor)
        assert spec is not None and spec.domain == domain
        for ts, metric, value, unit in parse_payload(payload):
            if unit is not None and unit != spec.metrics[metric].unit:
                scale, offset = conversion(unit, spec.metrics[metric].unit)
                value = value * scale + offset
            out[sensor][metric].append((ts, value))
    return out


def hourly_mean(series: dict[str, dict[str, list]], metric: str, hours: range) -> float:
    vals = [v for metrics in series.values() for ts, v in metrics.get(metric, [])
            if int(local_hour(np.array([ts / 1000.0]))[0]) in hours]
    assert vals, (metric, hours)
    return float(np.mean(vals))


# ------------------------------------------------------------------------------------------ basics

def test_deterministic_for_a_seed(registry):
    a = Simulator(registry, seed=7, start=MONDAY, faults=FAULT_KINDS, fault_rate=6)
    b = Simulator(registry, seed=7, start=MONDAY, faults=FAULT_KINDS, fault_rate=6)
    c = Simulator(registry, seed=8, start=MONDAY, faults=FAULT_KINDS, fault_rate=6)
    span = (MONDAY + 6 * 3600, MONDAY + 8 * 3600)
    ga = a.generate(*span)
    assert ga and ga == b.generate(*span)
    assert a.truth and a.truth == b.truth
    assert ga != c.generate(*span)


def test_chunked_generation_equals_one_call(registry):
    """Stateless: a span generated in pieces gives the same readings (array batches are cut at the
    pieces' edges, so compare decoded readings)."""
    t0 = MONDAY + 17 * 3600
    whole = Simulator(registry, seed=3, start=t0, faults=FAULT_KINDS, fault_rate=12)
    parts = Simulator(registry, seed=3, start=t0, faults=FAULT_KINDS, fault_rate=12)
    one = decoded(registry, whole.generate(t0, t0 + 3600))
    many = []
    for i in range(7):
        many += parts.generate(t0 + i * 3600 / 7, t0 + (i + 1) * 3600 / 7)
    pieces = decoded(registry, many)
    assert one == pieces
    assert sorted(r["id"] for r in whole.truth) == sorted(r["id"] for r in parts.truth)


def test_all_readings_in_span_and_at_the_expected_interval(registry):
    t0, t1 = MONDAY + 1000.5, MONDAY + 1000.5 + 1800
    sim = Simulator(registry, seed=1, start=t0)
    data = decoded(registry, sim.generate(t0, t1))
    assert set(data) == set(registry.sensors)
    for sensor, metrics in data.items():
        spec = registry.get(sensor)
        assert set(metrics) == set(continuous_metrics(spec))
        ts = sorted({t for series in metrics.values() for t, _ in series})
        assert all(t0 * 1000 <= t < t1 * 1000 for t in ts)
        assert len(ts) == pytest.approx(1800 / spec.interval, abs=1)
        assert all(b - a == spec.interval * 1000 for a, b in zip(ts, ts[1:]))


def test_subset_and_domains(registry):
    sim = Simulator(registry, seed=1, start=MONDAY, domains=["water", "forest"])
    assert {s.sensor.domain for s in sim.sims.values()} == {"water", "forest"}
    sim = Simulator(registry, seed=1, start=MONDAY, sensors=["aq-001", "tc-002"])
    assert set(sim.sims) == {"aq-001", "tc-002"}
    topics = {t for t, _ in sim.generate(MONDAY, MONDAY + 600)}
    assert topics == {"city/air/aq-001/telemetry", "city/traffic/tc-002/telemetry"}
    sim = Simulator(registry, seed=1, start=MONDAY, sensors=["aq-001"], topic="bienhoa/{sensor}/up/{domain}")
    assert {t for t, _ in sim.generate(MONDAY, MONDAY + 600)} == {"bienhoa/aq-001/up/air"}
    with pytest.raises(ValueError, match="not in the registry"):
        Simulator(registry, sensors=["nope"])
    with pytest.raises(ValueError, match="unknown fault kind"):
        Simulator(registry, faults=["meteor"])


# ------------------------------------------------------------------------------------------ realism

@pytest.fixture(scope="module")
def weekday(registry):
    """One simulated weekday of every sensor, decoded (no faults)."""
    sim = Simulator(registry, seed=11, start=MONDAY)
    return decoded(registry, sim.generate(MONDAY, MONDAY + DAY))


def test_traffic_rush_hours(registry, weekday):
    traffic = {k: v for k, v in weekday.items() if registry.get(k).domain == "traffic"}
    night = hourly_mean(traffic, "intensity", range(3, 4))
    morning = hourly_mean(traffic, "intensity", range(8, 9))
    evening = hourly_mean(traffic, "intensity", range(17, 18))
    midday = hourly_mean(traffic, "intensity", range(13, 14))
    assert morning > 8 * night and evening > 8 * night
    assert morning > midday and evening > midday
    assert night < 2.0
    # congestion: slower and more occupied in the rush hour
    assert hourly_mean(traffic, "averageVehicleSpeed", range(17, 18)) < hourly_mean(traffic, "averageVehicleSpeed", range(3, 4)) - 10
    assert hourly_mean(traffic, "occupancy", range(17, 18)) > 5 * hourly_mean(traffic, "occupancy", range(3, 4))
    # counts are whole vehicles, and main roads carry more than side streets
    by_class = defaultdict(list)
    for sensor, metrics in traffic.items():
        assert all(float(v).is_integer() for _, v in metrics["intensity"])
        by_class[registry.get(sensor).road_class].extend(v for _, v in metrics["intensity"])
    assert np.mean(by_class["main"]) > 2 * np.mean(by_class["secondary"]) > 2 * np.mean(by_class["side"])


def test_weekend_traffic_is_lighter_in_the_morning(registry):
    sunday = MONDAY - DAY
    sim = Simulator(registry, seed=11, start=sunday, domains=["traffic"])
    sun = decoded(registry, sim.generate(sunday + 7 * 3600, sunday + 9 * 3600))
    mon = decoded(registry, sim.generate(MONDAY + 7 * 3600, MONDAY + 9 * 3600))
    assert hourly_mean(mon, "intensity", range(7, 8)) > 1.5 * hourly_mean(sun, "intensity", range(7, 8))


def test_air_quality_daily_shape(weekday):
    evening = hourly_mean(weekday, "pm25", range(18, 21))
    midday = hourly_mean(weekday, "pm25", range(11, 14))
    assert evening > 1.5 * midday
    assert hourly_mean(weekday, "pm25", range(7, 8)) > hourly_mean(weekday, "pm25", range(11, 12))
    assert hourly_mean(weekday, "pm10", range(18, 21)) > hourly_mean(weekday, "pm25", range(18, 21))
    o3 = [hourly_mean(weekday, "o3", range(h, h + 1)) for h in range(24)]
    assert 12 <= int(np.argmax(o3)) <= 15
    no2 = [hourly_mean(weekday, "no2", range(h, h + 1)) for h in range(24)]
    assert no2[8] > 2 * no2[3] and no2[17] > 2 * no2[3]
    assert hourly_mean(weekday, "co", range(0, 24)) < 3000  # ug/m3: CO stays low


def test_temperature_and_humidity(registry, weekday):
    air = {k: v for k, v in weekday.items() if registry.get(k).domain == "air"}
    t14 = hourly_mean(air, "temperature", range(14, 15))
    t04 = hourly_mean(air, "temperature", range(4, 5))
    assert 31 <= t14 <= 35 and 24.5 <= t04 <= 28
    temps, hums = [], []
    for metrics in air.values():
        t = dict(metrics["temperature"])
        for ts, rh in metrics["relativeHumidity"]:
            temps.append(t[ts])
            hums.append(rh)
    assert np.corrcoef(temps, hums)[0, 1] < -0.6
    assert all(0 <= h <= 1 for h in hums)


def test_water_and_forest(registry, weekday):
    water = {k: v for k, v in weekday.items() if registry.get(k).domain == "water"}
    ph = [v for m in water.values() for _, v in m["pH"]]
    assert 6.3 < np.mean(ph) < 7.6
    do = [hourly_mean(water, "dissolvedOxygen", range(h, h + 1)) for h in range(24)]
    assert 4 < min(do) and max(do) < 8 and np.argmax(do) in range(12, 18) and max(do) - min(do) > 1
    forest = {k: v for k, v in weekday.items() if registry.get(k).domain == "forest"}
    assert hourly_mean(forest, "relativeHumidity", range(2, 5)) > hourly_mean(forest, "relativeHumidity", range(12, 14)) + 0.15
    assert hourly_mean(forest, "temperature", range(12, 15)) > hourly_mean(forest, "temperature", range(3, 6)) + 4


def test_rain_raises_turbidity_and_soil_moisture(registry):
    """Over a rainy-season week, showers happen, and after them turbidity and soil moisture rise."""
    sim = Simulator(registry, seed=5, start=MONDAY, sensors=["fr-001", "fr-002", "wq-005"])
    data = decoded(registry, sim.generate(MONDAY, MONDAY + 7 * DAY))
    rain = [v for s in ("fr-001", "fr-002") for _, v in data[s]["precipitation"]]
    assert sum(rain) > 5 and max(rain) > 0.5
    soil = np.array([v for _, v in data["fr-001"]["soilMoisture"]])
    assert soil.max() - soil.min() > 0.03
    turb = np.array([v for _, v in data["wq-005"]["turbidity"]])
    assert turb.max() > 1.5 * np.median(turb)


def test_values_within_physical_ranges(registry):
    sim = Simulator(registry, seed=2, start=MONDAY, faults=FAULT_KINDS, fault_rate=24)
    data = decoded(registry, sim.generate(MONDAY, MONDAY + DAY))
    assert sim.truth
    for sensor, metrics in data.items():
        for metric, series in metrics.items():
            spec = registry.get(sensor).metrics[metric]
            vals = [v for _, v in series]
            assert all(math.isfinite(v) for v in vals)
            assert spec.min - 1e-9 <= min(vals) and max(vals) <= spec.max + 1e-9, (sensor, metric)


# ------------------------------------------------------------------------------------------ formats

def test_json_format(registry):
    sim = Simulator(registry, seed=1, start=MONDAY, formats=["json"])
    msgs = sim.generate(MONDAY, MONDAY + 600)
    assert len(msgs) > 200
    for topic, payload in msgs:
        doc = json.loads(payload)
        sensor = registry.get(topic.split("/")[2])
        assert isinstance(doc, dict)
        assert isinstance(doc["ts"], int) and MONDAY * 1000 <= doc["ts"] < (MONDAY + 600) * 1000
        assert set(doc) - {"ts"} == set(continuous_metrics(sensor))
        assert all(isinstance(v, (int, float)) for v in doc.values())


def test_array_format_batches_a_backlog(registry):
    sim = Simulator(registry, seed=1, start=MONDAY, formats=["array"], batch_size=5)
    msgs = sim.generate(MONDAY, MONDAY + 3600)
    sizes = []
    for topic, payload in msgs:
        doc = json.loads(payload)
        sensor = registry.get(topic.split("/")[2])
        assert isinstance(doc, list) and 1 <= len(doc) <= 5
        sizes.append(len(doc))
        ts = [row["ts"] for row in doc]
        assert all(b - a == sensor.interval * 1000 for a, b in zip(ts, ts[1:]))
        for row in doc:
            assert set(row) - {"ts"} == set(continuous_metrics(sensor))
    assert max(sizes) == 5 and np.mean(sizes) > 3


def test_array_live_mode_uploads_complete_batches(registry):
    t0 = MONDAY + 1234.0
    sim = Simulator(registry, seed=1, start=t0, formats=["array"], sensors=["aq-001", "tc-003"])
    live = []
    for i in range(60):  # 1 s ticks of a minute-resolution device
        live += sim.messages(t0 + i * 30.0, t0 + (i + 1) * 30.0, complete_batches=True)
    sizes = [m.readings for m in live]
    assert sizes and all(1 <= n <= 5 for n in sizes) and sizes.count(5) >= len(sizes) - 2
    # every reading due by the end was uploaded exactly once, in event-time order per sensor
    got = decoded(registry, [(m.topic, m.payload) for m in live])
    ref = decoded(registry, Simulator(registry, seed=1, start=t0, formats=["json"],
                                      sensors=["aq-001", "tc-003"]).generate(t0, t0 + 1800))
    for sensor in got:
        ts = [t for t, _ in got[sensor]["pm25" if sensor == "aq-001" else "intensity"]]
        assert ts == sorted(set(ts))
        full = ref[sensor]["pm25" if sensor == "aq-001" else "intensity"]
        assert got[sensor]["pm25" if sensor == "aq-001" else "intensity"] == full[: len(ts)]
        assert len(full) - len(ts) < 5


def test_senml_format(registry):
    sim = Simulator(registry, seed=1, start=MONDAY, formats=["senml"])
    msgs = sim.generate(MONDAY, MONDAY + 600)
    alt_units = set()
    for topic, payload in msgs:
        doc = json.loads(payload)
        sensor = registry.get(topic.split("/")[2])
        assert isinstance(doc, list) and doc
        assert doc[0]["bn"] == f"{sensor.id}:"
        assert isinstance(doc[0]["bt"], float) and MONDAY <= doc[0]["bt"] < MONDAY + 600
        assert all("bn" not in r and "bt" not in r for r in doc[1:])
        names = [r["n"] for r in doc]
        assert sorted(names) == sorted(continuous_metrics(sensor))
        for r in doc:
            assert isinstance(r["v"], (int, float)) and isinstance(r["u"], str)
            reg_unit = sensor.metrics[r["n"]].unit
            assert conversion(r["u"], reg_unit) is not None
            if r["u"] != reg_unit:
                alt_units.add((r["n"], r["u"]))
    assert ("co", "mg/m3") in alt_units  # some devices report CO in mg/m3


def test_mixed_formats(registry):
    sim = Simulator(registry, seed=1, start=MONDAY)
    kinds = {s.fmt for s in sim.sims.values()}
    assert kinds == {"json", "array", "senml"}
    assert {s.fmt for s in Simulator(registry, seed=99).sims.values()} == kinds
    assert all(Simulator(registry, seed=99).sims[k].fmt == v.fmt for k, v in sim.sims.items())


# ------------------------------------------------------------------------------------------ faults

def _truth_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_injected_faults_in_data_and_truth(registry, tmp_path):
    truth = tmp_path / "truth.jsonl"
    t0 = MONDAY + 9 * 3600
    base = Simulator(registry, seed=4, start=t0, formats=["json"], sensors=["aq-001", "wq-002", "tc-001"])
    sim = Simulator(registry, seed=4, start=t0, formats=["json"], sensors=["aq-001", "wq-002", "tc-001"],
                    truth=truth)
    stuck = sim.inject("stuck", "wq-002", "pH", start=t0 + 1800, end=t0 + 5400)
    drop = sim.inject("dropout", "aq-001", start=t0 + 600, end=t0 + 1500)
    spike = sim.inject("spike", "tc-001", "averageVehicleSpeed", start=t0 + 3000, end=t0 + 3060, magnitude=-20)
    drift = sim.inject("drift", "aq-001", "pm25", start=t0 + 3600, end=t0 + 7200, magnitude=40)
    data = decoded(registry, sim.generate(t0, t0 + 7200))
    ref = decoded(registry, base.generate(t0, t0 + 7200))
    sim.close()

    lines = _truth_lines(truth)
    assert {r["kind"] for r in lines} == {"stuck", "dropout", "spike", "drift"}
    for row in lines:
        assert row["start_ms"] < row["end_ms"] and row["start"].endswith("Z") and row["sensors"]
        assert parse_start(row["start"]) * 1000 == pytest.approx(row["start_ms"])
    by_kind = {r["kind"]: r for r in lines}
    assert by_kind["stuck"] == {**stuck.to_json()} and by_kind["stuck"]["metric"] == "pH"
    assert by_kind["dropout"]["metric"] is None and by_kind["dropout"]["sensors"] == ["aq-001"]

    ph = data["wq-002"]["pH"]
    inside = [v for ts, v in ph if stuck.start * 1000 <= ts < stuck.end * 1000]
    outside = [v for ts, v in ph if not stuck.start * 1000 <= ts < stuck.end * 1000]
    assert len(inside) >= 11 and len(set(inside)) == 1
    assert len(set(outside)) > 5
    assert [v for ts, v in data["wq-002"]["temperature"]] == [v for ts, v in ref["wq-002"]["temperature"]]

    aq_ts = [ts for ts, _ in data["aq-001"]["pm25"]]
    assert not [ts for ts in aq_ts if drop.start * 1000 <= ts < drop.end * 1000]
    assert any(ts < drop.start * 1000 for ts in aq_ts) and any(ts >= drop.end * 1000 for ts in aq_ts)
    assert len(ref["aq-001"]["pm25"]) - len(aq_ts) == 15

    speed, speed_ref = dict(data["tc-001"]["averageVehicleSpeed"]), dict(ref["tc-001"]["averageVehicleSpeed"])
    diffs = {ts: speed[ts] - speed_ref[ts] for ts in speed if speed[ts] != speed_ref[ts]}
    assert len(diffs) == 1
    (ts_spike, d), = diffs.items()
    assert spike.start * 1000 <= ts_spike < spike.end * 1000 and d <= -19.5 or speed[ts_spike] == 4.0

    pm, pm_ref = dict(data["aq-001"]["pm25"]), dict(ref["aq-001"]["pm25"])
    rise = [(ts, pm[ts] - pm_ref[ts]) for ts in sorted(pm) if ts >= drift.start * 1000]
    assert rise[0][1] == pytest.approx(0, abs=0.15) and rise[-1][1] == pytest.approx(40, abs=1.0)
    assert all(b[1] >= a[1] - 0.15 for a, b in zip(rise, rise[1:]))


def test_random_faults_are_labelled_and_visible(registry, tmp_path):
    truth = tmp_path / "truth.jsonl"
    t0 = MONDAY
    sim = Simulator(registry, seed=21, start=t0, formats=["json", "senml"], faults=FAULT_KINDS, fault_rate=8,
                    truth=truth)
    data = decoded(registry, sim.generate(t0, t0 + 6 * 3600))
    sim.close()
    lines = _truth_lines(truth)
    assert {r["kind"] for r in lines} == set(FAULT_KINDS)
    assert len({r["id"] for r in lines}) == len(lines)  # each fault once
    checked = defaultdict(int)
    for row in lines:
        lo, hi = max(row["start_ms"], t0 * 1000), min(row["end_ms"], (t0 + 6 * 3600) * 1000)
        if row["kind"] == "stuck":
            vals = [v for ts, v in data[row["sensor"]][row["metric"]] if lo <= ts < hi]
            if len(vals) >= 2:
                assert len(set(vals)) == 1, row
                checked["stuck"] += 1
        elif row["kind"] == "dropout":
            assert not [ts for ts, _ in next(iter(data[row["sensor"]].values())) if lo <= ts < hi]
            checked["dropout"] += 1
        elif row["kind"] == "episode":
            assert len(row["sensors"]) >= 2
            centre = registry.get(row["sensor"])
            for sid in row["sensors"]:
                assert registry.get(sid).domain == "air"
                s = registry.get(sid)
                d = 6371 * math.dist((math.radians(s.lat), math.radians(s.lon) * math.cos(math.radians(s.lat))),
                                     (math.radians(centre.lat), math.radians(centre.lon) * math.cos(math.radians(s.lat))))
                assert d <= EPISODE_RADIUS_KM + 0.01
            assert set(row["metrics"]) == {"pm25", "pm10", "no2"}
            checked["episode"] += 1
    assert checked["stuck"] and checked["dropout"] and checked["episode"]


def test_episode_raises_pm25_at_neighbouring_stations(registry):
    t0 = MONDAY + 10 * 3600
    base = Simulator(registry, seed=6, start=t0, domains=["air"])
    sim = Simulator(registry, seed=6, start=t0, domains=["air"])
    centre = sim.episode_centres[0]
    ep = sim.inject("episode", centre, start=t0, end=t0 + 2 * 3600, magnitude=150)
    assert len(ep.sensors) >= 2 and ep.sensors[0] == centre
    assert any("no2" in registry.get(s).metrics for s in ep.sensors) or True
    data = decoded(registry, sim.generate(t0, t0 + 2 * 3600))
    ref = decoded(registry, base.generate(t0, t0 + 2 * 3600))
    mid = (t0 + 3600) * 1000
    for sid in ep.sensors:
        for metric, min_rise in (("pm25", 70), ("pm10", 100), ("no2", 25)):
            if metric not in data[sid]:  # low-cost sensors measure PM only
                continue
            now = [v for ts, v in data[sid][metric] if abs(ts - mid) < 600_000]
            was = [v for ts, v in ref[sid][metric] if abs(ts - mid) < 600_000]
            assert np.mean(now) - np.mean(was) > min_rise, (sid, metric)
    others = set(data) - set(ep.sensors)
    assert others and all(data[s]["pm25"] == ref[s]["pm25"] for s in others)


# ------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citywatch simulate")
    add_arguments(p)
    return p


def test_help_text():
    text = _parser().format_help()
    for opt in ("--config", "--registry", "--mqtt-url", "--speedup", "--duration", "--start", "--seed",
                "--domains", "--sensors", "--faults", "--fault-rate", "--truth", "--format"):
        assert opt in text
    assert "CITYWATCH_MQTT_URL" in text and "RFC 3339" in text and "Ctrl-C" in text


def test_parse_start():
    assert parse_start("2024-06-03T00:00:00+07:00") == MONDAY
    assert parse_start("2024-06-02T17:00:00Z") == MONDAY
    assert parse_start("2024-06-03T00:00:00") == MONDAY  # no offset: local time
    assert parse_start("now", now=1000.0) == 1000.0
    assert parse_start("now-1h", now=10000.0) == 6400.0
    assert parse_start("-2d", now=200000.0) == 200000.0 - 172800
    with pytest.raises(ValueError):
        parse_start("yesterday")


def test_cli_dry_run(tmp_path, capsysbinary):
    truth = tmp_path / "t.jsonl"
    args = _parser().parse_args(["--registry", str(REGISTRY_PATH), "--start", "2024-06-03T07:00:00+07:00",
                                 "--speedup", "3600", "--duration", "1", "--sensors", "8", "--format", "senml",
                                 "--faults", "spike,stuck,drift", "--fault-rate", "24", "--truth", str(truth), "--dry-run",
                                 "--quiet"])
    assert run(args) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert lines
    sensors = set()
    for line in lines:
        topic, payload = line.split(b"\t", 1)
        sensors.add(topic.decode().split("/")[2])
        assert json.loads(payload)[0]["bn"].endswith(":")
    assert len(sensors) == 8 and {s[:2] for s in sensors} == {"aq", "wq", "tc", "fr"}
    assert _truth_lines(truth)


def test_cli_rejects_bad_options(capsys):
    assert run(_parser().parse_args(["--registry", str(REGISTRY_PATH), "--faults", "meteor"])) == 2
    assert "unknown fault kind" in capsys.readouterr().err
    assert run(_parser().parse_args(["--registry", str(REGISTRY_PATH), "--domains", "sea"])) == 2
    assert run(_parser().parse_args(["--registry", str(REGISTRY_PATH), "--start", "soon"])) == 2


# ------------------------------------------------------------------------------------------ MQTT

class Counter:
    """A separate subscriber counting what arrives."""

    def __init__(self, port: int, topic: str = "city/#") -> None:
        self.count = 0
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"counter-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.count += 1
            self.payloads.append(msg.payload)

    def wait_for(self, n: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.count < n:
            time.sleep(0.05)
        time.sleep(0.3)  # and nothing more arrives
        return self.count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.integration
def test_publish_forever_to_mosquitto(registry, mosquitto, tmp_path):
    counter = Counter(mosquitto.port)
    try:
        sim = Simulator(registry, seed=9, start=MONDAY + 8 * 3600, speedup=120.0, faults=FAULT_KINDS,
                        fault_rate=2, truth=tmp_path / "truth.jsonl")
        stats = sim.publish_forever(mosquitto.url, duration=1.0)  # ~2 simulated minutes
        sim.close()
        assert not stats.interrupted
        assert stats.sim_end - stats.sim_start == pytest.approx(120.0)
        assert stats.messages > 80 and stats.acknowledged == stats.messages
        assert counter.wait_for(stats.messages) == stats.messages
        readings = sum(len({ts for ts, *_ in parse_payload(p)}) for p in counter.payloads)
        assert readings == stats.readings
    finally:
        counter.close()


@pytest.mark.integration
def test_publish_span_and_stop(registry, mosquitto):
    counter = Counter(mosquitto.port, "span/#")
    try:
        sim = Simulator(registry, seed=9, start=MONDAY, topic="span/{domain}/{sensor}")
        expected = sum(len(sim.generate(MONDAY + i * 120, MONDAY + (i + 1) * 120)) for i in range(5))
        stats = sim.publish_span(mosquitto.url, MONDAY, MONDAY + 600, chunk=120)
        assert stats.messages == expected == stats.acknowledged
        assert counter.wait_for(expected) == expected
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        t = time.monotonic()
        stats = sim.publish_forever(mosquitto.url, stop=stop)
        assert stats.interrupted and time.monotonic() - t < 5
        assert stats.acknowledged == stats.messages
    finally:
        counter.close()


@pytest.mark.integration
def test_cli_publishes_to_the_env_broker(mosquitto, monkeypatch, tmp_path, capsys):
    """--mqtt-url defaults to the config's mqtt.url, which CITYWATCH_MQTT_URL overrides."""
    monkeypatch.setenv("CITYWATCH_MQTT_URL", mosquitto.url)
    counter = Counter(mosquitto.port, "cli/#")
    try:
        args = _parser().parse_args(["--config", str(REPO / "config" / "citywatch.yaml"), "--topic", "cli/{domain}/{sensor}",
                                     "--start", "now-1h", "--speedup", "120", "--duration", "1",
                                     "--domains", "air", "--truth", str(tmp_path / "t.jsonl")])
        assert run(args) == 0
        err = capsys.readouterr().err
        assert mosquitto.url in err
        m = re.search(r"done: ([\d,]+) messages .* published, ([\d,]+) acknowledged", err)
        assert m, err
        sent = int(m.group(1).replace(",", ""))
        assert sent > 30 and int(m.group(2).replace(",", "")) == sent
        assert counter.wait_for(sent) == sent
    finally:
        counter.close()
