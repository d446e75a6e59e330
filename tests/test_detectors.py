"""Detectors on synthetic series whose answers are known, plus properties against a plain-Python model."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import citywatch.detectors as detectors_pkg
import citywatch.detectors.base as base_mod
import citywatch.detectors.physical_range as physical_range_mod
import citywatch.detectors.threshold as threshold_mod
from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.config import DetectorsConfig, ThresholdRule
from citywatch.detectors import (
    LEVEL_CRITICAL,
    LEVEL_NOT_EVALUATED,
    LEVEL_OK,
    LEVEL_WARNING,
    PhysicalRangeDetector,
    ThresholdDetector,
    build_detectors,
    qcvn05_2023_air_rules,
)
from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor

S = 10**9  # ns per second


# --------------------------------------------------------------------------------------------- helpers


def make_sensor(sensor_id: str, domain: str = "air", **metrics: tuple[float | None, float | None]) -> Sensor:
    unit = {"air": "ug/m3", "water": "mg/L", "traffic": "veh", "forest": "Cel"}[domain]
    return Sensor(id=sensor_id, domain=domain, area="a1", lat=10.9, lon=106.8, interval=60,
                  metrics={m: MetricSpec(unit=unit, min=lo, max=hi) for m, (lo, hi) in metrics.items()})


def make_index(*sensors: Sensor) -> SeriesIndex:
    index = SeriesIndex(Registry({s.id: s for s in sensors}))
    index.add_registry()
    return index


def run(det, sid, ts_s, values, flags=None, skip=None):
    """Process readings given in (series, ts) order; ts in seconds."""
    n = len(values)
    sid = np.broadcast_to(np.asarray(sid), (n,))
    batch = ReadingBatch.from_columns(sid, np.asarray(ts_s, dtype=np.int64) * S, values, flags)
    return det.process(batch, skip=None if skip is None else np.asarray(skip, bool))


def reasons(det, out) -> list[str]:
    return det.reason_names(out.reason).tolist()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a, b, equal_nan=True)


def assert_same_output(a, b) -> None:
    assert np.array_equal(a.level, b.level)
    assert np.array_equal(a.reason, b.reason)
    assert same(a.threshold, b.threshold)
    np.testing.assert_allclose(a.score, b.score, rtol=0, atol=1e-12, equal_nan=True)


def rule(metric="no2", **kw) -> ThresholdRule:
    if "for_" in kw:
        kw["for"] = kw.pop("for_")
    return ThresholdRule(metric=metric, **kw)


# --------------------------------------------------------------------------------------------- doctests


@pytest.mark.parametrize("module", [base_mod, physical_range_mod, threshold_mod, detectors_pkg])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("module", [physical_range_mod, threshold_mod])
def test_sample_config_is_valid(module):
    cfg = DetectorsConfig.model_validate(yaml.safe_load(module.SAMPLE_CONFIG)["detectors"])
    index = make_index(make_sensor("s1", no2=(0, 2000)), make_sensor("w1", "water", do=(0, 20)))
    assert build_detectors(index, cfg)


# --------------------------------------------------------------------------------------------- physical range


def test_physical_range_both_sides_and_nan_bounds():
    index = make_index(make_sensor("s1", pm25=(0.0, 1000.0), temp=(None, 60.0), rh=(0.0, None), x=(None, None)))
    det = PhysicalRangeDetector(index)
    assert det.name == "physical_range"
    pm, temp, rh, x = (index.get("s1", m) for m in ("pm25", "temp", "rh", "x"))
    sid = [pm] * 5 + [temp] * 2 + [rh] * 2 + [x] * 2
    values = [-0.1, 0.0, 500.0, 1000.0, 1000.5, -1e9, 61.0, -2.0, 1e9, -1e12, 1e12]
    assert sid == sorted(sid)
    out = run(det, sid, list(range(11)), values)
    exp_level = np.array([2, 0, 0, 0, 2, 0, 2, 2, 0, 0, 0])
    exp_reason = ["below_physical_min", "ok", "ok", "ok", "above_physical_max", "ok", "above_physical_max",
                  "below_physical_min", "ok", "ok", "ok"]
    exp_thr = np.array([0.0, np.nan, np.nan, np.nan, 1000.0, np.nan, 60.0, 0.0, np.nan, np.nan, np.nan])
    assert out.level.tolist() == exp_level.tolist()
    assert reasons(det, out) == exp_reason
    assert same(out.threshold, exp_thr)
    assert out.score.tolist() == (exp_level == 2).astype(float).tolist()
    assert out.level.dtype == np.int8 and out.reason.dtype == np.int16


def test_physical_range_evaluates_late_and_duplicate_but_not_nan():
    index = make_index(make_sensor("s1", pm25=(0.0, 100.0)))
    det = PhysicalRangeDetector(index)
    out = run(det, 0, [1, 2, 3, 4], [200.0, -5.0, np.nan, 50.0], flags=[FLAG_LATE, FLAG_DUPLICATE, 0, FLAG_LATE])
    assert out.level.tolist() == [LEVEL_CRITICAL, LEVEL_CRITICAL, LEVEL_NOT_EVALUATED, LEVEL_OK]
    assert same(out.score, np.array([1.0, 1.0, np.nan, 0.0]))


def test_physical_range_picks_up_new_series():
    s1 = make_sensor("s1", pm25=(0.0, 100.0))
    index = make_index(s1)
    det = PhysicalRangeDetector(index)
    run(det, 0, [1], [1.0])
    s2 = make_sensor("s2", pm25=(10.0, 20.0))
    index.registry.sensors["s2"] = s2
    sid = index.add(s2, "pm25")
    out = run(det, [0, sid], [2, 2], [5.0, 5.0])
    assert out.level.tolist() == [LEVEL_OK, LEVEL_CRITICAL]
    assert out.threshold[1] == 10.0


# --------------------------------------------------------------------------------------------- threshold: known answers


@pytest.fixture
def air():
    return make_index(make_sensor("s1", no2=(0, 2000), so2=(0, 2000), co=(0, 1e6)))


def test_threshold_hysteresis_up_and_down(air):
    det = ThresholdDetector(air, [rule(warn=50, warn_reset=40, crit=80, crit_reset=70)])
    values = [10, 50, 45, 41, 39, 45, 80, 75, 71, 69, 45, 39, 49.9]
    out = run(det, 0, range(len(values)), values)
    assert out.level.tolist() == [0, 1, 1, 1, 0, 0, 2, 2, 2, 1, 1, 0, 0]
    assert reasons(det, out) == ["ok", "above_warn", "above_warn", "above_warn", "ok", "ok", "above_crit",
                                 "above_crit", "above_crit", "above_warn", "above_warn", "ok", "ok"]
    assert out.threshold.tolist() == [50, 50, 50, 50, 50, 50, 80, 80, 80, 50, 50, 50, 50]


def test_threshold_between_reset_and_set_keeps_either_state(air):
    det = ThresholdDetector(air, [rule(warn=50, warn_reset=40)])
    # 45 is between reset and set: off stays off, on stays on.
    out = run(det, 0, range(6), [45, 45, 55, 45, 45, 40])
    assert out.level.tolist() == [0, 0, 1, 1, 1, 1]  # 40 is not below the reset level 40


def test_threshold_without_reset_level_resets_at_the_level(air):
    det = ThresholdDetector(air, [rule(warn=50, crit=80)])
    out = run(det, 0, range(7), [49.99, 50, 49.99, 80, 79.99, 80, 10])
    assert out.level.tolist() == [0, 1, 0, 2, 1, 2, 0]


def test_threshold_warn_crit_warn_ok_sequence(air):
    det = ThresholdDetector(air, [rule(warn=160, warn_reset=144, crit=200, crit_reset=180)])
    values = [100, 150, 165, 190, 210, 195, 185, 179, 150, 145, 143, 100]
    out = run(det, 0, range(len(values)), values)
    assert out.level.tolist() == [0, 0, 1, 1, 2, 2, 2, 1, 1, 1, 0, 0]


def test_threshold_crit_only_and_warn_only_rules(air):
    det = ThresholdDetector(air, [rule("no2", crit=100, crit_reset=90), rule("so2", warn=100)])
    out = run(det, 0, range(4), [95, 100, 95, 89])
    assert out.level.tolist() == [0, 2, 2, 0]
    assert out.threshold.tolist() == [100, 100, 100, 100]
    assert out.score.tolist() == pytest.approx([0.5, 1.0, 0.5, 0.0])
    out = run(det, 1, range(4), [99, 100, 1000, 99])
    assert out.level.tolist() == [0, 1, 1, 0]
    assert out.score.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_threshold_for_duration_short_excursion_never_fires(air):
    det = ThresholdDetector(air, [rule(warn=50, for_="60s")])
    ts = [0, 10, 20, 30, 40, 50, 59, 60, 70]
    values = [60, 60, 60, 60, 60, 60, 60, 10, 60]  # above from 0 to 59 s: 59 s < 60 s
    out = run(det, 0, ts, values)
    assert out.level.tolist() == [0] * 9
    assert reasons(det, out) == ["pending"] * 7 + ["ok", "pending"]


def test_threshold_for_duration_fires_at_first_reading_reaching_it(air):
    det = ThresholdDetector(air, [rule(warn=50, warn_reset=40, crit=80, for_="60s")])
    ts = [0, 100, 130, 159, 161, 170]
    values = [10, 55, 45, 60, 60, 60]  # on at 100 s; 45 keeps it on (hysteresis)
    out = run(det, 0, ts, values)
    assert out.level.tolist() == [0, 0, 0, 0, 1, 1]
    # Exactly `for` later fires too.
    det = ThresholdDetector(air, [rule(warn=50, for_="60s")])
    out = run(det, 0, [0, 30, 60, 61], [55, 55, 55, 55])
    assert out.level.tolist() == [0, 0, 1, 1]


def test_threshold_for_duration_per_level_and_pending_reason(air):
    det = ThresholdDetector(air, [rule(warn=50, crit=80, for_="20s")])
    ts = [0, 10, 20, 30, 40, 50, 60]
    values = [60, 90, 90, 90, 90, 60, 60]
    out = run(det, 0, ts, values)
    # warn on at 0 -> effective at 20; crit on at 10 -> effective at 30; off at 50 (60 < 80).
    assert out.level.tolist() == [0, 0, 1, 2, 2, 1, 1]
    assert reasons(det, out) == ["pending", "pending", "pending", "above_crit", "above_crit", "above_warn",
                                 "above_warn"]
    assert out.threshold.tolist() == [50, 50, 50, 80, 80, 50, 50]


def test_threshold_for_duration_restarts_after_reset(air):
    det = ThresholdDetector(air, [rule(warn=50, for_="30s")])
    out = run(det, 0, [0, 20, 25, 40, 55, 70], [60, 60, 10, 60, 60, 60])
    assert out.level.tolist() == [0, 0, 0, 0, 0, 1]


def test_threshold_direction_below(air):
    water = make_index(make_sensor("w1", "water", do=(0, 20)))
    det = ThresholdDetector(water, [rule("do", direction="below", warn=4.0, warn_reset=4.5, crit=2.0,
                                         crit_reset=2.5)])
    values = [6.0, 4.0, 4.4, 4.6, 3.0, 2.0, 2.4, 2.6, 4.5, 4.51]
    out = run(det, 0, range(len(values)), values)
    assert out.level.tolist() == [0, 1, 1, 0, 1, 2, 2, 1, 1, 0]
    assert reasons(det, out) == ["ok", "below_warn", "below_warn", "ok", "below_warn", "below_crit", "below_crit",
                                 "below_warn", "below_warn", "ok"]
    assert out.threshold.tolist() == [4.0, 4.0, 4.0, 4.0, 4.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    assert out.score.tolist() == pytest.approx([0.0, 0.5, 0.1, 0.0, 0.75, 1.0, 0.9, 0.85, 0.0, 0.0])


def test_threshold_score_is_documented_and_monotone(air):
    det = ThresholdDetector(air, [rule(warn=160, warn_reset=144, crit=200, crit_reset=180)])
    values = [0, 144, 152, 160, 180, 200, 1000]
    out = run(det, 0, range(len(values)), values)
    assert out.score.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    grid = np.linspace(-10, 300, 2001)
    out = run(det, 0, range(len(grid)), grid)
    assert np.all(np.diff(out.score) >= 0) and out.score.min() == 0.0 and out.score.max() == 1.0


def test_threshold_rule_matching(air):
    water = make_sensor("w1", "water", no2=(0, 100))
    index = make_index(make_sensor("s1", no2=(0, 2000), pm25=(0, 2000)), water)
    det = ThresholdDetector(index, [rule(warn=50), rule(domain="air", warn=100)])
    no2_air, pm25, no2_water = index.get("s1", "no2"), index.get("s1", "pm25"), index.get("w1", "no2")
    assert det.rule_for("no2", "air").warn == 100 and det.rule_for("no2", "water").warn == 50
    assert det.rule_for("pm25", "air") is None
    sid = sorted([no2_air, pm25, no2_water])
    out = run(det, sid, [1, 1, 1], [75.0, 75.0, 75.0])
    level = dict(zip(sid, out.level.tolist()))
    assert level == {no2_air: LEVEL_OK, pm25: LEVEL_NOT_EVALUATED, no2_water: LEVEL_WARNING}
    assert math.isnan(out.score[sid.index(pm25)])


def test_threshold_duplicate_rules_rejected(air):
    with pytest.raises(ValueError, match="two threshold rules"):
        ThresholdDetector(air, [rule(domain="air", warn=1), rule(domain="air", warn=2)])


def test_unsorted_batch_and_bad_skip_rejected(air):
    det = ThresholdDetector(air, [rule(warn=1), rule("so2", warn=1)])
    with pytest.raises(ValueError, match="sorted"):
        run(det, [1, 0], [1, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="skip"):
        run(det, [0, 0], [1, 2], [1.0, 1.0], skip=[True])


def test_empty_batch(air):
    for det in (ThresholdDetector(air, [rule(warn=1)]), PhysicalRangeDetector(air)):
        out = det.process(ReadingBatch.empty())
        assert len(out.level) == 0
        out = det.process(ReadingBatch.empty(), skip=np.zeros(0, bool))
        assert len(out.level) == 0


# --------------------------------------------------------------------------------------------- not evaluated rows


def test_late_duplicate_skip_and_nan_rows_neither_evaluated_nor_moving_state(air):
    r = rule(warn=50, warn_reset=40, crit=80, crit_reset=70, for_="10s")
    ts = [0, 5, 10, 15, 20, 25, 30, 35, 40]
    values = [60, 100, 10, 100, 100, np.nan, 65, 10, 65]
    flags = [0, FLAG_LATE, 0, FLAG_DUPLICATE, 0, 0, 0, 0, 0]
    skip = [False, False, False, False, True, False, False, True, False]
    det = ThresholdDetector(air, [r])
    out = run(det, 0, ts, values, flags=flags, skip=skip)
    # Rows 1, 3 (flags), 4, 7 (skip) and 5 (NaN) are ignored; the rest is 60, 10, 65, 65 at 0, 10, 30, 40.
    ignored = [1, 3, 4, 5, 7]
    assert [out.level[i] for i in ignored] == [LEVEL_NOT_EVALUATED] * 5
    assert np.isnan(out.score[ignored]).all() and np.isnan(out.threshold[ignored]).all()
    kept = [0, 2, 6, 8]
    ref = run(ThresholdDetector(air, [r]), 0, [ts[i] for i in kept], [values[i] for i in kept])
    assert out.level[kept].tolist() == ref.level.tolist() == [0, 0, 0, 1]
    assert same(out.score[kept], ref.score)
    # The state afterwards is the same as if they had never arrived.
    det2 = ThresholdDetector(air, [r])
    run(det2, 0, [ts[i] for i in kept], [values[i] for i in kept])
    for k in det.state:
        assert np.array_equal(det.state[k][:1], det2.state[k][:1])


def test_skip_all_rows(air):
    det = ThresholdDetector(air, [rule(warn=50)])
    out = run(det, 0, [1, 2], [60.0, 60.0], skip=[True, True])
    assert out.level.tolist() == [LEVEL_NOT_EVALUATED] * 2
    assert not det.state["warn_on"][0]


# --------------------------------------------------------------------------------------------- state across batches


def test_state_carried_across_batches(air):
    det = ThresholdDetector(air, [rule(warn=50, warn_reset=40, for_="30s")])
    assert run(det, 0, [0], [60]).level.tolist() == [0]
    assert run(det, 0, [10, 20], [45, 45]).level.tolist() == [0, 0]
    assert run(det, 0, [30], [45]).level.tolist() == [1]
    assert run(det, 0, [40], [30]).level.tolist() == [0]


def test_series_added_after_first_batch(air):
    det = ThresholdDetector(air, [rule(warn=50)])
    run(det, 0, [1], [60.0])
    new = make_sensor("s9", no2=(0, 2000))
    air.registry.sensors["s9"] = new
    for i in range(200):  # enough to make the state arrays grow past their first capacity
        extra = make_sensor(f"x{i}", pm25=(0, 1))
        air.registry.sensors[extra.id] = extra
        air.add(extra, "pm25")
    sid = air.add(new, "no2")
    out = run(det, [0, sid, sid], [2, 2, 3], [60.0, 40.0, 55.0])
    assert out.level.tolist() == [1, 0, 1]
    assert det.state["warn_on"][sid]


def test_snapshot_restore_into_reordered_index():
    sensors = [make_sensor(f"s{i}", no2=(0, 2000), so2=(0, 2000)) for i in range(5)]
    rules = [rule(warn=50, warn_reset=40, crit=80, crit_reset=70, for_="20s"), rule("so2", direction="below", warn=5)]
    a = make_index(*sensors)
    b = SeriesIndex(Registry({s.id: s for s in sensors}))
    for s in reversed(sensors):  # different id order
        for m in ("so2", "no2"):
            b.add(s, m)
    assert a.keys() != b.keys()
    rng = np.random.default_rng(7)
    keys = a.keys()

    def batch_for(index, t0):
        rows = sorted((index.get(*k), (t0 + j * 5) * S, float(rng_vals[i, j])) for i, k in enumerate(keys) for j in range(4))
        return ReadingBatch.from_columns(*zip(*rows))

    det_a = ThresholdDetector(a, rules)
    rng_vals = rng.uniform(0, 100, size=(len(keys), 4))
    det_a.process(batch_for(a, 0))
    snap = det_a.snapshot()
    det_b = ThresholdDetector(b, rules)
    det_b.restore(dict(snap))
    rng_vals = rng.uniform(0, 100, size=(len(keys), 4))
    out_a = det_a.process(batch_for(a, 100))
    out_b = det_b.process(batch_for(b, 100))

    def by_key(index, out, batch):
        return {(index.sensor_ids[s], index.metrics[s], t): (lv, rs, sc)
                for s, t, lv, rs, sc in zip(batch.series.tolist(), batch.ts.tolist(), out.level.tolist(),
                                            out.reason.tolist(), out.score.tolist())}

    res_a, res_b = by_key(a, out_a, batch_for(a, 100)), by_key(b, out_b, batch_for(b, 100))
    assert res_a == res_b
    assert any(lv > 0 for lv, _, _ in res_a.values())


def test_snapshot_survives_npz_round_trip(tmp_path, air):
    det = ThresholdDetector(air, [rule(warn=50, for_="10s")])
    run(det, 0, [0], [60.0])
    path = tmp_path / "state.npz"
    np.savez(path, **det.snapshot())
    det2 = ThresholdDetector(air, [rule(warn=50, for_="10s")])
    with np.load(path) as snap:
        det2.restore(dict(snap))
    assert run(det2, 0, [10], [60.0]).level.tolist() == [1]


# --------------------------------------------------------------------------------------------- properties


def reference(rules_of: dict[int, ThresholdRule], rows) -> list[tuple[int, str, float]]:
    """Plain-Python model of the threshold semantics: (level, reason, threshold) per row, in row order."""
    state: dict[int, dict[str, list]] = {}
    out = []
    for sid, ts, x, flags, skip in rows:
        r = rules_of.get(sid)
        if r is None or flags & (FLAG_LATE | FLAG_DUPLICATE) or skip or math.isnan(x):
            out.append((LEVEL_NOT_EVALUATED, "ok", math.nan))
            continue
        sign = 1 if r.direction == "above" else -1
        st_ = state.setdefault(sid, {"warn": [False, 0], "crit": [False, 0]})
        raw, eff = {}, {}
        for lvl in ("warn", "crit"):
            limit = getattr(r, lvl)
            if limit is not None:
                reset = getattr(r, lvl + "_reset")
                reset = limit if reset is None else reset
                if sign * x >= sign * limit:
                    if not st_[lvl][0]:
                        st_[lvl] = [True, ts]
                elif sign * x < sign * reset:
                    st_[lvl] = [False, 0]
            raw[lvl] = st_[lvl][0]
            eff[lvl] = raw[lvl] and ts - st_[lvl][1] >= round(r.for_ * S)
        side = "above" if sign > 0 else "below"
        low = r.warn if r.warn is not None else r.crit
        if eff["crit"]:
            out.append((LEVEL_CRITICAL, f"{side}_crit", r.crit))
        elif raw["crit"] or (raw["warn"] and not eff["warn"]):
            out.append((LEVEL_WARNING if eff["warn"] else LEVEL_OK, "pending", low))
        elif eff["warn"]:
            out.append((LEVEL_WARNING, f"{side}_warn", low))
        else:
            out.append((LEVEL_OK, "ok", low))
    return out


@st.composite
def rules_strategy(draw, metric: str):
    has_warn, has_crit = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    w = draw(st.integers(2, 6))
    c = draw(st.integers(w, 9))
    kw = {}
    if has_warn:
        kw["warn"], kw["warn_reset"] = w, draw(st.sampled_from([None, w, w - 1, w - 2]))
    if has_crit:
        kw["crit"], kw["crit_reset"] = c, draw(st.sampled_from([None, c, c - 1, c - 3]))
    direction = draw(st.sampled_from(["above", "below"]))
    if direction == "below":  # mirror around 5: same shapes, opposite direction
        kw = {k: (None if v is None else 10 - v) for k, v in kw.items()}
    return ThresholdRule(metric=metric, direction=direction, source=None,
                         **kw, **{"for": draw(st.sampled_from([0, 1, 2, 5]))})


@st.composite
def stream_strategy(draw):
    """Several interleaved series (some without a rule), in arrival order, with flags and skips."""
    n_series = draw(st.integers(1, 6))
    metrics = [f"m{i}" for i in range(n_series)]
    rules = [draw(rules_strategy(m)) for m in metrics if draw(st.booleans()) or m == "m0"]
    n = draw(st.integers(1, 120))
    sids = draw(st.lists(st.integers(0, n_series - 1), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.integers(0, 10).map(float), st.just(math.nan),
                                     st.floats(-1, 11, allow_nan=False)), min_size=n, max_size=n))
    flags = draw(st.lists(st.sampled_from([0, 0, 0, 0, 0, 0, FLAG_LATE, FLAG_DUPLICATE]), min_size=n, max_size=n))
    skip = draw(st.lists(st.sampled_from([False, False, False, True]), min_size=n, max_size=n))
    clock = [0] * n_series
    ts = []
    for s, g in zip(sids, gaps):
        clock[s] += g
        ts.append(clock[s] * S)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8))))
    return metrics, rules, list(zip(sids, ts, values, flags, skip)), cuts


def process_stream(det, rows, cuts):
    """Feed arrival-ordered rows in batches cut at `cuts`; outputs back in arrival order."""
    n = len(rows)
    level = np.empty(n, np.int8)
    reason = np.empty(n, np.int16)
    score = np.empty(n)
    threshold = np.empty(n)
    for lo, hi in zip([0, *cuts], [*cuts, n]):
        if lo >= hi:
            continue
        chunk = rows[lo:hi]
        sid, ts, val, flg, skp = (np.asarray(c) for c in zip(*chunk))
        order = np.lexsort((ts, sid))
        batch = ReadingBatch.from_columns(sid[order], ts[order], val[order], flg[order])
        out = det.process(batch, skip=skp[order].astype(bool))
        pos = lo + order
        level[pos], reason[pos], score[pos], threshold[pos] = out.level, out.reason, out.score, out.threshold
    return level, reason, score, threshold


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_strategy())
def test_threshold_split_batches_equal_one_batch_and_model(case):
    metrics, rules, rows, cuts = case
    sensor = Sensor(id="s", domain="air", area="a", lat=0, lon=0, interval=1,
                    metrics={m: MetricSpec(unit="ug/m3") for m in metrics})
    index = make_index(sensor)
    whole = process_stream(ThresholdDetector(index, rules), rows, [])
    split_det = ThresholdDetector(index, rules)
    split = process_stream(split_det, rows, cuts)
    assert np.array_equal(whole[0], split[0])
    assert np.array_equal(whole[1], split[1])
    np.testing.assert_allclose(whole[2], split[2], rtol=0, atol=1e-12, equal_nan=True)
    assert same(whole[3], split[3])
    # ... and both agree with the plain-Python model.
    rules_of = {index.get("s", r.metric): r for r in rules}
    expected = reference(rules_of, rows)
    names = split_det.reason_names(whole[1]).tolist()
    got = [(int(lv), rs, th) for lv, rs, th in zip(whole[0].tolist(), names, whole[3].tolist())]
    for g, e in zip(got, expected):
        assert g[0] == e[0] and g[1] == e[1] and (g[2] == e[2] or (math.isnan(g[2]) and math.isnan(e[2]))), (g, e)
    # Score: in [0, 1] where evaluated, NaN elsewhere.
    evaluated = whole[0] >= 0
    assert np.all((whole[2][evaluated] >= 0) & (whole[2][evaluated] <= 1))
    assert np.isnan(whole[2][~evaluated]).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=50),
       st.lists(st.integers(1, 49), max_size=6))
def test_physical_range_split_batches_equal_one_batch(values, cuts):
    index = make_index(make_sensor("s1", pm25=(0.0, 500.0)))
    rows = [(0, (i + 1) * S, v, 0, False) for i, v in enumerate(values)]
    cuts = sorted({c for c in cuts if c < len(values)})
    a = process_stream(PhysicalRangeDetector(index), rows, [])
    b = process_stream(PhysicalRangeDetector(index), rows, cuts)
    assert all(same(x, y) for x, y in zip(a, b))
    assert a[0].tolist() == [2 if (v < 0 or v > 500) else 0 for v in values]


# --------------------------------------------------------------------------------------------- factory & defaults


def test_qcvn05_2023_air_rules():
    rules = {r.metric: r for r in qcvn05_2023_air_rules()}
    assert set(rules) == {"no2", "so2", "o3", "co"}
    for metric, limit in {"no2": 200, "so2": 350, "o3": 200, "co": 30000}.items():
        r = rules[metric]
        assert (r.domain, r.direction) == ("air", "above")
        assert r.crit == limit and r.warn == pytest.approx(0.8 * limit)
        assert r.crit_reset == pytest.approx(0.9 * limit) and r.warn_reset == pytest.approx(0.72 * limit)
        assert r.source == "QCVN 05:2023/BTNMT 1-hour limit"


ONLY_RULES = dict(stuck=None, spike=None, drift=None, anomaly=None, seasonal=None, traffic_zero=None, spatial=None)


def test_build_detectors(air):
    dets = build_detectors(air, DetectorsConfig(thresholds=qcvn05_2023_air_rules(), **ONLY_RULES))
    assert [type(d) for d in dets] == [PhysicalRangeDetector, ThresholdDetector]
    dets = build_detectors(air, DetectorsConfig(physical_range=False, thresholds=qcvn05_2023_air_rules(), **ONLY_RULES))
    assert [type(d) for d in dets] == [ThresholdDetector]
    assert [type(d) for d in build_detectors(air, DetectorsConfig(**ONLY_RULES))] == [PhysicalRangeDetector]
    # the default set: physical range first (its failures skip the rest), then the rest
    names = [d.name for d in build_detectors(air, DetectorsConfig())]
    assert names[0] == "physical_range" and "threshold" not in names
    assert set(names[1:]) == {"stuck", "spike", "drift", "anomaly", "seasonal", "traffic_zero", "spatial"}
    # `false` in YAML turns a detector off like null
    off = DetectorsConfig.model_validate({"spatial": False, "stuck": {"enabled": False}})
    assert {"spatial", "stuck"}.isdisjoint(d.name for d in build_detectors(air, off))


def test_engine_style_chain_skips_out_of_range_readings(air):
    """A broken sensor (physically impossible value) must not raise a pollution alert."""
    dets = build_detectors(air, DetectorsConfig(thresholds=qcvn05_2023_air_rules()))
    batch = ReadingBatch.from_columns([0, 0, 0], [1 * S, 2 * S, 3 * S], [5000.0, 210.0, 150.0])
    skip = None
    outs = []
    for det in dets:
        out = det.process(batch, skip=skip)
        outs.append(out)
        if det.name == "physical_range":
            skip = out.level == LEVEL_CRITICAL
    assert outs[0].level.tolist() == [2, 0, 0]
    assert outs[1].level.tolist() == [LEVEL_NOT_EVALUATED, LEVEL_CRITICAL, LEVEL_WARNING]


# --------------------------------------------------------------------------------------------- scale


def test_million_readings_over_ten_thousand_series():
    n_series, per_series = 10_000, 100
    sensors = [make_sensor(f"s{i:05d}", no2=(0.0, 2000.0)) for i in range(n_series)]
    index = make_index(*sensors)
    dets = build_detectors(index, DetectorsConfig(thresholds=[rule(domain="air", warn=160, warn_reset=144, crit=200,
                                                                     crit_reset=180, for_="5m")], **ONLY_RULES))
    rng = np.random.default_rng(0)
    sid = np.repeat(np.arange(n_series, dtype=np.int32), per_series)
    ts = np.tile(np.arange(per_series, dtype=np.int64) * 60 * S, n_series)
    value = rng.gamma(4.0, 40.0, size=len(sid))
    batch = ReadingBatch.from_columns(sid, ts, value)
    skip = None
    for det in dets:
        out = det.process(batch, skip=skip)
        assert len(out.level) == 1_000_000
        if det.name == "physical_range":
            skip = out.level == LEVEL_CRITICAL
    assert (out.level == LEVEL_CRITICAL).any() and (out.level == LEVEL_OK).any()
