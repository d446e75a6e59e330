"""The cache's fast path (ASGI middleware): a GET answered 200 with `Cache-Control: public` is kept
as bytes for a short time, keyed by path, query string and whether the client takes gzip, and
replayed without routing or parameter validation. Conditional requests (If-None-Match) go through
to the app. The entries live half the app's cache TTL, so an answer is at most 1.5 TTL old."""

from __future__ import annotations

from cachetools import TTLCache
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HotResponses:
    def __init__(self, app: ASGIApp, ttl: float, max_bytes: int = 64 << 20) -> None:
        self.app = app
        self.entries: TTLCache[tuple, tuple[int, list, bytes]] = TTLCache(
            maxsize=max_bytes, ttl=ttl, getsizeof=lambda e: len(e[2]) + 512)
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        gzip = False
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                await self.app(scope, receive, send)
                return
            if name == b"accept-encoding" and b"gzip" in value:
                gzip = True
        key = (scope["path"], scope["query_string"], gzip)
        hit = self.entries.get(key)
        if hit is not None:
            self.hits += 1
            status, headers, body = hit
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and start.get("status") == 200 and any(
                        k == b"cache-control" and v.startswith(b"public") for k, v in start.get("headers", ())):
                    try:
                        self.entries[key] = (200, list(start["headers"]), b"".join(chunks))
                    except ValueError:  # larger than the whole cache
                        pass
            await send(message)

        await self.app(scope, receive, capture)
