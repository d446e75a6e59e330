"""NATS JetStream input: each engine instance consumes only the sensor partitions it owns.

Devices keep publishing MQTT, to nats-server's MQTT listener (or to a Mosquitto bridged into it).
The server maps every telemetry subject to one of `nats.partitions` partitions
(`<prefix>.<partition>.<domain>.<sensor>`, see `citywatch.partitions`), and one JetStream stream
keeps them. Each instance:

* shares the partitions with the other live instances through leases in a key-value bucket
  (`citywatch.partitions`: rendezvous assignment, renew by compare-and-set, TTL, fencing);
* for a partition it acquires, restores the partition's detector and alert state from the state
  bucket (`citywatch.handover`) and replays the stream from the sequence after the one the state
  covers, with a pull consumer filtered to that partition;
* acknowledges to JetStream only after the readings are stored (the engine calls `ack` then), and
  at most every `nats.snapshot_interval` after a stored batch saves each partition's state with the
  last stored sequence (first waiting until everything processed is stored, so the state never runs
  ahead of its sequence);
* when the assignment gives a partition to another live instance, stops fetching it, saves its state
  and releases the lease, so the next owner starts exactly there; a dead instance's partitions move
  after its leases expire (`nats.lease_ttl`) and are replayed from their last saved state.

Outputs are idempotent (InfluxDB points with the same series and time overwrite each other), so the
readings a dead owner had stored after its last snapshot are stored again, identically, by the next.
Stream retention (`nats.stream_max_age`) must cover snapshot interval + lease TTL + the longest time
partitions may go unowned (`nats.max_failover_time`); the settings refuse less, and start-up refuses
an existing stream or lease bucket whose limits disagree with the settings.

The engine sees the consumer interface of `ingest/mqtt.py` (`inbox`, `wake`, `drain`, `ack`,
`publish`, `start`/`stop`) plus `between_batches(engine)`, which it calls on its pipeline thread:
restores and snapshots run there, between micro-batches. nats-py is asyncio: its loop runs in a
thread of this object. Alerts and dead letters are published as core NATS messages on the topic's
subject (`city/alerts/air/aq-001` -> `city.alerts.air.aq-001`), which MQTT clients of the same
server receive as that topic.

Only the house telemetry topic (`mqtt.topic`) is partitioned: the device families' own topics
(`sources:`) are not consumed by this source.

nats-server 2.9 has neither pinned consumers nor per-key TTLs, so the leases are ours (the
bucket-wide TTL expires them); newer servers run the same protocol (their pinned consumer groups
and per-key TTLs are not used yet). Per-partition detector state is handed over; cross-sensor comparisons only see
partitions the same instance owns (see `citywatch.handover`).

Options (select with `source: nats` or `citywatch run --source nats`)::

    source: nats
    nats:
      url: nats://127.0.0.1:4222
      instance_id: null                 # default <hostname>-<pid>; unique per running instance
      partitions: 8                     # the server mapping's partition(8, ...): the same everywhere
      stream: CITYWATCH_TELEMETRY
      subject_prefix: citywatch.telemetry
      create_stream: true               # create the stream when missing
      lease_bucket: citywatch_leases
      state_bucket: citywatch_state
      lease_ttl: 10s                    # failover: a dead instance's partitions move after this
      snapshot_interval: 5s             # partition state saved after a stored batch at most this often (0: every batch)
      max_failover_time: 1h             # partitions may stay unowned this long and lose nothing
      stream_max_age: 1d                # retention: >= snapshot_interval + lease_ttl + max_failover_time
      fetch_batch: 1000
      max_ack_pending: 20000
    detectors:
      allowed_lateness: 0               # held readings would be evaluated by nobody after a failover
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import structlog

from citywatch.config import ConfigError
from citywatch.handover import PartitionStates, PartitionStateStore, StateFenced, encode_blob
from citywatch.ingest.mqtt import InboundMessage
from citywatch.partitions import LeaseLost, Leases, assign, check_ids, topic_to_subject

__all__ = ["NatsSource", "NatsMessage", "default_instance_id"]

_WAIT_PIPELINE = 60.0  # seconds a lease operation waits for the pipeline thread (restore, final snapshot)


@dataclass(slots=True)
class NatsMessage(InboundMessage):
    partition: int = 0
    seq: int = 0  # stream sequence
    reply: str = ""  # JetStream ack subject


def default_instance_id() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}")


class NatsSource:
    """The consumer interface of the engine over partitioned JetStream (see the module docstring)."""

    def __init__(self, engine) -> None:
        settings = engine.settings
        self.cfg = settings.nats
        self.stats = engine.stats
        self.log = engine.log.bind(source="nats") if hasattr(engine.log, "bind") else structlog.get_logger("citywatch.nats")
        check_ids(engine.registry)
        if settings.detectors.state_file:
            # The state lives in the state bucket, per partition; a local file would restore stale rows.
            settings.detectors.state_file = None
        if settings.detectors.allowed_lateness > 0:
            self.log.warning("with the nats source, readings held by allowed_lateness when an instance dies are "
                             "stored but not evaluated", allowed_lateness=settings.detectors.allowed_lateness)
        self.topic = engine.topic
        self.instance = self.cfg.instance_id or default_instance_id()
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.instance):
            raise ConfigError(f"nats.instance_id {self.instance!r}: only letters, digits, '-' and '_'")
        self.partitions = self.cfg.partitions
        # No MQTT connection here: the client id would tag every instance's health points alike.
        settings.mqtt.client_id = self.instance
        self.states = PartitionStates(settings, engine.registry, engine.evaluator, self.partitions)
        self._prefix_tokens = self.cfg.subject_prefix.count(".") + 1
        # The engine's consumer interface.
        self.inbox: deque[NatsMessage] = deque()
        self.wake = threading.Event()
        self.batch_size = 1
        self.connected = threading.Event()
        self.client = None  # no MQTT client: the alerting stage's MQTT channel is not available here
        self.high_water = 4 * settings.batching.max_messages
        # Ownership, shared by the loop thread (writes gen/accept) and the pipeline thread (reads them).
        self._gen: dict[int, int] = {}  # partition -> generation of the current ownership
        self._accept: dict[int, bool] = {}  # partition -> messages of it are processed
        self._next_gen = 1
        # Pipeline-thread bookkeeping.
        self.acked_seq: dict[int, int] = {}  # last stored stream sequence per partition
        self.saved_seq: dict[int, int] = {}  # sequence of the last saved state per partition
        self._last_checkpoint = time.monotonic()
        self._requests: deque[tuple[str, int, object, concurrent.futures.Future]] = deque()
        # Loop-thread state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future = concurrent.futures.Future()
        self._stopping = False
        self._nc = None
        self._js = None
        self._leases: Leases | None = None
        self._state_kv = None
        self._store: PartitionStateStore | None = None
        self._state_rev: dict[int, int] = {}
        self._fetchers: dict[int, asyncio.Task] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._pipeline_alive = False
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="citywatch-nats", daemon=True)
        self._thread.start()
        self._main_task = asyncio.run_coroutine_threadsafe(self._main(), self._loop)
        try:
            self._started.result(timeout=60)  # start-up errors (retention, buckets, connection) surface here
        except BaseException:
            self._close_loop()
            raise

    def _close_loop(self) -> None:
        async def close():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def stop(self) -> None:
        """Save every owned partition's state, release the leases, leave. The pipeline has stopped."""
        if self._loop is None:
            return
        self._stopping = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=60)
        except Exception:  # noqa: BLE001 - the leases expire anyway; the next owner replays
            self.log.exception("nats shutdown incomplete")
        self._close_loop()

    # -- the engine's consumer interface (pipeline thread) --------------------------------------------
    def drain(self, max_messages: int, max_bytes: int) -> list[NatsMessage]:
        out: list[NatsMessage] = []
        popleft = self.inbox.popleft
        gen, accept = self._gen, self._accept
        size = 0
        dropped = 0
        try:
            while len(out) < max_messages and size < max_bytes:
                m = popleft()
                if accept.get(m.partition) and gen.get(m.partition) == m.generation:
                    out.append(m)
                    size += len(m.payload)
                else:
                    dropped += 1  # a partition given up: its next owner replays these
        except IndexError:
            pass
        if dropped:
            self.stats.inc("nats_dropped_not_owned", dropped)
        return out

    def ack(self, messages: list[NatsMessage]) -> None:
        last: dict[int, NatsMessage] = {}
        for m in messages:
            if self._gen.get(m.partition) == m.generation:
                prev = last.get(m.partition)
                if prev is None or m.seq > prev.seq:
                    last[m.partition] = m
        for p, m in last.items():
            if m.seq > self.acked_seq.get(p, 0):
                self.acked_seq[p] = m.seq
            # AckPolicy.ALL: one acknowledgement covers every earlier message of the partition's consumer.
            self._loop.call_soon_threadsafe(self._publish_nowait, m.reply, b"+ACK")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._loop.call_soon_threadsafe(self._publish_nowait, topic_to_subject(topic), payload)

    def between_batches(self, engine) -> None:
        """Restores, releases and periodic snapshots: on the pipeline thread, between batches."""
        self._pipeline_alive = True
        while self._requests:
            kind, p, arg, fut = self._requests.popleft()
            try:
                if kind == "restore":
                    seq = self.states.restore(arg) if arg else 0
                    self.acked_seq[p] = self.saved_seq[p] = seq
                    fut.set_result(seq)
                elif kind == "release":
                    engine.settle()  # what was processed of it is stored and its sequence acknowledged
                    seq = self.acked_seq.get(p, 0)
                    fut.set_result((self.states.snapshot_arrays(p, seq), seq))
            except Exception as exc:  # noqa: BLE001 - reported to the waiting lease operation
                fut.set_exception(exc)
        if time.monotonic() - self._last_checkpoint >= self.cfg.snapshot_interval:
            try:
                self._checkpoint(engine)
            except Exception:  # noqa: BLE001 - never stop the engine: the next owner would replay more
                self._last_checkpoint = time.monotonic()
                self.stats.inc("nats_snapshot_errors")
                self.log.exception("partition states not saved")

    def _checkpoint(self, engine) -> None:
        if not self._due():
            return
        engine.settle()
        due = self._due()
        full = self.states.full_state()
        for p in due:
            seq = self.acked_seq[p]
            arrays = self.states.snapshot_arrays(p, seq, full)  # compressed off this thread
            self.saved_seq[p] = seq
            asyncio.run_coroutine_threadsafe(self._save_state(p, arrays, seq), self._loop)
        self._last_checkpoint = time.monotonic()
        self.stats.inc("nats_snapshots", len(due))

    def _due(self) -> list[int]:
        return [p for p in self.owned() if self.acked_seq.get(p, 0) > self.saved_seq.get(p, 0)]

    def owned(self) -> list[int]:
        # list() copies in one step: the loop thread may add partitions meanwhile
        return sorted(p for p, acc in list(self._accept.items()) if acc)

    # -- loop thread ----------------------------------------------------------------------------------
    def _publish_nowait(self, subject: str, payload: bytes) -> None:
        if self._nc is not None and not self._nc.is_closed:
            task = self._loop.create_task(self._nc.publish(subject, payload))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _main(self) -> None:
        try:
            await self._setup()
        except Exception as exc:  # noqa: BLE001 - handed to start()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        tick = min(1.0, self.cfg.lease_ttl / 3)
        while not self._stopping:
            try:
                await self._rebalance()
            except Exception:  # noqa: BLE001 - a failed round is retried at the next tick
                self.log.exception("partition rebalance failed")
                self.stats.inc("nats_rebalance_errors")
            await asyncio.sleep(tick)

    async def _setup(self) -> None:
        import nats
        from nats.js import api
        from nats.js.errors import BucketNotFoundError, NotFoundError

        cfg = self.cfg
        self._nc = await nats.connect(cfg.url, name=f"citywatch-{self.instance}", max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.5, connect_timeout=5,
                                      error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                                      reconnected_cb=self._on_reconnect)
        self._js = self._nc.jetstream()
        version = self._nc.connected_server_version
        if (version.major, version.minor, version.patch) < (2, 9, 10):
            self.log.warning("nats-server older than 2.9.10, the oldest tested", server_version=str(version))
        subjects = [f"{cfg.subject_prefix}.>"]
        try:
            info = await self._js.stream_info(cfg.stream)
            age = info.config.max_age or 0
            if age and age < cfg.stream_max_age:
                raise ConfigError(f"stream {cfg.stream} keeps readings {age:g}s, less than nats.stream_max_age "
                                  f"({cfg.stream_max_age:g}s = what snapshot interval and failover need)")
        except NotFoundError:
            if not cfg.create_stream:
                raise ConfigError(f"stream {cfg.stream} does not exist and nats.create_stream is false") from None
            await self._js.add_stream(api.StreamConfig(
                name=cfg.stream, subjects=subjects, retention=api.RetentionPolicy.LIMITS,
                max_age=cfg.stream_max_age, storage=api.StorageType.FILE, discard=api.DiscardPolicy.OLD))
        try:
            lease_kv = await self._js.key_value(cfg.lease_bucket)
            ttl = (await self._js.stream_info(f"KV_{cfg.lease_bucket}")).config.max_age
            if abs((ttl or 0) - cfg.lease_ttl) > 1e-3:
                raise ConfigError(f"lease bucket {cfg.lease_bucket} has a TTL of {ttl:g}s, nats.lease_ttl is "
                                  f"{cfg.lease_ttl:g}s: every instance must use the same")
        except BucketNotFoundError:
            lease_kv = await self._js.create_key_value(bucket=cfg.lease_bucket, ttl=cfg.lease_ttl, history=1)
        try:
            self._state_kv = await self._js.key_value(cfg.state_bucket)
        except BucketNotFoundError:
            self._state_kv = await self._js.create_key_value(bucket=cfg.state_bucket, history=1)
        await self._check_layout()
        self._store = PartitionStateStore(self._state_kv)
        self._leases = Leases(lease_kv, self.instance)
        await self._leases.heartbeat()
        self.connected.set()
        self.log.info("nats source started", instance=self.instance, partitions=self.partitions, stream=cfg.stream,
                      server_version=str(self._nc.connected_server_version))

    async def _check_layout(self) -> None:
        """Every instance must split the stream the same way: the first one records the partition count."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        layout = f"partitions={self.partitions} prefix={self.cfg.subject_prefix}".encode()
        try:
            entry = await self._state_kv.get("layout")
        except KeyNotFoundError:
            try:
                await self._state_kv.create("layout", layout)
                return
            except KeyWrongLastSequenceError:
                entry = await self._state_kv.get("layout")
        if entry.value != layout:
            raise ConfigError(f"this instance has {layout.decode()}, the state bucket {self.cfg.state_bucket} was "
                              f"written with {entry.value.decode()}: every instance must use the same")

    async def _on_error(self, exc) -> None:
        self.log.warning("nats error", error=str(exc))

    async def _on_disconnect(self) -> None:
        self.connected.clear()
        self.stats.inc("nats_disconnects")

    async def _on_reconnect(self) -> None:
        self.connected.set()

    async def _rebalance(self) -> None:
        leases = self._leases
        await leases.heartbeat()
        for p in self.owned():
            try:
                await leases.renew(p)
            except LeaseLost:
                self.log.warning("partition lease lost", partition=p)
                await self._drop(p)
        if not self._pipeline_alive:
            return  # restores and releases need the pipeline thread
        members = await leases.members()
        if self.instance not in members:
            members.append(self.instance)
        target = assign(self.partitions, members)
        for p in self.owned():
            if target[p] != self.instance:
                await self._release(p)
        for p in range(self.partitions):
            if target[p] == self.instance and not self._accept.get(p):
                await self._acquire(p)

    def _on_pipeline(self, kind: str, p: int, arg=None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.append((kind, p, arg, fut))
        self.wake.set()
        return fut

    async def _acquire(self, p: int) -> None:
        if not await self._leases.acquire(p):
            return  # the previous owner still holds it: it releases it, or its lease expires
        try:
            # Fence: rewrite the state key, so a previous owner's next (stale) write fails on the revision.
            self._state_rev[p], blob = await self._store.fence(p, self.instance)
            seq = await asyncio.wait_for(asyncio.wrap_future(self._on_pipeline("restore", p, blob)), _WAIT_PIPELINE)
            await self._check_replay(p, seq)
            await self._consume(p, seq)
        except Exception as exc:  # noqa: BLE001 - e.g. another instance fenced first: retried next round
            self.log.warning("partition not acquired", partition=p, error=repr(exc))
            self._state_rev.pop(p, None)
            await self._leases.release(p)
            return
        self.stats.inc("nats_partitions_acquired")
        self.log.info("partition acquired", partition=p, replay_from=seq + 1, instance=self.instance)

    async def _check_replay(self, p: int, seq: int) -> None:
        """A replay that would start before what the stream still keeps has lost readings: say so loudly."""
        info = await self._js.stream_info(self.cfg.stream)
        if seq > 0 and info.state.first_seq > seq + 1:
            self.stats.inc("nats_replay_gaps")
            self.log.error("partition state is older than the stream's first message: readings of it may have "
                           "aged out unevaluated; raise nats.stream_max_age", partition=p, state_seq=seq,
                           stream_first_seq=info.state.first_seq)

    async def _consume(self, p: int, seq: int) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        name = f"cw_{self.instance}_{p}"
        try:
            await self._js.delete_consumer(self.cfg.stream, name)
        except NotFoundError:
            pass
        start = (dict(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq + 1) if seq > 0
                 else dict(deliver_policy=api.DeliverPolicy.ALL))
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.ALL, ack_wait=max(60.0, 6 * self.cfg.lease_ttl),
                                    max_ack_pending=self.cfg.max_ack_pending, inactive_threshold=3 * self.cfg.lease_ttl,
                                    **start)
        sub = await self._js.pull_subscribe(f"{self.cfg.subject_prefix}.{p}.>", durable=name, stream=self.cfg.stream,
                                            config=config)
        gen = self._next_gen
        self._next_gen += 1
        self._gen[p] = gen
        self._accept[p] = True
        self._fetchers[p] = asyncio.get_running_loop().create_task(self._fetch(p, gen, sub))

    async def _fetch(self, p: int, gen: int, sub) -> None:
        fmt = self.topic.format
        k = self._prefix_tokens
        inbox = self.inbox
        batch = self.cfg.fetch_batch
        while self._accept.get(p) and self._gen.get(p) == gen:
            if len(inbox) >= self.high_water:
                await asyncio.sleep(0.005)
                continue
            try:
                msgs = await sub.fetch(batch, timeout=0.5)
            except asyncio.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a reconnect: fetch again
                self.log.warning("fetch failed", partition=p, error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            now = time.time_ns()
            for m in msgs:
                tokens = m.subject.split(".")
                try:
                    topic = fmt(domain=tokens[k + 1], sensor=tokens[k + 2])
                except (IndexError, ValueError):
                    topic = m.subject  # the validator rejects it (topic_mismatch) and dead-letters it
                inbox.append(NatsMessage(topic, m.data, 0, 1, now, gen, p, m.metadata.sequence.stream, m.reply))
            n = len(inbox)
            if msgs and (n == len(msgs) or n >= self.batch_size):
                self.wake.set()
            self.stats.inc("nats_messages", len(msgs))

    async def _stop_fetching(self, p: int) -> None:
        self._accept[p] = False
        task = self._fetchers.pop(p, None)
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _delete_consumer(self, p: int) -> None:
        try:
            await self._js.delete_consumer(self.cfg.stream, f"cw_{self.instance}_{p}")
        except Exception:  # noqa: BLE001 - its inactive threshold removes it anyway
            pass

    async def _drop(self, p: int) -> None:
        """Lease lost or fenced: stop at once, save nothing; the new owner replays from its state."""
        await self._stop_fetching(p)
        self._gen[p] = -1  # acknowledgements of batches still in flight no longer count
        self._state_rev.pop(p, None)
        self._leases.revisions.pop(p, None)
        await self._delete_consumer(p)
        self.stats.inc("nats_partitions_dropped")

    async def _release(self, p: int) -> None:
        """Hand the partition over: stop fetching, save its state at the last stored sequence, release."""
        await self._stop_fetching(p)
        try:
            state, seq = await asyncio.wait_for(asyncio.wrap_future(self._on_pipeline("release", p)), _WAIT_PIPELINE)
        except Exception:  # noqa: BLE001 - keep the lease out of the way: it expires, the next owner replays
            self.log.exception("partition state not saved on release", partition=p)
            await self._drop(p)
            return
        if await self._save_state(p, state, seq):
            await self._leases.release(p)
        self._state_rev.pop(p, None)
        await self._delete_consumer(p)
        self.stats.inc("nats_partitions_released")
        self.log.info("partition released", partition=p, seq=seq, instance=self.instance)

    async def _save_state(self, p: int, state: bytes | dict, seq: int) -> bool:
        lock = self._locks.setdefault(p, asyncio.Lock())
        async with lock:
            rev = self._state_rev.get(p)
            if rev is None:
                return False  # no longer ours
            try:
                blob = state if isinstance(state, bytes) else \
                    await asyncio.get_running_loop().run_in_executor(None, encode_blob, state)
                self._state_rev[p] = await self._store.write(p, self.instance, blob, seq, last=rev)
                self.stats.inc("nats_state_bytes", len(blob))
                return True
            except StateFenced:
                self.log.warning("partition fenced: another instance owns it now", partition=p, seq=seq)
                await self._drop(p)
                return False
            except Exception:  # noqa: BLE001 - the next checkpoint tries again
                self.log.exception("partition state not saved", partition=p)
                self.saved_seq[p] = 0
                return False

    async def _shutdown(self) -> None:
        for p in self.owned():
            await self._stop_fetching(p)
        for p in sorted(self._state_rev):
            seq = self.acked_seq.get(p, 0)
            try:
                if seq > self.saved_seq.get(p, 0):
                    await self._save_state(p, self.states.snapshot(p, seq), seq)  # the pipeline has stopped
                await self._leases.release(p)
            except Exception:  # noqa: BLE001
                self.log.exception("partition not handed over on shutdown", partition=p)
            await self._delete_consumer(p)
        await self._leases.leave()
        await self._nc.flush()
        await self._nc.close()
