"""A small authenticated HTTP API for duty officers: open alerts, acknowledge, silences, audit log.

Starlette served by uvicorn in a background thread of the engine, bound to 127.0.0.1 by default (put a
TLS reverse proxy in front to reach it from other machines). Every request except `GET /healthz` needs
`Authorization: Bearer <token>`; each token belongs to a named principal, and that name is what the
audit log records as who acknowledged or silenced (when is the wall clock of the request). Tokens are
never in the config file: `tokens_env` names an environment variable and `tokens_file` a secret file,
both holding `name:token` entries (comma- or newline-separated, tokens of 16 characters or more). The
API refuses to start without a token unless `allow_unauthenticated: true` (then every action is
recorded as `anonymous`).

| method | path | what |
|---|---|---|
| GET | /alerts | open alerts (pending and firing); filters `?domain=&area=&sensor=&metric=&rule=&severity=&state=&acknowledged=true` or `false` |
| POST | /alerts/{key}/ack | acknowledge; body `{"note": "..."}` optional |
| GET | /silences | silences |
| POST | /silences | add one: `{"sensor" / "area" / "domain" / "rule" / "metric": ..., "duration": "2h"` or `"end": "<RFC 3339>"`, `"start"`, `"comment"}` |
| DELETE | /silences/{id} | remove one |
| GET | /audit | who did what, when |
| GET | /healthz | liveness, no token |

Answers are JSON; errors are `{"error": "..."}` with 400 (bad JSON), 401 (no or wrong token), 404
(unknown alert or silence) or 422 (invalid fields).

Options (section `alerting.api`)::

    api:
      enabled: false
      host: 127.0.0.1
      port: 8787
      tokens_env: CITYWATCH_API_TOKENS     # e.g. "lan:3f9c...,minh:a81d..."
      tokens_file: null                    # or a secret file with one name:token per line
      allow_unauthenticated: false
      max_silence: 7d
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog
import uvicorn
from pydantic import Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from citywatch.alerting.commands import SilenceRequest
from citywatch.alerting.model import AlertControl, AlertNotFound, SilenceNotFound, iso_time
from citywatch.config import Duration, StrictModel, read_secret_file

SAMPLE_CONFIG = """
api:
  enabled: true
  host: 127.0.0.1
  port: 8787
  tokens_env: CITYWATCH_API_TOKENS
