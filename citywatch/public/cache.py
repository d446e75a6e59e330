"""A TTL cache of finished responses with single flight: while one request computes an entry, identical
requests wait for it instead of querying InfluxDB again. Failures are not cached."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

T = TypeVar("T")


class SingleFlightCache(Generic[T]):
    def __init__(self, ttl: float, maxsize: int = 4096, getsizeof: Callable[[T], int] | None = None) -> None:
        """`maxsize` counts entries, or what `getsizeof` says (bytes); the least recently used go first."""
        self._cache: TTLCache[Hashable, T] = TTLCache(maxsize=maxsize, ttl=ttl, getsizeof=getsizeof)
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}
        self.hits = self.misses = self.computed = 0

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        try:
            value = self._cache[key]
            self.hits += 1
            return value
        except KeyError:
            pass
        self.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.computed += 1
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            try:
                self._cache[key] = value
            except ValueError:  # larger than the whole cache: served, not kept
                pass
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]
