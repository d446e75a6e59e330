"""Simulated field devices for the sensors of a registry: realistic readings, labelled faults, MQTT.

`Simulator(registry, seed=0, start=None, speedup=60.0)` produces what the city's devices would
publish. Everything is a pure function of ``(seed, sensor id, metric, event time)`` — noise comes
from a counter-based hash, not from a stateful random generator — so `generate(t0, t1)` is
deterministic, and generating a day in one call or in 1440 one-minute calls gives the same
readings. The live publisher (`publish_forever`) just walks a simulated clock
``start + wall elapsed * speedup`` forward and publishes what falls due.

Signals (local time Asia/Ho_Chi_Minh, UTC+7, no daylight saving)
-----------------------------------------------------------------

* traffic cameras: vehicle counts are Poisson with a weekday profile peaking at 07-08 h and
  17-18 h, near zero at night, flatter and later at weekends, scaled by ``road_class``
  (main > secondary > side); occupancy rises and speed falls with the load;
* air: PM2.5/PM10 with a morning-rush bump and an evening peak (18-21 h, low mixing height and
  cooking), lower at midday and washed out by rain; NO2 and CO follow traffic; O3 peaks early in the
  afternoon; temperature ~26 °C before dawn and ~33 °C at 14 h, relative humidity anti-correlated;
  low-cost PM sensors are noisier and over-read in humid air;
* water: slow diurnal water temperature, pH ~7, dissolved oxygen 5-7 mg/L with a day/night cycle
  (photosynthesis), turbidity rising after rain, tidal conductivity on the lower Đồng Nai river;
  and once a week per station (its own weekday, 08-11 h) the lab results of a grab sample (BOD5,
  COD, nutrients, coliform, metals: `Simulator.lab_samples`), worse at canals and industrial outfalls;
* forest (Vĩnh Cửu): humid nights, dry early afternoons, rain showers that cool, saturate the air,
  raise soil moisture and fill the rain gauge.

Rain comes from showers scheduled per ~8 km grid cell (mostly in the afternoon, in the rainy
season May-November), so neighbouring stations see the same rain. All values are clipped to the
registry's physical min/max and rounded as a device would.

Payload formats
---------------

Each sensor is given one format (a deterministic mix unless one is forced):

* ``json``  — ``{"ts": <epoch ms>, "pm25": 12.3, "pm10": 20.1, ...}``
* ``array`` — a JSON array of such objects: the device buffers `batch_size` readings (5 by default)
  and uploads the backlog at once;
* ``senml`` — SenML JSON (RFC 8428): ``[{"bn": "aq-001:", "bt": <epoch s>, "n": "pm25",
  "u": "ug/m3", "v": 12.3}, {"n": "pm10", "u": "ug/m3", "v": 20.1}, ...]``. ``u`` is the registry
  unit, except that some devices report CO in ``mg/m3`` and relative humidity in ``%`` (both
  convertible, as real devices do).

The topic is ``city/{domain}/{sensor}/telemetry`` unless another pattern is given.

With ``device_formats`` (``citywatch simulate --device-formats``, and the demo), a sensor whose
registry entry names a device (``source: {family, device}``) publishes instead as that device
family does — Tasmota, ESPHome, The Things Stack, ChirpStack, Zigbee2MQTT, Sensor.Community,
Sparkplug B or Frigate (`citywatch.device_formats`) — with the names and units of the family's
source profile, so its readings reach the engine through the mapping layer. Families whose messages
carry no time of their own (ESPHome, Sensor.Community) and Frigate's events are published live only,
not while replaying the past; availability (LWT, status) is published, retained, on connecting.

Faults and events (ground truth)
--------------------------------

Kinds (`FAULT_KINDS`): ``spike`` (1-3 readings of one metric far off), ``stuck`` (one metric repeats
its value exactly: flatline), ``drift`` (one metric drifts linearly away, 2-12 h), ``dropout`` (the
sensor sends nothing), ``episode`` (a pollution episode: PM2.5, PM10 and NO2 rise together at
every air station within 3 km of a centre station, 1-4 h). They are scheduled at random (a rate
per sensor per simulated day) or injected with `Simulator.inject`. Every fault that touches a
generated span is recorded once in `Simulator.truth` and, when a truth file is given, as a JSON line::

    {"id": "stuck:aq-003:pm25:1717243200000", "kind": "stuck", "sensors": ["aq-003"],
     "sensor": "aq-003", "domain": "air", "metric": "pm25", "metrics": ["pm25"],
     "start": "2024-06-01T12:00:00.000Z", "end": "2024-06-01T13:30:00.000Z",
     "start_ms": 1717243200000, "end_ms": 1717248600000, "params": {...}}

``end`` is exclusive; ``metric`` is null for a dropout (the whole sensor), the primary metric
(``pm25``) for an episode. Faults stay within the physical range: they test anomaly detection, not
the range check.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np
import orjson

from citywatch.registry import DOMAINS, Registry, Sensor
from citywatch.units import conversion
from citywatch.water_index import LAB_METRICS

__all__ = [
    "FAULT_KINDS",
    "FORMATS",
    "DEFAULT_TOPIC",
    "LOCAL_TZ",
    "Fault",
    "PublishStats",
    "SimMessage",
    "Simulator",
    "add_arguments",
    "continuous_metrics",
    "parse_payload",
    "parse_start",
    "run",
]

FORMATS: tuple[str, ...] = ("json", "array", "senml")
FAULT_KINDS: tuple[str, ...] = ("spike", "stuck", "drift", "dropout", "episode")
DEFAULT_TOPIC = "city/{domain}/{sensor}/telemetry"
LOCAL_OFFSET_S = 7 * 3600
LOCAL_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
EPISODE_RADIUS_KM = 3.0
EPISODE_METRICS = ("pm25", "pm10", "no2")

_HOUR = 3600.0
_DAY = 86400.0
_MAX_DURATION = {"spike": 3 * 600.0, "stuck": 3 * _HOUR, "drift": 12 * _HOUR, "dropout": 2 * _HOUR,
                 "episode": 4 * _HOUR}
_NO_FAULT_METRICS = frozenset({"precipitation"})
_INDUSTRIAL = frozenset({"Long Bình Tân", "An Bình", "Long Bình", "Tam Phước", "Phước Tân", "An Hòa",
                         "Tân Vạn", "Hóa An"})

# Typical size of a disturbance, in registry units: spikes are 6-12, drifts 3-6 of these.
_SCALE = {
    "pm25": 15.0, "pm10": 25.0, "no2": 12.0, "so2": 6.0, "o3": 15.0, "co": 300.0,
    "temperature": 1.5, "relativeHumidity": 0.05, "pH": 0.3, "dissolvedOxygen": 0.6, "turbidity": 15.0,
    "conductivity": 30.0, "NH4": 0.2, "intensity": 8.0, "occupancy": 0.06, "averageVehicleSpeed": 5.0,
    "precipitation": 2.0, "windSpeed": 1.0, "soilMoisture": 0.04,
}
# Decimals a device reports (0 = an integer).
_DECIMALS = {
    "pm25": 1, "pm10": 1, "no2": 1, "so2": 1, "o3": 1, "co": 0, "temperature": 2, "relativeHumidity": 3,
    "pH": 2, "dissolvedOxygen": 2, "turbidity": 1, "conductivity": 0, "NH4": 3, "intensity": 0,
    "occupancy": 3, "averageVehicleSpeed": 1, "precipitation": 1, "windSpeed": 2, "soilMoisture": 3,
    "BOD5": 1, "COD": 1, "TSS": 0, "NO3": 2, "NO2": 3, "PO4": 3, "coliform": 0,
    "As": 4, "Cd": 4, "Pb": 4, "Hg": 5, "Cu": 3, "Zn": 3,
}
LAB_INTERVAL_S = 7 * 86400.0  # one grab sample per water station a week, staggered over the week
# Lab results of a clean sample of the Đồng Nai at Biên Hòa (mg/L, coliform MPN/100 mL) and of a
# polluted one (canals and outfalls of the industrial wards); a station sits between the two.
_LAB_CLEAN = {"BOD5": 4.5, "COD": 11.0, "TSS": 35.0, "NO3": 0.6, "NO2": 0.02, "PO4": 0.08, "coliform": 3200.0,
              "As": 0.003, "Cd": 0.0006, "Pb": 0.004, "Hg": 0.0002, "Cu": 0.015, "Zn": 0.04}
_LAB_POLLUTED = {"BOD5": 22.0, "COD": 48.0, "TSS": 110.0, "NO3": 2.5, "NO2": 0.12, "PO4": 0.6, "coliform": 24000.0,
                 "As": 0.012, "Cd": 0.004, "Pb": 0.025, "Hg": 0.0011, "Cu": 0.09, "Zn": 0.35}


def continuous_metrics(sensor: Sensor) -> list[str]:
    """The metrics a device reports every interval (not the periodic lab results of water stations)."""
    return [m for m in sensor.metrics if not (sensor.domain == "water" and m in LAB_METRICS)]


# --------------------------------------------------------------------------------------------------
# Counter-based randomness: a value is a hash of (stream, index), so any span can be regenerated.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=1 << 16)
def _stream(*parts: object) -> np.uint64:
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _uniform(stream: np.uint64, idx) -> np.ndarray:
    """Uniform [0, 1) for each integer index."""
    i = np.atleast_1d(np.asarray(idx, dtype=np.int64)).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(i * _GOLDEN + stream)
        h = _mix(h ^ stream)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(stream: np.uint64, idx) -> np.ndarray:
    """Standard normal for each integer index (Box-Muller on two hashed uniforms)."""
    i = np.atleast_1d(np.asarray(idx, dtype=np.int64))
    u1 = _uniform(stream, 2 * i)
    u2 = _uniform(stream, 2 * i + 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _smooth(stream: np.uint64, t: np.ndarray, period: float) -> np.ndarray:
    """Smooth noise (about unit variance) varying on the time scale `period` seconds."""
    x = np.asarray(t, dtype=np.float64) / period
    j = np.floor(x)
    f = x - j
    j = j.astype(np.int64)
    a, b = _normal(stream, j), _normal(stream, j + 1)
    w = f * f * (3.0 - 2.0 * f)
    return (a + (b - a) * w) * 1.17


def _poisson(lam: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Poisson counts by inversion of the CDF with the uniforms `u` (normal approximation, with `z`,
    for large means)."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    out = np.zeros(lam.shape, dtype=np.int64)
    small = lam < 40.0
    if small.any():
        ls, us = lam[small], u[small]
        k = np.zeros(ls.shape, dtype=np.int64)
        p = np.exp(-ls)
        cdf = p.copy()
        for i in range(1, 200):
            more = us > cdf
            if not more.any():
                break
            k += more
            p = p * ls / i
            cdf = cdf + p
        out[small] = k
    big = ~small
    if big.any():
        out[big] = np.maximum(0, np.round(lam[big] + np.sqrt(lam[big]) * z[big])).astype(np.int64)
    return out


# --------------------------------------------------------------------------------------------------
# Calendar helpers (local time, UTC+7)

def local_hour(t: np.ndarray) -> np.ndarray:
    return ((np.asarray(t, dtype=np.float64) + LOCAL_OFFSET_S) % _DAY) / _HOUR


def local_weekday(t: np.ndarray) -> np.ndarray:
    """0 = Monday ... 6 = Sunday (1970-01-01 was a Thursday)."""
    days = np.floor((np.asarray(t, dtype=np.float64) + LOCAL_OFFSET_S) / _DAY).astype(np.int64)
    return (days + 3) % 7


def _bump(h: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    d = (h - mu + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / sigma) ** 2)


def _plateau(h: np.ndarray, on: float, off: float, w_on: float = 0.5, w_off: float = 0.8) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(h - on) / w_on)) / (1.0 + np.exp((h - off) / w_off))


def _diurnal(h: np.ndarray, t_min: float = 5.5, t_max: float = 14.0) -> np.ndarray:
    """-1 at `t_min` o'clock, +1 at `t_max`, a cosine rising and a slower cosine falling."""
    rise = t_max - t_min
    x = (h - t_min) % 24.0
    return np.where(x <= rise, -np.cos(np.pi * x / rise), np.cos(np.pi * (x - rise) / (24.0 - rise)))


