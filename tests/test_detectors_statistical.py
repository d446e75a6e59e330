"""Statistical detectors (robust z-score, EWMA/CUSUM, variance shift, range novelty) on synthetic
series whose answers are known, and the streaming contract they share with the default profile:
causality, batch-size invariance, snapshot/restore, series independence, late/duplicate/NaN rows."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import yaml

import citywatch.detectors._streaming as streaming_mod
import citywatch.detectors.anomaly_score as anomaly_mod
import citywatch.detectors.ewma_cusum as cusum_mod
import citywatch.detectors.range_novelty as novelty_mod
import citywatch.detectors.robust_zscore as robust_mod
import citywatch.detectors.variance_shift as variance_mod
from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.detectors import LEVEL_NOT_EVALUATED, LEVEL_OK, DetectorOutput
from citywatch.detectors._streaming import RunLayout, p_from_score, score_from_p
from citywatch.detectors.anomaly_score import AnomalyScore
from citywatch.detectors.ewma_cusum import CusumConfig, EwmaCusum
from citywatch.detectors.range_novelty import NoveltyConfig, RangeNovelty
from citywatch.detectors.robust_zscore import RobustZConfig, RobustZScore
from citywatch.detectors.variance_shift import VarianceConfig, VarianceShift
from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor

S = 10**9
MINUTE = 60 * S


def make_index(n_series: int = 1) -> SeriesIndex:
    sensors = {
        f"s{i}": Sensor(id=f"s{i}", domain="air", area="a", lat=10.9, lon=106.8, interval=60,
                        metrics={"no2": MetricSpec(unit="ug/m3")})
        for i in range(n_series)
    }
    index = SeriesIndex(Registry(sensors))
    index.add_registry()
    return index


def one_series(values, start: int = 0, flags=None) -> ReadingBatch:
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return ReadingBatch.from_columns(np.zeros(n), (start + np.arange(n)) * MINUTE, values, flags)


def gaussian(n: int, seed: int, mean: float = 50.0, sd: float = 2.0) -> np.ndarray:
    return mean + sd * np.random.default_rng(seed).normal(size=n)


def first_alarm(out, after: int = 0) -> int:
    hits = np.flatnonzero(out.level[after:] > LEVEL_OK)
    return int(hits[0]) + after if len(hits) else -1


def reasons(det, out) -> list[str]:
    return det.reason_names(out.reason).tolist()


def same(a, b) -> bool:
    return np.array_equal(a, b, equal_nan=True)


def assert_same_output(a, b) -> None:
    assert same(a.score, b.score)
    assert np.array_equal(a.level, b.level)
    assert np.array_equal(a.reason, b.reason)
    assert same(a.threshold, b.threshold)


def concat(outs) -> DetectorOutput:
    return DetectorOutput(*(np.concatenate([getattr(o, f) for o in outs]) for f in ("score", "level", "reason", "threshold")))


def rows_of(out: DetectorOutput, rows) -> DetectorOutput:
    return DetectorOutput(out.score[rows], out.level[rows], out.reason[rows], out.threshold[rows])


FACTORIES = {
    "robust_zscore": lambda idx: RobustZScore(idx),
    "ewma_cusum": lambda idx: EwmaCusum(idx),
    "variance_shift": lambda idx: VarianceShift(idx),
    "range_novelty": lambda idx: RangeNovelty(idx),
    "anomaly": lambda idx: AnomalyScore(idx),
}


def eventful(n: int = 700, seed: int = 11) -> np.ndarray:
    """Noise with a spike, a level shift, a variance change and a new high: every code path runs."""
    v = gaussian(n, seed)
    at = (np.array([0.36, 0.5, 0.64, 0.74, 0.86]) * n).astype(int)
    v[at[0]] += 30.0
    v[at[1]:] += 6.0
    v[at[2]:at[3]] = 56.0 + 8.0 * (v[at[2]:at[3]] - 56.0)
    v[at[4]] = 200.0
    return v


# --------------------------------------------------------------------------------------------- docs and config


@pytest.mark.parametrize("module", [streaming_mod, robust_mod, cusum_mod, variance_mod, novelty_mod, anomaly_mod])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize(("module", "key", "model"), [
    (robust_mod, "robust_zscore", RobustZConfig),
    (cusum_mod, "ewma_cusum", CusumConfig),
    (variance_mod, "variance_shift", VarianceConfig),
    (novelty_mod, "range_novelty", NoveltyConfig),
])
def test_sample_config_validates(module, key, model):
    block = yaml.safe_load(module.SAMPLE_CONFIG)["detectors"][key]
    cfg = model.model_validate(block)
    assert cfg == model.model_validate(cfg.model_dump())
    with pytest.raises(ValueError):
        model.model_validate({**block, "no_such_option": 1})


def test_score_and_p_value_scale_round_trip():
    p = np.array([1.0, 1e-2, 1e-5, 1e-10, 1e-20, 0.0])
    assert score_from_p(p).tolist() == pytest.approx([0.0, 0.2, 0.5, 1.0, 1.0, 1.0])
    assert p_from_score(0.4) == pytest.approx(1e-4)


def test_run_layout_orders_runs_longest_first():
    layout = RunLayout.of(np.array([3, 3, 5, 7, 7, 7], np.int32))
    assert layout.series.tolist() == [7, 3, 5]
    assert layout.first_row.tolist() == [3, 0, 2]
    assert layout.active.tolist() == [3, 2, 1]


# --------------------------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_robust_z_clean_gaussian_gives_no_alarm_after_warmup(seed):
    det = RobustZScore(make_index())
    out = det.process(one_series(gaussian(3000, seed)))
    assert (out.level[:32] == LEVEL_NOT_EVALUATED).all() and np.isnan(out.score[:32]).all()
    # warning is p <= 1e-4 per reading: 3000 clean readings should not raise more than a stray one
    assert (out.level[32:] > LEVEL_OK).sum() <= 2
    assert np.nanmedian(out.score) < 0.05
    # the streaming sigma estimates the true standard deviation (2.0) within the SA's jitter
    sigma = (out.threshold[32:] - 50.0) / np.where(out.threshold[32:] > 50, 1, -1) / 3.89
    assert 1.5 < np.median(sigma) < 2.6


def test_robust_z_spike_scores_high_and_does_not_mask_itself():
    values = gaussian(400, 4)
    values[300] = 50.0 + 10 * 2.0  # a 10 sigma spike
    values[301] = 50.0 - 10 * 2.0
    det = RobustZScore(make_index())
    out = det.process(one_series(values))
    assert out.level[300] == 2 and out.level[301] == 2
    assert reasons(det, out)[300] == "spike"
    assert out.score[300] >= 0.7
    assert out.threshold[300] > 50 > out.threshold[301]  # the warning limit on the reading's side
    # the spike barely moves the median/MAD: the next normal readings are ok
    assert (out.level[303:320] == LEVEL_OK).all()


def test_robust_z_is_scale_invariant():
    values = gaussian(500, 5)
    values[400] += 15
    a = RobustZScore(make_index()).process(one_series(values))
    b = RobustZScore(make_index()).process(one_series(1000.0 * values - 7.0))
    np.testing.assert_allclose(a.score, b.score, atol=1e-9)
    assert np.array_equal(a.level, b.level)


@pytest.mark.parametrize(("shift", "reason"), [(2.0, "level_up"), (-2.0, "level_down")])
def test_cusum_detects_a_step_within_a_few_readings(shift, reason):
    values = gaussian(600, 6, sd=1.0)
    values[400:] += shift
    det = EwmaCusum(make_index())
    out = det.process(one_series(values))
    assert first_alarm(out, 32) >= 400  # nothing before the step
    assert 400 <= first_alarm(out, 400) <= 400 + 12  # ~ h / (shift - k) readings
    assert reasons(det, out)[first_alarm(out, 400)] == reason


def test_cusum_ignores_a_lone_spike_and_accepts_a_new_level():
    values = gaussian(1200, 7, sd=1.0)
    values[300] += 40.0  # clipped at 3 sigma: one reading cannot make a shift
    values[600:] += 3.0
    det = EwmaCusum(make_index())
    out = det.process(one_series(values))
    assert (out.level[290:320] == LEVEL_OK).all()
    assert first_alarm(out, 600) < 610
    # the baseline has followed the shift: the statistic is back to its no-change range
    assert np.nanmedian(out.score[1000:]) < 0.05 and (out.level[1000:] < 2).all()


def test_variance_jump_is_flagged_and_flatline_too():
    values = gaussian(900, 8)
    values[400:600] = 50.0 + 4.0 * (values[400:600] - 50.0)  # noise x4
    values[750:] = values[749]  # the sensor freezes
    det = VarianceShift(make_index())
    out = det.process(one_series(values))
    assert first_alarm(out, 32) >= 400
    up = first_alarm(out, 400)
    assert up <= 420 and reasons(det, out)[up] == "variance_up"
    down = first_alarm(out, 750)
    assert down <= 770 and reasons(det, out)[down] == "variance_down"


def test_variance_of_a_constant_series_is_no_change():
    out = VarianceShift(make_index()).process(one_series(np.full(300, 7.0)))
    assert (out.level[32:] == LEVEL_OK).all() and np.nanmax(out.score) < 0.01  # ratio 1: p ~ 0.9


def test_range_novelty_new_high_and_low_only():
    t = np.arange(1000)
    values = 40 + 20 * np.sin(t / 15)  # a daily-like cycle, always inside [20, 60]
    values[700] = 75.0
    values[800] = 5.0
    det = RangeNovelty(make_index())
    out = det.process(one_series(values))
    assert np.flatnonzero(out.level > LEVEL_OK).tolist() == [700, 800]
    assert reasons(det, out)[700] == "new_high" and reasons(det, out)[800] == "new_low"
    assert out.threshold[700] == pytest.approx(60.0, abs=1.0)  # the envelope, minus its slow shrink
    assert out.threshold[800] == pytest.approx(20.0, abs=1.0)


def test_range_novelty_forgets_old_extremes():
    values = np.concatenate([np.full(200, 10.0), [100.0], 10 + np.random.default_rng(9).uniform(0, 1, 3000)])
    values[2500] = 60.0  # above everything since the 100 was forgotten (memory 500)
    det = RangeNovelty(make_index(), NoveltyConfig(memory=500))
    out = det.process(one_series(values))
    assert out.level[200] > LEVEL_OK and out.level[2501] == LEVEL_OK
    assert out.level[2501 - 1] > LEVEL_OK


# --------------------------------------------------------------------------------------------- streaming contract


@pytest.mark.parametrize("name", list(FACTORIES))
def test_causal_prefix_scores_do_not_change_when_rows_are_appended(name):
    values = eventful()
    full = FACTORIES[name](make_index()).process(one_series(values))
    for k in (150, 260, 451):
        prefix = FACTORIES[name](make_index()).process(one_series(values[:k]))
        assert_same_output(prefix, rows_of(full, slice(0, k)))


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_batch_size_invariance(name, chunk):
    values = eventful()
    whole = FACTORIES[name](make_index()).process(one_series(values))
    det = FACTORIES[name](make_index())
    parts = [det.process(one_series(values[i:i + chunk], start=i)) for i in range(0, len(values), chunk)]
    assert_same_output(whole, concat(parts))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_snapshot_restore_mid_stream(name):
    values = eventful()
    whole = FACTORIES[name](make_index()).process(one_series(values))
    det = FACTORIES[name](make_index())
    first = det.process(one_series(values[:333]))
    snap = {k: v.copy() for k, v in det.snapshot().items()}
    again = FACTORIES[name](make_index())
    again.restore(snap)
    second = again.process(one_series(values[333:], start=333))
    assert_same_output(whole, concat([first, second]))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_interleaved_series_match_each_alone(name):
    n_series, n = 5, 400
    rng = np.random.default_rng(12)
    data = [eventful(n, seed=s) * (s + 1) for s in range(n_series)]
    alone = [FACTORIES[name](make_index(1)).process(one_series(v)) for v in data]
    # all series in one batch, with different run lengths per batch and series appearing late
    det = FACTORIES[name](make_index(n_series))
    got = {s: [] for s in range(n_series)}
    pos = [0] * n_series
    while any(p < n for p in pos):
        sid, ts, val = [], [], []
        for s in range(n_series):
            take = min(int(rng.integers(0, 60)) if s != 3 or pos[0] > 100 else 0, n - pos[s])
            sid += [s] * take
            ts += list((pos[s] + np.arange(take)) * MINUTE)
            val += list(data[s][pos[s]:pos[s] + take])
            pos[s] += take
        batch = ReadingBatch.from_columns(sid, ts, val)
        out = det.process(batch)
        for s in range(n_series):
            rows = np.flatnonzero(batch.series == s)
            if len(rows):
                got[s].append(rows_of(out, rows))
    for s in range(n_series):
        assert_same_output(alone[s], concat(got[s]))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_nan_inf_late_duplicate_and_skipped_rows_do_not_move_state(name):
    values = eventful(500)
    clean = FACTORIES[name](make_index()).process(one_series(values))
    # the same stream with extra rows that must be ignored: NaN, LATE, DUPLICATE, and skipped ones
    det = FACTORIES[name](make_index())
    n = len(values)
    ts = list(np.arange(n) * MINUTE)
    extra_at = [10, 120, 260, 400, 450, 460]
    vals, stamps, flags, skip, is_extra = [], [], [], [], []
    for i in range(n):
        vals.append(values[i]); stamps.append(ts[i]); flags.append(0); skip.append(False); is_extra.append(False)
        if i in extra_at:
            kind = extra_at.index(i)
            vals.append([np.nan, 1e6, -1e6, 5e5, np.inf, -1e200][kind])
            stamps.append(ts[i] + S)
            flags.append([0, FLAG_LATE, FLAG_DUPLICATE, 0, 0, 0][kind])
            skip.append(kind == 3)
            is_extra.append(True)
    batch = ReadingBatch.from_columns(np.zeros(len(vals)), stamps, vals, flags)
    out = det.process(batch, skip=np.array(skip))
    is_extra = np.array(is_extra)
    assert (out.level[is_extra] == LEVEL_NOT_EVALUATED).all() and np.isnan(out.score[is_extra]).all()
    kept = rows_of(out, ~is_extra)
    assert_same_output(clean, kept)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_scores_are_in_unit_interval_and_levels_follow_scores(name):
    det = FACTORIES[name](make_index())
    out = det.process(one_series(eventful()))
    ok = ~np.isnan(out.score)
    assert ok.sum() > 400
    assert ((out.score[ok] >= 0) & (out.score[ok] <= 1)).all()
    assert ((out.level == LEVEL_NOT_EVALUATED) == ~ok).all()
    assert ((out.level[ok] > LEVEL_OK) == (out.reason[ok] > 0)).all()
    assert (out.level[ok] > LEVEL_OK).any()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_unsorted_batch_is_rejected(name):
    det = FACTORIES[name](make_index(2))
    with pytest.raises(ValueError, match="sorted"):
        det.process(ReadingBatch.from_columns([1, 0], [0, 0], [1.0, 2.0]))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_new_series_get_state_as_they_appear(name):
    index = make_index(1)
    det = FACTORIES[name](index)
    det.process(one_series(gaussian(50, 1)))
    sensor = Sensor(id="late", domain="air", area="a", lat=10.9, lon=106.8, interval=60,
                    metrics={"no2": MetricSpec(unit="ug/m3")})
    index.registry.sensors["late"] = sensor
    sid = index.add(sensor, "no2")
    values = eventful(300)
    out = det.process(ReadingBatch.from_columns([sid] * 300, np.arange(300) * MINUTE, values))
    alone = FACTORIES[name](make_index(1)).process(one_series(values))
    assert_same_output(alone, out)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_is_bounded_per_series(name):
    det = FACTORIES[name](make_index(100))
    det.process(ReadingBatch.from_columns(np.repeat(np.arange(100), 3), np.tile(np.arange(3), 100) * MINUTE,
                                          np.ones(300)))
    snap = det.snapshot()
    per_series = sum(v.nbytes for k, v in snap.items() if not k.startswith("__")) / 100
    assert per_series <= 2048
