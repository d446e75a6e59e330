"""The dispatcher: the `NotificationSink` that hands each notification to its recipient's channel.

`deliver()` never blocks the pipeline and never raises: it writes the notifications to an outbox
journal and queues them; one worker thread per channel sends them, so a slow mail server does not hold
up the MQTT screen or Slack. A failed send is retried with bounded exponential backoff (`retry.initial`
doubling up to `retry.max`, with jitter; a longer wait asked by the far end, such as HTTP 429
Retry-After, is honoured up to `retry.max_retry_after`), up to `retry.attempts` attempts; then, or at
once for an error retrying cannot fix (HTTP 4xx, SMTP 5xx, an unknown channel), the notification goes
to the dead-letter log, a JSONL file with the whole notification, the error, the attempts and when.

Idempotent by notification id: ids are deterministic per alert transition and recipient, and the ids of
delivered notifications are kept in a file, so the same notification handed in again - by a restarted
engine replaying its state, or twice in one run - is not sent again. The outbox journal makes the
queue survive a restart: at start, every notification journaled but neither delivered nor dead-lettered
is queued again. A crash between a send and the record of it can still repeat that one notification
(at least once, never silently lost).

Counters (in the engine's Stats): `notify_accepted`, `notify_delivered`, `notify_retries`,
`notify_dead_letters`, `notify_duplicates`, and `notify_delivered.<channel>`, `notify_failures.<channel>`.

Options (section `alerting.notify`)::

    notify:
      language: vi                     # vi | en: the default when a recipient names none
      template_dir: null               # a folder of templates overriding the built-in ones, file by file
      directory: notify                # under data_dir: outbox, delivered ids, dead letters
      deadletter_file: notify/deadletter.jsonl
      keep_delivered: 100000           # delivered ids remembered
      max_queued: 10000                # per channel; beyond it, dead letter "queue full"
      retry:
        attempts: 6
        initial: 2s
        max: 5m
        max_retry_after: 15m
      channels:                        # recipients name these as their channel
        mqtt: {type: mqtt, topic: "city/notifications/{recipient}"}
        email: {type: email, host: smtp.example.vn, port: 587, security: starttls,
                     sender: "citywatch <canhbao@example.vn>",
                     username_env: CITYWATCH_SMTP_USERNAME, password_env: CITYWATCH_SMTP_PASSWORD}
        slack: {type: webhook, format: slack, url_env: CITYWATCH_SLACK_WEBHOOK_URL}
        telegram: {type: webhook, format: telegram, url: "https://api.telegram.org/bot{token}/sendMessage",
                        token_env: CITYWATCH_TELEGRAM_BOT_TOKEN}
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import orjson
import paho.mqtt.client as paho
import structlog
from pydantic import Field

from citywatch.alerting.model import Alert, Notification, Recipient
from citywatch.config import Duration, MqttConfig, StrictModel
from citywatch.sinks.notify.base import Channel, DeliveryError
from citywatch.sinks.notify.email import EmailChannel, EmailChannelConfig
from citywatch.sinks.notify.mqtt_channel import MqttChannel, MqttChannelConfig
from citywatch.sinks.notify.render import Renderer, check_templates
from citywatch.sinks.notify.webhook import WebhookChannel, WebhookChannelConfig
from citywatch.stats import Stats

SAMPLE_CONFIG = """
notify:
  language: vi
  retry: {attempts: 6, initial: 2s, max: 5m}
  channels:
    mqtt: {type: mqtt, topic: "city/notifications/{recipient}"}
    email:
      type: email
      host: smtp.example.vn
      port: 587
      security: starttls
      sender: "citywatch <canhbao@example.vn>"
      username_env: CITYWATCH_SMTP_USERNAME
      password_env: CITYWATCH_SMTP_PASSWORD
    slack: {type: webhook, format: slack, url_env: CITYWATCH_SLACK_WEBHOOK_URL}
