"""Ingest benchmark: MQTT -> engine -> InfluxDB on local services, as deployed on one small machine.

Run:  make bench        (or  .venv/bin/python benchmarks/ingest_bench.py --help)

For each payload shape (one reading per QoS 1 message; 100-reading JSON arrays) it reports:
  * stored readings/s: N readings published as fast as the devices can, time until the engine has
    every one of them stored (written to InfluxDB and acknowledged to the broker);
  * publish-to-stored latency p50/p99 at a paced rate below saturation (each reading carries its
    publish time as its timestamp, with microsecond resolution);
  * that InfluxDB holds exactly N distinct readings (none lost, none merged);
  * the process's peak RSS.
Devices are `mosquitto_pub -l -q 1` processes (C clients, one per sensor), so publishing does not
compete with the engine for Python's interpreter lock. Broker, database, devices and engine all
share this machine's cores, as they would on a small edge server.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from citywatch.config import load_settings
from citywatch.pipeline import Engine
from citywatch.registry import Registry
from citywatch.services import InfluxDB, Mosquitto, ensure_binaries, find_binary

REPO = Path(__file__).resolve().parent.parent


def _count(influx: InfluxDB, db: str) -> int:
    res = influx.query('SELECT count("pm25") FROM air', db=db)["results"][0]
    return int(res["series"][0]["values"][0][1]) if "series" in res else 0


class Devices:
    """One `mosquitto_pub -l` per sensor: each stdin line becomes one QoS 1 message."""

    def __init__(self, port: int, sensors: list[str]) -> None:
        pub = find_binary("mosquitto_pub")
        if pub is None:
            sys.exit("mosquitto_pub not found: apt-get install mosquitto-clients")
        self.procs = [
            subprocess.Popen([pub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-M", "2000", "-l",
                              "-i", f"bench-{s}", "-t", f"city/air/{s}/telemetry"], stdin=subprocess.PIPE)
            for s in sensors
        ]

    def write(self, i: int, data: bytes) -> None:
        self.procs[i].stdin.write(data)
        self.procs[i].stdin.flush()

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            p.wait(60)


def _lines(n_msgs: int, per_msg: int, ts0_us: int, sensor_index: int) -> bytes:
    """n_msgs lines of JSON; readings have distinct microsecond timestamps."""
    out = []
    k = 0
    for _ in range(n_msgs):
        recs = []
        for _ in range(per_msg):
            recs.append('{"ts":%d,"pm25":%d.5}' % (ts0_us + k, (k * 7 + sensor_index) % 900))
            k += 1
        out.append(recs[0] if per_msg == 1 else "[" + ",".join(recs) + "]")
    return ("\n".join(out) + "\n").encode()


def run_case(name: str, per_msg: int, readings: int, paced_rate: float, paced_seconds: float, sensors: list[str],
             work: Path, allowed_lateness: float | None = None) -> dict:
    broker, influx = Mosquitto(work / f"{name}-mqtt"), InfluxDB(work / f"{name}-influx")
    broker.start()
    influx.start()
    settings = load_settings(REPO / "config" / "citywatch.yaml", env={})
    settings.mqtt.url, settings.influxdb.url = broker.url, influx.url
    settings.influxdb.database = f"bench_{name}"
    settings.data_dir = str(work / f"{name}-engine")
    settings.spool.fsync = True
    # 20 devices stand in for a city's thousands: each publishes far above any real device's rate
    settings.validation.max_messages_per_sensor_per_s = None
    if allowed_lateness is not None:
        settings.detectors.allowed_lateness = allowed_lateness
    engine = Engine(settings, Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml"))
    stored_latency: list[np.ndarray] = []
    engine.latency_probe = lambda ts_ns, now_ns: stored_latency.append(now_ns - ts_ns)
    engine.start()
    engine.consumer.connected.wait(10)
    time.sleep(0.3)
    devices = Devices(broker.port, sensors)
    try:
        # 1. throughput: everything at once, as fast as the devices publish
        n_msgs = readings // per_msg // len(sensors)
        total = n_msgs * per_msg * len(sensors)
        ts0 = (int(time.time()) - 86400) * 1_000_000
        payloads = [_lines(n_msgs, per_msg, ts0, i) for i in range(len(sensors))]
        t_start = time.perf_counter()
        writers = [threading.Thread(target=devices.write, args=(i, p)) for i, p in enumerate(payloads)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        while engine.stats.get("readings_stored") + engine.stats.get("readings_rejected") < total:
            time.sleep(0.01)
            if time.perf_counter() - t_start > 600:
                raise RuntimeError("timed out waiting for readings to be stored")
        elapsed = time.perf_counter() - t_start
        throughput = total / elapsed

        # 2. latency at a paced rate below saturation
        stored_latency.clear()
        before = engine.stats.get("readings_stored")
        msgs_per_tick = max(1, int(paced_rate / per_msg / 20))  # 20 ticks per second, spread over sensors
        sent = 0
        next_tick = time.perf_counter()
        last_ts = [0] * len(sensors)
        end = time.perf_counter() + paced_seconds
        while time.perf_counter() < end:
            for j in range(msgs_per_tick):
                i = (sent + j) % len(sensors)
                now_us = max(time.time_ns() // 1000, last_ts[i] + per_msg)
                last_ts[i] = now_us + per_msg - 1
                devices.write(i, _lines(1, per_msg, now_us, i))
            sent += msgs_per_tick
            next_tick += 0.05
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        paced_total = sent * per_msg
        while engine.stats.get("readings_stored") < before + paced_total:
            time.sleep(0.01)
        lat = np.concatenate(stored_latency) / 1e6 if stored_latency else np.array([np.nan])
        time.sleep(0.5)
        in_db = _count(influx, settings.influxdb.database)
        expected = total + paced_total
        return {
            "case": name, "readings": total, "stored_per_s": throughput, "elapsed_s": elapsed,
            "paced_rate": paced_total / paced_seconds, "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)), "in_influx": in_db, "expected": expected,
            "lost": expected - in_db, "rejected": int(engine.stats.get("readings_rejected")),
        }
    finally:
        devices.close()
        engine.stop()
        influx.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single-readings", type=int, default=200_000, help="readings for the one-per-message case")
    ap.add_argument("--array-readings", type=int, default=1_000_000, help="readings for the 100-per-array case")
    ap.add_argument("--sensors", type=int, default=20, help="simulated devices (air sensors of the registry)")
    ap.add_argument("--paced-seconds", type=float, default=10.0)
    ap.add_argument("--cases", default="single,array100", help="which cases to run (default: both)")
    ap.add_argument("--allowed-lateness", type=float, default=None, metavar="S",
                    help="override detectors.allowed_lateness (0: evaluate on arrival, so that storage includes "
                         "detection; default: the sample config's)")
    args = ap.parse_args()
    ensure_binaries()
    registry = Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml")
    sensors = [s.id for s in registry.by_domain("air") if "pm25" in s.metrics][: args.sensors]
    results = []
    with tempfile.TemporaryDirectory(prefix="citywatch-bench-") as tmp:
        work = Path(tmp)
        cases = args.cases.split(",")
        if "single" in cases:
            results.append(run_case("single", 1, args.single_readings, 5_000, args.paced_seconds, sensors, work,
                                    args.allowed_lateness))
        if "array100" in cases:
            results.append(run_case("array100", 100, args.array_readings, 20_000, args.paced_seconds, sensors, work,
                                    args.allowed_lateness))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ncitywatch ingest benchmark ({len(sensors)} devices, QoS 1, default config, fsync spool on)")
    print(f"{'case':<10} {'readings':>10} {'stored/s':>10} {'paced/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'in db':>10} {'lost':>5}")
    for r in results:
        print(f"{r['case']:<10} {r['readings']:>10,} {r['stored_per_s']:>10,.0f} {r['paced_rate']:>9,.0f} "
              f"{r['latency_p50_ms']:>8.1f} {r['latency_p99_ms']:>8.1f} {r['in_influx']:>10,} {r['lost']:>5}")
    print(f"peak RSS of the engine process: {rss_mb:.0f} MiB")
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
