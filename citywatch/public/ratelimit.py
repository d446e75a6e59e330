"""Per-client token buckets (ASGI middleware): `rate` requests per second on average, bursts of `burst`;
beyond that 429 Too Many Requests with Retry-After (whole seconds until a token is back)."""

from __future__ import annotations

import math
import time

from cachetools import TTLCache
from starlette.types import ASGIApp, Receive, Scope, Send


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        # a client idle long enough to refill its bucket is forgotten (same as a full bucket)
        idle = burst / rate if rate > 0 else 1.0
        self._buckets: TTLCache[str, list[float]] = TTLCache(maxsize=max_clients, ttl=max(idle, 1.0))

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = [tokens - 1.0, now]
            return 0.0
        self._buckets[client] = [tokens, now]
        return (1.0 - tokens) / self.rate


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, rate: float, burst: int, trust_forwarded_for: bool = False) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.trust_forwarded_for = trust_forwarded_for
        self.limited = 0

    def client_of(self, scope: Scope) -> str:
        if self.trust_forwarded_for:
            for key, value in scope.get("headers", ()):
                if key == b"x-forwarded-for":
                    return value.decode("latin-1").split(",")[0].strip()
        client = scope.get("client")
        return client[0] if client else "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.buckets is None:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.client_of(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        self.limited += 1
        body = b'{"detail":"too many requests"}'
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(max(1, math.ceil(wait))).encode())]})
        await send({"type": "http.response.body", "body": body})
