"""Device-family mapping benchmark: messages/s and readings/s through the mapping layer and validation.

Run:  .venv/bin/python benchmarks/sources_bench.py [--rows N]

For each shipped family, the demo's device encoders (`citywatch.device_formats`) turn N simulated
rows of the family's registry sensor into the messages that device publishes (Tasmota JSON, ESPHome
plain text, TTN/ChirpStack uplinks, Zigbee2MQTT, Sensor.Community, Sparkplug B protobuf, Frigate
events); the benchmark then times `Validator.validate` on them in batches of 1,000 messages, as the
engine calls it: topic rules, decoding, selectors, metric table, units, clock, registry checks and
the columnar batch. It prints messages/s, readings/s and the share of rejected messages.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import structlog

from citywatch.config import ValidationConfig
from citywatch.device_formats import DeviceFormats
from citywatch.ingest.sources.mapper import SourceMapper, load_profiles
from citywatch.ingest.sources.profile import FAMILIES
from citywatch.ingest.topics import TopicPattern
from citywatch.ingest.validate import Validator
from citywatch.registry import Registry, SeriesIndex
from citywatch.simulator import Simulator
from citywatch.stats import Stats

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000, help="simulated rows (reporting intervals) per family (default 2000)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    registry = Registry.load(REPO / "config" / "sensors" / "bienhoa.yaml")
    profiles = load_profiles(FAMILIES)
    formats = DeviceFormats(registry.sensors.values(), profiles)
    print(f"{'family':<18}{'messages':>10}{'readings':>10}{'msg/s':>12}{'readings/s':>12}{'rejected':>10}")
    for sensor_id, enc in sorted(formats.encoders.items(), key=lambda kv: FAMILIES.index(kv[1].family)):
        interval_ms = int(registry.get(sensor_id).interval * 1000)
        start_ms = (int(time.time()) - 86400) // 60 * 60_000
        sim = Simulator(registry, seed=1, start=start_ms / 1000, sensors=[sensor_id], device_formats=True)
        ts_ms, vals = sim.readings(sensor_id, start_ms / 1000, (start_ms + args.rows * interval_ms) / 1000)
        vals = {m: v for m, v in vals.items() if m in enc.metrics}
        messages = [*enc.births(), *enc.encode(np.arange(len(ts_ms)), ts_ms, vals)]
        series = SeriesIndex(registry)
        series.add_registry()
        stats = Stats()
        validator = Validator(registry, series, ValidationConfig(max_age=10 * 86400.0), TopicPattern(
            "city/{domain}/{sensor}/telemetry"), stats, sources=SourceMapper(profiles, registry, stats))
        # each message arrives a second after the newest reading it carries
        first = (int(ts_ms[0]) + 1000) * 1_000_000
        timed = [(m.topic, m.payload, max(first, (m.time_ms + 1000) * 1_000_000)) for m in messages]
        batches = [timed[i:i + 1000] for i in range(0, len(timed), 1000)]
        readings = rejected = 0
        t0 = time.perf_counter()
        for b in batches:
            batch, rejections = validator.validate(b)
            readings += len(batch)
            rejected += len(rejections)
        for record in validator.sources.tick(timed[-1][2] + 120 * 1_000_000_000):  # Frigate's last intervals
            readings += len(record.readings)
        elapsed = time.perf_counter() - t0
        print(f"{enc.family:<18}{len(messages):>10}{readings:>10}{len(messages) / elapsed:>12,.0f}"
              f"{readings / elapsed:>12,.0f}{rejected:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
