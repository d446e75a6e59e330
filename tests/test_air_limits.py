"""QCVN 05:2023 limits on hourly, 8-hour and daily means, judged live from the engine's hourly windows."""

from __future__ import annotations

import datetime as dt

import numpy as np

from citywatch.air_indices import HOUR_NS, AirIndices
from citywatch.air_limits import limit

from test_air_indices import feed, readings, series_index


def day_start_hour(day: dt.date) -> int:
    """Hour number of local (UTC+7) midnight of `day`."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()) // 3600


def exceedance_lines(lines, pollutant, averaging):
    out = []
    for line in lines:
        if line.startswith("exceedances,") and f"pollutant={pollutant}" in line and f"averaging={averaging}" in line:
            _, field_set, ts = line.rsplit(" ", 2)
            fields = dict(kv.split("=") for kv in field_set.split(","))
            out.append((int(ts) // HOUR_NS, fields["exceeded"], fields["year_count"]))
    return out


def test_pm25_24h_limit_changes_on_2026_01_01():
    assert limit("pm25", "24h", dt.date(2025, 12, 31)) == 50 and limit("pm25", "24h", dt.date(2026, 1, 1)) == 45
    # the domain reference's vector: 48 ug/m3 complies on 2025-12-31 and exceeds on 2026-01-01
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2025, 12, 31))
    feed(agg, [readings(series, "aq-001", "pm25", [48.0] * 48, start_hour=start)])
    agg.flush((start + 60) * HOUR_NS)
    lines, events = agg.take_limit_output()
    assert exceedance_lines(lines, "pm25", "24h") == [(start, "false", "0i"), (start + 24, "true", "1i")]
    pm_events = [e for e in events if e.metric == "pm25" and e.detector == "qcvn05_24h"]
    assert [(e.level, e.ts_ns // HOUR_NS, e.threshold) for e in pm_events] == [("critical", start + 24, 45.0)]
    assert "2026" in pm_events[0].reason and "QCVN 05:2023" in pm_events[0].reason


def test_hourly_no2_exceedances_alert_on_change_and_count_once_per_hour():
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2026, 3, 2))
    # pm25 and no2 close their hours separately: each station-hour is computed more than once
    feed(agg, [readings(series, "aq-002", "no2", [100.0, 250.0, 260.0, 100.0, 90.0], start_hour=start),
               readings(series, "aq-002", "pm25", [20.0] * 5, start_hour=start)], cuts=(7, 19, 31))
    agg.flush((start + 10) * HOUR_NS)
    lines, events = agg.take_limit_output()
    assert exceedance_lines(lines, "no2", "1h") == [
        (start, "false", "0i"), (start + 1, "true", "1i"), (start + 2, "true", "2i"),
        (start + 3, "false", "2i"), (start + 4, "false", "2i")]
    no2 = [(e.level, e.ts_ns // HOUR_NS) for e in events if e.metric == "no2" and e.detector == "qcvn05_1h"]
    assert no2 == [("critical", start + 1), ("ok", start + 3)]


def test_ozone_8h_mean_needs_six_hours():
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2026, 5, 10))
    feed(agg, [readings(series, "aq-003", "o3", [130.0] * 9, start_hour=start)])
    agg.flush((start + 20) * HOUR_NS)
    lines, _ = agg.take_limit_output()
    judged = exceedance_lines(lines, "o3", "8h")
    assert [h - start for h, _, _ in judged] == [5, 6, 7, 8]  # from the 6th hour on
    assert all(ex == "true" for _, ex, _ in judged)
    hourly = exceedance_lines(lines, "o3", "1h")
    assert len(hourly) == 9 and all(ex == "false" for _, ex, _ in hourly)  # 130 is within the 1-hour 200


def test_year_count_survives_a_restart():
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2026, 7, 1))
    feed(agg, [readings(series, "aq-001", "no2", [300.0, 300.0, 300.0], start_hour=start)])
    agg.take_limit_output()
    resumed = AirIndices(series_index())
    resumed.restore(agg.snapshot())
    feed(resumed, [readings(series, "aq-001", "no2", [300.0, 50.0], start_hour=start + 3)])
    lines, events = resumed.take_limit_output()
    assert exceedance_lines(lines, "no2", "1h")[:2] == [(start + 2, "true", "3i"), (start + 3, "true", "4i")]
    assert not [e for e in events if e.level == "critical"]  # still exceeding: no new alert
    assert np.any(resumed.limits.counts.count > 0)


def annual_points(lines, pollutant):
    out = []
    for line in lines:
        if line.startswith("exceedances,") and f"pollutant={pollutant}" in line and "averaging=year" in line:
            _, field_set, ts = line.rsplit(" ", 2)
            fields = dict(kv.split("=") for kv in field_set.split(","))
            out.append((int(ts), float(fields["mean"]), fields["exceeded"], fields["hours"], fields["final"]))
    return out


def test_running_annual_mean_is_judged_at_each_day_end_and_alerts_on_change():
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2026, 3, 2))
    # day 1: NO2 hourly means 30 -> running mean 30 (within 40); day 2: 70 -> running mean 50 (exceeds)
    feed(agg, [readings(series, "aq-002", "no2", [30.0] * 24 + [70.0] * 24, start_hour=start)])
    agg.flush((start + 60) * HOUR_NS)
    lines, events = agg.take_limit_output()
    year_start_ns = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()) * 10**9
    points = annual_points(lines, "no2")
    assert points == [(year_start_ns, 30.0, "false", "24i", "false"), (year_start_ns, 50.0, "true", "48i", "false")]
    annual = [e for e in events if e.detector == "qcvn05_year"]
    assert [(e.level, e.ts_ns // HOUR_NS, e.threshold) for e in annual] == [("critical", start + 24, 40.0)]
    assert "running estimate" in annual[0].reason


def test_annual_mean_restarts_with_the_local_year_and_the_last_day_is_final():
    series = series_index()
    agg = AirIndices(series)
    start = day_start_hour(dt.date(2025, 12, 31))
    # 31 Dec 2025 local: PM2.5 30 (over the annual 25); 1 Jan 2026 local: 10 - a new year, a new mean
    feed(agg, [readings(series, "aq-001", "pm25", [30.0] * 24 + [10.0] * 24, start_hour=start)])
    agg.flush((start + 60) * HOUR_NS)
    lines, events = agg.take_limit_output()
    points = annual_points(lines, "pm25")
    y2025 = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()) * 10**9
    y2026 = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()) * 10**9
    assert points == [(y2025, 30.0, "true", "24i", "true"), (y2026, 10.0, "false", "24i", "false")]
    annual = [(e.level, "for the year" in e.reason) for e in events if e.detector == "qcvn05_year"]
    assert annual == [("critical", True), ("ok", False)]


def test_yearly_count_restarts_at_local_new_year_not_utc():
    series = series_index()
    agg = AirIndices(series)
    new_year = day_start_hour(dt.date(2027, 1, 1))  # 17:00 UTC on 31 Dec 2026
    feed(agg, [readings(series, "aq-001", "no2", [250.0] * 4, start_hour=new_year - 2)])
    agg.flush((new_year + 5) * HOUR_NS)
    lines, _ = agg.take_limit_output()
    # the last two local hours of 2026 count 1, 2; the first hours of 2027 (still 2026 in UTC) restart
    assert exceedance_lines(lines, "no2", "1h") == [
        (new_year - 2, "true", "1i"), (new_year - 1, "true", "2i"), (new_year, "true", "1i"), (new_year + 1, "true", "2i")]


def test_shared_yearly_exceedance_counter_doctest():
    import doctest

    from citywatch import exceedances

    result = doctest.testmod(exceedances)
    assert result.attempted > 0 and result.failed == 0