"""

MIN_TOKEN_LENGTH = 16
ALERT_FILTERS = ("domain", "area", "sensor", "metric", "rule", "severity", "state")
ANONYMOUS = "anonymous"


class ApiConfig(StrictModel):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    tokens_env: str = "CITYWATCH_API_TOKENS"
    tokens_file: str | None = None
    allow_unauthenticated: bool = False
    max_silence: Duration = 7 * 86400.0


class AuthError(ValueError):
    """The API cannot start: no usable token."""


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """`name:token` entries, comma- or newline-separated -> {token: name}."""
    tokens: dict[str, str] = {}
    for entry in text.replace(",", "\n").splitlines():
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise AuthError(f"{source}: an entry is name:token, got {entry.split(':')[0]!r}...")
        if len(token) < MIN_TOKEN_LENGTH:
            raise AuthError(f"{source}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        tokens[token] = name
    return tokens


def load_tokens(cfg: ApiConfig, env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    tokens: dict[str, str] = {}
    from_env = read_secret_file(cfg.tokens_env, dict(env)) or env.get(cfg.tokens_env)
    if from_env:
        tokens.update(parse_tokens(from_env, f"environment variable {cfg.tokens_env}"))
    if cfg.tokens_file:
        tokens.update(parse_tokens(Path(cfg.tokens_file).read_text(), cfg.tokens_file))
    if not tokens and not cfg.allow_unauthenticated:
        raise AuthError(f"the alert API needs at least one token (name:token in {cfg.tokens_env} or tokens_file), "
                        "or allow_unauthenticated: true")
    return tokens


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="citywatch"'} if status == 401 else None
    response = _json({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


def _alert_json(alert) -> dict[str, Any]:
    d = alert.to_dict()
    d["reading_time"] = iso_time(alert.last_ns)
    d["started"] = iso_time(alert.started_ns)
    d["acked_at"] = iso_time(alert.acked_at_ns)
    return d


def _silence_json(s) -> dict[str, Any]:
    return {**s.to_dict(), "start": iso_time(s.start_ns), "end": iso_time(s.end_ns)}


class AckBody(StrictModel):
    note: str | None = Field(default=None, max_length=1000)


def create_app(control: AlertControl, tokens: Mapping[str, str], max_silence: float = 7 * 86400.0,
               allow_unauthenticated: bool = False, logger=None) -> Starlette:
    log = logger or structlog.get_logger("citywatch.api")
    known = [(t.encode(), name) for t, name in tokens.items()]

    def principal(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            found = None
            for candidate, name in known:  # compare with every token: the time tells nothing
                if hmac.compare_digest(candidate, token.strip().encode()):
                    found = name
            if found:
                return found
        return ANONYMOUS if allow_unauthenticated and not known else None

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("the body is a JSON object")
        return data

    def endpoint(handler):
        async def wrapped(request: Request) -> Response:
            who = principal(request)
            if who is None:
                return _error("missing or invalid bearer token", 401)
            try:
                return await handler(request, who)
            except (orjson.JSONDecodeError, ValueError) as exc:
                if isinstance(exc, ValidationError):
                    return _error("; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                            for e in exc.errors()), 422)
                status = 400 if isinstance(exc, orjson.JSONDecodeError) else 422
                return _error(str(exc), status)
            except AlertNotFound:
                return _error(f"no open alert with key {request.path_params.get('key')!r}", 404)
            except SilenceNotFound:
                return _error(f"no silence with id {request.path_params.get('silence_id')!r}", 404)
        return wrapped

    async def list_alerts(request: Request, who: str) -> Response:
        q = request.query_params
        unknown = set(q) - {*ALERT_FILTERS, "acknowledged"}
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; use {', '.join(ALERT_FILTERS)}, acknowledged")
        acked = q.get("acknowledged")
        if acked not in (None, "true", "false"):
            raise ValueError("acknowledged is true or false")
        alerts = [a for a in control.open_alerts()
                  if all(getattr(a, f) == q[f] for f in ALERT_FILTERS if f in q)
                  and (acked is None or (a.acked_by is not None) == (acked == "true"))]
        alerts.sort(key=lambda a: a.started_ns)
        return _json({"alerts": [_alert_json(a) for a in alerts], "count": len(alerts)})

    async def acknowledge(request: Request, who: str) -> Response:
        body = AckBody.model_validate(await body_of(request))
        alert = control.acknowledge(request.path_params["key"], who, body.note)
        log.info("alert acknowledged", key=alert.key, by=who)
        return _json({"alert": _alert_json(alert)})

    async def list_silences(request: Request, who: str) -> Response:
        return _json({"silences": [_silence_json(s) for s in control.silences()]})

    async def add_silence(request: Request, who: str) -> Response:
        req = SilenceRequest.model_validate(await body_of(request))
        silence = control.add_silence(who=who, **req.arguments(time.time_ns(), max_silence))
        log.info("silence added", id=silence.id, by=who)
        return _json({"silence": _silence_json(silence)}, 201)

    async def remove_silence(request: Request, who: str) -> Response:
        silence = control.remove_silence(request.path_params["silence_id"], who)
        log.info("silence removed", id=silence.id, by=who)
        return _json({"silence": _silence_json(silence)})

    async def audit(request: Request, who: str) -> Response:
        return _json({"audit": [{**r.to_dict(), "when": iso_time(r.when_ns)} for r in control.audit()]})

    async def healthz(request: Request) -> Response:
        return _json({"ok": True})

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/alerts", endpoint(list_alerts), methods=["GET"]),
        Route("/alerts/{key:path}/ack", endpoint(acknowledge), methods=["POST"]),
        Route("/silences", endpoint(list_silences), methods=["GET"]),
        Route("/silences", endpoint(add_silence), methods=["POST"]),
        Route("/silences/{silence_id}", endpoint(remove_silence), methods=["DELETE"]),
        Route("/audit", endpoint(audit), methods=["GET"]),
    ])


class ApiServer:
    """The API in a background thread; `start()` returns once it accepts connections."""

    def __init__(self, control: AlertControl, cfg: ApiConfig, env: Mapping[str, str] | None = None,
                 logger=None) -> None:
        self.cfg = cfg
        self.log = logger or structlog.get_logger("citywatch.api")
        tokens = load_tokens(cfg, env)
        if not tokens:
            self.log.warning("alert API without authentication: every action is recorded as anonymous")
        self.app = create_app(control, tokens, cfg.max_silence, cfg.allow_unauthenticated, self.log)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = cfg.port

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.host, self.cfg.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="citywatch-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the alert API did not start on {self.cfg.host}:{self.port}")
            time.sleep(0.01)
        self.log.info("alert API listening", url=self.url)

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
