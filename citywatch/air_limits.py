"""QCVN 05:2023/BTNMT ambient-air limits on 1-hour, 8-hour and 24-hour means, evaluated live.

Fed by `AirIndices` with the hourly window of each station-hour it computes. For every (station,
pollutant, averaging time) a mean above its limit is an *exceedance*: counted per calendar year
(local time, Asia/Ho_Chi_Minh), written to the measurement `exceedances`, and the change between
compliant and exceeding raises an alert. Each period is judged once: when the pollutant's own hour
(for 1 h and 8 h) is present, and for 24 h when the local day has ended with at least 18 hourly means.

Limits (ug/m3, Table 1 of QCVN 05:2023/BTNMT): the PM2.5 24-hour limit is 50 until 2025-12-31 and
45 from 2026-01-01, decided by the date of the day being judged.

Annual means (SO2 50, NO2 40, PM10 50, PM2.5 25): every hourly mean of a pollutant goes into a running
mean over the local calendar year (a sum and a count per station and pollutant, restarted on 1
January). At the end of each local day with at least `ANNUAL_MIN_HOURS` hours in the year, the running
mean is compared with the annual limit. It is a *running estimate* until the year ends: only the
judgement written at the last day of the year (field ``final`` = true) is the year's compliance;
before that, an alert says the year is heading for an exceedance so far.

Measurement `exceedances`: tags sensor, area, pollutant, averaging (`1h`, `8h`, `24h`, `year`); fields
mean, limit, exceeded (bool), year_count (exceedances of that key so far in the calendar year; not
written for `year`); time = start of the hour / of the local day. For `year` the time is the start
of the local year (each day's estimate overwrites the previous one, so the stored point is the
latest estimate), with the fields ``hours`` (hourly means so far) and ``final``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from citywatch.alerts import AlertEvent
from citywatch.exceedances import YearlyExceedances, local_date_of_hour, local_year_start_ns
from citywatch.sinks.line_protocol import encode_line

HOUR_NS = 3_600_000_000_000
LOCAL_UTC_OFFSET_H = 7
SOURCE = "QCVN 05:2023/BTNMT"
PM25_24H_CHANGE = dt.date(2026, 1, 1)

# (pollutant, averaging) -> limit in ug/m3; PM2.5 24 h depends on the date (see `limit`).
LIMITS: dict[tuple[str, str], float] = {
    ("so2", "1h"): 350.0, ("co", "1h"): 30000.0, ("no2", "1h"): 200.0, ("o3", "1h"): 200.0,
    ("co", "8h"): 10000.0, ("o3", "8h"): 120.0,
    ("so2", "24h"): 125.0, ("no2", "24h"): 100.0, ("pm10", "24h"): 100.0, ("pm25", "24h"): 45.0,
}
KEYS = tuple(LIMITS)
ANNUAL_LIMITS: dict[str, float] = {"so2": 50.0, "no2": 40.0, "pm10": 50.0, "pm25": 25.0}
ANNUAL_MIN_HOURS = 18  # a running annual mean is judged once it holds a day's worth of hours


def limit(pollutant: str, averaging: str, day: dt.date) -> float:
    """The limit in force on `day` (the PM2.5 24-hour limit tightened from 50 to 45 on 2026-01-01)."""
    if (pollutant, averaging) == ("pm25", "24h") and day < PM25_24H_CHANGE:
        return 50.0
    return LIMITS[(pollutant, averaging)]


local_date = local_date_of_hour


class AirLimits:
    def __init__(self, stations: list[str], areas: list[str], pollutants: tuple[str, ...]) -> None:
        self.stations, self.areas = stations, areas
        self.col = {p: i for i, p in enumerate(pollutants)}
        n = len(stations)
        self.counts = YearlyExceedances(n, len(KEYS))
        annual = tuple(ANNUAL_LIMITS)
        self.annual_counts = YearlyExceedances(n, len(annual))
        self.annual_year = np.zeros((n, len(annual)), np.int64)  # local year of the running sums
        self.annual_sum = np.zeros((n, len(annual)))
        self.annual_hours = np.zeros((n, len(annual)), np.int64)
        self.annual_last_hour = np.full((n, len(annual)), -1, np.int64)

    def judge(self, st: np.ndarray, h: int, window: dict[str, np.ndarray]) -> tuple[list[str], list[AlertEvent]]:
        """Judge the periods ending at hour `h` for stations `st`; window[p] is (len(st), >= 24) hourly means."""
        lines: list[str] = []
        events: list[AlertEvent] = []
        day_end = (h + LOCAL_UTC_OFFSET_H) % 24 == 23
        for k, (pollutant, averaging) in enumerate(KEYS):
            w = window[pollutant]
            if averaging == "1h":
                mean, period = w[:, -1], h
            elif averaging == "8h":
                last8 = w[:, -8:]
                enough = (~np.isnan(last8)).sum(axis=1) >= 6
                mean = np.where(enough & ~np.isnan(w[:, -1]), np.nanmean(np.where(enough[:, None], last8, 0.0), axis=1), np.nan)
                period = h
            else:
                if not day_end:
                    continue
                day = w[:, -24:]
                enough = (~np.isnan(day)).sum(axis=1) >= 18
                mean = np.where(enough, np.nanmean(np.where(enough[:, None], day, 0.0), axis=1), np.nan)
                period = h - 23
            has = ~np.isnan(mean)
            if not has.any():
                continue
            s, m = st[has], mean[has]
            day_of = local_date(period)
            lim = limit(pollutant, averaging, day_of)
            over = m > lim
            rec = self.counts.record(s, k, period, day_of.year, over)
            for i in np.flatnonzero(rec.fresh).tolist():
                sid, count = int(s[i]), int(rec.count[i])
                lines.append(encode_line(
                    "exceedances", {"sensor": self.stations[sid], "area": self.areas[sid], "pollutant": pollutant,
                                    "averaging": averaging},
                    {"mean": float(m[i]), "limit": lim, "exceeded": bool(over[i]), "year_count": count},
                    period * HOUR_NS))
                if rec.changed[i]:
                    events.append(AlertEvent(
                        sensor=self.stations[sid], domain="air", area=self.areas[sid], metric=pollutant,
                        detector=f"qcvn05_{averaging}", level="critical" if over[i] else "ok",
                        previous_level="ok" if over[i] else "critical", value=float(m[i]), threshold=lim,
                        score=None, ts_ns=period * HOUR_NS,
                        reason=(f"{averaging} mean {m[i]:.1f} ug/m3 {'exceeds' if over[i] else 'back within'} the "
                                f"{SOURCE} limit {lim:g} ({count} exceedances in {day_of.year})")))
        self._add_to_annual(st, h, window)
        if day_end:
            self._judge_annual(st, h, lines, events)
        return lines, events

    def _add_to_annual(self, st: np.ndarray, h: int, window: dict[str, np.ndarray]) -> None:
        year = local_date(h).year
        for j, pollutant in enumerate(ANNUAL_LIMITS):
            v = window[pollutant][:, -1]
            new = ~np.isnan(v) & (h > self.annual_last_hour[st, j])  # each hourly mean once
            s, v = st[new], v[new]
            restart = s[self.annual_year[s, j] != year]
            self.annual_sum[restart, j], self.annual_hours[restart, j] = 0.0, 0
            self.annual_year[s, j] = year
            self.annual_sum[s, j] += v
            self.annual_hours[s, j] += 1
            self.annual_last_hour[s, j] = h

    def _judge_annual(self, st: np.ndarray, h: int, lines: list[str], events: list[AlertEvent]) -> None:
        day = local_date(h)
        final = (day.month, day.day) == (12, 31)
        for j, (pollutant, lim) in enumerate(ANNUAL_LIMITS.items()):
            s = st[(self.annual_year[st, j] == day.year) & (self.annual_hours[st, j] >= ANNUAL_MIN_HOURS)]
            if not len(s):
                continue
            mean = self.annual_sum[s, j] / self.annual_hours[s, j]
            over = mean > lim
            rec = self.annual_counts.record(s, j, h - 23, day.year, over)
            t_ns = local_year_start_ns(day.year)
            for i in np.flatnonzero(rec.fresh).tolist():
                sid, hours = int(s[i]), int(self.annual_hours[s[i], j])
                lines.append(encode_line(
                    "exceedances", {"sensor": self.stations[sid], "area": self.areas[sid], "pollutant": pollutant,
                                    "averaging": "year"},
                    {"mean": float(mean[i]), "limit": lim, "exceeded": bool(over[i]), "hours": hours, "final": final},
                    t_ns))
                if rec.changed[i]:
                    so_far = "for the year" if final else f"so far ({hours} h; a running estimate until the year ends)"
                    events.append(AlertEvent(
                        sensor=self.stations[sid], domain="air", area=self.areas[sid], metric=pollutant,
                        detector="qcvn05_year", level="critical" if over[i] else "ok",
                        previous_level="ok" if over[i] else "critical", value=float(mean[i]), threshold=lim,
                        score=None, ts_ns=(h - 23) * HOUR_NS,
                        reason=(f"annual mean {mean[i]:.1f} ug/m3 {so_far} {'exceeds' if over[i] else 'is within'} "
                                f"the {SOURCE} annual limit {lim:g} ({day.year})")))

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = self.counts.snapshot()
        snap.update({f"annual.{k}": v for k, v in self.annual_counts.snapshot().items()})
        snap.update({"annual_year": self.annual_year, "annual_sum": self.annual_sum,
                     "annual_hours": self.annual_hours, "annual_last_hour": self.annual_last_hour})
        return snap

    def restore(self, snap: dict[str, np.ndarray], src: list[int], dst: list[int]) -> None:
        self.counts.restore(snap, src, dst)
        self.annual_counts.restore({k[len("annual."):]: v for k, v in snap.items() if k.startswith("annual.")}, src, dst)
        for name in ("annual_year", "annual_sum", "annual_hours", "annual_last_hour"):
            arr = getattr(self, name)
            if name in snap and snap[name].shape[1:] == arr.shape[1:]:
                arr[dst] = snap[name][src]
