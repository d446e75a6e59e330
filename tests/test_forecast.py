"""Forecasters (detectors/forecast), the forecast stage's early warnings and `citywatch forecast`."""

from __future__ import annotations

import csv
import doctest
import importlib

import numpy as np
import pytest

from citywatch.air_indices import HOUR_NS, AirIndices
from citywatch.batch import ReadingBatch
from citywatch.cli import main
from citywatch.config import ForecastsConfig, IndicesConfig
from citywatch.detectors.forecast import MODELS, ArDeseasonalised, HoltWinters, SeasonalNaive, SeriesKeys
from citywatch.forecast_stage import ForecastStage
from citywatch.registry import Registry, RegistryFile, SeriesIndex

DAY = 24
rng = np.random.default_rng(7)


def keys(n: int) -> SeriesKeys:
    return SeriesKeys([(f"s{i}", "y") for i in range(n)])


def feed(f, matrix: np.ndarray, start: int = 0) -> None:
    n, T = matrix.shape
    ids = np.arange(n)
    for t in range(T):
        f.update(ids, np.full(n, start + t), matrix[:, t])


def seasonal(t: np.ndarray) -> np.ndarray:
    return 10 * np.sin(2 * np.pi * t / 24) + 4 * np.cos(2 * np.pi * t / 12)


@pytest.mark.parametrize("module", ["base", "seasonal_naive", "holt_winters", "ar_deseasonalised", "recent_median",
                                    "combination"])
