"""The engine: MQTT micro-batches -> validation -> detectors -> alerts -> InfluxDB (or the disk spool).

One pipeline thread turns inbound messages into columnar micro-batches (flushed by size or age),
runs every detector on the whole batch, and hands the encoded points to a small pool of writer
threads. Acknowledgements go back to the broker strictly in arrival order and only once a batch's
points are in InfluxDB or in the spool: that is the at-least-once guarantee. Alerts of a batch are
published after its points are stored, so an alert never refers to a reading that could be lost.

Everything stateful between validation and storage (event-time watermarks, the reorder buffer of
`detectors.allowed_lateness`, detectors, alert tracking, index stages) is `citywatch.evaluate.Evaluator`;
the engine adds MQTT, InfluxDB, the spool, acknowledgements, dead letters and its own health points.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import structlog

from citywatch.alerting.stage import AlertingStage
from citywatch.alerts import AlertEvent
from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.ingest.mqtt import InboundMessage, MqttConsumer
from citywatch.ingest.sources.mapper import SourceMapper, configuration_problems, load_profiles
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Rejection, Validator
from citywatch.registry import Registry, SeriesIndex
from citywatch.sinks.influxdb import InfluxWriter
from citywatch.sinks.line_protocol import encode_line
from citywatch.sinks.spool import Spool
from citywatch.stats import RateLimitedLog, Stats

@dataclass
class _Pending:
    """A batch on its way to storage: acknowledged and announced when `future` is done."""

    future: Future
    messages: list[InboundMessage]
    alerts: list[AlertEvent]
    readings: int
    first_arrival_ns: int
    event_ts: np.ndarray | None = None  # kept only when a latency probe is installed
    # The state right after this batch when it raised alerts: saved before the acknowledgement, so
    # that after a crash the restored state has announced them and they are not announced again.
    state: dict[str, np.ndarray] | None = None
    event_now_ns: int | None = None  # newest event time of the batch: the alert lifecycle's clock


class Engine:
    def __init__(self, settings: Settings, registry: Registry | None = None, logger=None,
                 source: Callable[["Engine"], MqttConsumer] | None = None) -> None:
        self.settings = settings
        self.log = logger or structlog.get_logger("citywatch.engine")
        self.registry = registry or Registry.load(settings.resolve(settings.registry))
        self.stats = Stats()
        self.series = SeriesIndex(self.registry)
        self.series.add_registry()
        self.topic = TopicPattern(settings.mqtt.topic)
        self.alert_topic = TopicPattern(settings.mqtt.alert_topic)
        self.deadletter_topic = TopicPattern(settings.mqtt.deadletter_topic)
        src = settings.sources
        self.sources = (SourceMapper(load_profiles(src.profiles, settings.base_dir), self.registry, self.stats)
                        if src.enabled and src.profiles else None)
        if self.sources is not None:
            for problem in configuration_problems([p.p for p in self.sources.profiles], self.registry):
                self.log.warning("device source configuration", problem=problem)
        self.validator = Validator(self.registry, self.series, settings.validation, self.topic, self.stats,
                                   sources=self.sources)
        self.evaluator = Evaluator(settings, self.series, self.stats)
        self.encoder = self.evaluator.encoder
        self.spool = Spool(settings.data_path(settings.spool.directory), settings.spool.max_bytes,
                           settings.spool.when_full, settings.spool.fsync, self.stats)
        self.writer = InfluxWriter(settings.influxdb, settings.batching, self.spool, self.stats,
                                   logger=self.log, on_rejected=self._on_rejected_points,
                                   replay_interval=settings.spool.replay_interval)
        # `source` builds another input with the consumer's interface (ingest/nats_source.py).
        subscriptions = [self.topic.subscription] + (self.sources.subscriptions if self.sources else [])
        self.consumer = (source(self) if source is not None else
                         MqttConsumer(settings.mqtt, subscriptions, self.stats, logger=self.log))
        # The alert lifecycle: notifications (through this MQTT connection too), the API, the command topic.
        self.alerting = (AlertingStage(settings, self.registry, self.stats, logger=self.log,
                                       mqtt_client=self.consumer.client) if settings.alerting.enabled else None)
        self._last_alert_tick = time.monotonic()
        self._pool = ThreadPoolExecutor(settings.batching.concurrent_writes, thread_name_prefix="citywatch-write")
        self._pending: deque[_Pending] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bad_input_log = RateLimitedLog(self.log, settings.validation.log_every)
        self._deadletter_file = (settings.data_path(settings.validation.deadletter_file)
                                 if settings.validation.deadletter_file else None)
        self._state_file = settings.data_path(settings.detectors.state_file) if settings.detectors.state_file else None
        self._last_snapshot = time.monotonic()
        self._last_health = time.monotonic()
        self._last_device_check = time.monotonic()
        self._last_source_poll = time.monotonic()
        self.latencies_ns: deque[int] = deque(maxlen=10_000)  # arrival -> stored, per batch
        # Benchmarks: called with (event times of a stored batch, time it was stored), both in ns.
        self.latency_probe: Callable[[np.ndarray, int], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.load_state()
        self.writer.ensure_database()
        self.writer.start()
        self.consumer.start()
        if self.alerting is not None:
            self.alerting.start()
        self._thread = threading.Thread(target=self._run, name="citywatch-pipeline", daemon=True)
        self._thread.start()
        self.log.info("engine started", sensors=len(self.registry.sensors), series=len(self.series),
                      subscription=self.topic.subscription, influx=self.settings.influxdb.url)

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything: process what arrived, store it, acknowledge it, save state, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.alerting is not None:
            self.alerting.stop()
        self.consumer.stop()
        self._pool.shutdown(wait=True)
        self.writer.close(timeout)
        self.spool.close()
        self.log.info("engine stopped", **{k: v for k, v in self.stats.snapshot().items() if k.startswith("readings")})

    @property
    def running(self) -> bool:
        """False once the pipeline thread has died (a storage failure it cannot survive)."""
        return self._thread is not None and self._thread.is_alive()

    # -- the pipeline thread -----------------------------------------------------------------------
    def _run(self) -> None:
        b = self.settings.batching
        consumer = self.consumer
        consumer.batch_size = b.max_messages
        try:
            while not self._stop.is_set():
                self._complete(block=False)
                self._release_held()
                self._periodic()
                inbox = consumer.inbox
                if not inbox:
                    consumer.wake.wait(0.1)
                    consumer.wake.clear()
                    continue
                wait = b.max_age - (time.time_ns() - inbox[0].arrival_ns) / 1e9
                if len(inbox) < b.max_messages and wait > 0:
                    consumer.wake.wait(min(wait, 0.1))
                    consumer.wake.clear()
                    continue
                self._process_safely(consumer.drain(b.max_messages, b.max_bytes))
            while consumer.inbox:
                self._process_safely(consumer.drain(b.max_messages, b.max_bytes))
            self._release_held(drain=True)
            self._complete(block=True)
            self.save_state()
        except Exception:
            # Only storage can get here (the writer could neither write nor spool): stop without
            # acknowledging, so that the broker keeps every message that was not stored.
            self.log.exception("pipeline stopped: readings can be neither written nor spooled")
            raise

    def _process_safely(self, messages: list[InboundMessage]) -> None:
        """A batch that trips a bug is quarantined whole (raw payloads kept), not allowed to stop the engine."""
        try:
            self.process(messages)
        except Exception as exc:
            self.log.exception("batch quarantined after an internal error", messages=len(messages))
            self.stats.inc("batches_quarantined")
            self._quarantine(messages, f"{type(exc).__name__}: {exc}")
            self.consumer.ack(messages)

    def process(self, messages: list[InboundMessage]) -> None:
        if not messages:
            return
        batch, rejections = self.validator.validate([(m.topic, m.payload, m.arrival_ns) for m in messages])
        self._dead_letter(rejections)
        batch = batch.sorted_by_series_time()
        lines, events = self.evaluator.ingest(batch, time.time_ns())
        lines.extend(self._device_reports())
        self.stats.inc("batches")
        future = self._pool.submit(self.writer.write, lines) if lines else _done()
        future.add_done_callback(lambda _: self.consumer.wake.set())  # acknowledge promptly
        self._pending.append(_Pending(future, messages, events, len(batch), messages[0].arrival_ns,
                                      batch.ts if self.latency_probe else None, self._state_after(events),
                                      int(batch.ts.max()) if len(batch) else None))
        # Bounded concurrency: never more batches in flight than writer threads (plus one being built).
        while len(self._pending) > self.settings.batching.concurrent_writes:
            self._complete_one()

    def _device_reports(self) -> list[str]:
        """What device families said besides readings: health points, and online/offline to no-data."""
        v = self.validator
        lines = [encode_line("sensor_health", {"sensor": s.id, "domain": s.domain, "area": s.area, "family": family},
                             fields, ts) for s, family, ts, fields in v.health]
        if self.evaluator.no_data is not None:
            for sensor_id, online, ts in v.availability:
                self.evaluator.no_data.announce(sensor_id, online, ts)
        v.health.clear()
        v.availability.clear()
        return lines

    def _poll_sources(self) -> None:
        """Readings due by the clock alone (Frigate's closed intervals) and commands to devices."""
        if self.sources is None:
            return
        now = time.time_ns()
        records = self.sources.tick(now)
        if records:
            batch, rejections = self.validator.validate_records(records, now)
            self._dead_letter(rejections)
            lines, events = self.evaluator.ingest(batch.sorted_by_series_time(), now)
            lines.extend(self._device_reports())
            if lines or events:
                self._pending.append(_Pending(self._pool.submit(self.writer.write, lines) if lines else _done(),
                                              [], events, len(batch), now, state=self._state_after(events)))
        for topic, payload in self.sources.commands():
            self.consumer.publish(topic, payload, qos=0)

    def _release_held(self, drain: bool = False) -> None:
        """Process readings of the reorder buffer whose wait is over (all of them when draining)."""
        try:
            lines, events = self.evaluator.release_held(time.time_ns(), drain)
        except Exception:
            # The readings are stored already; only their evaluation is lost, as for a quarantined batch.
            self.log.exception("evaluation of held readings failed")
            self.stats.inc("batches_quarantined")
            return
        if lines or events:
            future = self._pool.submit(self.writer.write, lines) if lines else _done()
            self._pending.append(_Pending(future, [], events, 0, time.time_ns(), state=self._state_after(events)))

    def _complete_one(self) -> None:
        p = self._pending.popleft()
        p.future.result()  # the writer spools rather than fail; an exception here is a bug
        if self.settings.alerts.mqtt:
            for a in p.alerts:
                self.consumer.publish(self.alert_topic.format(domain=a.domain, sensor=a.sensor), a.to_json(), qos=1)
        self.stats.inc("alerts", len(p.alerts))
        if self.alerting is not None and (p.alerts or p.event_now_ns is not None):
            self._write_alert_transitions(self.alerting.after_stored(p.alerts, p.event_now_ns))
        if p.state is not None:
            self._write_state(p.state)
        self.consumer.ack(p.messages)
        now = time.time_ns()
        self.stats.inc("messages_acked", len(p.messages))
        self.stats.inc("readings_stored", p.readings)
        if p.messages:
            self.latencies_ns.append(now - p.first_arrival_ns)
        if self.latency_probe is not None and p.event_ts is not None:
            self.latency_probe(p.event_ts, now)

    def _write_alert_transitions(self, lines: list[str]) -> None:
        """Lifecycle transitions (firing, acknowledged, resolved, ...) as points of `alerts`."""
        if lines and self.settings.alerts.influxdb:
            self._pending.append(_Pending(self._pool.submit(self.writer.write, lines), [], [], 0, time.time_ns()))

    def settle(self) -> None:
        """Wait until every batch processed so far is stored and acknowledged (pipeline thread only)."""
        self._complete(block=True)

    def _complete(self, block: bool) -> None:
        while self._pending and (block or self._pending[0].future.done()):
            self._complete_one()

    # -- bad input ---------------------------------------------------------------------------------
    def _dead_letter(self, rejections: list[Rejection]) -> None:
        if not rejections:
            return
        self.stats.inc("deadletters", len(rejections))
        lines = []
        for r in rejections:
            body = r.to_json()
            self.consumer.publish(r.deadletter_topic(self.deadletter_topic), body, qos=1)
            lines.append(body)
            self._bad_input_log.warning(r.reason, "rejected input", reason=r.reason, topic=r.topic, detail=r.detail)
        self._keep_dead_letters(lines)

    def _quarantine(self, messages: list[InboundMessage], error: str) -> None:
        self._keep_dead_letters([
            orjson.dumps({"reason": "internal_error", "detail": error, "topic": m.topic,
                          "payload": m.payload.decode("utf-8", "replace"), "arrival_ns": m.arrival_ns})
            for m in messages])

    def _on_rejected_points(self, lines: list[str], error: str) -> None:
        """Points InfluxDB refused (e.g. a field type conflict): kept in the dead-letter file."""
        self._bad_input_log.warning("influx_rejected", "influxdb rejected points", count=len(lines), error=error)
        self._keep_dead_letters([orjson.dumps({"reason": "influx_rejected", "detail": error, "line": line})
                                 for line in lines])

    def _keep_dead_letters(self, records: list[bytes]) -> None:
        """Append JSON records to the dead-letter file (the quarantine that outlives the MQTT topic)."""
        if self._deadletter_file is None or not records:
            return
        self._deadletter_file.parent.mkdir(parents=True, exist_ok=True)
        with self._deadletter_file.open("ab") as fh:
            fh.write(b"\n".join(records) + b"\n")

    # -- state and health --------------------------------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        between_batches = getattr(self.consumer, "between_batches", None)
        if between_batches is not None:
            between_batches(self)  # e.g. partition hand-over: restores, checkpoints (on this thread)
        if self.alerting is not None and now - self._last_alert_tick >= 1.0:
            self._last_alert_tick = now  # timers: for-durations, hold-downs, repeats, escalation, digests
            self._write_alert_transitions(self.alerting.tick())
        if self._state_file and now - self._last_snapshot >= self.settings.detectors.snapshot_interval:
            self._complete(block=True)  # a snapshot must never be ahead of what was acknowledged
            self.save_state()
        if now - self._last_health >= 10.0:
            self._last_health = now
            self._write_health()
            self._flush_quiet_hours()
        if now - self._last_source_poll >= 1.0:
            self._last_source_poll = now
            self._poll_sources()
        if now - self._last_device_check >= 5.0:
            self._last_device_check = now
            lines, events = self.evaluator.check_devices(time.time_ns())
            if lines or events:
                self._pending.append(_Pending(self._pool.submit(self.writer.write, lines), [], events, 0, time.time_ns(),
                                              state=self._state_after(events)))

    def _flush_quiet_hours(self) -> None:
        """Close the hourly means of stations that have been quiet for an hour of event time."""
        lines, events = self.evaluator.flush_quiet()
        if lines or events:
            self._pending.append(_Pending(self._pool.submit(self.writer.write, lines), [], events, 0, time.time_ns(),
                                          state=self._state_after(events)))

    def _write_health(self) -> None:
        snap = self.stats.snapshot()
        fields = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in snap.items()}
        fields["pending_batches"] = len(self._pending)
        fields["inbox"] = len(self.consumer.inbox)
        if self.latencies_ns:
            fields["latency_p50_ms"] = float(np.percentile(np.fromiter(self.latencies_ns, np.int64), 50) / 1e6)
        line = encode_line("citywatch", {"client_id": self.settings.mqtt.client_id}, fields, time.time_ns())
        self._pending.append(_Pending(self._pool.submit(self.writer.write, [line]), [], [], 0, time.time_ns()))

    def save_state(self) -> None:
        if self._state_file is None:
            return
        self._write_state(self._state_arrays())

    def _stateful(self) -> dict:
        """Everything whose state outlives a restart: the evaluator's parts and the device sources'."""
        parts = dict(self.evaluator.stateful())
        if self.sources is not None:
            parts["__sources"] = self.sources
        return parts

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for name, part in self._stateful().items():
            arrays.update({f"{name}/{k}": np.array(v, copy=True) for k, v in part.snapshot().items()})
        return arrays

    def _state_after(self, events: list[AlertEvent]) -> dict[str, np.ndarray] | None:
        return self._state_arrays() if events and self._state_file else None

    def _write_state(self, arrays: dict[str, np.ndarray]) -> None:
        path = Path(self._state_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        self._last_snapshot = time.monotonic()

    def load_state(self) -> None:
        if self._state_file is None or not Path(self._state_file).exists():
            return
        with np.load(self._state_file, allow_pickle=False) as data:
            groups: dict[str, dict[str, np.ndarray]] = {}
            for key in data.files:
                group, _, name = key.partition("/")
                groups.setdefault(group, {})[name] = data[key]
        for name, part in self._stateful().items():
            if name in groups:
                part.restore(groups[name])
        self.log.info("detector state restored", file=str(self._state_file))


def _done() -> Future:
    f: Future = Future()
    f.set_result("written")
    return f
