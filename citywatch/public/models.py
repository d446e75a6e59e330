"""Response schemas of the public API's JSON answers (documentation in the OpenAPI spec; the tests
check every answer against them with schemathesis)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IndexValue(BaseModel):
    value: float
    category: int | None = Field(description="1 = best; see /api/v1/scales")
    label_vi: str | None
    label_en: str | None
    dominant: str | None = Field(description="the pollutant or parameter that sets the index")
    time: str | None = Field(description="start of the hour (or local day) the index is for, UTC")


class Reading(BaseModel):
    value: float
    unit: str


class StationCurrent(BaseModel):
    id: str
    name: str
    domain: str
    area: str = Field(description="ward")
    lat: float
    lon: float
    map_index: str | None = Field(description="the index the page colours this station by")
    observed_at: str | None = Field(description="time of the latest reading, UTC; null if none is recent")
    indices: dict[str, IndexValue] = Field(description="by index: vn_aqi_hourly, vn_aqi_daily, us_aqi, vn_wqi, "
                                                       "fire_danger, traffic_los")
    readings: dict[str, Reading] = Field(description="latest value of each metric")


class Current(BaseModel):
    generated_at: str
    stations: list[StationCurrent]


class WorstIndex(BaseModel):
    category: int
    value: float
    label_vi: str | None
    label_en: str | None
    sensor: str
    stations: int


class MeanReading(BaseModel):
    value: float
    unit: str
    stations: int


class Area(BaseModel):
    area: str
    stations: int
    domains: dict[str, int]
    worst_indices: dict[str, WorstIndex]
    readings_mean: dict[str, MeanReading]


class Areas(BaseModel):
    generated_at: str
    areas: list[Area]


class History(BaseModel):
    sensor: str
    name: str
    domain: str
    area: str
    start: str
    end: str
    interval: str
    units: dict[str, str]
    columns: list[str]
    rows: list[dict[str, float | int | str | None]]


class Advisory(BaseModel):
    sensor: str
    name: str
    area: str
    domain: str
    lat: float
    lon: float
    index: str
    level: str = Field(pattern="^(warning|critical)$")
    since: str | None
    value_at_start: float | None
    current: IndexValue | None


class Advisories(BaseModel):
    generated_at: str
    advisories: list[Advisory]
