"""Grafana boards for citywatch, generated from the config and the sensor registry.

``build_dashboards(settings, registry)`` returns every board as Grafana dashboard JSON;
``export(dir)`` writes the provisioning files and the boards (what is committed under ``grafana/``);
``push(url, token)`` uploads the boards to a running Grafana; ``add_arguments``/``run`` are the
``citywatch grafana export DIR`` and ``citywatch grafana push --url --token`` subcommands.

Library: grafana-foundation-sdk (Grafana Labs' "as code" SDK). It is generated from Grafana's own
dashboard and panel schemas and released continuously by Grafana Labs, and it has builders for every
panel these boards need, the Geomap included. grafanalib (community, last release 0.7.1, 2024) has
no Geomap panel and models the old graph-panel world. The SDK has no InfluxDB query type, so
``InfluxQL`` below is a small data-query variant registered with the SDK's runtime, so that the
SDK's models decode the committed JSON (the tests use that as the schema check).

Queries are raw InfluxQL with Grafana's macros (``$timeFilter``, ``$__interval``) and the template
variables ``area`` and ``sensor`` (``SHOW TAG VALUES``). Every board is built from ``Section``s;
index panels are added as further sections with ``register_section``: the air-quality index sections
(VN_AQI / US AQI on cw-air, the AQI map on cw-overview) are registered at the end of the boards part,
then fire danger (cw-forest), level of service (cw-traffic) and their overview stats, then the water
quality index with QCVN 08:2023 (cw-water) and the overview VN_WQI map.

The engine writes (see README "InfluxDB schema"): ``air``/``water``/``traffic``/``forest`` (tags
sensor, area; one field per metric), ``scores`` (tags sensor, area, domain, metric; fields score,
level, ...), ``alerts`` (tags sensor, domain, area, metric, detector, level; fields value, threshold,
score, reason, previous_level, level_code), ``indices`` (tags sensor, area, index = vn_aqi_hourly,
us_aqi or vn_aqi_daily; fields value, category 1..6, label_vi, label_en, dominant; time = start of the
hour or of the local day; index = fire_danger: value = Nesterov P, category = level 1..5, time = local
midnight; index = traffic_los: value = speed ratio %, category = LOS 1..6, tti, flow_veh_h, pcu_h, time =
start of the hour; index = vn_wqi: value 0..100, category = class 1..6, dominant = the lowest sub-index),
``exceedances`` (tags sensor, area, pollutant, averaging, and class for water; fields mean, limit,
exceeded, year_count) and ``citywatch`` (tag client_id; cumulative counters).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import bargauge, geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import geomap as gm

from citywatch.config import Settings, ThresholdRule
from citywatch.detectors.indices import fire_danger, traffic, us_aqi, vn_aqi
from citywatch.registry import DOMAINS, Registry

DATASOURCE_UID = "citywatch-influxdb"
DATASOURCE = dm.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
GRAFANA_DS = dm.DataSourceRef(type_val="datasource", uid="grafana")
MIXED_DS = dm.DataSourceRef(type_val="datasource", uid="-- Mixed --")
STATUS_WINDOW = "15m"  # "current status" of a sensor: max level in `scores` over this window
ACTIVE_ALERTS_WINDOW = "7d"  # how far back the active-alerts table looks for the latest state change

FOLDER_ENVIRONMENT = "environment"
FOLDER_OPERATIONS = "operations"

DOMAIN_TITLES = {
    "air": "Chất lượng không khí / Air quality",
    "water": "Chất lượng nước / Water quality",
    "traffic": "Giao thông / Traffic",
    "forest": "Rừng / Forest",
}

# Metric display names (Vietnamese / English) and aggregation per interval.
METRIC_TITLES = {
    "pm25": "Bụi PM2.5 / PM2.5", "pm10": "Bụi PM10 / PM10", "no2": "NO₂", "so2": "SO₂", "o3": "O₃",
    "co": "CO", "temperature": "Nhiệt độ / Temperature", "relativeHumidity": "Độ ẩm / Relative humidity",
    "pH": "pH", "dissolvedOxygen": "Oxy hòa tan / Dissolved oxygen", "turbidity": "Độ đục / Turbidity",
    "conductivity": "Độ dẫn điện / Conductivity", "NH4": "Amoni / Ammonium (NH₄⁺)",
    "intensity": "Lưu lượng xe / Intensity", "occupancy": "Tỷ lệ chiếm dụng / Occupancy",
    "averageVehicleSpeed": "Tốc độ trung bình / Average speed", "precipitation": "Lượng mưa / Precipitation",
    "windSpeed": "Tốc độ gió / Wind speed", "soilMoisture": "Độ ẩm đất / Soil moisture",
}
SUM_METRICS = {"precipitation"}  # amounts per reporting period: summed per interval, not averaged

# citywatch canonical units (citywatch/units.py) -> Grafana unit ids
GRAFANA_UNITS = {
    "ug/m3": "conμgm3", "mg/m3": "conmgm3", "Cel": "celsius", "1": "percentunit", "km/h": "velocitykmh",
    "m/s": "velocityms", "mm": "lengthmm", "mg/L": "suffix: mg/L", "NTU": "suffix: NTU",
    "uS/cm": "suffix: µS/cm", "veh": "suffix: veh", "pH": "none",
}

LEVEL_COLOURS = [(None, "green"), (1, "orange"), (2, "red")]


# ------------------------------------------------------------------------------ the InfluxQL query

class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL target of Grafana's InfluxDB data source (query language InfluxQL)."""

    def __init__(self, ref_id: str = "A", query: str = "", result_format: str = "time_series",
                 alias: str | None = None, datasource: dm.DataSourceRef | None = None, hide: bool | None = None) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"refId": self.ref_id, "datasource": self.datasource or DATASOURCE,
                                  "rawQuery": True, "query": self.query, "resultFormat": self.result_format}
        if self.alias:
            out["alias"] = self.alias
        if self.hide is not None:
            out["hide"] = self.hide
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "InfluxQLQuery":
        unknown = set(data) - {"refId", "datasource", "rawQuery", "query", "resultFormat", "alias", "hide"}
        if unknown or data.get("rawQuery") is not True or not data.get("query"):
            raise ValueError(f"not a raw InfluxQL target: {sorted(data)} (refId {data.get('refId')})")
        if data.get("resultFormat") not in ("time_series", "table", "logs"):
            raise ValueError(f"bad resultFormat in {data!r}")
        ds = data.get("datasource")
        return cls(data["refId"], data["query"], data["resultFormat"], data.get("alias"),
                   dm.DataSourceRef.from_json(ds) if isinstance(ds, dict) else None, data.get("hide"))




class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    def __init__(self, query: str, ref_id: str = "A", fmt: str = "time_series", alias: str | None = None) -> None:
        self._q = InfluxQLQuery(ref_id, query, fmt, alias)

    def build(self) -> InfluxQLQuery:
        return self._q


class SnapshotQuery(cogvariants.Dataquery):
    """Static data frames embedded in the board (Grafana's built-in `-- Grafana --` snapshot query):
    the registry's coordinates and expected intervals, which InfluxDB does not hold."""

    def __init__(self, ref_id: str, frame: dict[str, Any]) -> None:
        self.ref_id = ref_id
        self.frame = frame

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": GRAFANA_DS, "queryType": "snapshot", "snapshot": [self.frame]}


    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SnapshotQuery":
        if set(data) != {"refId", "datasource", "queryType", "snapshot"} or data["queryType"] != "snapshot":
            raise ValueError(f"not a snapshot query: {sorted(data)}")
        for frame in data["snapshot"]:
            fields, values = frame["schema"]["fields"], frame["data"]["values"]
            if len(fields) != len(values) or len({len(v) for v in values}) > 1:
                raise ValueError("a snapshot frame needs one column of equal length per field")
        return cls(data["refId"], data["snapshot"][0])


def _mixed_from_json(data: dict[str, Any]) -> cogvariants.Dataquery:
    """Targets of a `-- Mixed --` panel: decoded by their own data source type."""
    if data.get("datasource", {}).get("type") == "influxdb":
        return InfluxQLQuery.from_json(data)
    if data.get("queryType") == "snapshot":
        return SnapshotQuery.from_json(data)
    return cogruntime.UnknownDataquery(data)


cogruntime.register_dataquery_variant(cogruntime.DataqueryConfig("influxdb", InfluxQLQuery.from_json))
cogruntime.register_dataquery_variant(cogruntime.DataqueryConfig("datasource", _mixed_from_json))


class Snapshot(cogbuilder.Builder[SnapshotQuery]):
    def __init__(self, ref_id: str, columns: dict[str, tuple[str, list]]) -> None:
        frame = {"schema": {"refId": ref_id, "fields": [{"name": n, "type": t} for n, (t, _) in columns.items()]},
                 "data": {"values": [v for _, v in columns.values()]}}
        self._q = SnapshotQuery(ref_id, frame)

    def build(self) -> SnapshotQuery:
        return self._q


class InfluxAnnotation(cogbuilder.Builder[dm.AnnotationQuery]):
    """An InfluxQL annotation query (the SDK's AnnotationQuery has no InfluxDB fields)."""

    class Model(dm.AnnotationQuery):
        def __init__(self, name: str, query: str, text_column: str, tags_column: str, colour: str) -> None:
            super().__init__(name=name, datasource=DATASOURCE, enable=True, hide=False, icon_color=colour)
            self.query, self.text_column, self.tags_column = query, text_column, tags_column

        def to_json(self) -> dict[str, object]:
            out = super().to_json()
            out.update({"query": self.query, "textColumn": self.text_column, "tagsColumn": self.tags_column,
                        "target": {"refId": "Anno", "query": self.query, "rawQuery": True, "resultFormat": "table"}})
            return out

    def __init__(self, name: str, query: str, text_column: str, tags_column: str, colour: str = "red") -> None:
        self._a = self.Model(name, query, text_column, tags_column, colour)

    def build(self) -> dm.AnnotationQuery:
        return self._a


# ------------------------------------------------------------------------------ helpers

def q_ident(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def tag_filter(*tags: str) -> str:
    """`"area" =~ /^$area$/ AND ...`: matches Grafana's regex rendering of (multi-value) variables."""
    return " AND ".join(f'{q_ident(t)} =~ /^${t}$/' for t in tags)


def thresholds(steps: Iterable[tuple[float | None, str]]) -> dash.ThresholdsConfig:
    return (dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def level_mappings(no_data: bool = False) -> list[dm.ValueMapping]:
    """0/1/2 as ok/warning/critical; with `no_data`, a missing level (a silent sensor) is grey."""
    maps: list[dm.ValueMapping] = [dm.ValueMap(options={
        "0": dm.ValueMappingResult(text="ổn / ok", color="green", index=0),
        "1": dm.ValueMappingResult(text="cảnh báo / warning", color="orange", index=1),
        "2": dm.ValueMappingResult(text="nguy hại / critical", color="red", index=2)})]
    if no_data:
        maps.append(dm.SpecialValueMap(options=dm.DashboardSpecialValueMapOptions(
            match=dm.SpecialValueMatch.NULL_AND_NAN,
            result=dm.ValueMappingResult(text="không có dữ liệu / no data", color="text", index=3))))
    return maps


def rule_for(settings: Settings, domain: str, metric: str) -> ThresholdRule | None:
    for rule in settings.detectors.thresholds:
        if rule.metric == metric and rule.domain in (None, domain):
            return rule
    return None


def stat_panel(title: str) -> stat.Panel:
    return (stat.Panel().title(title).datasource(DATASOURCE)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE))


def table_panel(title: str, datasource: dm.DataSourceRef = DATASOURCE) -> table.Panel:
    return table.Panel().title(title).datasource(datasource).show_header(True)


def timeseries_panel(title: str, targets: list[InfluxQL], unit: str | None = None, w: int = 12, h: int = 8,
                     description: str | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).datasource(DATASOURCE).span(w).height(h)
         .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                 .placement(common.LegendPlacement.BOTTOM).show_legend(True))
         .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)))
    for t in targets:
        p = p.with_target(t)
    if unit:
        p = p.unit(unit)
    if description:
        p = p.description(description)
    return p


