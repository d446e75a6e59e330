"""Live fire danger: daily Nesterov index per forest station from event-time hourly means."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from citywatch.batch import ReadingBatch
from citywatch.detectors.indices.fire_danger import fire_danger_index
from citywatch.fire_index import HOUR_NS, FireDanger
from citywatch.registry import Registry, RegistryFile, SeriesIndex

MIN = 60_000_000_000


def forest_series() -> SeriesIndex:
    doc = {"sensors": [{"id": f"fr-00{i}", "domain": "forest", "area": "Mã Đà", "lat": 11.2, "lon": 107.0,
                        "interval": 600, "metrics": {"temperature": {"unit": "Cel"}, "relativeHumidity": {"unit": "1"},
                                                     "precipitation": {"unit": "mm"}}} for i in (1, 2)]}
    sensors = RegistryFile.model_validate(doc).sensors
    idx = SeriesIndex(Registry({s.id: s for s in sensors}))
    idx.add_registry()
    return idx


def local_midnight_hour(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()) // 3600


def day_readings(series, sensor, start_hour, days):
    """Every 10 minutes: temperature/RH with a known 13:00 hour, and the day's rain spread over the day."""
    cols = {m: series.get(sensor, m) for m in ("temperature", "relativeHumidity", "precipitation")}
    s, t, v = [], [], []
    for d, (t13, rh13, rain) in enumerate(days):
        for h in range(24):
            for m in range(0, 60, 10):
                ts = (start_hour + d * 24 + h) * HOUR_NS + m * MIN
                temp, rh = (t13, rh13) if h == 13 else (26.0, 0.9)
                for metric, value in (("temperature", temp), ("relativeHumidity", rh),
                                      ("precipitation", rain / 144)):
                    s.append(cols[metric])
                    t.append(ts)
                    v.append(value)
    return ReadingBatch.from_columns(s, t, v).sorted_by_series_time()


def parse(lines):
    """(hour, value, category) of `indices` lines (labels hold spaces, so fields are found by name)."""
    out = []
    for line in lines:
        value = float(re.search(r"[ ,]value=([^, ]+)", line).group(1))
        category = int(re.search(r"[ ,]category=(\d+)i", line).group(1))
        out.append((int(line.rsplit(" ", 1)[1]) // HOUR_NS, value, category))
    return out


def test_daily_nesterov_matches_the_index_function_and_resets_on_rain():
    series = forest_series()
    fire = FireDanger(series)
    start = local_midnight_hour(dt.date(2026, 2, 1))
    days = [(33.0, 0.50, 0.0), (34.0, 0.40, 1.0), (35.0, 0.35, 0.0), (31.0, 0.60, 12.0), (33.0, 0.45, 0.0)]
    batch = day_readings(series, "fr-001", start, days)
    lines, events = [], []
    # fed a few hours at a time, as the engine would
    for h0 in range(0, len(days) * 24, 5):
        sel = (batch.ts >= (start + h0) * HOUR_NS) & (batch.ts < (start + h0 + 5) * HOUR_NS)
        out_lines, out_events = fire.process(batch.take(np.flatnonzero(sel)))
        lines += out_lines
        events += out_events
    t13, rh13, rain = (np.array(x) for x in zip(*days))
    p, level = fire_danger_index(t13, rh13, rain)
    # the last day is judged only when the next day starts
    got = parse(lines)
    assert [h for h, _, _ in got] == [start + 24 * d for d in range(len(days) - 1)]
    assert np.allclose([v for _, v, _ in got], p[:-1]) and [c for _, _, c in got] == level[:-1].tolist()
    assert all("Nesterov" not in line and "fire_danger" in line for line in lines)
    assert parse(lines)[3][1] == 0.0  # 12 mm of rain reset the index
    changes = [(e.previous_level, e.level, e.ts_ns // HOUR_NS) for e in events]
    assert len(changes) == len([d for d in range(1, len(days) - 1) if level[d] != level[d - 1]])


def test_state_survives_a_restart():
    series = forest_series()
    start = local_midnight_hour(dt.date(2026, 3, 1))
    days = [(33.0, 0.5, 0.0)] * 4
    batch = day_readings(series, "fr-002", start, days)
    first = FireDanger(series)
    cut = (start + 36) * HOUR_NS
    a_lines, _ = first.process(batch.take(np.flatnonzero(batch.ts < cut)))
    resumed = FireDanger(forest_series())
    resumed.restore(first.snapshot())
    b_lines, _ = resumed.process(batch.take(np.flatnonzero(batch.ts >= cut)))
    p, _ = fire_danger_index(*(np.array(x) for x in zip(*days)))
    assert np.allclose([x[1] for x in parse(a_lines + b_lines)], p[:3])
