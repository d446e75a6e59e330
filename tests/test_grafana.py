"""The Grafana boards: every query runs against a real InfluxDB fed by the real engine.

No Grafana server: `GrafanaInfluxQL` expands the queries the way Grafana's InfluxDB data source
does for InfluxQL ($timeFilter, $__interval, $__interval_ms, $interval, template variables with
regex rendering of multi-value/All selections, panel relative time), then they run on `/query`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from citywatch import grafana_boards as gb
from citywatch.config import load_settings
from citywatch.pipeline import Engine
from citywatch.registry import Registry
from citywatch.simulator import Simulator

from pipeline_helpers import Device, engine_settings, wait_for

REPO = Path(__file__).resolve().parent.parent
GRAFANA_DIR = REPO / "grafana"
SPAN = 90 * 60  # simulated seconds of history, every sensor
AIR_SPAN = 4 * 3600  # air stations only, before that: hourly VN_AQI / US AQI need >= 2 closed hours of PM
DAY = 86400
LOCAL_OFFSET = 7 * 3600  # Asia/Ho_Chi_Minh: local days start at 17:00 UTC
DAILY_STATIONS = ["aq-001", "aq-002", "aq-003"]  # a whole local day before that: daily VN_AQI
FIRE_STATIONS = ["fr-001", "fr-002"]  # and daily fire danger (judged when their next day's first hour closes)
LAB_SPAN = 27 * DAY  # weekly lab samples of every water station before that: VN_WQI and the lab panels
# (kind, sensor, metric, start and end relative to now in s, magnitude)
FAULTS = [
    ("stuck", "aq-008", "pm25", -SPAN + 1200, 3600, None),  # a flatline: stuck
    ("spike", "aq-012", "pm25", -1800, -1740, 300.0),  # a single reading far off: spike
    # silent for 80 min: offline (no_data: ten times the expected interval, which is the device's
    # upload step when it sends several readings per message: up to 6 min here)
    ("dropout", "aq-020", None, -SPAN + 600, 3600, None),
    ("drift", "tc-012", "intensity", -1200, 3600, -1e6),  # counts clipped to zero: a dead camera
    ("episode", "aq-004", None, -3000, 3600, 150.0),  # PM rises at neighbouring stations: area event
]


def lab_messages(sim: Simulator, t0: float, t1: float) -> list[tuple[str, bytes]]:
    """The simulator's weekly lab samples of every water station in [t0, t1), oldest first."""
    out = []
    for sid, s in sim.sims.items():
        if s.sensor.domain == "water":
            ts, vals = sim.lab_samples(sid, int(t0 * 1000), int(t1 * 1000))
            out += [(int(t), s.topic, json.dumps({"ts": int(t), **{m: float(v[i]) for m, v in vals.items()}}).encode())
                    for i, t in enumerate(ts.tolist())]
    return [(topic, payload) for _, topic, payload in sorted(out)]


@pytest.fixture(scope="module")
def sample():
    settings = load_settings(REPO / "config" / "citywatch.yaml", env={})
    registry = Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml")
    return settings, registry


@pytest.fixture(scope="module")
def boards(sample):
    return gb.build_dashboards(*sample)


# ------------------------------------------------------------------------------ static checks

def test_committed_files_are_the_export(sample, tmp_path):
    """The committed grafana/ tree is exactly what `export` writes (boards are never stale)."""
    files = gb.export_files(*sample)
    for rel, text in files.items():
        committed = GRAFANA_DIR / rel
        assert committed.exists(), f"{rel} is not committed; run `citywatch grafana export grafana`"
        assert committed.read_text(encoding="utf-8") == text, f"{rel} is stale; re-export"
    on_disk = {p.relative_to(GRAFANA_DIR).as_posix() for p in (GRAFANA_DIR / "dashboards").rglob("*.json")}
    assert on_disk == {r for r in files if r.startswith("dashboards/")}
    written = gb.export(tmp_path, str(REPO / "config" / "citywatch.yaml"))
    assert {p.relative_to(tmp_path).as_posix() for p in written} == set(files)


ANNOTATION_EXTRAS = {"query", "textColumn", "tagsColumn", "target"}


@pytest.mark.parametrize("name", ["city-overview", "air-quality", "water-quality", "traffic", "forest",
                                  "sensor-health", "alerts", "citywatch-health"])
