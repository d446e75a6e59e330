"""Sparkplug B: edge nodes and their devices (industrial gateways, PLCs) publishing protobuf metrics.

Topics are ``spBv1.0/<group>/<type>/<node>[/<device>]``. The device id of node-level metrics is
``<group>/<node>``, of a device's ``<group>/<node>/<device>`` (the registry's ``source.device``).
`SparkplugDecoder` is stateful, one per engine, since Sparkplug is a session protocol:

- **BIRTH** (NBIRTH, DBIRTH) declares every metric with its name, alias, datatype and properties
  (the unit is the property ``engUnit`` or ``engUnits``) and carries current values: the device is
  online, and the values are readings. NBIRTH starts a node session: the node's and all its
  devices' alias tables are dropped and rebuilt from the births that follow.
- **DATA** (NDATA, DDATA) metrics may carry only the alias, and usually no datatype: both come
  from the BIRTH. An alias missing from it (``sparkplug_unknown_alias``) drops that metric, keeps
  the others, and makes the node need a rebirth. DATA before its BIRTH (``sparkplug_no_birth``,
  e.g. after an engine restart) keeps only metrics that carry their names.
- **seq** runs 0..255 per edge node: NBIRTH sets it, every later node or device message (DBIRTH,
  NDATA, DDATA, DDEATH) is the previous + 1 mod 256. A gap or repeat is ``sparkplug_seq_gap``:
  messages may be lost, so the node needs a rebirth; the message's readings are kept (valid data).
- **DEATH**: NDEATH (the node's MQTT will) puts the node and every device it has announced offline,
  and ends its session; its ``bdSeq`` metric must equal the current NBIRTH's, or it is the late will
  of an earlier connection (``sparkplug_stale_death``, ignored). DDEATH puts one device offline.
- NCMD, DCMD and STATE are commands and host state: they carry no readings.

`rebirth_requests()` gives the NCMD messages (metric ``Node Control/Rebirth`` = true) for nodes
that need a rebirth, at most one per node per ``rebirth_interval_s``; the engine publishes them.

Values: Int8..UInt64, Float and Double are numbers; Boolean, String, Text, UUID and DateTime (epoch
ms) are passed on raw for the mapper and validator to judge; DataSet, Template, Bytes, File and
arrays are skipped (``sparkplug_unsupported_type``); ``is_null`` is a missing value (None). The
time is the metric's ``timestamp`` (ms), else the payload's, else None (the message's time). The
``bdSeq`` and ``Node Control/*`` metrics are session plumbing, not readings. Bytes that are not a
Sparkplug payload give ``malformed_protobuf``, a topic outside the namespace ``bad_topic``.

    >>> from citywatch.ingest.sources.sparkplug_payload import DataType, add_metric, new_payload
    >>> decoder = SparkplugDecoder()
    >>> birth = new_payload(timestamp_ms=1764230400000, seq=0)
    >>> _ = add_metric(birth, DataType.UInt64, 3, name="bdSeq")
    >>> _ = add_metric(birth, DataType.Float, 18.4, name="Sensors/PM2.5", alias=1, unit="ug/m3")
    >>> decoder.decode("spBv1.0/bienhoa/NBIRTH/gw-01", birth.SerializeToString(), arrival_ns=0)
    [DeviceRecord(device='bienhoa/gw-01', readings=[(1764230400000000000, 'Sensors/PM2.5', 18.4, 'ug/m3')], health={}, available=True, ts_ns=1764230400000000000, errors=[])]
    >>> data = new_payload(timestamp_ms=1764230460000, seq=1)
    >>> _ = add_metric(data, DataType.Float, 21.7, alias=1, declare_datatype=False)
    >>> _ = add_metric(data, DataType.Float, 5.0, alias=9, declare_datatype=False)
    >>> decoder.decode("spBv1.0/bienhoa/NDATA/gw-01", data.SerializeToString(), arrival_ns=0)
    [DeviceRecord(device='bienhoa/gw-01', readings=[(1764230460000000000, 'Sensors/PM2.5', 21.7, 'ug/m3')], health={}, available=None, ts_ns=1764230460000000000, errors=['sparkplug_unknown_alias: alias 9 is not in the birth of bienhoa/gw-01'])]
    >>> [(topic, parse_payload(body).metrics[0].name) for topic, body in decoder.rebirth_requests()]
    [('spBv1.0/bienhoa/NCMD/gw-01', 'Node Control/Rebirth')]

A profile that takes Sparkplug B into the registry (paste it under ``sources.profiles``; the
metric table maps the names the BIRTH declares, the aliases the device ids above)::

    - family: sparkplug
      topics:
        - {filter: "spBv1.0/#", decoder: sparkplug}
      metrics:
        "Sensors/PM2.5": pm25
        "Sensors/Temperature": {metric: temperature, unit: Cel}
        "Sensors/pH": pH
        "Sensors/Turbidity": turbidity
      aliases:
        "bienhoa/gw-dongnai-01/wq-probe-01": wq-006
      options: {rebirth_interval_s: 60}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from citywatch.ingest.sources.records import DeviceRecord, SourceReading
from citywatch.ingest.sources.sparkplug_payload import (
    DataType,
    DecodeError,
    add_metric,
    metric_unit,
    metric_value,
    new_payload,
    parse_payload,
)

__all__ = ["SparkplugDecoder", "NAMESPACE", "REBIRTH_METRIC"]

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
_NODE_TYPES = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD"})
_DEVICE_TYPES = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})
_NO_READINGS = frozenset({"NCMD", "DCMD"})
_BD_SEQ = "bdSeq"
_MS = 1_000_000


@dataclass(slots=True)
class _MetricDef:
    name: str
    datatype: DataType | None
    unit: str | None


@dataclass(slots=True)
class _MetricTable:
    """What one BIRTH declared: metric definitions by alias and by name."""

    by_alias: dict[int, _MetricDef] = field(default_factory=dict)
    by_name: dict[str, _MetricDef] = field(default_factory=dict)


@dataclass(slots=True)
class _NodeSession:
    group: str
    node: str
    born: bool = False
    bd_seq: int | None = None
    next_seq: int | None = None
    node_metrics: _MetricTable = field(default_factory=_MetricTable)
    devices: dict[str, _MetricTable] = field(default_factory=dict)  # DBIRTHs of this session
    announced: set[str] = field(default_factory=set)  # every device seen, for NDEATH
    needs_rebirth: bool = False
    last_rebirth_request: float | None = None


def _datatype(raw: int) -> DataType | None:
    try:
        return DataType(raw) if raw else None
    except ValueError:
        return None


def _ns(ms: int | None) -> int | None:
    return None if ms is None else ms * _MS


class SparkplugDecoder:
    """Sparkplug B messages -> `DeviceRecord`s, keeping each edge node's session (aliases, seq)."""

    def __init__(self, *, rebirth_interval_s: float = 60.0, max_nodes: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rebirth_interval_s > 0:
            raise ValueError(f"sparkplug option rebirth_interval_s must be > 0 seconds, got {rebirth_interval_s!r}")
        if not max_nodes >= 1:
            raise ValueError(f"sparkplug option max_nodes must be >= 1, got {max_nodes!r}")
        self.rebirth_interval_s = float(rebirth_interval_s)
        self.max_nodes = int(max_nodes)  # sessions kept: a client inventing node ids cannot grow memory
        self._clock = clock
        self._nodes: dict[tuple[str, str], _NodeSession] = {}

    # ------------------------------------------------------------------------------------- decode
    def decode(self, topic: str, payload: bytes, arrival_ns: int) -> list[DeviceRecord]:
        levels = topic.split("/")
        if len(levels) >= 2 and levels[0] == NAMESPACE and levels[1] == "STATE":
            return []  # a host application's state (Sparkplug 3.0): nothing from a device
        parsed = self._parse_topic(levels)
        if isinstance(parsed, str):
            return [DeviceRecord(device=topic, errors=[f"bad_topic: {parsed}"])]
        group, kind, node, device = parsed
        if kind in _NO_READINGS:
            return []
        device_id = f"{group}/{node}" if device is None else f"{group}/{node}/{device}"
        try:
            message = parse_payload(payload)
        except DecodeError as exc:
            return [DeviceRecord(device=device_id, errors=[f"malformed_protobuf: {exc}"])]
        session = self._nodes.get((group, node))
        if session is None:
            if len(self._nodes) >= self.max_nodes:
                return [DeviceRecord(device=device_id, errors=[
                    f"sparkplug_too_many_nodes: {self.max_nodes} edge node sessions are kept (option max_nodes)"])]
            session = self._nodes[(group, node)] = _NodeSession(group, node)
        handler = {
            "NBIRTH": self._node_birth, "NDATA": self._data, "NDEATH": self._node_death,
            "DBIRTH": self._device_birth, "DDATA": self._data, "DDEATH": self._device_death,
        }[kind]
        return handler(session, device, device_id, message)

    @staticmethod
    def _parse_topic(levels: list[str]) -> tuple[str, str, str, str | None] | str:
        if levels[0] != NAMESPACE:
            return f"not in the {NAMESPACE} namespace"
        if len(levels) < 4:
            return f"expected {NAMESPACE}/<group>/<type>/<node>[/<device>], got {len(levels)} levels"
        kind = levels[2]
        if kind in _NODE_TYPES:
            expected = 4
        elif kind in _DEVICE_TYPES:
            expected = 5
        else:
            return f"unknown message type {kind!r}"
        if len(levels) != expected:
            return f"a {kind} topic has {expected} levels, got {len(levels)}"
        if not all(levels):
            return "empty topic level"
        return levels[1], kind, levels[3], (levels[4] if expected == 5 else None)

    # ------------------------------------------------------------------------------------- births
    def _node_birth(self, session: _NodeSession, _device: str | None, device_id: str, message: Any) -> list[DeviceRecord]:
        session.born = True
        session.needs_rebirth = False
        session.next_seq = (message.seq + 1) % 256 if message.HasField("seq") else None
        session.bd_seq = None
        session.devices.clear()
        session.node_metrics = _MetricTable()
        for metric in message.metrics:
            if metric.name == _BD_SEQ:
                value, _ = metric_value(metric, _datatype(metric.datatype))
                session.bd_seq = value if isinstance(value, int) else None
        record = self._birth_record(session.node_metrics, device_id, message)
        if message.HasField("seq") and message.seq > 255:
            record.errors.append(f"sparkplug_seq_gap: seq {message.seq} outside 0..255")
            session.needs_rebirth = True
        return [record]

    def _device_birth(self, session: _NodeSession, device: str | None, device_id: str, message: Any) -> list[DeviceRecord]:
        assert device is not None
        table = session.devices[device] = _MetricTable()
        session.announced.add(device)
        record = self._birth_record(table, device_id, message)
        if session.born:
            self._check_session(session, message, record)
        else:
            record.errors.append(f"sparkplug_no_birth: DBIRTH from {device_id} before its node's NBIRTH")
            session.needs_rebirth = True
        return [record]

    def _birth_record(self, table: _MetricTable, device_id: str, message: Any) -> DeviceRecord:
        record = DeviceRecord(device=device_id, available=True, ts_ns=_ns(self._payload_ms(message)))
        for metric in message.metrics:
            if not metric.name:
                record.errors.append("sparkplug_unnamed_metric: a BIRTH metric without a name")
                continue
            definition = _MetricDef(metric.name, _datatype(metric.datatype), metric_unit(metric))
            table.by_name[metric.name] = definition
            if metric.HasField("alias"):
                table.by_alias[metric.alias] = definition
            self._add_reading(record, message, metric, definition)
        return record

    # --------------------------------------------------------------------------------------- data
    def _data(self, session: _NodeSession, device: str | None, device_id: str, message: Any) -> list[DeviceRecord]:
        record = DeviceRecord(device=device_id, ts_ns=_ns(self._payload_ms(message)))
        if device is not None:
            session.announced.add(device)
        table = session.node_metrics if device is None else session.devices.get(device)
        born = session.born and table is not None
        if session.born:
            self._check_session(session, message, record)
        if not born:
            session.needs_rebirth = True
            unnamed = sum(1 for metric in message.metrics if not metric.name)
            kind = "NDATA" if device is None else "DDATA"
            detail = f"{kind} from {device_id} before its BIRTH"
            if unnamed:
                detail += f"; {unnamed} metric(s) with only an alias dropped"
            record.errors.append(f"sparkplug_no_birth: {detail}")
        for metric in message.metrics:
            definition = self._resolve(metric, table, born, record, device_id)
            if definition is not None:
                self._add_reading(record, message, metric, definition)
        if any(error.startswith("sparkplug_unknown_alias") for error in record.errors):
            session.needs_rebirth = True
        return [record]

    @staticmethod
    def _resolve(metric: Any, table: _MetricTable | None, born: bool, record: DeviceRecord,
                 device_id: str) -> _MetricDef | None:
        declared = _datatype(metric.datatype) if metric.HasField("datatype") else None
        unit = metric_unit(metric)
        if metric.name:
            known = table.by_name.get(metric.name) if table is not None else None
        elif metric.HasField("alias"):
            known = table.by_alias.get(metric.alias) if table is not None else None
            if known is None:
                if born:
                    record.errors.append(
                        f"sparkplug_unknown_alias: alias {metric.alias} is not in the birth of {device_id}")
                return None
        else:
            record.errors.append("sparkplug_unknown_alias: a metric with neither name nor alias")
            return None
        if known is None:
            return _MetricDef(metric.name, declared, unit)
        return _MetricDef(known.name, declared or known.datatype, unit or known.unit)

    # ------------------------------------------------------------------------------------- deaths
    def _node_death(self, session: _NodeSession, _device: str | None, device_id: str, message: Any) -> list[DeviceRecord]:
        death_bd_seq = None
        for metric in message.metrics:
            if metric.name == _BD_SEQ:
                value, _ = metric_value(metric, _datatype(metric.datatype))
                death_bd_seq = value if isinstance(value, int) else None
        if session.bd_seq is not None and death_bd_seq is not None and death_bd_seq != session.bd_seq:
            return [DeviceRecord(device=device_id, errors=[
                f"sparkplug_stale_death: NDEATH bdSeq {death_bd_seq}, the current NBIRTH's is {session.bd_seq}"])]
        ts_ns = _ns(self._payload_ms(message))
        records = [DeviceRecord(device=device_id, available=False, ts_ns=ts_ns)]
        records += [DeviceRecord(device=f"{device_id}/{device}", available=False, ts_ns=ts_ns)
                    for device in sorted(session.announced)]
        session.born = False
        session.next_seq = None
        session.needs_rebirth = False  # it is gone: its next connection births anyway
        session.devices.clear()
        session.node_metrics = _MetricTable()
        return records

    def _device_death(self, session: _NodeSession, device: str | None, device_id: str, message: Any) -> list[DeviceRecord]:
        assert device is not None
        record = DeviceRecord(device=device_id, available=False, ts_ns=_ns(self._payload_ms(message)))
        if session.born:
            self._check_session(session, message, record)
        session.devices.pop(device, None)
        return [record]

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _payload_ms(message: Any) -> int | None:
        return message.timestamp if message.HasField("timestamp") else None

    @staticmethod
    def _check_session(session: _NodeSession, message: Any, record: DeviceRecord) -> None:
        """The seq check of a message after NBIRTH; a gap or repeat makes the node need a rebirth."""
        if not message.HasField("seq"):
            record.errors.append("sparkplug_seq_gap: the message has no seq")
            session.needs_rebirth = True
            return
        seq = message.seq
        if seq > 255:
            record.errors.append(f"sparkplug_seq_gap: seq {seq} outside 0..255")
            session.needs_rebirth = True
            return
        if session.next_seq is not None and seq != session.next_seq:
            record.errors.append(f"sparkplug_seq_gap: expected seq {session.next_seq}, got {seq}")
            session.needs_rebirth = True
        session.next_seq = (seq + 1) % 256

    @staticmethod
    def _add_reading(record: DeviceRecord, message: Any, metric: Any, definition: _MetricDef) -> None:
        if definition.name == _BD_SEQ or definition.name.startswith("Node Control/"):
            return
        value, why_not = metric_value(metric, definition.datatype)
        if why_not is not None:
            record.errors.append(f"sparkplug_unsupported_type: {definition.name!r}: {why_not}")
            return
        ms = metric.timestamp if metric.HasField("timestamp") else SparkplugDecoder._payload_ms(message)
        reading: SourceReading = (_ns(ms), definition.name, value, definition.unit)
        record.readings.append(reading)

    # ----------------------------------------------------------------------------------- rebirths
    def needs_rebirth(self, group: str, node: str) -> bool:
        session = self._nodes.get((group, node))
        return session is not None and session.needs_rebirth

    def rebirth_requests(self) -> list[tuple[str, bytes]]:
        """(topic, payload) NCMD messages asking nodes that need one for a rebirth, rate-limited per node."""
        now = self._clock()
        requests: list[tuple[str, bytes]] = []
        for session in self._nodes.values():
            if not session.needs_rebirth:
                continue
            if session.last_rebirth_request is not None and now - session.last_rebirth_request < self.rebirth_interval_s:
                continue
            session.last_rebirth_request = now
            command = new_payload(timestamp_ms=time.time_ns() // _MS)
            add_metric(command, DataType.Boolean, True, name=REBIRTH_METRIC)
            requests.append((f"{NAMESPACE}/{session.group}/NCMD/{session.node}", command.SerializeToString()))
        return requests
