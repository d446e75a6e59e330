"""nats-server for the partitioned source: its config (MQTT listener, JetStream, the partition
mapping), and a private instance on free loopback ports for tests and benchmarks.

`server_config()` writes what a deployment needs (print it with
`python -m citywatch.nats_service --partitions 8 --store-dir /var/lib/nats`):

    >>> print(server_config(store_dir="/var/lib/nats", partitions=8))  # doctest: +NORMALIZE_WHITESPACE
    server_name: citywatch
    listen: 127.0.0.1:4222
    jetstream {
      store_dir: "/var/lib/nats"
    }
    mqtt {
      listen: 127.0.0.1:1883
    }
    mappings = {
      "city.*.*.telemetry": "citywatch.telemetry.{{partition(8,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
    }

The MQTT listener needs `server_name` and JetStream (it keeps MQTT sessions in streams of its own).
MQTT topic `city/air/aq-001/telemetry` arrives as subject `city.air.aq-001.telemetry`, which the
mapping sends to `citywatch.telemetry.<partition>.air.aq-001`. Partition states are stored in
chunks below the default `max_payload` (1 MB), so it need not be raised. Add accounts, TLS and a
cluster block as usual in production.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from citywatch.partitions import telemetry_mapping
from citywatch.services import ServiceError, _Process, _wait_port, find_binary, free_port

__all__ = ["server_config", "NatsServer"]


def server_config(store_dir: str, partitions: int, port: int = 4222, mqtt_port: int = 1883, host: str = "127.0.0.1",
                  topic: str = "city/{domain}/{sensor}/telemetry", prefix: str = "citywatch.telemetry",
                  server_name: str = "citywatch") -> str:
    source, destination = telemetry_mapping(topic, prefix, partitions)
    return "\n".join([
        f"server_name: {server_name}",
        f"listen: {host}:{port}",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "}",
        "mqtt {",
        f"  listen: {host}:{mqtt_port}",
        "}",
        "mappings = {",
        f'  "{source}": "{destination}"',
        "}",
    ]) + "\n"


@dataclass
class NatsServer(_Process):
    """A private nats-server (client port `port`, MQTT on `mqtt_port`) with its JetStream store in `workdir`."""

    partitions: int = 8
    mqtt_port: int = 0
    topic: str = "city/{domain}/{sensor}/telemetry"
    prefix: str = "citywatch.telemetry"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def write_config(self) -> str:
        if not self.mqtt_port:
            self.mqtt_port = free_port()
        path = self.workdir / "nats-server.conf"
        path.write_text(server_config(str(self.workdir / "jetstream"), self.partitions, self.port, self.mqtt_port,
                                      topic=self.topic, prefix=self.prefix, server_name=f"citywatch-{self.port}"))
        return str(path)

    def start(self, timeout: float = 15.0) -> None:
        binary = find_binary("nats-server")
        if binary is None:
            raise ServiceError("nats-server not found; install with: apt-get update && apt-get install -y nats-server")
        self._spawn([binary, "-c", self.write_config()])
        _wait_port(self.port, self.proc, timeout, self.log_path)
        _wait_port(self.mqtt_port, self.proc, timeout, self.log_path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print a nats-server config for citywatch's partitioned NATS source.")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--store-dir", default="/var/lib/nats")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4222)
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--topic", default="city/{domain}/{sensor}/telemetry")
    p.add_argument("--prefix", default="citywatch.telemetry")
    args = p.parse_args(argv)
    print(server_config(args.store_dir, args.partitions, args.port, args.mqtt_port, args.host, args.topic, args.prefix),
          end="")


if __name__ == "__main__":
    main()
