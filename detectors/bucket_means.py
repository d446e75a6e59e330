"""Event-time means per series over fixed buckets (hourly by default): what the official indices eat.

Regulations are written on means: VN_AQI and QCVN 05 on 1-hour means, rolling 8 h and 24 h means
built from them. `BucketMeans` keeps, per series, the open bucket (its start, the running sum and
count) and closes it when a reading of a later bucket arrives, or when `flush` is told that event
time has moved past its end (a sensor that went silent). The whole micro-batch is reduced at once:
runs of equal (series, bucket) in the (series, time)-sorted batch are summed with `np.add.reduceat`.

Readings flagged LATE or DUPLICATE, and NaN values, are left out: a bucket is closed once, and a
closed bucket is never reopened.

>>> import numpy as np
>>> from citywatch.batch import ReadingBatch
>>> from citywatch.registry import Registry, RegistryFile, SeriesIndex
>>> reg = RegistryFile.model_validate({"sensors": [{"id": "aq-1", "domain": "air", "area": "A", "lat": 11, "lon": 107,
...     "interval": 60, "metrics": {"pm25": {"unit": "ug/m3"}}}]})
>>> series = SeriesIndex(Registry({s.id: s for s in reg.sensors})); series.add_registry()
>>> hourly = BucketMeans(series)
>>> H = 3_600_000_000_000
>>> closed = hourly.update(ReadingBatch.from_columns([0, 0, 0], [0, H // 2, H], [10.0, 20.0, 40.0]))
>>> closed.start_ns.tolist(), closed.mean.tolist(), closed.count.tolist()
([0], [15.0], [2])
>>> hourly.flush(2 * H).mean.tolist()
[40.0]

It has no options of its own: the indices that use it fix the bucket (one hour).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.base import Detector, SeriesState
from citywatch.registry import SeriesIndex


@dataclass(slots=True)
class Buckets:
    """Closed buckets, sorted by (series, start)."""

    series: np.ndarray  # int32
    start_ns: np.ndarray  # int64: bucket start (event time)
    mean: np.ndarray  # float64
    count: np.ndarray  # int64: readings in the bucket

    @classmethod
    def empty(cls) -> "Buckets":
        return cls(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.series)


class BucketMeans(SeriesState):
    state_fields = {"bucket": (np.int64, -1), "total": (np.float64, 0.0), "count": (np.int64, 0)}

    def __init__(self, series: SeriesIndex, bucket_seconds: int = 3600) -> None:
        super().__init__(series)
        self.bucket_ns = int(bucket_seconds) * 1_000_000_000

    def update(self, batch: ReadingBatch) -> Buckets:
        """Add a (series, ts)-sorted batch; return the buckets it closed."""
        self._grow()
        rows = Detector.in_order(batch) & np.isfinite(batch.value)
        s, v = batch.series[rows], batch.value[rows]
        b = batch.ts[rows] // self.bucket_ns
        n = len(s)
        if n == 0:
            return Buckets.empty()
        new_run = np.ones(n, bool)
        new_run[1:] = (s[1:] != s[:-1]) | (b[1:] != b[:-1])
        starts = np.flatnonzero(new_run)
        run_s, run_b = s[starts], b[starts]
        run_sum = np.add.reduceat(v, starts)
        run_n = np.diff(np.append(starts, n))
        first = np.ones(len(starts), bool)
        first[1:] = run_s[1:] != run_s[:-1]
        last = np.ones(len(starts), bool)
        last[:-1] = first[1:]

        bucket, total, count = self.state["bucket"], self.state["total"], self.state["count"]
        carried = bucket[run_s]
        merge = first & (run_b == carried)
        run_sum[merge] += total[run_s[merge]]
        run_n[merge] += count[run_s[merge]]
        closes_carried = first & (run_b != carried) & (carried >= 0)
        cs = run_s[closes_carried]
        closed = Buckets(
            np.concatenate([cs, run_s[~last]]).astype(np.int32),
            np.concatenate([bucket[cs], run_b[~last]]) * self.bucket_ns,
            np.concatenate([total[cs] / count[cs], run_sum[~last] / run_n[~last]]),
            np.concatenate([count[cs], run_n[~last]]),
        )
        ls = run_s[last]
        bucket[ls], total[ls], count[ls] = run_b[last], run_sum[last], run_n[last]
        order = np.lexsort((closed.start_ns, closed.series))
        return Buckets(closed.series[order], closed.start_ns[order], closed.mean[order], closed.count[order])

    def flush(self, event_time_ns: int) -> Buckets:
        """Close every open bucket that ends at or before `event_time_ns`."""
        self._grow()
        n = len(self.series)
        bucket, total, count = self.state["bucket"][:n], self.state["total"][:n], self.state["count"][:n]
        done = np.flatnonzero((bucket >= 0) & ((bucket + 1) * self.bucket_ns <= event_time_ns))
        closed = Buckets(done.astype(np.int32), bucket[done] * self.bucket_ns, total[done] / count[done],
                         count[done].copy())
        bucket[done], total[done], count[done] = -1, 0.0, 0
        return closed