def counter_rate(field_name: str, alias: str, per: str = "1s", where: str = "") -> InfluxQL:
    """Rate of a cumulative `citywatch` counter (restarts reset counters: non_negative_derivative)."""
    extra = f" AND {where}" if where else ""
    return InfluxQL(f'SELECT non_negative_derivative(max({q_ident(field_name)}), {per}) AS {q_ident(alias)} '
                    f'FROM "citywatch" WHERE $timeFilter{extra} GROUP BY time($__interval), "client_id" fill(null)',
                    alias=f"{alias} ($tag_client_id)")


# ------------------------------------------------------------------------------ boards

@dataclass
class Section:
    """A titled row of panels; a board is a list of sections (index panels come as new sections)."""

    title: str
    panels: list[cogbuilder.Builder] = field(default_factory=list)
    collapsed: bool = False


@dataclass
class Board:
    uid: str
    title: str
    folder: str
    filename: str
    description: str
    sections: list[Section]
    variables_from: str | None = None  # measurement for the area/sensor variables
    annotations: list[InfluxAnnotation] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    time_from: str = "now-6h"
    refresh: str = "1m"

    def build(self) -> dict[str, Any]:
        b = (dash.Dashboard(self.title).uid(self.uid).description(self.description)
             .tags(["citywatch", *self.tags]).timezone("browser").time(self.time_from, "now").refresh(self.refresh)
             .tooltip(dm.DashboardCursorSync.CROSSHAIR).editable())
        b = b.link(dash.DashboardLink("citywatch").type(dm.DashboardLinkType.DASHBOARDS).tags(["citywatch"])
                   .as_dropdown(True).include_vars(False).keep_time(True))
        if self.variables_from:
            for v in variables(self.variables_from):
                b = b.with_variable(v)
        if self.annotations:
            b = b.annotations([a for a in self.annotations])
        for section in self.sections:
            b = b.with_row(dash.Row(section.title).collapsed(section.collapsed))
            for p in section.panels:
                b = b.with_panel(p)
        return json.loads(json.dumps(b.build(), cls=JSONEncoder))


def variables(measurement: str) -> list[dash.QueryVariable]:
    m = q_ident(measurement)
    area = (dash.QueryVariable("area").label("Phường / Area").datasource(DATASOURCE)
            .query(f'SHOW TAG VALUES FROM {m} WITH KEY = "area"')
            .multi(True).include_all(True).refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .current(dm.VariableOption(selected=True, text="All", value="$__all")))
    sensor = (dash.QueryVariable("sensor").label("Cảm biến / Sensor").datasource(DATASOURCE)
              .query(f'SHOW TAG VALUES FROM {m} WITH KEY = "sensor" WHERE {tag_filter("area")}')
              .multi(True).include_all(True).refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.ALPHABETICAL_ASC)
              .current(dm.VariableOption(selected=True, text="All", value="$__all")))
    return [area, sensor]


def sensors_frame(registry: Registry, ref_id: str) -> Snapshot:
    sensors = sorted(registry.sensors.values(), key=lambda s: s.id)
    return Snapshot(ref_id, {
        "sensor": ("string", [s.id for s in sensors]),
        "name": ("string", [s.name or s.id for s in sensors]),
        "domain": ("string", [s.domain for s in sensors]),
        "area": ("string", [s.area for s in sensors]),
        "latitude": ("number", [s.lat for s in sensors]),
        "longitude": ("number", [s.lon for s in sensors]),
        "expected_interval_s": ("number", [float(s.interval or 0) for s in sensors]),
    })


def overview_board(settings: Settings, registry: Registry) -> Board:
    sensors = list(registry.sensors.values())
    lat = round(sum(s.lat for s in sensors) / len(sensors), 4)
    lon = round(sum(s.lon for s in sensors) / len(sensors), 4)
    status = InfluxQL(f'SELECT max("level") AS "level" FROM "scores" WHERE time > now() - {STATUS_WINDOW} '
                      f'GROUP BY "sensor"', ref_id="A", fmt="table")
    marker_layer = common.MapLayerOptions(
        type_val="markers", name="Cảm biến / Sensors", tooltip=True,
        location=common.FrameGeometrySource(mode=common.FrameGeometrySourceMode.COORDS, latitude="latitude",
                                            longitude="longitude"),
        config={"showLegend": True, "style": {
            "color": {"field": "level", "fixed": "text"}, "size": {"fixed": 7},
            "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"}, "opacity": 0.8}})
    class _Layer(cogbuilder.Builder[common.MapLayerOptions]):
        def build(self) -> common.MapLayerOptions:
            return marker_layer
    basemap = common.MapLayerOptions(type_val="default", name="Bản đồ nền / Basemap")
    class _Base(cogbuilder.Builder[common.MapLayerOptions]):
        def build(self) -> common.MapLayerOptions:
            return basemap
    the_map = (geomap.Panel().title("Trạng thái cảm biến / Sensor status").datasource(MIXED_DS).span(14).height(16)
               .description(f"Every sensor of the registry, coloured by its highest detector level over the last "
                            f"{STATUS_WINDOW} (scores): green ok, orange warning, red critical, grey no data.")
               .with_target(status).with_target(sensors_frame(registry, "B"))
               .with_transformation(dm.DataTransformerConfig(id_val="joinByField",
                                                             options={"byField": "sensor", "mode": "outer"}))
               .thresholds(thresholds(LEVEL_COLOURS)).color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
               .mappings(level_mappings(no_data=True)).no_value("không có dữ liệu / no data")
               .view(geomap.MapViewConfig().id("coords").lat(lat).lon(lon).zoom(12))
               .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
               .basemap(_Base()).layers([_Layer()]).tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS)))
    alerts = active_alerts_panel().span(10).height(16)
    rate = timeseries_panel("Số đo mỗi giây / Readings per second",
                            [counter_rate("readings_accepted", "readings/s")], "reqps", w=12, h=7)
    levels_now = (stat_panel("Cảnh báo đang hoạt động / Active alerts").span(12).height(7)
                  .time_from(ACTIVE_ALERTS_WINDOW)
                  .with_target(InfluxQL(active_alerts_query("count"), fmt="table"))
                  .thresholds(thresholds([(None, "green"), (1, "red")])).no_value("0"))
    return Board("cw-overview", "Tổng quan thành phố / City overview", FOLDER_ENVIRONMENT, "city-overview.json",
                 "Wall board: where in Biên Hòa something is wrong right now.",
                 [Section("Thành phố / City", [the_map, alerts]), Section("Luồng dữ liệu / Data flow", [levels_now, rate])],
                 tags=["overview"], time_from="now-6h", refresh="30s")


def active_alerts_query(kind: str = "table") -> str:
    """Latest state change per sensor/metric/detector whose level is not ok (InfluxQL has no HAVING:
    a subquery takes the last state, the outer query keeps the non-ok ones)."""
    inner = ('SELECT last("level_code") AS "level_code", last("value") AS "value", last("threshold") AS "threshold", '
             'last("reason") AS "reason" FROM "alerts" WHERE $timeFilter '
             'GROUP BY "sensor", "metric", "detector", "domain", "area"')
    if kind == "count":
        return f'SELECT count("level_code") AS "active" FROM ({inner}) WHERE "level_code" > 0'
    return (f'SELECT "sensor", "area", "domain", "metric", "detector", "level_code", "value", "threshold", "reason" '
            f'FROM ({inner}) WHERE "level_code" > 0')


def active_alerts_panel() -> table.Panel:
    return (table_panel("Cảnh báo đang hoạt động / Active alerts")
            .description(f"Latest alert state per sensor, metric and detector over the last {ACTIVE_ALERTS_WINDOW}, "
                         "when it is not ok.")
            .time_from(ACTIVE_ALERTS_WINDOW)
            .with_target(InfluxQL(active_alerts_query(), fmt="table"))
            # the time of an aggregate over several fields is the start of the range: not shown
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}}))
            .override_by_name("level_code", [dm.DynamicConfigValue(id_val="mappings", value=level_mappings()),
                                             dm.DynamicConfigValue(id_val="custom.cellOptions",
                                                                   value={"type": "color-background"}),
                                             dm.DynamicConfigValue(id_val="displayName", value="Mức / Level")])
            .thresholds(thresholds(LEVEL_COLOURS)))


def domain_board(settings: Settings, registry: Registry, domain: str, uid: str, filename: str,
                 metrics: list[str] | None = None, description: str = "") -> Board:
    sensors = registry.by_domain(domain)
    units: dict[str, str] = {}
    for s in sensors:
        for m, spec in s.metrics.items():
            units.setdefault(m, spec.unit)
    wanted = [m for m in (metrics or units) if m in units]
    panels: list[cogbuilder.Builder] = []
    for metric in wanted:
        agg = "sum" if metric in SUM_METRICS else "mean"
        query = (f'SELECT {agg}({q_ident(metric)}) AS {q_ident(metric)} FROM {q_ident(domain)} '
                 f'WHERE {tag_filter("area", "sensor")} AND $timeFilter '
                 f'GROUP BY time($__interval), "sensor" fill(null)')
        title = METRIC_TITLES.get(metric, metric)
        rule = rule_for(settings, domain, metric)
        desc = f"{agg} per interval of `{metric}` ({units[metric]}) per sensor."
        p = timeseries_panel(title, [InfluxQL(query, alias="$tag_sensor")], GRAFANA_UNITS.get(units[metric]), w=12, h=8)
        if rule is not None:
            steps: list[tuple[float | None, str]] = [(None, "green")]
            if rule.warn is not None:
                steps.append((rule.warn, "orange"))
            if rule.crit is not None:
                steps.append((rule.crit, "red"))
            desc += (f" Lines: warning {rule.warn}, critical {rule.crit}"
                     + (f" ({rule.source})" if rule.source else "") + ".")
            p = (p.thresholds(thresholds(steps))
                 .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
        if metric in SUM_METRICS:
            p = p.draw_style(common.GraphDrawStyle.BARS)
        panels.append(p.description(desc))
    status = timeseries_panel(
        "Mức phát hiện / Detector level",
        [InfluxQL(f'SELECT max("level") AS "level" FROM "scores" WHERE "domain" = \'{domain}\' AND '
                  f'{tag_filter("area", "sensor")} AND $timeFilter GROUP BY time($__interval), "sensor", "metric" fill(none)',
                  alias="$tag_sensor $tag_metric")], w=24, h=6,
        description="Highest detector level per sensor and metric: 0 ok, 1 warning, 2 critical.")
    status = status.min(0).max(2).thresholds(thresholds(LEVEL_COLOURS))
    return Board(uid, DOMAIN_TITLES[domain], FOLDER_ENVIRONMENT, filename, description,
                 [Section("Số đo / Readings", panels), Section("Phát hiện / Detection", [status])],
                 variables_from=domain, tags=[domain],
                 annotations=[alert_annotation(domain)] if domain == "air" else [])


def alert_annotation(domain: str | None = None) -> InfluxAnnotation:
    where = f' AND "domain" = \'{domain}\'' if domain else ""
    return InfluxAnnotation(
        "Cảnh báo / Alerts",
        f'SELECT "reason", "sensor", "metric", "level" FROM "alerts" WHERE $timeFilter{where}',
        text_column="reason", tags_column="sensor,metric,level")


def sensor_health_board(settings: Settings, registry: Registry) -> Board:
    last_seen = (table_panel("Lần cuối nhận dữ liệu / Last seen per sensor", MIXED_DS)
                 .span(24).height(14)
                 .description("Newest reading per sensor (from the domain measurements) and its device state from the "
                              "latest no_data alert (reporting, late, offline; since when), next to the registry's "
                              "expected reporting interval. A sensor that has not reported has no last-seen time.")
                 .with_target(InfluxQL(last_seen_query(registry), fmt="table"))
                 .with_target(InfluxQL(f'SELECT last("level_code") AS "no_data" FROM "alerts" WHERE "detector" = '
                                       f'\'no_data\' AND $timeFilter AND {tag_filter("area", "sensor")} GROUP BY "sensor"',
                                       ref_id="B", fmt="table"))
                 .with_target(sensors_frame(registry, "C"))
                 .with_transformation(dm.DataTransformerConfig(id_val="joinByField",
                                                               options={"byField": "sensor", "mode": "outer"}))
                 # the joined frames' time columns: the reading's (Time 1), the no_data state change's (Time 2)
                 .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                     "excludeByName": {"latitude": True, "longitude": True, "seen": True},
                     "renameByName": {"Time": LAST_SEEN, "Time 1": LAST_SEEN, "Time 2": "Trạng thái từ / State since",
                                      "no_data": "Trạng thái / Device state",
                                      "expected_interval_s": "Chu kỳ / Expected interval"}}))
                 .override_by_name(LAST_SEEN, [dm.DynamicConfigValue(id_val="unit", value="dateTimeFromNow")])
                 .override_by_name("Trạng thái từ / State since", [dm.DynamicConfigValue(id_val="unit",
                                                                                        value="dateTimeFromNow")])
                 .override_by_name("Trạng thái / Device state", [
                     dm.DynamicConfigValue(id_val="mappings", value=device_state_mappings()),
                     dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})])
                 .override_by_name("Chu kỳ / Expected interval", [dm.DynamicConfigValue(id_val="unit", value="s")]))
    reporting = (stat_panel(f"Cảm biến báo cáo (15 phút) / Sensors reporting (15 min) of {len(registry.sensors)}").span(8).height(6).time_from("15m")
                 .with_target(InfluxQL('SELECT count("level") AS "sensors" FROM (SELECT last("level") AS "level" '
                                       'FROM "scores" WHERE $timeFilter GROUP BY "sensor")', fmt="table"))
                 .thresholds(thresholds([(None, "red"), (0.9 * len(registry.sensors), "green")])))
    rejected = timeseries_panel(
        "Số đo bị từ chối theo lý do / Rejected readings by reason",
        [InfluxQL('SELECT non_negative_difference(max(/^rejected_/)) FROM "citywatch" WHERE $timeFilter '
                  'GROUP BY time($__interval) fill(none)', alias="$col")], "short", w=16, h=6,
        description="Increase per interval of the engine's rejected_<reason> counters (dead-lettered input).")
    rejected = rejected.draw_style(common.GraphDrawStyle.BARS)
    radio = (table_panel("Sóng và pin thiết bị / Device radio and battery").span(24).height(8)
             .description("Latest radio and battery report of each device that sends one (LoRaWAN gateways' best "
                          "rssi/snr, Wi-Fi signal, Zigbee link quality, battery % and voltage), from the "
                          "sensor_health measurement the device-family sources write.")
             .with_target(InfluxQL('SELECT last("rssi") AS "rssi_dbm", last("snr") AS "snr_db", '
                                   'last("battery") AS "battery_pct", last("battery_voltage") AS "battery_v", '
                                   'last("linkquality") AS "linkquality" FROM "sensor_health" WHERE $timeFilter AND '
                                   f'{tag_filter("area", "sensor")} GROUP BY "sensor", "family"', fmt="table")))
    return Board("cw-sensor-health", "Tình trạng cảm biến / Sensor health", FOLDER_OPERATIONS, "sensor-health.json",
                 "Which devices are silent or sending bad data, and why a reading was flagged.",
                 [Section("Cảm biến / Sensors", [reporting, rejected, last_seen, radio]),
                  Section("Chất lượng dữ liệu / Data quality", data_quality_panels()),
                  Section("Vì sao bị đánh dấu / Why flagged", [why_flagged_panel()])],
                 variables_from="scores", tags=["operations"], time_from="now-24h")


