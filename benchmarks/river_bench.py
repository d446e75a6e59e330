"""Detector-kernel throughput: the default profile (`AnomalyScore`) against River's per-sample detectors.

    python benchmarks/river_bench.py [--series 10000] [--steps 200] [--steps-per-batch 10]
                                     [--river-series 500] [--river-steps 200]

One stream of readings over `series` series (a daily cycle, noise, rare spikes and level shifts),
one reading per series per step, fed to the default profile in micro-batches of
`steps-per-batch` steps (sorted by series and time, as the engine hands them over). Reported:
reading-updates per second of `AnomalyScore.process` (warm-up batches excluded), and its state in
bytes per series (every per-series state array).

River (benchmark-only dependency, the `bench` extra) updates one sample at a time, one detector
object per series. Running it over the whole stream would take far too long, so it runs on the
first `river-series` series for `river-steps` steps of the same stream (score_one then learn_one
per reading), and its time per update is extrapolated to the full stream; the output says so.
Three River detectors: `anomaly.GaussianScorer` (its detector for a univariate stream), a z-score
on `stats.EWMean` / `stats.EWVar` (about the cheapest per-sample detector River allows) and
`anomaly.HalfSpaceTrees` behind a `MinMaxScaler` (its usual streaming anomaly detector; about 100
times slower per update, so timed on a tenth of the subsample).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.anomaly_score import AnomalyScore
from citywatch.registry import Registry, SeriesIndex

STEP_NS = 60 * 1_000_000_000
RIVER_GRACE = 100


def make_stream(n_series: int, n_steps: int, seed: int = 0) -> np.ndarray:
    """(steps, series) values: a daily cycle per series, noise, 0.1 % spikes, a few level shifts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    base = rng.uniform(10, 100, n_series)[None, :]
    amp = rng.uniform(0.05, 0.3, n_series)[None, :] * base
    phase = rng.uniform(0, 2 * np.pi, n_series)[None, :]
    values = base + amp * np.sin(2 * np.pi * t / 1440 + phase) + rng.normal(0, 1, (n_steps, n_series)) * 0.05 * base
    spikes = rng.random((n_steps, n_series)) < 0.001
    values[spikes] += 8 * 0.05 * base.repeat(n_steps, 0)[spikes]
    shift_at = rng.integers(n_steps // 2, n_steps, n_series)
    shifted = (rng.random(n_series) < 0.01)[None, :] & (t >= shift_at[None, :])
    return values + np.where(shifted, 0.5 * base, 0.0)


def series_index(n_series: int) -> SeriesIndex:
    registry = Registry({})
    index = SeriesIndex(registry)
    for i in range(n_series):
        index.add(registry.auto_register(f"bench-{i:05d}", "air"), "value")
    return index


def state_bytes_per_series(detector: AnomalyScore, n_series: int) -> float:
    return sum(v[:n_series].nbytes for v in detector.state.values()) / n_series


def bench_citywatch(values: np.ndarray, steps_per_batch: int, warmup_batches: int) -> tuple[float, int, float]:
    n_steps, n_series = values.shape
    index = series_index(n_series)
    detector = AnomalyScore(index)
    series_ids = np.arange(n_series, dtype=np.int32)
    batches = []
    for start in range(0, n_steps, steps_per_batch):
        k = min(steps_per_batch, n_steps - start)
        # Sorted by (series, time): series-major over the k steps.
        s = np.repeat(series_ids, k)
        step = np.tile(np.arange(start, start + k), n_series)
        batches.append(ReadingBatch.from_columns(s, step.astype(np.int64) * STEP_NS, values[start: start + k].T.ravel()))
    for b in batches[:warmup_batches]:
        detector.process(b)
    timed = batches[warmup_batches:]
    t0 = time.perf_counter()
    for b in timed:
        detector.process(b)
    elapsed = time.perf_counter() - t0
    updates = sum(len(b) for b in timed)
    return updates / elapsed, updates, state_bytes_per_series(detector, n_series)


def bench_river(values: np.ndarray, warmup_steps: int, make_detector, score_and_learn) -> tuple[float, int, float]:
    """Per-sample River detectors, one per series: warm-up steps untimed, then the rest timed."""
    n_steps, n_series = values.shape
    detectors = [make_detector() for _ in range(n_series)]
    rows = values.tolist()
    for row in rows[:warmup_steps]:
        for det, x in zip(detectors, row):
            score_and_learn(det, x)
    t0 = time.perf_counter()
    for row in rows[warmup_steps:]:
        for det, x in zip(detectors, row):
            score_and_learn(det, x)
    elapsed = time.perf_counter() - t0
    updates = (n_steps - warmup_steps) * n_series
    return updates / elapsed, updates, float(np.mean([len(pickle.dumps(d)) for d in detectors[:50]]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Default profile vs River: reading-updates per second on one stream.")
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=300, help="readings per series (default 300: 3M updates)")
    ap.add_argument("--steps-per-batch", type=int, default=10, help="steps per micro-batch (default 10: 100k readings)")
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of the citywatch detector, fresh state each (median)")
    ap.add_argument("--river-series", type=int, default=500, help="series River runs on (a subsample)")
    ap.add_argument("--river-steps", type=int, default=200, help="timed steps River runs for, after its warm-up")
    args = ap.parse_args(argv)
    try:
        from river import anomaly, compose, preprocessing, stats
    except ImportError:
        print("river_bench: River is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2

    values = make_stream(args.series, args.steps)
    runs = [bench_citywatch(values, args.steps_per_batch, args.warmup_batches) for _ in range(args.repeat)]
    rates = sorted(r[0] for r in runs)
    cw_rate, cw_updates, cw_bytes = float(np.median(rates)), runs[0][1], runs[0][2]
    print(f"citywatch AnomalyScore (default profile): {cw_rate:,.0f} updates/s, median of {args.repeat} runs "
          f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f}; {cw_updates:,} timed updates over {args.series:,} series, "
          f"{args.steps_per_batch * args.series:,} readings per batch); state {cw_bytes:,.0f} bytes per series")

    river_warmup = RIVER_GRACE  # past GaussianScorer's grace period, where it starts scoring
    river_values = values if args.steps >= river_warmup + args.river_steps else make_stream(args.series, river_warmup + args.river_steps)

    def gaussian_step(det, x):
        det.score_one(None, x)
        det.learn_one(None, x)

    def make_ewz():
        return (stats.EWMean(fading_factor=0.01), stats.EWVar(fading_factor=0.01))

    def ewz_step(det, x):
        mean, var = det
        sd = var.get() ** 0.5
        _ = abs(x - mean.get()) / sd if sd > 0 else 0.0
        mean.update(x)
        var.update(x)

    def make_hst():
        return compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42))

    def hst_step(det, x):
        features = {"value": x}
        det.score_one(features)
        det.learn_one(features)

    hst_series = max(1, args.river_series // 10)  # about 100x slower per update: a smaller subsample
    for name, make, step, n_sub in (
            ("river anomaly.GaussianScorer", lambda: anomaly.GaussianScorer(grace_period=RIVER_GRACE), gaussian_step,
             args.river_series),
            ("river stats.EWMean/EWVar z-score", make_ewz, ewz_step, args.river_series),
            ("river MinMaxScaler|anomaly.HalfSpaceTrees", make_hst, hst_step, hst_series)):
        sub = river_values[: river_warmup + args.river_steps, :n_sub]
        note = (f"measured on {n_sub:,} of the {args.series:,} series x {args.river_steps} steps of the same "
                f"stream after {river_warmup} warm-up steps; per-update time extrapolated to the full stream")
        rate, updates, pickled = bench_river(sub, river_warmup, make, step)
        print(f"{name}: {rate:,.0f} updates/s ({note}; {updates:,} updates timed); "
              f"pickled state ~{pickled:,.0f} bytes per series")
        print(f"  ratio citywatch / {name.split()[1]}: {cw_rate / rate:,.1f}x; full stream of {cw_updates:,} updates: "
              f"citywatch {cw_updates / cw_rate:.2f} s, River ~{cw_updates / rate:,.0f} s (extrapolated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
