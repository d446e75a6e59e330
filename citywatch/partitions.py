"""Sensor partitions for the NATS JetStream source: the partition function, the assignment of
partitions to instances, and the lease protocol that makes one instance at a time own a partition.

**Partition function.** nats-server maps each telemetry subject to a partition with a
`{{partition(n, i)}}` subject mapping: FNV-1a (32-bit) over the wildcard token(s) `i`, modulo `n`
(several tokens are hashed concatenated, without a separator). The mapping generated here hashes
the sensor token only, so `partition_of(sensor, n)` computes on our side exactly what the server
computes (the tests check it against a real server):

    >>> partition_of("aq-001", 8), partition_of("aq-002", 8)
    (5, 4)
    >>> telemetry_mapping("city/{domain}/{sensor}/telemetry", "citywatch.telemetry", 8)
    ('city.*.*.telemetry', 'citywatch.telemetry.{{partition(8,2)}}.{{wildcard(1)}}.{{wildcard(2)}}')

Ids become subject tokens (MQTT `city/air/aq-001/telemetry` is NATS `city.air.aq-001.telemetry`),
so a domain or sensor id must not contain '.', whitespace, '+', '#', '*' or '>':
`check_ids(registry)` refuses such a registry with every offending id named.

**Assignment.** `assign(n, members)` gives each partition to one live instance: rendezvous
(highest-random-weight) hashing of (instance, partition), capped at ceil(n / members) partitions
per instance so that the load is even. Every instance computes the same assignment from the same
member list; when an instance joins or leaves, most partitions keep their owner.

**Leases** (`Leases`, on a NATS key-value bucket whose TTL is `lease_ttl`). nats-server 2.9 has
neither pinned consumers (2.11) nor per-key TTLs (2.11), so the protocol is ours and uses only
compare-and-set and the bucket-wide TTL, which removes a value that was not rewritten in time:

* `member.<instance>` is rewritten every second (or `lease_ttl / 3` if shorter): the live instances
  are the keys present.
* `lease.<p>` names the owner of partition p. Acquire: `create` (fails while another owner's lease
  lives). Renew: `update(last=revision)` at the same pace - it fails if the lease expired and
  someone else took it, and then the instance drops the partition at once. Release: `delete(last=
  revision)`, after the partition's state has been saved, so the next owner starts exactly where
  this one stopped.
* An instance acquires only the partitions the assignment gives it, and releases those it gives
  to another live instance; a dead instance's leases expire after at most `lease_ttl`.
* Fencing: a lease alone cannot stop an owner that was paused past its TTL from acting on stale
  beliefs. The partition's state key (see `citywatch.handover`) is therefore written with
  compare-and-set too: a new owner rewrites it on acquisition, so the old owner's next snapshot
  write fails on the revision, and the old owner drops the partition. What a fenced owner wrote to
  InfluxDB before noticing is harmless: it processed the same readings from the same state, and
  InfluxDB points with the same series and time overwrite each other.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

from citywatch.config_types import ConfigError
from citywatch.ingest.topics import TopicPattern

__all__ = ["fnv1a_32", "partition_of", "check_ids", "telemetry_mapping", "assign", "Leases", "LeaseLost"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
# Not allowed in an id that becomes a NATS subject token (and, for '+' and '#', an MQTT topic level).
_BAD_TOKEN = re.compile(r"[.\s+#*>/]")


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits: the hash of nats-server's `partition()` subject-mapping function."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(sensor_id: str, partitions: int) -> int:
    """The partition nats-server maps a sensor's telemetry to (mapping from `telemetry_mapping`)."""
    return fnv1a_32(sensor_id.encode("utf-8")) % partitions


def check_ids(registry) -> None:
    """Refuse domain and sensor ids that cannot be subject tokens, naming every one of them."""
    bad = []
    for sensor in registry.sensors.values():
        for kind, value in (("sensor id", sensor.id), ("domain", sensor.domain)):
            if not value or _BAD_TOKEN.search(value):
                bad.append(f"{kind} {value!r} (sensor {sensor.id!r})")
    if bad:
        raise ConfigError(f"{getattr(registry, 'source', '<registry>')}: ids used as NATS subject tokens must not "
                          "contain '.', whitespace, '+', '#', '*', '>' or '/': " + "; ".join(sorted(set(bad))))


