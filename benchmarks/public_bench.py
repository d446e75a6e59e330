"""Public API throughput: `citywatch serve` answering the current-conditions endpoint from its cache.

Starts private Mosquitto and InfluxDB instances, runs the simulator's air and water stations through
the engine into InfluxDB (a few hours of data: hourly VN_AQI and readings), starts `citywatch serve`
as its own process (rate limit off: every wrk connection comes from one address), then runs wrk on
`GET /api/v1/current` and prints requests/s, latency percentiles, and how many queries InfluxDB
answered during the run (the cache and single flight keep that near duration / cache TTL).

Target: >= 2,000 requests/s with p99 <= 50 ms on a 2-core machine (wrk shares the cores).

Run:  .venv/bin/python benchmarks/public_bench.py [--duration 20] [--connections 32] [--threads 1] [--gzip]
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from citywatch.config import load_settings
from citywatch.pipeline import Engine
from citywatch.registry import Registry
from citywatch.services import InfluxDB, Mosquitto, free_port
from citywatch.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent
REGISTRY = REPO / "config" / "sensors" / "bienhoa.yaml"


def load_data(mosquitto: Mosquitto, influx: InfluxDB, db: str, data_dir: Path, hours: float) -> int:
    """Simulated air and water stations through the engine into `db`; returns the readings stored."""
    registry = Registry.load(REGISTRY)
    base = load_settings(REPO / "config" / "citywatch.yaml", env={})
    cfg = base.model_copy(update={
        "data_dir": str(data_dir),
        "mqtt": base.mqtt.model_copy(update={"url": mosquitto.url, "client_id": "public-bench-engine"}),
        "influxdb": base.influxdb.model_copy(update={"url": influx.url, "database": db}),
    })
    now = time.time()
    sim = Simulator(registry, seed=3, start=now - hours * 3600, domains=["air", "water"])
    messages = sim.generate(now - hours * 3600, now - 1)
    engine = Engine(cfg, registry=registry)
    engine.start()
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    dev = paho.Client(CallbackAPIVersion.VERSION2, client_id="public-bench-sim")
    dev.max_inflight_messages_set(1000)
    dev.connect("127.0.0.1", mosquitto.port)
    dev.loop_start()
    try:
        for _ in range(200):  # until the engine's subscription is in place
            dev.publish(*messages[0], qos=1).wait_for_publish(10)
            time.sleep(0.05)
            if engine.stats.get("messages_received"):
                break
        total = engine.stats.get("messages_received") + len(messages)
        infos = [dev.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(60)
        deadline = time.monotonic() + 120
        while engine.stats.get("messages_acked") < total and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dev.disconnect()
        dev.loop_stop()
        engine.stop()
    return int(engine.stats.get("readings_stored"))


def influx_queries(influx: InfluxDB) -> int:
    """Queries InfluxDB has answered since it started (its own httpd statistics)."""
    stats = httpx.get(f"{influx.url}/debug/vars", timeout=10).json()
    return sum(int(v.get("values", {}).get("queryReq", 0)) for k, v in stats.items() if k.startswith("httpd"))


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{pct}_ms"] = ms(*m.groups())
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    sock = re.search(r"Socket errors:.*", out)
    result["socket_errors"] = sock.group(0) if sock else ""
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=20, help="seconds of load (default 20)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    ap.add_argument("--hours", type=float, default=3.0, help="hours of simulated data (default 3)")
    ap.add_argument("--path", default="/api/v1/current", help="endpoint (default /api/v1/current)")
    ap.add_argument("--gzip", action="store_true", help="ask for gzip, as browsers do (default: plain)")
    args = ap.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed; install it with:  sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="citywatch-public-bench-") as tmp:
        work = Path(tmp)
        mosquitto, influx = Mosquitto(work / "mosquitto"), InfluxDB(work / "influxdb")
        mosquitto.start()
        influx.start()
        server = None
        try:
            t0 = time.perf_counter()
            stored = load_data(mosquitto, influx, "citywatch", work / "engine", args.hours)
            print(f"data: {stored} readings of the air and water stations ({args.hours:g} h) "
                  f"in {time.perf_counter() - t0:.1f} s")
            config = work / "public.yaml"
            config.write_text(yaml.safe_dump({"registry": str(REGISTRY),
                                              "influxdb": {"url": influx.url, "database": "citywatch"}}))
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "citywatch", "serve", "--config", str(config), "--port", str(port),
                 "--rate", "0", "--workers", str(args.workers)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
            url = f"http://127.0.0.1:{port}{args.path}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    first = httpx.get(url, timeout=10)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                    time.sleep(0.2)
            first.raise_for_status()
            stations = sum(1 for s in first.json().get("stations", []) if s.get("indices"))
            packed = httpx.get(url, headers={"Accept-Encoding": "gzip"}, timeout=10).headers.get("content-length")
            print(f"endpoint {args.path}: {len(first.content)} bytes ({packed} gzipped), {stations} stations with an index")
            before = influx_queries(influx)
            cmd = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
            cmd += ["-H", "Accept-Encoding: gzip"] if args.gzip else []
            cmd.append(url)
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            queries = influx_queries(influx) - before
            r = parse_wrk(out)
            print(f"$ {shlex.join(cmd)}")
            print(f"cpu cores: {os.cpu_count()}, server processes: {args.workers}, wrk threads: {args.threads}, "
                  f"connections: {args.connections}, duration: {args.duration} s")
            print(f"requests/s: {r['rps']:.0f}   latency p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms   non-2xx: {r['non_2xx']} {r['socket_errors']}")
            print(f"InfluxDB queries during the run: {queries} (cache TTL 15 s)")
            ok = r["rps"] >= 2000 and r["p99_ms"] <= 50 and r["non_2xx"] == 0
            print(f"target >= 2000 requests/s, p99 <= 50 ms: {'met' if ok else 'NOT met'}")
            return 0
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
            influx.stop()
            mosquitto.stop()


if __name__ == "__main__":
    sys.exit(main())
