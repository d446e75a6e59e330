"""The default anomaly profile (`AnomalyScore`) on synthetic series whose answers are known.

The streaming contract (causality, batch-size invariance, snapshot/restore, series independence,
ignored rows, bounded state) is tested for every statistical detector, this one included, in
test_detectors_statistical.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from citywatch.batch import ReadingBatch
from citywatch.detectors import LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK
from citywatch.detectors.anomaly_score import SAMPLE_CONFIG, AnomalyConfig, AnomalyScore
from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor

MINUTE = 60 * 10**9
WARMUP = AnomalyConfig().warmup


def make_index(n_series: int = 1) -> SeriesIndex:
    sensors = {
        f"s{i}": Sensor(id=f"s{i}", domain="water", area="a", lat=10.9, lon=106.8, interval=60,
                        metrics={"level": MetricSpec(unit="m")})
        for i in range(n_series)
    }
    index = SeriesIndex(Registry(sensors))
    index.add_registry()
    return index


def score(values, cfg: AnomalyConfig | None = None):
    values = np.asarray(values, dtype=np.float64)
    det = AnomalyScore(make_index(), cfg)
    out = det.process(ReadingBatch.from_columns(np.zeros(len(values)), np.arange(len(values)) * MINUTE, values))
    return det, out


def alarms(out, start: int = 0) -> np.ndarray:
    return np.flatnonzero(out.level[start:] > LEVEL_OK) + start


def noise(n: int, seed: int) -> np.ndarray:
    return 10.0 + np.random.default_rng(seed).normal(size=n)


def test_sample_config_validates_and_is_the_default():
    block = yaml.safe_load(SAMPLE_CONFIG)["detectors"]["anomaly"]
    cfg = AnomalyConfig.model_validate(block)
    assert cfg == AnomalyConfig()
    with pytest.raises(ValueError):
        AnomalyConfig.model_validate({"refractory": -1})
    with pytest.raises(ValueError):
        AnomalyConfig.model_validate({"weights": 1})


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_clean_gaussian_gives_low_scores_and_no_alarm_after_warmup(seed):
    det, out = score(noise(3000, seed))
    assert (out.level[:WARMUP] == LEVEL_NOT_EVALUATED).all() and np.isnan(out.score[:WARMUP]).all()
    assert not np.isnan(out.score[WARMUP:]).any()
    assert np.median(out.score[WARMUP:]) == 0.0  # inside its known range: nothing to report
    assert np.quantile(out.score[WARMUP:], 0.99) < 0.6
    # warning ~ 2 per 10,000 clean readings (module docstring): at most one stray in 2,800
    assert len(alarms(out, WARMUP)) <= 1
    assert (out.level != LEVEL_CRITICAL).all()


def test_spike_is_flagged_at_once_as_a_new_extreme():
    values = noise(1500, 5)
    values[1000] = 25.0  # 15 sigma
    det, out = score(values)
    assert 1000 in alarms(out).tolist()
    assert out.level[1000] == LEVEL_CRITICAL
    assert det.reason_names(out.reason)[1000] == "new_extreme"
    assert out.score[1000] > 0.95


def test_dip_inside_the_range_is_a_spike():
    """A dip that stays inside the range a daily-like swing spans is caught by the robust z-score."""
    t = np.arange(3000)
    values = 10.0 + 6.0 * np.sin(t / 150) + np.random.default_rng(6).normal(size=3000)
    crest = int(round(150 * (np.pi / 2 + 4 * np.pi)))  # the swing's third crest
    values[crest] -= 10.0  # 10 sigma below its neighbours, well above the swing's low end
    assert values[crest] > values[:crest].min() + 3
    det, out = score(values)
    assert out.level[crest] > LEVEL_OK
    assert det.reason_names(out.reason)[crest] == "spike"


@pytest.mark.parametrize("shift", [4.0, -4.0, 6.0])
def test_step_is_detected_within_a_few_readings(shift):
    values = noise(2000, 7)
    values[1200:] += shift
    det, out = score(values)
    first = alarms(out, 1200)
    assert len(first) and first[0] <= 1203
    assert det.reason_names(out.reason)[first[0]] in ("new_extreme", "level_shift")
    assert len(alarms(out, WARMUP)[alarms(out, WARMUP) < 1200]) <= 1


def test_a_smaller_step_scores_but_stays_below_warning():
    """Sensitivity: a 3 sigma step scores about 0.75 (the NAB-optimal threshold is ~0.58), below
    the warning level; the module docstring says so."""
    values = noise(2000, 7)
    values[1200:] += 3.0
    _, out = score(values)
    assert 0.6 < out.score[1200:1210].max() < AnomalyConfig().warning


def test_noisier_sensor_is_flagged():
    values = noise(3000, 9)
    values[1500:1700] = 10.0 + 4.0 * (values[1500:1700] - 10.0)  # noise x4
    det, out = score(values)
    first = alarms(out, 1500)
    assert len(first) and first[0] < 1530
    assert len(alarms(out, WARMUP)[alarms(out, WARMUP) < 1500]) <= 1


def test_one_event_raises_one_alarm():
    values = noise(2000, 10)
    values[1500:1520] = 30.0  # a 20-reading excursion
    det, out = score(values)
    during = alarms(out, 1500)
    during = during[during < 1600]
    assert during.tolist() == [1500]
    # the damped readings still show the excursion, at a lower score
    assert (out.score[1501:1520] > 0).all() and (out.score[1501:1520] < out.score[1500]).all()


def test_worsening_event_raises_the_score_again():
    values = noise(2000, 11)
    values[1500] = 14.5
    values[1510] = 40.0  # much worse than the first
    det, out = score(values)
    assert out.score[1510] > out.score[1500]
    assert out.level[1510] == LEVEL_CRITICAL


def test_scale_and_offset_do_not_change_the_scores():
    values = noise(1500, 12)
    values[900:] += 2.5
    values[1200] = 30.0
    _, a = score(values)
    _, b = score(250.0 * values - 1e4)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6, equal_nan=True)
    assert np.array_equal(a.level, b.level)


def test_irregular_timestamps_give_the_same_scores_as_regular_ones():
    """Memories count readings: the gaps between event times do not enter the statistics (the time
    of week does, in the profile statistic only; without it the times are only an order)."""
    values = noise(1200, 13)
    values[1000] = 20.0
    cfg = AnomalyConfig(profile=None)
    gaps = np.random.default_rng(14).integers(1, 600, 1200)
    irregular = AnomalyScore(make_index(), cfg).process(
        ReadingBatch.from_columns(np.zeros(1200), np.cumsum(gaps) * 10**9, values))
    regular = AnomalyScore(make_index(), cfg).process(
        ReadingBatch.from_columns(np.zeros(1200), np.arange(1200) * 60 * 10**9, values))
    assert np.array_equal(irregular.score, regular.score, equal_nan=True)
    assert irregular.level[1000] > 0


def test_constant_series_scores_zero():
    det, out = score(np.full(1000, 3.3))
    assert (out.score[WARMUP:] == 0.0).all() and (out.level[WARMUP:] == LEVEL_OK).all()


def test_constant_series_that_moves_is_flagged():
    values = np.full(1000, 3.3)
    values[800:] = 3.4
    det, out = score(values)
    assert alarms(out).tolist()[:1] == [800]


def counts_mostly_zero(n: int, seed: int) -> np.ndarray:
    """Event counts that are 0 most of the time, with occasional 1s, 2s and rare bursts up to 40."""
    rng = np.random.default_rng(seed)
    values = rng.poisson(0.15, n).astype(float)
    bursts = rng.choice(n, n // 400, replace=False)
    values[bursts] = rng.integers(10, 40, len(bursts))
    return values


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_mostly_zero_counts_raise_no_spike_alarms_for_ordinary_small_counts(seed):
    """With a MAD of 0, the robust sigma alone made each ordinary 2 among the 0s a huge z-score;
    floored at `sigma_floor` of the range, the readings that are neither new extremes nor bursts
    stay quiet."""
    values = counts_mostly_zero(4000, seed)
    det, out = score(values)
    small = np.flatnonzero((values <= 3) & (np.arange(len(values)) >= WARMUP))
    assert (out.level[small] <= LEVEL_OK).all()
    unfloored = score(values, AnomalyConfig(sigma_floor=0.0))[1]
    assert (unfloored.level[small] > LEVEL_OK).sum() > (out.level[small] > LEVEL_OK).sum()


def daily_cycle(days: int, seed: int, noise_sd: float = 0.3, step: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """5-minute readings of a daily swing 30..70 with noise; event times from midnight UTC."""
    t = np.arange(days * 86400 // step) * step
    values = 50 + 20 * np.sin(2 * np.pi * t / 86400) + np.random.default_rng(seed).normal(0, noise_sd, len(t))
    return t * 10**9, values


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_missing_daily_swing_stands_out_by_the_time_of_week(seed):
    """Day 10's swing stays flat at its mean: every value lies well inside the series' range, so only
    the time-of-week profile (ready after a week) tells. It builds up over hours, so it does not
    reach a warning (each reading widens the envelope a little), but it scores above every clean day
    since the profile's warm-up, and at least twice what the profile scores without the statistic."""
    ts, values = daily_cycle(12, seed)
    per_day = 288
    day10 = slice(10 * per_day, 11 * per_day)
    values[day10] = 50 + np.random.default_rng(seed + 10).normal(0, 0.3, per_day)
    batch = ReadingBatch.from_columns(np.zeros(len(values)), ts, values)
    out = AnomalyScore(make_index()).process(batch)
    blind = AnomalyScore(make_index(), AnomalyConfig(profile=None)).process(batch)
    assert alarms(out).tolist() == [] or alarms(out)[0] >= day10.start
    flat_day = np.nanmax(out.score[day10])
    assert flat_day > np.nanmax(out.score[8 * per_day: day10.start])
    assert np.nanmax(blind.score[day10]) < 0.5 * flat_day


