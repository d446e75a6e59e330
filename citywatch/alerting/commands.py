"""Acknowledge and silence over MQTT: a command topic for duty-room consoles and control-room apps.

A client publishes one JSON object per command on `city/commands/alerts` (QoS 1)::

    {"action": "ack", "key": "aq-005|threshold:no2", "by": "lan", "note": "đội hiện trường đã đến",
     "request_id": "c-17"}
    {"action": "silence", "sensor": "aq-005", "duration": "2h", "comment": "bảo trì", "by": "lan"}
    {"action": "silence", "area": "tan-phong", "metric": "pm25", "start": "2026-11-28T01:00:00Z",
     "end": "2026-11-28T03:00:00Z", "by": "minh"}
    {"action": "unsilence", "id": "<silence id>", "by": "lan"}

and gets one reply: on the MQTT 5 response topic of the request (with its correlation data) when it
has one, otherwise on `reply_topic`: `{"request_id": ..., "ok": true, "action": ..., "alert": {...}}`
or `{"ok": false, "error": "..."}`. Every action is recorded by the alert manager with who (`by`) and
when. A bad command (not JSON, unknown action, missing field, unknown key) gets an error reply, is
counted and logged, and never disturbs the engine.

Authentication is the broker's job: who may publish on the command topic is decided by the broker's
ACL, so give the consoles their own MQTT users and allow only them to write there, as the shipped
`deploy/mosquitto/acl` does (tested on a real broker)::

    user citywatch
    topic read city/#
    topic write city/commands/alerts/replies/#
    user dutyofficer
    topic write city/commands/alerts
    topic read city/commands/alerts/replies/#

On top of that, `token_env` names an environment variable holding a shared token that every command
must carry as `"token"` (compared in constant time), for brokers whose ACL is coarser. `by` is what
the audit log records; with the ACL it is the word of an authorised console.

Options (section `alerting.commands`)::

    commands:
      enabled: false
      topic: city/commands/alerts
      reply_topic: city/commands/alerts/replies
      client_id: citywatch-commands     # its own connection, with the mqtt: settings
      persistent_session: true          # commands sent while the engine is down are carried out on restart
      token_env: null                   # e.g. CITYWATCH_COMMAND_TOKEN
      max_silence: 7d
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field, ValidationError, model_validator

from citywatch.alerting.model import AlertControl, AlertNotFound, SilenceNotFound
from citywatch.config import Duration, MqttConfig, StrictModel, read_secret_file
from citywatch.ingest.mqtt import configure_client
from citywatch.stats import RateLimitedLog, Stats

SAMPLE_CONFIG = """
commands:
  enabled: true
  topic: city/commands/alerts
  reply_topic: city/commands/alerts/replies
  token_env: CITYWATCH_COMMAND_TOKEN
