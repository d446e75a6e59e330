"""The public open-data server: read-only JSON/CSV endpoints under `/api/v1`, the OpenAPI spec at
`/openapi.json`, and the citizens' page at `/`.

| endpoint | what |
|---|---|
| `GET /api/v1/sensors` | station metadata as GeoJSON (`?domain=`), or CSV |
| `GET /api/v1/sensors/{id}` | one station (GeoJSON Feature) |
| `GET /api/v1/current` | latest indices and readings of every station (`?domain=&area=`) |
| `GET /api/v1/current/{id}` | the same for one station |
| `GET /api/v1/areas/current` | per ward: worst current index values, mean readings |
| `GET /api/v1/sensors/{id}/history` | hourly means and indices, `?hours=24` or `?start=&end=` (bounded) |
| `GET /api/v1/advisories` | active public advisories (see `PublicData.advisories`) |
| `GET /api/v1/scales` | index categories, colours, labels, health advice (Decision 1459/QĐ-TCMT) |

Every data endpoint takes `?format=json|csv`. Responses are cached in process for `cache_ttl` seconds,
keyed by endpoint and parameters, with single flight (a burst of identical requests makes one InfluxDB
query; the current-conditions views share one snapshot), gzip-compressed once per entry, and carry
`ETag` (If-None-Match answers 304) and `Cache-Control: public, max-age=<ttl>`; `hot.HotResponses`
replays cached answers before routing.
A token bucket per client answers 429 with Retry-After; CORS allows GET from the configured origins.
There are no write endpoints: any other method answers 405.
"""


import csv
import gc
import gzip
import hashlib
import io
import time
from collections.abc import Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from enum import Enum
from importlib import resources
from typing import Annotated, Any, Literal, NamedTuple

import orjson
import structlog
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from citywatch.config import InfluxConfig
from citywatch.public.advice import scales
from citywatch.public.cache import SingleFlightCache
from citywatch.public.data import PublicData
from citywatch.public.hot import HotResponses
from citywatch.public.influx import InfluxReader, InfluxUnavailable
from citywatch.public.models import Advisories, Areas, Current, History
from citywatch.public.ratelimit import RateLimitMiddleware
from citywatch.public.settings import PublicSettings
from citywatch.registry import DOMAINS, SENSOR_ID_PATTERN, Registry

API = "/api/v1"
MIN_START = datetime(2000, 1, 1, tzinfo=timezone.utc)
log = structlog.get_logger("citywatch.public")


class Rendered(NamedTuple):
    body: bytes
    media_type: str
    etag: str
    gzipped: bytes | None  # the body gzip-compressed once, when that is worth it


GZIP_MIN_BYTES = 1024


class Problem(BaseModel):
    detail: str


Format = Literal["json", "csv"]
FORMAT = Query(description="json (GeoJSON for sensors) or csv")
ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    429: {"model": Problem, "description": "Too many requests from this client; see Retry-After"},
    503: {"model": Problem, "description": "The data source is unavailable; see Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such station or metric"}}
def json_or_csv(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "content": {"text/csv": {}}, "description": "JSON (default) or CSV (`format=csv`)"}}
GEO = {200: {"content": {"application/geo+json": {}, "text/csv": {}},
             "description": "GeoJSON (default) or CSV (`format=csv`)"}}


