"""Helpers for the device-source end-to-end tests: the documented device messages of
tests/data/devices/ moved to the present, and MQTT clients that publish and listen as devices do."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.ingest.sources.sparkplug_payload import parse_payload

from pipeline_helpers import wait_for

DEVICES = Path(__file__).parent / "data" / "devices"

# ISO 8601 date-times as devices write them: optional fraction (up to ns), "Z", an offset, or none (local).
_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?$")


def device_message(family: str, name: str) -> dict[str, Any]:
    """One documented message: {"topic", "payload", "payload_is_text", ...}."""
    return json.loads((DEVICES / family / f"{name}.json").read_text())


def payload_bytes(payload: Any, is_text: bool) -> bytes:
    """The bytes a device puts on the wire: text as it is, anything else as JSON."""
    return payload.encode() if is_text else json.dumps(payload).encode()


def shift_iso(text: str, delta_s: int) -> str:
    """`text` moved by whole seconds, keeping its fraction digits and its offset (or lack of one)."""
    m = _ISO.match(text)
    if m is None:
        return text
    moved = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S") + dt.timedelta(seconds=delta_s)
    return moved.strftime("%Y-%m-%dT%H:%M:%S") + (m.group(2) or "") + (m.group(3) or "")


def shift_times(doc: Any, delta_s: int, epoch_ms_keys: frozenset[str] = frozenset({"last_seen"})) -> Any:
    """A JSON document with every ISO 8601 time, and the epoch-millisecond numbers under
    `epoch_ms_keys`, moved by `delta_s` seconds (the same instant shift whatever the format)."""
    if isinstance(doc, dict):
        return {k: (v + delta_s * 1000 if k in epoch_ms_keys and type(v) is int else shift_times(v, delta_s, epoch_ms_keys))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [shift_times(v, delta_s, epoch_ms_keys) for v in doc]
    if isinstance(doc, str):
        return shift_iso(doc, delta_s)
    return doc


def shifted_message(family: str, name: str, delta_s: int) -> tuple[str, bytes]:
    """(topic, payload bytes) of a documented JSON or text message with its times moved by `delta_s`."""
    doc = device_message(family, name)
    payload = doc["payload"] if doc["payload_is_text"] else shift_times(doc["payload"], delta_s)
    return doc["topic"], payload_bytes(payload, doc["payload_is_text"])


def shift_sparkplug(data: bytes, delta_s: int, seq: int | None = None) -> bytes:
    """A Sparkplug B payload with its own and its metrics' timestamps (ms) moved, optionally renumbered."""
    payload = parse_payload(data)
    if payload.HasField("timestamp"):
        payload.timestamp += delta_s * 1000
    for metric in payload.metrics:
        if metric.HasField("timestamp"):
            metric.timestamp += delta_s * 1000
    if seq is not None:
        payload.seq = seq
    return payload.SerializeToString()


def shift_frigate_event(event: dict[str, Any], delta_s: int) -> dict[str, Any]:
    """A Frigate event with frame_time, snapshot.frame_time, start_time and end_time (epoch s) moved."""
    out = json.loads(json.dumps(event))
    for side in ("before", "after"):
        state = out.get(side)
        if not isinstance(state, dict):
            continue
        for key in ("frame_time", "start_time", "end_time"):
            if state.get(key) is not None:
                state[key] += delta_s
        if isinstance(state.get("snapshot"), dict) and state["snapshot"].get("frame_time") is not None:
            state["snapshot"]["frame_time"] += delta_s
    return out


class RawListener:
    """Collects (topic, payload bytes) of a topic filter, for messages that are not JSON (protobuf)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *a: setattr(self, "_subscribed", True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        wait_for(lambda: self._subscribed, 5, f"subscription to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
