"""Seasonal baseline and traffic zero-count detectors: known answers on synthetic series, and a
simulated traffic scenario with dead cameras."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK, LEVEL_WARNING
from citywatch.detectors.seasonal_baseline import (
    SAMPLE_CONFIG as SEASONAL_SAMPLE,
    SeasonalBaseline,
    SeasonalConfig,
    count_pmf0,
    count_tails,
    tail_score,
)
from citywatch.detectors.traffic_zero import SAMPLE_CONFIG as ZERO_SAMPLE, TrafficZeroConfig, TrafficZeroDetector
from citywatch.registry import MetricSpec, Registry, Sensor, SeriesIndex

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "config" / "sensors" / "bienhoa.yaml"
MONDAY_NS = 1_717_347_600 * 10**9  # 2024-06-03 00:00 local time (UTC+7), a Monday
MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@pytest.mark.parametrize("module", ["citywatch.detectors.seasonal_baseline", "citywatch.detectors.traffic_zero"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_sample_configs_parse():
    cfg = SeasonalConfig.model_validate(yaml.safe_load(SEASONAL_SAMPLE)["detectors"]["seasonal"])
    assert cfg.n_bins == 72 and cfg.count_metrics == ["intensity"]
    zcfg = TrafficZeroConfig.model_validate(yaml.safe_load(ZERO_SAMPLE)["detectors"]["traffic_zero"])
    assert zcfg.daytime_floor_per_minute["main"] == 5.0 and zcfg.seasonal.bin_minutes == 60


def test_config_refuses_state_over_2_kib_and_bad_bins():
    with pytest.raises(ValueError, match="bytes of state"):
        SeasonalConfig(bin_minutes=30, day_types="day_of_week")  # 336 bins x 10 bytes
    with pytest.raises(ValueError, match="divide a day"):
        SeasonalConfig(bin_minutes=7)
    with pytest.raises(ValueError, match="crit_p"):
        SeasonalConfig(warn_p=1e-6, crit_p=1e-3)
    assert SeasonalConfig(bin_minutes=60, day_types="day_of_week").n_bins * 10 <= 2048


# ------------------------------------------------------------------------------------------------
# Count tails

def test_count_tails_are_scipy_poisson_and_negative_binomial():
    x = np.array([0, 3, 10, 25, 40, 60])
    lower, upper = count_tails(x, 20.0, 20.0)
    np.testing.assert_allclose(lower, stats.poisson.cdf(x, 20.0))
    np.testing.assert_allclose(upper, stats.poisson.sf(x - 1, 20.0))
    # Overdispersed: mean 20, variance 60 -> nbinom(n = 20^2 / 40 = 10, p = 20 / 60).
    lower, upper = count_tails(x, 20.0, 60.0)
    np.testing.assert_allclose(lower, stats.nbinom.cdf(x, 10.0, 1 / 3))
    np.testing.assert_allclose(upper, stats.nbinom.sf(x - 1, 10.0, 1 / 3))
    np.testing.assert_allclose(stats.nbinom.mean(10.0, 1 / 3), 20.0)
    np.testing.assert_allclose(stats.nbinom.var(10.0, 1 / 3), 60.0)
    np.testing.assert_allclose(count_pmf0(np.array([2.0, 20.0]), np.array([2.0, 60.0])),
                               [stats.poisson.pmf(0, 2.0), stats.nbinom.pmf(0, 10.0, 1 / 3)])


def test_tail_score_anchors():
    s = tail_score(np.array([1.0, 1e-2, 1e-4, 1e-7, 1e-12, 0.0]), 1e-4, 1e-7)
    np.testing.assert_allclose(s, [0.0, 0.25, 0.5, 1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# SeasonalBaseline on synthetic series

def _one(metric: str = "intensity", unit: str = "veh", lo: float = 0, hi: float = 500, interval: float = 60,
         road_class: str | None = "main", domain: str = "traffic") -> tuple[SeriesIndex, int]:
    s = Sensor(id="x-1", domain=domain, area="a", lat=10.95, lon=106.82, interval=interval, road_class=road_class,
               metrics={metric: MetricSpec(unit=unit, min=lo, max=hi)})
    series = SeriesIndex(Registry({s.id: s}))
    series.add_registry()
    return series, series.get(s.id, metric)


def _batch(sid: int, ts, values, flags=None) -> ReadingBatch:
    return ReadingBatch.from_columns(np.full(len(ts), sid), ts, values, flags)


def test_poisson_history_learns_rate_and_scores_with_scipy_tails():
    series, sid = _one()
    det = SeasonalBaseline(series, SeasonalConfig(day_types="all", warmup_samples=30))
    rng = np.random.default_rng(42)
    # 10 days of 07:00-08:00 at 40 vehicles a minute.
    ts = np.concatenate([MONDAY_NS + d * DAY + 7 * HOUR + np.arange(60) * MINUTE for d in range(10)])
    det.process(_batch(sid, ts, rng.poisson(40, len(ts))))
    b = det.bins(np.array([MONDAY_NS + 7 * HOUR]))[0]
    mean, var = float(det.state["mean"][sid, b]), float(det.state["var"][sid, b])
    assert abs(mean - 40) < 2.0 and 25 < var < 60  # EW estimates of a Poisson(40)
    probe = np.array([40, 28, 20, 55, 70, 0])
    t = MONDAY_NS + 10 * DAY + 7 * HOUR + np.arange(len(probe)) * 10**9  # same bin, a second apart
    snap = det.snapshot()
    for i, x in enumerate(probe):  # each probe against the same state
        det.restore(snap)
        out = det.process(_batch(sid, t[i:i + 1], [x]))
        lower, upper = (stats.poisson.cdf(x, mean), stats.poisson.sf(x - 1, mean)) if var <= mean else \
            (stats.nbinom.cdf(x, mean**2 / (var - mean), mean / var), stats.nbinom.sf(x - 1, mean**2 / (var - mean), mean / var))
        p = min(1.0, 2 * min(lower, upper))
        np.testing.assert_allclose(out.score[0], tail_score(np.array([p]), 1e-4, 1e-7)[0], rtol=1e-6)
        expected_level = LEVEL_CRITICAL if p < 1e-7 else LEVEL_WARNING if p < 1e-4 else LEVEL_OK
        assert out.level[0] == expected_level, (x, p)
        assert out.threshold[0] == pytest.approx(mean, rel=1e-6)
    det.restore(snap)
    out = det.process(_batch(sid, t[[0, 5]], [40, 0]))
    assert det.reason_names(out.reason).tolist() == ["ok", "below_expected"]


def _set_bin(det: SeasonalBaseline, sid: int, ts: int, mean: float, var: float, n: int = 100) -> None:
    det._grow()  # state arrays sized for the registry's series
    b = det.bins(np.array([ts]))[0]
    det.state["mean"][sid, b], det.state["var"][sid, b], det.state["n"][sid, b] = mean, var, n


def test_band_is_the_central_99_percent_of_the_tail_model():
    """`last_band`: the bin's mean and scipy's 0.5 % / 99.5 % quantiles of the model that scores the
    reading (Poisson, negative binomial when overdispersed, normal with the floored spread)."""
    series, sid = _one()
    det = SeasonalBaseline(series, SeasonalConfig(day_types="all", warmup_samples=30))
    t = MONDAY_NS + 7 * HOUR
    for mean, var, model in ((37.0, 30.0, stats.poisson(37.0)),
                             (37.0, 90.0, stats.nbinom(37.0**2 / (90.0 - 37.0), 37.0 / 90.0))):
        _set_bin(det, sid, t, mean, var)
        det.process(_batch(sid, [t + 10**9], [41]))
        band = det.last_band()
        assert band.series.tolist() == [sid] and band.ts.tolist() == [t + 10**9]
        assert band.expected[0] == pytest.approx(mean)
        assert (band.lower[0], band.upper[0]) == (model.ppf(0.005), model.ppf(0.995))
    # the band holds 99 % of Poisson(37) draws
    draws = stats.poisson(37.0).rvs(20000, random_state=3)
    _set_bin(det, sid, t, 37.0, 30.0)
    det.process(_batch(sid, [t + 2 * 10**9], [37]))
    lo, hi = det.last_band().lower[0], det.last_band().upper[0]
    assert 0.985 < np.mean((draws >= lo) & (draws <= hi)) <= 1.0
    # a gaussian metric: mean +- z(0.995) sd, the spread floored at min_sd_fraction of the range
    gs, gsid = _one("pm25", "ug/m3", 0, 1000, domain="air", road_class=None)
    gdet = SeasonalBaseline(gs, SeasonalConfig(day_types="all", warmup_samples=30, min_sd_fraction=0.002))
    for var, sd in ((9.0, 3.0), (0.25, 2.0)):
        _set_bin(gdet, gsid, t, 30.0, var)
        gdet.process(_batch(gsid, [t + 10**9], [31.0]))
        band = gdet.last_band()
        np.testing.assert_allclose([band.lower[0], band.upper[0]],
                                   stats.norm(30.0, sd).ppf([0.005, 0.995]), rtol=1e-5)
    # only evaluated readings: warming-up bins and late readings are left out; a skipped batch clears it
    _set_bin(det, sid, t, 37.0, 30.0)
    _set_bin(det, sid, t + 3 * HOUR, 20.0, 20.0, n=5)
    det.process(_batch(sid, [t + 3 * 10**9, t + 3 * HOUR], [40, 22]))
    assert det.last_band().ts.tolist() == [t + 3 * 10**9]
    det.process(_batch(sid, [t + 4 * 10**9], [40]), skip=np.array([True]))
    assert det.last_band() is None
    det.process(_batch(sid, [t], [40], flags=[FLAG_LATE]))
    assert det.last_band() is None


def test_gaussian_metric_uses_normal_tail_and_reason_side():
    series, sid = _one("pm25", "ug/m3", 0, 1000, domain="air", road_class=None)
    det = SeasonalBaseline(series, SeasonalConfig(day_types="all", warmup_samples=30, min_sd_fraction=0.0))
    rng = np.random.default_rng(7)
    ts = np.concatenate([MONDAY_NS + d * DAY + 12 * HOUR + np.arange(60) * MINUTE for d in range(7)])
    det.process(_batch(sid, ts, rng.normal(30, 3, len(ts))))
    b = det.bins(np.array([MONDAY_NS + 12 * HOUR]))[0]
    mean, sd = float(det.state["mean"][sid, b]), float(np.sqrt(det.state["var"][sid, b]))
    snap = det.snapshot()
    for x in [31.0, mean + 4.5 * sd, mean - 6 * sd]:
        det.restore(snap)
        out = det.process(_batch(sid, [MONDAY_NS + 7 * DAY + 12 * HOUR], [x]))
        p = 2 * stats.norm.sf(abs(x - mean) / sd)
        np.testing.assert_allclose(out.score[0], tail_score(np.array([p]), 1e-4, 1e-7)[0], rtol=1e-5)
        assert out.level[0] == (LEVEL_CRITICAL if p < 1e-7 else LEVEL_WARNING if p < 1e-4 else LEVEL_OK)
        assert det.reason_names(out.reason)[0] == ("ok" if p >= 1e-4 else "above_expected" if x > mean else "below_expected")


def test_bins_follow_local_time_and_day_type():
    series, _ = _one()
    det = SeasonalBaseline(series, SeasonalConfig(bin_minutes=60, day_types="weekday_saturday_sunday"))
    # 2024-06-03 00:30 local is Sunday 17:30 UTC: local Monday, hour 0.
    t = np.array([MONDAY_NS + 30 * MINUTE, MONDAY_NS + 5 * DAY + 8 * HOUR, MONDAY_NS + 6 * DAY + 23 * HOUR,
                  MONDAY_NS + 7 * DAY + 13 * HOUR])
    assert det.bins(t).tolist() == [0, 24 + 8, 48 + 23, 13]
    weekend = SeasonalBaseline(series, SeasonalConfig(day_types="weekday_weekend"))
    assert weekend.bins(t).tolist() == [0, 24 + 8, 24 + 23, 13]
    week = SeasonalBaseline(series, SeasonalConfig(day_types="day_of_week"))
    assert week.bins(t).tolist() == [0, 5 * 24 + 8, 6 * 24 + 23, 13]


def test_weekday_and_weekend_learned_apart():
    series, sid = _one()
    det = SeasonalBaseline(series, SeasonalConfig(day_types="weekday_weekend", warmup_samples=20))
    rng = np.random.default_rng(3)
    ts, vals = [], []
    for d in range(14):  # two weeks, 08:00-09:00: 60 a minute on weekdays, 10 at weekends
        t = MONDAY_NS + d * DAY + 8 * HOUR + np.arange(60) * MINUTE
        ts.append(t)
        vals.append(rng.poisson(60 if d % 7 < 5 else 10, 60))
    det.process(_batch(sid, np.concatenate(ts), np.concatenate(vals)))
    out = det.process(_batch(sid, [MONDAY_NS + 14 * DAY + 8 * HOUR + MINUTE * k for k in (0,)], [10]))
    assert out.level[0] == LEVEL_CRITICAL  # 10 on a Monday morning
    out = det.process(_batch(sid, [MONDAY_NS + 19 * DAY + 8 * HOUR], [10]))  # Saturday
    assert out.level[0] == LEVEL_OK


def test_warm_up_and_ignored_rows():
    series, sid = _one()
    det = SeasonalBaseline(series, SeasonalConfig(day_types="all", warmup_samples=5))
    ts = MONDAY_NS + 9 * HOUR + np.arange(7) * MINUTE
    out = det.process(_batch(sid, ts, [30, 31, 29, 30, 28, 30, 29]))
    assert out.level.tolist() == [LEVEL_NOT_EVALUATED] * 5 + [LEVEL_OK, LEVEL_OK]
    assert det.reason_names(out.reason).tolist()[:5] == ["warming_up"] * 5
    before = {k: v.copy() for k, v in det.snapshot().items()}
    flags = [FLAG_LATE, FLAG_DUPLICATE, 0]
    out = det.process(_batch(sid, ts[-1] + np.array([-MINUTE, 0, MINUTE]), [500, 500, np.nan], flags))
    assert np.all(out.level == LEVEL_NOT_EVALUATED)
    for k, v in det.snapshot().items():
        np.testing.assert_array_equal(v, before[k])


def _random_cuts(n: int, k: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).choice(np.arange(1, n), size=k, replace=False).tolist())


def _in_pieces(det, batch: ReadingBatch, cut_times):
    """Process a (series, ts)-sorted batch in event-time pieces; outputs in the batch's row order."""
    level = np.empty(len(batch), np.int8)
    reason = np.empty(len(batch), np.int16)
    score = np.empty(len(batch))
    edges = [np.iinfo(np.int64).min, *cut_times, np.iinfo(np.int64).max]
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((batch.ts >= lo) & (batch.ts < hi))
        if len(idx):
            out = det.process(batch.take(idx))
            level[idx], reason[idx], score[idx] = out.level, out.reason, out.score
    return level, reason, score


