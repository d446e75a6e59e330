"""Simulated readings in the formats real field devices publish (the simulator's ``device_formats``).

A registry sensor whose entry names a device (``source: {family, device}``) is published the way
that device family would publish it, so the demo's readings go through the mapping layer
(`citywatch.ingest.sources`) like a real installation's:

==================  =================================================================================
family              what is published
==================  =================================================================================
tasmota             ``tele/<device>/SENSOR`` JSON (``SDS0X1`` and ``BME280`` blocks, ``Time`` local
                    time without offset, ``TempUnit``), every tenth reading a ``STATE`` with Wi-Fi
                    signal; ``tele/<device>/LWT`` ``Online`` (retained) on connect
esphome             ``<device>/sensor/<object_id>/state`` plain-text values (and ``wifi_signal``);
                    ``<device>/status`` ``online`` on connect
ttn                 ``v3/<app>@<tenant>/devices/<device>/up`` uplink JSON: ``decoded_payload``,
                    ``received_at``, ``rx_metadata`` of two gateways
chirpstack          ``application/<app>/device/<deveui>/event/up``: ``object`` with ``toFixed()``
                    strings, ``time``, ``deviceInfo``, ``rxInfo``
zigbee2mqtt         ``zigbee2mqtt/<friendly_name>`` JSON in percent, ``battery``, ``linkquality``,
                    ``voltage`` in mV, ``last_seen``; ``.../availability`` ``{"state": "online"}``
sensor_community    ``sensor_community/<esp8266id>``: ``sensordatavalues`` of strings (``SDS_P1`` is
                    PM10, ``SDS_P2`` PM2.5)
sparkplug           ``spBv1.0/<group>/NBIRTH/<node>`` and ``DBIRTH/<node>/<device>`` first, then
                    ``DDATA`` with aliases only and ``seq`` running 0..255
frigate             ``frigate/events`` new/update/end per vehicle (distinct ids, ``entered_zones``),
                    as many per count interval as the simulated ``intensity``; ``frigate/available``
                    ``online`` on connect
==================  =================================================================================

Names and units come from the source profile's metric table read backwards (registry metric ->
the first source key mapping to it, in that key's unit), so the simulator and the profiles cannot
drift apart. A registry metric no source key maps to is not published by that device (a soil probe
behind ChirpStack reports no rain), nor are the water stations' lab results (the lab sends them,
in the house format).

Times: each family carries the reading's event time its own way (Tasmota's seconds, TTN's
nanoseconds ...). ESPHome and Sensor.Community messages carry none (the engine stamps them on
arrival) and Frigate's counts are closed against the wall clock: those messages are *live only*
(`DeviceEncoder.live_only`) and the publisher drops them when they are not due now, i.e. while it
replays history. A Frigate count is the number of vehicles in the count interval starting at the
reading's time, so those sensors' readings are aligned to the interval; elsewhere readings fall on
whole seconds.

Encoders keep state where the protocol does: Sparkplug B's births, aliases and sequence numbers
(`SparkplugEncoder.rebirth` starts a new birth, as a node does on a rebirth command).

>>> from importlib import resources
>>> from citywatch.registry import Registry
>>> from citywatch.ingest.sources.mapper import load_profiles
>>> registry = Registry.load(str(resources.files("citywatch.sample_config") / "sensors" / "bienhoa.yaml"))
>>> formats = DeviceFormats(registry.sensors.values(), load_profiles(["zigbee2mqtt"]))
>>> enc = formats.encoders["fr-002"]
>>> msg = enc.encode(np.array([0]), np.array([1795791033000]),
...                  {"temperature": np.array([26.9]), "relativeHumidity": np.array([0.784]),
...                   "soilMoisture": np.array([0.342])})[0]
>>> msg.topic, orjson.loads(msg.payload)["soil_moisture"], orjson.loads(msg.payload)["last_seen"]
('zigbee2mqtt/forest/station 3/soil', 34.2, '2026-11-27T14:50:33.000Z')
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import numpy as np
import orjson

from citywatch.ingest.sources.profile import MetricRule, SourceProfile, TopicRule
from citywatch.registry import Sensor
from citywatch.units import conversion

__all__ = ["DeviceFormats", "DeviceEncoder", "DeviceMessage", "SparkplugEncoder", "FrigateEncoder",
           "LIVE_WINDOW_MS", "source_keys"]

LIVE_WINDOW_MS = 2000  # a live-only message is published only this close to the wall clock
LOCAL_TZ = timezone(timedelta(hours=7))  # Biên Hòa: the time zone Tasmota devices are set to
# Decimals a device prints per registry metric (as the simulator rounds them), in registry units.
DECIMALS = {
    "pm25": 1, "pm10": 1, "temperature": 2, "relativeHumidity": 3, "pH": 2, "dissolvedOxygen": 2,
    "turbidity": 1, "conductivity": 0, "NH4": 3, "soilMoisture": 3, "intensity": 0,
}


@dataclass
class DeviceMessage:
    topic: str
    payload: bytes
    time_ms: int  # the event time of the message (the newest reading it carries)
    readings: int  # readings it carries
    retain: bool = False
    live_only: bool = False


def source_keys(profile: SourceProfile, sensor: Sensor) -> dict[str, tuple[str, MetricRule]]:
    """Registry metric -> (the first source key of the profile's metric table mapping to it, its rule)."""
    out: dict[str, tuple[str, MetricRule]] = {}
    for key, rule in profile.metrics.items():
        assert isinstance(rule, MetricRule)
        if rule.counter or rule.metric.startswith("health.") or rule.metric not in sensor.metrics:
            continue
        out.setdefault(rule.metric, (key, rule))
    return out


def _fill(template: str, **caps: str) -> str:
    for name, value in caps.items():
        template = template.replace("{" + name + "+}", value).replace("{" + name + "}", value)
    return template


def _rule(profile: SourceProfile, kind: str) -> TopicRule:
    for rule in profile.topics:
        if rule.kind == kind:
            return rule
    raise ValueError(f"source profile {profile.family!r} has no {kind} topic")


def _hash64(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_hash64(*parts))


def _rfc3339(ms: int, digits: int = 3, suffix: str = "Z") -> str:
    dt = datetime.fromtimestamp(ms // 1000, timezone.utc)
    frac = f"{ms % 1000:03d}".ljust(digits, "0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + suffix


@dataclass
class _Key:
    metric: str
    key: str
    unit: str | None  # the source unit the value is written in
    spelling: str | None  # how the payload names that unit (unit_from), e.g. "C"
    scale: float
    offset: float
    decimals: int

    def value(self, x: float) -> float:
        v = round(x * self.scale + self.offset, self.decimals)
        return int(v) if self.decimals <= 0 else v

    def text(self, x: float) -> str:
        return f"{x * self.scale + self.offset:.{max(self.decimals, 0)}f}"


class DeviceEncoder:
    """One sensor's device: its readings as the messages that device publishes."""

    family = ""
    live_only = False  # the messages carry no event time of their own (stamped on arrival)
    lookback = 0  # readings whose messages may fall in a later span (intervals)

    def __init__(self, sensor: Sensor, profile: SourceProfile, seed: int = 0) -> None:
        assert sensor.source is not None
        self.sensor = sensor
        self.profile = profile
        self.device = sensor.source.device
        self.seed = seed
        self.keys: dict[str, _Key] = {}
        for metric, (key, rule) in source_keys(profile, sensor).items():
            reg_unit = sensor.metrics[metric].unit
            unit, spelling = rule.unit, None
            if rule.unit_from:
                spelling, unit = next(((s, u) for s, u in rule.units.items() if conversion(reg_unit, u)),
                                      (reg_unit, reg_unit))
            scale, offset = conversion(reg_unit, unit) if unit else (1.0, 0.0)
            dec = DECIMALS.get(metric, 3) - (int(round(math.log10(scale))) if scale > 0 else 0)
            self.keys[metric] = _Key(metric, key, unit, spelling, scale, offset, dec)

    @property
    def metrics(self) -> list[str]:
        """The registry metrics this device publishes."""
        return list(self.keys)

    def align_phase(self, phase_ms: int, interval_ms: int) -> int:
        """The reading grid's offset from the epoch: whole seconds unless the family needs more."""
        return phase_ms - phase_ms % 1000

    def encode(self, k: np.ndarray, ts_ms: np.ndarray, vals: dict[str, np.ndarray]) -> list[DeviceMessage]:
        raise NotImplementedError

    def births(self) -> list[DeviceMessage]:
        """What the device publishes when it connects (retained availability)."""
        try:
            rule = _rule(self.profile, "availability")
        except ValueError:
            return []
        online = rule.online[0]
        payload = orjson.dumps({rule.select: online}) if rule.select else online.encode()
        return [DeviceMessage(_fill(rule.filter, device=self.device), payload, 0, 0, retain=True)]

    def _rows(self, ts_ms: np.ndarray, vals: dict[str, np.ndarray]) -> Iterable[tuple[int, int, dict[str, float]]]:
        cols = {m: vals[m].tolist() for m in self.keys if m in vals}
        for i, t in enumerate(ts_ms.tolist()):
            yield i, int(t), {m: c[i] for m, c in cols.items()}


class TasmotaEncoder(DeviceEncoder):
    family = "tasmota"
    chips = {"PM2.5": "SDS0X1", "PM10": "SDS0X1", "PM1": "SDS0X1"}  # everything else: the BME280

    def encode(self, k, ts_ms, vals):
        topic = _fill(_rule(self.profile, "readings").filter, device=self.device)
        state_topic = _fill(_rule(self.profile, "health").filter, device=self.device)
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            local = datetime.fromtimestamp(t // 1000, LOCAL_TZ).strftime("%Y-%m-%dT%H:%M:%S")
            doc: dict[str, Any] = {"Time": local}
            units: dict[str, str] = {}
            for metric, x in row.items():
                key = self.keys[metric]
                doc.setdefault(self.chips.get(key.key, "BME280"), {})[key.key] = key.value(x)
                rule = self.profile.metrics[key.key]
                if isinstance(rule, MetricRule) and rule.unit_from and key.spelling:
                    units[rule.unit_from] = key.spelling
            bme = doc.get("BME280")
            if bme is not None and "Temperature" in bme and "Humidity" in bme and units.get("TempUnit", "C") == "C":
                a, b = 17.62, 243.12  # Magnus: the dew point Tasmota adds to a BME280 block
                g = math.log(max(bme["Humidity"], 1.0) / 100.0) + a * bme["Temperature"] / (b + bme["Temperature"])
                bme["DewPoint"] = round(b * g / (a - g), 1)
                bme["Pressure"] = round(1008.0 + 2.0 * math.sin(t / 3.6e6 / 12 * math.pi), 1)
                units["PressureUnit"] = "hPa"
            doc.update(units)
            out.append(DeviceMessage(topic, orjson.dumps(doc), t, len(row)))
            if int(k[i]) % 10 == 0:
                signal = int(-60 - 15 * _rng(self.seed, self.device, int(k[i])).random())
                state = {"Time": local, "Uptime": "0T00:00:00", "Heap": 26, "MqttCount": 1,
                         "Wifi": {"AP": 1, "SSId": "BH-IOT", "Channel": 6, "Mode": "11n",
                                  "RSSI": min(100, 2 * (signal + 100)), "Signal": signal, "LinkCount": 1}}
                out.append(DeviceMessage(state_topic, orjson.dumps(state), t, 0))
        return out


class ESPHomeEncoder(DeviceEncoder):
    family = "esphome"
    live_only = True

    def encode(self, k, ts_ms, vals):
        rule = _rule(self.profile, "readings")
        wifi = next((key for key, r in self.profile.metrics.items()
                     if isinstance(r, MetricRule) and r.metric == "health.rssi"), None)
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            for metric, x in row.items():
                key = self.keys[metric]
                topic = _fill(rule.filter, device=self.device, object_id=key.key)
                out.append(DeviceMessage(topic, key.text(x).encode(), t, 1, live_only=True))
            if wifi and int(k[i]) % 10 == 0:
                signal = -55 - 20 * _rng(self.seed, self.device, int(k[i])).random()
                topic = _fill(rule.filter, device=self.device, object_id=wifi)
                out.append(DeviceMessage(topic, f"{signal:.0f}".encode(), t, 0, live_only=True))
        return out


class TTNEncoder(DeviceEncoder):
    family = "ttn"
    application, tenant = "bienhoa-water", "ttn"

    def encode(self, k, ts_ms, vals):
        topic = _fill(_rule(self.profile, "readings").filter, device=self.device,
                      app=f"{self.application}@{self.tenant}")
        dev_eui = f"70B3D57ED0{_hash64('eui', self.device) % (1 << 24):06X}"
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            rng = _rng(self.seed, self.device, int(k[i]))
            decoded: dict[str, Any] = {self.keys[m].key: self.keys[m].value(x) for m, x in row.items()}
            decoded["battery_mv"] = int(3550 + rng.integers(0, 80))
            rssi = int(-95 - rng.integers(0, 15))
            snr = round(float(7.5 - rng.random() * 6), 2)
            gateways = [("bh-gw-buu-long", rssi, snr), ("bh-gw-hoa-an", rssi - 14, round(snr - 9.0, 2))]
            received = _rfc3339(t, 9)
            doc = {
                "end_device_ids": {"device_id": self.device, "application_ids": {"application_id": self.application},
                                   "dev_eui": dev_eui},
                "received_at": _rfc3339(t + 200, 9),
                "uplink_message": {
                    "f_port": 2, "f_cnt": int(k[i]) % 65536, "decoded_payload": decoded,
                    "rx_metadata": [{"gateway_ids": {"gateway_id": g}, "time": _rfc3339(t - 15),
                                     "rssi": r, "channel_rssi": r, "snr": s, "received_at": _rfc3339(t - 15)}
                                    for g, r, s in gateways],
                    "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 9}},
                                 "frequency": "921400000"},
                    "received_at": received,
                    "network_ids": {"tenant_id": self.tenant},
                },
            }
            out.append(DeviceMessage(topic, orjson.dumps(doc), t, len(row)))
        return out


class ChirpStackEncoder(DeviceEncoder):
    family = "chirpstack"

    def encode(self, k, ts_ms, vals):
        app = str(uuid.UUID(int=_hash64("app", self.device) << 64 | _hash64("app2", self.device), version=4))
        topic = _fill(_rule(self.profile, "readings").filter, device=self.device, app=app)
        bat_key = next((key for key, r in self.profile.metrics.items()
                        if isinstance(r, MetricRule) and r.metric == "health.battery_voltage"), None)
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            rng = _rng(self.seed, self.device, int(k[i]))
            obj: dict[str, Any] = {self.keys[m].key: self.keys[m].text(x) for m, x in row.items()}
            if bat_key:
                obj[bat_key] = round(3.58 + 0.05 * float(rng.random()), 3)
            rssi = int(-100 - rng.integers(0, 15))
            snr = round(float(4.0 - rng.random() * 6), 1)
            doc = {
                "deduplicationId": str(uuid.UUID(int=_hash64(self.device, int(k[i])) << 64 | int(k[i]) % (1 << 64),
                                                 version=4)),
                "time": _rfc3339(t, 9, "+00:00"),
                "deviceInfo": {"applicationId": app, "applicationName": "forest", "deviceName": self.sensor.id,
                               "devEui": self.device, "deviceProfileName": "LoRaWAN soil probe"},
                "fCnt": int(k[i]) % 65536, "fPort": 2, "object": obj,
                "rxInfo": [{"gatewayId": "a840411f8c2c5a10", "rssi": rssi, "snr": snr, "crcStatus": "CRC_OK"},
                           {"gatewayId": "58a0cbfffe8041c7", "rssi": rssi - 12, "snr": round(snr - 10, 1),
                            "crcStatus": "CRC_OK"}],
            }
            out.append(DeviceMessage(topic, orjson.dumps(doc), t, len(row)))
        return out


class Zigbee2MQTTEncoder(DeviceEncoder):
    family = "zigbee2mqtt"

    def encode(self, k, ts_ms, vals):
        topic = _fill(_rule(self.profile, "readings").filter, device=self.device)
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            rng = _rng(self.seed, self.device, int(k[i]))
            doc: dict[str, Any] = {self.keys[m].key: self.keys[m].value(x) for m, x in row.items()}
            doc.update(battery=int(80 + rng.integers(0, 15)), linkquality=int(90 + rng.integers(0, 60)),
                       voltage=int(2900 + rng.integers(0, 150)), last_seen=_rfc3339(t))
            out.append(DeviceMessage(topic, orjson.dumps(dict(sorted(doc.items()))), t, len(row)))
        return out


class SensorCommunityEncoder(DeviceEncoder):
    family = "sensor_community"
    live_only = True

    def encode(self, k, ts_ms, vals):
        topic = _fill(_rule(self.profile, "readings").filter, device=self.device)
        out = []
        for i, t, row in self._rows(ts_ms, vals):
            values = [{"value_type": self.keys[m].key, "value": self.keys[m].text(x)} for m, x in row.items()]
            rng = _rng(self.seed, self.device, int(k[i]))
            values += [{"value_type": "samples", "value": str(int(5_000_000 + rng.integers(0, 300_000)))},
                       {"value_type": "interval", "value": str(int(self.sensor.interval * 1000))},
                       {"value_type": "signal", "value": str(int(-65 - rng.integers(0, 15)))}]
            doc = {"esp8266id": self.device, "software_version": "NRZ-2020-133", "sensordatavalues": values}
            out.append(DeviceMessage(topic, orjson.dumps(doc), t, len(row), live_only=True))
        return out


class SparkplugEncoder(DeviceEncoder):
    """An edge node with one device: births first, then alias-only DDATA; seq 0..255 per node."""

    family = "sparkplug"
    display_units = {"Cel": "°C"}

    def __init__(self, sensor: Sensor, profile: SourceProfile, seed: int = 0) -> None:
        super().__init__(sensor, profile, seed)
        parts = self.device.split("/")
        if len(parts) != 3:
            raise ValueError(f"sensor {sensor.id}: a Sparkplug device is '<group>/<node>/<device>', "
                             f"not {self.device!r}")
        self.group, self.node, self.edge_device = parts
        self.aliases = {m: i + 1 for i, m in enumerate(self.keys)}
        self.bd_seq = 0
        self.seq = 0
        self.born = False

    def rebirth(self) -> None:
        """The next message is a new NBIRTH/DBIRTH (a node answering ``Node Control/Rebirth``)."""
        self.born = False

    @property
    def command_topic(self) -> str:
        return f"spBv1.0/{self.group}/NCMD/{self.node}"

    def on_command(self, payload: bytes) -> bool:
        """An NCMD for this node: a ``Node Control/Rebirth`` = true starts a new birth. True if it did."""
        from citywatch.ingest.sources.sparkplug_payload import DecodeError, parse_payload

        try:
            message = parse_payload(payload)
        except (DecodeError, ValueError):
            return False
        if any(m.name == "Node Control/Rebirth" and m.boolean_value for m in message.metrics):
            self.rebirth()
            return True
        return False

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def encode(self, k, ts_ms, vals):
        from citywatch.ingest.sources.sparkplug_payload import DataType, add_metric, new_payload

        base = f"spBv1.0/{self.group}"
        out = []
        for _, t, row in self._rows(ts_ms, vals):
            if not self.born:
                self.seq = 0
                nbirth = new_payload(timestamp_ms=t, seq=self._next_seq())
                add_metric(nbirth, DataType.UInt64, self.bd_seq, name="bdSeq", timestamp_ms=t)
                add_metric(nbirth, DataType.Boolean, False, name="Node Control/Rebirth", timestamp_ms=t)
                out.append(DeviceMessage(f"{base}/NBIRTH/{self.node}", nbirth.SerializeToString(), t, 0))
                dbirth = new_payload(timestamp_ms=t, seq=self._next_seq())
                for metric, x in row.items():
                    key = self.keys[metric]
                    unit = self.sensor.metrics[metric].unit
                    add_metric(dbirth, DataType.Float, key.value(x), name=key.key, alias=self.aliases[metric],
                               timestamp_ms=t, unit=self.display_units.get(unit, unit))
                out.append(DeviceMessage(f"{base}/DBIRTH/{self.node}/{self.edge_device}",
                                         dbirth.SerializeToString(), t, len(row)))
                self.born = True
                continue
            ddata = new_payload(timestamp_ms=t, seq=self._next_seq())
            for metric, x in row.items():
                add_metric(ddata, DataType.Float, self.keys[metric].value(x), alias=self.aliases[metric],
                           timestamp_ms=t, declare_datatype=False)
            out.append(DeviceMessage(f"{base}/DDATA/{self.node}/{self.edge_device}", ddata.SerializeToString(),
                                     t, len(row)))
        return out

    def births(self) -> list[DeviceMessage]:
        return []  # NBIRTH/DBIRTH carry readings: they come with the first reading (see `encode`)


class FrigateEncoder(DeviceEncoder):
    """Frigate object events for a camera: ``intensity`` vehicles in the count interval starting at
    each reading's time, each a distinct event (new, update on entering a zone, end), plus a few
    people (not counted). The camera is the device (``<camera>`` or ``<camera>/<zone>``)."""

    family = "frigate"
    live_only = True
    lookback = 1  # a count's events happen during the interval after its time
    label_weights = {"motorcycle": 0.64, "car": 0.26, "truck": 0.06, "bus": 0.03, "bicycle": 0.01}

    def __init__(self, sensor: Sensor, profile: SourceProfile, seed: int = 0) -> None:
        super().__init__(sensor, profile, seed)
        if "intensity" not in self.keys:
            raise ValueError(f"sensor {sensor.id}: the frigate profile maps no source metric to 'intensity'")
        from citywatch.ingest.sources.frigate import FrigateOptions

        options = FrigateOptions(**profile.options)
        self.prefix = options.topic_prefix
        self.interval_ms = int(round(options.interval_s * 1000))
        if int(round(float(sensor.interval) * 1000)) != self.interval_ms:
            raise ValueError(f"sensor {sensor.id} reports every {sensor.interval:g} s, its Frigate profile counts "
                             f"per {options.interval_s:g} s: they must be equal")
        self.camera, _, zone = self.device.partition("/")
        self.zones = [zone] if zone else ["inbound", "outbound"]
        labels = [lb for lb in self.label_weights if lb in options.labels] or list(options.labels)
        weights = np.array([self.label_weights.get(lb, 0.01) for lb in labels])
        self.labels, self.weights = labels, weights / weights.sum()

    def align_phase(self, phase_ms: int, interval_ms: int) -> int:
        return 0  # readings are the count intervals, aligned to the epoch

    def _event(self, kind: str, oid: str, label: str, start: float, frame: float, zones: list[str],
               end: float | None, box: list[int]) -> bytes:
        after = {"id": oid, "camera": self.camera, "frame_time": frame, "label": label, "sub_label": None,
                 "top_score": 0.82, "false_positive": False, "start_time": start, "end_time": end, "score": 0.8,
                 "box": box, "area": (box[2] - box[0]) * (box[3] - box[1]), "region": [0, 0, 320, 320],
                 "current_zones": [] if end else zones, "entered_zones": zones, "thumbnail": None,
                 "has_snapshot": True, "has_clip": True, "stationary": False, "motionless_count": 0}
        before = dict(after, frame_time=start, entered_zones=[], current_zones=[], end_time=None) if kind != "new" \
            else after
        return orjson.dumps({"type": kind, "before": before, "after": after})

    def encode(self, k, ts_ms, vals):
        topic = f"{self.prefix}/events"
        counts = vals["intensity"].tolist()
        span = 0.8 * self.interval_ms / 1000.0
        out = []
        for i, t in enumerate(ts_ms.tolist()):
            rng = _rng(self.seed, self.device, int(k[i]))
            n = int(round(counts[i]))
            people = int(rng.random() < 0.3)
            starts = t / 1000.0 + np.sort(rng.random(n + people)) * span
            kinds = rng.choice(len(self.labels), size=n + people, p=self.weights)
            is_person = np.zeros(n + people, dtype=bool)
            if people:
                is_person[rng.integers(0, n + people)] = True
            for j, start in enumerate(starts.tolist()):
                start = round(start, 3)
                label = "person" if is_person[j] else self.labels[int(kinds[j])]
                suffix = np.base_repr(_hash64(self.device, int(k[i]), j) % 36 ** 6, 36).lower().rjust(6, "0")
                oid = f"{start:.1f}-{suffix}"
                zones = [] if label == "person" else [self.zones[int(rng.integers(0, len(self.zones)))]]
                box = [int(x) for x in rng.integers(100, 600, size=2)]
                box += [box[0] + 120, box[1] + 90]
                for kind, dt, entered, end in (("new", 0.0, [], None), ("update", 2.0, zones, None),
                                               ("end", 4.0, zones, start + 4.0)):
                    frame = round(start + dt, 3)
                    out.append(DeviceMessage(topic, self._event(kind, oid, label, start, frame, entered, end, box),
                                             int(round(frame * 1000)), 0, live_only=True))
        out.sort(key=lambda m: m.time_ms)
        return out

    def births(self) -> list[DeviceMessage]:
        return [DeviceMessage(f"{self.prefix}/available", b"online", 0, 0, retain=True)]


ENCODERS: dict[str, type[DeviceEncoder]] = {
    cls.family: cls for cls in (TasmotaEncoder, ESPHomeEncoder, TTNEncoder, ChirpStackEncoder, Zigbee2MQTTEncoder,
                                SensorCommunityEncoder, SparkplugEncoder, FrigateEncoder)
}


class DeviceFormats:
    """The device encoders of the sensors that name a device of a family with a profile here."""

    def __init__(self, sensors: Iterable[Sensor], profiles: Iterable[SourceProfile], seed: int = 0) -> None:
        by_family = {}
        for p in profiles:
            by_family.setdefault(p.family, p)
        self.encoders: dict[str, DeviceEncoder] = {}
        for s in sensors:
            if s.source is None or s.source.family not in by_family or s.source.family not in ENCODERS:
                continue
            self.encoders[s.id] = ENCODERS[s.source.family](s, by_family[s.source.family], seed)

    def command_handlers(self) -> dict[str, Any]:
        """Topic -> handler of the commands devices answer (Sparkplug B rebirth requests)."""
        return {e.command_topic: e.on_command for e in self.encoders.values() if isinstance(e, SparkplugEncoder)}

    def births(self) -> list[DeviceMessage]:
        seen: set[str] = set()
        out = []
        for enc in self.encoders.values():
            for m in enc.births():
                if m.topic not in seen:
                    seen.add(m.topic)
                    out.append(m)
        return out
