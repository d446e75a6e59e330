"""Event-time bucket means: known answers, batch splitting, late readings, flush, snapshot/restore."""

from __future__ import annotations

import doctest
from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch.batch import FLAG_LATE, ReadingBatch
from citywatch.detectors import bucket_means
from citywatch.detectors.bucket_means import BucketMeans
from citywatch.registry import Registry, RegistryFile, SeriesIndex

H = 3_600_000_000_000


def make_series(n_sensors: int = 3, order=None) -> SeriesIndex:
    doc = {"sensors": [{"id": f"aq-{i}", "domain": "air", "area": "A", "lat": 11, "lon": 107, "interval": 60,
                        "metrics": {"pm25": {"unit": "ug/m3"}}} for i in range(n_sensors)]}
    sensors = RegistryFile.model_validate(doc).sensors
    if order is not None:
        sensors = [sensors[i] for i in order]
    idx = SeriesIndex(Registry({s.id: s for s in sensors}))
    idx.add_registry()
    return idx


def as_tuples(b) -> list[tuple]:
    return list(zip(b.series.tolist(), b.start_ns.tolist(), np.round(b.mean, 9).tolist(), b.count.tolist()))


def test_doctest():
    assert doctest.testmod(bucket_means).failed == 0


def test_known_hours_and_carry_across_batches():
    agg = BucketMeans(make_series())
    first = agg.update(ReadingBatch.from_columns([0, 0, 1], [10, H - 1, 5], [1.0, 3.0, 7.0]))
    assert len(first) == 0  # nothing has closed yet
    second = agg.update(ReadingBatch.from_columns([0, 0, 1, 1], [H + 1, 3 * H, H, 2 * H], [5.0, 6.0, 8.0, 9.0]))
    assert as_tuples(second) == [(0, 0, 2.0, 2), (0, H, 5.0, 1), (1, 0, 7.0, 1), (1, H, 8.0, 1)]
    assert as_tuples(agg.flush(3 * H)) == [(1, 2 * H, 9.0, 1)]  # series 0's hour 3 is still open
    assert as_tuples(agg.flush(4 * H)) == [(0, 3 * H, 6.0, 1)]
    assert len(agg.flush(10 * H)) == 0


def test_late_duplicate_and_nan_readings_are_left_out():
    agg = BucketMeans(make_series())
    batch = ReadingBatch.from_columns([0, 0, 0, 0], [1, 2, 3, H], [10.0, 1000.0, np.nan, 1.0],
                                      [0, FLAG_LATE, 0, 0])
    assert as_tuples(agg.update(batch)) == [(0, 0, 10.0, 1)]


def reference(rows):
    """Plain-Python bucket means of in-order readings, all buckets (closed or not)."""
    acc = defaultdict(lambda: [0.0, 0])
    for s, t, v in rows:
        acc[(s, t // H)][0] += v
        acc[(s, t // H)][1] += 1
    return sorted((s, b * H, round(tot / n, 9), n) for (s, b), (tot, n) in acc.items())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 60), st.floats(-1e3, 1e3)), min_size=1, max_size=80),
       st.lists(st.integers(1, 79), max_size=6))
def test_any_split_into_batches_equals_one_pass(steps, cuts):
    # strictly increasing times per series (what the engine's watermarks guarantee for in-order rows)
    clock = defaultdict(int)
    rows = []
    for s, dt_min, v in steps:
        clock[s] += dt_min * 60_000_000_000
        rows.append((s, clock[s], v))
    agg = BucketMeans(make_series())
    closed = []
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    for a, b in zip(bounds, bounds[1:]):
        part = sorted(rows[a:b], key=lambda r: (r[0], r[1]))
        # a later batch may hold an earlier time of another series only: per series, time only grows
        batch = ReadingBatch.from_columns([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
        closed += as_tuples(agg.update(batch))
    closed += as_tuples(agg.flush(10**18))
    assert sorted(closed) == reference(rows)


def test_snapshot_restore_with_other_series_order():
    agg = BucketMeans(make_series())
    agg.update(ReadingBatch.from_columns([0, 2], [1, 2], [4.0, 6.0]))
    snap = agg.snapshot()
    restored = BucketMeans(make_series(order=[2, 0, 1]))  # aq-2 is now series 0, aq-0 is series 1
    restored.restore(snap)
    out = restored.update(ReadingBatch.from_columns([0, 1], [H, H], [0.0, 0.0]))
    assert as_tuples(out) == [(0, 0, 6.0, 1), (1, 0, 4.0, 1)]
