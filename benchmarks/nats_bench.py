"""NATS scale-out benchmark: stored readings/s with 1, 2 and 4 `citywatch run --source nats` instances.

Run:  .venv/bin/python benchmarks/nats_bench.py [--instances 1 2 4] [--messages 60000] [--sensors 400]

For each instance count, on a fresh private nats-server (MQTT listener, JetStream, 8-partition
mapping) and InfluxDB: the instances start and share the partitions; then a backlog of `--messages`
telemetry messages (one JSON object with two readings, `no2` and `pm25`, per message; sensors in
turn, one minute of event time apart) is published into the stream as fast as one client can, and
the time is taken until InfluxDB holds every reading. Each instance reports how many readings it
stored (its `engine stopped` log line after SIGTERM), so the per-instance share shows too.
Everything shares this machine's cores: nats-server, InfluxDB, the publisher and the instances.
The whole default detector library runs (spatial and drift compare within an instance's partitions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import yaml

from citywatch.nats_service import NatsServer
from citywatch.services import InfluxDB

PARTITIONS = 8


def _registry(n: int) -> dict:
    return {"profiles": {"air": {"domain": "air", "interval": "60s", "metrics": {
        "pm25": {"unit": "ug/m3", "min": 0, "max": 1000}, "no2": {"unit": "ug/m3", "min": 0, "max": 2000}}}},
        "sensors": [{"id": f"aq-{i:04d}", "domain": "air", "area": f"area-{i % 12}", "lat": 10.9 + (i % 20) * 0.005,
                     "lon": 106.8 + (i // 20) * 0.005, "profile": "air"} for i in range(n)]}


def _count(influx: InfluxDB, db: str, field: str) -> int:
    try:
        res = influx.query(f'SELECT count("{field}") FROM air', db=db)["results"][0]
    except httpx.HTTPError:
        return 0
    return int(res["series"][0]["values"][0][1]) if "series" in res else 0


def _leases(url: str) -> dict[str, str]:
    import nats

    async def go():
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value("citywatch_leases")
            out = {}
            for k in await kv.keys():
                if k.startswith("lease."):
                    out[k] = (await kv.get(k)).value.decode()
            return out
        except Exception:  # noqa: BLE001 - not created yet
            return {}
        finally:
            await nc.close()

    return asyncio.run(go())


def _publish(url: str, messages: list[tuple[str, bytes]]) -> float:
    """Publish every message (core NATS; the server's mapping puts them in the stream); returns seconds."""
    import nats

    async def go():
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        t0 = time.perf_counter()
        for i, (subject, payload) in enumerate(messages):
            await nc.publish(subject, payload)
            if i % 5000 == 4999:
                await nc.flush()
        await nc.flush()
        elapsed = time.perf_counter() - t0
        await nc.close()
        return elapsed

    return asyncio.run(go())


def run_once(instances: int, n_messages: int, n_sensors: int, workdir: Path) -> dict:
    nats_server = NatsServer(workdir / "nats", partitions=PARTITIONS)
    influx = InfluxDB(workdir / "influx")
    nats_server.start()
    influx.start()
    db = "bench"
    (workdir / "sensors.yaml").write_text(yaml.safe_dump(_registry(n_sensors)))
    procs = []
    try:
        for k in range(instances):
            cfg = {"registry": str(workdir / "sensors.yaml"), "data_dir": str(workdir / f"i{k}"),
                   "influxdb": {"url": influx.url, "database": db}, "source": "nats",
                   "nats": {"url": nats_server.url, "instance_id": f"i{k}", "partitions": PARTITIONS,
                            "lease_ttl": "5s", "snapshot_interval": "5s"},
                   "spool": {"fsync": False}, "indices": {"water": False}, "detectors": {"allowed_lateness": 0}}
            path = workdir / f"i{k}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            log = (workdir / f"i{k}.log").open("w")
            procs.append((subprocess.Popen([sys.executable, "-m", "citywatch", "run", "--config", str(path), "--json-logs"],
                                           stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            owners = _leases(nats_server.url)
            if len(owners) == PARTITIONS and len(set(owners.values())) == instances:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"partitions not shared by {instances} instances: {owners}")
        base_ms = int(time.time() * 1000) - (n_messages // n_sensors + 10) * 60_000
        messages = [(f"city.air.aq-{i % n_sensors:04d}.telemetry",
                     orjson.dumps({"ts": base_ms + (i // n_sensors) * 60_000, "no2": 40.0 + (i * 7) % 61,
                                   "pm25": 12.0 + (i * 3) % 17}))
                    for i in range(n_messages)]
        t0 = time.perf_counter()
        publish_s = _publish(nats_server.url, messages)
        total = 2 * n_messages
        while True:
            stored = _count(influx, db, "no2") + _count(influx, db, "pm25")
            if stored >= total:
                break
            if time.perf_counter() - t0 > 900:
                raise SystemExit(f"only {stored} of {total} readings stored after 900 s")
            time.sleep(0.25)
        elapsed = time.perf_counter() - t0
        per_instance = []
        for proc, log in procs:
            proc.send_signal(signal.SIGTERM)
        for k, (proc, log) in enumerate(procs):
            proc.wait(60)
            log.close()
            stopped = [json.loads(line) for line in (workdir / f"i{k}.log").read_text().splitlines()
                       if '"engine stopped"' in line]
            per_instance.append(int(stopped[-1].get("readings_stored", 0)) if stopped else 0)
        return {"instances": instances, "readings": total, "seconds": elapsed, "readings_per_s": total / elapsed,
                "publish_s": publish_s, "per_instance": per_instance,
                "per_instance_per_s": [round(n / elapsed) for n in per_instance]}
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        nats_server.stop()
        influx.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--messages", type=int, default=60_000, help="messages per run (two readings each)")
    p.add_argument("--sensors", type=int, default=400)
    args = p.parse_args(argv)
    print(f"cores: {os.cpu_count()}; {args.messages} messages x 2 readings over {args.sensors} sensors, "
          f"{PARTITIONS} partitions")
    print("| instances | readings | seconds | stored readings/s | per instance (readings/s) | publish s |")
    print("|---|---|---|---|---|---|")
    for k in args.instances:
        with tempfile.TemporaryDirectory(prefix="nats-bench-") as tmp:
            r = run_once(k, args.messages, args.sensors, Path(tmp))
        print(f"| {k} | {r['readings']:,} | {r['seconds']:.1f} | {r['readings_per_s']:,.0f} | "
              f"{' / '.join(f'{x:,}' for x in r['per_instance_per_s'])} | {r['publish_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