def alerts_board(settings: Settings, registry: Registry) -> Board:
    history = (table_panel("Lịch sử cảnh báo / Alert history").span(24).height(14)
               .with_target(InfluxQL('SELECT "sensor", "area", "domain", "metric", "detector", "level", '
                                     '"previous_level", "value", "threshold", "score", "reason" FROM "alerts" '
                                     f'WHERE $timeFilter AND {tag_filter("area", "sensor")} ORDER BY time DESC',
                                     fmt="table"))
               .override_by_name("level", [dm.DynamicConfigValue(id_val="custom.cellOptions",
                                                                 value={"type": "color-text"}),
                                           dm.DynamicConfigValue(id_val="mappings", value=[dm.ValueMap(options={
                                               "ok": dm.ValueMappingResult(color="green", index=0),
                                               "warning": dm.ValueMappingResult(color="orange", index=1),
                                               "critical": dm.ValueMappingResult(color="red", index=2)})])]))
    per_level = timeseries_panel(
        "Số cảnh báo theo mức / Alerts by level",
        [InfluxQL(f'SELECT count("level_code") AS "alerts" FROM "alerts" WHERE $timeFilter AND '
                  f'{tag_filter("area", "sensor")} GROUP BY time($__interval), "level" fill(none)', alias="$tag_level")],
        "short", w=12, h=7).draw_style(common.GraphDrawStyle.BARS)
    per_domain = timeseries_panel(
        "Số cảnh báo theo lĩnh vực / Alerts by domain",
        [InfluxQL(f'SELECT count("level_code") AS "alerts" FROM "alerts" WHERE $timeFilter AND '
                  f'{tag_filter("area", "sensor")} GROUP BY time($__interval), "domain" fill(none)', alias="$tag_domain")],
        "short", w=12, h=7).draw_style(common.GraphDrawStyle.BARS)
    return Board("cw-alerts", "Cảnh báo / Alerts", FOLDER_OPERATIONS, "alerts.json",
                 "Duty officers: every alert state change, with annotations on the time axis.",
                 [Section("Đang hoạt động / Active", [active_alerts_panel().span(24).height(8)]),
                  Section("Lịch sử / History", [per_level, per_domain, history])],
                 variables_from="scores", annotations=[alert_annotation()], tags=["operations"], time_from="now-24h")


def engine_health_board(settings: Settings, registry: Registry) -> Board:
    gauge = lambda f, alias: InfluxQL(  # noqa: E731
        f'SELECT last({q_ident(f)}) AS {q_ident(alias)} FROM "citywatch" WHERE $timeFilter '
        f'GROUP BY time($__interval), "client_id" fill(none)', alias=f"{alias} ($tag_client_id)")
    panels = [
        timeseries_panel("Số đo mỗi giây / Readings per second",
                         [counter_rate("readings_accepted", "accepted"), counter_rate("readings_stored", "stored"),
                          counter_rate("readings_rejected", "rejected")], "reqps"),
        timeseries_panel("Thư lỗi mỗi phút / Dead letters per minute",
                         [counter_rate("deadletters", "dead letters", per="1m")], "short"),
        timeseries_panel("Hàng đợi đĩa / Spool size", [gauge("spool_bytes", "spool")], "bytes"),
        timeseries_panel("Ghi vào spool và phát lại / Spooled and replayed points per second",
                         [counter_rate("spooled_points", "spooled"), counter_rate("replayed_points", "replayed")], "short"),
        timeseries_panel("Độ trễ / Latency p50 (arrival → stored)", [gauge("latency_p50_ms", "p50")], "ms"),
        timeseries_panel("Cảnh báo mỗi phút / Alerts per minute", [counter_rate("alerts", "alerts", per="1m")], "short"),
        timeseries_panel("InfluxDB kết nối / InfluxDB up", [gauge("influx_up", "influx_up")], "bool_yes_no", w=8, h=6),
        timeseries_panel("Hộp thư đến / Inbox (messages)", [gauge("inbox", "inbox")], "short", w=8, h=6),
        timeseries_panel("Lô đang ghi / Pending batches", [gauge("pending_batches", "pending")], "short", w=8, h=6),
    ]
    return Board("cw-engine", "Sức khỏe citywatch / citywatch health", FOLDER_OPERATIONS, "citywatch-health.json",
                 "Engineers: the engine's own counters (measurement citywatch, written every 10 s).",
                 [Section("Động cơ / Engine", panels)], tags=["operations"], time_from="now-6h", refresh="30s")


SectionFactory = Callable[[Settings, Registry], Section]
_EXTRA_SECTIONS: dict[str, list[SectionFactory]] = {}


def register_section(board_uid: str, factory: SectionFactory) -> None:
    """Add a section to a board (e.g. AQI / WQI / fire-danger index panels on cw-air, cw-water,
    cw-forest, or on cw-overview); factories run in registration order, after the board's own."""
    _EXTRA_SECTIONS.setdefault(board_uid, []).append(factory)


def boards(settings: Settings, registry: Registry) -> list[Board]:
    out = _boards(settings, registry)
    for board in out:
        board.sections += [factory(settings, registry) for factory in _EXTRA_SECTIONS.get(board.uid, [])]
    return out


def _boards(settings: Settings, registry: Registry) -> list[Board]:
    out = [overview_board(settings, registry)]
    specs = {
        "air": ("cw-air", "air-quality.json", None,
                "Environmental staff: pollutants per station against the QCVN 05:2023 1-hour limits."),
        "water": ("cw-water", "water-quality.json", ["pH", "dissolvedOxygen", "temperature", "NH4", "turbidity",
                                                     "conductivity"],
                  "Environmental staff: river stations on the Đồng Nai and Cái (lab samples in the index section)."),
        "traffic": ("cw-traffic", "traffic.json", ["intensity", "occupancy", "averageVehicleSpeed"],
                    "Traffic cameras: intensity, occupancy and speed."),
        "forest": ("cw-forest", "forest.json", ["relativeHumidity", "temperature", "precipitation", "windSpeed",
                                                 "soilMoisture"],
                   "Forest stations of Vĩnh Cửu: weather behind fire danger."),
    }
    for domain in DOMAINS:
        if registry.by_domain(domain):
            uid, filename, metrics, desc = specs[domain]
            out.append(domain_board(settings, registry, domain, uid, filename, metrics, desc))
    out += [sensor_health_board(settings, registry), alerts_board(settings, registry),
            engine_health_board(settings, registry)]
    return out


def build_dashboards(settings: Settings, registry: Registry) -> dict[str, dict[str, Any]]:
    """`folder/filename` -> dashboard JSON, ids and grid positions assigned."""
    result = {}
    for board in boards(settings, registry):
        data = board.build()
        layout(data)
        result[f"{board.folder}/{board.filename}"] = data
    return result


def layout(data: dict[str, Any]) -> None:
    """Unique panel ids and a left-to-right, top-to-bottom grid (24 columns)."""
    x = y = row_h = 0
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
        gp = panel.setdefault("gridPos", {})
        w, h = gp.get("w", 12), gp.get("h", 8)
        if panel.get("type") == "row":
            if x:
                y += row_h
            x, row_h = 0, 0
            panel["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            y += 1
            continue
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_h = max(row_h, h)


# ------------------------------------------------------------------------------ air-quality index sections

CURRENT_AQI_WINDOW = "3h"  # an hour's index is written when the hour closes: the newest is 1-2 h old
DAILY_AQI_WINDOW = "7d"
AQI_INDICES = {  # index tag -> (scale, short name)
    "vn_aqi_hourly": (vn_aqi.CATEGORIES, "VN_AQI"),
    "us_aqi": (us_aqi.CATEGORIES, "US AQI"),
    "vn_aqi_daily": (vn_aqi.CATEGORIES, "VN_AQI"),
}
POLLUTANT_NAMES = {"pm25": "PM2.5", "pm10": "PM10", "o3": "O₃", "no2": "NO₂", "so2": "SO₂", "co": "CO"}
NO_DATA_COLOUR = "text"


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def aqi_steps(categories) -> list[tuple[float | None, str]]:
    """Threshold steps at the lower bound of every category, in the official colours (index values are
    integers, rounded half up, so the lower bound is where a category starts)."""
    return [(None if c.number == 1 else float(c.low), hex_colour(c.rgb)) for c in categories]


def category_mappings(categories, no_data: bool = False, labels: bool = True) -> list[dm.ValueMapping]:
    """Category number 1..6 -> "label_vi / label_en" (or the number, next to label columns) in the
    category's colour."""
    maps: list[dm.ValueMapping] = [dm.ValueMap(options={
        str(c.number): dm.ValueMappingResult(text=category_label(c) if labels else str(c.number),
                                             color=hex_colour(c.rgb), index=c.number - 1) for c in categories})]
    if no_data:
        maps.append(dm.SpecialValueMap(options=dm.DashboardSpecialValueMapOptions(
            match=dm.SpecialValueMatch.NULL_AND_NAN,
            result=dm.ValueMappingResult(text="không có dữ liệu / no data", color=NO_DATA_COLOUR, index=len(categories)))))
    return maps


def pollutant_mappings() -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={k: dm.ValueMappingResult(text=v, index=i)
                                 for i, (k, v) in enumerate(POLLUTANT_NAMES.items())})]