"""

ChannelConfig = Annotated[MqttChannelConfig | WebhookChannelConfig | EmailChannelConfig, Field(discriminator="type")]


class RetryConfig(StrictModel):
    attempts: int = Field(default=6, ge=1)
    initial: Duration = 2.0
    max: Duration = 300.0
    max_retry_after: Duration = 900.0
    jitter: float = Field(default=0.2, ge=0, le=1)  # +- this fraction of each wait

    def delay(self, attempt: int, asked: float | None = None, rng: random.Random | None = None) -> float:
        """Wait before attempt `attempt + 1`, after `attempt` failed ones (>= 1)."""
        base = min(self.max, self.initial * 2 ** (attempt - 1))
        base *= 1 + self.jitter * (2 * (rng or random).random() - 1)
        if asked is not None:
            base = max(base, min(asked, self.max_retry_after))
        return base


class NotifyConfig(StrictModel):
    language: Literal["vi", "en"] = "vi"
    template_dir: str | None = None
    directory: str = "notify"
    deadletter_file: str = "notify/deadletter.jsonl"
    keep_delivered: int = Field(default=100_000, ge=100)
    max_queued: int = Field(default=10_000, ge=1)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # names that recipients use as their `channel`; the default serves the default duty-officer recipient
    channels: dict[str, ChannelConfig] = Field(default_factory=lambda: {"mqtt": MqttChannelConfig()})


def build_channels(cfg: NotifyConfig, renderer: Renderer, mqtt_client: paho.Client | None = None,
                   mqtt: MqttConfig | None = None, env: Mapping[str, str] | None = None) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    for name, ch in cfg.channels.items():
        if isinstance(ch, MqttChannelConfig):
            channels[name] = MqttChannel(name, ch, renderer, client=mqtt_client, mqtt=mqtt)
        elif isinstance(ch, WebhookChannelConfig):
            channels[name] = WebhookChannel(name, ch, renderer, env=env)
        else:
            channels[name] = EmailChannel(name, ch, renderer, env=env)
    return channels


@dataclass
class _Job:
    due: float
    seq: int
    notification: Notification
    attempts: int = 0
    last_error: str = ""


class _Worker:
    """One channel's queue and its thread. Each recipient's notifications go out in the order they
    came (a "resolved" never overtakes the "firing" that is waiting for a retry); recipients do not
    wait for each other. The heap holds the head of every recipient's queue, by due time."""

    def __init__(self, dispatcher: "Dispatcher", channel: Channel) -> None:
        self.dispatcher = dispatcher
        self.channel = channel
        self.queues: dict[str, deque[_Job]] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.size = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"citywatch-notify-{channel.name}", daemon=True)

    def put(self, job: _Job) -> None:
        key = job.notification.recipient.name
        with self.cond:
            self.size += 1
            queue = self.queues.get(key)
            if queue:
                queue.append(job)
                return
            self.queues[key] = deque([job])
            heapq.heappush(self.heap, (job.due, job.seq, key))
            self.cond.notify()

    def __len__(self) -> int:
        return self.size

    def _run(self) -> None:
        d = self.dispatcher
        while True:
            with self.cond:
                while not d._stopping.is_set():
                    now = d.clock()
                    if self.heap and self.heap[0][0] <= now:
                        break
                    self.cond.wait(None if not self.heap else self.heap[0][0] - now)
                if d._stopping.is_set():
                    return
                _, _, key = heapq.heappop(self.heap)
                job = self.queues[key][0]
            retry_at: float | None = None
            try:
                retry_at = d._attempt(self, job)
            finally:
                with self.cond:
                    queue = self.queues[key]
                    if retry_at is not None:
                        job.due = retry_at
                        heapq.heappush(self.heap, (retry_at, next(d._seq), key))
                    else:
                        queue.popleft()
                        self.size -= 1
                        if queue:
                            heapq.heappush(self.heap, (max(queue[0].due, d.clock()), queue[0].seq, key))
                        else:
                            del self.queues[key]
                    self.cond.notify_all()


