"""HTTP details shared by the sinks and the public API: Retry-After, and how to reach InfluxDB.

>>> parse_retry_after("7"), parse_retry_after("soon"), parse_retry_after(None)
(7.0, None, None)
"""

from __future__ import annotations

import ssl
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from citywatch.config import InfluxConfig

__all__ = ["influx_client_options", "parse_retry_after"]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def influx_client_options(cfg: InfluxConfig, user_agent: str) -> dict[str, Any]:
    """httpx client options for the configured InfluxDB: base URL, token (2.x/3.x) or basic auth, TLS."""
    headers = {"User-Agent": user_agent}
    auth = None
    if cfg.token is not None and cfg.token.get_secret_value():
        headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
    elif cfg.username:
        auth = httpx.BasicAuth(cfg.username, cfg.password.get_secret_value() if cfg.password else "")
    verify: bool | ssl.SSLContext = True
    if not cfg.verify_tls:
        verify = False
    elif cfg.ca_file:
        verify = ssl.create_default_context(cafile=cfg.ca_file)
    return {"base_url": cfg.url.rstrip("/"), "headers": headers, "auth": auth, "verify": verify,
            "timeout": httpx.Timeout(cfg.timeout)}
