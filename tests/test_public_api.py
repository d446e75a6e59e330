"""The public open-data API against a real InfluxDB filled by the real engine from simulated devices.

`city` runs the simulator and the engine once per module (air stations for a few hours with an NO2
episode at aq-005, water stations with weekly lab samples), then `server` serves the API on a free
port with uvicorn. Every answer is checked against InfluxDB or the registry directly; schemathesis
checks every endpoint against the OpenAPI spec.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings as hyp_settings

from citywatch.config import InfluxConfig, load_settings
from citywatch.detectors.indices import vn_aqi
from citywatch.pipeline import Engine
from citywatch.public.app import create_app
from citywatch.public.settings import PublicSettings
from citywatch.registry import Registry
from citywatch.simulator import Simulator

from pipeline_helpers import Device, engine_settings, rows, wait_for

REPO = Path(__file__).resolve().parent.parent
AIR_SPAN = 5 * 3600  # hourly VN_AQI needs closed hours of PM (NowCast: 2 of the last 3): at least 3 on the
# station chart whatever the minute of the hour (with 4 hours, a run at minute 1 had 2)
WATER_SPAN = 2 * 3600
LAB_SPAN = 27 * 86400  # weekly lab samples before that: VN_WQI
EPISODE_STATION = "aq-005"


@dataclass
class City:
    registry: Registry
    influx: InfluxConfig
    db: str
    influxdb: object


@dataclass
class Server:
    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def lab_messages(sim: Simulator, t0: float, t1: float) -> list[tuple[str, bytes]]:
    out = []
    for s in sim.sims.values():
        if s.sensor.domain == "water":
            ts, vals = sim.lab_samples(s.sensor.id, int(t0 * 1000), int(t1 * 1000))
            out += [(int(t), s.topic, json.dumps({"ts": int(t), **{m: float(v[i]) for m, v in vals.items()}}).encode())
                    for i, t in enumerate(ts.tolist())]
    return [(topic, payload) for _, topic, payload in sorted(out)]


def load_city(mosquitto, influxdb, db: str, data_dir: Path) -> City:
    """Simulated air and water stations through the real engine into InfluxDB `db`."""
    settings = load_settings(REPO / "config" / "citywatch.yaml", env={})
    registry = Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml")
    now = time.time()
    rules = [r.model_dump(by_alias=True) for r in settings.detectors.thresholds]
    cfg = engine_settings(mosquitto.url, influxdb.url, db, data_dir, f"public-{db}", detectors={"thresholds": rules})
    air = Simulator(registry, seed=5, start=now - AIR_SPAN, domains=["air"])
    # an NO2 episode: the station's VN_AQI rises to Poor or worse (a public advisory)
    air.inject("drift", EPISODE_STATION, "no2", start=now - 9000, end=now + 3600, magnitude=900)
    water = Simulator(registry, seed=5, start=now - WATER_SPAN, domains=["water"])
    messages = (lab_messages(water, now - LAB_SPAN, now - WATER_SPAN)
                + sorted(air.generate(now - AIR_SPAN, now - 1) + water.generate(now - WATER_SPAN, now - 1),
                         key=lambda m: json.loads(m[1]).get("ts", 0) if m[1].startswith(b"{") else 0))
    engine = Engine(cfg, registry=Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml"))
    engine.start()
    device = Device(mosquitto.port, client_id=f"public-sim-{db}")
    try:
        for _ in range(100):  # until the engine's subscription is in place
            device.publish_all(messages[:1])
            time.sleep(0.05)
            if engine.stats.get("messages_received"):
                break
        total = engine.stats.get("messages_received") + len(messages)
        device.publish_all(messages, timeout=60)
        wait_for(lambda: engine.stats.get("messages_acked") >= total, 60, f"{total} messages stored")
    finally:
        device.close()
        engine.stop()
    return City(registry, cfg.influxdb, db, influxdb)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app) -> Server:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "uvicorn start")
    return Server(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture(scope="module")
def city(mosquitto, influxdb, tmp_path_factory) -> City:
    return load_city(mosquitto, influxdb, "public_city", tmp_path_factory.mktemp("public-engine"))


@pytest.fixture(scope="module")
def server(city):
    srv = serve(create_app(city.influx, city.registry, PublicSettings(rate_per_second=0)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def latest_indices(city: City, index: str) -> dict[str, dict]:
    got = rows(city.influxdb, city.db, f'SELECT "value", "category", "label_en" FROM "indices" WHERE "index" = \'{index}\' '
                                       'AND time > now() - 3h GROUP BY "sensor" ORDER BY time DESC LIMIT 1')
    return {r["sensor"]: r for r in got}


# ------------------------------------------------------------------------------ current conditions

@pytest.mark.integration
def test_current_indices_and_readings_are_the_latest_in_influxdb(city, api):
    r = api.get("/api/v1/current")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    stations = {s["id"]: s for s in r.json()["stations"]}
    assert set(stations) == set(city.registry.sensors)
    expected = latest_indices(city, "vn_aqi_hourly")
    assert len(expected) >= 20, "the simulation should give most air stations an hourly VN_AQI"
    for sid, want in expected.items():
        got = stations[sid]["indices"]["vn_aqi_hourly"]
        assert (got["value"], got["category"], got["label_en"]) == (want["value"], want["category"], want["label_en"])
        assert got["label_en"] == vn_aqi.CATEGORIES[got["category"] - 1].label_en
    assert stations[EPISODE_STATION]["indices"]["vn_aqi_hourly"]["category"] >= 3
    wqi = latest_indices(city, "vn_wqi")
    assert wqi, "the water stations should have a VN_WQI"
    for sid, want in wqi.items():
        assert stations[sid]["indices"]["vn_wqi"]["value"] == want["value"]
    # readings: the newest value of each metric, only registry metrics, with the registry's unit
    (last,) = rows(city.influxdb, city.db, 'SELECT last("pm25") FROM "air" WHERE "sensor" = \'aq-001\'')
    pm = stations["aq-001"]["readings"]["pm25"]
    assert pm == {"value": last["last"], "unit": city.registry.sensors["aq-001"].metrics["pm25"].unit}
    for st in stations.values():
        assert set(st["readings"]) <= set(city.registry.sensors[st["id"]].metrics)
    # traffic and forest were not simulated: present, but without data
    assert stations["fr-001"]["indices"] == {} and stations["fr-001"]["observed_at"] is None


@pytest.mark.integration
def test_current_filters_and_csv(city, api):
    area = city.registry.sensors["aq-001"].area
    js = api.get("/api/v1/current", params={"domain": "air", "area": area}).json()["stations"]
    assert js and all(s["domain"] == "air" and s["area"] == area for s in js)
    text = api.get("/api/v1/current", params={"domain": "air", "area": area, "format": "csv"})
    assert text.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(text.text)))
    by_key = {(row["sensor"], row["kind"], row["quantity"]): row for row in table}
    for s in js:
        for name, ix in s["indices"].items():
            row = by_key[(s["id"], "index", name)]
            assert float(row["value"]) == ix["value"] and int(row["category"]) == ix["category"]
        for metric, rd in s["readings"].items():
            assert float(by_key[(s["id"], "reading", metric)]["value"]) == pytest.approx(rd["value"])
    one = api.get(f"/api/v1/current/{EPISODE_STATION}").json()["stations"]
    assert [s["id"] for s in one] == [EPISODE_STATION]
    assert api.get("/api/v1/current", params={"area": "Nowhere'; DROP"}).status_code == 422


@pytest.mark.integration
def test_areas_report_the_worst_station(city, api):
    stations = api.get("/api/v1/current").json()["stations"]
    areas = {a["area"]: a for a in api.get("/api/v1/areas/current").json()["areas"]}
    assert set(areas) == {s.area for s in city.registry.sensors.values()}
    for name, a in areas.items():
        mine = [s for s in stations if s["area"] == name]
        assert a["stations"] == len(mine)
        cats = [s["indices"]["vn_aqi_hourly"]["category"] for s in mine if "vn_aqi_hourly" in s["indices"]]
        if cats:
            assert a["worst_indices"]["vn_aqi_hourly"]["category"] == max(cats)
        pm = [s["readings"]["pm25"]["value"] for s in mine if "pm25" in s["readings"]]
        if pm:
            assert a["readings_mean"]["pm25"]["value"] == pytest.approx(sum(pm) / len(pm), rel=1e-6)
    assert "worst_index" in api.get("/api/v1/areas/current", params={"format": "csv"}).text


# ------------------------------------------------------------------------------ sensors

@pytest.mark.integration
def test_sensors_geojson(city, api):
    fc = api.get("/api/v1/sensors").json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(city.registry.sensors)
    for f in fc["features"]:
        s = city.registry.sensors[f["id"]]
        assert f["geometry"] == {"type": "Point", "coordinates": [s.lon, s.lat]}
        assert f["properties"]["area"] == s.area and set(f["properties"]["metrics"]) == set(s.metrics)
    water = api.get("/api/v1/sensors", params={"domain": "water"}).json()["features"]
    assert {f["id"] for f in water} == {s.id for s in city.registry.by_domain("water")}
    assert api.get("/api/v1/sensors/aq-001").json()["properties"]["id"] == "aq-001"
    assert api.get("/api/v1/sensors/zz-999").status_code == 404
    assert api.get("/api/v1/sensors/bad'id").status_code == 422
    rows_csv = list(csv.DictReader(io.StringIO(api.get("/api/v1/sensors", params={"format": "csv"}).text)))
    assert len(rows_csv) == len(city.registry.sensors)


# ------------------------------------------------------------------------------ history

@pytest.mark.integration
def test_history_is_hourly_and_matches_the_raw_readings(city, api):
    r = api.get(f"/api/v1/sensors/{EPISODE_STATION}/history", params={"hours": 6, "metric": ["pm25", "no2"]})
    assert r.status_code == 200
    h = r.json()
    assert h["columns"][:3] == ["time", "pm25", "no2"] and "vn_aqi_hourly" in h["columns"]
    assert 4 <= len(h["rows"]) <= 6
    hours = [row["time"] for row in h["rows"]]
    assert hours == sorted(hours) and all(t.endswith(":00:00Z") for t in hours)
    # one full hour, recomputed from the raw readings
    row = h["rows"][1]
    t0 = int(time.mktime(time.strptime(row["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
    raw = rows(city.influxdb, city.db, f'SELECT "no2" FROM "air" WHERE "sensor" = \'{EPISODE_STATION}\' '
                                       f'AND time >= {t0}s AND time < {t0 + 3600}s')
    assert row["no2"] == pytest.approx(sum(x["no2"] for x in raw) / len(raw), rel=1e-6)
    stored = {x["time"]: x["value"] for x in rows(city.influxdb, city.db, 'SELECT "value" FROM "indices" WHERE '
              f'"index" = \'vn_aqi_hourly\' AND "sensor" = \'{EPISODE_STATION}\' AND time > now() - 7h')}
    api_values = [x["vn_aqi_hourly"] for x in h["rows"] if x["vn_aqi_hourly"] is not None]
    assert api_values and sorted(api_values) == sorted(stored.values())
    assert max(api_values) > 100  # the episode
    csv_rows = list(csv.reader(io.StringIO(api.get(f"/api/v1/sensors/{EPISODE_STATION}/history",
                                                     params={"hours": 6, "metric": ["pm25", "no2"], "format": "csv"}).text)))
    assert csv_rows[0] == h["columns"] and len(csv_rows) == len(h["rows"]) + 1


@pytest.mark.integration
def test_history_ranges_are_bounded(api):
    url = f"/api/v1/sensors/{EPISODE_STATION}/history"
    assert api.get(url, params={"hours": 0}).status_code == 422
    assert api.get(url, params={"hours": 31 * 24 + 1}).status_code == 422
    assert api.get(url, params={"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"}).status_code == 400
    assert api.get(url, params={"start": "1970-01-01T00:00:00Z"}).status_code == 400
    assert api.get(url, params={"end": "2026-01-01T00:00:00Z"}).status_code == 400
    assert api.get(url, params={"start": "not a date"}).status_code == 422
    assert api.get(url, params={"metric": "intensity"}).status_code == 404
    ok = api.get(url, params={"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00"})
    assert ok.status_code == 200 and ok.json()["start"] == "2026-01-01T00:00:00Z" and ok.json()["rows"] == []


# ------------------------------------------------------------------------------ advisories

@pytest.mark.integration
def test_advisories_are_public_index_changes_only(city, api):
    adv = api.get("/api/v1/advisories").json()["advisories"]
    episode = [a for a in adv if a["sensor"] == EPISODE_STATION]
    assert episode and episode[0]["index"] == "vn_aqi_hourly" and episode[0]["current"]["category"] >= 3
    assert all(a["index"] in {"vn_aqi_hourly", "vn_wqi", "fire_danger"} for a in adv)
    # the NO2 threshold alert of the same episode is a staff alert: stored, never published
    staff = rows(city.influxdb, city.db, 'SELECT "level_code" FROM "alerts" WHERE "detector" != \'index\'')
    assert staff, "the episode should also raise staff (threshold) alerts"
    body = api.get("/api/v1/advisories").text + api.get("/api/v1/advisories", params={"format": "csv"}).text
    for staff_word in ("threshold", "reason", "score", "qcvn05", "dead"):
        assert staff_word not in body


@pytest.mark.integration
def test_no_staff_data_and_no_write_endpoints(server, api):
    spec = api.get("/openapi.json").json()
    assert {m for ops in spec["paths"].values() for m in ops} == {"get"}
    for path in ("/api/v1/current", "/api/v1/advisories", "/api/v1/sensors"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert api.request(method, path).status_code == 405
    everything = "".join(api.get(p).text for p in ("/api/v1/current", "/api/v1/areas/current"))
    for staff_field in ('"score"', '"level"', "readings_accepted", "dead_letter", "rejected_"):
        assert staff_field not in everything


# ------------------------------------------------------------------------------ caching, limits, CORS

@pytest.mark.integration
def test_cache_single_flight_and_etag(city):
    app = create_app(city.influx, city.registry, PublicSettings(rate_per_second=0, cache_ttl=30))
    reader = app.state.data.reader
    calls = []
    real_query = reader.query

    async def counting(statements):
        calls.append(statements[0][:40])
        await asyncio.sleep(0.05)  # a slow database: the burst arrives while the first query runs
        return await real_query(statements)

    reader.query = counting
    srv = serve(app)
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*[c.get("/api/v1/current") for _ in range(40)])

        answers = asyncio.run(burst())
        assert {r.status_code for r in answers} == {200}
        assert len({r.content for r in answers}) == 1
        assert len(calls) == 1, "a burst of identical requests makes one InfluxDB query"
        # the same snapshot serves the other views: no new query
        with httpx.Client(base_url=srv.url) as c:
            c.get("/api/v1/areas/current")
            c.get("/api/v1/current", params={"format": "csv"})
            assert len(calls) == 1
            r = c.get("/api/v1/current")
            assert r.headers["cache-control"] == "public, max-age=30" and r.headers["etag"]
            again = c.get("/api/v1/current", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
    finally:
        srv.stop()


@pytest.mark.integration
def test_rate_limit_and_cors(city):
    srv = serve(create_app(city.influx, city.registry, PublicSettings(rate_per_second=0.5, rate_burst=3)))
    try:
        with httpx.Client(base_url=srv.url) as c:
            codes = [c.get("/api/v1/scales", headers={"Origin": "https://example.org"}) for _ in range(4)]
            assert [r.status_code for r in codes] == [200, 200, 200, 429]
            assert int(codes[3].headers["retry-after"]) >= 1
            assert codes[0].headers["access-control-allow-origin"] == "*"
            assert codes[3].headers["access-control-allow-origin"] == "*"
            pre = c.options("/api/v1/current", headers={"Origin": "https://example.org",
                                                        "Access-Control-Request-Method": "GET"})
            assert pre.status_code == 200 and "GET" in pre.headers["access-control-allow-methods"]
            assert "POST" not in pre.headers["access-control-allow-methods"]
    finally:
        srv.stop()


@pytest.mark.integration
def test_influxdb_down_is_503_and_not_cached(city):
    down = city.influx.model_copy(update={"url": f"http://127.0.0.1:{free_port()}", "timeout": 2.0})
    srv = serve(create_app(down, city.registry, PublicSettings(rate_per_second=0)))
    try:
        with httpx.Client(base_url=srv.url) as c:
            for _ in range(2):
                r = c.get("/api/v1/current")
                assert r.status_code == 503 and r.headers["retry-after"] and r.headers["cache-control"] == "no-store"
            assert c.get("/api/v1/sensors").status_code == 200  # metadata needs no database
    finally:
        srv.stop()
    assert srv.app.state.cache.computed >= 2  # the failure was not cached


@pytest.mark.integration
def test_page_and_static_files_are_served(api):
    page = api.get("/")
    assert page.status_code == 200 and 'lang="vi"' in page.text and "static/app.js" in page.text
    assert api.get("/static/app.js").status_code == 200
    scales = api.get("/api/v1/scales").json()
    assert [c["label_vi"] for c in scales["vn_aqi"]["categories"]] == [c.label_vi for c in vn_aqi.CATEGORIES]
    assert all(c["advice_vi"] and c["advice_en"] for c in scales["vn_aqi"]["categories"])


# ------------------------------------------------------------------------------ schemathesis

@pytest.mark.integration
def test_openapi_conformance(server):
    """Every operation of the spec, with generated parameters: no server error, status codes, content
    types and bodies as documented (schemathesis' checks)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        @given(case=operation.as_strategy())
        @hyp_settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            # sent with httpx (schemathesis' own requests transport does not match this urllib3)
            kw = case.as_transport_kwargs(base_url=server.url)
            response = httpx.request(kw["method"], kw["url"], params=kw.get("params"), headers=kw.get("headers"),
                                     cookies=kw.get("cookies"), timeout=30)
            case.validate_response(response)

        check()


def test_token_bucket_refills_at_the_rate():
    from citywatch.public.ratelimit import TokenBuckets

    b = TokenBuckets(rate=2.0, burst=3)
    assert [b.take("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a", now=100.0) == pytest.approx(0.5)  # the next token in 1/rate s
    assert b.take("b", now=100.0) == 0.0  # clients are independent
    assert b.take("a", now=100.6) == 0.0  # refilled
    assert b.take("a", now=100.6) > 0
    assert [b.take("a", now=200.0) for _ in range(4)][-1] > 0  # never more than the burst after idling


def test_serve_command_defaults_to_loopback_and_open_cors():
    from citywatch.cli import build_parser
    from citywatch.public.cli import settings_from_args

    s = settings_from_args(build_parser().parse_args(["serve"]))
    assert (s.host, s.cors_origins, s.rate_per_second > 0) == ("127.0.0.1", ["*"], True)
    s = settings_from_args(build_parser().parse_args(["serve", "--host", "0.0.0.0", "--cors-origin", "https://a.example",
                                                      "--rate", "0", "--cache-ttl", "10"]))
    assert (s.host, s.cors_origins, s.rate_per_second, s.cache_ttl) == ("0.0.0.0", ["https://a.example"], 0, 10)
    with pytest.raises(ValueError):
        settings_from_args(build_parser().parse_args(["serve", "--cache-ttl", "0"]))


@pytest.mark.integration
def test_gzip_once_per_cache_entry(api):
    plain = api.get("/api/v1/current", headers={"Accept-Encoding": "identity"})
    packed = api.get("/api/v1/current", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers and packed.headers["content-encoding"] == "gzip"
    assert packed.content == plain.content  # httpx decodes it
    assert int(packed.headers["content-length"]) < len(plain.content) / 4
    assert packed.headers["etag"] != plain.headers["etag"] and "Accept-Encoding" in packed.headers["vary"]
    again = api.get("/api/v1/current", headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["etag"]})
    assert again.status_code == 304


def test_caches_are_bounded_in_bytes():
    from citywatch.public.cache import SingleFlightCache

    cache: SingleFlightCache[bytes] = SingleFlightCache(ttl=60, maxsize=10_000, getsizeof=len)

    async def fill() -> None:
        for i in range(50):
            async def make(i=i) -> bytes:
                return bytes(1000)
            assert await cache.get(("k", i), make) == bytes(1000)

        async def huge() -> bytes:
            return bytes(20_000)
        assert len(await cache.get("huge", huge)) == 20_000  # served, too big to keep

    asyncio.run(fill())
    assert cache._cache.currsize <= 10_000 and len(cache._cache) == 10 and "huge" not in cache._cache


@pytest.mark.parametrize("module", ["citywatch.public.advice", "citywatch.public.influx"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
