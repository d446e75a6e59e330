"""Live VN_WQI / QCVN 08 stage throughput, on synthetic water stations (no broker, no database).

N water stations (sonde every 5 minutes: pH, temperature, DO, N-NH4; weekly lab samples of BOD5,
COD, P-PO4 and coliform), a week of event time, fed to `WaterQuality.process` in micro-batches of
`BATCH` readings: readings per second through the stage, station-hours per second, the points and
alerts written, and the snapshot size.

Run:  .venv/bin/python benchmarks/water_index_bench.py [stations]
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.water_index import WaterQuality

HOUR_NS = 3_600_000_000_000
STEP_NS = 300 * 1_000_000_000
T0 = 1_780_246_800 * 1_000_000_000  # 2026-06-01 00:00 local
DAYS = 7
BATCH = 5000
PROBES = {"pH": (7.0, 0.3), "temperature": (29.0, 0.8), "dissolvedOxygen": (5.8, 0.9), "NH4": (0.3, 0.1)}
LABS = {"BOD5": (6.0, 2.0), "COD": (15.0, 5.0), "PO4": (0.15, 0.05), "coliform": (4000.0, 1500.0)}


def registry(n: int) -> Registry:
    metrics = {m: {"unit": "MPN/100mL" if m == "coliform" else "pH" if m == "pH" else "Cel" if m == "temperature"
                   else "mg/L"} for m in {**PROBES, **LABS}}
    doc = {"profiles": {"sonde": {"domain": "water", "interval": "300s", "metrics": metrics}},
           "sensors": [{"id": f"wq-{i:05d}", "domain": "water", "area": f"area-{i % 50}", "lat": 10.9, "lon": 106.8,
                        "profile": "sonde"} for i in range(n)]}
    parsed = RegistryFile.model_validate(doc)
    return Registry({s.id: s for s in parsed.sensors})


def readings(series: SeriesIndex, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = DAYS * 24 * 12
    ts = T0 + np.arange(steps, dtype=np.int64) * STEP_NS
    cols_s, cols_t, cols_v = [], [], []
    for i in range(n):
        sid = f"wq-{i:05d}"
        for m, (mu, sd) in PROBES.items():
            cols_s.append(np.full(steps, series.get(sid, m)))
            cols_t.append(ts)
            cols_v.append(np.abs(rng.normal(mu, sd, steps)))
        sample_ts = T0 + (i % 7) * 24 * HOUR_NS + 2 * HOUR_NS + np.arange(DAYS // 7 + 1) * 7 * 24 * HOUR_NS
        sample_ts = sample_ts[sample_ts < ts[-1]]
        for m, (mu, sd) in LABS.items():
            cols_s.append(np.full(len(sample_ts), series.get(sid, m)))
            cols_t.append(sample_ts)
            cols_v.append(np.abs(rng.normal(mu, sd, len(sample_ts))))
    s, t, v = np.concatenate(cols_s), np.concatenate(cols_t), np.concatenate(cols_v)
    order = np.argsort(t, kind="stable")
    return s[order], t[order], v[order]


def main(n: int) -> None:
    reg = registry(n)
    series = SeriesIndex(reg)
    series.add_registry()
    s, t, v = readings(series, n, np.random.default_rng(1))
    stage = WaterQuality(series)
    lines = events = 0
    start = time.perf_counter()
    for a in range(0, len(s), BATCH):
        batch = ReadingBatch.from_columns(s[a:a + BATCH], t[a:a + BATCH], v[a:a + BATCH]).sorted_by_series_time()
        out = stage.process(batch)
        lines += len(out[0])
        events += len(out[1])
    out = stage.process_quiet(int(t[-1]) + HOUR_NS)
    elapsed = time.perf_counter() - start
    wqi = n * DAYS * 24 - int(stage.refused.sum())
    buf = io.BytesIO()
    np.savez(buf, **stage.snapshot())
    print(f"stations: {n}, event time: {DAYS} days, readings: {len(s):,}, micro-batches of {BATCH}")
    print(f"stage time: {elapsed:.2f} s -> {len(s) / elapsed:,.0f} readings/s, "
          f"{n * DAYS * 24 / elapsed:,.0f} station-hours/s")
    print(f"points written: {lines + len(out[0]):,} (about {wqi:,} station-hours with a VN_WQI, "
          f"{int(stage.refused.sum()):,} refused by the data rules), alerts: {events + len(out[1]):,}")
    print(f"snapshot: {buf.tell() / 1024:,.0f} KiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