class Dispatcher:
    """Implements `citywatch.alerting.model.NotificationSink`."""

    def __init__(self, cfg: NotifyConfig, channels: Mapping[str, Channel], directory: str | Path,
                 deadletter_file: str | Path | None = None, stats: Stats | None = None, logger=None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.channels = dict(channels)
        self.stats = stats or Stats()
        self.log = logger or structlog.get_logger("citywatch.notify")
        self.clock = clock
        self._rng = rng or random.Random()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.outbox_path = self.directory / "outbox.jsonl"
        self.delivered_path = self.directory / "delivered.txt"
        self.deadletter_path = Path(deadletter_file) if deadletter_file else self.directory / "deadletter.jsonl"
        self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the id sets and the files
        self._delivered: dict[str, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._dead: set[str] = set()
        self._queued: dict[str, Notification] = {}  # accepted, not yet delivered nor dead-lettered
        self._outbox_lines = 0
        self._delivered_lines = 0
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._workers = {name: _Worker(self, ch) for name, ch in self.channels.items()}
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the delivered ids, start the channels and workers, queue what the outbox still holds."""
        pending = self._load()
        for ch in self.channels.values():
            ch.start()
        for w in self._workers.values():
            w.thread.start()
        self._started = True
        if pending:
            self.log.info("notifications pending from the last run", count=len(pending))
            self._enqueue(pending, journal=False)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (an attempt in progress finishes); what is still queued stays in the outbox."""
        self._stopping.set()
        for w in self._workers.values():
            with w.cond:
                w.cond.notify_all()
        for w in self._workers.values():
            if w.thread.is_alive():
                w.thread.join(timeout)
        for ch in self.channels.values():
            try:
                ch.close()
            except Exception as exc:  # closing must not stop the rest from closing
                self.log.warning("channel close failed", channel=ch.name, error=str(exc))

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or being sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.02)
        return self.queued() == 0

    def queued(self) -> int:
        return sum(len(w) for w in self._workers.values())

    def counters(self) -> dict[str, float]:
        return {k: v for k, v in self.stats.snapshot().items() if k.startswith("notify_")}

    def delivered(self, notification_id: str) -> bool:
        with self._lock:
            return notification_id in self._delivered

    # -- NotificationSink --------------------------------------------------------------------------
    def deliver(self, notifications: list[Notification]) -> None:
        try:
            self._enqueue(notifications, journal=True)
        except Exception as exc:  # the pipeline must never fail because of a notification
            self.stats.inc("notify_errors")
            self.log.error("notification dispatch failed", error=f"{type(exc).__name__}: {exc}")

    def _enqueue(self, notifications: list[Notification], journal: bool) -> None:
        accepted: list[tuple[_Worker, _Job]] = []
        lines: list[bytes] = []
        with self._lock:
            for n in notifications:
                if n.id in self._delivered or n.id in self._queued or n.id in self._dead:
                    self.stats.inc("notify_duplicates")
                    continue
                worker = self._workers.get(n.recipient.channel)
                if worker is None:
                    self._dead_letter_locked(n, 0, f"unknown channel {n.recipient.channel!r}")
                    continue
                if len(worker) >= self.cfg.max_queued:
                    self._dead_letter_locked(n, 0, f"queue of channel {worker.channel.name!r} full")
                    continue
                self._queued[n.id] = n
                accepted.append((worker, _Job(self.clock(), next(self._seq), n)))
                if journal:
                    lines.append(orjson.dumps(n.to_dict()) + b"\n")
            if lines:
                with self.outbox_path.open("ab") as f:
                    f.write(b"".join(lines))
                self._outbox_lines += len(lines)
                if self._outbox_lines > 1000 and self._outbox_lines > 4 * len(self._queued):
                    self._compact_outbox_locked(list(self._queued.values()))
        self.stats.inc("notify_accepted", len(accepted))
        for worker, job in accepted:
            worker.put(job)

    # -- one attempt -------------------------------------------------------------------------------
    def _attempt(self, worker: _Worker, job: _Job) -> float | None:
        """Send once. Returns when to try again, or None when the job is done (delivered or dead)."""
        n = job.notification
        job.attempts += 1
        try:
            worker.channel.send(n)
        except DeliveryError as exc:
            return self._failed(worker, job, str(exc), exc.retryable, exc.retry_after)
        except Exception as exc:  # a bug in a template or a channel: keep the notification, don't retry
            self.log.exception("notification channel error", channel=worker.channel.name, notification=n.id)
            return self._failed(worker, job, f"{type(exc).__name__}: {exc}", False, None)
        with self._lock:
            self._queued.pop(n.id, None)
            self._delivered[n.id] = None
            with self.delivered_path.open("a") as f:
                f.write(n.id + "\n")
            self._delivered_lines += 1
            self._forget_oldest_locked()
            if self._delivered_lines > 2 * self.cfg.keep_delivered:
                self._compact_delivered_locked()
        self.stats.inc("notify_delivered")
        self.stats.inc(f"notify_delivered.{worker.channel.name}")
        self.log.info("notification delivered", channel=worker.channel.name, recipient=n.recipient.name,
                      kind=n.kind, notification=n.id, attempts=job.attempts)
        return None

    def _failed(self, worker: _Worker, job: _Job, error: str, retryable: bool,
                retry_after: float | None) -> float | None:
        n = job.notification
        self.stats.inc(f"notify_failures.{worker.channel.name}")
        job.last_error = error
        if retryable and self._stopping.is_set():
            return None  # stays in the outbox: sent again after the restart
        if retryable and job.attempts < self.cfg.retry.attempts:
            wait = self.cfg.retry.delay(job.attempts, retry_after, self._rng)
            self.stats.inc("notify_retries")
            self.log.warning("notification failed, will retry", channel=worker.channel.name, notification=n.id,
                             attempt=job.attempts, retry_in=round(wait, 3), error=error)
            return self.clock() + wait
        with self._lock:
            self._queued.pop(n.id, None)
            self._dead_letter_locked(n, job.attempts, error)
        return None

    def _dead_letter_locked(self, n: Notification, attempts: int, error: str) -> None:
        self._dead.add(n.id)
        record = {"time": time.time_ns(), "notification_id": n.id, "channel": n.recipient.channel,
                  "recipient": n.recipient.name, "attempts": attempts, "error": error, "notification": n.to_dict()}
        with self.deadletter_path.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")
        self.stats.inc("notify_dead_letters")
        self.log.error("notification dead-lettered", channel=n.recipient.channel, recipient=n.recipient.name,
                       notification=n.id, attempts=attempts, error=error)

    # -- persistence -------------------------------------------------------------------------------
    def _forget_oldest_locked(self) -> None:
        excess = len(self._delivered) - self.cfg.keep_delivered
        if excess > 0:
            for old in list(itertools.islice(self._delivered, excess)):
                del self._delivered[old]

    def _load(self) -> list[Notification]:
        """Read the delivered and dead-lettered ids; compact the files; return the outbox's pending part."""
        with self._lock:
            if self.delivered_path.exists():
                for line in self.delivered_path.read_text().splitlines():
                    if line:
                        self._delivered[line] = None
                self._forget_oldest_locked()
                self._compact_delivered_locked()
            if self.deadletter_path.exists():
                for line in self.deadletter_path.read_bytes().splitlines():
                    try:
                        self._dead.add(orjson.loads(line)["notification_id"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
            pending: list[Notification] = []
            if self.outbox_path.exists():
                seen: set[str] = set()
                for line in self.outbox_path.read_bytes().splitlines():
                    try:
                        n = Notification.from_dict(orjson.loads(line))
                    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
                        self.stats.inc("notify_outbox_bad_lines")
                        self.log.warning("unreadable outbox line skipped", error=str(exc))
                        continue  # a line torn by a crash mid-write
                    if n.id in seen or n.id in self._delivered or n.id in self._dead:
                        continue
                    seen.add(n.id)
                    pending.append(n)
                self._compact_outbox_locked(pending)
            return pending

    def _compact_outbox_locked(self, pending: list[Notification]) -> None:
        _atomic_write(self.outbox_path, b"".join(orjson.dumps(n.to_dict()) + b"\n" for n in pending))
        self._outbox_lines = len(pending)

    def _compact_delivered_locked(self) -> None:
        _atomic_write(self.delivered_path, "".join(i + "\n" for i in self._delivered).encode())
        self._delivered_lines = len(self._delivered)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sample_notification() -> Notification:
    alert = Alert(key="sample|threshold:no2", scope="sensor", sensor="sample", area="sample", domain="air",
                  metric="no2", rule="threshold", severity="critical", state="firing", value=1.0, threshold=1.0,
                  reason="above_crit", started_ns=0, sensors=["sample", "sample-2"], panel_url="http://grafana/d/x")
    return Notification(id="sample", kind="firing", recipient=Recipient("sample", "sample", "0"), alerts=[alert],
                        created_ns=0)


def build_dispatcher(cfg: NotifyConfig, data_dir: str | Path, *, units=None, mqtt_client: paho.Client | None = None,
                     mqtt: MqttConfig | None = None, stats: Stats | None = None, logger=None,
                     env: Mapping[str, str] | None = None) -> Dispatcher:
    """The dispatcher with its renderer and channels, from the config; paths are under `data_dir`."""
    data_dir = Path(data_dir)
    renderer = Renderer(cfg.template_dir, units=units, default_language=cfg.language)
    check_templates(renderer, _sample_notification())
    channels = build_channels(cfg, renderer, mqtt_client=mqtt_client, mqtt=mqtt, env=env)
    return Dispatcher(cfg, channels, data_dir / cfg.directory, data_dir / cfg.deadletter_file, stats=stats,
                      logger=logger)


__all__ = ["ChannelConfig", "Dispatcher", "NotifyConfig", "RetryConfig", "build_channels", "build_dispatcher"]