def test_doctests_and_sample_config(module):
    mod = importlib.import_module(f"citywatch.detectors.forecast.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
    if module != "base":
        import yaml

        cfg = yaml.safe_load(mod.SAMPLE_CONFIG)["forecasts"]
        assert ForecastsConfig.model_validate({k: v for k, v in cfg.items() if k != "seasonal_naive_period"
                                               and k != "model"}) is not None


def test_pure_seasonal_and_trend_are_forecast_almost_exactly():
    t = np.arange(24 * 42)
    y = (100 + 0.05 * t + seasonal(t))[None, :]
    f = HoltWinters(keys(1), horizon=24, alpha=0.1, beta=0.01, phi=1.0)
    feed(f, y)
    median, _, _ = f.forecast(np.array([0]))
    future = t[-1] + np.arange(1, 25)
    truth = 100 + 0.05 * future + seasonal(future)
    assert np.abs(median[0] - truth).max() < 0.2  # the seasonal swing is 28, the trend 1.2 a day

    # without a trend every model is near exact, seasonal-naive exactly
    y = (50 + seasonal(t))[None, :]
    truth = 50 + seasonal(future)
    for cls, tol in ((SeasonalNaive, 1e-9), (HoltWinters, 0.2), (ArDeseasonalised, 0.2)):
        f = cls(keys(1), horizon=24)
        feed(f, y)
        assert np.abs(f.forecast(np.array([0]))[0][0] - truth).max() < tol, cls.__name__


def test_a_step_is_followed_within_hours():
    T, step_at, step = 24 * 28, 24 * 21 + 5, 20.0
    t = np.arange(T)
    for noise in (0.0, 1.0):
        y = 50 + seasonal(t) + np.where(t >= step_at, step, 0.0) + noise * rng.standard_normal(T)
        f = HoltWinters(keys(1), horizon=1)
        ids = np.array([0])
        errors = []
        for hour in t:
            if hour >= step_at:
                errors.append(abs(f.forecast(ids)[0][0, 0] - y[hour]))
            f.update(ids, np.array([hour]), np.array([y[hour]]))
        errors = np.asarray(errors)
        assert errors[0] > 0.8 * step  # the step itself is a surprise
        if noise == 0:
            # the AR(1) adjustment of the errors carries the jump into the next forecasts at once
            assert errors[1:].max() < 0.15 * step
        else:
            # within 6 hours the one-hour-ahead errors are back to the size of the noise
            assert errors[6:48].mean() < 2.0 * noise
    # seasonal-naive needs a full day
    sn = SeasonalNaive(keys(1), horizon=1)
    y = 50 + seasonal(t) + np.where(t >= step_at, step, 0.0)
    feed(sn, y[None, : step_at + 12])
    assert abs(sn.forecast(np.array([0]))[0][0, 0] - y[step_at + 12]) > 0.9 * step


def test_intervals_widen_with_the_horizon_and_cover():
    local = np.random.default_rng(3)
    T, n = 24 * 42, 6
    t = np.arange(T)
    ar = np.zeros((n, T))
    e = local.standard_normal((n, T))
    for i in range(1, T):
        ar[:, i] = 0.9 * ar[:, i - 1] + e[:, i]
    y = 50 + seasonal(t) + ar
    f = HoltWinters(keys(n), horizon=24)
    ids = np.arange(n)
    inside = total = 0
    for hour in t[:-24]:
        f.update(ids, np.full(n, hour), y[:, hour])
        if hour >= 24 * 28:  # the last two weeks: how often the 80 % interval held what came
            _, lower, upper = f.forecast(ids)
            actual = y[:, hour + 1: hour + 25]
            inside += int(((actual >= lower) & (actual <= upper)).sum())
            total += actual.size
    median, lower, upper = f.forecast(ids)
    width = (upper - lower).mean(axis=0)
    assert np.isfinite(width).all()
    # AR(1) errors: the spread grows with the horizon, then levels off at the process' own spread
    assert width[-1] > 1.8 * width[0]
    assert (np.diff(width[::6]) > -0.02 * width.max()).all()
    assert (lower <= median).all() and (median <= upper).all()
    assert 0.72 <= inside / total <= 0.88


def test_no_interval_before_enough_errors():
    f = HoltWinters(keys(1), horizon=3, min_errors=24)
    feed(f, (50 + seasonal(np.arange(10)))[None, :])
    median, lower, upper = f.forecast(np.array([0]))
    assert np.isfinite(median).all() and np.isnan(lower).all() and np.isnan(upper).all()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_vectorised_equals_one_series_at_a_time(model):
    n, T = 5, 24 * 10
    y = 20 + seasonal(np.arange(T))[None, :] + rng.normal(0, 2, (n, T))
    y[2, 50:60] = np.nan  # a gap in one series
    together = MODELS[model](keys(n), horizon=6)
    feed(together, y)
    med_all, lo_all, up_all = together.forecast(np.arange(n))
    for i in range(n):
        alone = MODELS[model](keys(1), horizon=6)
        feed(alone, y[i: i + 1])
        med, lo, up = alone.forecast(np.array([0]))
        np.testing.assert_allclose(med[0], med_all[i], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(lo[0], lo_all[i], rtol=1e-9, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(up[0], up_all[i], rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_snapshot_restore_continues_identically(model):
    n, T = 3, 24 * 9
    y = 20 + seasonal(np.arange(T))[None, :] + rng.normal(0, 1, (n, T))
    a = MODELS[model](keys(n), horizon=4)
    feed(a, y[:, : T // 2])
    snap = a.snapshot()
    # the restored side knows the series in another order, and one more
    other = SeriesKeys([("new", "y"), ("s2", "y"), ("s0", "y"), ("s1", "y")])
    b = MODELS[model](other, horizon=4)
    b.restore(snap)
    order = np.array([other.get(f"s{i}", "y") for i in range(n)])
    for t in range(T // 2, T):
        a.update(np.arange(n), np.full(n, t), y[:, t])
        b.update(order, np.full(n, t), y[:, t])
    for x, z in zip(a.forecast(np.arange(n)), b.forecast(order)):
        np.testing.assert_allclose(x, z, equal_nan=True)
    assert np.isnan(b.forecast(np.array([0]))[0]).all()  # the new series has no forecast yet


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_revised_hour_is_not_counted_twice(model):
    y = 20 + seasonal(np.arange(24 * 8))[None, :]
    direct, revised = MODELS[model](keys(1), horizon=3), MODELS[model](keys(1), horizon=3)
    feed(direct, y)
    feed(revised, y[:, :-1])
    last = y.shape[1] - 1
    revised.update(np.array([0]), np.array([last]), np.array([999.0]))  # a partial hour first
    revised.update(np.array([0]), np.array([last]), y[:, last])  # then the complete one
    revised.update(np.array([0]), np.array([last - 5]), np.array([5.0]))  # an older hour: ignored
    for x, z in zip(direct.forecast(np.array([0])), revised.forecast(np.array([0]))):
        np.testing.assert_allclose(x, z, equal_nan=True)
    assert revised.ignored == 1


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="horizon"):
        HoltWinters(keys(1), horizon=0)
    with pytest.raises(ValueError, match="alpha"):
        HoltWinters(keys(1), alpha=2.0)
    with pytest.raises(ValueError, match="unstable"):
        HoltWinters(keys(1), alpha=0.02, beta=0.05)
    with pytest.raises(ValueError, match="period"):
        SeasonalNaive(keys(1), period=12)
    with pytest.raises(ValueError, match="one value per series"):
        HoltWinters(keys(2)).update(np.array([0, 0]), np.array([1, 2]), np.array([1.0, 2.0]))


def test_bad_forecast_parameters_in_the_config_are_a_config_error():
    from citywatch.config import ConfigError

    with pytest.raises(ConfigError, match="forecasts: holt_winters for aqi: .*beta"):
        _stage(holt_winters={"alpha": 0.01, "beta": 0.5})


# -- the stage: forecasts points and early warnings ---------------------------------------------

def _registry() -> Registry:
    reg = RegistryFile.model_validate({"sensors": [
        {"id": "wq-1", "domain": "water", "area": "A", "lat": 11, "lon": 107, "interval": 300,
         "metrics": {"NH4": {"unit": "mg/L"}, "pH": {"unit": "pH"}}},
        {"id": "aq-1", "domain": "air", "area": "B", "lat": 11, "lon": 107, "interval": 600,
         "metrics": {"pm25": {"unit": "ug/m3"}}},
        {"id": "tc-1", "domain": "traffic", "area": "C", "lat": 11, "lon": 107, "interval": 600, "road_class": "main",
         "metrics": {"intensity": {"unit": "1"}, "averageVehicleSpeed": {"unit": "km/h"}}},
    ]})
    return Registry({s.id: s for s in reg.sensors})


def _stage(**cfg):
    series = SeriesIndex(_registry())
    series.add_registry()
    air = AirIndices(series)
    stage = ForecastStage(series, ForecastsConfig(horizon=6, **cfg), IndicesConfig(water_class="B"), air)
    return series, air, stage


def _run_hours(series, air, stage, hours, values_of):
    """Readings every 10 minutes of each hour; values_of(hour) -> {(sensor, metric): value}."""
    lines, events = [], []
    for h in hours:
        rows = []
        for (sensor, metric), v in values_of(h).items():
            sid = series.get(sensor, metric)
            rows += [(sid, h * HOUR_NS + m * 600_000_000_000, v) for m in range(6)]
        rows.sort()
        batch = ReadingBatch.from_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        for part in (air, stage):  # the evaluator's order: the air stage first
            out_lines, out_events = part.process(batch)
            lines += out_lines
            events += out_events
    return lines, events


def test_water_forecast_warns_before_the_limit_and_resolves():
    series, air, stage = _stage()  # horizon 6 h, bound: upper
    base = 1000 * 24

    def nh4(h):  # a morning peak below the 0.3 mg/L health limit, until the level rises for 36 hours
        k = h - base
        level = 0.1 + (0.12 if 24 * 12 <= k < 24 * 13 + 12 else 0.0)
        return {("wq-1", "NH4"): level + 0.1 * np.exp(-0.5 * ((h % 24 - 8) / 1.5) ** 2) + 0.01 * np.sin(h * 1.7),
                ("wq-1", "pH"): 7.2}

    crossing = [h for h in range(base, base + 24 * 15) if nh4(h)[("wq-1", "NH4")] >= 0.3]
    assert crossing and crossing[0] > base + 24 * 12
    lines, events = _run_hours(series, air, stage, range(base, base + 24 * 12), nh4)
    assert not [e for e in events if e.detector == "forecast"]
    fc = [ln for ln in lines if ln.startswith("forecasts,")]
    assert any("metric=NH4" in ln and "horizon=6" in ln and "lower=" in ln and "upper=" in ln for ln in fc)
    assert any("kind=water" in ln and "metric=pH" in ln for ln in fc)
    latest = [ln for ln in fc if "horizon=latest" in ln]
    assert len(latest) * 2 == len(fc)  # each forecast also under horizon=latest
    lines, events = _run_hours(series, air, stage, range(base + 24 * 12, base + 24 * 15), nh4)
    forecast_events = [e for e in events if e.detector == "forecast"]
    first = forecast_events[0]
    assert (first.level, first.previous_level, first.metric, first.threshold) == ("warning", "ok", "NH4", 0.3)
    assert first.ts_ns <= crossing[0] * HOUR_NS  # issued before the hour that crosses had been measured
    local = (crossing[0] + 7) % 24
    assert f"forecast above the QCVN 08:2023 limit 0.3 at {local:02d}:00" in first.reason and "p≈" in first.reason
    assert 0 < first.score < 1
    # once the level is back, the warning resolves itself and stays resolved
    assert forecast_events[-1].level == "ok" and forecast_events[-1].previous_level == "warning"
    assert forecast_events[-1].ts_ns < (base + 24 * 14) * HOUR_NS
    levels = [e.level for e in forecast_events]
    assert all(a != b for a, b in zip(levels, levels[1:]))  # only changes are announced


def test_aqi_forecast_category_warning_through_the_air_stage():
    series, air, stage = _stage(bound="median", aqi_category=3)
    base = 2000 * 24

    def pm(h):
        k = h - base
        rising = 30 + (15 * (k - 24 * 9) if k >= 24 * 9 else 0)
        return {("aq-1", "pm25"): rising + 5 * np.sin(2 * np.pi * h / 24)}

    lines, events = _run_hours(series, air, stage, range(base, base + 24 * 9 + 8), pm)
    assert any(ln.startswith("forecasts,") and "metric=vn_aqi_hourly" in ln for ln in lines)
    assert any(ln.startswith("forecasts,") and "metric=us_aqi" in ln for ln in lines)
    warned = [e for e in events if e.detector == "forecast"]
    assert {e.metric for e in warned} >= {"vn_aqi_hourly"}
    first = next(e for e in warned if e.metric == "vn_aqi_hourly")
    assert first.level in ("warning", "critical") and "forecast to reach category" in first.reason


def test_stage_snapshot_restore():
    series, air, stage = _stage()
    flat = lambda h: {("wq-1", "NH4"): 0.1 + 0.01 * np.sin(h), ("tc-1", "intensity"): 30.0 + h % 24}
    _run_hours(series, air, stage, range(24 * 100, 24 * 103), flat)
    snap = stage.snapshot()
    series2, air2, stage2 = _stage()
    stage2.restore(snap)
    a = _run_hours(series, air, stage, range(24 * 103, 24 * 104), flat)[0]
    b = _run_hours(series2, air2, stage2, range(24 * 103, 24 * 104), flat)[0]
    assert [ln for ln in a if ln.startswith("forecasts,")] == [ln for ln in b if ln.startswith("forecasts,")]
    assert any("kind=traffic" in ln for ln in a)
    # a snapshot of another model starts that kind afresh instead of mixing states
    _, _, stage3 = _stage(models={"water": "seasonal_naive"})
    stage3.restore(snap)
    assert np.all(stage3.kinds["water"].forecaster.latest_hour(np.arange(2)) < 0)


# -- the command ---------------------------------------------------------------------------------

def test_cli_forecasts_a_csv(tmp_path, capsys):
    t0 = 1_767_225_600  # 2026-01-01T00:00Z
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "pm25", "no2"])
        for k in range(24 * 14 * 2):  # every 30 minutes
            ts = t0 + k * 1800
            w.writerow([ts, f"{40 + 10 * np.sin(2 * np.pi * ts / 86400):.4f}", "" if k % 7 == 0 else "20"])
    out = tmp_path / "out.csv"
    assert main(["forecast", "--input", str(path), "--horizon", "6", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["column"] for r in rows} == {"pm25", "no2"}
    pm = [r for r in rows if r["column"] == "pm25"]
    assert [int(r["horizon"]) for r in pm] == list(range(1, 7))
    assert pm[0]["timestamp"] == "2026-01-15T00:00:00Z"
    for r in pm:
        hour_start = int(np.datetime64(r["timestamp"].rstrip("Z"), "s").astype(np.int64))
        truth = np.mean([40 + 10 * np.sin(2 * np.pi * (hour_start + s) / 86400) for s in (0, 1800)])
        assert abs(float(r["value"]) - truth) < 0.5
        assert float(r["lower"]) <= float(r["value"]) <= float(r["upper"])
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,x\nyesterday,1\n")
    assert main(["forecast", "--input", str(bad)]) == 2
    assert "line 2: bad timestamp" in capsys.readouterr().err


def test_the_evaluator_writes_forecasts_and_forecast_alerts():
    """The engine's evaluation path: forecasts points, and a forecast alert stored like any other."""
    from citywatch.config import Settings
    from citywatch.evaluate import Evaluator

    series = SeriesIndex(_registry())
    series.add_registry()
    evaluator = Evaluator(Settings.model_validate({"forecasts": {"horizon": 6}}), series)
    assert "__forecasts" in evaluator.stateful()
    base = 1000 * 24
    sid = series.get("wq-1", "NH4")
    lines, events = [], []
    for h in range(base, base + 24 * 14):
        level = 0.1 + (0.12 if h - base >= 24 * 12 else 0.0)
        v = level + 0.1 * np.exp(-0.5 * ((h % 24 - 8) / 1.5) ** 2) + 0.01 * np.sin(h * 1.7)
        batch = ReadingBatch.from_columns([sid] * 6, [h * HOUR_NS + m * 600_000_000_000 for m in range(6)], [v] * 6)
        out_lines, out_events = evaluator.evaluate(batch)
        lines += out_lines
        events += out_events
    assert any(ln.startswith("forecasts,") and "metric=NH4" in ln for ln in lines)
    warned = [e for e in events if e.detector == "forecast"]
    assert warned and warned[0].level == "warning"
    assert any(ln.startswith("alerts,") and "detector=forecast" in ln and "metric=NH4" in ln for ln in lines)


def test_forecasts_stay_within_the_physical_range():
    """A falling concentration near zero: no forecast, nor interval bound, below zero (the registry's min)."""
    reg = RegistryFile.model_validate({"sensors": [
        {"id": "wq-1", "domain": "water", "area": "A", "lat": 11, "lon": 107, "interval": 300,
         "metrics": {"NH4": {"unit": "mg/L", "min": 0, "max": 100}}}]})
    series = SeriesIndex(Registry({s.id: s for s in reg.sensors}))
    series.add_registry()
    air = AirIndices(series)
    stage = ForecastStage(series, ForecastsConfig(horizon=6), IndicesConfig(water_class="B"), air)
    base = 1000 * 24
    lines, _ = _run_hours(series, air, stage, range(base, base + 24 * 10),
                          lambda h: {("wq-1", "NH4"): max(0.0, 0.02 + 0.05 * np.sin(h * 2 * np.pi / 24)
                                                         + 0.02 * np.sin(h * 1.3) - 0.0002 * (h - base))})
    fields = [dict(kv.split("=") for kv in ln.split(" ")[1].split(",")) for ln in lines if ln.startswith("forecasts,")]
    assert fields and any("lower" in f for f in fields)
    values = [float(f[k]) for f in fields for k in ("value", "lower", "upper") if k in f]
    assert min(values) == 0.0  # the unclipped forecasts of this series go below zero
    assert all(0.0 <= v <= 100.0 for v in values)


# -- the combination ------------------------------------------------------------------------------

def _mae_after(f, y: np.ndarray, start: int, h: int = 6) -> float:
    """Mean absolute error of the h-hours-ahead forecasts issued from hour `start` on."""
    n, T = y.shape
    ids = np.arange(n)
    errors = []
    for t in range(T - h):
        f.update(ids, np.full(n, t), y[:, t])
        if t >= start:
            errors.append(np.abs(f.forecast(ids)[0][:, h - 1] - y[:, t + h]))
    return float(np.nanmean(errors))


def test_combination_follows_the_member_that_does_best_on_each_series():
    from citywatch.detectors.forecast import Combination

    local = np.random.default_rng(11)
    T = 24 * 35
    t = np.arange(T)
    weekly = 100 + 40 * (t % 168 < 120) * np.sin(np.pi * (t % 24) / 24)  # fixed week, no noise
    daily = 50 + seasonal(t) + 3 * local.standard_normal(T)  # a day-shaped profile in noise
    f = Combination(keys(2), horizon=6)
    feed(f, np.vstack([weekly, daily]))
    labels = list(f.members)
    w = f.member_weights(np.arange(2))  # (series, members, horizon)
    assert labels[w[0].sum(axis=1).argmax()] == "seasonal_naive_week"
    # on the noisy daily series, the smoothed profiles beat copying a noisy value from a day/week ago
    naive = [labels.index(m) for m in ("seasonal_naive_day", "seasonal_naive_week")]
    flat = labels.index("recent_median")  # no profile at all: the worst on a day-shaped series
    smoothers = [j for j in range(len(labels)) if j not in naive and j != flat]
    assert (w[1, naive].max(axis=0) < w[1, smoothers].min(axis=0)).all()
    assert (w[1, flat] < w[1, naive].min(axis=0)).all()
    assert w[1, naive].sum() < 0.25 * w[1].sum()
    assert np.allclose(w.sum(axis=1), 1.0)


def test_combination_beats_its_members_where_none_fits_throughout():
    from citywatch.detectors.forecast import Combination

    local = np.random.default_rng(5)
    T = 24 * 49
    t = np.arange(T)
    # four weeks of a fixed weekly rhythm, then three of a noisy daily one with spikes
    y = np.where(t < 24 * 28, 100 + 40 * (t % 168 < 120) * np.sin(np.pi * (t % 24) / 24),
                 80 + seasonal(t) + 2 * local.standard_normal(T))
    y[local.choice(np.arange(24 * 30, T), 12, replace=False)] += 500  # spikes
    y = y[None, :]
    start = 24 * 14
    combined = _mae_after(Combination(keys(1), horizon=6), y, start)
    members = {label: _mae_after(cls(keys(1), horizon=6, **params), y, start)
               for label, (cls, params) in __import__("citywatch.detectors.forecast.combination",
                                                      fromlist=["MEMBERS"]).MEMBERS.items()}
    assert combined < min(members.values()), (combined, members)


def test_robust_holt_winters_is_not_dragged_by_spikes():
    T = 24 * 28
    t = np.arange(T)
    clean = 50 + seasonal(t)
    spiky = clean.copy()
    spiky[[24 * 21 + 3, 24 * 22 + 9, 24 * 23 + 15]] += 1000
    future = t[-1] + np.arange(1, 25)
    errors = {}
    for robust in (0.0, 2.0):
        f = HoltWinters(keys(1), horizon=24, robust=robust)
        feed(f, spiky[None, :])
        errors[robust] = np.abs(f.forecast(np.array([0]))[0][0] - (50 + seasonal(future))).max()
    assert errors[2.0] < 0.1 * errors[0.0]
    assert errors[2.0] < 5.0
    with pytest.raises(ValueError, match="robust"):
        HoltWinters(keys(1), robust=-1)


def test_combination_through_the_stage_config():
    from citywatch.config import ConfigError

    series, air, stage = _stage(models={"aqi": "combination", "water": "combination", "traffic": "combination"},
                                combination={"memory": 72, "sharpness": 2, "min_evidence": 12})
    f = stage.kinds["water"].forecaster
    assert f.name == "combination" and (f.memory, f.sharpness, f.min_evidence) == (72.0, 2.0, 12)
    flat = lambda h: {("wq-1", "NH4"): 0.1 + 0.01 * np.sin(h), ("tc-1", "intensity"): 30.0 + h % 24}
    lines, _ = _run_hours(series, air, stage, range(24 * 100, 24 * 103), flat)
    assert any(ln.startswith("forecasts,") and "metric=NH4" in ln and "upper=" in ln for ln in lines)
    # a snapshot carries the members' states: the restored stage forecasts the same
    snap = stage.snapshot()
    series2, air2, stage2 = _stage(models={"aqi": "combination", "water": "combination", "traffic": "combination"},
                                   combination={"memory": 72, "sharpness": 2, "min_evidence": 12})
    stage2.restore(snap)
    ids = np.arange(len(stage.kinds["water"].keys))
    for a, b in zip(stage.kinds["water"].forecaster.forecast(ids), stage2.kinds["water"].forecaster.forecast(ids)):
        np.testing.assert_allclose(a, b, equal_nan=True)
    with pytest.raises(ConfigError, match="combination"):
        _stage(models={"water": "combination"}, combination={"sharpness": -1})


def test_recent_median_is_a_flat_level_that_ignores_spikes_and_gaps():
    from citywatch.detectors.forecast import RecentMedian

    T = 24 * 4
    y = 60 + rng.normal(0, 1, T)
    y[[30, 50, 70]] = 400.0  # spikes
    y[80:90] = np.nan  # a gap: the median is that of the values before it
    f = RecentMedian(keys(1), horizon=6)
    feed(f, y[None, :])
    median = f.forecast(np.array([0]))[0][0]
    assert np.allclose(median, median[0]) and abs(median[0] - 60) < 1.0
    with pytest.raises(ValueError, match="window"):
        RecentMedian(keys(1), window=0)


def test_combination_intervals_leave_out_the_start_up_errors():
    from citywatch.detectors.forecast import Combination

    f = Combination(keys(1), horizon=4, min_evidence=24)
    T = 24 * 3
    feed(f, (50 + seasonal(np.arange(T)))[None, :])
    # errors at horizon 1 only from the value after the warm-up of min_evidence + horizon values
    assert f.state["n_errors"][0, 0] == T - (24 + 4)
