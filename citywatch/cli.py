"""The `citywatch` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import structlog

from citywatch import __version__
from citywatch.config import ConfigError, Settings, default_config_path, load_settings
from citywatch.registry import DOMAINS, Registry


def setup_logging(level: str = "info", json_logs: bool = False, file: Path | None = None) -> None:
    """Structured logs (structlog) to stderr, or to a file (the demo keeps the terminal for its status)."""
    lvl = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if json_logs or file else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    # stderr is looked up at each call, not kept: whoever replaced it (a test runner) may close the old one
    factory = structlog.PrintLoggerFactory(file.open("a")) if file else (lambda *_: structlog.PrintLogger(sys.stderr))
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="config file (default: $CITYWATCH_CONFIG, ./config/citywatch.yaml, or the packaged sample)")


def _load(args) -> tuple[Settings, Registry]:
    settings = load_settings(args.config)
    registry = Registry.load(settings.resolve(settings.registry))
    return settings, registry


def cmd_check_config(args) -> int:
    settings, registry = _load(args)
    path = args.config or default_config_path()
    by_domain = {d: len(registry.by_domain(d)) for d in DOMAINS}
    print(f"{path}: ok")
    print(f"{registry.source}: ok, {len(registry.sensors)} sensors ({', '.join(f'{d} {n}' for d, n in by_domain.items())})")
    print(f"mqtt {settings.mqtt.url} topic {settings.mqtt.topic}; influxdb {settings.influxdb.url} db {settings.influxdb.database}")
    print(f"detectors: physical_range={'on' if settings.detectors.physical_range else 'off'}, "
          f"{len(settings.detectors.thresholds)} threshold rules")
    if settings.sources.enabled and settings.sources.profiles:
        from citywatch.ingest.sources.mapper import configuration_problems, load_profiles

        profiles = load_profiles(settings.sources.profiles, settings.base_dir)
        named = sum(1 for s in registry.sensors.values() if s.source is not None)
        print(f"sources: {', '.join(p.family for p in profiles)}; {named} registry sensors name their device")
        problems = configuration_problems(profiles, registry)
        for problem in problems:
            print(f"warning: {problem}")
    if settings.source == "nats":
        from citywatch.partitions import check_ids, telemetry_mapping

        check_ids(registry)  # ids become NATS subject tokens
        source, destination = telemetry_mapping(settings.mqtt.topic, settings.nats.subject_prefix, settings.nats.partitions)
        print(f"nats {settings.nats.url}: {settings.nats.partitions} partitions; server mapping "
              f'"{source}": "{destination}"')
    return 0


def cmd_sensors_list(args) -> int:
    _, registry = _load(args)
    sensors = registry.by_domain(args.domain)
    if args.format == "json":
        rows = [s.model_dump(mode="json", exclude={"auto_registered", "profile"}) for s in sensors]
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(sensors)} sensors" + (f" ({args.domain})" if args.domain else ""))
    for col in ("id", "domain", "area", "name", "lat", "lon", "interval", "metrics"):
        table.add_column(col)
    for s in sensors:
        table.add_row(s.id, s.domain, s.area, s.name or "", f"{s.lat:.5f}", f"{s.lon:.5f}", f"{s.interval:g}s",
                      ", ".join(f"{m} [{spec.unit}]" for m, spec in s.metrics.items()))
    Console(width=max(160, Console().width)).print(table)
    return 0


def cmd_run(args) -> int:
    from citywatch.pipeline import Engine

    settings, registry = _load(args)
    setup_logging(settings.log_level, json_logs=args.json_logs)
    if getattr(args, "source", None):
        settings.source = args.source
    source = None
    if settings.source == "nats":
        from citywatch.ingest.nats_source import NatsSource as source
    engine = Engine(settings, registry, source=source)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine.start()
    try:
        while not stop.wait(0.5):
            if not engine.running:
                break
    finally:
        engine.stop()
    return 0 if stop.is_set() else 1


def cmd_simulate(args) -> int:
    from citywatch import simulator

    return simulator.run(args)


def cmd_demo(args) -> int:
    from citywatch import demo

    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citywatch",
        description="Streaming engine for a city's environmental operations centre: "
                    "MQTT readings -> vectorised detectors -> alerts -> InfluxDB.")
    parser.add_argument("--version", action="version", version=f"citywatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the engine until SIGTERM/Ctrl-C (flushes everything on stop)",
                       description="Subscribe to MQTT, detect, alert and write to InfluxDB until SIGTERM or Ctrl-C.")
    _add_config_arg(p)
    p.add_argument("--json-logs", action="store_true", help="log JSON lines instead of console text")
    p.add_argument("--source", choices=("mqtt", "nats"), default=None,
                   help="where readings come from (default: the config's source, mqtt): the MQTT broker, or the "
                        "sensor partitions of NATS JetStream that this instance owns (nats: section)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate the config file and the sensor registry",
                       description="Validate the config and the sensor registry; errors name file, key path and reason.")
    _add_config_arg(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("sensors", help="inspect the sensor registry", description="Inspect the sensor registry.")
    ssub = p.add_subparsers(dest="sensors_command", required=True, metavar="SUBCOMMAND")
    pl = ssub.add_parser("list", help="list sensors", description="List the registry's sensors.")
    _add_config_arg(pl)
    pl.add_argument("--domain", choices=DOMAINS, help="only sensors of this domain")
    pl.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    pl.set_defaults(func=cmd_sensors_list)

    p = sub.add_parser("simulate", help="publish simulated Biên Hòa sensor readings over MQTT",
                       description="Publish realistic simulated readings (with optional labelled faults) over MQTT.")
    from citywatch import simulator

    simulator.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    # Commands whose module brings its own `add_arguments(parser)` and `run(args)`.
    for name, module, help_text, description in (
        ("index", "index_cli", "compute an official index (VN_AQI, US AQI, VN_WQI, fire, traffic) over a CSV",
         "Compute an official index over a CSV of readings, for staff recomputing history."),
        ("forecast", "forecast_cli", "forecast hourly series of a CSV with prediction intervals",
         "Forecast the next hours of each value column of a CSV (hourly means), with intervals."),
        ("replay", "replay", "run the detectors as a stream over historical CSVs and write per-row scores",
         "Replay CSV files (timestamp,value or wide timestamp,<metric>,...; a file or a folder) through the default "
         "detector profile, row by row in event time, and write per-row scores; --nab-output writes NAB's results "
         "layout instead."),
        ("backtest", "backtest", "score detector output against NAB windows or the simulator's ground truth",
         "Score replayed detector output against labels: NAB windows (the three NAB profiles) or the simulator's "
         "ground-truth faults (precision, recall, detection delay); writes report.md, summary.json and a PNG per "
         "series."),
        ("sources", "sources_cli", "try device messages against a source profile; list the source profiles",
         "Device source profiles (Tasmota, ESPHome, TTN, ChirpStack, Zigbee2MQTT, Sensor.Community, Sparkplug B, "
         "Frigate): `test` shows what a message maps to, or why it is rejected; `list` shows the profiles."),
    ):
        mod = importlib.import_module(f"citywatch.{module}")
        p = sub.add_parser(name, help=help_text, description=description)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)

    p = sub.add_parser("grafana", help="export or push the Grafana provisioning and dashboards",
                       description="Write the Grafana provisioning and dashboards generated from the config and "
                                   "registry to a folder, or upload them to a running Grafana.")
    from citywatch import grafana_boards

    grafana_boards.add_arguments(p)
    p.set_defaults(func=lambda args: grafana_boards.run(args))

    p = sub.add_parser("serve", help="public open-data API and page (read-only, from InfluxDB)",
                       description="Serve the public read-only API (JSON/CSV, OpenAPI at /openapi.json) and the "
                                   "citizens' page, from the engine's InfluxDB. Listens on 127.0.0.1 unless --host.")
    from citywatch.public import cli as public_cli

    public_cli.add_arguments(p)
    p.set_defaults(func=lambda args: public_cli.run(args))

    p = sub.add_parser("demo", help="live demo: local broker + InfluxDB + simulator + engine, with a status view",
                       description="Start private Mosquitto and InfluxDB instances on free loopback ports, run the "
                                   "simulator and the engine, and show live status until Ctrl-C.")
    from citywatch import demo

    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"citywatch: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
