"""Container healthchecks for the citywatch images (docker-compose `healthcheck:`).

    python /app/deploy/healthcheck.py engine     # a `citywatch` health point newer than 60 s in InfluxDB
    python /app/deploy/healthcheck.py simulator  # the MQTT broker accepts a TCP connection

Reads the same CITYWATCH_* environment variables as the engine; exits 0 when healthy.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

import httpx


def engine() -> bool:
    url = os.environ.get("CITYWATCH_INFLUX_URL", "http://127.0.0.1:8086")
    db = os.environ.get("CITYWATCH_INFLUX_DB", "citywatch")
    client_id = os.environ.get("CITYWATCH_CLIENT_ID", "citywatch-engine")
    headers, auth = {}, None
    if os.environ.get("CITYWATCH_INFLUX_TOKEN"):
        headers["Authorization"] = "Token " + os.environ["CITYWATCH_INFLUX_TOKEN"]
    elif os.environ.get("CITYWATCH_INFLUX_USERNAME"):
        auth = (os.environ["CITYWATCH_INFLUX_USERNAME"], os.environ.get("CITYWATCH_INFLUX_PASSWORD", ""))
    q = ('SELECT last("readings_accepted") FROM "citywatch" WHERE time > now() - 60s '
         f"AND \"client_id\" = '{client_id}'")
    r = httpx.post(f"{url}/query", data={"db": db, "q": q}, headers=headers, auth=auth, timeout=5)
    r.raise_for_status()
    return any(res.get("series") for res in r.json().get("results", []))


def simulator() -> bool:
    u = urlsplit(os.environ.get("CITYWATCH_MQTT_URL", "mqtt://127.0.0.1:1883"))
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 1883), timeout=5):
        return True


if __name__ == "__main__":
    check = {"engine": engine, "simulator": simulator}[sys.argv[1] if len(sys.argv) > 1 else "engine"]
    try:
        sys.exit(0 if check() else 1)
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
