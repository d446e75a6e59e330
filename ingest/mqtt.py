"""MQTT input: a paho-mqtt consumer whose QoS 1 acknowledgements the engine controls.

Delivery guarantee: messages are received with `manual_ack`, so a PUBACK goes to the broker only
after the engine has written the readings of that message to InfluxDB or to the disk spool. With a
persistent session (a stable client id, clean start off, a session expiry), a message that the
engine never acknowledged - because it crashed, or the connection dropped - is redelivered.

Reconnects use bounded exponential backoff (`reconnect_min_delay` .. `reconnect_max_delay`), and the
subscription is renewed on *every* connect, whether or not the broker kept the session: renewing is
harmless when it did, and essential when it did not (a broker restarted without persistence).
That is the failure Telegraf's mqtt_consumer had (#6232, #16293): trusting the session to still
hold the subscription.

Flow control: with MQTT 5 the engine announces `receive_maximum` in CONNECT, so the broker never
has more unacknowledged QoS 1 messages in flight to us than that; with MQTT 3.1.1 the broker's own
limit applies (mosquitto's `max_inflight_messages`, default 20, which throttles at-least-once
consumption: raise it, or use MQTT 5).

Options (section `mqtt:` of config/citywatch.yaml)::

    mqtt:
      url: mqtt://127.0.0.1:1883        # or mqtts://host:8883; env CITYWATCH_MQTT_URL
      client_id: citywatch-engine        # stable: it names the persistent session
      protocol: "5"                      # "5" or "3.1.1"
      topic: city/{domain}/{sensor}/telemetry   # named segments become the sensor's domain and id
      qos: 1
      persistent_session: true
      session_expiry: 1d                 # MQTT 5: how long the broker keeps our session offline
      receive_maximum: 10000             # MQTT 5: unacknowledged messages the broker may send us
      keepalive: 30
      reconnect_min_delay: 1s
      reconnect_max_delay: 30s
      tls_ca_file: null                  # CA bundle for mqtts://
      tls_cert_file: null                # client certificate (mutual TLS)
      tls_key_file: null
      alert_topic: city/alerts/{domain}/{sensor}
      deadletter_topic: city/deadletter/{domain}/{sensor}
      # username: from CITYWATCH_MQTT_USERNAME; password only from CITYWATCH_MQTT_PASSWORD
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citywatch.config import MqttConfig
from citywatch.stats import Stats


@dataclass(slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    arrival_ns: int
    generation: int  # which connection delivered it: acks for an older connection are not sent


class MqttConsumer:
    def __init__(self, cfg: MqttConfig, subscription: str | list[str], stats: Stats, logger=None) -> None:
        self.cfg = cfg
        # the house topic, plus the topics of the device families' source profiles
        self.subscription = subscription if isinstance(subscription, str) else ",".join(subscription)
        self._filters = [subscription] if isinstance(subscription, str) else list(subscription)
        self.stats = stats
        self.log = logger or structlog.get_logger("citywatch.mqtt")
        self.inbox: deque[InboundMessage] = deque()
        # Set when the inbox goes from empty to non-empty, or reaches `batch_size` messages; the
        # consumer of the inbox waits on it instead of polling (setting an Event takes a lock, so it
        # is not done for every message).
        self.wake = threading.Event()
        self.batch_size = 1
        # Set once the broker has confirmed the subscription (SUBACK), not merely the connection:
        # a device's message sent between the two would not reach a fresh session.
        self.connected = threading.Event()
        self.generation = 0
        self._v5 = cfg.protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else not cfg.persistent_session,
            manual_ack=True,
        )
        configure_client(self.client, cfg)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # paho callbacks run on paho's network thread: keep them short.
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.stats.inc("mqtt_connect_failures")
            self.log.error("mqtt connect refused", reason=str(reason_code))
            return
        self.generation += 1
        client.subscribe([(f, self.cfg.qos) for f in self._filters])
        self.stats.inc("mqtt_connects")
        self.log.info("mqtt connected", session_present=bool(flags.session_present),
                      subscription=self.subscription, generation=self.generation)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self.stats.inc("mqtt_subscribe_failures")
            self.log.error("mqtt subscription refused", subscription=self.subscription,
                           reasons=[str(rc) for rc in reason_codes])
            return
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.stats.inc("mqtt_disconnects")
        self.log.warning("mqtt disconnected", reason=str(reason_code))

    def _on_message(self, client, userdata, msg) -> None:
        inbox = self.inbox
        inbox.append(InboundMessage(msg.topic, msg.payload, msg.mid, msg.qos, time.time_ns(), self.generation))
        n = len(inbox)
        if n == 1 or n == self.batch_size:
            self.wake.set()

    def start(self) -> None:
        props = None
        kwargs = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = self.cfg.receive_maximum
            if self.cfg.persistent_session:
                props.SessionExpiryInterval = int(self.cfg.session_expiry)
            kwargs["clean_start"] = not self.cfg.persistent_session
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, properties=props, **kwargs)
        self.client.loop_start()

    def ack(self, messages: list[InboundMessage]) -> None:
        gen = self.generation
        for m in messages:
            if m.qos > 0 and m.generation == gen:
                self.client.ack(m.mid, m.qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos)

    def drain(self, max_messages: int, max_bytes: int) -> list[InboundMessage]:
        """Up to max_messages messages from the inbox, stopping once max_bytes of payload are taken."""
        out = []
        popleft = self.inbox.popleft
        size = 0
        try:
            while len(out) < max_messages and size < max_bytes:
                m = popleft()
                out.append(m)
                size += len(m.payload)
        except IndexError:
            pass
        return out

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def configure_client(client: paho.Client, cfg: MqttConfig) -> None:
    """Credentials, TLS and reconnect backoff: shared by the consumer and publishers (simulator, tests)."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.use_tls:
        client.tls_set(ca_certs=cfg.tls_ca_file, certfile=cfg.tls_cert_file, keyfile=cfg.tls_key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(cfg.tls_insecure)
    client.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_delay)), max_delay=max(1, int(cfg.reconnect_max_delay)))