def index_stations(registry: Registry) -> list:
    """The air stations that have an index (at least one VN_AQI pollutant), as `AirIndices` picks them."""
    return sorted((s for s in registry.by_domain("air") if set(s.metrics) & set(vn_aqi.POLLUTANTS)),
                  key=lambda s: s.id)


def index_filter(index: str) -> str:
    return f'"index" = \'{index}\''


def forecast_overlay(panel: timeseries.Panel, kind: str, metric: str, ref_id: str = "B") -> timeseries.Panel:
    """Add the newest forecasts of `metric` (median dashed, interval bounds dotted) to a per-sensor panel.

    From the ``forecasts`` measurement under ``horizon = latest``: behind now, what was last forecast
    for each hour; ahead of now (a time range ending after now), the newest forecast path.
    """
    query = (f'SELECT mean("value") AS "forecast", mean("lower") AS "lower", mean("upper") AS "upper" '
             f'FROM "forecasts" WHERE "kind" = \'{kind}\' AND "metric" = \'{metric}\' AND "horizon" = \'latest\' '
             f'AND {tag_filter("area", "sensor")} AND $timeFilter GROUP BY time($__interval), "sensor" fill(none)')
    return (panel.with_target(InfluxQL(query, ref_id=ref_id, alias="$tag_sensor $col"))
            .override_by_query(ref_id, [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=1)])
            .override_by_regexp(r".* (lower|upper)$", [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dot", "dash": [0, 10]}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]))


def hourly_aqi_panel(index: str, title: str, description: str) -> timeseries.Panel:
    categories, short = AQI_INDICES[index]
    query = (f'SELECT max("value") AS {q_ident(short)} FROM "indices" WHERE {index_filter(index)} AND '
             f'{tag_filter("area", "sensor")} AND $timeFilter GROUP BY time($__interval), "sensor" fill(null)')
    bounds = ", ".join(f"{c.low:g}–{c.high:g} {c.label_en}" for c in categories)
    panel = (timeseries_panel(title, [InfluxQL(query, alias="$tag_sensor")], "none", w=12, h=9,
                              description=f"{description} Per station, hourly (the worst hour of a longer "
                                          f"interval); bands: {bounds}. Dashed: the forecast, dotted: its 80 % "
                                          f"interval (end the time range after now to see ahead).")
             .interval("1h").min(0).decimals(0)
             .thresholds(thresholds(aqi_steps(categories)))
             .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
    return forecast_overlay(panel, "aqi", index)


def _latest(index: str, names: dict[str, str], where: str) -> str:
    cols = ", ".join(f"last({q_ident(f)}) AS {q_ident(alias)}" for f, alias in names.items())
    return f'SELECT {cols} FROM "indices" WHERE {index_filter(index)} AND {where}'


def current_aqi_table() -> table.Panel:
    where = f'{tag_filter("area", "sensor")} AND $timeFilter'
    vn = InfluxQL(_latest("vn_aqi_hourly", {"value": "vn_aqi", "category": "vn_category", "label_vi": "label_vi",
                                            "label_en": "label_en", "dominant": "dominant"}, where)
                  + ' GROUP BY "sensor", "area"', ref_id="A", fmt="table")
    us = InfluxQL(_latest("us_aqi", {"value": "us_aqi", "category": "us_category", "label_vi": "us_label_vi",
                                     "label_en": "us_label_en"}, where)
                  + ' GROUP BY "sensor"', ref_id="B", fmt="table")
    names = {"sensor": "Trạm / Station", "area": "Phường / Area", "vn_aqi": "VN_AQI", "vn_category": "Mức / Category",
             "label_vi": "Đánh giá", "label_en": "Rating", "dominant": "Chất chính / Dominant pollutant",
             "us_aqi": "US AQI", "us_category": "Mức US / US category", "us_label_vi": "Đánh giá US",
             "us_label_en": "US rating"}
    keep = list(names)
    colour_cell = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    p = (table_panel("AQI hiện tại theo trạm / Current AQI by station").span(24).height(11)
         .time_from(CURRENT_AQI_WINDOW)
         .description(f"Latest hourly VN_AQI (Decision 1459/QĐ-TCMT) and US AQI per station over the last "
                      f"{CURRENT_AQI_WINDOW}, with the category, its label and the dominant pollutant.")
         .with_target(vn).with_target(us)
         .with_transformation(dm.DataTransformerConfig(id_val="joinByField",
                                                       options={"byField": "sensor", "mode": "outer"}))
         # keeps only these columns (the Time of each frame is the start of the range: not shown)
         .with_transformation(dm.DataTransformerConfig(id_val="filterFieldsByName", options={"include": {"names": keep}}))
         .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
             "indexByName": {k: i for i, k in enumerate(keep)}, "renameByName": names}))
         .sort_by([common_b.TableSortByFieldState().display_name("VN_AQI").desc(True)]))
    for field_name, categories in (("VN_AQI", vn_aqi.CATEGORIES), ("US AQI", us_aqi.CATEGORIES)):
        p = p.override_by_name(field_name, [colour_cell, dm.DynamicConfigValue(id_val="thresholds", value=dm.ThresholdsConfig(
            mode=dm.ThresholdsMode.ABSOLUTE, steps=[dm.Threshold(value=v, color=c) for v, c in aqi_steps(categories)])),
            dm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"})])
    for field_name, categories in (("Mức / Category", vn_aqi.CATEGORIES), ("Mức US / US category", us_aqi.CATEGORIES)):
        p = p.override_by_name(field_name, [colour_cell, dm.DynamicConfigValue(
            id_val="mappings", value=category_mappings(categories, labels=False))])
    return p.override_by_name(names["dominant"], [dm.DynamicConfigValue(id_val="mappings", value=pollutant_mappings())])


def daily_aqi_table() -> table.Panel:
    query = (f'SELECT "value" AS "vn_aqi", "category" AS "vn_category", "label_vi", "label_en", "dominant" '
             f'FROM "indices" WHERE {index_filter("vn_aqi_daily")} AND {tag_filter("area", "sensor")} AND $timeFilter '
             f'GROUP BY "sensor", "area" ORDER BY time DESC')
    names = {"Time": "Ngày / Day", "sensor": "Trạm / Station", "area": "Phường / Area", "vn_aqi": "VN_AQI ngày / Daily VN_AQI",
             "vn_category": "Mức / Category", "label_vi": "Đánh giá", "label_en": "Rating",
             "dominant": "Chất chính / Dominant pollutant"}
    order = list(names)
    colour_cell = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    return (table_panel("VN_AQI ngày / Daily VN_AQI").span(24).height(10).time_from(DAILY_AQI_WINDOW)
            .description(f"Daily VN_AQI per station over the last {DAILY_AQI_WINDOW}: computed when a local day "
                         "(Asia/Ho_Chi_Minh, UTC+7) has ended, from 24-hour PM means, daily maximum 1-hour gas "
                         "means and 8-hour O₃ means (at least 18 hours of data).")
            .with_target(InfluxQL(query, fmt="table"))
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                "indexByName": {k: i for i, k in enumerate(order)}, "renameByName": names}))
            .sort_by([common_b.TableSortByFieldState().display_name(names["Time"]).desc(True)])
            .override_by_name(names["Time"], [dm.DynamicConfigValue(id_val="unit", value="time:YYYY-MM-DD")])
            .override_by_name(names["vn_aqi"], [colour_cell, dm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"})])
            .override_by_name(names["vn_category"], [colour_cell, dm.DynamicConfigValue(
                id_val="mappings", value=category_mappings(vn_aqi.CATEGORIES, labels=False))])
            .override_by_name(names["dominant"], [dm.DynamicConfigValue(id_val="mappings", value=pollutant_mappings())])
            .thresholds(thresholds(aqi_steps(vn_aqi.CATEGORIES))))


def air_index_section(settings: Settings, registry: Registry) -> Section:
    """Air board: hourly VN_AQI and US AQI per station, the current AQI table, daily VN_AQI."""
    return Section("Chỉ số chất lượng không khí / Air quality index", [
        hourly_aqi_panel("vn_aqi_hourly", "VN_AQI theo giờ / Hourly VN_AQI",
                         "VN_AQI (Decision 1459/QĐ-TCMT, PM by NowCast: at least 2 of the last 3 hours)."),
        hourly_aqi_panel("us_aqi", "US AQI theo giờ / Hourly US AQI", "US EPA AQI (PM by NowCast, 8-hour O₃ and CO)."),
        current_aqi_table(),
        daily_aqi_table(),
    ])


class _Built(cogbuilder.Builder[Any]):
    """A builder for an already built SDK model (map layers)."""

    def __init__(self, model: Any) -> None:
        self._m = model

    def build(self) -> Any:
        return self._m


def category_count_query(categories=vn_aqi.CATEGORIES) -> str:
    """Stations per category of their latest hourly VN_AQI, one column per category (zeros included).
    InfluxQL groups by tags only, so a category (a field) is counted with an indicator per station:
    floor(1 / (1 + (c - k)²)) is 1 when c = k and 0 otherwise."""
    inner = (f'SELECT last("category") AS "c" FROM "indices" WHERE {index_filter("vn_aqi_hourly")} AND '
             f'time > now() - {CURRENT_AQI_WINDOW} GROUP BY "sensor"')
    middle = ", ".join(f'floor(1 / (1 + ("c" - {c.number}) * ("c" - {c.number}))) AS "k{c.number}"' for c in categories)
    outer = ", ".join(f'sum("k{c.number}") AS {q_ident(category_label(c))}' for c in categories)
    return f"SELECT {outer} FROM (SELECT {middle} FROM ({inner}))"


def category_label(c) -> str:
    return f"{c.label_vi} / {c.label_en}"


def station_index_map(stations: list, latest: InfluxQL, name: str, value: str, marker: str, title: str,
                      description: str, categories, category_steps, value_steps,
                      extra: list[tuple[str, list]] = ()) -> geomap.Panel:
    """A Geomap of stations coloured by the category of their latest index (query A), joined with the
    registry's coordinates (a snapshot frame B), the index value written beside each marker."""
    lat = round(sum(s.lat for s in stations) / len(stations), 4)
    lon = round(sum(s.lon for s in stations) / len(stations), 4)
    frame = Snapshot("B", {
        "sensor": ("string", [s.id for s in stations]),
        "name": ("string", [s.name or s.id for s in stations]),
        "area": ("string", [s.area for s in stations]),
        "latitude": ("number", [s.lat for s in stations]),
        "longitude": ("number", [s.lon for s in stations]),
    })
    layer = common.MapLayerOptions(
        type_val="markers", name=name, tooltip=True,
        location=common.FrameGeometrySource(mode=common.FrameGeometrySourceMode.COORDS, latitude="latitude",
                                            longitude="longitude"),
        config={"showLegend": True, "style": {
            "color": {"field": "category", "fixed": NO_DATA_COLOUR}, "size": {"fixed": 10},
            "symbol": {"fixed": f"img/icons/marker/{marker}.svg", "mode": "fixed"}, "opacity": 0.9,
            "text": {"field": value, "fixed": "", "mode": "field"},
            "textConfig": {"fontSize": 10, "offsetY": -14, "textAlign": "center", "textBaseline": "bottom"}}})
    panel = (geomap.Panel().title(title).datasource(MIXED_DS).span(14).height(14).description(description)
             .with_target(latest).with_target(frame)
             .with_transformation(dm.DataTransformerConfig(id_val="joinByField",
                                                           options={"byField": "sensor", "mode": "outer"}))
             .thresholds(thresholds(category_steps)).color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
             .no_value("không có dữ liệu / no data")
             .override_by_name("category", [dm.DynamicConfigValue(id_val="mappings", value=category_mappings(
                 categories, no_data=True))])
             .override_by_name(value, [dm.DynamicConfigValue(id_val="thresholds", value=dm.ThresholdsConfig(
                 mode=dm.ThresholdsMode.ABSOLUTE, steps=[dm.Threshold(value=v, color=c) for v, c in value_steps]))]))
    for field_name, properties in extra:
        panel = panel.override_by_name(field_name, properties)
    return (panel.view(geomap.MapViewConfig().id("coords").lat(lat).lon(lon).zoom(12))
            .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
            .basemap(_Built(common.MapLayerOptions(type_val="default", name="Bản đồ nền / Basemap")))
            .layers([_Built(layer)]).tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS)))


