"""What a source decoder makes of one message: `DeviceRecord`s, in the device's own terms.

Decoders (JSON profiles, Sparkplug B, Frigate events) report what a device said: its id as it
publishes it, source metric names and raw values. The mapper (`citywatch.ingest.sources.mapper`)
then applies the profile's metric table, value coercion, units, counters, timestamp plausibility and
the device -> registry sensor alias, so decoders never know the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DeviceRecord", "SourceReading"]

# (ts_ns or None = "the message's time", source metric name as published, raw value, unit or None)
SourceReading = tuple[int | None, str, object, str | None]


@dataclass(slots=True)
class DeviceRecord:
    device: str
    readings: list[SourceReading] = field(default_factory=list)
    health: dict[str, float] = field(default_factory=dict)  # rssi, snr, battery, linkquality ...
    available: bool | None = None  # online / offline announcement (LWT, status, DEATH); None: not one
    ts_ns: int | None = None  # the record's own time when known (health, availability)
    errors: list[str] = field(default_factory=list)  # "code: detail", stable snake_case codes
