"""InfluxDB output: line protocol over the v1-compatible HTTP API, with retries, bad-point isolation and a
durable spool for outages.

Only the v1 write API is used (`POST /write?db=...&rp=...&precision=ns`, `POST /query`, `GET /ping`), which
InfluxDB 1.x serves natively and InfluxDB 2.x and 3.x serve as their compatibility API; the same settings
therefore work against all three (on 2.x the database/retention policy pair must map to a bucket, see
"DBRP mapping" in the 2.x docs; 3.x maps the database name to a database of the same name).

Configuration
-------------

The `influxdb:`, `batching:` and `spool:` sections of `config/citywatch.yaml` (defaults shown)::

    influxdb:
      url: http://127.0.0.1:8086        # InfluxDB 1.x, or the v1-compatible API of 2.x / 3.x
      database: citywatch               # on 2.x/3.x: the bucket / database name
      retention_policy: null
      create_database: true             # CREATE DATABASE at start-up when allowed
      timeout: 10s
      gzip: true
      verify_tls: true
      ca_file: null

    batching:
      write_batch_points: 5000          # points per HTTP write
      concurrent_writes: 2              # writes in flight
      write_retries: 3                  # on 429 / 5xx / timeouts, then spool
      retry_backoff: 200ms
      retry_backoff_max: 5s

    spool:
      directory: spool                  # under data_dir
      max_bytes: 1073741824             # 1 GiB
      when_full: block                  # block (stop acknowledging MQTT) | drop_oldest (counted)
      fsync: true
      replay_interval: 1s

Durations accept a number of seconds or a string such as `500ms`, `30s`, `5m`.

`influxdb:`

* `url` -- base URL of the server, `http://` or `https://`. A path prefix (reverse proxy) is kept:
  `https://proxy/influx` writes to `https://proxy/influx/write`. Env: `CITYWATCH_INFLUX_URL`.
* `database` -- the `db` parameter of every write. On 2.x the bucket mapped to it, on 3.x the database.
  Env: `CITYWATCH_INFLUX_DB`.
* `retention_policy` -- the `rp` parameter; `null` writes to the database's default retention policy.
  It must already exist (it is not created).
* `create_database` -- run `CREATE DATABASE "<database>"` at start-up, and again if a write answers
  404 "database not found". Harmless when the database exists. If the server refuses (no admin rights,
  2.x/3.x which do not support it over this API) it is logged and writes go ahead.
* `timeout` -- per HTTP request (connect, send, wait for the answer). A timed-out write counts as a
  failed attempt and is retried.
* `gzip` -- compress request bodies (`Content-Encoding: gzip`, level 1). Line protocol compresses about
  10:1, usually worth it beyond the loopback.
* `verify_tls` -- verify the server certificate for `https://` URLs. `false` disables verification.
* `ca_file` -- PEM file of the CA(s) to trust instead of the system store (private CAs).
* credentials come only from the environment, never from the file:
  `CITYWATCH_INFLUX_TOKEN` sends `Authorization: Token <token>` (2.x: an API token; 3.x: a database
  token; 1.x with auth: `username:password`); otherwise `CITYWATCH_INFLUX_USERNAME` /
  `CITYWATCH_INFLUX_PASSWORD` are sent as HTTP basic auth. The token wins when both are set.

`batching:` (the parts used here)

* `write_batch_points` -- most points in one HTTP request; longer `write()` calls are split.
* `concurrent_writes` -- how many threads may call `write()` at once; the connection pool is sized for it
  (plus the replay thread).
* `write_retries` -- extra attempts for a request answered 408, 429 or 5xx, or failing with a timeout or
  connection error. When they are exhausted the points go to the spool and the writer is *down*.
* `retry_backoff`, `retry_backoff_max` -- exponential backoff between attempts: `retry_backoff`, then
  doubled each time, at most `retry_backoff_max`. A `Retry-After` header is honoured: a longer wait than
  the backoff is used as is; one longer than `retry_backoff_max` sends the points to the spool at once and
  delays the replay until then.

`spool:` (see `citywatch.sinks.spool`)

* `directory` -- where segments are kept (relative to `data_dir`). One engine per directory.
* `max_bytes` -- size limit of the spool (uncompressed line protocol).
* `when_full` -- `block`: writes wait for the replay to free space, so the engine stops acknowledging MQTT
  messages and the broker keeps them; `drop_oldest`: the oldest segments are deleted and counted in
  `spool_dropped_points`.
* `fsync` -- fsync every segment and the directory, so a power cut cannot lose spooled points. Costs a
  disk flush per spooled batch, only while InfluxDB is unreachable.
* `replay_interval` -- pause between replay attempts while InfluxDB does not answer (pass it to
  `InfluxWriter(..., replay_interval=...)`).

Behaviour
---------

* Healthy: `write()` posts the points directly (`concurrent_writes` requests in flight at most).
* Outage: after the retries, points are appended to the spool and the writer is *down*: later writes go
  straight to the spool (in order) until the replay thread has drained it. The replay thread probes
  `GET /ping` every `replay_interval`, then posts the spooled segments oldest first, removing each one
  only after InfluxDB accepted it. Nothing is lost on `close()` or a crash: what was not sent stays in the
  spool for the next start. A segment may be sent twice after a crash; InfluxDB overwrites a point with the
  same series and timestamp, so that is harmless.
* Bad points: a 400, 413 or 422 answer (unparsable line, field type conflict, value out of range, body
  too large) means some points cannot be stored. The request is split in halves, recursively, until the bad
  lines are isolated; the good ones are written, the bad ones counted in `influx_rejected_points`, logged
  (rate-limited) and passed to `on_rejected(lines, error)`. (InfluxDB 1.x answers 400 "partial write"
  after storing the good lines already; rewriting them is harmless for the same reason as above.)
* Wrong credentials or a missing database/bucket (401, 403, 404 and other 4xx) are *not* bad points: they
  are logged as errors and the points are spooled until the configuration or the server is fixed.

Stats: counters `influx_points_written`, `influx_writes` (accepted requests), `influx_write_errors`
(failed attempts of any kind), `influx_retries`, `influx_rejected_points`, `spooled_points`,
`replayed_points`; gauge `influx_up` (1 while writes succeed, 0 while down).
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import httpx
import structlog

from citywatch.config import BatchingConfig, InfluxConfig
from citywatch.sinks.http import influx_client_options, parse_retry_after
from citywatch.sinks.line_protocol import split_lines
from citywatch.sinks.spool import Spool
from citywatch.stats import RateLimitedLog, Stats

_BAD_POINTS = frozenset({400, 413, 422})
_RETRYABLE = frozenset({408, 429})
_LOG_EVERY = 10.0

RejectedCallback = Callable[[list[str], str], None]


@dataclass(slots=True)
class _Result:
    status: str  # "ok" | "bad" | "unavailable"
    error: str = ""
    retry_after: float | None = None


_OK = _Result("ok")


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return f"{response.status_code}: {body['error']}"
        if isinstance(body, dict) and body.get("message"):  # 2.x / 3.x style
            return f"{response.status_code}: {body['message']}"
    except ValueError:
        pass
    text = response.text.strip()
    return f"{response.status_code}: {text[:500]}" if text else f"HTTP {response.status_code}"


class InfluxWriter:
    """Writes line protocol to InfluxDB; see the module documentation for the behaviour and options."""

    def __init__(
        self,
        cfg: InfluxConfig,
        batching: BatchingConfig,
        spool: Spool,
        stats: Stats,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        *,
        on_rejected: RejectedCallback | None = None,
        replay_interval: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.batching = batching
        self.spool = spool
        self.stats = stats
        self.on_rejected = on_rejected
        self.replay_interval = float(replay_interval)
        self._log = logger or structlog.get_logger("citywatch.sinks.influxdb")
        self._rate_log = RateLimitedLog(self._log, _LOG_EVERY)
        self._loud_last: dict[str, float] = {}
        self._state_lock = threading.Lock()
        self._down = False
        self._not_before = 0.0  # monotonic time before which the replay thread must not write (Retry-After)
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

        self._params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            self._params["rp"] = cfg.retention_policy
        pool = batching.concurrent_writes + 2  # writers, the replay thread, ensure_database
        self._client = httpx.Client(**influx_client_options(cfg, "citywatch"),
                                    limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))

    # -- state ---------------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self._down

    def _mark_up(self) -> None:
        if self._down:
            with self._state_lock:
                was_down, self._down = self._down, False
            if was_down:
                self._log.info("influxdb reachable again", url=self.cfg.url, spooled_points=self.spool.points)
        self.stats.set("influx_up", 1)

    def _mark_down(self, reason: str) -> None:
        with self._state_lock:
            was_down, self._down = self._down, True
        self.stats.set("influx_up", 0)
        if not was_down:
            self._log.warning("influxdb unavailable: spooling points", url=self.cfg.url, error=reason)

    def _loud(self, key: str, event: str, **kw) -> None:
        now = time.monotonic()
        last = self._loud_last.get(key)
        if last is None or now - last >= _LOG_EVERY:
            self._loud_last[key] = now
            self._log.error(event, **kw)

    # -- HTTP ----------------------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the server answers `GET /ping` (any non-5xx answer: 3.x may want auth for it)."""
        try:
            return self._client.get("/ping").status_code < 500
        except (httpx.HTTPError, RuntimeError):
            return False

    def ensure_database(self) -> bool:
        """`CREATE DATABASE` the configured database. False (and a log line) when not allowed or
        unreachable; never raises."""
        q = f"CREATE DATABASE {_quote_identifier(self.cfg.database)}"
        try:
            r = self._client.post("/query", data={"q": q})
        except (httpx.HTTPError, RuntimeError) as exc:
            self._log.warning("cannot create database: influxdb unreachable", url=self.cfg.url,
                              database=self.cfg.database, error=str(exc) or type(exc).__name__)
            return False
        error = None
        if r.status_code != 200:
            error = _error_text(r)
        else:
            try:
                results = r.json().get("results", [])
                error = next((res["error"] for res in results if isinstance(res, dict) and res.get("error")), None)
            except (ValueError, AttributeError):
                error = f"unexpected answer: {r.text[:200]}"
        if error:
            self._log.warning("cannot create database (create it yourself or set influxdb.create_database: false)",
                              url=self.cfg.url, database=self.cfg.database, error=error)
            return False
        self._log.info("database ready", url=self.cfg.url, database=self.cfg.database)
        return True

    def _post(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return self._client.post("/write", params=self._params, content=body, headers=headers)

    def _send(self, body: bytes, n_points: int, retries: int, kind: str) -> _Result:
        """One request, retried on 408/429/5xx/timeouts/connection errors."""
        attempt = 0
        created = False
        while True:
            retry_after = None
            try:
                r = self._post(body)
            except httpx.TimeoutException as exc:
                error = f"timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                error = f"connection error: {str(exc) or type(exc).__name__}"
            except RuntimeError as exc:  # the client was closed under us (close() during a write)
                if not self._closed:
                    raise
                self.stats.inc("influx_write_errors")
                return _Result("unavailable", f"writer closed: {exc}")
            else:
                status = r.status_code
                if 200 <= status < 300:
                    self.stats.inc("influx_writes")
                    self.stats.inc("influx_points_written", n_points)
                    self._mark_up()
                    return _OK
                error = _error_text(r)
                if status in _BAD_POINTS:
                    self.stats.inc("influx_write_errors")
                    return _Result("bad", error)
                if status == 404 and "database not found" in error and self.cfg.create_database and not created:
                    created = True
                    if self.ensure_database():
                        continue
                if status in (401, 403) or (status < 500 and status not in _RETRYABLE):
                    self.stats.inc("influx_write_errors")
                    what = "the credentials" if status in (401, 403) else "the write"
                    self._loud(f"http{status}", f"influxdb refused {what}: points are spooled until this is fixed",
                               url=self.cfg.url, database=self.cfg.database, kind=kind, error=error)
                    return _Result("unavailable", error)
                retry_after = parse_retry_after(r.headers.get("Retry-After"))
            self.stats.inc("influx_write_errors")
            if attempt >= retries or self._closed:
                return _Result("unavailable", error, retry_after)
            delay = min(self.batching.retry_backoff * (2 ** attempt), self.batching.retry_backoff_max)
            if retry_after is not None:
                if retry_after > self.batching.retry_backoff_max:
                    return _Result("unavailable", error, retry_after)
                delay = max(delay, retry_after)
            attempt += 1
            self.stats.inc("influx_retries")
            self._rate_log.warning("retry", "influxdb write failed, retrying", url=self.cfg.url, kind=kind,
                                   error=error, attempt=attempt, retries=retries, delay=round(delay, 3))
            if self._stop.wait(delay) and self._closed:
                return _Result("unavailable", error, retry_after)

    def _deliver(self, lines: Sequence[str] | Sequence[bytes] | None, body: bytes | None, n_points: int,
                 retries: int, kind: str) -> list | None:
        """Write `lines` (or the ready `body` whose lines are split only if needed), isolating bad points.

        Returns None when everything was written or rejected as bad, else the lines that could not be
        sent because the server is unavailable (the caller spools them)."""
        if body is None:
            body = _join(lines)
        result = self._send(body, n_points, retries, kind)
        if result.status == "ok":
            return None
        if result.status == "unavailable":
            self._note_unavailable(result)
            return list(lines) if lines is not None else [body]
        if lines is None:
            lines = split_lines(body)
            n_points = len(lines)
        if n_points <= 1:
            self._reject(list(lines), result.error, kind)
            return None
        mid = n_points // 2
        left, right = lines[:mid], lines[mid:]
        unsent = self._deliver(left, None, len(left), retries, kind)
        if unsent is not None:
            return list(unsent) + list(right)
        return self._deliver(right, None, len(right), retries, kind)

    def _note_unavailable(self, result: _Result) -> None:
        if result.retry_after:
            self._not_before = max(self._not_before, time.monotonic() + result.retry_after)

    def _reject(self, lines: list, error: str, kind: str) -> None:
        text = [ln.decode("utf-8", "replace") if isinstance(ln, bytes) else ln for ln in lines]
        if not text:
            return
        self.stats.inc("influx_rejected_points", len(text))
        self._rate_log.warning("rejected", "influxdb rejected points", kind=kind, count=len(text), error=error,
                               line=text[0][:300])
        if self.on_rejected is not None:
            try:
                self.on_rejected(text, error)
            except Exception:
                self._log.exception("on_rejected callback failed")

    # -- writing ---------------------------------------------------------------------------------------

    def write(self, lines: list[str], kind: str = "readings") -> str:
        """Write line-protocol lines (without newlines between them). Thread-safe.

        Returns "written" when InfluxDB has them (or rejected them as bad points), "spooled" when some or
        all went to the spool. Raises only if the spool cannot take them (`SpoolClosed`, or
        `TimeoutError`), in which case those points are not stored anywhere."""
        if not lines:
            return "written"
        size = self.batching.write_batch_points
        outcome = "written"
        for start in range(0, len(lines), size):
            chunk = lines[start:start + size]
            if self._down or self._closed or len(self.spool):
                self._spool(chunk, kind)
                outcome = "spooled"
                continue
            unsent = self._deliver(chunk, None, len(chunk), self.batching.write_retries, kind)
            if unsent is not None:
                self._mark_down(f"{len(unsent)} points not written")
                self._spool(unsent, kind)
                outcome = "spooled"
        return outcome

    def _spool(self, lines: Sequence[str], kind: str) -> None:
        self.spool.append(_join(lines), len(lines))
        self.stats.inc("spooled_points", len(lines))
        self._wake.set()

    # -- replay ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the replay thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._closed:
            raise RuntimeError("InfluxWriter is closed")
        self.stats.set("influx_up", 0 if self._down else 1)
        self._thread = threading.Thread(target=self._replay_loop, name="citywatch-influx-replay", daemon=True)
        self._thread.start()

    def _replay_loop(self) -> None:
        interval = self.replay_interval
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self._not_before - time.monotonic()
                if wait > 0:
                    self._stop.wait(min(wait, interval))
                    continue
                if self._replay_once():
                    continue
            except Exception:
                self._log.exception("influxdb replay failed")
                self._stop.wait(interval)
                continue
            if self._down:
                self._stop.wait(interval)
            else:
                self._wake.wait(interval)

    def _replay_once(self) -> bool:
        """One replay step. True when it made progress and the loop should go on at once."""
        if self._down and not self.ping():
            self.stats.set("influx_up", 0)
            return False
        segment = self.spool.oldest()
        if segment is None:
            if self._down:
                self._mark_up()
            return False
        seg_id, payload, n_points = segment
        unsent = self._deliver(None, payload, n_points, 0, "replay")
        if unsent is not None:
            # The segment stays in the spool (whole: lines already written are overwritten when replayed).
            self._mark_down("replay failed")
            return False
        self.spool.remove(seg_id)
        self.stats.inc("replayed_points", n_points)
        if not len(self.spool):
            self._log.info("spool drained", url=self.cfg.url)
        return not self._stop.is_set()

    def flush(self, timeout: float) -> bool:
        """Wait until the spool is empty (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while len(self.spool) or self._down:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the replay thread and close the HTTP client. Unsent points stay in the spool."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._log.warning("influxdb replay thread still busy at close; its segment stays spooled")
        self._client.close()

    def __enter__(self) -> "InfluxWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _join(lines) -> bytes:
    if not lines:
        return b""
    if isinstance(lines[0], bytes):
        return b"\n".join(lines)
    return "\n".join(lines).encode("utf-8")
