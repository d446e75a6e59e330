"""Data-quality detectors (stuck, spike, drift, no data) on 10,000 series: throughput and state.

Each detector runs warm on micro-batches of 1 reading per series (10,000 readings: the shape of a
live batch) and of 20 readings per series (200,000 readings: a backlog); NoDataDetector observes the
same batches and checks the 10,000 sensors. Prints reading-updates per second and the
state kept per series.

Run:  .venv/bin/python benchmarks/quality_bench.py
"""
import time

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.drift import DriftDetector
from citywatch.detectors.no_data import NoDataDetector
from citywatch.detectors.spike import SpikeDetector
from citywatch.detectors.stuck import StuckDetector
from citywatch.registry import Registry, RegistryFile, SeriesIndex

N_SERIES = 10_000
rng = np.random.default_rng(0)
# Sensors on a 100 x 100 grid about 300 m apart, so that each has neighbours for the drift check.
doc = {"sensors": [{"id": f"aq-{i}", "domain": "air", "area": "A", "lat": 10.8 + 0.003 * (i // 100),
                    "lon": 106.7 + 0.003 * (i % 100), "interval": 60,
                    "metrics": {"no2": {"unit": "ug/m3", "min": 0, "max": 2000}}} for i in range(N_SERIES)]}
series = SeriesIndex(Registry({x.id: x for x in RegistryFile.model_validate(doc).sensors}))
series.add_registry()


def batch(per_series: int, start: int) -> ReadingBatch:
    sid = np.repeat(np.arange(N_SERIES), per_series)
    ts = (start + np.tile(np.arange(per_series), N_SERIES)) * 60 * 10**9
    value = np.round(40 + rng.normal(0, 3, len(sid)), 1)
    return ReadingBatch.from_columns(sid, ts, value)


def state_bytes(det) -> int:
    return sum(np.dtype(dtype).itemsize for dtype, _ in det.state_fields.values())


for make in (StuckDetector, SpikeDetector, DriftDetector):
    t = time.perf_counter()
    det = make(series)
    built = time.perf_counter() - t
    clock = 0
    det.process(batch(50, clock))  # warm up
    clock += 50
    print(f"{det.name}: {state_bytes(det)} bytes of state per series (built in {built:.2f} s)")
    for per_series in (1, 20):
        runs = []
        for _ in range(3):
            b = batch(per_series, clock)
            clock += per_series
            t = time.perf_counter()
            det.process(b)
            runs.append(time.perf_counter() - t)
        best = min(runs)
        print(f"  {per_series:3d} reading(s) per series: {len(b) / best:12,.0f} readings/s "
              f"({best * 1000:.1f} ms per batch of {len(b):,})")

nodata = NoDataDetector(series, start_ns=0)
b = batch(1, 0)
t = time.perf_counter()
nodata.observe(b)
observe = time.perf_counter() - t
t = time.perf_counter()
nodata.check(int(b.ts.max()))
check = time.perf_counter() - t
per_sensor = sum(v.itemsize for v in nodata.state.values())
print(f"no_data: {per_sensor} bytes of state per sensor; observe {observe * 1000:.1f} ms per 10,000 readings, "
      f"check {check * 1000:.1f} ms for 10,000 sensors")