def test_the_profile_needs_whole_bins_of_its_period():
    with pytest.raises(ValueError, match="divide the period"):
        AnomalyConfig.model_validate({"profile": {"bins": 7, "period": "1d"}})
    cfg = AnomalyConfig.model_validate({"profile": {"bins": 48, "period": "1d"}})
    assert AnomalyScore(make_index(), cfg).state["tp_mean"].shape[1] == 48


def test_the_profile_is_independent_of_the_batches_and_survives_a_snapshot():
    """Its wide state is updated in place by series id (not gathered per batch): batches of any size
    and a restart in the middle give the same scores as one pass."""
    ts, values = daily_cycle(10, 4)
    values[9 * 288 + 60: 9 * 288 + 120] -= 15.0  # a missing morning on day 9
    batch = ReadingBatch.from_columns(np.zeros(len(values)), ts, values)
    whole = AnomalyScore(make_index()).process(batch).score
    det = AnomalyScore(make_index())
    parts = []
    for k, start in enumerate(range(0, len(values), 997)):
        if k == 2:
            snap = det.snapshot()
            det = AnomalyScore(make_index())
            det.restore(snap)
        parts.append(det.process(batch.take(np.arange(start, min(start + 997, len(values))))).score)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, equal_nan=True)
    assert np.nanmax(whole[9 * 288 + 60: 9 * 288 + 130]) > np.nanmax(whole[8 * 288: 9 * 288])