def stations_per_category(title: str, description: str, query: str, n_stations: int, categories) -> bargauge.Panel:
    """A bar gauge of how many stations are in each category of an index, in the category's colour."""
    panel = (bargauge.Panel().title(title).datasource(DATASOURCE).span(10).height(14).description(description)
             .with_target(InfluxQL(query, fmt="table"))
             .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .orientation(common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.BASIC)
             .show_unfilled(True).min(0).max(n_stations).decimals(0).unit("short").no_value("0"))
    for c in categories:
        panel = panel.override_by_name(category_label(c), [dm.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": hex_colour(c.rgb)})])
    return panel


def overview_aqi_section(settings: Settings, registry: Registry) -> Section:
    """Overview: a map of the air stations coloured by their latest VN_AQI category, stations per category."""
    stations = index_stations(registry)
    latest = InfluxQL(_latest("vn_aqi_hourly", {"value": "vn_aqi", "category": "category", "label_vi": "label_vi",
                                                "label_en": "label_en", "dominant": "dominant"},
                              f"time > now() - {CURRENT_AQI_WINDOW}") + ' GROUP BY "sensor"', ref_id="A", fmt="table")
    vn_steps = [(None if c.number == 1 else float(c.number), hex_colour(c.rgb)) for c in vn_aqi.CATEGORIES]
    the_map = station_index_map(
        stations, latest, "VN_AQI", "vn_aqi", "circle", "VN_AQI hiện tại / Current VN_AQI",
        f"Air stations coloured by the category of their latest hourly VN_AQI (last {CURRENT_AQI_WINDOW}) in the "
        "official colours; grey: no index (fewer than 2 of the last 3 hours of PM data).",
        vn_aqi.CATEGORIES, vn_steps, aqi_steps(vn_aqi.CATEGORIES),
        extra=[("dominant", [dm.DynamicConfigValue(id_val="mappings", value=pollutant_mappings())])])
    per_category = stations_per_category(
        "Số trạm theo mức VN_AQI / Stations per VN_AQI category",
        f"Air stations by the category of their latest hourly VN_AQI (last {CURRENT_AQI_WINDOW}), "
        f"of {len(stations)} stations.", category_count_query(), len(stations), vn_aqi.CATEGORIES)
    return Section("Chỉ số chất lượng không khí / Air quality index", [the_map, per_category])


register_section("cw-air", air_index_section)
register_section("cw-overview", overview_aqi_section)


# ------------------------------------------------------------------------------ fire danger and traffic sections

# Neither the fire danger levels (QĐ 127/2000/QĐ-BNN-KL) nor the levels of service have official
# colours: a green -> red ramp of Grafana's named colours.
FIRE_COLOURS = ("green", "yellow", "orange", "red", "dark-red")  # levels I..V
LOS_COLOURS = ("dark-green", "green", "yellow", "orange", "red", "dark-red")  # A..F
FIRE_WINDOW = "3d"  # a local day's level is written when the next day starts: the newest is 1-2 days old
FIRE_HISTORY = "30d"
DAILY_LOCAL = "time(1d, 17h)"  # InfluxQL day buckets starting at local midnight (UTC+7 = 17:00 UTC)
CURRENT_LOS_WINDOW = "3h"  # an hour's LOS is written when the hour closes: the newest is 1-2 h old
LOS_INDEX = "traffic_los"
FIRE_INDEX = "fire_danger"
TIMELINE_LEGEND = (common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                   .placement(common.LegendPlacement.BOTTOM).show_legend(True))


def fire_label(level) -> str:
    return f"Cấp {level.roman} / Level {level.roman}"


def fire_mappings(labels: bool = True) -> list[dm.ValueMapping]:
    """Level 1..5 -> roman numeral (with the labels) in the ramp colour."""
    return [dm.ValueMap(options={str(lv.number): dm.ValueMappingResult(
        text=f"{lv.roman}: {lv.label_vi} / {lv.label_en}" if labels else lv.roman, color=colour, index=lv.number - 1)
        for lv, colour in zip(fire_danger.LEVELS, FIRE_COLOURS)})]


def fire_level_steps() -> list[tuple[float | None, str]]:
    return [(None if i == 0 else float(i + 1), c) for i, c in enumerate(FIRE_COLOURS)]


def fire_p_steps(bounds) -> list[tuple[float | None, str]]:
    """P thresholds at the configured upper bounds of levels I..IV (a level starts just above its bound)."""
    return [(None, FIRE_COLOURS[0])] + [(float(b), c) for b, c in zip(bounds, FIRE_COLOURS[1:])]


def los_mappings() -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={str(i + 1): dm.ValueMappingResult(text=letter, color=colour, index=i)
                                 for i, (letter, colour) in enumerate(zip(traffic.LOS_LETTERS, LOS_COLOURS))})]


def los_level_steps() -> list[tuple[float | None, str]]:
    return [(None if i == 0 else float(i + 1), c) for i, c in enumerate(LOS_COLOURS)]


def speed_ratio_steps() -> list[tuple[float | None, str]]:
    """Speed ratio (% of free flow) bands of the urban LOS table: F <= 30 < E <= 40 < ... < A."""
    bounds = traffic.LOS_TABLES["urban_speed_pct"].bounds
    return [(None, LOS_COLOURS[5])] + [(float(b), LOS_COLOURS[4 - i]) for i, b in enumerate(reversed(bounds))]


def fire_section(settings: Settings, registry: Registry) -> Section:
    """Forest board: daily fire danger level per station (timeline and table) and the Nesterov index P."""
    bounds = settings.indices.fire_level_bounds
    where = f'{index_filter(FIRE_INDEX)} AND {tag_filter("area", "sensor")} AND $timeFilter'
    bands = ", ".join(f"{lv.roman} ≤ {b:g}" for lv, b in zip(fire_danger.LEVELS, bounds)) + f", V > {bounds[-1]:g}"
    timeline = (statetimeline.Panel().title("Cấp nguy cơ cháy theo ngày / Daily fire danger level")
                .datasource(DATASOURCE).span(24).height(8).time_from(FIRE_HISTORY)
                .description("Fire danger level I..V per forest station and local day (Asia/Ho_Chi_Minh), from the "
                             "Vietnamese Nesterov index; written when the day has ended. No official colours "
                             "exist for the levels: green (I) to dark red (V).")
                .with_target(InfluxQL(f'SELECT last("category") AS "level" FROM "indices" WHERE {where} '
                                      f'GROUP BY {DAILY_LOCAL}, "sensor" fill(none)', alias="$tag_sensor"))
                .show_value(common.VisibilityMode.AUTO).legend(TIMELINE_LEGEND).merge_values(False).row_height(0.8)
                .thresholds(thresholds(fire_level_steps()))
                .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
                .mappings(fire_mappings(labels=False)))
    nesterov = (timeseries_panel("Chỉ số Nesterov P / Nesterov index P",
                                 [InfluxQL(f'SELECT last("value") AS "P" FROM "indices" WHERE {where} '
                                           f'GROUP BY {DAILY_LOCAL}, "sensor" fill(none)', alias="$tag_sensor")],
                                 "none", w=12, h=9,
                                 description="Nesterov index P (sum of t13 × d13 since the last rain of "
                                             f"{settings.indices.fire_rain_reset_mm:g} mm or more) per station and "
                                             f"local day; level bounds (config): {bands}.")
                .time_from(FIRE_HISTORY).min(0).decimals(0)
                .draw_style(common.GraphDrawStyle.LINE).show_points(common.VisibilityMode.ALWAYS)
                .thresholds(thresholds(fire_p_steps(bounds)))
                .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
    names = {"Time": "Ngày / Day", "sensor": "Trạm / Station", "area": "Phường / Area", "p": "Chỉ số P / Index P",
             "level": "Cấp / Level", "label_vi": "Đánh giá", "label_en": "Rating"}
    colour_cell = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    daily = (table_panel("Nguy cơ cháy theo trạm / Fire danger by station").span(12).height(9).time_from("7d")
             .description("Daily fire danger per forest station over the last 7 days, newest first.")
             .with_target(InfluxQL(f'SELECT "value" AS "p", "category" AS "level", "label_vi", "label_en" '
                                   f'FROM "indices" WHERE {where} GROUP BY "sensor", "area" ORDER BY time DESC',
                                   fmt="table"))
             .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                 "indexByName": {k: i for i, k in enumerate(names)}, "renameByName": names}))
             .sort_by([common_b.TableSortByFieldState().display_name(names["Time"]).desc(True)])
             .override_by_name(names["Time"], [dm.DynamicConfigValue(id_val="unit", value="time:YYYY-MM-DD")])
             .override_by_name(names["p"], [dm.DynamicConfigValue(id_val="decimals", value=0)])
             .override_by_name(names["level"], [colour_cell, dm.DynamicConfigValue(id_val="mappings",
                                                                                    value=fire_mappings(labels=False))])
             .thresholds(thresholds(fire_level_steps())))
    return Section("Nguy cơ cháy rừng / Fire danger", [timeline, nesterov, daily])


def los_section(settings: Settings, registry: Registry) -> Section:
    """Traffic board: hourly level of service per camera, speed ratio, travel-time index, flow and PCU."""
    where = f'{index_filter(LOS_INDEX)} AND {tag_filter("area", "sensor")} AND $timeFilter'
    hourly = lambda expr, alias: InfluxQL(  # noqa: E731
        f'SELECT {expr} AS {q_ident(alias)} FROM "indices" WHERE {where} GROUP BY time($__interval), "sensor" fill(none)',
        alias="$tag_sensor")
    table_los = traffic.LOS_TABLES["urban_speed_pct"].bounds
    bands = ", ".join(f"{a} > {b:g} %" for a, b in zip(traffic.LOS_LETTERS, table_los)) + f", F ≤ {table_los[-1]:g} %"
    free = ", ".join(f"{k} {v:g}" for k, v in settings.indices.traffic_free_flow_kmh.items())
    timeline = (statetimeline.Panel().title("Mức phục vụ theo giờ / Hourly level of service")
                .datasource(DATASOURCE).span(24).height(14).interval("1h")
                .description(f"Level of service A..F per camera and hour from the speed ratio ({bands}); "
                             "no official colours: dark green (A) to dark red (F). The worst hour of a longer interval.")
                .with_target(hourly('max("category")', "LOS"))
                .show_value(common.VisibilityMode.AUTO).legend(TIMELINE_LEGEND).merge_values(True).row_height(0.8)
                .thresholds(thresholds(los_level_steps()))
                .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
                .mappings(los_mappings()))
    ratio = (timeseries_panel("Tỷ lệ tốc độ / Speed ratio (% of free flow)", [hourly('min("value")', "speed_ratio")],
                              "percent", w=12, h=9,
                              description=f"Hourly mean speed over the free-flow speed by road class ({free} km/h); "
                                          f"bands: {bands}. The worst hour of a longer interval.")
             .interval("1h").min(0).decimals(0).thresholds(thresholds(speed_ratio_steps()))
             .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
    tti = (timeseries_panel("Chỉ số thời gian đi lại / Travel-time index", [hourly('max("tti")', "tti")], "none", w=12, h=9,
                            description="Actual over free-flow travel time (free-flow speed / mean speed): 1 = free "
                                        "flow, 2 = twice as long. The worst hour of a longer interval.")
           .interval("1h").min(1).decimals(2))
    flow = forecast_overlay(
        timeseries_panel("Lưu lượng / Flow (veh/h)", [hourly('mean("flow_veh_h")', "veh/h")], "short", w=12, h=9,
                         description="Vehicles per hour per camera (sum of the counts in the hour). Dashed: the "
                                     "forecast, dotted: its 80 % interval (end the time range after now to see ahead).")
        .interval("1h").min(0).decimals(0), "traffic", "flow_veh_h")
    pcu = (timeseries_panel("Lưu lượng quy đổi / Flow (PCU/h)", [hourly('mean("pcu_h")', "PCU/h")], "short", w=12, h=9,
                            description="Passenger car units per hour: vehicles per hour × the mean PCU factor of "
                                        "the configured vehicle mix (TCVN 4054:2005).")
           .interval("1h").min(0).decimals(0))
    names = {"sensor": "Camera", "area": "Phường / Area", "los": "Mức / LOS", "ratio": "Tỷ lệ tốc độ / Speed ratio",
             "tti": "TTI", "flow": "Xe/giờ / veh/h", "pcu": "PCU/giờ / PCU/h"}
    colour_cell = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    latest = (table_panel("Mức phục vụ hiện tại / Current level of service").span(24).height(10)
              .time_from(CURRENT_LOS_WINDOW)
              .description(f"Latest closed hour per camera over the last {CURRENT_LOS_WINDOW}, worst first.")
              .with_target(InfluxQL(_latest(LOS_INDEX, {"category": "los", "value": "ratio", "tti": "tti",
                                                        "flow_veh_h": "flow", "pcu_h": "pcu"},
                                            f'{tag_filter("area", "sensor")} AND $timeFilter')
                                    + ' GROUP BY "sensor", "area"', fmt="table"))
              .with_transformation(dm.DataTransformerConfig(id_val="filterFieldsByName",
                                                            options={"include": {"names": list(names)}}))
              .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                  "indexByName": {k: i for i, k in enumerate(names)}, "renameByName": names}))
              .sort_by([common_b.TableSortByFieldState().display_name(names["los"]).desc(True)])
              .override_by_name(names["los"], [colour_cell, dm.DynamicConfigValue(id_val="mappings", value=los_mappings())])
              .override_by_name(names["ratio"], [dm.DynamicConfigValue(id_val="unit", value="percent"),
                                                 dm.DynamicConfigValue(id_val="decimals", value=0)])
              .override_by_name(names["tti"], [dm.DynamicConfigValue(id_val="decimals", value=2)])
              .override_by_name(names["flow"], [dm.DynamicConfigValue(id_val="decimals", value=0)])
              .override_by_name(names["pcu"], [dm.DynamicConfigValue(id_val="decimals", value=0)])
              .thresholds(thresholds(los_level_steps())))
    return Section("Mức phục vụ / Level of service", [timeline, ratio, tti, flow, pcu, latest])