def test_board_matches_sdk_schema(boards, name):
    """Decoded by the foundation SDK's generated models and re-encoded, a board is unchanged: no
    unknown keys, wrong types or misplaced fields (InfluxQL targets decode as `InfluxQLQuery`)."""
    (rel, data), = [(k, v) for k, v in boards.items() if k.endswith(f"/{name}.json")]
    model = dm.Dashboard.from_json(data)
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    # InfluxDB annotation fields are not in the SDK's (Grafana-datasource) annotation model
    strip = lambda d: {**d, "annotations": {"list": [{k: v for k, v in a.items() if k not in ANNOTATION_EXTRAS}  # noqa: E731
                                                     for a in d["annotations"].get("list", [])]}}
    assert strip(back) == strip(data)
    influx_targets = [t for p in model.panels or [] for t in getattr(p, "targets", None) or []
                      if isinstance(t, gb.InfluxQLQuery)]
    assert influx_targets, "a board without InfluxQL queries"
    # unique ids, grid inside 24 columns, no overlapping panels
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in data["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    assert " / " in data["title"]  # Vietnamese / English
    for p in data["panels"]:
        assert " / " in p["title"] or p["title"] in ("NO₂", "SO₂", "O₃", "CO", "pH"), p["title"]


def test_air_thresholds_come_from_the_config(sample, boards):
    settings, _ = sample
    air = boards["environment/air-quality.json"]
    by_title = {p["title"]: p for p in air["panels"]}
    for rule in settings.detectors.thresholds:
        panel = by_title[gb.METRIC_TITLES[rule.metric]]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, rule.warn, rule.crit]
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line+area"


def test_geomap_has_every_registry_sensor(sample, boards):
    _, registry = sample
    geo = next(p for p in boards["environment/city-overview.json"]["panels"] if p["type"] == "geomap")
    frame = next(t for t in geo["targets"] if t.get("queryType") == "snapshot")["snapshot"][0]
    names = [f["name"] for f in frame["schema"]["fields"]]
    cols = dict(zip(names, frame["data"]["values"]))
    assert sorted(cols["sensor"]) == sorted(registry.sensors)
    assert all(len(v) == len(registry.sensors) for v in cols.values())
    i = cols["sensor"].index("aq-001")
    assert (cols["latitude"][i], cols["longitude"][i]) == (registry.sensors["aq-001"].lat, registry.sensors["aq-001"].lon)