def render(payload: Any, fmt: str, table: Callable[[Any], tuple[list[str], list[list[Any]]]] | None = None,
           media_type: str = "application/json") -> Rendered:
    if fmt == "csv" and table is not None:
        header, rows = table(payload)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        body = buf.getvalue().encode("utf-8")
        media_type = "text/csv; charset=utf-8"
    else:
        body = orjson.dumps(payload)
    gz = gzip.compress(body, compresslevel=6, mtime=0) if len(body) >= GZIP_MIN_BYTES else None
    return Rendered(body, media_type, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"', gz)


# -- CSV tables ----------------------------------------------------------------------------------
def current_table(payload: dict) -> tuple[list[str], list[list[Any]]]:
    """Long format: one row per station and index or reading."""
    header = ["sensor", "name", "domain", "area", "lat", "lon", "kind", "quantity", "value", "unit", "category",
              "label_vi", "label_en", "time"]
    rows = []
    for st in payload["stations"]:
        base = [st["id"], st["name"], st["domain"], st["area"], st["lat"], st["lon"]]
        for name, ix in sorted(st["indices"].items()):
            rows.append(base + ["index", name, ix["value"], "", ix["category"], ix["label_vi"], ix["label_en"], ix["time"]])
        for metric, r in sorted(st["readings"].items()):
            rows.append(base + ["reading", metric, r["value"], r["unit"], "", "", "", st["observed_at"]])
    return header, rows


def areas_table(payload: dict) -> tuple[list[str], list[list[Any]]]:
    header = ["area", "stations", "kind", "quantity", "value", "unit", "category", "label_vi", "label_en", "sensor"]
    rows = []
    for a in payload["areas"]:
        for name, ix in sorted(a["worst_indices"].items()):
            rows.append([a["area"], a["stations"], "worst_index", name, ix["value"], "", ix["category"], ix["label_vi"],
                         ix["label_en"], ix["sensor"]])
        for metric, r in a["readings_mean"].items():
            rows.append([a["area"], a["stations"], "mean_reading", metric, r["value"], r["unit"], "", "", "", ""])
    return header, rows


def sensors_table(payload: dict) -> tuple[list[str], list[list[Any]]]:
    header = ["id", "name", "domain", "area", "lat", "lon", "metrics"]
    return header, [[p["id"], p["name"], p["domain"], p["area"], p["lat"], p["lon"], " ".join(p["metrics"])]
                    for p in (f["properties"] for f in payload["features"])]


def history_table(payload: dict) -> tuple[list[str], list[list[Any]]]:
    return payload["columns"], [[r.get(c) for c in payload["columns"]] for r in payload["rows"]]


def advisories_table(payload: dict) -> tuple[list[str], list[list[Any]]]:
    header = ["sensor", "name", "area", "domain", "index", "level", "since", "value_at_start",
              "current_value", "current_category", "current_label_vi", "current_label_en"]
    rows = []
    for a in payload["advisories"]:
        cur = a["current"] or {}
        rows.append([a["sensor"], a["name"], a["area"], a["domain"], a["index"], a["level"], a["since"],
                     a["value_at_start"], cur.get("value"), cur.get("category"), cur.get("label_vi"), cur.get("label_en")])
    return header, rows


# -- the app -------------------------------------------------------------------------------------
def create_app(influx: InfluxConfig, registry: Registry, settings: PublicSettings | None = None) -> FastAPI:
    settings = settings or PublicSettings()
    reader = InfluxReader(influx)
    data = PublicData(reader, registry, settings)
    cache: SingleFlightCache[Rendered] = SingleFlightCache(
        settings.cache_ttl, settings.cache_max_bytes, getsizeof=lambda r: len(r.body) + len(r.gzipped or b"") + 512)
    snapshots: SingleFlightCache[dict] = SingleFlightCache(settings.cache_ttl, 8)
    max_age = int(settings.cache_ttl)
    static = resources.files("citywatch.public") / "static"
    index_html = (static / "index.html").read_bytes()
    scales_payload = scales()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # everything loaded so far lives as long as the process: keep it out of the collector's full
        # passes, which otherwise walk it all (tens of ms) and make the slowest responses
        gc.collect()
        gc.freeze()
        yield
        await reader.close()

    app = FastAPI(title="citywatch open data", version="1",
                  description="Read-only open data of the city's environmental monitoring: current air and water "
                              "quality indices, readings per station and per ward, hourly history, public "
                              "advisories. Data under the city's open-data terms; values are provisional "
                              "(automatic stations, not yet validated).",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.cache, app.state.data = cache, data

    Domain = Enum("Domain", {d: d for d in DOMAINS}, type=str)  # type: ignore[misc]
    Area = Enum("Area", {f"a{i}": a for i, a in enumerate(data.areas)}, type=str)  # type: ignore[misc]
    SensorId = Annotated[str, Path(pattern=SENSOR_ID_PATTERN.pattern, description="station id, e.g. aq-001")]

    async def current_snapshot() -> dict:
        return await snapshots.get("current", data.current)

    async def respond(request: Request, key: Hashable, build: Callable[[], Awaitable[Rendered]]) -> Response:
        try:
            r = await cache.get(key, build)
        except InfluxUnavailable as exc:
            log.warning("public api: data source unavailable", error=str(exc))
            return JSONResponse({"detail": "data source unavailable"}, status_code=503,
                                headers={"Retry-After": "5", "Cache-Control": "no-store"})
        gz = r.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "")
        etag = r.etag[:-1] + '-gz"' if gz else r.etag  # a strong ETag per representation
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}", "Vary": "Accept-Encoding"}
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or etag in (t.strip().removeprefix("W/") for t in inm.split(","))):
            return Response(status_code=304, headers=headers)
        if gz:
            return Response(r.gzipped, media_type=r.media_type, headers={**headers, "Content-Encoding": "gzip"})
        return Response(r.body, media_type=r.media_type, headers=headers)

    def sensor_or_404(sensor_id: str):
        s = data.sensors.get(sensor_id)
        if s is None:
            raise HTTPException(404, "no such station")
        return s

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": f"public, max-age={max_age}"})

    @app.get(f"{API}/scales", summary="Index scales: categories, colours, labels, health advice", responses=ERRORS)
    async def get_scales(request: Request) -> Response:
        async def build() -> Rendered:
            return render(scales_payload, "json")
        return await respond(request, ("scales",), build)

    @app.get(f"{API}/sensors", summary="Stations as GeoJSON (or CSV)", responses={**GEO, **ERRORS})
    async def get_sensors(request: Request, domain: Domain | None = None, format: Annotated[Format, FORMAT] = "json") -> Response:
        d = domain.value if domain else None

        async def build() -> Rendered:
            return render(data.sensors_geojson(d), format, sensors_table, "application/geo+json")
        return await respond(request, ("sensors", d, format), build)

    @app.get(f"%s/sensors/{{sensor_id}}" % API, summary="One station as a GeoJSON Feature",
             responses={200: {"content": {"application/geo+json": {}}, "description": "GeoJSON Feature"},
                        **NOT_FOUND, **ERRORS})
    async def get_sensor(request: Request, sensor_id: SensorId) -> Response:
        s = sensor_or_404(sensor_id)

        async def build() -> Rendered:
            return render(data.sensor_feature(s), "json", media_type="application/geo+json")
        return await respond(request, ("sensor", s.id), build)

    @app.get(f"{API}/current", summary="Latest indices and readings of every station",
             responses={**json_or_csv(Current), **ERRORS})
    async def get_current(request: Request, domain: Domain | None = None, area: Area | None = None,
                          format: Annotated[Format, FORMAT] = "json") -> Response:
        d, a = (domain.value if domain else None), (area.value if area else None)

        async def build() -> Rendered:
            cur = await current_snapshot()
            stations = [st for st in cur["stations"] if d in (None, st["domain"]) and a in (None, st["area"])]
            return render({"generated_at": cur["generated_at"], "stations": stations}, format, current_table)
        return await respond(request, ("current", d, a, format), build)

    @app.get(f"%s/current/{{sensor_id}}" % API, summary="Latest indices and readings of one station",
             responses={**json_or_csv(Current), **NOT_FOUND, **ERRORS})
    async def get_current_sensor(request: Request, sensor_id: SensorId, format: Annotated[Format, FORMAT] = "json") -> Response:
        s = sensor_or_404(sensor_id)

        async def build() -> Rendered:
            cur = await current_snapshot()
            st = next(st for st in cur["stations"] if st["id"] == s.id)
            return render({"generated_at": cur["generated_at"], "stations": [st]}, format, current_table)
        return await respond(request, ("current", s.id, format), build)

    @app.get(f"{API}/areas/current", summary="Per ward: worst current index values and mean readings",
             responses={**json_or_csv(Areas), **ERRORS})
    async def get_areas(request: Request, format: Annotated[Format, FORMAT] = "json") -> Response:
        async def build() -> Rendered:
            return render(data.areas_summary(await current_snapshot()), format, areas_table)
        return await respond(request, ("areas", format), build)

    @app.get(f"%s/sensors/{{sensor_id}}/history" % API, summary="Hourly history of a station (bounded range)",
             responses={**json_or_csv(History), **NOT_FOUND, 400: {"model": Problem, "description": "Bad time range"},
                        **ERRORS})
    async def get_history(
        request: Request, sensor_id: SensorId,
        hours: Annotated[int, Query(ge=1, le=settings.history_max_days * 24,
                                    description="the last N hours (ignored when start is given)")] = 24,
        start: Annotated[datetime | None, Query(description="ISO 8601; UTC when no offset")] = None,
        end: Annotated[datetime | None, Query(description="ISO 8601, default now; at most "
                                                          f"{settings.history_max_days} days after start")] = None,
        metric: Annotated[list[str] | None, Query(max_length=32, description="metrics to include (default all)")] = None,
        format: Annotated[Format, FORMAT] = "json",
    ) -> Response:
        s = sensor_or_404(sensor_id)
        now = datetime.now(timezone.utc)
        hour = 3600
        if start is None:
            end_s = (int(now.timestamp()) // hour + 1) * hour  # through the current hour
            start_s = end_s - hours * hour
            if end is not None:
                raise HTTPException(400, "end needs start")
        else:
            start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
            end = (end if end.tzinfo else end.replace(tzinfo=timezone.utc)) if end is not None else now
            if not (MIN_START <= start < end <= now + timedelta(days=1)):
                raise HTTPException(400, "need 2000-01-01 <= start < end <= tomorrow")
            if end - start > timedelta(days=settings.history_max_days):
                raise HTTPException(400, f"at most {settings.history_max_days} days")
            start_s, end_s = int(start.timestamp()) // hour * hour, -(-int(end.timestamp()) // hour) * hour
        metrics = list(dict.fromkeys(metric)) if metric else list(s.metrics)
        unknown = [m for m in metrics if m not in s.metrics]
        if unknown:
            raise HTTPException(404, f"station {s.id} has no metric {unknown[0][:64]!r}")

        async def build() -> Rendered:
            return render(await data.history(s, start_s * 1000, end_s * 1000, metrics), format, history_table)
        return await respond(request, ("history", s.id, start_s, end_s, tuple(metrics), format), build)

    @app.get(f"{API}/advisories", summary="Active public advisories",
             responses={**json_or_csv(Advisories), **ERRORS})
    async def get_advisories(request: Request, format: Annotated[Format, FORMAT] = "json") -> Response:
        async def build() -> Rendered:
            return render(await data.advisories(await current_snapshot()), format, advisories_table)
        return await respond(request, ("advisories", format), build)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    # outermost last: cached answers still count against the rate limit; CORS headers also on 429s
    app.add_middleware(HotResponses, ttl=settings.cache_ttl / 2, max_bytes=settings.cache_max_bytes)
    app.add_middleware(RateLimitMiddleware, rate=settings.rate_per_second, burst=settings.rate_burst,
                       trust_forwarded_for=settings.trust_forwarded_for)
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD"],
                       allow_headers=["If-None-Match"], expose_headers=["ETag", "Retry-After"], max_age=86400)
    return app
