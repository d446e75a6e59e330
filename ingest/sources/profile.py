"""Source profiles: how the messages of one device family become registry readings (config models).

A profile says which topics a family publishes on, how to decode them, where the readings, the
timestamp, the device id and the radio/battery metadata are, what the source keys are called in
citywatch (the metric table), and in which unit they come. Shipped profiles live in
``config/sources/<family>.yaml``; `SourcesConfig.profiles` names them (or gives a path, or an inline
profile). A minimal profile, as a user would paste it into ``sources.profiles``::

    - family: my_gateway
      topics:
        - {filter: "gw/{device}/data"}                       # JSON readings (the default)
        - {filter: "gw/{device}/lwt", kind: availability, decoder: text}
      readings:
        - select: "measurements.*"                           # every key under measurements
      metrics:                                               # source key -> registry metric
        PM2.5: pm25
        temp_f: {metric: temperature, unit: degF}            # converted to the registry unit
        hum: {metric: relativeHumidity, unit: "%"}
      timestamp: {fields: [ts], formats: [epoch, rfc3339, local], timezone: Asia/Ho_Chi_Minh}
      health: {rssi: wifi.rssi}
      aliases: {gw-17: aq-021}                               # device id -> registry sensor

Topic rules (`TopicRule`) are tried in order, across profiles in the order they are listed; the
first filter that matches a topic decides. ``kind`` is ``readings`` (readings and health fields),
``health`` (health fields only, e.g. Tasmota STATE), ``availability`` (online/offline, e.g. an LWT)
or ``ignore`` (known topics that carry nothing for us, e.g. Zigbee2MQTT's bridge).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from citywatch.config_types import Duration, StrictModel
from citywatch.ingest.sources.selectors import Selector, SelectorError
from citywatch.ingest.sources.topic_filter import TopicFilter

__all__ = ["SourceProfile", "TopicRule", "MetricRule", "HealthRule", "TimestampRule", "ReadingsRule",
           "PivotRule", "FAMILIES", "HEALTH_UNITS"]

FAMILIES = ("tasmota", "esphome", "ttn", "chirpstack", "zigbee2mqtt", "sensor_community", "sparkplug", "frigate")
# Health fields and the unit each is stored in (a rule's `unit` is converted to it).
HEALTH_UNITS: dict[str, str | None] = {"rssi": None, "snr": None, "battery": "%", "battery_voltage": "V",
                                       "linkquality": None, "wifi_signal": None}


def _check_selector(v: str | None) -> str | None:
    if v is not None:
        try:
            Selector(v)
        except SelectorError as exc:
            raise ValueError(str(exc)) from None
    return v


class TopicRule(StrictModel):
    filter: str
    kind: Literal["readings", "health", "availability", "ignore"] = "readings"
    decoder: Literal["json", "text", "sparkplug", "frigate"] = "json"
    device: str | None = None  # device id template for this topic (else the profile's)
    name: str | None = None  # text decoder: template of the source metric name, e.g. "{object_id}"
    select: str | None = None  # availability in a JSON payload: where the state is (Zigbee2MQTT "state")
    online: list[str] = Field(default_factory=lambda: ["online", "Online", "ONLINE"])
    offline: list[str] = Field(default_factory=lambda: ["offline", "Offline", "OFFLINE"])

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: str) -> str:
        TopicFilter(v)
        return v

    _select = field_validator("select")(classmethod(lambda cls, v: _check_selector(v)))


class PivotRule(StrictModel):
    """Key/value lists: ``[{"value_type": "SDS_P1", "value": "15.3"}, ...]`` -> source key SDS_P1."""

    select: str  # the list
    key: str = "value_type"
    value: str = "value"
    unit: str | None = None  # where an element names its unit, if it does

    _sel = field_validator("select")(classmethod(lambda cls, v: _check_selector(v)))


class ReadingsRule(StrictModel):
    """Where readings are: a selector (the last key matched names the source metric) or a pivot."""

    select: str | None = None
    name: str | None = None  # template for the source name from captures, e.g. "{chip}_{key}"
    pivot: PivotRule | None = None

    _sel = field_validator("select")(classmethod(lambda cls, v: _check_selector(v)))

    @model_validator(mode="after")
    def _one(self) -> "ReadingsRule":
        if (self.select is None) == (self.pivot is None):
            raise ValueError("a readings rule has either `select` or `pivot`")
        return self


class MetricRule(StrictModel):
    metric: str  # the registry's metric name
    unit: str | None = None  # fixed unit of the source value (converted to the registry unit)
    unit_from: str | None = None  # selector in the record naming the unit (Tasmota "TempUnit")
    units: dict[str, str] = Field(default_factory=dict)  # payload spelling -> unit, e.g. {F: degF}
    counter: bool = False  # a cumulative counter: stored as the increase since the previous message

    _sel = field_validator("unit_from")(classmethod(lambda cls, v: _check_selector(v)))


class HealthRule(StrictModel):
    select: str
    unit: str | None = None  # source unit, converted to the field's unit (mV -> V)
    reduce: Literal["max", "min", "first", "mean"] = "max"  # several matches (one per gateway): the best

    _sel = field_validator("select")(classmethod(lambda cls, v: _check_selector(v)))


class TimestampRule(StrictModel):
    fields: list[str] = Field(default_factory=list)  # selectors, first present wins
    # epoch (s/ms/us/ns by magnitude), rfc3339 (with offset), local (ISO 8601 without offset, read in
    # `timezone`), or a strptime pattern (read in `timezone` unless it has %z)
    formats: list[str] = Field(default_factory=lambda: ["epoch", "rfc3339", "local"])
    timezone: str = "UTC"
    max_future: Duration = 300.0  # beyond arrival + this: implausible, arrival time used instead
    max_past: Duration = 30 * 86400.0

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        for s in v:
            _check_selector(s)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Ho_Chi_Minh)") from None
        return v


class SourceProfile(StrictModel):
    family: str
    description: str = ""
    topics: list[TopicRule] = Field(min_length=1)
    device: str = "{device}"  # device id template over the topic captures
    device_from: str | None = None  # selector in the payload; wins over `device` when present
    records: str | None = None  # selector that splits a payload into records (each with its own time)
    readings: list[ReadingsRule] = Field(default_factory=lambda: [ReadingsRule(select="*")])
    metrics: dict[str, str | MetricRule] = Field(default_factory=dict)  # source key -> registry metric
    keep_unmapped: bool = False  # pass keys missing from `metrics` on under their own name
    health: dict[str, str | HealthRule] = Field(default_factory=dict)
    timestamp: TimestampRule = Field(default_factory=TimestampRule)
    aliases: dict[str, str] = Field(default_factory=dict)  # device id -> registry sensor id
    # A device that is in neither `aliases` nor the registry: dead-lettered (reject), or only counted
    # (ignore; for families that report more devices than the city registers, e.g. Frigate's zones).
    unknown_device: Literal["reject", "ignore"] = "reject"
    # Devices of the family that are not sensors (a Sparkplug edge node itself): a regular expression;
    # unregistered devices it matches are counted, not dead-lettered.
    ignore_devices: str | None = None
    counter_max_gap: Duration = 600.0  # a counter silent for longer starts over (no increase across the gap)
    options: dict[str, Any] = Field(default_factory=dict)  # decoder options (frigate: interval_s, labels ...)

    _sel = field_validator("device_from", "records")(classmethod(lambda cls, v: _check_selector(v)))

    @field_validator("ignore_devices")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"ignore_devices: {exc}") from None
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: dict[str, str | MetricRule]) -> dict[str, str | MetricRule]:
        return {k: (MetricRule(metric=r) if isinstance(r, str) else r) for k, r in v.items()}

    @field_validator("health")
    @classmethod
    def _health(cls, v: dict[str, str | HealthRule]) -> dict[str, str | HealthRule]:
        return {k: (HealthRule(select=r) if isinstance(r, str) else r) for k, r in v.items()}