def topic_to_subject(topic: str) -> str:
    """An MQTT topic as the NATS subject nats-server's MQTT listener publishes it to."""
    return topic.replace("/", ".")


def telemetry_mapping(topic: str, prefix: str, partitions: int) -> tuple[str, str]:
    """(source, destination) of the server's subject mapping for a telemetry topic pattern.

    The destination is `<prefix>.<partition>.<domain>.<sensor>`, the partition hashed from the
    sensor token alone.
    """
    pattern = TopicPattern(topic)
    levels = topic.split("/")
    wildcard_index: dict[str, int] = {}
    source = []
    for level in levels:
        name = level[1:-1] if level.startswith("{") else None
        if name is None:
            source.append(level)
        else:
            wildcard_index[name] = len(wildcard_index) + 1
            source.append("*")
    if set(pattern.names) != {"domain", "sensor"}:
        raise ConfigError(f"nats: the telemetry topic {topic!r} must have exactly the placeholders {{domain}} and {{sensor}}")
    d, s = wildcard_index["domain"], wildcard_index["sensor"]
    return ".".join(source), f"{prefix}.{{{{partition({partitions},{s})}}}}.{{{{wildcard({d})}}}}.{{{{wildcard({s})}}}}"


def assign(partitions: int, members: Iterable[str]) -> dict[int, str]:
    """Partition -> instance: capped rendezvous hashing (see the module docstring).

    >>> a = assign(8, ["east", "west", "north"])
    >>> sorted(a) == list(range(8)), sorted(set(a.values()))
    (True, ['east', 'north', 'west'])
    >>> max(list(a.values()).count(m) for m in ("east", "west", "north"))
    3
    """
    names = sorted(set(members))
    if not names:
        return {}
    cap = math.ceil(partitions / len(names))
    load = dict.fromkeys(names, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        ranked = sorted(names, key=lambda m: fnv1a_32(f"{m}/{p}".encode()), reverse=True)
        owner = next(m for m in ranked if load[m] < cap)
        load[owner] += 1
        out[p] = owner
    return out


class LeaseLost(Exception):
    """The lease of a partition is no longer ours (it expired and another instance took it)."""


class Leases:
    """The lease protocol of the module docstring on a nats-py KeyValue bucket (asyncio)."""

    def __init__(self, kv, instance: str) -> None:
        self.kv = kv
        self.instance = instance
        self.revisions: dict[int, int] = {}  # partition -> revision of our lease

    async def heartbeat(self) -> None:
        await self.kv.put(f"member.{self.instance}", self.instance.encode())

    async def leave(self) -> None:
        try:
            await self.kv.delete(f"member.{self.instance}")
        except Exception:  # noqa: BLE001 - best effort: the TTL removes it anyway
            pass

    async def members(self) -> list[str]:
        from nats.js.errors import NoKeysError

        try:
            keys = await self.kv.keys()  # (server-side key filters need nats-server 2.10)
        except NoKeysError:
            return []
        return sorted(k.split(".", 1)[1] for k in keys if k.startswith("member."))

    async def owner(self, partition: int) -> str | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get(f"lease.{partition}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def acquire(self, partition: int) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            self.revisions[partition] = await self.kv.create(f"lease.{partition}", self.instance.encode())
            return True
        except KeyWrongLastSequenceError:
            return False

    async def renew(self, partition: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            self.revisions[partition] = await self.kv.update(f"lease.{partition}", self.instance.encode(),
                                                             last=self.revisions[partition])
        except KeyWrongLastSequenceError:
            self.revisions.pop(partition, None)
            raise LeaseLost(partition) from None

    async def release(self, partition: int) -> None:
        rev = self.revisions.pop(partition, None)
        if rev is not None:
            await self.kv.delete(f"lease.{partition}", last=rev)