def test_each_series_keeps_its_own_profile_in_shared_batches():
    """Three series of different lengths in two batches whose longest run (processed first) is a
    different series each time score exactly as each does alone: the profile is read and written by
    global series id, not by the position of the series' run in the batch."""
    cycles = [daily_cycle(d, 30 + k) for k, d in enumerate((8, 9, 10))]
    cycles[1][1][8 * 288 + 60: 8 * 288 + 120] += 12.0  # an unusual morning on one series only
    ids = np.concatenate([np.full(len(v), k) for k, (_, v) in enumerate(cycles)])
    ts = np.concatenate([t for t, _ in cycles])
    values = np.concatenate([v for _, v in cycles])
    first = ts < np.where(ids == 0, 6, 1) * 86400 * 10**9  # series 0 leads the first batch, 2 the second
    cfg = AnomalyConfig(coherence=None)  # same place: no neighbours' damping either way
    det = AnomalyScore(make_index(3), cfg)
    together = np.empty(len(values))
    for part in (first, ~first):
        rows = np.flatnonzero(part)
        rows = rows[np.lexsort((ts[rows], ids[rows]))]
        together[rows] = det.process(ReadingBatch.from_columns(ids[rows], ts[rows], values[rows])).score
    for k, (t, v) in enumerate(cycles):
        alone = AnomalyScore(make_index(3), cfg).process(ReadingBatch.from_columns(np.full(len(v), k), t, v)).score
        np.testing.assert_array_equal(together[ids == k], alone)
