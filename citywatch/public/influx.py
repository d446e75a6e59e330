"""Read-only InfluxQL queries over the v1 HTTP API (`GET /query`), with the engine's connection settings.

Only `SELECT` statements are sent, with `GET` (InfluxDB 1.x refuses writes and schema changes on GET).
Identifiers and string literals are always quoted with `ident` / `literal`; values from requests are
validated before they get there (sensor ids by the registry's pattern, time ranges as integers).
"""

from __future__ import annotations

from typing import Any

import httpx

from citywatch.config import InfluxConfig
from citywatch.sinks.http import influx_client_options


class InfluxUnavailable(RuntimeError):
    """InfluxDB did not answer, or answered with an error."""


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """A single-quoted InfluxQL string literal.

    >>> literal("aq-001"), literal("x' OR 1=1 --")
    ("'aq-001'", "'x\\\\' OR 1=1 --'")
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


Row = dict[str, Any]


class InfluxReader:
    """Runs InfluxQL `SELECT`s; `query` returns, per statement, the rows as dicts (tags merged in)."""

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(**influx_client_options(self.cfg, "citywatch-public"),
                                             limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def query(self, statements: list[str]) -> list[list[Row]]:
        if not all(s.lstrip().upper().startswith("SELECT ") for s in statements):
            raise ValueError("only SELECT statements are allowed")
        params = {"db": self.cfg.database, "q": ";".join(statements), "epoch": "ms"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        try:
            r = await self._http().get("/query", params=params)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"influxdb unreachable: {type(exc).__name__}") from exc
        if r.status_code != 200:
            raise InfluxUnavailable(f"influxdb answered HTTP {r.status_code}")
        results = r.json().get("results", [])
        out: list[list[Row]] = []
        for res in results:
            if res.get("error"):
                raise InfluxUnavailable(f"query failed: {res['error']}")
            rows: list[Row] = []
            for series in res.get("series", []):
                tags = series.get("tags", {})
                cols = series["columns"]
                rows += [{**tags, **dict(zip(cols, values))} for values in series["values"]]
            out.append(rows)
        while len(out) < len(statements):
            out.append([])
        return out
