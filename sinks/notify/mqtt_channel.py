"""MQTT channel: each notification as JSON on a topic per recipient, QoS 1.

The body is the generic JSON of `render.Renderer.generic` (id, kind, recipient, subject, plain-text
summary and every alert's raw and formatted fields); a display or a control-room app subscribes to
`city/notifications/#`. The topic is a template: `{recipient}` is the recipient's name, `{address}` its
address, `{kind}` the notification kind (characters MQTT reserves, `+ # /`, become `_`). A recipient
whose address is itself a topic (it contains `/`, e.g. `city/notifications/duty-officer`) gets it there.

A notification counts as delivered when the broker has acknowledged it (PUBACK). It goes through the
engine's own paho client when one is given (one connection to the broker), otherwise through a client of
its own with the `mqtt:` connection settings. While the client is disconnected nothing is published: the
dispatcher retries later, so a notification is not queued twice inside paho. Delivery is at least once;
the `id` in the body lets a subscriber drop a duplicate.

Options (a channel under `alerting.notify.channels`)::

    ops-screen:
      type: mqtt
      topic: city/notifications/{recipient}
      qos: 1
      retain: false
      publish_timeout: 10s
"""

from __future__ import annotations

import re
import threading
from typing import Literal

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from citywatch.alerting.model import Notification
from citywatch.config import Duration, MqttConfig
from citywatch.ingest.mqtt import configure_client
from citywatch.sinks.notify.base import ChannelOptions, DeliveryError
from citywatch.sinks.notify.render import Renderer

SAMPLE_CONFIG = """
ops-screen:
  type: mqtt
  topic: city/notifications/{recipient}
  qos: 1
"""

_RESERVED = re.compile(r"[+#/\x00]")


class MqttChannelConfig(ChannelOptions):
    type: Literal["mqtt"] = "mqtt"
    topic: str = "city/notifications/{recipient}"
    qos: Literal[0, 1] = 1
    retain: bool = False
    publish_timeout: Duration = 10.0
    client_id: str = "citywatch-notify"  # only for a client of its own


def topic_segment(value: str) -> str:
    return _RESERVED.sub("_", value) or "_"


class MqttChannel:
    def __init__(self, name: str, cfg: MqttChannelConfig, renderer: Renderer, client: paho.Client | None = None,
                 mqtt: MqttConfig | None = None) -> None:
        if client is None and mqtt is None:
            raise ValueError(f"channel {name!r}: give the engine's MQTT client or the mqtt connection settings")
        self.name = name
        self.cfg = cfg
        self.renderer = renderer
        self._own = client is None
        self._mqtt = mqtt
        self._connected = threading.Event()
        self.client = client if client is not None else self._new_client(mqtt)

    def _new_client(self, mqtt: MqttConfig) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                             protocol=MQTTProtocolVersion.MQTTv5 if mqtt.protocol == "5" else MQTTProtocolVersion.MQTTv311)
        configure_client(client, mqtt)
        client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        client.on_disconnect = lambda c, u, f, rc, p: self._connected.clear()
        return client

    def start(self) -> None:
        if self._own:
            self.client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive)
            self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.client.is_connected() or self._connected.wait(timeout)

    def topic(self, notification: Notification) -> str:
        r = notification.recipient
        if "/" in (r.address or "") and not any(c in r.address for c in "+#"):
            return r.address  # the recipient names its own topic
        return self.cfg.topic.format(recipient=topic_segment(r.name), address=topic_segment(r.address or r.name),
                                     kind=notification.kind)

    def send(self, notification: Notification) -> None:
        if not self.client.is_connected():
            raise DeliveryError("MQTT client not connected")
        payload = orjson.dumps(self.renderer.generic(notification, self.cfg.language))
        info = self.client.publish(self.topic(notification), payload, qos=self.cfg.qos, retain=self.cfg.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"MQTT publish failed: {paho.error_string(info.rc)}")
        try:
            info.wait_for_publish(self.cfg.publish_timeout)
        except (RuntimeError, ValueError) as exc:
            raise DeliveryError(f"MQTT publish failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError(f"no PUBACK within {self.cfg.publish_timeout:g}s")

    def close(self) -> None:
        if self._own:
            self.client.disconnect()
            self.client.loop_stop()