def traffic_profile(t: np.ndarray) -> np.ndarray:
    """Expected traffic relative to the weekday peak (about 1.0 at 07:30 and 17:30 on weekdays)."""
    h = local_hour(t)
    wd = local_weekday(t)
    weekday = 0.03 + 0.50 * _plateau(h, 5.8, 21.5) + 0.50 * _bump(h, 7.4, 0.8) + 0.55 * _bump(h, 17.6, 1.0)
    saturday = 0.03 + 0.50 * _plateau(h, 6.5, 22.5) + 0.15 * _bump(h, 9.5, 1.8) + 0.35 * _bump(h, 17.8, 1.5)
    sunday = 0.03 + 0.45 * _plateau(h, 7.0, 22.0) + 0.10 * _bump(h, 10.0, 2.0) + 0.30 * _bump(h, 18.0, 1.5)
    return np.where(wd < 5, weekday, np.where(wd == 5, saturday, sunday))


def _haversine_km(a: Sensor, b: Sensor) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def rfc3339(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds."""
    ms = int(round(t * 1000))
    dt = datetime.fromtimestamp(ms // 1000, timezone.utc).replace(microsecond=(ms % 1000) * 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# --------------------------------------------------------------------------------------------------
# Rain: showers per grid cell, scheduled per local day.

@dataclass(frozen=True)
class _Showers:
    start: np.ndarray  # epoch s
    dur: np.ndarray  # s
    peak: np.ndarray  # mm/h

    @property
    def end(self) -> np.ndarray:
        return self.start + self.dur

    @property
    def total(self) -> np.ndarray:  # mm
        return 2.0 * self.peak * self.dur / (np.pi * _HOUR)


class _Rain:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[tuple[str, int], _Showers] = {}

    def _day(self, cell: str, day: int, wet_factor: float) -> _Showers:
        key = (cell, day)
        got = self._cache.get(key)
        if got is not None:
            return got
        month = (datetime(1970, 1, 1) + timedelta(days=day)).month
        season = 1.0 if 5 <= month <= 11 else 0.12
        hours = np.arange(24, dtype=np.float64)
        p = (0.008 + 0.09 * _bump(hours, 16.0, 1.8) + 0.01 * _bump(hours, 2.0, 3.0)) * season * wet_factor
        s = _stream(self.seed, "rain", cell)
        idx = (day * 24 + np.arange(24)) * 8
        hit = _uniform(s, idx) < p
        day0 = day * _DAY - LOCAL_OFFSET_S
        start = day0 + (hours + _uniform(s, idx + 1)) * _HOUR
        dur = 900.0 + _uniform(s, idx + 2) * 6300.0
        peak = 4.0 + 50.0 * _uniform(s, idx + 3) ** 2
        got = _Showers(start[hit], dur[hit], peak[hit])
        if len(self._cache) > 20000:
            self._cache.clear()
        self._cache[key] = got
        return got

    def showers(self, cell: str, t0: float, t1: float, wet_factor: float) -> _Showers:
        d0 = int(math.floor((t0 + LOCAL_OFFSET_S) / _DAY)) - 1
        d1 = int(math.floor((t1 + LOCAL_OFFSET_S) / _DAY))
        parts = [self._day(cell, d, wet_factor) for d in range(d0, d1 + 1)]
        return _Showers(np.concatenate([p.start for p in parts]), np.concatenate([p.dur for p in parts]),
                        np.concatenate([p.peak for p in parts]))


@dataclass
class _RainAt:
    """Rain seen by one sensor at its sample times."""

    showers: _Showers
    t: np.ndarray

    def _frac(self, t: np.ndarray) -> np.ndarray:  # fraction of each shower fallen by t  (N x E)
        x = np.clip((t[:, None] - self.showers.start[None, :]) / self.showers.dur[None, :], 0.0, 1.0)
        return (1.0 - np.cos(np.pi * x)) / 2.0

    def rate(self) -> np.ndarray:
        """mm/h now."""
        if len(self.showers.start) == 0:
            return np.zeros_like(self.t)
        x = (self.t[:, None] - self.showers.start[None, :]) / self.showers.dur[None, :]
        inside = (x >= 0) & (x < 1)
        return (np.where(inside, np.sin(np.pi * np.clip(x, 0, 1)), 0.0) * self.showers.peak[None, :]).sum(axis=1)

    def amount(self, period: float) -> np.ndarray:
        """mm fallen in (t - period, t]."""
        if len(self.showers.start) == 0:
            return np.zeros_like(self.t)
        total = self.showers.total[None, :]
        return ((self._frac(self.t) - self._frac(self.t - period)) * total).sum(axis=1)

    def wet(self, tau: float, lag: float = 0.0) -> np.ndarray:
        """Recent rain in mm, fading with time constant `tau` after each shower ends."""
        if len(self.showers.start) == 0:
            return np.zeros_like(self.t)
        t = self.t - lag
        since_end = np.maximum(0.0, t[:, None] - self.showers.end[None, :])
        return (self._frac(t) * self.showers.total[None, :] * np.exp(-since_end / tau)).sum(axis=1)


# --------------------------------------------------------------------------------------------------
# Faults

@dataclass(eq=False)
class Fault:
    """An injected fault or event. Times are epoch seconds; `end` is exclusive."""

    kind: str
    sensors: tuple[str, ...]
    metric: str | None
    start: float
    end: float
    metrics: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def __post_init__(self) -> None:
        self.start, self.end = float(self.start), float(self.end)
        self.params = orjson.loads(orjson.dumps(self.params, option=orjson.OPT_SERIALIZE_NUMPY))

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.sensors[0]}:{self.metric or '*'}:{int(round(self.start * 1000))}"

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.start < t1 and self.end > t0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "sensors": list(self.sensors), "sensor": self.sensors[0],
            "domain": self.domain, "metric": self.metric, "metrics": list(self.metrics),
            "start": rfc3339(self.start), "end": rfc3339(self.end),
            "start_ms": int(round(self.start * 1000)), "end_ms": int(round(self.end * 1000)),
            "params": self.params,
        }


@dataclass
class SimMessage:
    topic: str
    payload: bytes
    time_ms: int  # event time of the newest reading in the message
    sensor: str
    readings: int
    retain: bool = False
    live_only: bool = False  # a device format timed on arrival: published only when due now (not in a replay)


@dataclass
class PublishStats:
    messages: int = 0
    readings: int = 0
    acknowledged: int = 0
    sim_start: float = 0.0
    sim_end: float = 0.0
    faults: int = 0
    interrupted: bool = False
    wall_seconds: float = 0.0


@dataclass
class _SensorSim:
    sensor: Sensor
    index: int
    interval_ms: int
    phase_ms: int
    fmt: str
    cell: str
    wet_factor: float
    units: dict[str, str]  # SenML unit per metric
    topic: str
    p: dict[str, float]  # static per-sensor parameters


# --------------------------------------------------------------------------------------------------

class Simulator:
    """Simulated devices for the sensors of `registry`.

    * `seed`: signals, noise and the fault schedule follow from it (a sensor's payload format
      depends only on its id);
    * `start`: epoch seconds of the simulated start (default: now); `speedup`: simulated seconds per
      wall second for `publish_forever`;
    * `formats`: the payload formats to mix (one per sensor, chosen deterministically from its id);
    * `faults`: kinds from `FAULT_KINDS` scheduled at random, `fault_rate` times per sensor per
      simulated day for each kind (episodes: `fault_rate` x 2 per day city-wide), never starting
      before `start`;
    * `truth`: a path or a text file receiving one JSON line per fault (see the module docstring);
    * `sensors` / `domains`: simulate only these sensor ids / domains;
    * `topic`: the topic pattern, with ``{domain}`` and ``{sensor}``;
    * `batch_size`: readings per upload for sensors using the ``array`` format;
    * `device_formats`: sensors whose registry entry names a device (``source: {family, device}``)
      publish as that device family does (`citywatch.device_formats`), mapped back through
      `source_profiles` (default: the shipped profile of each family).
    """

    def __init__(self, registry: Registry, seed: int = 0, start: float | None = None, speedup: float = 60.0,
                 formats: Sequence[str] = FORMATS, *, topic: str = DEFAULT_TOPIC, faults: Iterable[str] = (),
                 fault_rate: float = 1.0, truth: str | os.PathLike[str] | IO[str] | None = None,
                 sensors: Iterable[str] | None = None, domains: Iterable[str] | None = None,
                 batch_size: int = 5, device_formats: bool = False,
                 source_profiles: Sequence[Any] | None = None) -> None:
        formats = tuple(formats)
        if not formats or any(f not in FORMATS for f in formats):
            raise ValueError(f"formats must be taken from {FORMATS}, got {formats!r}")
        faults = tuple(faults)
        unknown = [k for k in faults if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; choose from {', '.join(FAULT_KINDS)}")
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        if fault_rate < 0:
            raise ValueError("fault_rate cannot be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if "{sensor}" not in topic:
            raise ValueError(f"topic pattern {topic!r} needs a {{sensor}} level")
        self.registry = registry
        self.seed = int(seed)
        self.start = float(time.time() if start is None else start)
        self.speedup = float(speedup)
        self.formats = formats
        self.topic = topic
        self.fault_kinds = faults
        self.fault_rate = float(fault_rate)
        self.batch_size = int(batch_size)
        self.truth: list[dict[str, Any]] = []
        self._truth_ids: set[str] = set()
        self._injected: list[Fault] = []
        self._rain = _Rain(self.seed)
        self._frozen_cache: dict[tuple[str, str], float] = {}
        self._own_truth_file = False
        self._truth_file: IO[str] | None = None
        if truth is not None:
            if hasattr(truth, "write"):
                self._truth_file = truth  # type: ignore[assignment]
            else:
                self._truth_file = open(truth, "a", encoding="utf-8")
                self._own_truth_file = True
        wanted = None if sensors is None else set(sensors)
        doms = None if domains is None else set(domains)
        if wanted is not None:
            missing = sorted(wanted - set(registry.sensors))
            if missing:
                raise ValueError(f"sensor(s) not in the registry: {', '.join(missing)}")
        self.sims: dict[str, _SensorSim] = {}
        for i, s in enumerate(sorted(registry.sensors.values(), key=lambda s: s.id)):
            if (wanted is not None and s.id not in wanted) or (doms is not None and s.domain not in doms):
                continue
            if not s.interval or s.interval <= 0 or not s.metrics:
                continue
            self.sims[s.id] = self._setup(s, i)
        # Episode centres: simulated air stations with at least one neighbour within the radius.
        air = [self.sims[k].sensor for k in sorted(self.sims) if self.sims[k].sensor.domain == "air"
               and "pm25" in self.sims[k].sensor.metrics]
        self._neighbours: dict[str, list[tuple[str, float]]] = {}
        for a in air:
            near = [(b.id, _haversine_km(a, b)) for b in air]
            self._neighbours[a.id] = sorted([(bid, d) for bid, d in near if d <= EPISODE_RADIUS_KM],
                                            key=lambda x: (x[1], x[0]))
        self.episode_centres = [a.id for a in air if len(self._neighbours[a.id]) >= 2]
        self.devices = None
        if device_formats:
            from citywatch.device_formats import DeviceFormats
            from citywatch.ingest.sources.mapper import load_profiles

            families = sorted({s.sensor.source.family for s in self.sims.values() if s.sensor.source is not None})
            self.devices = DeviceFormats([s.sensor for s in self.sims.values()],
                                         load_profiles(families if source_profiles is None else source_profiles),
                                         self.seed)
            for sid, enc in self.devices.encoders.items():
                sim = self.sims[sid]
                sim.fmt = "device"
                sim.phase_ms = enc.align_phase(sim.phase_ms, sim.interval_ms)

    # ---------------------------------------------------------------- setup

    def _setup(self, s: Sensor, index: int) -> _SensorSim:
        interval_ms = int(round(float(s.interval) * 1000))
        key = _stream(self.seed, "sensor", s.id)
        u = _uniform(key, np.arange(16))
        fixed = int.from_bytes(hashlib.blake2b(s.id.encode(), digest_size=8).digest(), "little")
        fmt = self.formats[fixed % len(self.formats)]
        units = {m: spec.unit for m, spec in s.metrics.items()}
        if fmt == "senml":
            if "co" in units and units["co"] == "ug/m3" and (fixed >> 8) % 2 == 0:
                units["co"] = "mg/m3"
            if units.get("relativeHumidity") == "1" and (fixed >> 9) % 3 == 0:
                units["relativeHumidity"] = "%"
        grid = 0.08
        cell = f"{math.floor(s.lat / grid)}:{math.floor(s.lon / grid)}"
        industrial = s.area in _INDUSTRIAL
        p = {
            "u0": float(u[0]), "u1": float(u[1]), "u2": float(u[2]), "u3": float(u[3]), "u4": float(u[4]),
            "level": (1.25 if industrial else 0.85) + 0.35 * float(u[1]),
            "industrial": 1.0 if industrial else 0.0,
            "lowcost": 0.0 if {"no2", "o3", "co", "so2"} & set(s.metrics) else 1.0,
        }
        topic = self.topic.replace("{domain}", s.domain).replace("{sensor}", s.id)
        return _SensorSim(s, index, interval_ms, int(u[5] * interval_ms), fmt, cell,
                          1.3 if s.domain == "forest" else 1.0, units, topic, p)

    # ---------------------------------------------------------------- models

    def _model(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        s = sim.sensor
        lookback = 10 * _DAY if s.domain == "forest" else 3 * _DAY
        showers = self._rain.showers(sim.cell, float(t.min()) - lookback, float(t.max()), sim.wet_factor) \
            if len(t) else _Showers(np.zeros(0), np.zeros(0), np.zeros(0))
        rain = _RainAt(showers, t)
        fn = {"air": self._air, "water": self._water, "traffic": self._traffic, "forest": self._forest}[s.domain]
        vals = fn(sim, k, t, rain)
        out: dict[str, np.ndarray] = {}
        for metric in continuous_metrics(s):
            spec = s.metrics[metric]
            v = vals.get(metric)
            if v is None:  # a metric this model does not know: a plausible wandering value
                lo = spec.min if spec.min is not None else 0.0
                hi = spec.max if spec.max is not None else lo + 100.0
                v = lo + (hi - lo) * (0.3 + 0.05 * _smooth(self._ks(sim, metric, "g"), t, 3 * _HOUR)
                                      + 0.01 * _normal(self._ks(sim, metric), k))
            out[metric] = np.asarray(v, dtype=np.float64)
        return out

    def _ks(self, sim: _SensorSim, metric: str, what: str = "noise") -> np.uint64:
        return _stream(self.seed, sim.sensor.id, metric, what)

    def _noise(self, sim: _SensorSim, metric: str, k: np.ndarray, sd: float) -> np.ndarray:
        return sd * _normal(self._ks(sim, metric), k)

    def _weather(self, t: np.ndarray, rain: _RainAt) -> tuple[np.ndarray, np.ndarray]:
        """City-scale air temperature (°C) and relative humidity (0..1)."""
        h = local_hour(t)
        f = _diurnal(h, 5.5, 14.0)
        synoptic = _smooth(_stream(self.seed, "city", "temperature"), t, 12 * _HOUR)
        cool = 1.0 - np.exp(-rain.wet(2 * _HOUR) / 3.0)
        temp = 29.5 + 3.5 * f + 0.7 * synoptic - 3.0 * cool
        rh = 0.78 - 0.16 * f - 0.025 * synoptic + 0.18 * cool
        return temp, rh

    def _air(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray, rain: _RainAt) -> dict[str, np.ndarray]:
        p = sim.p
        h = local_hour(t)
        tp = traffic_profile(t)
        low = p["lowcost"]
        temp, rh = self._weather(t, rain)
        temp = temp + 0.3 * _smooth(self._ks(sim, "temperature", "s"), t, 6 * _HOUR) + self._noise(sim, "temperature", k, 0.12 + 0.1 * low)
        rh = np.clip(rh + 0.02 * _smooth(self._ks(sim, "relativeHumidity", "s"), t, 6 * _HOUR)
                     + self._noise(sim, "relativeHumidity", k, 0.006 + 0.006 * low), 0.3, 0.99)
        city = np.exp(0.25 * _smooth(_stream(self.seed, "city", "pm"), t, 8 * _HOUR))
        local = np.exp(0.15 * _smooth(self._ks(sim, "pm25", "s"), t, 3 * _HOUR))
        washout = 1.0 - 0.55 * (1.0 - np.exp(-rain.wet(6 * _HOUR) / 5.0))
        shape = 0.75 + 0.35 * _bump(h, 7.5, 1.2) + 0.95 * _bump(h, 19.5, 1.6) - 0.30 * _bump(h, 13.5, 2.0)
        # dry season (December-April) is dustier than the rainy season
        season = 1.0 + 0.25 * np.cos(2 * np.pi * (((t + LOCAL_OFFSET_S) / _DAY) % 365.2425 - 15.0) / 365.2425)
        pm25 = 22.0 * p["level"] * shape * season * city * local * washout
        if low:  # optical counters over-read in humid air (hygroscopic growth)
            pm25 = pm25 * (1.0 + 1.5 * np.clip(rh - 0.75, 0.0, None))
        pm25 = pm25 * (1.0 + self._noise(sim, "pm25", k, 0.04 + 0.04 * low)) + self._noise(sim, "pm25", k + 7_777_777, 0.8)
        ratio = 1.45 + 0.25 * p["u2"]
        pm10 = pm25 * ratio * (1.0 + self._noise(sim, "pm10", k, 0.05 + 0.03 * low)) + 3.0 * p["industrial"]
        traffic_mult = 0.8 + 0.5 * p["u3"]
        no2 = (10.0 + 38.0 * tp * traffic_mult) * np.sqrt(city) * (1.0 + 0.2 * _bump(h, 20.0, 2.0))
        no2 = no2 + self._noise(sim, "no2", k, 2.0)
        sun = 1.0 - 0.7 * np.clip(rain.rate() / 5.0, 0.0, 1.0)
        o3 = 6.0 + 85.0 * _bump(h, 13.5, 2.4) * sun * (0.8 + 0.4 * p["u4"]) - 0.12 * no2
        o3 = o3 + self._noise(sim, "o3", k, 2.5)
        co = 300.0 + 900.0 * tp * traffic_mult * np.sqrt(city) + self._noise(sim, "co", k, 35.0)
        so2 = 5.0 + 12.0 * p["industrial"] * (1 + 0.3 * _smooth(self._ks(sim, "so2", "s"), t, 2 * _HOUR)) \
            + 3.0 * p["u0"] + self._noise(sim, "so2", k, 0.8)
        return {"pm25": pm25, "pm10": pm10, "no2": no2, "o3": o3, "co": co, "so2": so2,
                "temperature": temp, "relativeHumidity": rh}

    def _water(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray, rain: _RainAt) -> dict[str, np.ndarray]:
        p = sim.p
        s = sim.sensor
        h = local_hour(t)
        fw = np.cos(2 * np.pi * (h - 15.0) / 24.0)
        wet_lag = rain.wet(8 * _HOUR, lag=45 * 60.0)
        temp = 29.0 + 0.8 * fw + 0.4 * _smooth(_stream(self.seed, "city", "water-temp"), t, 24 * _HOUR) \
            - 0.04 * np.minimum(rain.wet(3 * _HOUR), 15.0) + self._noise(sim, "temperature", k, 0.04)
        ph = 6.9 + 0.5 * (p["u0"] - 0.5) + 0.12 * fw - 0.25 * (1 - np.exp(-wet_lag / 10.0)) \
            + self._noise(sim, "pH", k, 0.03)
        do = 5.9 + 1.2 * (p["u1"] - 0.5) - 0.6 * p["industrial"] + 0.9 * fw \
            - 0.8 * (1 - np.exp(-wet_lag / 10.0)) + self._noise(sim, "dissolvedOxygen", k, 0.07)
        turb = (15.0 + 30.0 * p["u2"]) * np.exp(0.12 * _smooth(self._ks(sim, "turbidity", "s"), t, 6 * _HOUR)) \
            + 8.0 * wet_lag
        turb = turb * (1.0 + self._noise(sim, "turbidity", k, 0.025))
        tidal = np.clip((10.93 - s.lat) / 0.05, 0.0, 1.2)  # the lower river feels the tide
        m2 = 12.42 * _HOUR
        cond = (70.0 + 70.0 * p["u3"] + 60.0 * p["industrial"]) * (1.0 - 0.3 * (1 - np.exp(-wet_lag / 15.0))) \
            + 160.0 * tidal * (0.5 + 0.5 * np.cos(2 * np.pi * t / m2 + 6.28 * p["u4"])) \
            + self._noise(sim, "conductivity", k, 2.0)
        nh4 = (0.15 + 0.3 * p["u4"]) * (1.0 + 1.5 * p["industrial"]) + 0.15 * _bump(h, 8.0, 2.0) \
            + 0.004 * wet_lag + self._noise(sim, "NH4", k, 0.015)
        return {"temperature": temp, "pH": ph, "dissolvedOxygen": do, "turbidity": turb,
                "conductivity": cond, "NH4": nh4}

    def _traffic(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray, rain: _RainAt) -> dict[str, np.ndarray]:
        p = sim.p
        rc = sim.sensor.road_class or "secondary"
        peak = {"main": 75.0, "secondary": 32.0, "side": 9.0}[rc] * (0.75 + 0.5 * p["u1"])
        vfree = {"main": 55.0, "secondary": 42.0, "side": 28.0}[rc]
        per = float(sim.sensor.interval) / 60.0
        raining = np.clip(rain.rate() / 10.0, 0.0, 1.0)
        tp = traffic_profile(t)
        lam = peak * per * tp * np.exp(0.08 * _smooth(self._ks(sim, "intensity", "s"), t, 2 * _HOUR)) \
            * (1.0 - 0.15 * raining)
        ks = self._ks(sim, "intensity")
        count = _poisson(lam, _uniform(ks, 2 * k), _normal(ks, 2 * k + 1)).astype(np.float64)
        load = count / (peak * per)
        occ = 0.005 + 0.42 * load ** 1.6 * (1.0 + 0.25 * raining) + self._noise(sim, "occupancy", k, 0.01)
        speed = vfree * (1.0 - 0.55 * np.clip(load, 0, 1.4) ** 2) * (1.0 - 0.12 * raining) \
            + self._noise(sim, "averageVehicleSpeed", k, 2.0)
        speed = np.maximum(speed, 4.0 + 2.0 * p["u2"])
        occ = np.where(count == 0, np.abs(occ) * 0.2, np.clip(occ, 0.002, 0.97))
        return {"intensity": count, "occupancy": occ, "averageVehicleSpeed": speed}

    def _forest(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray, rain: _RainAt) -> dict[str, np.ndarray]:
        p = sim.p
        h = local_hour(t)
        f = _diurnal(h, 5.5, 13.5)
        wet_s = 1.0 - np.exp(-rain.wet(2 * _HOUR) / 3.0)
        synoptic = _smooth(_stream(self.seed, "forest", "temperature"), t, 12 * _HOUR)
        temp = 26.0 + 4.0 * f + 0.6 * synoptic - 3.5 * wet_s - 1.0 * p["u0"] + self._noise(sim, "temperature", k, 0.1)
        rh = 0.80 - 0.17 * f - 0.02 * synoptic + 0.2 * wet_s + self._noise(sim, "relativeHumidity", k, 0.008)
        rh = np.clip(rh, 0.4, 0.995)
        amount = rain.amount(float(sim.sensor.interval))
        precip = np.floor(amount / 0.2 + 0.1) * 0.2  # tipping bucket, 0.2 mm per tip
        rate = rain.rate()
        wind = 0.8 + 1.6 * _bump(h, 14.0, 3.0) + 2.5 * np.clip(rate / 15.0, 0.0, 1.0) \
            + 0.4 * _smooth(self._ks(sim, "windSpeed", "s"), t, _HOUR) + 0.35 * np.abs(_normal(self._ks(sim, "windSpeed"), k))
        soil = 0.20 + 0.08 * (p["u1"] - 0.5) + 0.25 * (1.0 - np.exp(-rain.wet(40 * _HOUR) / 25.0)) \
            + self._noise(sim, "soilMoisture", k, 0.002)
        return {"temperature": temp, "relativeHumidity": rh, "precipitation": precip,
                "windSpeed": np.maximum(wind, 0.0), "soilMoisture": soil}

    # ---------------------------------------------------------------- faults

    def inject(self, kind: str, sensor: str, metric: str | None = None, start: float | None = None,
               end: float | None = None, magnitude: float | None = None) -> Fault:
        """Inject a fault (or, with kind "episode", a pollution episode centred on air station `sensor`).

        `start`/`end` are epoch seconds (default: the simulated start and one hour later). `metric`
        defaults to the sensor's first metric (ignored for dropout and episode). `magnitude` is the
        spike offset, the drift at `end`, or the episode's PM2.5 rise at the centre, in registry units.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULT_KINDS)}")
        sim = self.sims.get(sensor)
        if sim is None:
            raise ValueError(f"sensor {sensor!r} is not simulated")
        start = self.start if start is None else float(start)
        end = start + _HOUR if end is None else float(end)
        if end <= start:
            raise ValueError("a fault's end must be after its start")
        if kind == "episode":
            if sensor not in self._neighbours:
                raise ValueError(f"an episode is centred on an air station measuring pm25, not {sensor!r}")
            fault = self._episode(sensor, start, end, 120.0 if magnitude is None else float(magnitude))
        else:
            if kind == "dropout":
                metric = None
            else:
                metric = metric or next(iter(sim.sensor.metrics))
                if metric not in sim.sensor.metrics:
                    raise ValueError(f"sensor {sensor!r} has no metric {metric!r}")
            params: dict[str, Any] = {"injected": True}
            if kind in ("spike", "drift"):
                scale = self._scale(sim, metric)
                params["magnitude"] = float(magnitude) if magnitude is not None else (8.0 if kind == "spike" else 4.0) * scale
            fault = Fault(kind, (sensor,), metric, start, end, (metric,) if metric else tuple(continuous_metrics(sim.sensor)),
                          params, sim.sensor.domain)
        self._injected.append(fault)
        return fault

    def _scale(self, sim: _SensorSim, metric: str) -> float:
        if metric in _SCALE:
            return _SCALE[metric]
        spec = sim.sensor.metrics[metric]
        if spec.min is not None and spec.max is not None:
            return 0.02 * (spec.max - spec.min)
        return 1.0

    def _episode(self, centre: str, start: float, end: float, amplitude: float) -> Fault:
        near = self._neighbours[centre]
        weights = {sid: round(1.0 - 0.5 * d / EPISODE_RADIUS_KM, 3) for sid, d in near}
        metrics = tuple(m for m in EPISODE_METRICS)
        return Fault("episode", tuple(sid for sid, _ in near), "pm25", start, end, metrics,
                     {"pm25_rise": round(amplitude, 1), "no2_rise": round(0.35 * amplitude, 1),
                      "radius_km": EPISODE_RADIUS_KM, "weights": weights}, "air")

    def _snap(self, sim: _SensorSim, t: float) -> float:
        """The first sample time at or after t (epoch seconds)."""
        k = math.ceil((t * 1000 - sim.phase_ms) / sim.interval_ms)
        return (k * sim.interval_ms + sim.phase_ms) / 1000.0

    def _scheduled(self, sim: _SensorSim, kind: str, t0: float, t1: float) -> list[Fault]:
        if self.fault_rate <= 0 or kind == "episode":
            return []
        metrics = [m for m in continuous_metrics(sim.sensor) if m not in _NO_FAULT_METRICS]
        if sim.fmt == "device":  # only what the device publishes: a fault elsewhere is unobservable
            metrics = [m for m in metrics if m in self.devices.encoders[sim.sensor.id].keys]
        if kind != "dropout" and not metrics:
            return []
        iv = sim.interval_ms / 1000.0
        s = _stream(self.seed, "fault", kind, sim.sensor.id)
        k0 = int(math.floor((t0 - _MAX_DURATION[kind]) / _HOUR)) - 1
        k1 = int(math.floor(t1 / _HOUR)) + 1
        slots = np.arange(k0, k1, dtype=np.int64)
        idx = slots * 8
        hit = _uniform(s, idx) < self.fault_rate / 24.0
        out = []
        for slot, base in zip(slots[hit], idx[hit]):
            u = _uniform(s, base + np.arange(1, 6))
            start = self._snap(sim, (slot + u[0]) * _HOUR)
            metric = None if kind == "dropout" else metrics[int(u[1] * len(metrics))]
            params: dict[str, Any] = {}
            if kind == "spike":
                n = 1 + int(u[2] * 3)
                end = start + n * iv
                sign = 1.0 if u[3] < 0.8 else -1.0
                params["magnitude"] = round(sign * (6.0 + 6.0 * u[4]) * self._scale(sim, metric), 6)
            elif kind == "stuck":
                end = start + max(1800.0 + u[2] * 9000.0, 3 * iv)
            elif kind == "drift":
                end = start + 2 * _HOUR + u[2] * 10 * _HOUR
                sign = 1.0 if u[3] < 0.5 else -1.0
                params["magnitude"] = round(sign * (3.0 + 3.0 * u[4]) * self._scale(sim, metric), 6)
            else:  # dropout
                end = start + max(600.0 + u[2] * 6600.0, 2 * iv)
            end = self._snap(sim, end)
            out.append(Fault(kind, (sim.sensor.id,), metric, start, end,
                             (metric,) if metric else tuple(continuous_metrics(sim.sensor)), params, sim.sensor.domain))
        return [f for f in out if f.overlaps(t0, t1) and f.start >= self.start]

    def _scheduled_episodes(self, t0: float, t1: float) -> list[Fault]:
        if "episode" not in self.fault_kinds or self.fault_rate <= 0 or not self.episode_centres:
            return []
        s = _stream(self.seed, "episode")
        k0 = int(math.floor((t0 - _MAX_DURATION["episode"]) / _HOUR)) - 1
        k1 = int(math.floor(t1 / _HOUR)) + 1
        slots = np.arange(k0, k1, dtype=np.int64)
        idx = slots * 8
        hit = _uniform(s, idx) < 2.0 * self.fault_rate / 24.0
        out = []
        for slot, base in zip(slots[hit], idx[hit]):
            u = _uniform(s, base + np.arange(1, 5))
            centre = self.episode_centres[int(u[0] * len(self.episode_centres))]
            start = round((slot + u[1]) * _HOUR, 3)
            end = start + _HOUR + u[2] * 3 * _HOUR
            out.append(self._episode(centre, start, round(end, 3), 60.0 + 120.0 * float(u[3])))
        return [f for f in out if f.overlaps(t0, t1) and f.start >= self.start]

    def _sensor_faults(self, sim: _SensorSim, t0: float, t1: float) -> list[Fault]:
        sid = sim.sensor.id
        out = [f for f in self._injected if sid in f.sensors and f.overlaps(t0, t1)]
        out += [f for f in self._scheduled_episodes(t0, t1) if sid in f.sensors]
        for kind in self.fault_kinds:
            out += self._scheduled(sim, kind, t0, t1)
        return out

    def faults(self, sim_t0: float, sim_t1: float) -> list[Fault]:
        """Every fault (scheduled or injected) on a simulated sensor that overlaps [t0, t1)."""
        out = [f for f in self._injected if f.overlaps(sim_t0, sim_t1)]
        out += self._scheduled_episodes(sim_t0, sim_t1)
        for sim in self.sims.values():
            for kind in self.fault_kinds:
                out += self._scheduled(sim, kind, sim_t0, sim_t1)
        return sorted(out, key=lambda f: (f.start, f.kind, f.sensors))

    def _record(self, faults: Iterable[Fault]) -> None:
        for f in faults:
            if f.id in self._truth_ids:
                continue
            self._truth_ids.add(f.id)
            row = f.to_json()
            self.truth.append(row)
            if self._truth_file is not None:
                self._truth_file.write(orjson.dumps(row).decode() + "\n")
                self._truth_file.flush()

    # ---------------------------------------------------------------- readings

    def _apply(self, sim: _SensorSim, k: np.ndarray, t: np.ndarray, faults: list[Fault]) -> dict[str, np.ndarray]:
        """Model values with the faults applied (episodes, drifts and spikes add; stuck overrides),
        clipped to the physical range and rounded as the device reports them."""
        vals = self._model(sim, k, t)
        sid = sim.sensor.id
        for f in faults:
            if f.kind == "episode" and sid in f.sensors:
                w = f.params["weights"][sid]
                x = np.clip((t - f.start) / (f.end - f.start), 0.0, 1.0)
                env = np.where(x < 0.25, np.sin(np.pi * x / 0.5) ** 2,
                               np.where(x > 0.7, np.cos(np.pi * (x - 0.7) / 0.6) ** 2, 1.0))
                env = np.where((t >= f.start) & (t < f.end), env, 0.0)
                rise = f.params["pm25_rise"] * w * env
                if "pm25" in vals:
                    vals["pm25"] = vals["pm25"] + rise
                if "pm10" in vals:
                    vals["pm10"] = vals["pm10"] + 1.4 * rise
                if "no2" in vals:
                    vals["no2"] = vals["no2"] + f.params["no2_rise"] * w * env
        for f in faults:
            if f.kind in ("drift", "spike") and f.metric in vals and sid in f.sensors:
                inside = (t >= f.start) & (t < f.end)
                if f.kind == "spike":
                    vals[f.metric] = np.where(inside, vals[f.metric] + f.params["magnitude"], vals[f.metric])
                else:
                    ramp = np.clip((t - f.start) / (f.end - f.start), 0.0, 1.0)
                    vals[f.metric] = np.where(inside, vals[f.metric] + f.params["magnitude"] * ramp, vals[f.metric])
        for f in faults:
            if f.kind == "stuck" and f.metric in vals and sid in f.sensors:
                inside = (t >= f.start) & (t < f.end)
                if inside.any():
                    vals[f.metric] = np.where(inside, self._frozen(sim, f), vals[f.metric])
        for metric, v in vals.items():
            spec = sim.sensor.metrics[metric]
            lo = -np.inf if spec.min is None else spec.min
            hi = np.inf if spec.max is None else spec.max
            vals[metric] = np.round(np.clip(v, lo, hi), _DECIMALS.get(metric, 3))
        return vals

    def _frozen(self, sim: _SensorSim, f: Fault) -> float:
        """The value a stuck fault repeats: the reading when it froze, with the faults of that moment;
        a metric already stuck by an earlier fault stays at that value. Memoised (chains of
        overlapping stuck faults would otherwise recompute each other)."""
        key = (f.id, sim.sensor.id)
        got = self._frozen_cache.get(key)
        if got is None:
            t_s = self._snap(sim, f.start)
            k_s = np.array([int(round((t_s * 1000 - sim.phase_ms) / sim.interval_ms))])
            then = [g for g in self._sensor_faults(sim, t_s, t_s + 0.001)
                    if not (g.kind == "stuck" and (g.start, g.id) >= (f.start, f.id))]
            got = float(self._apply(sim, k_s, np.array([t_s]), then)[f.metric][0])
            if len(self._frozen_cache) > 100_000:
                self._frozen_cache.clear()
            self._frozen_cache[key] = got
        return got

    def _grid(self, sim: _SensorSim, lo_ms: int, hi_ms: int) -> np.ndarray:
        k0 = -((sim.phase_ms - lo_ms) // sim.interval_ms)  # ceil((lo - phase) / interval)
        k1 = -((sim.phase_ms - hi_ms) // sim.interval_ms)
        return np.arange(k0, k1, dtype=np.int64)

    def _sensor_readings(self, sim: _SensorSim, lo_ms: int, hi_ms: int,
                         faults: list[Fault]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(sample indexes, event times in ms, values per metric) for samples in [lo_ms, hi_ms)."""
        k = self._grid(sim, lo_ms, hi_ms)
        ts_ms = k * sim.interval_ms + sim.phase_ms
        mine = [f for f in faults if sim.sensor.id in f.sensors]
        if len(k) == 0:
            return k, ts_ms, {m: np.zeros(0) for m in continuous_metrics(sim.sensor)}
        vals = self._apply(sim, k, ts_ms / 1000.0, mine)
        keep = np.ones(len(k), dtype=bool)
        for f in mine:
            if f.kind == "dropout":
                keep &= ~((ts_ms >= f.start * 1000) & (ts_ms < f.end * 1000))
        if not keep.all():
            k, ts_ms = k[keep], ts_ms[keep]
            vals = {m: v[keep] for m, v in vals.items()}
        return k, ts_ms, vals

    def readings(self, sensor_id: str, sim_t0: float, sim_t1: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Event times (epoch ms) and values (registry units) of one sensor in [t0, t1), as published."""
        sim = self.sims[sensor_id]
        lo, hi = _ms(sim_t0), _ms(sim_t1)
        _, ts, vals = self._sensor_readings(sim, lo, hi, self.faults(sim_t0, sim_t1))
        return ts, vals

    # ---------------------------------------------------------------- encoding

    def _encode(self, sim: _SensorSim, ts_ms: np.ndarray, vals: dict[str, np.ndarray]) -> list[bytes] | bytes:
        metrics = list(vals)
        cols = {m: vals[m].tolist() for m in metrics}
        ints = {m for m in metrics if _DECIMALS.get(m) == 0}
        for m in ints:
            cols[m] = [int(x) for x in cols[m]]
        ts_list = ts_ms.tolist()
        if sim.fmt == "senml":
            out = []
            conv = {}
            for m in metrics:
                unit = sim.units[m]
                reg = sim.sensor.metrics[m].unit
                if unit != reg:
                    scale, offset = conversion(reg, unit) or (1.0, 0.0)
                    dec = max(0, _DECIMALS.get(m, 3) - int(round(math.log10(scale))))
                    conv[m] = (scale, offset, dec)
            for i, ts in enumerate(ts_list):
                pack = []
                for j, m in enumerate(metrics):
                    v = cols[m][i]
                    if m in conv:
                        scale, offset, dec = conv[m]
                        v = round(v * scale + offset, dec)
                    rec = {"n": m, "u": sim.units[m], "v": v}
                    if j == 0:
                        rec = {"bn": f"{sim.sensor.id}:", "bt": ts / 1000.0, **rec}
                    pack.append(rec)
                out.append(orjson.dumps(pack))
            return out
        rows = []
        for i, ts in enumerate(ts_list):
            row: dict[str, Any] = {"ts": ts}
            for m in metrics:
                row[m] = cols[m][i]
            rows.append(row)
        if sim.fmt == "json":
            return [orjson.dumps(r) for r in rows]
        return orjson.dumps(rows)

    def messages(self, sim_t0: float, sim_t1: float, *, complete_batches: bool = False) -> list[SimMessage]:
        """The messages for readings in [t0, t1), in event-time order.

        With `complete_batches`, ``array`` devices upload a batch only once its last reading is due
        (the batch may then hold readings from before t0 but not before the simulated start): this is
        what the live publisher uses. Without it, batches are cut at the span's edges.
        """
        lo, hi = _ms(sim_t0), _ms(sim_t1)
        if hi <= lo:
            return []
        B = self.batch_size
        back = 0.0
        if complete_batches and any(s.fmt == "array" for s in self.sims.values()):
            back = B * max(s.interval_ms for s in self.sims.values()) / 1000.0
        if any(s.fmt == "device" for s in self.sims.values()):  # a Frigate count's events follow its time
            back = max(back, max(s.interval_ms for s in self.sims.values() if s.fmt == "device") / 1000.0)
        faults = self.faults(sim_t0 - back, sim_t1)
        self._record(f for f in faults if f.overlaps(sim_t0, sim_t1))
        out: list[SimMessage] = []
        start_ms = _ms(self.start)
        for sim in self.sims.values():
            if sim.fmt == "device":
                out += self._device_messages(sim, lo, hi, faults)
                continue
            if sim.fmt == "array" and complete_batches:
                # A batch is uploaded when its last slot is due: read back to the first slot of the
                # batch that is due first (but not before the simulated start).
                k_first = int(self._grid(sim, lo, lo + sim.interval_ms)[0])
                batch_first_ms = (k_first // B) * B * sim.interval_ms + sim.phase_ms
                lo_read = min(lo, max(start_ms, batch_first_ms))
                k, ts, vals = self._sensor_readings(sim, lo_read, hi, faults)
                last_slot = (k // B) * B + B - 1
                last_ms = last_slot * sim.interval_ms + sim.phase_ms
                due = (last_ms >= lo) & (last_ms < hi)
                k, ts, last_ms = k[due], ts[due], last_ms[due]
                vals = {m: v[due] for m, v in vals.items()}
            else:
                k, ts, vals = self._sensor_readings(sim, lo, hi, faults)
                last_ms = None
            if len(k) == 0:
                continue
            if sim.fmt == "array":
                bid = k // B
                cuts = np.flatnonzero(np.diff(bid)) + 1
                for part in np.split(np.arange(len(k)), cuts):
                    payload = self._encode(sim, ts[part], {m: v[part] for m, v in vals.items()})
                    t_msg = int(last_ms[part[-1]]) if last_ms is not None else int(ts[part[-1]])
                    out.append(SimMessage(sim.topic, payload, t_msg, sim.sensor.id, len(part)))  # type: ignore[arg-type]
            else:
                for t_one, payload in zip(ts.tolist(), self._encode(sim, ts, vals)):
                    out.append(SimMessage(sim.topic, payload, int(t_one), sim.sensor.id, 1))
        out += self._lab_messages(lo, hi)
        out.sort(key=lambda m: (m.time_ms, m.sensor))
        return out

    def _device_messages(self, sim: _SensorSim, lo: int, hi: int, faults: list[Fault]) -> list[SimMessage]:
        """A device-format sensor's messages with event times in [lo, hi) (a reading's messages may
        follow its time by up to an interval: Frigate's events of the counted interval)."""
        enc = self.devices.encoders[sim.sensor.id]
        k, ts, vals = self._sensor_readings(sim, lo - sim.interval_ms * enc.lookback, hi, faults)
        vals = {m: v for m, v in vals.items() if m in enc.keys}
        return [SimMessage(m.topic, m.payload, m.time_ms, sim.sensor.id, m.readings, m.retain, m.live_only)
                for m in enc.encode(k, ts, vals) if lo <= m.time_ms < hi]

    def device_births(self) -> list[SimMessage]:
        """What the device-format sensors publish on connecting (retained availability)."""
        if self.devices is None:
            return []
        now = _ms(time.time())
        return [SimMessage(m.topic, m.payload, now, "", 0, True) for m in self.devices.births()]

    def lab_samples(self, sensor_id: str, lo_ms: int, hi_ms: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Sampling times (epoch ms) and lab results of a water station's grab samples in [lo, hi):
        one a week, on the station's own weekday at 08-11 h local time."""
        sim = self.sims[sensor_id]
        lab = [m for m in sim.sensor.metrics if m in LAB_METRICS] if sim.sensor.domain == "water" else []
        if not lab:
            return np.zeros(0, np.int64), {}
        iv_ms = int(LAB_INTERVAL_S * 1000)
        u = _uniform(_stream(self.seed, "lab", sensor_id), np.arange(2))
        phase_ms = int((int(u[0] * 7) * 86400.0 + (1.0 + 3.0 * u[1]) * _HOUR) * 1000)  # 01-04 UTC = 08-11 local
        k = np.arange(-((phase_ms - lo_ms) // iv_ms), -((phase_ms - hi_ms) // iv_ms), dtype=np.int64)
        ts_ms = k * iv_ms + phase_ms
        dirty = min(1.0, 0.15 + 0.7 * sim.p["industrial"] + 0.3 * sim.p["u4"])
        vals = {}
        for m in lab:
            base = _LAB_CLEAN[m] * (_LAB_POLLUTED[m] / _LAB_CLEAN[m]) ** dirty if m in _LAB_CLEAN else 1.0
            v = base * np.exp(0.25 * _normal(self._ks(sim, m, "lab"), k))
            spec = sim.sensor.metrics[m]
            v = np.clip(v, spec.min if spec.min is not None else -np.inf, spec.max if spec.max is not None else np.inf)
            vals[m] = np.round(v, _DECIMALS.get(m, 3))
        return ts_ms, vals

    def _lab_messages(self, lo_ms: int, hi_ms: int) -> list[SimMessage]:
        out = []
        for sid, sim in self.sims.items():
            ts, vals = self.lab_samples(sid, lo_ms, hi_ms)
            for i, t in enumerate(ts.tolist()):
                payload = self._encode(sim, ts[i:i + 1], {m: v[i:i + 1] for m, v in vals.items()})
                payload = payload if isinstance(payload, bytes) else payload[0]
                out.append(SimMessage(sim.topic, payload, int(t), sid, 1))
        return out

    def generate(self, sim_t0: float, sim_t1: float) -> list[tuple[str, bytes]]:
        """(topic, payload) for every reading with an event time in [t0, t1) (epoch seconds)."""
        return [(m.topic, m.payload) for m in self.messages(sim_t0, sim_t1)]

    # ---------------------------------------------------------------- publishing

    def sim_time(self, wall_elapsed: float) -> float:
        """``start + wall elapsed * speedup``, but never ahead of the wall clock: real devices cannot
        report the future, so a run that starts in the past replays history fast, then goes live."""
        t = self.start + wall_elapsed * self.speedup
        return max(self.start, min(t, time.time()))

    def _finish(self, stats: "PublishStats", pub: "_Publisher", stop: threading.Event, n_truth: int,
                wall0: float | None) -> None:
        """Wait for the acknowledgements and fill in the run's figures."""
        stats.interrupted = stats.interrupted or stop.is_set()
        stats.acknowledged = pub.close()
        stats.faults = len(self.truth) - n_truth
        stats.wall_seconds = 0.0 if wall0 is None else time.monotonic() - wall0

    def publish_span(self, mqtt_url: str, sim_t0: float | None = None, sim_t1: float | None = None, *,
                     rate_limit: float | None = None, chunk: float = 3600.0, qos: int = 1,
                     client_id: str | None = None, mqtt_config: Any = None, protocol: str = "3.1.1",
                     stop: threading.Event | None = None) -> PublishStats:
        """Publish every message of [t0, t1) (default: the simulated start and one hour later) as fast
        as the broker takes them (or at most `rate_limit` messages per second), in `chunk`-second
        pieces of simulated time, then wait for every acknowledgement."""
        t0 = self.start if sim_t0 is None else float(sim_t0)
        t1 = t0 + _HOUR if sim_t1 is None else float(sim_t1)
        stop = stop or threading.Event()
        stats = PublishStats(sim_start=t0, sim_end=t0)
        wall0 = time.monotonic()
        pub = _Publisher(mqtt_url, qos=qos, client_id=client_id, mqtt_config=mqtt_config, protocol=protocol,
                         rate_limit=rate_limit)
        n_truth = len(self.truth)
        try:
            if self.devices is not None:
                pub.listen(self.devices.command_handlers())
            pub.connect()
            _publish_all(pub, self.device_births(), stats, stop)
            a = t0
            while a < t1 and not stop.is_set():
                b = min(t1, a + chunk)
                _publish_all(pub, self.messages(a, b), stats, stop)
                stats.sim_end = b
                a = b
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            self._finish(stats, pub, stop, n_truth, wall0)
        return stats

    def publish_forever(self, mqtt_url: str, duration: float | None = None, rate_limit: float | None = None, *,
                        qos: int = 1, client_id: str | None = None, mqtt_config: Any = None,
                        protocol: str = "3.1.1", stop: threading.Event | None = None, tick: float = 0.25,
                        on_progress: Callable[[PublishStats], None] | None = None,
                        progress_every: float = 10.0) -> PublishStats:
        """Publish in (scaled) real time: the simulated clock is ``start + wall elapsed * speedup``.

        Runs for `duration` wall seconds (None: until `stop` is set or Ctrl-C). On stop, messages
        already handed to the client are delivered and acknowledged before disconnecting."""
        stop = stop or threading.Event()
        pub = _Publisher(mqtt_url, qos=qos, client_id=client_id, mqtt_config=mqtt_config, protocol=protocol,
                         rate_limit=rate_limit)
        stats = PublishStats(sim_start=self.start, sim_end=self.start)
        n_truth = len(self.truth)
        wall0 = None
        try:
            if self.devices is not None:
                pub.listen(self.devices.command_handlers())
            pub.connect()
            _publish_all(pub, self.device_births(), stats, stop)
            wall0 = time.monotonic()
            last_progress = wall0
            prev = self.start
            while not stop.is_set():
                elapsed = time.monotonic() - wall0
                final = duration is not None and elapsed >= duration
                if final:
                    elapsed = duration  # type: ignore[assignment]
                now = self.sim_time(elapsed)
                if now > prev:
                    _publish_all(pub, self.messages(prev, now, complete_batches=True), stats, stop)
                    stats.sim_end = now
                    prev = now
                if final:
                    break
                if on_progress is not None and time.monotonic() - last_progress >= progress_every:
                    last_progress = time.monotonic()
                    stats.acknowledged = pub.acked
                    stats.faults = len(self.truth) - n_truth
                    on_progress(stats)
                wait = tick - (time.monotonic() - wall0 - elapsed)
                if duration is not None:
                    wait = min(wait, duration - (time.monotonic() - wall0))
                stop.wait(max(0.0, wait))
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            self._finish(stats, pub, stop, n_truth, wall0)
        return stats

    def close(self) -> None:
        if self._truth_file is not None and self._own_truth_file:
            self._truth_file.close()
        self._truth_file = None

    def __enter__(self) -> "Simulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ms(t: float) -> int:
    return int(round(float(t) * 1000))


# --------------------------------------------------------------------------------------------------
# MQTT

def _publish_all(pub: "_Publisher", messages: Iterable["SimMessage"], stats: "PublishStats",
                 stop: threading.Event) -> None:
    from citywatch.device_formats import LIVE_WINDOW_MS

    for m in messages:
        if stop.is_set():
            break
        if m.live_only and m.time_ms < time.time() * 1000 - LIVE_WINDOW_MS:
            continue  # stamped on arrival: a device timed so cannot replay the past
        pub.publish(m.topic, m.payload, m.retain)
        stats.messages += 1
        stats.readings += m.readings


class _Publisher:
    """A paho-mqtt client publishing with QoS 1, counting acknowledgements, with back-pressure."""

    def __init__(self, url: str, *, qos: int = 1, client_id: str | None = None, mqtt_config: Any = None,
                 protocol: str = "3.1.1", rate_limit: float | None = None, max_pending: int = 20000,
                 connect_timeout: float = 15.0) -> None:
        from urllib.parse import urlsplit

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"an MQTT url starts with mqtt:// or mqtts://, got {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.qos = qos
        self.rate_limit = rate_limit
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        proto = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
        cid = client_id or f"citywatch-sim-{os.getpid()}-{os.urandom(3).hex()}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
        if mqtt_config is not None:
            from citywatch.ingest.mqtt import configure_client

            configure_client(self.client, mqtt_config)
        elif parts.scheme == "mqtts":
            self.client.tls_set()
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        self.client.max_inflight_messages_set(256)
        self.client.max_queued_messages_set(0)
        self._cond = threading.Condition()
        self._connected = False
        self._connect_error: str | None = None
        self.sent = 0
        self.acked = 0
        self._next_slot = 0.0
        self._handlers: dict[str, Callable[[bytes], Any]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail

    def listen(self, handlers: dict[str, Callable[[bytes], Any]]) -> None:
        """Subscribe (on every connect) to these topics and hand their payloads to the handlers."""
        self._handlers = dict(handlers)
        self.client.on_message = lambda client, userdata, msg: (
            self._handlers[msg.topic](msg.payload) if msg.topic in self._handlers else None)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._cond:
            if getattr(reason_code, "is_failure", False):
                self._connect_error = str(reason_code)
            else:
                self._connected = True
                for topic in self._handlers:
                    client.subscribe(topic, qos=1)
            self._cond.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        with self._cond:
            if not self._connected:
                self._connect_error = "connection failed"
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def connect(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + self.connect_timeout
        with self._cond:
            while not self._connected and self._connect_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
            if not self._connected:
                err = self._connect_error or f"no answer within {self.connect_timeout:g}s"
                self.client.loop_stop()
                raise ConnectionError(f"cannot connect to MQTT broker {self.host}:{self.port}: {err}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.rate_limit:
            now = time.monotonic()
            if self._next_slot > now:
                time.sleep(self._next_slot - now)
            self._next_slot = max(self._next_slot, now) + 1.0 / self.rate_limit
        if self.qos > 0:
            with self._cond:
                while self.sent - self.acked >= self.max_pending:
                    self._cond.wait(0.5)
        self.client.publish(topic, payload, qos=self.qos, retain=retain)
        self.sent += 1
        if self.qos == 0:
            self.acked += 1

    def close(self, timeout: float = 30.0) -> int:
        """Wait for outstanding acknowledgements (up to `timeout`), disconnect; the number acknowledged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent and time.monotonic() < deadline:
                self._cond.wait(0.1)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        return self.acked


# --------------------------------------------------------------------------------------------------
# Decoding (a reference reader of what the simulator publishes, for tests and tools)

def parse_payload(payload: bytes) -> list[tuple[int, str, float, str | None]]:
    """(epoch ms, metric, value, unit or None) for each reading of a simulator payload."""
    doc = orjson.loads(payload)
    out: list[tuple[int, str, float, str | None]] = []
    if isinstance(doc, dict):
        doc = [doc]
    if doc and isinstance(doc[0], dict) and ("bn" in doc[0] or "n" in doc[0]):
        bt = 0.0
        for rec in doc:
            bt = rec.get("bt", bt)
            out.append((int(round((bt + rec.get("t", 0.0)) * 1000)), rec["n"], rec["v"], rec.get("u")))
        return out
    for row in doc:
        ts = row["ts"]
        out.extend((ts, k, v, None) for k, v in row.items() if k != "ts")
    return out


# --------------------------------------------------------------------------------------------------
# CLI

def parse_start(text: str, now: float | None = None) -> float:
    """Epoch seconds from an RFC 3339 time ("2024-06-01T07:00:00+07:00"; without an offset it is
    local Biên Hòa time), "now", or now minus a duration ("now-2h", "-1d")."""
    from citywatch.config import parse_duration

    now = time.time() if now is None else now
    s = text.strip()
    rel = s[3:].strip() if s.lower().startswith("now") else (s if s.startswith("-") else None)
    if rel is not None:
        if not rel:
            return now
        if rel[0] in "+-":
            try:
                delta = parse_duration(rel[1:])
            except ValueError:
                raise ValueError(f"not a duration after 'now{rel[0]}': {text!r} (use e.g. now-6h, now-2d)") from None
            return now - delta if rel[0] == "-" else now + delta
        raise ValueError(f"not an RFC 3339 time, 'now' or 'now-<duration>': {text!r}")
    try:
        dt = datetime.fromisoformat(s.replace("z", "Z").replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time, 'now' or 'now-<duration>': {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=LOCAL_TZ)
    return dt.timestamp()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `citywatch simulate`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Signals follow local time in Biên Hòa (UTC+7): traffic rush hours 07-08 h and 17-18 h, PM2.5\n"
        "peaking 18-21 h, O3 early afternoon, afternoon showers in the rainy season. The simulated\n"
        "clock is START + wall time x SPEEDUP. Payload formats: json = {\"ts\": <ms>, metric: value, ...};\n"
        "array = a JSON array of those (a device uploading BATCH readings at once); senml = RFC 8428\n"
        "with bn \"<sensor>:\", bt, n/u/v. --device-formats: sensors naming a device (source: {family, device})\n"
        "publish as that device does (Tasmota, ESPHome, TTN, ChirpStack, Zigbee2MQTT, Sensor.Community,\n"
        "Sparkplug B, Frigate); --dry-run prints binary (Sparkplug) payloads as base64:<...>.\n\n"
        "Fault kinds: spike (1-3 readings far off), stuck (a metric repeats its value), drift (a metric\n"
        "slides away over hours), dropout (the sensor goes silent), episode (PM2.5/PM10/NO2 rise at all\n"
        "air stations within 3 km). Each injected fault is one JSON line in --truth.\n\n"
        "examples:\n"
        "  citywatch simulate --speedup 60 --faults all --truth truth.jsonl\n"
        "  citywatch simulate --start now-1d --speedup 600 --duration 60 --domains air,traffic\n"
        "  citywatch simulate --sensors 5 --format senml --duration 10 --dry-run")
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", "-c", type=Path, default=None,
                   help="engine config (default: $CITYWATCH_CONFIG, else ./config/citywatch.yaml)")
    g.add_argument("--registry", type=Path, default=None,
                   help="sensor registry YAML (default: the config's `registry`, config/sensors/bienhoa.yaml)")
    g.add_argument("--mqtt-url", default=None,
                   help="broker, mqtt://host:port or mqtts://host:port (default: the config's mqtt.url, "
                        "which $CITYWATCH_MQTT_URL overrides)")
    g.add_argument("--topic", default=None,
                   help="topic pattern with {domain} and {sensor} (default: the config's mqtt.topic, "
                        f"{DEFAULT_TOPIC})")
    g.add_argument("--client-id", default=None, help="MQTT client id (default: citywatch-sim-<pid>-<random>)")
    g = parser.add_argument_group("simulated time")
    g.add_argument("--start", default=None, metavar="TIME",
                   help="simulated start: RFC 3339 (e.g. 2024-06-03T06:00:00+07:00; no offset = local "
                        "time), 'now' or 'now-<duration>' like now-6h (default: now-1d). The simulated clock "
                        "runs SPEEDUP times faster until it reaches the present, then in real time")
    g.add_argument("--speedup", type=float, default=60.0,
                   help="simulated seconds per wall second (default: 60, one simulated hour per minute)")
    g.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this many wall seconds (default: run until Ctrl-C or SIGTERM)")
    g.add_argument("--rate-limit", type=float, default=None, metavar="MSG_PER_S",
                   help="publish at most this many messages per wall second (default: no limit)")
    g = parser.add_argument_group("what to simulate")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data (default: 0)")
    g.add_argument("--domains", default=None, metavar="LIST",
                   help=f"comma-separated domains to simulate, from {','.join(DOMAINS)} (default: all)")
    g.add_argument("--sensors", default=None, metavar="N|IDS",
                   help="simulate only N sensors (spread over the domains) or a comma-separated list of ids")
    g.add_argument("--format", choices=("json", "array", "senml", "mixed"), default="mixed",
                   help="payload format of every sensor, or mixed: each sensor gets one of the three (default)")
    g.add_argument("--batch", type=int, default=5, metavar="N",
                   help="readings per upload for sensors using the array format (default: 5)")
    g.add_argument("--device-formats", action="store_true",
                   help="sensors whose registry entry names a device (source: {family, device}) publish as that "
                        "device does (Tasmota, ESPHome, TTN, ChirpStack, Zigbee2MQTT, Sensor.Community, Sparkplug B, "
                        "Frigate); those timed on arrival (ESPHome, Sensor.Community, Frigate) only live, not in a replay")
    g = parser.add_argument_group("faults and events")
    g.add_argument("--faults", default="", metavar="LIST",
                   help=f"comma-separated kinds to inject at random: {','.join(FAULT_KINDS)}, or 'all' "
                        "(default: none)")
    g.add_argument("--fault-rate", type=float, default=1.0, metavar="PER_DAY",
                   help="expected faults of each kind per sensor per simulated day; episodes: twice this "
                        "per simulated day over the whole city (default: 1)")
    g.add_argument("--truth", type=Path, default=None, metavar="FILE",
                   help="append the ground truth (one JSON line per injected fault or event) to FILE")
    g = parser.add_argument_group("output")
    g.add_argument("--dry-run", action="store_true",
                   help="do not connect: print 'topic<TAB>payload' lines for DURATION x SPEEDUP simulated "
                        "seconds to stdout, at once (needs --duration)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def _load_settings(config: Path | None):
    from citywatch.config import ENV_OVERRIDES, ConfigError, Settings, load_settings

    if config is not None:
        return load_settings(config)
    try:
        return load_settings(None)
    except TypeError:  # no ./config/citywatch.yaml and no packaged copy
        pass
    except ConfigError as exc:
        if "file not found" not in str(exc):
            raise
    # No config file anywhere: defaults, with the same environment overrides the loader applies.
    raw: dict[str, dict[str, str]] = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        if os.environ.get(var):
            raw.setdefault(section, {})[key] = os.environ[var]
    settings = Settings.model_validate(raw)
    settings.base_dir = Path(__file__).resolve().parent.parent / "config"
    return settings


def configured_source_profiles(settings) -> list[Any] | None:
    """The engine config's source profiles (so the simulator speaks what the engine maps), else the shipped ones."""
    from citywatch.ingest.sources.mapper import load_profiles

    src = getattr(settings, "sources", None)
    if src is None or not src.enabled or not src.profiles:
        return None
    return load_profiles(src.profiles, settings.base_dir)


def _pick_sensors(registry: Registry, domains: list[str] | None, spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    if spec.strip().isdigit():
        n = int(spec)
        by_dom = [sorted(s.id for s in registry.by_domain(d)) for d in DOMAINS if domains is None or d in domains]
        picked: list[str] = []
        i = 0
        while len(picked) < n and any(i < len(ids) for ids in by_dom):
            picked += [ids[i] for ids in by_dom if i < len(ids)][: n - len(picked)]
            i += 1
        return picked
    return _csv(spec)


def run(args: argparse.Namespace) -> int:
    """`citywatch simulate`. Returns the exit status."""
    def err(msg: str) -> int:
        print(f"citywatch simulate: {msg}", file=sys.stderr)
        return 2

    settings = _load_settings(getattr(args, "config", None))
    reg_path = args.registry if args.registry is not None else settings.resolve(settings.registry)
    registry = Registry.load(reg_path)
    url = args.mqtt_url or settings.mqtt.url
    topic = args.topic or settings.mqtt.topic
    domains = _csv(args.domains) if args.domains else None
    if domains:
        bad = [d for d in domains if d not in DOMAINS]
        if bad:
            return err(f"unknown domain(s) {', '.join(bad)}; choose from {', '.join(DOMAINS)}")
    faults = _csv(args.faults or "")
    if faults == ["all"]:
        faults = list(FAULT_KINDS)
    if faults == ["none"]:
        faults = []
    bad = [k for k in faults if k not in FAULT_KINDS]
    if bad:
        return err(f"unknown fault kind(s) {', '.join(bad)}; choose from {', '.join(FAULT_KINDS)} or all")
    try:
        start = parse_start(args.start or "now-1d")
    except ValueError as exc:
        return err(str(exc))
    if args.speedup <= 0:
        return err("--speedup must be positive")
    if args.dry_run and args.duration is None:
        return err("--dry-run needs --duration (wall seconds; the span simulated is DURATION x SPEEDUP)")
    formats = FORMATS if args.format == "mixed" else (args.format,)
    try:
        sim = Simulator(registry, seed=args.seed, start=start, speedup=args.speedup, formats=formats, topic=topic,
                        faults=faults, fault_rate=args.fault_rate, truth=args.truth,
                        sensors=_pick_sensors(registry, domains, args.sensors), domains=domains,
                        batch_size=args.batch, device_formats=getattr(args, "device_formats", False),
                        source_profiles=configured_source_profiles(settings) if getattr(args, "device_formats", False) else None)
    except (ValueError, OSError) as exc:
        return err(str(exc))
    if not sim.sims:
        sim.close()
        return err("no sensors to simulate (check --domains / --sensors)")

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"citywatch simulate: {msg}", file=sys.stderr, flush=True)

    def local(t: float) -> str:
        return datetime.fromtimestamp(t, LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S")

    try:
        if args.dry_run:
            t1 = sim.start + args.duration * args.speedup
            out = sys.stdout.buffer
            n = 0
            for m in sim.device_births() + sim.messages(sim.start, t1, complete_batches=True):
                payload = m.payload
                if b"\n" in payload or not _is_utf8(payload):  # Sparkplug B protobuf: one line, base64
                    payload = b"base64:" + base64.b64encode(payload)
                out.write(m.topic.encode() + b"\t" + payload + b"\n")
                n += 1
            out.flush()
            say(f"{n} messages for {len(sim.sims)} sensors, {local(sim.start)} .. {local(t1)} local time; "
                f"{len(sim.truth)} faults")
            return 0

        mqtt_cfg = settings.mqtt.model_copy(update={"url": url})
        if args.speedup > 1 and sim.start < time.time():
            catch_up = (time.time() - sim.start) / (args.speedup - 1)
            say(f"replaying at {args.speedup:g}x until the present (about {catch_up:,.0f} wall seconds), "
                "then publishing in real time")
        say(f"{len(sim.sims)} sensors -> {url} topic {topic}; simulated start {local(sim.start)} local time, "
            f"speedup {args.speedup:g}x" + (f", faults {','.join(faults)} rate {args.fault_rate:g}/day" if faults else "")
            + (f", truth -> {args.truth}" if args.truth else ""))
        stop = threading.Event()
        previous: dict[int, Any] = {}

        def on_signal(signum, frame) -> None:
            if stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            stop.set()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)

        def progress(st: PublishStats) -> None:
            say(f"simulated {local(st.sim_end)}: {st.messages:,} messages ({st.readings:,} readings) published, "
                f"{st.acknowledged:,} acknowledged, {st.faults} faults")

        try:
            stats = sim.publish_forever(url, duration=args.duration, rate_limit=args.rate_limit,
                                        client_id=args.client_id, mqtt_config=mqtt_cfg, stop=stop,
                                        on_progress=None if args.quiet else progress)
        except ConnectionError as exc:
            print(f"citywatch simulate: {exc}", file=sys.stderr)
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        say(f"{'stopped' if stats.interrupted else 'done'}: {stats.messages:,} messages ({stats.readings:,} readings) "
            f"published, {stats.acknowledged:,} acknowledged, simulated {local(stats.sim_start)} .. "
            f"{local(stats.sim_end)} local time in {stats.wall_seconds:,.1f}s; {len(sim.truth)} faults recorded")
        return 0 if stats.acknowledged == stats.messages else 1
    finally:
        sim.close()
