"""InfluxWriter against the real influxd (plus a tiny scripted HTTP front for 429/5xx/401 handling)."""

from __future__ import annotations

import base64
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import SecretStr

from citywatch.config import BatchingConfig, InfluxConfig
from citywatch.services import InfluxDB, free_port
from citywatch.sinks.influxdb import InfluxWriter
from citywatch.sinks.line_protocol import encode_line
from citywatch.sinks.spool import Spool
from citywatch.stats import Stats

T0 = 1_700_000_000_123_456_789


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def rows(influx: InfluxDB, db: str, q: str) -> list[dict]:
    out = []
    for res in influx.query(q, db=db).get("results", []):
        assert "error" not in res, res
        for s in res.get("series", []):
            out += [dict(zip(s["columns"], v)) for v in s["values"]]
    return out


def count(influx: InfluxDB, db: str, measurement: str, field: str) -> int:
    r = rows(influx, db, f'SELECT count("{field}") FROM "{measurement}"')
    return r[0]["count"] if r else 0


class Front:
    """A scripted HTTP server in front of influxd: each POST /write takes the next scripted answer
    (status, headers, delay) and, once the script is used up, is proxied to the real server."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.script: list[tuple[int, dict, float]] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(204)  # /ping

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with front.lock:
                    front.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = front.script.pop(0) if front.script else None
                if action is not None:
                    status, headers, delay = action
                    time.sleep(delay)
                    try:
                        self._answer(status, b'{"error":"scripted"}', {"Content-Type": "application/json", **headers})
                    except OSError:
                        pass
                    return
                fwd = {k: v for k, v in self.headers.items() if k.lower() in ("content-encoding", "content-type")}
                r = httpx.post(front.upstream + self.path, content=body, headers=fwd, timeout=10)
                self._answer(r.status_code, r.content, {"Content-Type": r.headers.get("content-type", "text/plain")})

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, status: int, times: int = 1, headers: dict | None = None, delay: float = 0.0) -> None:
        with self.lock:
            self.script += [(status, headers or {}, delay)] * times

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front(influxdb):
    f = Front(influxdb.url)
    yield f
    f.close()


@pytest.fixture
def make_writer(tmp_path):
    made: list[tuple[InfluxWriter, Spool]] = []

    def make(url: str, db: str, *, spool_dir=None, start=True, on_rejected=None, spool_bytes=1 << 26,
             when_full="block", batching: dict | None = None, **influx):
        stats = Stats()
        spool = Spool(spool_dir or tmp_path / f"spool{len(made)}", spool_bytes, when_full, False, stats)
        cfg = InfluxConfig(url=url, database=db, **influx)
        b = BatchingConfig(**{"write_retries": 2, "retry_backoff": 0.01, "retry_backoff_max": 0.05, **(batching or {})})
        w = InfluxWriter(cfg, b, spool, stats, on_rejected=on_rejected, replay_interval=0.1)
        made.append((w, spool))
        if start:
            w.start()
        return w

    yield make
    for w, spool in made:
        w.close(5)
        spool.close()


def test_exact_values_and_ns_timestamps_round_trip(influxdb, db_name, make_writer):
    w = make_writer(influxdb.url, db_name)  # gzip is on by default
    assert w.cfg.gzip
    assert w.ensure_database()
    values = [0.1 + 0.2, 1e-300, -2.5e300, 123456.789, 0.0, -1.0, 2.0 ** 53 + 1, 1 / 3]
    lines = [encode_line("xact", {"sensor": "s1", "area": "a b"}, {"v": v, "i": i, "ok": i % 2 == 0,
                                                                       "s": f'"{i}"\n\\x'}, T0 + i)
             for i, v in enumerate(values)]
    assert w.write(lines) == "written"
    got = rows(influxdb, db_name, "SELECT * FROM xact ORDER BY time")
    assert [r["time"] for r in got] == [T0 + i for i in range(len(values))]
    assert [float(r["v"]) for r in got] == values
    assert [r["i"] for r in got] == list(range(len(values)))
    assert [r["ok"] for r in got] == [i % 2 == 0 for i in range(len(values))]
    assert [r["s"] for r in got] == [f'"{i}"\n\\x' for i in range(len(values))]
    assert got[0]["area"] == "a b" and got[0]["sensor"] == "s1"
    assert w.stats.get("influx_points_written") == len(values) and w.stats.get("influx_writes") == 1
    assert w.stats.get("influx_up") == 1 and len(w.spool) == 0


def test_gzip_body_and_token_header(front, db_name, make_writer, influxdb):
    w = make_writer(front.url, db_name, token=SecretStr("s3cret"), retention_policy="autogen")
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    assert w.write(["g f=1 1", "g f=2 2"]) == "written"
    req = front.requests[-1]
    assert req["path"].startswith("/write?") and "db=" + db_name in req["path"] and "precision=ns" in req["path"]
    assert "rp=autogen" in req["path"]
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert gzip.decompress(req["body"]) == b"g f=1 1\ng f=2 2"
    assert req["headers"]["Authorization"] == "Token s3cret"
    assert count(influxdb, db_name, "g", "f") == 2


def test_basic_auth_and_plain_body(front, db_name, make_writer, influxdb):
    w = make_writer(front.url, db_name, username="alice", password=SecretStr("pw"), gzip=False)
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    assert w.write(["b f=1 1"]) == "written"
    req = front.requests[-1]
    assert req["body"] == b"b f=1 1" and "Content-Encoding" not in req["headers"]
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_chunks_of_write_batch_points_and_concurrent_callers(influxdb, db_name, make_writer):
    w = make_writer(influxdb.url, db_name, batching={"write_batch_points": 1000, "concurrent_writes": 4})
    w.ensure_database()

    def worker(t: int):
        assert w.write([f"c,t=w{t} f={i} {T0 + i}" for i in range(2500)]) == "written"

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.stats.get("influx_writes") == 12  # 4 callers x 3 chunks
    assert count(influxdb, db_name, "c", "f") == 10_000


def test_missing_database_is_created_on_first_write(influxdb, db_name, make_writer):
    w = make_writer(influxdb.url, db_name)
    assert w.write(["auto f=1 1"]) == "written"
    assert count(influxdb, db_name, "auto", "f") == 1


def test_ensure_database_never_raises(db_name, make_writer, front):
    assert make_writer(f"http://127.0.0.1:{free_port()}", db_name, timeout=1.0).ensure_database() is False
    w = make_writer(front.url, db_name)
    with front.lock:  # /query is scripted like /write
        front.script.append((403, {}, 0.0))
    assert w.ensure_database() is False


def test_bad_points_are_isolated_counted_and_reported(influxdb, db_name, make_writer):
    rejected: list[tuple[list[str], str]] = []
    w = make_writer(influxdb.url, db_name, on_rejected=lambda lines, err: rejected.append((lines, err)))
    w.ensure_database()
    assert w.write(["m f=1 1"]) == "written"  # f is a float field from now on
    bad = {5: 'm f="x" 105', 11: "m f= 111", 17: 'm f="y" 117'}
    lines = [bad.get(i, f"m f={i}.5 {100 + i}") for i in range(20)]
    assert w.write(lines) == "written"
    assert count(influxdb, db_name, "m", "f") == 1 + 17
    assert sorted(r["time"] for r in rows(influxdb, db_name, "SELECT f FROM m")) == [1] + [
        100 + i for i in range(20) if i not in bad]
    assert w.stats.get("influx_rejected_points") == 3
    assert sorted(ln for lines_, _ in rejected for ln in lines_) == sorted(bad.values())
    assert all("400" in err for _, err in rejected)
    assert any("field type conflict" in err for _, err in rejected)
    assert w.stats.get("spooled_points") == 0 and len(w.spool) == 0 and not w.down


def test_5xx_and_timeouts_are_retried(front, influxdb, db_name, make_writer):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    w = make_writer(front.url, db_name, timeout=0.3, batching={"write_retries": 3})
    front.answer(500, times=2)
    assert w.write(["r f=1 1"]) == "written"
    assert w.stats.get("influx_retries") == 2 and w.stats.get("influx_write_errors") == 2
    front.answer(200, times=1, delay=1.0)  # slower than the timeout
    assert w.write(["r f=2 2"]) == "written"
    assert w.stats.get("influx_retries") == 3
    assert count(influxdb, db_name, "r", "f") == 2
    assert w.stats.get("spooled_points") == 0


def test_429_retry_after_is_honoured(front, influxdb, db_name, make_writer):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    w = make_writer(front.url, db_name, batching={"retry_backoff_max": 2.0})
    front.answer(429, headers={"Retry-After": "1"})
    t = time.monotonic()
    assert w.write(["ra f=1 1"]) == "written"
    assert time.monotonic() - t >= 0.95
    # A Retry-After beyond retry_backoff_max: spool at once, replay no earlier than asked.
    w2 = make_writer(front.url, db_name)
    front.answer(503, headers={"Retry-After": "1"})
    t = time.monotonic()
    assert w2.write(["ra f=2 2"]) == "spooled"
    wait_for(lambda: len(w2.spool) == 0, 5, "replay")
    assert time.monotonic() - t >= 0.95
    assert count(influxdb, db_name, "ra", "f") == 2


def test_exhausted_retries_spool_and_replay_isolates_bad_points(front, influxdb, db_name, make_writer):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    httpx.post(f"{influxdb.url}/write", params={"db": db_name}, content=b"x f=1 5000").raise_for_status()
    rejected = []
    w = make_writer(front.url, db_name, on_rejected=lambda lines, err: rejected.extend(lines), start=False)
    front.answer(503, times=3)  # 1 try + 2 retries
    assert w.write([f"x f={i}.0 {i}" for i in range(1, 10)] + ['x f="bad" 10']) == "spooled"
    assert w.down and w.stats.get("influx_up") == 0
    assert w.write(["x f=11 11"]) == "spooled"  # down: straight to the spool, after the first batch
    assert len(w.spool) == 2 and w.stats.get("spooled_points") == 11
    w.start()
    wait_for(lambda: len(w.spool) == 0 and not w.down, 5, "replay")
    assert count(influxdb, db_name, "x", "f") == 1 + 10
    assert rejected == ['x f="bad" 10'] and w.stats.get("influx_rejected_points") == 1
    assert w.stats.get("replayed_points") == 11 and w.stats.get("influx_up") == 1


def test_wrong_credentials_spool_instead_of_rejecting(front, influxdb, db_name, make_writer):
    influxdb.query(f'CREATE DATABASE "{db_name}"')
    rejected = []
    w = make_writer(front.url, db_name, on_rejected=lambda lines, err: rejected.extend(lines))
    front.answer(401, times=3)  # the write, then two replay attempts
    assert w.write(["cred f=1 1", "cred f=2 2"]) == "spooled"
    assert w.stats.get("influx_retries") == 0  # retrying the same credentials is pointless
    wait_for(lambda: len(w.spool) == 0, 5, "replay once the server accepts")
    assert not rejected and w.stats.get("influx_rejected_points") == 0
    assert count(influxdb, db_name, "cred", "f") == 2


def test_outage_spools_then_replays_in_order_across_restart(tmp_path, db_name, make_writer):
    influx = InfluxDB(tmp_path / "own-influx")
    influx.start()
    try:
        spool_dir = tmp_path / "spool"
        w = make_writer(influx.url, db_name, spool_dir=spool_dir)
        assert w.ensure_database()

        def batch(k: int) -> list[str]:
            # the same 50 points each time (last write wins) plus 50 points of its own
            return ([f"o,s=same v={k}i {T0 + i}" for i in range(50)] +
                    [f"o,s=b{k} v={k}i {T0 + i}" for i in range(50)])

        assert w.write(batch(0)) == "written"
        influx.stop()
        for k in range(1, 4):
            assert w.write(batch(k)) == "spooled"
        assert w.down and len(w.spool) == 3 and w.spool.points == 300
        w.close(5)
        w.spool.close()  # a restart of the engine while InfluxDB is still down

        influx.start()
        w2 = make_writer(influx.url, db_name, spool_dir=spool_dir, start=False)
        assert len(w2.spool) == 3
        assert w2.write(batch(4)) == "spooled"  # queued behind the older batches, not before them
        w2.start()
        wait_for(lambda: len(w2.spool) == 0, 10, "spool drained")
        assert w2.stats.get("replayed_points") == 400 and w2.stats.get("influx_points_written") == 400
        got = rows(influx, db_name, "SELECT v FROM o WHERE s = 'same' ORDER BY time")
        assert [r["v"] for r in got] == [4] * 50  # replayed oldest first: the newest batch wins
        assert count(influx, db_name, "o", "v") == 50 + 5 * 50  # nothing lost, nothing extra
        for k in range(5):
            assert len(rows(influx, db_name, f"SELECT v FROM o WHERE s = 'b{k}'")) == 50
        assert w2.stats.get("influx_up") == 1
        assert w2.write(batch(5)) == "written"
    finally:
        influx.stop()


def test_close_does_not_lose_points_and_writes_after_close_are_spooled(db_name, make_writer, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    w = make_writer(url, db_name, spool_dir=tmp_path / "sp", timeout=0.5)
    assert w.write(["z f=1 1"]) == "spooled"
    w.close(5)
    assert w.write(["z f=2 2"]) == "spooled"
    assert len(w.spool) == 2 and w.spool.points == 2