def level_count_query(index: str, numbers: list[int], labels: list[str], window: str) -> str:
    """Stations per level of their latest `index` value, one column per level (zeros included); the
    indicator trick of `category_count_query`."""
    inner = (f'SELECT last("category") AS "c" FROM "indices" WHERE {index_filter(index)} AND '
             f'time > now() - {window} GROUP BY "sensor"')
    middle = ", ".join(f'floor(1 / (1 + ("c" - {n}) * ("c" - {n}))) AS "k{n}"' for n in numbers)
    outer = ", ".join(f'sum("k{n}") AS {q_ident(label)}' for n, label in zip(numbers, labels))
    return f"SELECT {outer} FROM (SELECT {middle} FROM ({inner}))"


def congested_query() -> str:
    """Cameras whose latest LOS is E or F (category 5 or 6): floor(c / 5) is 1 for those, 0 otherwise."""
    inner = (f'SELECT last("category") AS "c" FROM "indices" WHERE {index_filter(LOS_INDEX)} AND '
             f'time > now() - {CURRENT_LOS_WINDOW} GROUP BY "sensor"')
    return f'SELECT sum("ef") AS "congested", count("ef") AS "cameras" FROM (SELECT floor("c" / 5) AS "ef" FROM ({inner}))'


def overview_fire_traffic_section(settings: Settings, registry: Registry) -> Section:
    """Overview: the highest fire danger level now, forest stations per level, cameras at LOS E/F."""
    n_forest = len([s for s in registry.by_domain("forest") if {"temperature", "relativeHumidity"} <= set(s.metrics)])
    n_cams = len([s for s in registry.by_domain("traffic") if {"intensity", "averageVehicleSpeed"} <= set(s.metrics)])
    highest = (stat_panel("Cấp cháy rừng cao nhất / Highest fire danger level").span(6).height(8)
               .description(f"Highest level of the latest daily fire danger of the forest stations (last {FIRE_WINDOW}); "
                            "green (I) to dark red (V), no official colours.")
               .with_target(InfluxQL(f'SELECT max("c") AS "level" FROM (SELECT last("category") AS "c" FROM "indices" '
                                     f'WHERE {index_filter(FIRE_INDEX)} AND time > now() - {FIRE_WINDOW} '
                                     'GROUP BY "sensor")', fmt="table"))
               .thresholds(thresholds(fire_level_steps())).mappings(fire_mappings())
               .no_value("không có dữ liệu / no data"))
    labels = [fire_label(lv) for lv in fire_danger.LEVELS]
    per_level = (bargauge.Panel().title("Số trạm theo cấp cháy rừng / Forest stations per fire danger level")
                 .datasource(DATASOURCE).span(10).height(8)
                 .description(f"Forest stations by the level of their latest daily fire danger (last {FIRE_WINDOW}), "
                              f"of {n_forest} stations.")
                 .with_target(InfluxQL(level_count_query(FIRE_INDEX, [lv.number for lv in fire_danger.LEVELS], labels,
                                                         FIRE_WINDOW), fmt="table"))
                 .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                 .orientation(common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.BASIC)
                 .show_unfilled(True).min(0).max(n_forest).decimals(0).unit("short").no_value("0"))
    for label, colour in zip(labels, FIRE_COLOURS):
        per_level = per_level.override_by_name(label, [dm.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": colour})])
    congested = (stat_panel(f"Camera ùn tắc (mức E/F) / Cameras at LOS E/F of {n_cams}").span(8).height(8)
                 .description(f"Cameras whose latest hourly level of service (last {CURRENT_LOS_WINDOW}) is E or F "
                              "(speed at most 40 % of free flow), and the cameras with a level.")
                 .with_target(InfluxQL(congested_query(), fmt="table"))
                 .thresholds(thresholds([(None, "green"), (1, "orange"), (max(2, n_cams // 10), "red")]))
                 .no_value("0")
                 .override_by_name("cameras", [dm.DynamicConfigValue(id_val="color",
                                                                     value={"mode": "fixed", "fixedColor": "blue"}),
                                               dm.DynamicConfigValue(id_val="displayName",
                                                                     value="Camera có số liệu / Cameras reporting")])
                 .override_by_name("congested", [dm.DynamicConfigValue(id_val="displayName",
                                                                       value="Ùn tắc / Congested")]))
    return Section("Cháy rừng và giao thông / Fire danger and traffic", [highest, per_level, congested])


register_section("cw-forest", fire_section)
register_section("cw-traffic", los_section)
register_section("cw-overview", overview_fire_traffic_section)


# ------------------------------------------------------------------------------ water quality sections

WQI_INDEX = "vn_wqi"
CURRENT_WQI_WINDOW = "3h"  # an hour's VN_WQI is written when the hour closes: the newest is 1-2 h old
LAB_HISTORY = "90d"  # lab samples come every few days to weeks
EXCEEDANCE_YEAR = "365d"  # year_count restarts on 1 January (local): the latest value is this year's count
WATER_PROBE_LIMITS = {  # probe hourly means judged against QCVN 08:2023
    "pH": "pH so với QCVN 08 / pH against QCVN 08",
    "dissolvedOxygen": "Oxy hòa tan so với QCVN 08 / Dissolved oxygen against QCVN 08",
    "NH4": "Amoni so với QCVN 08 / Ammonium (N-NH₄) against QCVN 08",
}
LAB_TITLES = {
    "BOD5": "BOD₅", "COD": "COD", "TOC": "TOC", "TSS": "Chất rắn lơ lửng / TSS", "NO3": "Nitrat / N-NO₃",
    "NO2": "Nitrit / N-NO₂", "PO4": "Phosphat / P-PO₄", "coliform": "Coliform", "ecoli": "E. coli",
    "As": "Asen / As", "Cd": "Cadimi / Cd", "Pb": "Chì / Pb", "Cr6": "Crom VI / Cr⁶⁺", "Cu": "Đồng / Cu",
    "Zn": "Kẽm / Zn", "Hg": "Thủy ngân / Hg",
}
GRAFANA_UNITS.setdefault("MPN/100mL", "suffix: MPN/100 mL")
GRAFANA_UNITS.setdefault("ug/L", "suffix: µg/L")


def wqi_stations(registry: Registry) -> list:
    """Water stations with VN_WQI parameters (the stations `WaterQuality` computes), by id."""
    from citywatch.detectors.indices import vn_wqi

    return sorted((s for s in registry.by_domain("water") if set(s.metrics) & set(vn_wqi.PARAMETERS)),
                  key=lambda s: s.id)


def wqi_value_steps() -> list[tuple[float | None, str]]:
    """VN_WQI value bands in the decision's colours: < 10 brown ... 91-100 blue."""
    from citywatch.detectors.indices import vn_wqi

    return [(None if c.number == 6 else float(c.low), hex_colour(c.rgb)) for c in reversed(vn_wqi.CATEGORIES)]


def wqi_class_steps() -> list[tuple[float | None, str]]:
    from citywatch.detectors.indices import vn_wqi

    return [(None if c.number == 1 else float(c.number), hex_colour(c.rgb)) for c in vn_wqi.CATEGORIES]


def qcvn08_steps(parameter: str, water_class: str) -> tuple[list[tuple[float | None, str]], str]:
    """Threshold steps (red outside the QCVN 08:2023 bounds, green inside) and a description of them."""
    from citywatch.water_index import QCVN08_HEALTH_LIMITS, qcvn08_bounds

    low, high = qcvn08_bounds(parameter, water_class)
    table_name = "Bảng 1, every class" if parameter in QCVN08_HEALTH_LIMITS else f"class {water_class}"
    if low is None and high is None:
        return [(None, "green")], f"no QCVN 08:2023 limit for class {water_class}"
    steps: list[tuple[float | None, str]] = [(None, "red" if low is not None else "green")]
    if low is not None:
        steps.append((low, "green"))
    if high is not None:
        steps.append((high, "red"))
    bounds = " – ".join(f"{b:g}" for b in (low, high) if b is not None)
    kind = "range" if low is not None and high is not None else "minimum" if low is not None else "maximum"
    return steps, f"QCVN 08:2023 {kind} {bounds} ({table_name})"


def _water_series(metric: str, agg: str, where: str, group: str) -> InfluxQL:
    return InfluxQL(f'SELECT {agg}({q_ident(metric)}) AS {q_ident(metric)} FROM "water" WHERE {where} '
                    f'GROUP BY {group}, "sensor" fill(none)', alias="$tag_sensor")


def water_index_section(settings: Settings, registry: Registry) -> Section:
    """Water board: hourly VN_WQI per station, current VN_WQI, probes and lab results against QCVN 08:2023,
    exceedances counted this year."""
    from citywatch.detectors.indices import vn_wqi
    from citywatch.water_index import LAB_METRICS, QCVN08_CLASS_LIMITS, QCVN08_HEALTH_LIMITS

    water_class = settings.indices.water_class
    overrides = settings.indices.water_class_by_station
    where = f'{index_filter(WQI_INDEX)} AND {tag_filter("area", "sensor")} AND $timeFilter'
    bands = ", ".join(f"{c.low:g}–{c.high:g} {c.label_en}" for c in vn_wqi.CATEGORIES)
    hourly = (timeseries_panel("VN_WQI theo giờ / Hourly VN_WQI",
                               [InfluxQL(f'SELECT min("value") AS "VN_WQI" FROM "indices" WHERE {where} '
                                         'GROUP BY time($__interval), "sensor" fill(null)', alias="$tag_sensor")],
                               "none", w=12, h=9,
                               description="VN_WQI (Decision 1460/QĐ-TCMT) per station and hour, from the hour's probe "
                                           "means and the latest lab samples (at most "
                                           f"{settings.indices.water_lab_max_age / 86400:g} days old); the worst hour "
                                           f"of a longer interval. Classes: {bands}.")
              .interval("1h").min(0).max(100).decimals(0)
              .thresholds(thresholds(wqi_value_steps()))
              .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
    names = {"sensor": "Trạm / Station", "area": "Phường / Area", "wqi": "VN_WQI", "category": "Mức / Class",
             "label_vi": "Đánh giá", "label_en": "Rating", "dominant": "Thông số chính / Lowest sub-index"}
    colour_cell = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
    current = (table_panel("VN_WQI hiện tại theo trạm / Current VN_WQI by station").span(12).height(9)
               .time_from(CURRENT_WQI_WINDOW)
               .description(f"Latest hourly VN_WQI per station over the last {CURRENT_WQI_WINDOW}, worst first, with "
                            "its class and the parameter with the lowest sub-index.")
               .with_target(InfluxQL(_latest(WQI_INDEX, {"value": "wqi", "category": "category", "label_vi": "label_vi",
                                                         "label_en": "label_en", "dominant": "dominant"},
                                             f'{tag_filter("area", "sensor")} AND $timeFilter')
                                     + ' GROUP BY "sensor", "area"', fmt="table"))
               .with_transformation(dm.DataTransformerConfig(id_val="filterFieldsByName",
                                                             options={"include": {"names": list(names)}}))
               .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                   "indexByName": {k: i for i, k in enumerate(names)}, "renameByName": names}))
               .sort_by([common_b.TableSortByFieldState().display_name(names["wqi"]).desc(False)])
               .override_by_name(names["wqi"], [colour_cell, dm.DynamicConfigValue(id_val="color",
                                                                                   value={"mode": "thresholds"})])
               .override_by_name(names["category"], [colour_cell, dm.DynamicConfigValue(
                   id_val="mappings", value=category_mappings(vn_wqi.CATEGORIES, labels=False))])
               .thresholds(thresholds(wqi_value_steps())))
    per_station = f" Stations with their own class: {', '.join(f'{k} {v}' for k, v in sorted(overrides.items()))}." \
        if overrides else ""
    probe_panels = []
    for metric, title in WATER_PROBE_LIMITS.items():
        steps, limits = qcvn08_steps(metric, water_class)
        probe_panels.append(
            timeseries_panel(title, [_water_series(
                metric, "mean", f'{tag_filter("area", "sensor")} AND $timeFilter', "time($__interval)")],
                GRAFANA_UNITS.get("pH" if metric == "pH" else "mg/L"), w=8, h=8,
                description=f"Mean per interval of `{metric}` per station; {limits}, drawn as thresholds."
                            f"{per_station}")
            .thresholds(thresholds(steps))
            .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)))
    units: dict[str, str] = {}
    for s in registry.by_domain("water"):
        for m, spec in s.metrics.items():
            if m in LAB_METRICS:
                units.setdefault(m, spec.unit)
    lab_panels = []
    for metric in [m for m in LAB_TITLES if m in units]:
        judged = metric in QCVN08_CLASS_LIMITS or metric in QCVN08_HEALTH_LIMITS
        steps, limits = qcvn08_steps(metric, water_class) if judged else ([(None, "green")], "not judged by QCVN "
                                                                          "08:2023 (it limits total N and total P)")
        p = (timeseries_panel(f"{LAB_TITLES[metric]} – mẫu phòng thí nghiệm / lab samples", [_water_series(
                metric, "last", f'{tag_filter("area", "sensor")} AND $timeFilter', "time(1d)")],
                GRAFANA_UNITS.get(units[metric]), w=8, h=7,
                description=f"Lab results of `{metric}` ({units[metric]}) per station and sampling day over the "
                            f"last {LAB_HISTORY}; {limits}.{per_station}")
             .time_from(LAB_HISTORY).draw_style(common.GraphDrawStyle.POINTS)
             .show_points(common.VisibilityMode.ALWAYS).point_size(7))
        if judged:
            p = (p.thresholds(thresholds(steps))
                 .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)))
        lab_panels.append(p)
    names_ex = {"sensor": "Trạm / Station", "pollutant": "Thông số / Parameter", "class": "Mức QCVN / Class",
                "exceedances": "Số lần vượt trong năm / Exceedances this year", "limit": "Giới hạn / Limit"}
    exceedances = (table_panel("Vượt QCVN 08:2023 trong năm / QCVN 08:2023 exceedances this year").span(24).height(9)
                   .time_from(EXCEEDANCE_YEAR)
                   .description("Per station and parameter, exceedances of QCVN 08:2023/BTNMT counted in the current "
                                "local calendar year: probe hourly means (averaging 1h) and lab samples (averaging "
                                f"sample), against the station's class (default {water_class}) or the Bảng 1 "
                                "health limits. Only parameters with at least one exceedance.")
                   .with_target(InfluxQL('SELECT "exceedances", "limit" FROM (SELECT last("year_count") AS '
                                         '"exceedances", last("limit") AS "limit" FROM "exceedances" WHERE '
                                         f'"averaging" =~ /^(1h|sample)$/ AND {tag_filter("area", "sensor")} AND '
                                         '$timeFilter GROUP BY "sensor", "pollutant", "class") WHERE "exceedances" > 0 '
                                         'GROUP BY "sensor", "pollutant", "class"', fmt="table"))
                   .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                       "excludeByName": {"Time": True}, "indexByName": {k: i for i, k in enumerate(names_ex)},
                       "renameByName": names_ex}))
                   .sort_by([common_b.TableSortByFieldState().display_name(names_ex["exceedances"]).desc(True)])
                   .override_by_name(names_ex["exceedances"], [colour_cell, dm.DynamicConfigValue(
                       id_val="color", value={"mode": "thresholds"})])
                   .thresholds(thresholds([(None, "green"), (1, "orange"), (10, "red")])))
    return Section("Chỉ số chất lượng nước và QCVN 08 / Water quality index and QCVN 08",
                   [hourly, current, *probe_panels, *lab_panels, exceedances])


