"""Exceedances of a regulatory limit counted per calendar year: the state shared by QCVN 05 (air)
and QCVN 08 (surface water) judging.

`YearlyExceedances` keeps, per (row, key) - a station and a (parameter, averaging time) - whether
the last judged period exceeded, which period that was (so a period is judged once, however often
its inputs are recomputed), the calendar year being counted and the count. Years are local years
(Asia/Ho_Chi_Minh, UTC+7): the count restarts with the first period of a new year.

>>> import numpy as np
>>> counts = YearlyExceedances(n_rows=2, n_keys=1)
>>> r = counts.record(np.array([0, 1]), 0, period=np.array([10, 10]), year=2026, over=np.array([True, False]))
>>> r.fresh.tolist(), r.count.tolist(), r.changed.tolist()
([True, True], [1, 0], [True, False])
>>> counts.record(np.array([0]), 0, period=np.array([10]), year=2026, over=np.array([True])).fresh.tolist()
[False]
>>> counts.record(np.array([0]), 0, period=np.array([11]), year=2027, over=np.array([True])).count.tolist()
[1]
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

HOUR_NS = 3_600_000_000_000
LOCAL_UTC_OFFSET_H = 7
LOCAL_TZ = dt.timezone(dt.timedelta(hours=LOCAL_UTC_OFFSET_H))


def local_date_of_hour(hour: int) -> dt.date:
    """Local (UTC+7) date of the hour number `hour` since the epoch."""
    return dt.datetime.fromtimestamp((hour + LOCAL_UTC_OFFSET_H) * 3600, dt.timezone.utc).date()


def local_year_of_ns(ts_ns: np.ndarray) -> np.ndarray:
    """Local (UTC+7) calendar year of each epoch-ns time."""
    local = np.asarray(ts_ns, dtype=np.int64) + LOCAL_UTC_OFFSET_H * HOUR_NS
    return local.astype("datetime64[ns]").astype("datetime64[Y]").astype(np.int64) + 1970


def local_year_start_ns(year: int) -> int:
    """Epoch ns of local midnight on 1 January of `year`."""
    return int(dt.datetime(year, 1, 1, tzinfo=LOCAL_TZ).timestamp()) * 1_000_000_000


@dataclass(slots=True)
class Recorded:
    """What `YearlyExceedances.record` did, aligned with its inputs."""

    fresh: np.ndarray  # bool: judged now (a period not judged before)
    count: np.ndarray  # int64: exceedances of the row's key in the period's year, this one included
    changed: np.ndarray  # bool: fresh, and the row entered or left exceedance


class YearlyExceedances:
    def __init__(self, n_rows: int, n_keys: int) -> None:
        self.exceeding = np.zeros((n_rows, n_keys), bool)
        self.last_period = np.full((n_rows, n_keys), np.iinfo(np.int64).min, np.int64)
        self.year = np.zeros((n_rows, n_keys), np.int64)
        self.count = np.zeros((n_rows, n_keys), np.int64)

    def record(self, rows: np.ndarray, key: int, period, year, over: np.ndarray) -> Recorded:
        """Judge `over` for `rows` (distinct) of column `key`; only periods later than the row's last
        judged one count. `period` (any increasing int unit, the same for a key) and `year` are
        scalars or aligned arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        period = np.broadcast_to(np.asarray(period, dtype=np.int64), rows.shape)
        year = np.broadcast_to(np.asarray(year, dtype=np.int64), rows.shape)
        over = np.asarray(over, dtype=bool)
        fresh = period > self.last_period[rows, key]
        r, p, y, o = rows[fresh], period[fresh], year[fresh], over[fresh]
        self.last_period[r, key] = p
        self.count[r[self.year[r, key] != y], key] = 0
        self.year[r, key] = y
        self.count[r[o], key] += 1
        changed = np.zeros(len(rows), bool)
        changed[fresh] = o != self.exceeding[r, key]
        self.exceeding[r, key] = o
        return Recorded(fresh, self.count[rows, key].copy(), changed)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"exceeding": self.exceeding, "last_period": self.last_period, "year": self.year, "count": self.count}

    def restore(self, snap: dict[str, np.ndarray], src: list[int], dst: list[int]) -> None:
        """Take rows `src` of a snapshot into rows `dst` (the stations still known), when the keys match."""
        for name, arr in self.snapshot().items():
            if name in snap and snap[name].shape[1:] == arr.shape[1:]:
                arr[dst] = snap[name][src]
