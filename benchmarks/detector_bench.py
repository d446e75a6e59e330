"""Detector throughput on 10,000 series.

1. Physical range + QCVN thresholds on one batch of 1,000,000 readings.
2. The default anomaly profile (`AnomalyScore`): reading-updates/s once warm, for micro-batches of
   100 readings per series (1,000,000 readings) and of 1 reading per series (10,000 readings, the
   shape of a live one-second batch), and the state it keeps per series.

Run:  .venv/bin/python benchmarks/detector_bench.py   (also part of `make bench`)
"""
import time

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.config import DetectorsConfig
from citywatch.detectors import build_detectors, qcvn05_2023_air_rules
from citywatch.detectors.anomaly_score import AnomalyScore
from citywatch.registry import Registry, RegistryFile, SeriesIndex

N_SERIES = 10_000
doc = {"sensors": [{"id": f"aq-{i}", "domain": "air", "area": "A", "lat": 11, "lon": 107, "interval": 60,
                    "metrics": {"no2": {"unit": "ug/m3", "min": 0, "max": 2000}}} for i in range(N_SERIES)]}
s = SeriesIndex(Registry({x.id: x for x in RegistryFile.model_validate(doc).sensors}))
s.add_registry()
rng = np.random.default_rng(0)

print("physical range + thresholds")
dets = build_detectors(s, DetectorsConfig(thresholds=qcvn05_2023_air_rules()))
n = 1_000_000
b = ReadingBatch.from_columns(rng.integers(0, N_SERIES, n), np.arange(n) * 1000, rng.uniform(0, 300, n)).sorted_by_series_time()
for k in range(3):
    t = time.perf_counter()
    skip = None
    for d in dets:
        o = d.process(b, skip=skip)
        skip = o.level == 2 if d.name == "physical_range" else skip
    print(f"  {time.perf_counter() - t:.3f} s per 1M readings / 10k series")


def stream(det: AnomalyScore, per_series: int, start: int) -> ReadingBatch:
    """`per_series` readings of every series, from step `start` on: noisy levels of their own scale."""
    sid = np.repeat(np.arange(N_SERIES, dtype=np.int32), per_series)
    step = np.tile(np.arange(start, start + per_series), N_SERIES)
    level = 10.0 + (np.arange(N_SERIES) % 97)[sid]
    value = level * (1.0 + 0.1 * np.sin(step / 50.0)) + rng.normal(0, 1, len(sid))
    return ReadingBatch.from_columns(sid, step * 60 * 10**9, value)


print("default anomaly profile (AnomalyScore)")
det = AnomalyScore(s)
step = 0
warm = stream(det, 200, step)  # past the warm-up, so that the timed batches take the steady path
det.process(warm)
step += 200
for per_series in (100, 1):
    rates = []
    for k in range(5 if per_series == 100 else 50):
        batch = stream(det, per_series, step)
        step += per_series
        t = time.perf_counter()
        det.process(batch)
        rates.append(len(batch) / (time.perf_counter() - t))
    print(f"  batches of {per_series * N_SERIES:>9,} readings ({per_series} per series): "
          f"median {np.median(rates) / 1e6:.2f} M reading-updates/s (best {max(rates) / 1e6:.2f})")
snap = det.snapshot()
state = sum(v.nbytes for k, v in snap.items() if not k.startswith("__"))
print(f"  state: {state / N_SERIES:.0f} bytes per series ({len(det.state_fields)} float64 fields)")
