"""Private Mosquitto and InfluxDB 1.x instances on free loopback ports, for the demo, tests and benchmarks.

Each instance runs as a child process with its data in a directory of its own, so nothing depends on
(or disturbs) a system service.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEBIAN_PACKAGES = {"mosquitto": "mosquitto", "influxd": "influxdb"}
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin"])


class ServiceError(RuntimeError):
    pass


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def missing_binaries() -> list[str]:
    return [name for name in DEBIAN_PACKAGES if find_binary(name) is None]


def install_command(missing: list[str]) -> str:
    pkgs = " ".join(sorted({DEBIAN_PACKAGES[m] for m in missing}))
    return f"apt-get update && apt-get install -y {pkgs}"


def ensure_binaries(auto_install: bool = True) -> None:
    """Install the Debian packages when missing and running as root; otherwise explain how."""
    missing = missing_binaries()
    if not missing:
        return
    cmd = install_command(missing)
    if auto_install and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["sh", "-c", cmd], check=True, env=env)
        if not missing_binaries():
            return
    raise ServiceError(f"missing {', '.join(missing)}; install with:  sudo sh -c '{cmd}'")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode}; log:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"port {port} not open after {timeout}s; log:\n{log.read_text(errors='replace')[-2000:]}")


@dataclass
class _Process:
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "service.log"
        if not self.port:
            self.port = free_port()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str]) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class Mosquitto(_Process):
    """A private broker. Queues are raised well above mosquitto's defaults (1000 queued, 20 in flight),
    which would otherwise drop QoS 1 messages for a consumer that is briefly behind.

    With `password_file`, anonymous clients are refused; with `tls` = (ca, cert, key) a second
    listener on `tls_port` speaks MQTT over TLS.
    """

    extra_config: str = ""
    persistence: bool = False
    password_file: Path | None = None
    tls: tuple[Path, Path, Path] | None = None
    tls_port: int = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "max_packet_size 2000000",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            if not self.tls_port:
                self.tls_port = free_port()
            ca, cert, key = self.tls
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # keep access to this instance's private files
        lines.append(self.extra_config)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        binary = find_binary("mosquitto")
        if binary is None:
            raise ServiceError(f"mosquitto not found; install with: {install_command(['mosquitto'])}")
        self._spawn([binary, "-c", str(self.write_config())])
        _wait_port(self.port, self.proc, timeout, self.log_path)
        if self.tls is not None:
            _wait_port(self.tls_port, self.proc, timeout, self.log_path)


@dataclass
class InfluxDB(_Process):
    """A private InfluxDB 1.x with every data path and both bind addresses (HTTP and RPC) rewritten."""

    rpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, binary: str) -> Path:
        if not self.rpc_port:
            self.rpc_port = free_port()
        default = subprocess.run([binary, "config"], capture_output=True, text=True, check=True).stdout
        conf = default.replace("/var/lib/influxdb", str(self.workdir))
        conf = re.sub(r'bind-address = "127\.0\.0\.1:8088"', f'bind-address = "127.0.0.1:{self.rpc_port}"', conf)
        conf = re.sub(r'bind-address = ":8086"', f'bind-address = "127.0.0.1:{self.port}"', conf)
        conf = re.sub(r"reporting-disabled = false", "reporting-disabled = true", conf)
        conf = re.sub(r"query-log-enabled = true", "query-log-enabled = false", conf)
        conf = re.sub(r"log-enabled = true", "log-enabled = false", conf)
        conf = re.sub(r'(\[monitor\][^\[]*?store-enabled = )true', r"\1false", conf, flags=re.S)
        path = self.workdir / "influxdb.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 30.0) -> None:
        binary = find_binary("influxd")
        if binary is None:
            raise ServiceError(f"influxd not found; install with: {install_command(['influxd'])}")
        self._spawn([binary, "-config", str(self.write_config(binary))])
        _wait_port(self.port, self.proc, timeout, self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServiceError("influxd did not answer /ping")

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> dict:
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        r = httpx.post(f"{self.url}/query", data=params, timeout=30)
        r.raise_for_status()
        return r.json()
