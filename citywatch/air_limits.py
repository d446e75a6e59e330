"""QCVN 05:2023/BTNMT ambient-air limits on 1-hour, 8-hour and 24-hour means, evaluated live.

Fed by `AirIndices` with the hourly window of each station-hour it computes. For every (station,
pollutant, averaging time) a mean above its limit is an *exceedance*: counted per calendar year
(local time, Asia/Ho_Chi_Minh), written to the measurement `exceedances`, and the change between
compliant and exceeding raises an alert. Each period is judged once: when the pollutant's own hour
(for 1 h and 8 h) is present, and for 24 h when the local day has ended with at least 18 hourly means.

Limits (ug/m3, Table 1 of QCVN 05:2023/BTNMT): the PM2.5 24-hour limit is 50 until 2025-12-31 and
45 from 2026-01-01, decided by the date of the day being judged. Annual means are not judged live.

Measurement `exceedances`: tags sensor, area, pollutant, averaging (`1h`, `8h`, `24h`); fields
mean, limit, exceeded (bool), year_count (exceedances of that key so far in the calendar year);
time = start of the hour / of the local day.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from citywatch.alerts import AlertEvent
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


def limit(pollutant: str, averaging: str, day: dt.date) -> float:
    """The limit in force on `day` (the PM2.5 24-hour limit tightened from 50 to 45 on 2026-01-01)."""
    if (pollutant, averaging) == ("pm25", "24h") and day < PM25_24H_CHANGE:
        return 50.0
    return LIMITS[(pollutant, averaging)]


def local_date(hour: int) -> dt.date:
    return dt.datetime.fromtimestamp((hour + LOCAL_UTC_OFFSET_H) * 3600, dt.timezone.utc).date()


class AirLimits:
    def __init__(self, stations: list[str], areas: list[str], pollutants: tuple[str, ...]) -> None:
        self.stations, self.areas = stations, areas
        self.col = {p: i for i, p in enumerate(pollutants)}
        n, k = len(stations), len(KEYS)
        self.exceeding = np.zeros((n, k), bool)
        self.last_period = np.full((n, k), -1, np.int64)  # hour number of the last judged period
        self.year = np.zeros((n, k), np.int64)  # calendar year of `count`
        self.count = np.zeros((n, k), np.int64)

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
            fresh = ~np.isnan(mean) & (period > self.last_period[st, k])
            if not fresh.any():
                continue
            s, m = st[fresh], mean[fresh]
            day_of = local_date(period)
            lim = limit(pollutant, averaging, day_of)
            over = m > lim
            self.last_period[s, k] = period
            new_year = self.year[s, k] != day_of.year
            self.count[s[new_year], k] = 0
            self.year[s, k] = day_of.year
            self.count[s[over], k] += 1
            changed = over != self.exceeding[s, k]
            self.exceeding[s, k] = over
            for i, sid in enumerate(s.tolist()):
                lines.append(encode_line(
                    "exceedances", {"sensor": self.stations[sid], "area": self.areas[sid], "pollutant": pollutant,
                                    "averaging": averaging},
                    {"mean": float(m[i]), "limit": lim, "exceeded": bool(over[i]), "year_count": int(self.count[sid, k])},
                    period * HOUR_NS))
                if changed[i]:
                    events.append(AlertEvent(
                        sensor=self.stations[sid], domain="air", area=self.areas[sid], metric=pollutant,
                        detector=f"qcvn05_{averaging}", level="critical" if over[i] else "ok",
                        previous_level="ok" if over[i] else "critical", value=float(m[i]), threshold=lim,
                        score=None, ts_ns=period * HOUR_NS,
                        reason=(f"{averaging} mean {m[i]:.1f} ug/m3 {'exceeds' if over[i] else 'back within'} the "
                                f"{SOURCE} limit {lim:g} ({int(self.count[sid, k])} exceedances in {day_of.year})")))
        return lines, events

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"exceeding": self.exceeding, "last_period": self.last_period, "year": self.year, "count": self.count}

    def restore(self, snap: dict[str, np.ndarray], src: list[int], dst: list[int]) -> None:
        for name, arr in self.snapshot().items():
            if name in snap and snap[name].shape[1:] == arr.shape[1:]:
                arr[dst] = snap[name][src]
