"""Detector throughput: physical range + QCVN thresholds on one batch of 1,000,000 readings over 10,000 series.

Run:  .venv/bin/python benchmarks/detector_bench.py   (also part of `make bench`)
"""
import time, numpy as np
from citywatch.config import DetectorsConfig
from citywatch.detectors import build_detectors, qcvn05_2023_air_rules
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.batch import ReadingBatch
doc={"sensors":[{"id":f"aq-{i}","domain":"air","area":"A","lat":11,"lon":107,"interval":60,"metrics":{"no2":{"unit":"ug/m3","min":0,"max":2000}}} for i in range(10000)]}
s=SeriesIndex(Registry({x.id:x for x in RegistryFile.model_validate(doc).sensors})); s.add_registry()
dets=build_detectors(s, DetectorsConfig(thresholds=qcvn05_2023_air_rules()))
rng=np.random.default_rng(0); n=1_000_000
b=ReadingBatch.from_columns(rng.integers(0,10000,n), np.arange(n)*1000, rng.uniform(0,300,n)).sorted_by_series_time()
for k in range(3):
    t=time.perf_counter(); skip=None
    for d in dets:
        o=d.process(b, skip=skip); skip=o.level==2 if d.name=="physical_range" else skip
    print(f"{time.perf_counter()-t:.3f} s per 1M readings / 10k series")
