"""`citywatch demo`: the whole pipeline on this machine, with nothing to set up.

Starts a private Mosquitto and InfluxDB on free loopback ports (data under the work dir), the
simulated Biên Hòa devices (replaying the last day at `--speedup`, then live), and the engine, then
shows live status until Ctrl-C. A scripted scenario makes something happen early on: a strong NO2
and PM2.5 episode around one air station (crossing the QCVN 05:2023 1-hour NO2 limit), and a
misconfigured device whose messages end up in the dead-letter topic.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.config import load_settings
from citywatch.grafana_boards import export_files
from citywatch.registry import Registry
from citywatch.services import InfluxDB, Mosquitto, ServiceError, ensure_binaries
from citywatch.simulator import Simulator, configured_source_profiles


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="engine config (default: ./config/citywatch.yaml)")
    p.add_argument("--work-dir", type=Path, default=Path(".citywatch/demo"),
                   help="where the broker, database, spool and logs live (default: .citywatch/demo)")
    p.add_argument("--speedup", type=float, default=60.0, help="simulated seconds per wall second (default: 60)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many wall seconds (default: Ctrl-C)")
    p.add_argument("--faults", default="spike,stuck,drift,dropout,episode",
                   help="faults and events the simulator injects at random (default: all kinds)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default: 7)")
    p.add_argument("--no-install", action="store_true",
                   help="do not install missing Debian packages; print the command instead")


def _aqi_summary(engine) -> str:
    """Air stations per current VN_AQI category, coloured like the official scale."""
    from citywatch.detectors.indices.vn_aqi import CATEGORIES

    if engine.evaluator.air_indices is None:
        return "off"
    current = engine.evaluator.air_indices.last_category["vn_aqi_hourly"]
    parts = []
    for c in CATEGORIES:
        n = int((current == c.number).sum())
        if n:
            parts.append(f"[black on rgb({c.rgb[0]},{c.rgb[1]},{c.rgb[2]})] {c.label_vi} / {c.label_en}: {n} [/]")
    return " ".join(parts) or "waiting for the first complete hours"


def _status_table(stats: dict, rate: float, alerts: deque, deadletters: deque, services: str, aqi: str = ""):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(justify="right", style="bold")
    t.add_column()
    t.add_row("readings/s", f"{rate:,.0f}")
    for key, label in (("readings_accepted", "readings accepted"), ("readings_stored", "readings stored"),
                       ("readings_rejected", "readings rejected (dead-lettered)"), ("alerts", "alerts"),
                       ("spooled_points", "points spooled"), ("replayed_points", "points replayed"),
                       ("influx_up", "InfluxDB up"), ("mqtt_connects", "MQTT connects")):
        t.add_row(label, f"{int(stats.get(key, 0)):,}")
    t.add_row("VN_AQI now", aqi)
    a = Table(title="latest alerts", expand=True)
    for col in ("reading time", "sensor", "metric", "level", "value", "reason"):
        a.add_column(col)
    for ev in list(alerts)[-8:]:
        a.add_row(ev["reading_time"], ev["sensor"], ev["metric"], ev["level"], f"{ev['value']:.4g}", ev["reason"])
    d = Table(title="latest dead letters", expand=True)
    for col in ("sensor", "reason", "detail"):
        d.add_column(col)
    for ev in list(deadletters)[-4:]:
        d.add_row(str(ev.get("sensor")), str(ev.get("reason")), str(ev.get("detail"))[:80])
    return Panel(Group(t, a, d), title="citywatch demo — Biên Hòa (Ctrl-C to stop)", subtitle=services)


class MisconfiguredDevice:
    """Every 20 s, one of the mistakes real devices make; each lands in the dead-letter topic."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.next = time.monotonic() + 5
        self.step = 0

    def maybe_publish(self) -> None:
        if time.monotonic() < self.next:
            return
        self.next = time.monotonic() + 20
        now_ms = int(time.time() * 1000)
        mistakes = [
            ("city/air/aq-999/telemetry", orjson.dumps({"ts": now_ms, "pm25": 31.0})),  # not in the registry
            ("city/air/aq-003/telemetry", b'{"ts": %d, "pm25": NaN}' % now_ms),  # a failed sensor read
            ("city/water/wq-002/telemetry", b'{"ts": %d, "pH": 7.1' % now_ms),  # truncated JSON
            ("city/air/aq-004/telemetry", orjson.dumps({"ts": now_ms + 86_400_000, "pm25": 12.0})),  # clock wrong
        ]
        topic, payload = mistakes[self.step % len(mistakes)]
        self.step += 1
        self.client.publish(topic, payload, qos=1)


