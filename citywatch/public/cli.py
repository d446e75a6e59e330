"""`citywatch serve`: the public open-data API and page (read-only, over the engine's InfluxDB)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from citywatch.public.settings import PublicSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = PublicSettings()
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="config file: InfluxDB connection and sensor registry (default: as for `citywatch run`)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    p.add_argument("--cache-ttl", type=float, default=d.cache_ttl, help=f"seconds a response is cached (default {d.cache_ttl:g})")
    p.add_argument("--rate", type=float, default=d.rate_per_second,
                   help=f"requests per second per client, on average; 0 = no limit (default {d.rate_per_second:g})")
    p.add_argument("--burst", type=int, default=d.rate_burst, help=f"burst size per client (default {d.rate_burst})")
    p.add_argument("--trust-forwarded-for", action="store_true",
                   help="behind a reverse proxy: rate-limit by the X-Forwarded-For client address")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", default=None,
                   help="origin allowed to read the API from a browser (repeatable; default: any)")
    p.add_argument("--workers", type=int, default=1, help="server processes (each has its own cache)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> PublicSettings:
    raw = {"host": args.host, "port": args.port, "cache_ttl": args.cache_ttl, "rate_per_second": args.rate,
           "rate_burst": args.burst, "trust_forwarded_for": args.trust_forwarded_for}
    if args.cors_origins:
        raw["cors_origins"] = args.cors_origins
    return PublicSettings.model_validate(raw)


def app_factory():
    """The app for uvicorn's --factory / workers: settings come through the environment (see `run`)."""
    import json
    import os

    from citywatch.config import load_settings
    from citywatch.public.app import create_app
    from citywatch.registry import Registry

    cfg_path = os.environ.get("CITYWATCH_PUBLIC_CONFIG") or None
    settings = load_settings(cfg_path)
    registry = Registry.load(settings.resolve(settings.registry))
    public = PublicSettings.model_validate(json.loads(os.environ.get("CITYWATCH_PUBLIC_SETTINGS", "{}")))
    return create_app(settings.influxdb, registry, public)


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    public = settings_from_args(args)
    os.environ["CITYWATCH_PUBLIC_SETTINGS"] = public.model_dump_json()
    if args.config:
        os.environ["CITYWATCH_PUBLIC_CONFIG"] = str(args.config)
    app_factory()  # fail early, with the config error, before binding
    print(f"citywatch open data on http://{public.host}:{public.port}/ (API /api/v1, spec /openapi.json)", file=sys.stderr)
    uvicorn.run("citywatch.public.cli:app_factory", factory=True, host=public.host, port=public.port,
                workers=args.workers, log_level=args.log_level, access_log=False, server_header=False)
    return 0