def overview_wqi_section(settings: Settings, registry: Registry) -> Section:
    """Overview: a map of the water stations coloured by their latest VN_WQI class, stations per class."""
    from citywatch.detectors.indices import vn_wqi

    stations = wqi_stations(registry)
    latest = InfluxQL(_latest(WQI_INDEX, {"value": "vn_wqi", "category": "category", "label_vi": "label_vi",
                                          "label_en": "label_en", "dominant": "dominant"},
                              f"time > now() - {CURRENT_WQI_WINDOW}") + ' GROUP BY "sensor"', ref_id="A", fmt="table")
    the_map = station_index_map(
        stations, latest, "VN_WQI", "vn_wqi", "triangle", "VN_WQI hiện tại / Current VN_WQI",
        f"Water stations coloured by the class of their latest hourly VN_WQI (last {CURRENT_WQI_WINDOW}) in the "
        "colours of Decision 1460/QĐ-TCMT; grey: no index (the data rules need 3 groups, group IV with 3 "
        "parameters: lab samples too old or missing).",
        vn_wqi.CATEGORIES, wqi_class_steps(), wqi_value_steps())
    labels = [category_label(c) for c in vn_wqi.CATEGORIES]
    per_class = stations_per_category(
        "Số trạm theo mức VN_WQI / Water stations per VN_WQI class",
        f"Water stations by the class of their latest hourly VN_WQI (last {CURRENT_WQI_WINDOW}), "
        f"of {len(stations)} stations.",
        level_count_query(WQI_INDEX, [c.number for c in vn_wqi.CATEGORIES], labels, CURRENT_WQI_WINDOW),
        len(stations), vn_wqi.CATEGORIES)
    return Section("Chỉ số chất lượng nước / Water quality index", [the_map, per_class])


register_section("cw-water", water_index_section)
register_section("cw-overview", overview_wqi_section)


# ------------------------------------------------------------------------------ detector library sections

LAST_SEEN = "Lần cuối / Last seen"
NO_DATA_STATES = {0: ("đang báo / reporting", "green"), 1: ("trễ / late", "orange"), 2: ("mất tín hiệu / offline", "red")}
TRAFFIC_ZERO_LEVELS = {0: ("ổn / ok", "green"), 1: ("số 0 bất thường / zero unlikely", "orange"),
                       2: ("camera chết / dead camera", "red")}


def state_mappings(states: dict[int, tuple[str, str]]) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={str(k): dm.ValueMappingResult(text=text, color=colour, index=i)
                                 for i, (k, (text, colour)) in enumerate(states.items())})]


def device_state_mappings() -> list[dm.ValueMapping]:
    """no_data alert levels: 0 reporting, 1 late, 2 offline."""
    return state_mappings(NO_DATA_STATES)


def reporting_metrics(registry: Registry) -> dict[str, list[str]]:
    """Per domain, metrics that together cover every sensor: each sensor's first (primary) metric,
    which every one of its readings carries (lab metrics of water stations come days apart)."""
    out: dict[str, list[str]] = {}
    for domain in DOMAINS:
        firsts = {next(iter(s.metrics)) for s in registry.by_domain(domain) if s.metrics}
        if firsts:
            out[domain] = sorted(firsts)
    return out


def last_seen_query(registry: Registry) -> str:
    """Newest reading time per sensor across the domain measurements: one subquery per domain and
    primary metric (InfluxQL takes several subqueries as sources), each renaming its field "seen"."""
    where = f'$timeFilter AND {tag_filter("area", "sensor")}'
    sources = ", ".join(f'(SELECT {q_ident(m)} AS "seen" FROM {q_ident(domain)} WHERE {where})'
                        for domain, metrics in reporting_metrics(registry).items() for m in metrics)
    return f'SELECT last("seen") AS "seen" FROM {sources} GROUP BY "sensor"'


def flag_timeline(title: str, where: str, group: str, alias: str, description: str, w: int = 12, h: int = 8,
                  states: dict[int, tuple[str, str]] | None = None) -> statetimeline.Panel:
    """Highest `anomalies` level per interval (0 where nothing was flagged) as a state timeline."""
    query = (f'SELECT max("level") AS "level" FROM "anomalies" WHERE {where} AND {tag_filter("area", "sensor")} '
             f'AND $timeFilter GROUP BY time($__interval), {group} fill(0)')
    return (statetimeline.Panel().title(title).datasource(DATASOURCE).span(w).height(h).description(description)
            .with_target(InfluxQL(query, alias=alias))
            .show_value(common.VisibilityMode.NEVER).legend(TIMELINE_LEGEND).merge_values(True).row_height(0.8)
            .thresholds(thresholds(LEVEL_COLOURS)).color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .mappings(state_mappings(states) if states else level_mappings()))


def data_quality_panels() -> list[cogbuilder.Builder]:
    """Sensor health: stuck, spike and drift flags, dropouts (no_data), suspect sensors against area events."""
    stuck = flag_timeline("Kẹt giá trị / Stuck and flatline", '"detector" = \'stuck\'', '"sensor", "metric"',
                          "$tag_sensor $tag_metric",
                          "Readings the stuck detector flagged (a value repeated exactly, or a flat line), per "
                          "sensor and metric; green where nothing was flagged.")
    spike_drift = flag_timeline("Đột biến và trôi / Spikes and drift", '"detector" =~ /^(spike|drift)$/',
                                '"sensor", "metric", "detector"', "$tag_sensor $tag_metric $tag_detector",
                                "Spikes (rate of change) and calibration drift (against the sensor's own baseline "
                                "or its neighbours), per sensor, metric and detector.")
    dropouts = (statetimeline.Panel().title("Mất tín hiệu / Dropouts (no data)").datasource(DATASOURCE).span(12).height(8)
                .description("Device state from the no_data alerts (state changes, carried forward): late after "
                             "missed reports, offline after a longer silence, back to reporting.")
                .with_target(InfluxQL('SELECT last("level_code") AS "state" FROM "alerts" WHERE "detector" = '
                                      f'\'no_data\' AND {tag_filter("area", "sensor")} AND $timeFilter '
                                      'GROUP BY time($__interval), "sensor" fill(previous)', alias="$tag_sensor"))
                .show_value(common.VisibilityMode.NEVER).legend(TIMELINE_LEGEND).merge_values(True).row_height(0.8)
                .thresholds(thresholds(LEVEL_COLOURS)).color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
                .mappings(device_state_mappings()))
    spatial = flag_timeline("Cảm biến nghi lỗi và sự kiện khu vực / Suspect sensors and area events",
                            '"detector" = \'spatial\' AND "reason" =~ /^(sensor_suspect|area_event)$/',
                            '"sensor", "metric", "reason"', "$tag_sensor $tag_metric $tag_reason",
                            "The spatial detector: a sensor off on its own while its neighbours agree (sensor_suspect: "
                            "check the device) or neighbours moving together (area_event: something real in the area).")
    return [stuck, spike_drift, dropouts, spatial]


WHY_COLUMNS = {"Time": "Thời điểm / Time", "sensor": "Cảm biến / Sensor", "area": "Phường / Area",
               "metric": "Chỉ số / Metric", "detector": "Bộ phát hiện / Detector", "reason": "Lý do / Reason",
               "value": "Giá trị / Value", "threshold": "Ngưỡng hoặc kỳ vọng / Threshold or expected",
               "score": "Điểm / Score", "level": "Mức / Level"}