def run(args) -> int:
    from rich.console import Console
    from rich.live import Live

    from citywatch.cli import setup_logging
    from citywatch.pipeline import Engine

    console = Console()
    try:
        ensure_binaries(auto_install=not args.no_install)
    except (ServiceError, subprocess.CalledProcessError) as exc:
        console.print(f"[red]{exc}")
        return 1
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = load_settings(args.config)
    registry = Registry.load(settings.resolve(settings.registry))
    broker, influx = Mosquitto(work / "mosquitto"), InfluxDB(work / "influxdb")
    broker.start()
    influx.start()
    settings.mqtt.url, settings.influxdb.url, settings.data_dir = broker.url, influx.url, str(work / "engine")
    limit = settings.validation.max_messages_per_sensor_per_s
    if limit is not None:  # replaying history faster than real time: devices publish `speedup` times faster
        settings.validation.max_messages_per_sensor_per_s = max(limit, args.speedup / 10.0)
    # Each demo replays the last day from scratch: state from an earlier run would make it "late".
    if settings.detectors.state_file:
        settings.data_path(settings.detectors.state_file).unlink(missing_ok=True)
    setup_logging(settings.log_level, file=work / "engine.log")
    engine = Engine(settings, registry)
    engine.start()
    # Sensors that name a device publish in their family's own format, through the mapping layer.
    profiles = configured_source_profiles(settings)
    sim = Simulator(registry, seed=args.seed, start=time.time() - 86400, speedup=args.speedup,
                    faults=[f for f in args.faults.split(",") if f], truth=work / "ground-truth.jsonl",
                    device_formats=profiles is not None, source_profiles=profiles)
    # The scenario: ten simulated minutes in, an hour-long episode around aq-005 strong enough to
    # push NO2 past the QCVN 05:2023 1-hour limit (200 ug/m3) for longer than the rule's 5 minutes.
    sim.inject("episode", "aq-005", start=sim.start + 600, end=sim.start + 4200, magnitude=650)
    sim_stop = threading.Event()
    sim_thread = threading.Thread(target=sim.publish_forever, args=(broker.url,),
                                  kwargs={"stop": sim_stop, "client_id": "citywatch-demo-devices"}, daemon=True)
    sim_thread.start()
    alerts: deque = deque(maxlen=50)
    deadletters: deque = deque(maxlen=50)
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="citywatch-demo-watch")
    watcher.on_connect = lambda c, *_: (c.subscribe("city/alerts/#", 1), c.subscribe("city/deadletter/#", 1))

    def on_message(client, userdata, msg):
        body = orjson.loads(msg.payload)
        (alerts if msg.topic.startswith("city/alerts/") else deadletters).append(body)

    watcher.on_message = on_message
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    misconfigured = MisconfiguredDevice(watcher)

    services = f"MQTT {broker.url} · InfluxDB {influx.url} db={settings.influxdb.database} · logs {work}"
    console.print(f"[bold]citywatch demo[/] {len(registry.sensors)} sensors · {services}")
    for path, text in export_files(settings, registry).items():
        (work / "grafana" / path).parent.mkdir(parents=True, exist_ok=True)
        (work / "grafana" / path).write_text(text)
    console.print(f"Grafana boards and provisioning: {work / 'grafana'} (a Grafana with "
                  f"CITYWATCH_INFLUX_URL={influx.url} CITYWATCH_INFLUX_DB={settings.influxdb.database} shows them)")
    started = time.monotonic()
    window: deque = deque(maxlen=10)
    stop = threading.Event()
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while not stop.wait(1.0):
                snap = engine.stats.snapshot()
                window.append((time.monotonic(), snap.get("readings_stored", 0)))
                rate = ((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])) if len(window) > 1 else 0.0
                live.update(_status_table(snap, rate, alerts, deadletters, services, _aqi_summary(engine)))
                misconfigured.maybe_publish()
                if not sim_thread.is_alive():
                    console.print("[red]the simulated devices stopped; see the engine log")
                    break
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        sim_stop.set()
        sim_thread.join(15)
        sim.close()
        engine.stop()
        watcher.loop_stop()
        watcher.disconnect()
        influx.stop()
        broker.stop()
    snap = engine.stats.snapshot()
    console.print()
    console.print(f"stored {int(snap.get('readings_stored', 0)):,} readings, rejected "
                  f"{int(snap.get('readings_rejected', 0)):,}, {int(snap.get('alerts', 0)):,} alerts; "
                  f"data kept in {work}")
    return 0
