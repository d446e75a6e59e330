"""Webhook channel: HTTP POST of a JSON body, in one of three formats.

- `generic`: the notification as structured JSON (raw and formatted fields of every alert, a subject and
  a plain-text summary); the recipient's address is ignored.
- `slack`: an incoming-webhook body (`text` preview, a header block and a mrkdwn section); the address,
  if it starts with `#` or `@`, is sent as `channel` (for apps posting through chat.postMessage).
- `telegram`: a Bot API `sendMessage` body in HTML parse mode; the address is the chat id.

Secrets stay out of the config file: the URL can come from an environment variable (`url_env`: a Slack
webhook URL is itself a secret) and `token_env` names the variable holding a token, substituted for
`{token}` in the URL (Telegram: `https://api.telegram.org/bot{token}/sendMessage`) or otherwise sent as
`Authorization: Bearer <token>`. Each variable can instead be `<NAME>_FILE`, the path of a file (mode 0600)
holding the secret, as Docker and systemd credentials provide them.

Failures: connection errors, timeouts, 408, 429 and 5xx are retried by the dispatcher with bounded
backoff; a 429's `Retry-After` (seconds or HTTP date, or Telegram's `parameters.retry_after`) sets the
wait. Any other 4xx goes to the dead-letter log at once, since sending it again cannot succeed.

Options (a channel under `alerting.notify.channels`)::

    slack-duty:
      type: webhook
      format: slack              # generic | slack | telegram
      url_env: CITYWATCH_SLACK_WEBHOOK_URL
      timeout: 10s
    telegram-duty:
      type: webhook
      format: telegram
      url: https://api.telegram.org/bot{token}/sendMessage
      token_env: CITYWATCH_TELEGRAM_BOT_TOKEN
    city-portal:
      type: webhook
      format: generic
      url: https://portal.example.vn/hooks/citywatch
      token_env: CITYWATCH_PORTAL_TOKEN
      headers: {X-Source: citywatch}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import httpx
import orjson
from pydantic import Field, model_validator

from citywatch.alerting.model import Notification
from citywatch.config import Duration
from citywatch.sinks.notify.base import ChannelOptions, DeliveryError, parse_retry_after, secret
from citywatch.sinks.notify.render import Renderer

SAMPLE_CONFIG = """
slack-duty:
  type: webhook
  format: slack
  url_env: CITYWATCH_SLACK_WEBHOOK_URL
telegram-duty:
  type: webhook
  format: telegram
  url: https://api.telegram.org/bot{token}/sendMessage
  token_env: CITYWATCH_TELEGRAM_BOT_TOKEN
"""

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookChannelConfig(ChannelOptions):
    type: Literal["webhook"] = "webhook"
    format: Literal["generic", "slack", "telegram"] = "generic"
    url: str | None = None
    url_env: str | None = None
    token_env: str | None = None
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_url(self) -> "WebhookChannelConfig":
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self


class WebhookChannel:
    def __init__(self, name: str, cfg: WebhookChannelConfig, renderer: Renderer,
                 env: Mapping[str, str] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        env = os.environ if env is None else env
        self.name = name
        self.cfg = cfg
        self.renderer = renderer
        url = cfg.url if cfg.url is not None else secret(cfg.url_env, env)
        if not url:
            raise ValueError(f"channel {name!r}: environment variable {cfg.url_env} (the webhook URL) is not set")
        token = secret(cfg.token_env, env)
        if cfg.token_env and not token:
            raise ValueError(f"channel {name!r}: environment variable {cfg.token_env} (the token) is not set")
        headers = {"Content-Type": "application/json", "User-Agent": "citywatch", **cfg.headers}
        if token and "{token}" in url:
            url = url.replace("{token}", token)
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        self._url = url
        self._client = httpx.Client(headers=headers, timeout=cfg.timeout, transport=transport)

    def start(self) -> None:
        pass

    def body(self, notification: Notification) -> dict:
        lang = self.cfg.language
        address = notification.recipient.address
        if self.cfg.format == "slack":
            channel = address if address and address[0] in "#@" else None
            return self.renderer.slack(notification, lang, channel=channel)
        if self.cfg.format == "telegram":
            if not address:
                raise DeliveryError(f"recipient {notification.recipient.name!r} has no Telegram chat id", retryable=False)
            return self.renderer.telegram(notification, address, lang)
        return self.renderer.generic(notification, lang)

    def send(self, notification: Notification) -> None:
        content = orjson.dumps(self.body(notification))
        try:
            response = self._client.post(self._url, content=content)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status}: {response.text[:200]}"
        if status in RETRYABLE_STATUS:
            raise DeliveryError(detail, retryable=True, retry_after=_retry_after(response))
        raise DeliveryError(detail, retryable=False)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:  # never show the URL: it may carry a token
        return f"WebhookChannel({self.name!r}, format={self.cfg.format!r})"


def _retry_after(response: httpx.Response) -> float | None:
    wait = parse_retry_after(response.headers.get("Retry-After"))
    if wait is not None:
        return wait
    try:  # Telegram: {"ok": false, "error_code": 429, "parameters": {"retry_after": 17}}
        seconds = response.json().get("parameters", {}).get("retry_after")
        return float(seconds) if seconds is not None else None
    except (ValueError, AttributeError, TypeError):
        return None
