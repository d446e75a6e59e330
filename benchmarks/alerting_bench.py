"""Alert manager throughput and damping, on synthetic level changes (no broker, no database).

1. An incident storm: 2,000 sensors in 100 areas; every sensor's NO2 goes critical, then ok, within an
   hour of event time, in micro-batches of 500 level changes: level changes per second through
   `AlertManager.ingest`, notifications sent (grouped per area), and the state file's size and save time.
2. Flapping: 500 sensors changing level every 30 s for an hour (60,000 level changes): notifications
   with flap damping and hold-down, against one per change without them.

Run:  .venv/bin/python benchmarks/alerting_bench.py [state-file-directory]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from citywatch.alerting.grouping import SensorDirectory
from citywatch.alerting.lifecycle import AlertingConfig, AlertManager
from citywatch.alerts import AlertEvent

S = 1_000_000_000
T0 = 1_764_205_200 * S


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.alerts = 0

    def deliver(self, notifications) -> None:
        self.count += len(notifications)
        self.alerts += sum(len(n.alerts) for n in notifications)


def event(sensor: str, area: str, level: str, t_ns: int) -> AlertEvent:
    return AlertEvent(sensor=sensor, domain="air", area=area, metric="no2", detector="threshold", level=level,
                      previous_level="ok", value=250.0 if level != "ok" else 100.0, threshold=200.0, score=1.0,
                      ts_ns=t_ns, reason="above_crit")


def storm(state_dir: Path) -> None:
    n_sensors, n_areas, batch = 2000, 100, 500
    sensors = {f"aq-{i:04d}": ("air", f"area-{i % n_areas}", 10.9 + (i % n_areas) * 0.05, 106.8)
               for i in range(n_sensors)}
    cfg = AlertingConfig.model_validate({"storm": {"max_per_window": 1000000}, "repeat_interval": "0s"})
    sink = CountingSink()
    m = AlertManager(cfg, sink=sink, directory=SensorDirectory(sensors), state_file=None)
    events = []
    for i, (sid, (_, area, _, _)) in enumerate(sensors.items()):
        start = T0 + (i % 600) * S
        events.append(event(sid, area, "critical", start))
        events.append(event(sid, area, "ok", start + 1800 * S))
    events.sort(key=lambda e: e.ts_ns)
    t = time.perf_counter()
    for k in range(0, len(events), batch):
        chunk = events[k:k + batch]
        m.ingest(chunk, event_now_ns=chunk[-1].ts_ns)
    m.tick(event_now_ns=events[-1].ts_ns + 3600 * S)
    elapsed = time.perf_counter() - t
    print(f"storm: {len(events)} level changes over {n_sensors} sensors in {elapsed:.2f} s "
          f"= {len(events) / elapsed:,.0f} changes/s; {sink.count} notifications listing {sink.alerts} alerts")
    m.state_file = state_dir / "alerting-state.json"
    t = time.perf_counter()
    m.save()
    print(f"storm: state file {m.state_file.stat().st_size / 1024:.0f} KiB written in "
          f"{(time.perf_counter() - t) * 1000:.1f} ms ({len(m.state_dict()['tracks'])} keys, "
          f"{len(m.state_dict()['sent'])} sent ids)")


def flapping() -> None:
    n_sensors, period = 500, 30
    # areas of their own, 11 km or more apart: nothing to group
    sensors = {f"aq-{i:04d}": ("air", f"area-{i}", 10.0 + (i % 50) * 0.1, 106.0 + (i // 50) * 0.1)
               for i in range(n_sensors)}
    steps = 3600 // period
    for label, cfg in (("damped (flapping + 5 min hold-down)", {}),
                       ("undamped", {"flapping": {"enabled": False}, "defaults": {"resolve_for": "0s"},
                                     "grouping": {"group_wait": "0s"}})):
        sink = CountingSink()
        m = AlertManager(AlertingConfig.model_validate({**cfg, "storm": {"max_per_window": 1000000},
                                                        "repeat_interval": "0s"}),
                         sink=sink, directory=SensorDirectory(sensors))
        t = time.perf_counter()
        for step in range(steps):
            level = "critical" if step % 2 == 0 else "ok"
            ts = T0 + step * period * S
            m.ingest([event(sid, area, level, ts) for sid, (_, area, _, _) in sensors.items()], event_now_ns=ts)
        elapsed = time.perf_counter() - t
        changes = n_sensors * steps
        print(f"flapping, {label}: {changes} level changes -> {sink.count} notifications "
              f"({sink.count / n_sensors:.1f} per sensor) in {elapsed:.2f} s")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    storm(out)
    flapping()