def _two_cameras(road_classes=("main", "side")) -> SeriesIndex:
    spec = {"intensity": MetricSpec(unit="veh", min=0, max=500)}
    cams = [Sensor(id=f"c{i}", domain="traffic", area="a", lat=10.95, lon=106.82 + 0.01 * i, interval=60,
                   road_class=rc, metrics=spec) for i, rc in enumerate(road_classes)]
    series = SeriesIndex(Registry({c.id: c for c in cams}))
    series.add_registry()
    return series


def _diurnal_counts(series: SeriesIndex, days: int, seed: int, peak=(60.0, 6.0)) -> ReadingBatch:
    """Per-minute Poisson counts with a day profile (about 3 % of the peak at night), a few zeros."""
    rng = np.random.default_rng(seed)
    t = MONDAY_NS + np.arange(days * 1440) * MINUTE
    hour = ((t // 10**9 + 7 * 3600) % 86400) / 3600
    profile = 0.03 + 0.97 * np.exp(-0.5 * ((hour - 8) / 1.5) ** 2) + 0.8 * np.exp(-0.5 * ((hour - 17.5) / 1.5) ** 2)
    sids, ts, vals = [], [], []
    for sid, pk in enumerate(peak):
        sids.append(np.full(len(t), sid))
        ts.append(t)
        vals.append(rng.poisson(pk * profile))
    return ReadingBatch.from_columns(np.concatenate(sids), np.concatenate(ts), np.concatenate(vals))


@pytest.mark.parametrize("detector", ["seasonal", "traffic_zero"])
def test_batch_size_invariance(detector):
    series = _two_cameras()
    batch = _diurnal_counts(series, days=3, seed=5)
    vals = batch.value.copy()
    vals[(batch.series == 0) & (batch.ts >= MONDAY_NS + 2 * DAY + 8 * HOUR) & (batch.ts < MONDAY_NS + 2 * DAY + 9 * HOUR)] = 0
    batch = ReadingBatch.from_columns(batch.series, batch.ts, vals)

    def make():
        if detector == "seasonal":
            return SeasonalBaseline(series, SeasonalConfig(day_types="all", warmup_samples=20))
        return TrafficZeroDetector(series, TrafficZeroConfig(seasonal=SeasonalConfig(day_types="all", warmup_samples=20)))

    whole = _in_pieces(make(), batch, [])
    t_all = np.unique(batch.ts)
    for seed in (1, 2):
        cuts = [int(t_all[i]) for i in _random_cuts(len(t_all), 200, seed)]
        parts = _in_pieces(make(), batch, cuts)
        np.testing.assert_array_equal(parts[0], whole[0])
        np.testing.assert_array_equal(parts[1], whole[1])
        np.testing.assert_allclose(parts[2], whole[2], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert (whole[0] == LEVEL_CRITICAL).any()


@pytest.mark.parametrize("detector", ["seasonal", "traffic_zero"])
def test_snapshot_restore_and_remap(detector):
    series = _two_cameras()
    batch = _diurnal_counts(series, days=3, seed=6)
    cut = MONDAY_NS + 2 * DAY + 7 * HOUR
    first, rest = batch.take(np.flatnonzero(batch.ts < cut)), batch.take(np.flatnonzero(batch.ts >= cut))
    cfg = SeasonalConfig(day_types="all", warmup_samples=20)

    def make(s):
        return SeasonalBaseline(s, cfg) if detector == "seasonal" else \
            TrafficZeroDetector(s, TrafficZeroConfig(seasonal=cfg))

    a = make(series)
    a.process(first)
    snap = a.snapshot()
    if detector == "seasonal":
        assert snap["mean"].shape == (2, 24) and snap["n"].dtype == np.uint16
        assert a.state_bytes_per_series == 240 <= 2048
    # Another engine, series ids in the other order.
    series_b = SeriesIndex(series.registry)
    for key in reversed(series.keys()):
        series_b.add(series.registry.sensors[key[0]], key[1])
    b = make(series_b)
    b.restore(snap)
    ids = np.array([series_b.get(*series.keys()[s]) for s in rest.series])
    remapped = ReadingBatch.from_columns(ids, rest.ts, rest.value)
    order = np.lexsort((remapped.ts, remapped.series))
    out_a = a.process(rest)
    out_b = b.process(remapped.take(order))
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    np.testing.assert_array_equal(out_a.level, out_b.level[back])
    np.testing.assert_array_equal(out_a.reason, out_b.reason[back])
    np.testing.assert_allclose(out_a.score, out_b.score[back], equal_nan=True)
    assert (out_a.level >= 0).sum() > 1000
    # A snapshot taken with other bins is not restored (it starts afresh, it does not crash).
    if detector == "seasonal":
        other = SeasonalBaseline(series, SeasonalConfig(day_types="weekday_weekend"))  # 48 bins, not 24
        other.restore(snap)
        assert np.all(other.state["n"] == 0)
    else:
        other = TrafficZeroDetector(series, TrafficZeroConfig(seasonal=SeasonalConfig(day_types="weekday_weekend")))
        other.restore(snap)
        assert np.all(other.baseline.state["n"] == 0)
        np.testing.assert_array_equal(other.state["run_len"][:2], snap["run_len"])  # 1-D state still restored


# ------------------------------------------------------------------------------------------------
# TrafficZeroDetector on synthetic series

def _warm_zero_detector(series, days=2, **cfg):
    det = TrafficZeroDetector(series, TrafficZeroConfig(seasonal=SeasonalConfig(day_types="all", warmup_samples=20), **cfg))
    det.process(_diurnal_counts(series, days=days, seed=11))
    return det


def test_zero_at_high_expected_rate_is_dead_camera_and_at_low_rate_true_zero():
    series = _two_cameras(("main", "side"))
    det = _warm_zero_detector(series)
    t8 = MONDAY_NS + 2 * DAY + 8 * HOUR  # main ~60/min, side ~6/min
    t3 = MONDAY_NS + 2 * DAY + 3 * HOUR  # main ~1.8/min, side ~0.2/min
    snap = det.snapshot()
    out = det.process(ReadingBatch.from_columns([0, 1], [t3, t3], [0, 0]))
    assert det.reason_names(out.reason).tolist() == ["true_zero", "true_zero"]
    assert out.level.tolist() == [LEVEL_OK, LEVEL_OK]
    det.restore(snap)
    out = det.process(ReadingBatch.from_columns([0], [t8], [0]))
    assert det.reason_names(out.reason).tolist() == ["dead_camera"] and out.level[0] == LEVEL_CRITICAL
    assert out.score[0] == 1.0 and out.threshold[0] > 40
    det.restore(snap)
    out = det.process(ReadingBatch.from_columns([1], [t8], [0]))  # one zero on a side street at 8
    assert out.level[0] <= LEVEL_WARNING


def test_zero_run_accumulates_joint_probability_and_resets_on_traffic():
    series = _two_cameras(("main", "side"))
    det = _warm_zero_detector(series)
    t3 = MONDAY_NS + 2 * DAY + 3 * HOUR + np.arange(12) * MINUTE
    vals = np.zeros(12)
    vals[6] = 2  # traffic seen: the run starts again
    out = det.process(ReadingBatch.from_columns(np.zeros(12, int), t3, vals))
    names = det.reason_names(out.reason).tolist()
    assert names[0] == "true_zero" and names[6] == "ok"
    # Scores rise with the length of the run, then fall back after the non-zero count.
    assert np.all(np.diff(out.score[:6]) > 0)
    assert out.score[7] < out.score[5]
    assert np.all(np.diff(out.score[7:]) > 0)
    assert "dead_camera" in names[:6] or "zero_unlikely" in names[:6]
    # The side street keeps reporting true zeros all night.
    side = det.process(ReadingBatch.from_columns(np.ones(12, int), t3, np.zeros(12)))
    assert set(det.reason_names(side.reason).tolist()) == {"true_zero"}


def test_road_class_floor_judges_a_main_road_before_warm_up_and_after_a_long_death():
    series = _two_cameras(("main", "side"))
    det = TrafficZeroDetector(series)  # nothing learned yet
    t = MONDAY_NS + 8 * HOUR + np.arange(3) * MINUTE
    out = det.process(ReadingBatch.from_columns([0, 0, 0, 1, 1, 1], np.concatenate([t, t]), np.zeros(6)))
    names = det.reason_names(out.reason).tolist()
    # Floor 5 a minute: P(0) = e^-5 per zero, a run of three has e^-15 = 3e-7 < 1e-6.
    assert names[:3] == ["true_zero", "zero_unlikely", "dead_camera"]
    assert names[3:] == ["warming_up"] * 3 and np.all(out.level[3:] == LEVEL_NOT_EVALUATED)
    # At night the floor does not apply: an unlearned bin is not judged.
    out = det.process(ReadingBatch.from_columns([0], [MONDAY_NS + 2 * HOUR + DAY], [0]))
    assert det.reason_names(out.reason).tolist() == ["warming_up"]
    # A camera dead for ten days has taught its baseline that 08:00 is empty; the floor still holds.
    dead = TrafficZeroDetector(series, TrafficZeroConfig(seasonal=SeasonalConfig(day_types="all", warmup_samples=20)))
    t = np.concatenate([MONDAY_NS + d * DAY + 8 * HOUR + np.arange(60) * MINUTE for d in range(10)])
    out = dead.process(ReadingBatch.from_columns(np.zeros(len(t), int), t, np.zeros(len(t))))
    b = dead.baseline.bins(t[:1])[0]
    assert dead.baseline.state["mean"][0, b] < 0.01
    assert np.all(out.level[-100:] == LEVEL_CRITICAL)


def test_non_traffic_series_are_not_evaluated():
    series, sid = _one("intensity", domain="air", road_class=None)
    det = TrafficZeroDetector(series)
    out = det.process(_batch(sid, [MONDAY_NS + 8 * HOUR], [0]))
    assert out.level[0] == LEVEL_NOT_EVALUATED


# ------------------------------------------------------------------------------------------------
# Simulator scenario: dead cameras (zeros overlaid on the simulated counts) among true zeros

MONDAY_S = MONDAY_NS / 1e9


def _simulated_counts(seed: int, days: int):
    from citywatch.simulator import Simulator

    registry = Registry.load(REGISTRY_PATH)
    series = SeriesIndex(registry)
    series.add_registry()
    sim = Simulator(registry, seed=seed, start=MONDAY_S, domains=["traffic"])
    sid, ts, val = [], [], []
    for sensor_id in sim.sims:
        t, vals = sim.readings(sensor_id, MONDAY_S, MONDAY_S + days * 86400)
        sid.append(np.full(len(t), series.get(sensor_id, "intensity")))
        ts.append(t.astype(np.int64) * 10**6)
        val.append(vals["intensity"])
    sid, ts, val = np.concatenate(sid), np.concatenate(ts), np.concatenate(val)
    order = np.lexsort((ts, sid))
    return series, sid[order], ts[order], val[order]


def test_simulated_dead_cameras_detected_and_night_zeros_left_alone():
    """Ten simulated days of the 40 cameras (Poisson counts with weekday/weekend profiles by road
    class). From day 8 on, 60 dead-camera windows (10-90 minutes of zeros) at random times on random
    cameras. A window is a *target* when the hidden traffic was at least 20 vehicles (a dead camera
    on a side street at 03:00 hides nothing and cannot be told from a true zero). Alerts are the
    rises to CRITICAL (dead_camera); precision over all of them from day 8 on."""
    series, sid, ts, val = _simulated_counts(seed=3, days=10)
    rng = np.random.default_rng(3)
    cams = np.unique(sid)
    eval_start = MONDAY_NS + 7 * DAY
    windows = []
    dead = val.copy()
    for _ in range(60):
        cam = int(rng.choice(cams))
        start = eval_start + int(rng.integers(0, 3 * 1440 - 100)) * MINUTE
        end = start + int(rng.integers(10, 91)) * MINUTE
        inside = (sid == cam) & (ts >= start) & (ts < end)
        windows.append((cam, start, end, float(val[inside].sum()), np.flatnonzero(inside)))
        dead[inside] = 0
    det = TrafficZeroDetector(series)  # defaults: 1-hour bins, weekday / Saturday / Sunday
    level = np.full(len(sid), LEVEL_NOT_EVALUATED, np.int8)
    reason = np.zeros(len(sid), np.int16)
    day = (ts - MONDAY_NS) // DAY
    by_day = np.argsort(day, kind="stable")
    bounds = np.searchsorted(day[by_day], np.arange(day.max() + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = by_day[lo:hi]
        out = det.process(ReadingBatch.from_columns(sid[idx], ts[idx], dead[idx]))
        level[idx], reason[idx] = out.level, out.reason
    names = np.asarray(det.reasons)
    # Alert edges: evaluated level rising to critical.
    ev = np.flatnonzero(level >= 0)
    prev = np.r_[LEVEL_OK, level[ev][:-1]]
    prev[np.r_[True, sid[ev][1:] != sid[ev][:-1]]] = LEVEL_OK
    edges = ev[(level[ev] == LEVEL_CRITICAL) & (prev < LEVEL_CRITICAL) & (ts[ev] >= eval_start)]
    in_window = np.zeros(len(sid), bool)
    for _, _, _, _, rows in windows:
        in_window[rows] = True
    tp = int(in_window[edges].sum())
    precision = tp / len(edges)
    targets = [w for w in windows if w[3] >= 20]
    delays = []
    for cam, start, end, hidden, rows in targets:
        hit = rows[(level[rows] == LEVEL_CRITICAL) & (names[reason[rows]] == "dead_camera")]
        if len(hit):
            delays.append((ts[hit[0]] - start) / MINUTE)
    recall = len(delays) / len(targets)
    # True zeros outside the windows (night, side streets) stay OK or at most a warning.
    true_zero_rows = (val == 0) & ~in_window & (level >= 0) & (ts >= eval_start)
    print(f"dead cameras: {len(targets)} targets, recall {recall:.3f}, median delay {np.median(delays)} min, "
          f"precision {precision:.3f} ({len(edges)} critical alerts); true zeros judged {true_zero_rows.sum()}, "
          f"of which true_zero {np.mean(names[reason[true_zero_rows]] == 'true_zero'):.3f}")
    assert len(targets) >= 40
    assert precision >= 0.95
    assert recall >= 0.95
    assert np.median(delays) <= 2.0
    assert true_zero_rows.sum() > 500
    assert np.mean(level[true_zero_rows] == LEVEL_CRITICAL) < 0.005


def test_count_tails_are_calibrated_on_simulated_traffic_where_a_gaussian_is_not():
    """Two simulated weeks of the 40 cameras, no faults. After the first week (warm-up), the
    count-aware baseline warns on about warn_p of the readings, as a calibrated two-sided tail
    should; the same baseline judging the counts with a Gaussian tail warns many times more often
    and raises critical alerts on ordinary counts (low night-time counts are skewed)."""
    series, sid, ts, val = _simulated_counts(seed=4, days=14)
    day = (ts - MONDAY_NS) // DAY
    by_day = np.argsort(day, kind="stable")
    bounds = np.searchsorted(day[by_day], np.arange(day.max() + 2))
    rates = {}
    for name, counts in (("count", ["intensity"]), ("gaussian", [])):
        det = SeasonalBaseline(series, SeasonalConfig(metrics=["intensity"], count_metrics=counts))
        level = np.full(len(sid), LEVEL_NOT_EVALUATED, np.int8)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            idx = by_day[lo:hi]
            level[idx] = det.process(ReadingBatch.from_columns(sid[idx], ts[idx], val[idx])).level
        judged = (day >= 7) & (level >= 0)
        rates[name] = (np.mean(level[judged] == LEVEL_WARNING), np.mean(level[judged] == LEVEL_CRITICAL), judged.sum())
    print("false alarm rates (warning, critical, readings):", rates)
    warn, crit, n = rates["count"]
    assert n > 350_000
    assert warn < 3e-4 and crit < 2e-5
    g_warn, g_crit, _ = rates["gaussian"]
    assert g_warn > 4 * warn and g_crit > 10 * max(crit, 1.0 / n)


def test_traffic_zero_late_and_duplicate_rows_change_nothing():
    series = _two_cameras(("main", "side"))
    det = _warm_zero_detector(series)
    t = MONDAY_NS + 2 * DAY + 3 * HOUR + np.arange(3) * MINUTE
    det.process(ReadingBatch.from_columns([0, 0, 0], t, [0, 0, 0]))  # a run of zeros is under way
    before = {k: v.copy() for k, v in det.snapshot().items()}
    late = ReadingBatch.from_columns([0, 0, 0], t[-1] + np.array([-MINUTE, 0, 0]), [0, 7, 0],
                                     [FLAG_LATE, FLAG_DUPLICATE, FLAG_DUPLICATE])
    out = det.process(late)
    assert np.all(out.level == LEVEL_NOT_EVALUATED)
    after = det.snapshot()
    assert set(after) == set(before) and any(k.startswith("baseline.") for k in after)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)
    assert after["run_len"][0] == 3
