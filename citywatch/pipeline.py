"""The engine: MQTT micro-batches -> validation -> detectors -> alerts -> InfluxDB (or the disk spool).

One pipeline thread turns inbound messages into columnar micro-batches (flushed by size or age),
runs every detector on the whole batch, and hands the encoded points to a small pool of writer
threads. Acknowledgements go back to the broker strictly in arrival order and only once a batch's
points are in InfluxDB or in the spool: that is the at-least-once guarantee. Alerts of a batch are
published after its points are stored, so an alert never refers to a reading that could be lost.

Event time: each series has a watermark, the newest event time it has processed. Readings at or
before it are LATE (a resend, or a backlog older than what was seen): they are stored - data is
never dropped for being late - but they do not move detector state or raise alerts. With
`detectors.allowed_lateness` > 0, readings wait in a reorder buffer (`citywatch.reorder`) before
the detectors, so that readings arriving out of order within that lateness are processed in order.
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

from citywatch.air_indices import HOUR_NS, AirIndices
from citywatch.alerts import AlertEvent, AlertTracker
from citywatch.fire_index import FireDanger
from citywatch.traffic_index import TrafficLos
from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, FLAG_TS_FROM_ARRIVAL, ReadingBatch
from citywatch.config import Settings
from citywatch.detectors import build_detectors
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NAMES, Detector, DetectorOutput, SeriesState
from citywatch.ingest.mqtt import InboundMessage, MqttConsumer
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Rejection, Validator
from citywatch.registry import Registry, SeriesIndex
from citywatch.reorder import ReorderBuffer
from citywatch.sinks.influxdb import InfluxWriter
from citywatch.sinks.line_protocol import encode_line, escape_tag, series_prefix
from citywatch.sinks.spool import Spool
from citywatch.stats import RateLimitedLog, Stats

INT64_MIN = np.iinfo(np.int64).min


@dataclass
class _Pending:
    """A batch on its way to storage: acknowledged and announced when `future` is done."""

    future: Future
    messages: list[InboundMessage]
    alerts: list[AlertEvent]
    readings: int
    first_arrival_ns: int
    event_ts: np.ndarray | None = None  # kept only when a latency probe is installed


class Watermarks(SeriesState):
    """Newest processed event time per series."""

    state_fields = {"ts": (np.int64, INT64_MIN)}

    def flag(self, batch: ReadingBatch) -> None:
        """Flag LATE and DUPLICATE readings of a sorted batch."""
        self._grow()
        if len(batch) == 0:
            return
        same_as_prev = np.zeros(len(batch), bool)
        same_as_prev[1:] = (batch.series[1:] == batch.series[:-1]) & (batch.ts[1:] == batch.ts[:-1])
        batch.flags[same_as_prev] |= FLAG_DUPLICATE
        batch.flags[batch.ts <= self.state["ts"][batch.series]] |= FLAG_LATE

    def advance(self, batch: ReadingBatch) -> None:
        """The readings of a sorted batch have been processed: move the watermarks past them."""
        self._grow()
        if len(batch) == 0:
            return
        ts = self.state["ts"]
        last = batch.is_last
        s = batch.series[last]
        ts[s] = np.maximum(ts[s], batch.ts[last])

    def mark(self, batch: ReadingBatch) -> None:
        self.flag(batch)
        self.advance(batch)


class PointEncoder:
    """Line protocol for readings, scores and alerts, with the per-series prefix cached."""

    def __init__(self, series: SeriesIndex) -> None:
        self.series = series
        self._reading_prefix: list[str] = []
        self._score_prefix: list[str] = []

    def _grow(self) -> None:
        s = self.series
        for sid in range(len(self._reading_prefix), len(s)):
            tags = {"sensor": s.sensor_ids[sid], "area": s.areas[sid]}
            self._reading_prefix.append(series_prefix(s.domains[sid], tags) + " " + escape_tag(s.metrics[sid]) + "=")
            self._score_prefix.append(
                series_prefix("scores", {**tags, "domain": s.domains[sid], "metric": s.metrics[sid]}) + " ")

    def readings(self, batch: ReadingBatch) -> list[str]:
        self._grow()
        prefix = self._reading_prefix
        return [f"{prefix[s]}{v!r} {t}" for s, v, t in zip(batch.series.tolist(), batch.value.tolist(), batch.ts.tolist())]

    def scores(self, batch: ReadingBatch, names: list[str], outputs: list[DetectorOutput], mode: str) -> list[str]:
        if mode == "none" or not outputs:
            return []
        self._grow()
        levels = np.stack([o.level for o in outputs])
        evaluated_by = levels >= 0
        evaluated = evaluated_by.any(axis=0)
        level = levels.max(axis=0)
        score = np.where(evaluated_by, np.nan_to_num(np.stack([o.score for o in outputs])), 0.0).max(axis=0)
        keep = evaluated if mode == "all" else evaluated & (level > 0)
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            return []
        prefix = self._score_prefix
        per_det = [
            [f",{n}_level={lv}i" if lv >= 0 else "" for lv in o.level[rows].tolist()] for n, o in zip(names, outputs)
        ]
        # a reading that came without a timestamp is marked, so that Grafana can show it
        per_det.append([",ts_from_arrival=true" if f else "" for f in (batch.flags[rows] & FLAG_TS_FROM_ARRIVAL).tolist()])
        extra = ["".join(parts) for parts in zip(*per_det)]
        return [
            f"{prefix[s]}score={sc!r},level={lv}i{ex} {t}"
            for s, sc, lv, ex, t in zip(batch.series[rows].tolist(), score[rows].tolist(), level[rows].tolist(),
                                        extra, batch.ts[rows].tolist())
        ]

    def anomalies(self, batch: ReadingBatch, detectors: list[Detector], outputs: list[DetectorOutput]) -> list[str]:
        """Why a reading was flagged: one point per (reading, detector) whose level is above ok."""
        self._grow()
        s = self.series
        lines: list[str] = []
        for det, out in zip(detectors, outputs):
            rows = np.flatnonzero(out.level > 0)
            for r in rows.tolist():
                sid = int(batch.series[r])
                tags = {"sensor": s.sensor_ids[sid], "area": s.areas[sid], "domain": s.domains[sid],
                        "metric": s.metrics[sid], "detector": det.name, "reason": det.reasons[int(out.reason[r])]}
                fields: dict[str, object] = {"score": float(np.nan_to_num(out.score[r])), "level": int(out.level[r]),
                                             "value": float(batch.value[r])}
                if not np.isnan(out.threshold[r]):
                    fields["threshold"] = float(out.threshold[r])
                lines.append(encode_line("anomalies", tags, fields, int(batch.ts[r])))
        return lines

    @staticmethod
    def alert(a: AlertEvent) -> str:
        fields: dict[str, object] = {"value": a.value, "reason": a.reason, "previous_level": a.previous_level,
                                     "level_code": {v: k for k, v in LEVEL_NAMES.items()}[a.level]}
        if a.threshold is not None:
            fields["threshold"] = a.threshold
        if a.score is not None:
            fields["score"] = a.score
        tags = {"sensor": a.sensor, "domain": a.domain, "area": a.area, "metric": a.metric,
                "detector": a.detector, "level": a.level}
        return encode_line("alerts", tags, fields, a.ts_ns)


class Engine:
    def __init__(self, settings: Settings, registry: Registry | None = None, logger=None) -> None:
        self.settings = settings
        self.log = logger or structlog.get_logger("citywatch.engine")
        self.registry = registry or Registry.load(settings.resolve(settings.registry))
        self.stats = Stats()
        self.series = SeriesIndex(self.registry)
        self.series.add_registry()
        self.topic = TopicPattern(settings.mqtt.topic)
        self.alert_topic = TopicPattern(settings.mqtt.alert_topic)
        self.deadletter_topic = TopicPattern(settings.mqtt.deadletter_topic)
        self.validator = Validator(self.registry, self.series, settings.validation, self.topic, self.stats)
        self.detectors = build_detectors(self.series, settings.detectors)
        self.alerts = AlertTracker(self.series, self.detectors)
        self.watermarks = Watermarks(self.series)
        lateness_ns = int(settings.detectors.allowed_lateness * 1e9)
        self.reorder = ReorderBuffer(lateness_ns) if lateness_ns > 0 else None
        self.air_indices = AirIndices(self.series) if settings.indices.air else None
        ix = settings.indices
        self.fire = FireDanger(self.series, ix.fire_rain_reset_mm, ix.fire_level_bounds) if ix.fire else None
        self.traffic = TrafficLos(self.series, ix.traffic_free_flow_kmh) if ix.traffic else None
        # Index stages: process(batch) and process_quiet(event time) -> (points, alerts).
        self.index_stages = [s for s in (self.air_indices, self.fire, self.traffic) if s is not None]
        self.encoder = PointEncoder(self.series)
        self.spool = Spool(settings.data_path(settings.spool.directory), settings.spool.max_bytes,
                           settings.spool.when_full, settings.spool.fsync, self.stats)
        self.writer = InfluxWriter(settings.influxdb, settings.batching, self.spool, self.stats,
                                   logger=self.log, on_rejected=self._on_rejected_points,
                                   replay_interval=settings.spool.replay_interval)
        self.consumer = MqttConsumer(settings.mqtt, self.topic.subscription, self.stats, logger=self.log)
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
        self.latencies_ns: deque[int] = deque(maxlen=10_000)  # arrival -> stored, per batch
        # Benchmarks: called with (event times of a stored batch, time it was stored), both in ns.
        self.latency_probe: Callable[[np.ndarray, int], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.load_state()
        self.writer.ensure_database()
        self.writer.start()
        self.consumer.start()
        self._thread = threading.Thread(target=self._run, name="citywatch-pipeline", daemon=True)
        self._thread.start()
        self.log.info("engine started", sensors=len(self.registry.sensors), series=len(self.series),
                      subscription=self.topic.subscription, influx=self.settings.influxdb.url)

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything: process what arrived, store it, acknowledge it, save state, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
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
        self.watermarks.flag(batch)
        lines = self.encoder.readings(batch)
        self.stats.inc("readings_late", int(((batch.flags & FLAG_LATE) != 0).sum()))
        ready = batch if self.reorder is None else self.reorder.push(batch, time.time_ns())
        evaluated_lines, events = self._evaluate(ready)
        lines += evaluated_lines
        self.stats.inc("batches")
        future = self._pool.submit(self.writer.write, lines) if lines else _done()
        future.add_done_callback(lambda _: self.consumer.wake.set())  # acknowledge promptly
        self._pending.append(_Pending(future, messages, events, len(batch), messages[0].arrival_ns,
                                      batch.ts if self.latency_probe else None))
        # Bounded concurrency: never more batches in flight than writer threads (plus one being built).
        while len(self._pending) > self.settings.batching.concurrent_writes:
            self._complete_one()

    def _evaluate(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        """Detectors, alerts and index stages over readings due for processing (sorted, in event-time order)."""
        self.watermarks.advance(batch)
        outputs = self._detect(batch)
        events = self.alerts.update(batch, outputs)
        lines = self.encoder.scores(batch, [d.name for d in self.detectors], outputs, self.settings.detectors.write_scores)
        lines += self.encoder.anomalies(batch, self.detectors, outputs)
        for stage in self.index_stages:
            stage_lines, stage_events = stage.process(batch)
            lines += stage_lines
            events += stage_events
            self.stats.inc("index_points", len(stage_lines))
        if self.settings.alerts.influxdb:
            lines += [self.encoder.alert(a) for a in events]
        return lines, events

    def _release_held(self, drain: bool = False) -> None:
        """Process readings of the reorder buffer whose wait is over (all of them when draining)."""
        if self.reorder is None or len(self.reorder) == 0:
            return
        ready = self.reorder.drain() if drain else self.reorder.release_due(time.time_ns())
        if len(ready) == 0:
            return
        try:
            lines, events = self._evaluate(ready)
        except Exception:
            # The readings are stored already; only their evaluation is lost, as for a quarantined batch.
            self.log.exception("evaluation of held readings failed", readings=len(ready))
            self.stats.inc("batches_quarantined")
            return
        if lines or events:
            future = self._pool.submit(self.writer.write, lines) if lines else _done()
            self._pending.append(_Pending(future, [], events, 0, time.time_ns()))

    def _detect(self, batch: ReadingBatch) -> list[DetectorOutput]:
        outputs: list[DetectorOutput] = []
        skip: np.ndarray | None = None
        for det in self.detectors:
            out = det.process(batch, skip=skip)
            outputs.append(out)
            if det.name == "physical_range":
                skip = out.level == LEVEL_CRITICAL
                self.stats.inc("readings_out_of_range", int(skip.sum()))
        return outputs

    def _complete_one(self) -> None:
        p = self._pending.popleft()
        p.future.result()  # the writer spools rather than fail; an exception here is a bug
        if self.settings.alerts.mqtt:
            for a in p.alerts:
                self.consumer.publish(self.alert_topic.format(domain=a.domain, sensor=a.sensor), a.to_json(), qos=1)
        self.stats.inc("alerts", len(p.alerts))
        self.consumer.ack(p.messages)
        now = time.time_ns()
        self.stats.inc("messages_acked", len(p.messages))
        self.stats.inc("readings_stored", p.readings)
        if p.messages:
            self.latencies_ns.append(now - p.first_arrival_ns)
        if self.latency_probe is not None and p.event_ts is not None:
            self.latency_probe(p.event_ts, now)

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
        if self._state_file and now - self._last_snapshot >= self.settings.detectors.snapshot_interval:
            self._complete(block=True)  # a snapshot must never be ahead of what was acknowledged
            self.save_state()
        if now - self._last_health >= 10.0:
            self._last_health = now
            self._write_health()
            self._flush_quiet_hours()

    def _flush_quiet_hours(self) -> None:
        """Close the hourly means of stations that have been quiet for an hour of event time."""
        newest = int(self.watermarks.state["ts"][: len(self.series)].max(initial=INT64_MIN))
        if newest == INT64_MIN:
            return
        lines: list[str] = []
        events: list[AlertEvent] = []
        for stage in self.index_stages:
            stage_lines, stage_events = stage.process_quiet(newest - HOUR_NS)
            lines += stage_lines
            events += stage_events
        if lines or events:
            lines += [self.encoder.alert(a) for a in events] if self.settings.alerts.influxdb else []
            self._pending.append(_Pending(self._pool.submit(self.writer.write, lines), [], events, 0, time.time_ns()))

    def _write_health(self) -> None:
        snap = self.stats.snapshot()
        fields = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in snap.items()}
        fields["pending_batches"] = len(self._pending)
        fields["inbox"] = len(self.consumer.inbox)
        if self.latencies_ns:
            fields["latency_p50_ms"] = float(np.percentile(np.fromiter(self.latencies_ns, np.int64), 50) / 1e6)
        line = encode_line("citywatch", {"client_id": self.settings.mqtt.client_id}, fields, time.time_ns())
        self._pending.append(_Pending(self._pool.submit(self.writer.write, [line]), [], [], 0, time.time_ns()))

    def _stateful(self) -> dict[str, SeriesState | AirIndices | FireDanger | TrafficLos]:
        """Everything whose per-series state survives a restart, by snapshot prefix."""
        parts = {**{d.name: d for d in self.detectors}, "__alerts": self.alerts, "__watermarks": self.watermarks}
        if self.air_indices is not None:
            parts["__air_indices"] = self.air_indices
        if self.fire is not None:
            parts["__fire"] = self.fire
        if self.traffic is not None:
            parts["__traffic"] = self.traffic
        return parts

    def save_state(self) -> None:
        if self._state_file is None:
            return
        arrays: dict[str, np.ndarray] = {}
        for name, part in self._stateful().items():
            arrays.update({f"{name}/{k}": v for k, v in part.snapshot().items()})
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