def why_flagged_panel() -> table.Panel:
    cols = ", ".join(q_ident(c) for c in list(WHY_COLUMNS)[1:])
    return (table_panel("Vì sao bị đánh dấu / Why a reading was flagged").span(24).height(12)
            .description("Every flagged reading and detector (measurement anomalies), newest first: the detector's "
                         "reason, the value, the threshold or expectation it was compared with, and the score.")
            .with_target(InfluxQL(f'SELECT {cols} FROM "anomalies" WHERE $timeFilter AND {tag_filter("area", "sensor")} '
                                  'ORDER BY time DESC LIMIT 1000', fmt="table"))
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                "indexByName": {k: i for i, k in enumerate(WHY_COLUMNS)}, "renameByName": WHY_COLUMNS}))
            .override_by_name(WHY_COLUMNS["level"], [
                dm.DynamicConfigValue(id_val="mappings", value=level_mappings()),
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})])
            .override_by_name(WHY_COLUMNS["score"], [dm.DynamicConfigValue(id_val="decimals", value=2)])
            .thresholds(thresholds(LEVEL_COLOURS)))


def traffic_baseline_section(settings: Settings, registry: Registry) -> Section:
    """Traffic board: counts against the seasonal baseline's expectation and band; dead cameras."""
    where = f'{tag_filter("area", "sensor")} AND $timeFilter'
    counts = InfluxQL(f'SELECT mean("intensity") AS "count" FROM "traffic" WHERE {where} '
                      'GROUP BY time($__interval), "sensor" fill(null)', alias="$tag_sensor")
    band = InfluxQL('SELECT mean("expected") AS "expected", mean("lower") AS "lower", mean("upper") AS "upper" '
                    f'FROM "baseline" WHERE "metric" = \'intensity\' AND {where} '
                    'GROUP BY time($__interval), "sensor" fill(null)', ref_id="B", alias="$tag_sensor $col")
    against = (timeseries_panel("Lưu lượng so với kỳ vọng / Vehicle counts against the seasonal baseline",
                                [counts, band], "short", w=24, h=10,
                                description="Vehicles per reporting period per camera (choose cameras with the "
                                            "Sensor variable); dashed: what the seasonal detector expected for that "
                                            "local hour and kind of day, dotted: the central 99 % of its count model "
                                            "(Poisson or negative binomial). Counts outside the band are unusual.")
               .min(0)
               .override_by_query("B", [
                   dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                   dm.DynamicConfigValue(id_val="custom.lineWidth", value=1)])
               .override_by_regexp(r".* (lower|upper)$", [
                   dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dot", "dash": [0, 10]}),
                   dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]))
    zero_where = '"detector" = \'traffic_zero\''
    timeline = flag_timeline("Camera chết / Dead cameras", zero_where, '"sensor"', "$tag_sensor",
                             "Zero counts judged by the traffic_zero detector: orange when zeros this long were "
                             "unlikely, red when the camera is all but certainly dead (cameras with a flag).",
                             states=TRAFFIC_ZERO_LEVELS)
    names = {"Time": "Thời điểm / Time", "sensor": "Camera", "area": "Phường / Area", "reason": "Lý do / Reason",
             "value": "Số xe / Count", "threshold": "Kỳ vọng / Expected count", "score": "Điểm / Score"}
    flags = (table_panel("Số 0 bất thường / Unlikely zero counts").span(12).height(8)
             .description("The zero counts the traffic_zero detector flagged, newest first: dead_camera (critical) "
                          "or zero_unlikely (warning), with the count expected then.")
             .with_target(InfluxQL('SELECT "sensor", "area", "reason", "value", "threshold", "score" FROM "anomalies" '
                                   f'WHERE {zero_where} AND {where} ORDER BY time DESC LIMIT 500', fmt="table"))
             .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                 "indexByName": {k: i for i, k in enumerate(names)}, "renameByName": names}))
             .override_by_name(names["threshold"], [dm.DynamicConfigValue(id_val="decimals", value=1)])
             .override_by_name(names["score"], [dm.DynamicConfigValue(id_val="decimals", value=2)]))
    return Section("Đường cơ sở theo mùa / Seasonal baseline", [against, timeline, flags])


def area_events_query() -> str:
    """Spatial alerts whose latest state is an area event (not ok): where something real is going on."""
    inner = ('SELECT last("level_code") AS "level_code", last("reason") AS "reason", last("value") AS "value" '
             'FROM "alerts" WHERE "detector" = \'spatial\' AND $timeFilter GROUP BY "area", "sensor", "metric"')
    return (f'SELECT "area", "sensor", "metric", "value", "level_code" FROM ({inner}) '
            'WHERE "level_code" > 0 AND "reason" = \'area_event\'')


def devices_down_query() -> str:
    """Sensors whose latest no_data state is offline (2) or late (1): the indicator trick of
    `category_count_query`."""
    inner = ('SELECT last("level_code") AS "c" FROM "alerts" WHERE "detector" = \'no_data\' AND $timeFilter '
             'GROUP BY "sensor"')
    return ('SELECT sum("off") AS "offline", sum("late") AS "late" FROM (SELECT floor("c" / 2) AS "off", '
            f'floor(1 / (1 + ("c" - 1) * ("c" - 1))) AS "late" FROM ({inner}))')


def overview_operations_section(settings: Settings, registry: Registry) -> Section:
    """Overview: areas where neighbouring sensors agree something is happening, devices offline."""
    events = (table_panel("Sự kiện khu vực / Area events").span(16).height(8).time_from(ACTIVE_ALERTS_WINDOW)
              .description("Sensors whose latest spatial alert (last " + ACTIVE_ALERTS_WINDOW + ") is an area event: "
                           "the sensor and its neighbours moved together, so the change is real, not a device fault.")
              .with_target(InfluxQL(area_events_query(), fmt="table"))
              .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                  "excludeByName": {"Time": True},
                  "renameByName": {"area": "Phường / Area", "sensor": "Cảm biến / Sensor", "metric": "Chỉ số / Metric",
                                   "value": "Giá trị / Value", "level_code": "Mức / Level"}}))
              .override_by_name("Mức / Level", [dm.DynamicConfigValue(id_val="mappings", value=level_mappings()),
                                                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                                                      value={"type": "color-background"})])
              .thresholds(thresholds(LEVEL_COLOURS)))
    down = (stat_panel(f"Thiết bị mất tín hiệu / Sensors offline of {len(registry.sensors)}").span(8).height(8)
            .time_from(ACTIVE_ALERTS_WINDOW)
            .description("Sensors whose latest no_data state (last " + ACTIVE_ALERTS_WINDOW + ") is offline, and "
                         "those that are late.")
            .with_target(InfluxQL(devices_down_query(), fmt="table"))
            .thresholds(thresholds([(None, "green"), (1, "red")])).no_value("0")
            .override_by_name("offline", [dm.DynamicConfigValue(id_val="displayName",
                                                                value="Mất tín hiệu / Offline")])
            .override_by_name("late", [dm.DynamicConfigValue(id_val="displayName", value="Trễ / Late"),
                                       dm.DynamicConfigValue(id_val="thresholds", value=dm.ThresholdsConfig(
                                           mode=dm.ThresholdsMode.ABSOLUTE,
                                           steps=[dm.Threshold(value=None, color="green"),
                                                  dm.Threshold(value=1, color="orange")]))]))
    return Section("Vận hành / Operations", [events, down])


register_section("cw-traffic", traffic_baseline_section)
register_section("cw-overview", overview_operations_section)


# ------------------------------------------------------------------------------ provisioning

DATASOURCE_V1 = f"""\
# InfluxDB 1.x (InfluxQL), basic auth. Grafana expands ${{VAR}} from its own environment.
apiVersion: 1
datasources:
  - name: citywatch InfluxDB
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: ${{CITYWATCH_INFLUX_URL}}
    user: ${{CITYWATCH_INFLUX_USERNAME}}
    isDefault: true
    editable: false
    jsonData:
      version: InfluxQL
      dbName: ${{CITYWATCH_INFLUX_DB}}
      httpMode: POST
      timeInterval: 10s
    secureJsonData:
      password: ${{CITYWATCH_INFLUX_PASSWORD}}
"""

DATASOURCE_V2 = f"""\
# InfluxDB 2.x / 3.x through the v1-compatible API (InfluxQL): the database is the bucket's DBRP
# mapping, authentication is the `Authorization: Token ...` header.
apiVersion: 1
datasources:
  - name: citywatch InfluxDB
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: ${{CITYWATCH_INFLUX_URL}}
    isDefault: true
    editable: false
    jsonData:
      version: InfluxQL
      dbName: ${{CITYWATCH_INFLUX_DB}}
      httpMode: POST
      timeInterval: 10s
      httpHeaderName1: Authorization
    secureJsonData:
      httpHeaderValue1: Token ${{CITYWATCH_INFLUX_TOKEN}}
"""

DASHBOARD_PROVIDER = """\
# File provider: the sub-folders of the dashboards directory become Grafana folders.
apiVersion: 1
providers:
  - name: citywatch
    orgId: 1
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: /var/lib/grafana/dashboards/citywatch
      foldersFromFilesStructure: true
"""

PROVISIONING = {
    "provisioning/datasources/influxdb-v1.yaml": DATASOURCE_V1,
    "provisioning/datasources/influxdb-v2.yaml": DATASOURCE_V2,
    "provisioning/dashboards/citywatch.yaml": DASHBOARD_PROVIDER,
}


def dashboard_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def export_files(settings: Settings, registry: Registry) -> dict[str, str]:
    """Relative path -> content of everything `export` writes."""
    files = dict(PROVISIONING)
    for rel, data in build_dashboards(settings, registry).items():
        files[f"dashboards/{rel}"] = dashboard_text(data)
    return files


def _load(config: str | None) -> tuple[Settings, Registry]:
    from citywatch.config import load_settings

    settings = load_settings(config)
    return settings, Registry.load(settings.resolve(settings.registry))


def export(directory: str | os.PathLike[str], config: str | None = None) -> list[Path]:
    """Write provisioning files and dashboards under `directory` (the layout of `grafana/`)."""
    settings, registry = _load(config)
    out = []
    for rel, text in export_files(settings, registry).items():
        path = Path(directory) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def push(url: str, token: str, config: str | None = None, overwrite: bool = True) -> list[str]:
    """Upload every board to Grafana (folders by title, created when missing); returns the board URLs."""
    from grafana_client import GrafanaApi

    settings, registry = _load(config)
    api = GrafanaApi.from_url(url, credential=token)
    folder_uids: dict[str, str] = {}
    for f in api.folder.get_all_folders():
        folder_uids[f["title"]] = f["uid"]
    urls = []
    for rel, data in build_dashboards(settings, registry).items():
        folder = rel.split("/")[0]
        if folder not in folder_uids:
            folder_uids[folder] = api.folder.create_folder(folder, uid=f"citywatch-{folder}")["uid"]
        result = api.dashboard.update_dashboard({"dashboard": {**data, "id": None}, "folderUid": folder_uids[folder],
                                                 "overwrite": overwrite, "message": "citywatch grafana push"})
        urls.append(url.rstrip("/") + result.get("url", ""))
    return urls


# ------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`citywatch grafana export DIR` / `citywatch grafana push --url URL [--token T]`."""
    parser.add_argument("--config", default=None, help="config file (default: CITYWATCH_CONFIG or the sample)")
    sub = parser.add_subparsers(dest="grafana_command", required=True)
    ex = sub.add_parser("export", help="write provisioning files and dashboards JSON to DIR")
    ex.add_argument("dir", metavar="DIR")
    pu = sub.add_parser("push", help="upload the dashboards to a running Grafana")
    pu.add_argument("--url", required=True, help="Grafana base URL, e.g. http://localhost:3000")
    pu.add_argument("--token", default=None, help="service account token (default: env GRAFANA_TOKEN)")


def run(args: argparse.Namespace) -> int:
    if args.grafana_command == "export":
        for path in export(args.dir, args.config):
            print(path)
        return 0
    token = args.token or os.environ.get("GRAFANA_TOKEN")
    if not token:
        print("error: a token is needed: --token or the GRAFANA_TOKEN environment variable")
        return 2
    for u in push(args.url, token, args.config):
        print(u)
    return 0
