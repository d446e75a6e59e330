"""What the public API serves, read from InfluxDB: current conditions per station and per ward, hourly
history of a station, active public advisories. Only registry sensors and their registry metrics are
returned; nothing from `scores`, `citywatch` (engine health) or non-public alerts.

The engine's schema (see README "InfluxDB schema"): readings in `air`/`water`/`traffic`/`forest`
(tags sensor, area; one field per metric); `indices` (tags sensor, area, index; fields value,
category, label_vi, label_en, dominant); `alerts` (tags sensor, domain, area, metric, detector,
level; fields value, threshold, score, reason, previous_level, level_code).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from statistics import fmean
from typing import Any

from citywatch.grafana_boards import SUM_METRICS
from citywatch.public.influx import InfluxReader, Row, ident, literal
from citywatch.public.settings import PublicSettings
from citywatch.registry import DOMAINS, Registry, Sensor

#: Indices computed per local day; the others are hourly.
DAILY_INDICES = frozenset({"vn_aqi_daily", "fire_danger"})
#: The index a station is coloured by on the map, per domain.
MAP_INDEX = {"air": "vn_aqi_hourly", "water": "vn_wqi", "forest": "fire_danger", "traffic": "traffic_los"}
LEVEL_CODES = {"warning": 1, "critical": 2}
HOUR_MS = 3_600_000


def iso(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def sensor_properties(s: Sensor) -> dict[str, Any]:
    return {"id": s.id, "name": s.name or s.id, "domain": s.domain, "area": s.area,
            "lat": s.lat, "lon": s.lon, "map_index": MAP_INDEX.get(s.domain)}


class PublicData:
    def __init__(self, reader: InfluxReader, registry: Registry, settings: PublicSettings) -> None:
        self.reader = reader
        self.registry = registry
        self.settings = settings
        self.sensors = {s.id: s for s in registry.sensors.values() if not s.auto_registered}
        self.areas = sorted({s.area for s in self.sensors.values()})

    # -- sensors (metadata only) ------------------------------------------------------------------
    def sensors_geojson(self, domain: str | None = None) -> dict[str, Any]:
        return {"type": "FeatureCollection",
                "features": [self.sensor_feature(s) for s in self.sensors.values() if domain in (None, s.domain)]}

    def sensor_feature(self, s: Sensor) -> dict[str, Any]:
        metrics = {m: {"unit": spec.unit, "description": spec.description} for m, spec in s.metrics.items()}
        return {"type": "Feature", "id": s.id, "geometry": {"type": "Point", "coordinates": [s.lon, s.lat]},
                "properties": {**sensor_properties(s), "metrics": metrics}}

    # -- current conditions ------------------------------------------------------------------------
    def current_statements(self) -> list[str]:
        cfg = self.settings
        out = [f'SELECT "value", "category", "label_vi", "label_en", "dominant" FROM "indices" '
               f'WHERE time > now() - {int(cfg.current_daily_max_age_h * 60)}m '
               f'GROUP BY "sensor", "index" ORDER BY time DESC LIMIT 1']
        age = f"time > now() - {int(cfg.current_readings_max_age_min * 60)}s"
        for domain in DOMAINS:
            out.append(f'SELECT last(*) FROM {ident(domain)} WHERE {age} GROUP BY "sensor"')
            out.append(f'SELECT * FROM {ident(domain)} WHERE {age} GROUP BY "sensor" ORDER BY time DESC LIMIT 1')
        return out

    async def current(self) -> dict[str, Any]:
        """Every registry station with its latest indices and readings (null when none is recent)."""
        answers = await self.reader.query(self.current_statements())
        now_ms = time.time() * 1000
        hourly_age = self.settings.current_hourly_max_age_h * HOUR_MS
        stations = {sid: {**sensor_properties(s), "observed_at": None, "indices": {}, "readings": {}}
                    for sid, s in self.sensors.items()}
        for row in answers[0]:
            st = stations.get(row.get("sensor"))
            name = row.get("index")
            if st is None or not name or row.get("value") is None:
                continue
            if name not in DAILY_INDICES and now_ms - row["time"] > hourly_age:
                continue
            category = row.get("category")
            st["indices"][name] = {"value": row["value"], "category": int(category) if category is not None else None,
                                   "label_vi": row.get("label_vi"), "label_en": row.get("label_en"),
                                   "dominant": row.get("dominant") or None, "time": iso(row["time"])}
        for i in range(len(DOMAINS)):
            for row in answers[1 + 2 * i]:
                st = stations.get(row.get("sensor"))
                if st is None:
                    continue
                spec = self.sensors[st["id"]].metrics
                for metric, m in spec.items():
                    value = row.get(f"last_{metric}")
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        st["readings"][metric] = {"value": value, "unit": m.unit}
            for row in answers[2 + 2 * i]:
                st = stations.get(row.get("sensor"))
                if st is not None:
                    st["observed_at"] = iso(row["time"])
        return {"generated_at": iso(now_ms), "stations": list(stations.values())}

    @staticmethod
    def areas_summary(current: dict[str, Any]) -> dict[str, Any]:
        """Per ward: station counts, the worst current value of each index, the mean of each reading."""
        by_area: dict[str, list[dict]] = {}
        for st in current["stations"]:
            by_area.setdefault(st["area"], []).append(st)
        areas = []
        for area, stations in sorted(by_area.items()):
            indices: dict[str, dict[str, Any]] = {}
            values: dict[str, list[float]] = {}
            units: dict[str, str] = {}
            for st in stations:
                for name, ix in st["indices"].items():
                    worst = indices.get(name)
                    if ix["category"] is not None and (worst is None or ix["category"] > worst["category"]):
                        indices[name] = {"category": ix["category"], "value": ix["value"], "label_vi": ix["label_vi"],
                                         "label_en": ix["label_en"], "sensor": st["id"], "stations": 0}
                for metric, r in st["readings"].items():
                    values.setdefault(metric, []).append(r["value"])
                    units[metric] = r["unit"]
            for name in indices:
                indices[name]["stations"] = sum(1 for st in stations if name in st["indices"])
            areas.append({"area": area, "stations": len(stations),
                          "domains": {d: n for d in DOMAINS if (n := sum(1 for s in stations if s["domain"] == d))},
                          "worst_indices": indices,
                          "readings_mean": {m: {"value": round(fmean(v), 4), "unit": units[m], "stations": len(v)}
                                            for m, v in sorted(values.items())}})
        return {"generated_at": current["generated_at"], "areas": areas}

    # -- history -----------------------------------------------------------------------------------
    async def history(self, s: Sensor, start_ms: int, end_ms: int, metrics: list[str]) -> dict[str, Any]:
        """Hourly means (sums for amounts such as precipitation) and hourly indices in [start, end)."""
        window = f'"sensor" = {literal(s.id)} AND time >= {start_ms * 1_000_000} AND time < {end_ms * 1_000_000}'
        statements = [f'SELECT last("value") AS "value", last("category") AS "category" FROM "indices" '
                      f'WHERE {window} GROUP BY time(1h), "index" fill(none)']
        if metrics:
            cols = ", ".join(f'{"sum" if m in SUM_METRICS else "mean"}({ident(m)}) AS {ident(m)}' for m in metrics)
            statements.append(f"SELECT {cols} FROM {ident(s.domain)} WHERE {window} GROUP BY time(1h) fill(none)")
        answers = await self.reader.query(statements)
        rows: dict[int, dict[str, Any]] = {}
        index_names: set[str] = set()
        for row in answers[0]:
            name = row.get("index")
            if not name or row.get("value") is None:
                continue
            index_names.add(name)
            r = rows.setdefault(row["time"], {})
            r[name] = row["value"]
            r[f"{name}_category"] = int(row["category"]) if row.get("category") is not None else None
        if metrics:
            for row in answers[1]:
                r = rows.setdefault(row["time"], {})
                for m in metrics:
                    if row.get(m) is not None:
                        r[m] = round(row[m], 6)
        columns = ["time", *metrics, *[c for n in sorted(index_names) for c in (n, f"{n}_category")]]
        return {"sensor": s.id, "name": s.name or s.id, "domain": s.domain, "area": s.area,
                "start": iso(start_ms), "end": iso(end_ms), "interval": "1h",
                "units": {m: s.metrics[m].unit for m in metrics}, "columns": columns,
                "rows": [{"time": iso(t), **{c: rows[t].get(c) for c in columns[1:]}} for t in sorted(rows)]}

    # -- advisories --------------------------------------------------------------------------------
    def advisory_statements(self) -> list[str]:
        age = f"time > now() - {int(self.settings.advisory_max_age_h * 60)}m"
        return [f'SELECT "level_code", "value", "area", "domain" FROM "alerts" WHERE "detector" = {literal(r.detector)} '
                f'AND "metric" = {literal(r.metric)} AND {age} GROUP BY "sensor" ORDER BY time DESC LIMIT 1'
                for r in self.settings.advisory_rules]

    async def advisories(self, current: dict[str, Any]) -> dict[str, Any]:
        """Stations whose latest state change of an allow-listed index is at the rule's level or worse."""
        rules = self.settings.advisory_rules
        answers = await self.reader.query(self.advisory_statements()) if rules else []
        by_id = {st["id"]: st for st in current["stations"]}
        out = []
        for rule, rows in zip(rules, answers):
            for row in rows:
                st = by_id.get(row.get("sensor"))
                code = row.get("level_code")
                if st is None or code is None or code < LEVEL_CODES[rule.min_level]:
                    continue
                out.append({"sensor": st["id"], "name": st["name"], "area": st["area"], "domain": st["domain"],
                            "lat": st["lat"], "lon": st["lon"], "index": rule.metric,
                            "level": "critical" if code >= 2 else "warning", "since": iso(row["time"]),
                            "value_at_start": row.get("value"), "current": st["indices"].get(rule.metric)})
        out.sort(key=lambda a: (-LEVEL_CODES[a["level"]], a["since"] or ""), reverse=False)
        return {"generated_at": current["generated_at"], "advisories": out}