"""

MATCHERS = ("sensor", "area", "domain", "rule", "metric")


class CommandConfig(StrictModel):
    enabled: bool = False
    topic: str = "city/commands/alerts"
    reply_topic: str = "city/commands/alerts/replies"
    client_id: str = "citywatch-commands"
    # keep the subscription while the engine is down, so a command sent then is carried out on restart
    persistent_session: bool = True
    token_env: str | None = None
    max_silence: Duration = 7 * 86400.0


class SilenceRequest(StrictModel):
    """What a silence is asked with, from the API or the command topic: at least one matcher, and an
    end or a duration (from `start`, default now)."""

    sensor: str | None = None
    area: str | None = None
    domain: str | None = None
    rule: str | None = None
    metric: str | None = None
    comment: str = Field(default="", max_length=1000)
    start: datetime | None = None
    end: datetime | None = None
    duration: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> "SilenceRequest":
        if all(getattr(self, m) is None for m in MATCHERS):
            raise ValueError(f"a silence needs at least one of {', '.join(MATCHERS)} (it would mute everything)")
        if (self.end is None) == (self.duration is None):
            raise ValueError("give exactly one of end and duration")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone, e.g. 2026-11-28T01:00:00Z or +07:00")
        return self

    def arguments(self, now_ns: int, max_duration: float) -> dict[str, Any]:
        """Keyword arguments of `AlertControl.add_silence` (without `who`)."""
        start_ns = _ns(self.start) if self.start is not None else now_ns
        end_ns = _ns(self.end) if self.end is not None else start_ns + int(self.duration * 1e9)
        if end_ns <= start_ns:
            raise ValueError("a silence must end after it starts")
        if end_ns <= now_ns:
            raise ValueError("that silence would already be over")
        if end_ns - max(start_ns, now_ns) > max_duration * 1e9:
            raise ValueError(f"a silence can last at most {max_duration / 3600:g} h")
        return {"start_ns": start_ns, "end_ns": end_ns, "comment": self.comment,
                **{m: getattr(self, m) for m in MATCHERS}}


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) * 1000


class CommandError(ValueError):
    """A command that cannot be carried out; the message goes back to the sender."""


class AckCommand(StrictModel):
    action: str
    key: str = Field(min_length=1)
    by: str = Field(min_length=1, max_length=100)
    note: str | None = Field(default=None, max_length=1000)


class UnsilenceCommand(StrictModel):
    action: str
    id: str = Field(min_length=1)
    by: str = Field(min_length=1, max_length=100)


class SilenceCommand(SilenceRequest):
    action: str
    by: str = Field(min_length=1, max_length=100)


def execute(control: AlertControl, command: dict[str, Any], max_silence: float,
            now_ns: int | None = None) -> dict[str, Any]:
    """Carry out one decoded command; the result part of the reply. Raises CommandError."""
    action = command.get("action")
    try:
        if action == "ack":
            c = AckCommand.model_validate(command)
            alert = control.acknowledge(c.key, c.by, c.note)
            return {"alert": alert.to_dict()}
        if action == "silence":
            c = SilenceCommand.model_validate(command)
            args = c.arguments(now_ns if now_ns is not None else time.time_ns(), max_silence)
            return {"silence": control.add_silence(who=c.by, **args).to_dict()}
        if action == "unsilence":
            c = UnsilenceCommand.model_validate(command)
            return {"silence": control.remove_silence(c.id, c.by).to_dict()}
    except ValidationError as exc:
        raise CommandError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}"
                                     for e in exc.errors())) from exc
    except AlertNotFound as exc:
        raise CommandError(f"no open alert with key {command.get('key')!r}") from exc
    except SilenceNotFound as exc:
        raise CommandError(f"no silence with id {command.get('id')!r}") from exc
    raise CommandError(f"unknown action {action!r} (use ack, silence or unsilence)")


class CommandListener:
    """Subscribes to the command topic with a client of its own and answers every command."""

    def __init__(self, control: AlertControl, cfg: CommandConfig, mqtt: MqttConfig, stats: Stats | None = None,
                 env: Mapping[str, str] | None = None, logger=None) -> None:
        env = os.environ if env is None else env
        self.control = control
        self.cfg = cfg
        self.mqtt = mqtt
        self.stats = stats or Stats()
        self.log = logger or structlog.get_logger("citywatch.commands")
        self._bad_log = RateLimitedLog(self.log, 10.0)
        self.token: str | None = None
        if cfg.token_env:
            self.token = read_secret_file(cfg.token_env, dict(env)) or env.get(cfg.token_env) or None
            if self.token is None:
                raise ValueError(f"commands.token_env: environment variable {cfg.token_env} is not set")
        self._v5 = mqtt.protocol == "5"
        extra = {} if self._v5 else {"clean_session": not cfg.persistent_session}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
                                  **extra)
        configure_client(self.client, mqtt)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.ready = threading.Event()

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._v5:
            kwargs["clean_start"] = not self.cfg.persistent_session
            if self.cfg.persistent_session:
                kwargs["properties"] = Properties(PacketTypes.CONNECT)
                kwargs["properties"].SessionExpiryInterval = int(self.mqtt.session_expiry)
        self.client.connect_async(self.mqtt.host, self.mqtt.port, keepalive=self.mqtt.keepalive, **kwargs)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.log.error("command listener: connect refused", reason=str(reason_code))
            return
        client.subscribe(self.cfg.topic, qos=1)  # on every connect: the session may be gone

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self.log.error("command topic subscription refused (check the broker ACL)", topic=self.cfg.topic)
            return
        self.ready.set()
        self.log.info("listening for alert commands", topic=self.cfg.topic)

    def _on_message(self, client, userdata, msg) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        reply = self.handle(msg.payload)
        out_props = None
        if self._v5 and correlation is not None:
            out_props = Properties(PacketTypes.PUBLISH)
            out_props.CorrelationData = correlation
        client.publish(response_topic or self.cfg.reply_topic, orjson.dumps(reply), qos=1, properties=out_props)

    def handle(self, payload: bytes) -> dict[str, Any]:
        """The reply to one command payload; never raises."""
        request_id = None
        try:
            try:
                command = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise CommandError(f"not JSON: {exc}") from exc
            if not isinstance(command, dict):
                raise CommandError("a command is a JSON object")
            request_id = command.pop("request_id", None)
            token = command.pop("token", None)
            if self.token is not None and not (isinstance(token, str)
                                               and hmac.compare_digest(token.encode(), self.token.encode())):
                self.stats.inc("commands_unauthorized")
                raise CommandError("missing or wrong token")
            result = execute(self.control, command, self.cfg.max_silence)
        except CommandError as exc:
            self.stats.inc("commands_rejected")
            self._bad_log.warning("command", "alert command rejected", error=str(exc))
            return {"request_id": request_id, "ok": False, "error": str(exc)}
        except Exception as exc:  # the alert manager failed: answer, log, carry on
            self.stats.inc("commands_failed")
            self.log.exception("alert command failed")
            return {"request_id": request_id, "ok": False, "error": f"internal error: {type(exc).__name__}"}
        self.stats.inc("commands_done")
        self.log.info("alert command", action=command.get("action"), by=command.get("by"),
                      target=command.get("key") or command.get("id") or "silence")
        return {"request_id": request_id, "ok": True, "action": command.get("action"), **result}