def test_aqi_panels_use_the_official_categories(sample, boards):
    """Category bounds and colours of the AQI panels come from the index scales (Decision 1459/QĐ-TCMT, US EPA)."""
    from citywatch.detectors.indices import us_aqi, vn_aqi

    _, registry = sample
    hexes = lambda cats: ["#%02x%02x%02x" % c.rgb for c in cats]  # noqa: E731
    air = {p["title"]: p for p in boards["environment/air-quality.json"]["panels"]}
    for title, cats in (("VN_AQI theo giờ / Hourly VN_AQI", vn_aqi.CATEGORIES), ("US AQI theo giờ / Hourly US AQI", us_aqi.CATEGORIES)):
        steps = air[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None] + [c.low for c in cats[1:]]
        assert [s["color"] for s in steps] == hexes(cats)
        assert air[title]["interval"] == "1h"
    overview = {p["title"]: p for p in boards["environment/city-overview.json"]["panels"]}
    aqi_map = overview["VN_AQI hiện tại / Current VN_AQI"]
    frame = next(t for t in aqi_map["targets"] if t.get("queryType") == "snapshot")["snapshot"][0]
    sensors = frame["data"]["values"][[f["name"] for f in frame["schema"]["fields"]].index("sensor")]
    assert sensors == [s.id for s in gb.index_stations(registry)] and len(sensors) == 40
    mapping = next(p["value"] for o in aqi_map["fieldConfig"]["overrides"] if o["matcher"]["options"] == "category"
                   for p in o["properties"] if p["id"] == "mappings")[0]["options"]
    assert [mapping[str(c.number)]["color"] for c in vn_aqi.CATEGORIES] == hexes(vn_aqi.CATEGORIES)
    gauge = overview["Số trạm theo mức VN_AQI / Stations per VN_AQI category"]
    colours = {o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"] for o in gauge["fieldConfig"]["overrides"]}
    assert colours == {f"{c.label_vi} / {c.label_en}": h for c, h in zip(vn_aqi.CATEGORIES, hexes(vn_aqi.CATEGORIES))}


def test_cli_arguments(tmp_path, monkeypatch, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    gb.add_arguments(parser)
    args = parser.parse_args(["--config", str(REPO / "config" / "citywatch.yaml"), "export", str(tmp_path)])
    assert gb.run(args) == 0
    assert (tmp_path / "dashboards" / "environment" / "air-quality.json").exists()
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert gb.run(parser.parse_args(["push", "--url", "http://127.0.0.1:9"])) == 2


# ------------------------------------------------------------------------------ Grafana's expansion

def round_interval(ms: float) -> int:
    """Grafana's rangeutil.roundInterval (ms)."""
    table = [(10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
             (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
             (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
             (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
             (16200000, 10800000), (24300000, 21600000), (64800000, 43200000), (604800000, 86400000),
             (1814400000, 604800000), (3628800000, 2592000000)]
    for limit, value in table:
        if ms <= limit:
            return value
    return 31536000000


def interval_string(ms: int) -> str:
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_relative(s: str) -> int:
    n, unit = int(s[:-1]), s[-1]
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * 1000


def regex_escape(value: str) -> str:
    """Grafana's influxSpecialRegexEscape / regex escaping of variable values for =~ /.../."""
    return re.sub(r"([\\/^$*+?.()|\[\]{}])", r"\\\1", value)


class GrafanaInfluxQL:
    """Expands raw InfluxQL as Grafana's InfluxDB data source does."""

    def __init__(self, to_ms: int, range_ms: int, variables: dict[str, list[str]], min_interval_ms: int = 10000,
                 max_data_points: int = 1000) -> None:
        self.to_ms, self.range_ms, self.vars = to_ms, range_ms, variables
        self.min_interval_ms, self.max_data_points = min_interval_ms, max_data_points

    def expand(self, query: str, time_from: str | None = None, min_interval: str | None = None) -> str:
        """`time_from`: the panel's relative time; `min_interval`: the panel's min interval, which
        replaces the data source's as the lower limit of $__interval."""
        range_ms = parse_relative(time_from) if time_from else self.range_ms
        from_ms = self.to_ms - range_ms
        low = parse_relative(min_interval) if min_interval else self.min_interval_ms
        interval_ms = max(round_interval(range_ms / self.max_data_points), low)
        text = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {self.to_ms}ms")
        text = text.replace("$__interval_ms", str(interval_ms)).replace("$__interval", interval_string(interval_ms))
        text = re.sub(r"\$interval\b", interval_string(interval_ms), text)

        def var(m: re.Match) -> str:
            values = self.vars[m.group(1)]
            escaped = [regex_escape(v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

        text = re.sub(r"\$(area|sensor)\b", var, text)
        assert not re.search(r"\$(?!tag_|col\b)\w", text), f"unexpanded macro in {text}"
        return text


def influx_query(influxdb, db: str, q: str) -> list[dict]:
    result = influxdb.query(q, db=db, epoch="ms")["results"][0]
    assert "error" not in result, f"{q}\n-> {result['error']}"
    return result.get("series", [])


def assert_data(series: list[dict], q: str, columns: set[str] | None = None) -> None:
    assert series, f"no data for {q}"
    for s in series:
        assert s["columns"][0] == "time", q
        if columns:
            assert columns <= set(s["columns"]), (q, s["columns"])
    values = [v for s in series for row in s["values"] for v in row[1:]]
    assert any(v is not None for v in values), f"only nulls for {q}"


def select_aliases(q: str) -> set[str]:
    """The output columns a SELECT names with AS (outer query only)."""
    head = q.split(" FROM ", 1)[0]
    return set(re.findall(r' AS "([^"]+)"', head))


@pytest.mark.integration
def ttn_uplink(at: float) -> tuple[str, bytes]:
    """A LoRaWAN water sonde's uplink through The Things Stack (radio and battery for the health board)."""
    doc = json.loads((Path(__file__).parent / "data" / "devices" / "ttn" / "uplink.json").read_text())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    doc["payload"]["received_at"] = doc["payload"]["uplink_message"]["received_at"] = stamp
    return doc["topic"], json.dumps(doc["payload"]).encode()


def test_every_query_returns_data(mosquitto, influxdb, db_name, tmp_path, sample, boards):
    settings, registry = sample
    now = time.time()
    rules = [r.model_dump(by_alias=True) for r in settings.detectors.thresholds]
    # the road-class floor of expected traffic all day: the dead camera below is judged whatever the
    # local hour the test runs at (at night a main road's zeros need a warm baseline)
    cfg = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path, "grafana-engine",
                          detectors={"thresholds": rules, "traffic_zero": {"daytime_hours": [0, 24]}},
                          sources={"profiles": ["ttn"]})
    engine = Engine(cfg, registry=registry)
    sim = Simulator(registry, seed=11, start=now - SPAN)
    # an NO2 rise at aq-005 past the QCVN warning and critical levels: state changes for the alert panels
    sim.inject("drift", "aq-005", "no2", start=now - SPAN + 60, end=now + 3600, magnitude=600)
    # one fault of every kind the sensor health, traffic and overview panels show
    for kind, sensor, metric, start, end, magnitude in FAULTS:
        sim.inject(kind, sensor, metric, start=now + start, end=now + end, magnitude=magnitude)
    # in time order: a whole local day at a few stations (daily VN_AQI and fire danger, closed by the
    # first readings after local midnight and the forest stations' next readings), the air stations for
    # a few hours (hourly indices), then every sensor (more than an hour: every camera has a closed
    # hour of intensity and speed, the hourly level of service)
    midnight = (now - AIR_SPAN - 3600 + LOCAL_OFFSET) // DAY * DAY - LOCAL_OFFSET
    day_sim = Simulator(registry, seed=11, start=midnight - DAY, sensors=DAILY_STATIONS + FIRE_STATIONS)
    air_sim = Simulator(registry, seed=11, start=now - AIR_SPAN, domains=["air"])
    messages = (lab_messages(sim, now - LAB_SPAN, now - SPAN)
                + day_sim.generate(midnight - DAY, midnight + 600) + air_sim.generate(now - AIR_SPAN, now - SPAN)
                + sim.generate(now - SPAN, now - 1))
    bad = [("city/air/aq-001/telemetry", b"{not json"), ("city/air/zz-999/telemetry", b'{"pm25": 1}'),
           ("city/air/aq-002/telemetry", b'{"pm25": "high"}'), ttn_uplink(now - 60)]
    engine.start()
    device = Device(mosquitto.port, client_id="grafana-sim")
    try:
        # messages published before the engine's subscription is in place are lost: probe until one
        # arrives (a probe repeats the first reading: idempotent), then count from there
        for _ in range(100):
            device.publish_all(messages[:1])
            time.sleep(0.05)
            if engine.stats.get("messages_received"):
                break
        time.sleep(0.2)
        total = engine.stats.get("messages_received") + len(messages) + len(bad)
        device.publish_all(messages + bad, timeout=60)
        wait_for(lambda: engine.stats.get("messages_acked") >= total, 40, f"{total} messages stored")
        # two engine health points in different 10 s buckets (the data source's min interval)
        def health() -> int:
            series = influxdb.query('SELECT count("readings_accepted") FROM "citywatch"', db=db_name)["results"][0]
            return int(series["series"][0]["values"][0][1]) if "series" in series else 0

        for i in range(2):
            if i:
                time.sleep(10.2 - time.time() % 10)  # the next 10 s bucket
            before = health()
            engine._last_health = 0.0  # the next pipeline tick writes the health point
            wait_for(lambda: health() > before, 10, "health point")
        # the device check (every 5 s) after the last reading: the silent sensor is offline by event time
        def offline() -> bool:
            q = (f'SELECT count("value") FROM "alerts" WHERE "detector" = \'no_data\' AND "level" = \'critical\' '
                 f'AND "sensor" = \'{next(f[1] for f in FAULTS if f[0] == "dropout")}\'')
            return "series" in influxdb.query(q, db=db_name)["results"][0]

        engine._last_device_check = 0.0
        wait_for(offline, 10, "offline alert")
    finally:
        device.close()
        engine.stop()
    assert engine.stats.get("alerts") > 0

    to_ms = int(time.time() * 1000)
    exp = GrafanaInfluxQL(to_ms, 3 * 3600 * 1000, {})
    # counters the engine creates on first use: no spool activity in this run, so no such field yet
    health_fields = {row[0] for s in influx_query(influxdb, db_name, 'SHOW FIELD KEYS FROM "citywatch"')
                     for row in s["values"]}
    absent = {f for f in ("spooled_points", "replayed_points") if f not in health_fields}
    checked = 0
    answers: dict[tuple[str, str], list[dict]] = {}  # (panel title, refId) -> series
    for rel, board in boards.items():
        # template variables first, as Grafana resolves them (All = every value, as a regex group)
        variables: dict[str, list[str]] = {}
        for v in board.get("templating", {}).get("list", []):
            exp.vars = variables
            series = influx_query(influxdb, db_name, exp.expand(v["query"]))
            assert series and series[0]["columns"] == ["key", "value"], (rel, v["name"])
            variables[v["name"]] = [row[1] for row in series[0]["values"]]
            assert variables[v["name"]], (rel, v["name"])
        exp.vars = variables
        for a in board["annotations"].get("list", []):
            q = exp.expand(a["query"])
            series = influx_query(influxdb, db_name, q)
            assert_data(series, q, {a["textColumn"], *a["tagsColumn"].split(",")})
            checked += 1
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                if t["datasource"]["type"] != "influxdb":
                    continue
                q = exp.expand(t["query"], panel.get("timeFrom"), panel.get("interval"))
                series = influx_query(influxdb, db_name, q)
                answers[(panel["title"], t["refId"])] = series
                if any(f'"{f}"' in q for f in absent):
                    assert not series  # runs without error; the field is not written yet
                    continue
                assert_data(series, q, select_aliases(t["query"]) if t["resultFormat"] == "table" else None)
                if "GROUP BY time(" in q and t["resultFormat"] == "time_series":
                    assert all(len(s["values"]) >= 1 for s in series)
                checked += 1
        # one area selected (single value): the board's first panel still answers
        if variables.get("area"):
            exp.vars = {"area": [variables["area"][0]], "sensor": variables["sensor"]}
            panel = next(p for p in board["panels"] if p.get("targets"))
            q = exp.expand(panel["targets"][0]["query"], panel.get("timeFrom"))
            influx_query(influxdb, db_name, q)
    assert checked >= 40
    # the active alerts table found the NO2 alert at aq-005
    rows = influx_query(influxdb, db_name, GrafanaInfluxQL(to_ms, 7 * 86400000, {}).expand(gb.active_alerts_query()))
    found = {(r[1], r[4]) for s in rows for r in s["values"]}
    assert ("aq-005", "no2") in found
    check_detector_panels(answers, registry, to_ms)
    check_index_panels(answers, registry, midnight)
    check_fire_and_traffic_panels(answers, registry, midnight)
    check_water_panels(answers, registry, settings)
    check_forecast_overlays(answers, registry)


def table_rows(series: list[dict]) -> list[dict]:
    return [{**s.get("tags", {}), **dict(zip(s["columns"], v))} for s in series for v in s["values"]]


def check_index_panels(answers: dict[tuple[str, str], list[dict]], registry: Registry, midnight: float) -> None:
    """The AQI panels' answers have the shape the panels expect, with values on the official scales."""
    from citywatch.detectors.indices import us_aqi, vn_aqi

    stations = {s.id for s in gb.index_stations(registry)}
    scales = {"VN_AQI": vn_aqi.CATEGORIES, "US AQI": us_aqi.CATEGORIES}
    # hourly panels: one series per station, integer AQI values
    for title, short in (("VN_AQI theo giờ / Hourly VN_AQI", "VN_AQI"), ("US AQI theo giờ / Hourly US AQI", "US AQI")):
        series = answers[(title, "A")]
        assert len(series) >= 4 and {s["tags"]["sensor"] for s in series} <= stations, title
        values = [v[1] for s in series for v in s["values"] if v[1] is not None]
        assert values and all(0 <= v <= 500 and v == int(v) for v in values), (title, values[:10])
        assert all(s["columns"] == ["time", short] for s in series)

    def check_row(row: dict, value: str, category: str, label_en: str, scale, label_vi: str | None = None) -> None:
        c = scale[row[category] - 1]
        assert c.low <= row[value] <= c.high and row[label_en] == c.label_en, row
        if label_vi:
            assert row[label_vi] == c.label_vi, row

    # current AQI by station: VN (with area) and US, joined by station in Grafana
    vn = table_rows(answers[("AQI hiện tại theo trạm / Current AQI by station", "A")])
    us = {r["sensor"]: r for r in table_rows(answers[("AQI hiện tại theo trạm / Current AQI by station", "B")])}
    assert len(vn) >= 4 and len({r["sensor"] for r in vn}) == len(vn) and set(us) >= {r["sensor"] for r in vn}
    for r in vn:
        assert r["area"] == registry.sensors[r["sensor"]].area and r["dominant"] in gb.POLLUTANT_NAMES
        check_row(r, "vn_aqi", "vn_category", "label_en", scales["VN_AQI"], "label_vi")
        check_row(us[r["sensor"]], "us_aqi", "us_category", "us_label_en", scales["US AQI"], "us_label_vi")
    # daily VN_AQI: the whole local day that ended at `midnight`, for the stations that sent it
    daily = table_rows(answers[("VN_AQI ngày / Daily VN_AQI", "A")])
    assert {r["sensor"] for r in daily} == set(DAILY_STATIONS), daily
    assert {r["time"] for r in daily} == {int(midnight - DAY) * 1000}
    for r in daily:
        check_row(r, "vn_aqi", "vn_category", "label_en", scales["VN_AQI"], "label_vi")
    # overview: the map's latest category per station, and the stations per category add up
    latest = table_rows(answers[("VN_AQI hiện tại / Current VN_AQI", "A")])
    assert len(latest) >= 4 and {r["sensor"] for r in latest} <= stations
    for r in latest:
        check_row(r, "vn_aqi", "category", "label_en", scales["VN_AQI"], "label_vi")
    counts, = table_rows(answers[("Số trạm theo mức VN_AQI / Stations per VN_AQI category", "A")])
    expected = {gb.category_label(c): sum(r["category"] == c.number for r in latest) for c in vn_aqi.CATEGORIES}
    assert {k: counts[k] for k in expected} == expected


def check_detector_panels(answers: dict[tuple[str, str], list[dict]], registry: Registry, to_ms: int) -> None:
    """Sensor health, seasonal baseline and overview panels: each injected fault where its panel shows it."""
    faults = {kind: (sensor, metric, start) for kind, sensor, metric, start, _, _ in FAULTS}
    cameras = {s.id for s in registry.by_domain("traffic")}
    # counts against the seasonal baseline: per camera, the band holds the expectation and most counts
    title = "Lưu lượng so với kỳ vọng / Vehicle counts against the seasonal baseline"
    counts = {s["tags"]["sensor"]: dict(s["values"]) for s in answers[(title, "A")]}
    band = answers[(title, "B")]
    assert set(counts) == cameras and {s["tags"]["sensor"] for s in band} == cameras
    inside = total = 0
    for s in band:
        assert s["columns"] == ["time", "expected", "lower", "upper"]
        for t, expected, lower, upper in s["values"]:
            if expected is None:
                continue
            assert 0 <= lower <= expected <= upper, s["tags"]
            x = counts[s["tags"]["sensor"]].get(t)
            if x is not None and s["tags"]["sensor"] != faults["drift"][0]:
                total += 1
                inside += lower <= x <= upper
    assert total > 500 and inside / total > 0.9, (inside, total)
    # the dead camera: critical in the timeline, its zeros in the table with the count expected
    dead = faults["drift"][0]
    timeline = {s["tags"]["sensor"]: [v[1] for v in s["values"]] for s in answers[("Camera chết / Dead cameras", "A")]}
    assert max(timeline[dead]) == 2 and set(timeline) <= cameras, timeline[dead]
    zeros = table_rows(answers[("Số 0 bất thường / Unlikely zero counts", "A")])
    mine = [r for r in zeros if r["sensor"] == dead]
    assert {r["reason"] for r in mine} <= {"zero_unlikely", "dead_camera"} and "dead_camera" in {r["reason"] for r in mine}
    assert all(r["value"] == 0 and r["threshold"] > 0 for r in zeros)
    # last seen: every sensor, the silent one since its dropout began; its no_data state is offline
    seen = {r["sensor"]: r["time"] for r in table_rows(answers[("Lần cuối nhận dữ liệu / Last seen per sensor", "A")])}
    assert set(seen) == set(registry.sensors)
    silent, _, start = faults["dropout"]
    assert to_ms + start * 1000 - 120_000 <= seen[silent] < to_ms + start * 1000
    assert sorted(seen.values())[len(seen) // 2] > to_ms - 15 * 60_000  # the others are recent
    state = {r["sensor"]: r["no_data"] for r in table_rows(answers[("Lần cuối nhận dữ liệu / Last seen per sensor", "B")])}
    assert state[silent] == 2, state
    dropouts = {s["tags"]["sensor"]: s["values"] for s in answers[("Mất tín hiệu / Dropouts (no data)", "A")]}
    assert dropouts[silent][-1][1] == 2, dropouts[silent][-5:]
    # stuck, spike: the injected sensor and metric flagged
    def flagged(title: str, *tags: str) -> set[tuple[str, ...]]:
        return {tuple(s["tags"][t] for t in tags) for s in answers[(title, "A")] if max(v[1] for v in s["values"]) > 0}

    sensor, metric, _ = faults["stuck"]
    assert (sensor, metric) in flagged("Kẹt giá trị / Stuck and flatline", "sensor", "metric")
    sensor, metric, _ = faults["spike"]
    assert (sensor, metric, "spike") in flagged("Đột biến và trôi / Spikes and drift", "sensor", "metric", "detector")
    # spatial: the episode's stations are area events, the NO2 drift at aq-005 a suspect sensor
    spatial = answers[("Cảm biến nghi lỗi và sự kiện khu vực / Suspect sensors and area events", "A")]
    reasons = {(s["tags"]["sensor"], s["tags"]["reason"]) for s in spatial if max(v[1] for v in s["values"]) > 0}
    assert (faults["episode"][0], "area_event") in reasons and ("aq-005", "sensor_suspect") in reasons
    # why flagged: one row per reading and detector, newest first, with what it was compared with
    why = table_rows(answers[("Vì sao bị đánh dấu / Why a reading was flagged", "A")])
    assert set(gb.WHY_COLUMNS) - {"Time"} <= set(why[0]) and [r["time"] for r in why] == sorted(
        (r["time"] for r in why), reverse=True)
    seen_kinds = {(r["sensor"], r["detector"]) for r in why}
    assert {(faults["stuck"][0], "stuck"), (faults["spike"][0], "spike"), (dead, "traffic_zero")} <= seen_kinds
    assert all(r["level"] in (1, 2) and 0 <= r["score"] <= 1 for r in why)
    # overview: active area events are the episode's, and the offline count is the silent sensor
    events = table_rows(answers[("Sự kiện khu vực / Area events", "A")])
    assert events and all(r["level_code"] > 0 for r in events)
    assert {r["sensor"] for r in events} <= {s for s, reason in reasons if reason == "area_event"}
    down, = table_rows(answers[(f"Thiết bị mất tín hiệu / Sensors offline of {len(registry.sensors)}", "A")])
    assert down["offline"] == sum(v == 2 for v in state.values()) >= 1
    assert down["late"] == sum(v == 1 for v in state.values())


def check_forecast_overlays(answers: dict[tuple[str, str], list[dict]], registry: Registry) -> None:
    """The engine's forecasts drawn over the hourly AQI and traffic flow panels (query B)."""
    stations = {s.id for s in gb.index_stations(registry)}
    cameras = {s.id for s in registry.by_domain("traffic")}
    for title, sensors, top in (("VN_AQI theo giờ / Hourly VN_AQI", stations, 500),
                                ("US AQI theo giờ / Hourly US AQI", stations, 500),
                                ("Lưu lượng / Flow (veh/h)", cameras, 100000)):
        series = answers[(title, "B")]
        assert series and {s["tags"]["sensor"] for s in series} <= sensors, title
        assert series[0]["columns"] == ["time", "forecast", "lower", "upper"], title
        values = [row[1] for s in series for row in s["values"] if row[1] is not None]
        assert values and all(0 <= v <= top for v in values), title
        # the interval, once there is one, holds the forecast
        for s in series:
            for _, value, lower, upper in s["values"]:
                if lower is not None and upper is not None:
                    assert lower <= value <= upper, title


def check_fire_and_traffic_panels(answers: dict[tuple[str, str], list[dict]], registry: Registry,
                                  midnight: float) -> None:
    """Fire danger (levels I..V on the configured bounds) and level of service (A..F) answers."""
    from citywatch.detectors.indices import fire_danger

    day = int(midnight - DAY) * 1000
    # daily fire danger table: the forest stations that sent a whole local day, at its local midnight
    # (when the test runs just after local midnight, its last hour of every sensor crosses a local
    # midnight too, and every forest station then also has a level for the day that just ended)
    daily = table_rows(answers[("Nguy cơ cháy theo trạm / Fire danger by station", "A")])
    assert {r["sensor"] for r in daily if r["time"] == day} == set(FIRE_STATIONS), daily
    assert all(r["time"] >= day and (r["time"] - day) % (DAY * 1000) == 0 for r in daily), daily
    assert all(r["time"] > day for r in daily if r["sensor"] not in FIRE_STATIONS), daily
    for r in daily:
        assert r["area"] == registry.sensors[r["sensor"]].area
        assert r["level"] == int(fire_danger.fire_danger_level(r["p"])) and 1 <= r["level"] <= 5, r
        lv = fire_danger.LEVELS[r["level"] - 1]
        assert r["label_en"] == f"Level {lv.roman}: {lv.label_en}", r
    # timeline and P: one series per station, points at local midnight (17:00 UTC)
    for title, col in (("Cấp nguy cơ cháy theo ngày / Daily fire danger level", "level"),
                       ("Chỉ số Nesterov P / Nesterov index P", "P")):
        series = answers[(title, "A")]
        assert {s["tags"]["sensor"] for s in series if day in {v[0] for v in s["values"]}} == set(FIRE_STATIONS), title
        assert all(s["columns"] == ["time", col] for s in series)
        assert all((v[0] // 1000 + LOCAL_OFFSET) % DAY == 0 for s in series for v in s["values"]), title
    # overview: highest level and stations per level agree with the table's latest day
    latest = {r["sensor"]: r["level"] for r in sorted(daily, key=lambda r: r["time"])}
    highest, = table_rows(answers[("Cấp cháy rừng cao nhất / Highest fire danger level", "A")])
    assert highest["level"] == max(latest.values())
    counts, = table_rows(answers[("Số trạm theo cấp cháy rừng / Forest stations per fire danger level", "A")])
    assert {gb.fire_label(lv): counts[gb.fire_label(lv)] for lv in fire_danger.LEVELS} == {
        gb.fire_label(lv): sum(v == lv.number for v in latest.values()) for lv in fire_danger.LEVELS}
    # level of service: every camera has a closed hour; letters and ratios agree
    cameras = {s.id for s in registry.by_domain("traffic")}
    current = table_rows(answers[("Mức phục vụ hiện tại / Current level of service", "A")])
    assert {r["sensor"] for r in current} == cameras and len(current) == len(cameras)
    bounds = gb.traffic.LOS_TABLES["urban_speed_pct"].bounds
    for r in current:
        assert r["los"] == 1 + sum(r["ratio"] <= b for b in bounds), r
        assert r["tti"] == pytest.approx(100.0 / r["ratio"]) and r["pcu"] > 0 and r["flow"] > 0, r
    for title, col in (("Mức phục vụ theo giờ / Hourly level of service", "LOS"),
                       ("Tỷ lệ tốc độ / Speed ratio (% of free flow)", "speed_ratio"),
                       ("Chỉ số thời gian đi lại / Travel-time index", "tti"), ("Lưu lượng / Flow (veh/h)", "veh/h"),
                       ("Lưu lượng quy đổi / Flow (PCU/h)", "PCU/h")):
        series = answers[(title, "A")]
        assert {s["tags"]["sensor"] for s in series} == cameras, title
        assert all(s["columns"] == ["time", col] and s["values"] for s in series), title
        assert all(v[0] % 3600000 == 0 for s in series for v in s["values"]), title
    congested, = table_rows(answers[(f"Camera ùn tắc (mức E/F) / Cameras at LOS E/F of {len(cameras)}", "A")])
    assert congested["cameras"] == len(cameras)
    assert congested["congested"] == sum(r["los"] >= 5 for r in current)


def check_water_panels(answers: dict[tuple[str, str], list[dict]], registry: Registry, settings) -> None:
    """VN_WQI on the decision's classes, lab results per station, QCVN 08:2023 exceedances of the class."""
    from citywatch.detectors.indices import vn_wqi
    from citywatch.water_index import QCVN08_CLASS_LIMITS, QCVN08_HEALTH_LIMITS

    stations = {s.id for s in gb.wqi_stations(registry)}
    current = table_rows(answers[("VN_WQI hiện tại theo trạm / Current VN_WQI by station", "A")])
    # every station has lab samples of the last 4 weeks and an hour of probes: all have an index
    assert {r["sensor"] for r in current} == stations and len(current) == len(stations)
    for r in current:
        c = vn_wqi.CATEGORIES[r["category"] - 1]
        assert r["category"] == int(vn_wqi.vn_wqi_category(r["wqi"])) and r["label_vi"] == c.label_vi, r
        assert r["area"] == registry.sensors[r["sensor"]].area and r["dominant"] in vn_wqi.PARAMETERS, r
    hourly = answers[("VN_WQI theo giờ / Hourly VN_WQI", "A")]
    assert {s["tags"]["sensor"] for s in hourly} == stations
    values = [v[1] for s in hourly for v in s["values"] if v[1] is not None]
    assert values and all(0 <= v <= 100 and v == int(v) for v in values)
    latest = table_rows(answers[("VN_WQI hiện tại / Current VN_WQI", "A")])
    assert {r["sensor"]: r["category"] for r in latest} == {r["sensor"]: r["category"] for r in current}
    counts, = table_rows(answers[("Số trạm theo mức VN_WQI / Water stations per VN_WQI class", "A")])
    assert {gb.category_label(c): counts[gb.category_label(c)] for c in vn_wqi.CATEGORIES} == {
        gb.category_label(c): sum(r["category"] == c.number for r in latest) for c in vn_wqi.CATEGORIES}
    # lab results: one series per station, one point per sampling day (weekly samples: 3-4 in 27 days)
    bod = answers[("BOD₅ – mẫu phòng thí nghiệm / lab samples", "A")]
    assert {s["tags"]["sensor"] for s in bod} == stations
    assert all(3 <= len([v for v in s["values"] if v[1] is not None]) <= 4 for s in bod)
    # exceedances this year: judged parameters of the configured class (or Bảng 1), counts > 0
    ex = table_rows(answers[("Vượt QCVN 08:2023 trong năm / QCVN 08:2023 exceedances this year", "A")])
    judged = set(QCVN08_CLASS_LIMITS) | set(QCVN08_HEALTH_LIMITS)
    assert ex and all(r["pollutant"] in judged and r["class"] == settings.indices.water_class and r["exceedances"] > 0
                      for r in ex)
    assert {r["sensor"] for r in ex} <= stations


def test_water_thresholds_are_the_qcvn08_limits_of_the_class(sample, boards):
    from citywatch.water_index import qcvn08_bounds

    settings, _ = sample
    water = {p["title"]: p for p in boards["environment/water-quality.json"]["panels"]}
    steps = lambda title: [(s["value"], s["color"]) for s in water[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]]  # noqa: E731
    low, high = qcvn08_bounds("pH", settings.indices.water_class)
    assert steps("pH so với QCVN 08 / pH against QCVN 08") == [(None, "red"), (low, "green"), (high, "red")]
    do_min, _ = qcvn08_bounds("dissolvedOxygen", settings.indices.water_class)
    assert steps("Oxy hòa tan so với QCVN 08 / Dissolved oxygen against QCVN 08") == [(None, "red"), (do_min, "green")]
    assert steps("BOD₅ – mẫu phòng thí nghiệm / lab samples")[1] == (
        qcvn08_bounds("BOD5", settings.indices.water_class)[1], "red")
    strict = settings.model_copy(deep=True)
    strict.indices.water_class = "A"
    panels = {p["title"]: p for p in gb.build_dashboards(strict, sample[1])["environment/water-quality.json"]["panels"]}
    assert panels["BOD₅ – mẫu phòng thí nghiệm / lab samples"]["fieldConfig"]["defaults"]["thresholds"]["steps"][1][
        "value"] == 4.0


def test_register_section_adds_panels(sample, monkeypatch):
    """Index panels (AQI, WQI, fire danger) plug in as sections without touching the boards."""
    monkeypatch.setattr(gb, "_EXTRA_SECTIONS", {})
    gb.register_section("cw-air", lambda s, r: gb.Section("Chỉ số / Indices", [gb.timeseries_panel(
        "VN_AQI / VN_AQI", [gb.InfluxQL('SELECT mean("vn_aqi") FROM "indices" WHERE $timeFilter GROUP BY time($__interval)')])]))
    air = gb.build_dashboards(*sample)["environment/air-quality.json"]
    assert [p["title"] for p in air["panels"]][-2:] == ["Chỉ số / Indices", "VN_AQI / VN_AQI"]
    assert len({p["id"] for p in air["panels"]}) == len(air["panels"])


def test_push_uploads_every_board(sample, tmp_path):
    """`push` through grafana-client against a stand-in for Grafana's HTTP API (folders, dashboards)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str, str, dict]] = []

    class Api(BaseHTTPRequestHandler):
        def _reply(self, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            seen.append(("GET", self.path, self.headers.get("Authorization", ""), {}))
            self._reply([{"uid": "existing-ops", "title": "operations"}] if self.path.startswith("/api/folders") else {})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("POST", self.path, self.headers.get("Authorization", ""), body))
            if self.path == "/api/folders":
                self._reply({"uid": body.get("uid") or "new", "title": body["title"]})
            else:
                self._reply({"status": "success", "url": f"/d/{body['dashboard']['uid']}/x"})

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        urls = gb.push(url, "secret-token", str(REPO / "config" / "citywatch.yaml"))
    finally:
        server.shutdown()
    boards = gb.build_dashboards(*sample)
    assert sorted(urls) == sorted(f"{url}/d/{b['uid']}/x" for b in boards.values())
    assert all(auth == "Bearer secret-token" for _, _, auth, _ in seen)
    folders = [b for m, p, _, b in seen if m == "POST" and p == "/api/folders"]
    assert [f["title"] for f in folders] == ["environment"]  # "operations" existed already
    uploads = {b["dashboard"]["uid"]: b for m, p, _, b in seen if p == "/api/dashboards/db"}
    assert set(uploads) == {b["uid"] for b in boards.values()}
    assert uploads["cw-alerts"]["folderUid"] == "existing-ops" and uploads["cw-alerts"]["overwrite"] is True
    assert uploads["cw-air"]["folderUid"] == folders[0]["uid"]
