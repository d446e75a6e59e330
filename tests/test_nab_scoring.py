"""The NAB scorer: the rules' own checks, hand-computed weights, and the threshold sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch import nab
from citywatch.nab import PROFILES, FileLabels, NabError, score_at, score_file, sweep, sweep_profiles


def scaled(y: float) -> float:
    """The rules' scaled sigmoid, written independently: 2 * sigmoid(-5y) - 1 == -tanh(2.5 y)."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def corpus() -> list[FileLabels]:
    """Three files of NAB-like sizes (probationary periods 150, 450 and 750 rows)."""
    return [
        FileLabels.from_rows("a/one.csv", 1000, [(300, 399), (700, 749)]),
        FileLabels.from_rows("a/two.csv", 3000, [(1200, 1499)]),
        FileLabels.from_rows("b/three.csv", 6000, [(800, 999), (2000, 2199), (5000, 5399)]),
        FileLabels.from_rows("b/quiet.csv", 2000, []),
    ]


def test_scaled_sigmoid_matches_the_rules():
    assert nab.MAX_TP_WEIGHT == pytest.approx(0.98661, abs=1e-5)
    for y in (-1.0, -0.5, 0.0, 0.3, 1.0, 2.9, 3.0, 3.1, 10.0):
        assert float(nab.scaled_sigmoid(y)) == pytest.approx(scaled(y), abs=1e-12)
    assert float(nab.scaled_sigmoid(3.0001)) == -1.0


def test_probationary_period():
    assert nab.probationary_rows(1000) == 150
    assert nab.probationary_rows(4033) == 604  # floor(604.95)
    assert nab.probationary_rows(22695) == 750


@pytest.mark.parametrize("profile", list(PROFILES))
def test_perfect_detector_scores_100_on_every_profile(profile):
    files = corpus()
    scores = []
    for f in files:
        s = np.zeros(f.n_rows)
        s[f.window_rows[:, 0]] = 1.0
        scores.append(s)
    res = sweep(files, scores, PROFILES[profile])
    assert res.normalised == pytest.approx(100.0, abs=1e-9)
    assert res.perfect == PROFILES[profile].tp * 6


@pytest.mark.parametrize("profile", list(PROFILES))
def test_detector_that_never_fires_scores_0(profile):
    files = corpus()
    res = sweep(files, [np.zeros(f.n_rows) for f in files], PROFILES[profile])
    assert res.threshold == nab.NO_DETECTION_THRESHOLD or res.raw == res.null
    assert res.normalised == pytest.approx(0.0, abs=1e-12)
    assert res.null == -PROFILES[profile].fn * 6


@pytest.mark.parametrize("profile", list(PROFILES))
def test_firing_on_every_row_scores_far_below_0(profile):
    files = corpus()
    res = score_at(files, [np.ones(f.n_rows) for f in files], 0.5, PROFILES[profile])
    assert res.normalised < -100.0
    # The sweep would rather detect nothing than fire everywhere.
    assert sweep(files, [np.ones(f.n_rows) for f in files], PROFILES[profile]).normalised == pytest.approx(0.0)


def test_hand_computed_weights_of_a_small_file():
    # 100 rows: P = 15; one window, rows 40..49 (W = 10).
    f = FileLabels.from_rows("small.csv", 100, [(40, 49)])
    assert f.probation == 15
    s = np.zeros(100)
    s[10] = 1.0  # probationary: ignored
    s[20] = 1.0  # before the first window: -A_FP
    s[42] = 1.0  # earliest detection in the window: A_TP * scaled(-(49 - 42 + 1) / 10) / m
    s[44] = 1.0  # a later detection in the same window: neither adds nor costs
    s[55] = 1.0  # 6 rows after the window: A_FP * scaled(6 / 9)
    s[80] = 1.0  # 31 rows after: (31 / 9 > 3) -> -A_FP
    m = scaled(-1.0)
    for prof in PROFILES.values():
        expected = prof.tp * scaled(-0.8) / m - prof.fp + prof.fp * scaled(6 / 9) - prof.fp
        assert score_file(f, s, 0.5, prof) == pytest.approx(expected, abs=1e-12)
    # The first row of the window earns exactly A_TP; a missed window costs A_FN.
    first = np.zeros(100); first[40] = 1.0
    assert score_file(f, first, 0.5, PROFILES["standard"]) == pytest.approx(1.0, abs=1e-12)
    assert score_file(f, np.zeros(100), 0.5, PROFILES["reward_low_FN_rate"]) == -2.0
    # A false alarm right after the window costs less than a far one.
    near, far = np.zeros(100), np.zeros(100)
    near[50], far[70] = 1.0, 1.0
    std = PROFILES["standard"]
    assert -std.fp < score_file(f, far, 0.5, std) - -std.fn < score_file(f, near, 0.5, std) - -std.fn < 0


def test_window_inside_the_probationary_period_takes_no_part():
    f = FileLabels.from_rows("early.csv", 1000, [(10, 20), (500, 520)])  # P = 150
    assert len(f.active_windows) == 1
    s = np.zeros(1000); s[500] = 1.0
    res = sweep([f], [s], PROFILES["standard"])
    assert res.normalised == pytest.approx(100.0)
    assert res.n_windows == 1


def test_sweep_picks_the_best_threshold_and_the_highest_on_ties():
    f = FileLabels.from_rows("ties.csv", 1000, [(500, 549)])
    s = np.zeros(1000)
    s[500] = 0.8  # the first row of the window
    s[510] = 0.7  # later in the window: T = 0.7 scores the same as T = 0.8
    s[100] = 0.9  # probationary: T = 0.9 detects nothing that counts
    s[700] = 0.3  # a false alarm: T = 0.3 scores lower
    res = sweep([f], [s], PROFILES["standard"])
    assert res.threshold == 0.8
    assert res.raw == pytest.approx(1.0)
    assert score_file(f, s, 0.7, PROFILES["standard"]) == pytest.approx(res.raw)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_sweep_equals_brute_force_over_every_candidate(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    files, scores = [], []
    for k in range(data.draw(st.integers(1, 4))):
        n = int(rng.integers(30, 300))
        windows, pos = [], int(rng.integers(0, n // 2))
        while pos < n - 2 and len(windows) < 3:
            end = min(n - 1, pos + int(rng.integers(0, 25)))
            windows.append((pos, end))
            pos = end + int(rng.integers(2, 80))
        files.append(FileLabels.from_rows(f"f{k}.csv", n, windows))
        s = np.round(rng.random(n) ** 4, 2)
        s[rng.random(n) < 0.05] = np.nan
        scores.append(s)
    results = sweep_profiles(files, scores)
    candidates = sorted(set(np.concatenate(scores)[~np.isnan(np.concatenate(scores))].tolist()) | {1.1})
    for name, prof in PROFILES.items():
        totals = [(sum(score_file(f, s, t, prof) for f, s in zip(files, scores)), t) for t in candidates]
        best = max(x for x, _ in totals)
        best_t = max(t for x, t in totals if x >= best - 1e-9)
        assert results[name].threshold == best_t
        assert results[name].raw == pytest.approx(best, abs=1e-9)
        assert sum(results[name].per_file.values()) == pytest.approx(best, abs=1e-9)


def test_windows_from_timestamps_and_results_folder(tmp_path):
    stamps = [f"2015-01-01 00:{m:02d}:00" for m in range(60)]
    stamps[31] = stamps[30]  # a repeated timestamp, as in real files
    windows = {"cat/x.csv": [["2015-01-01 00:20:00.000000", "2015-01-01 00:29:00.000000"]], "cat/y.csv": []}
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    res_dir = tmp_path / "results" / "cat"
    res_dir.mkdir(parents=True)
    for name, hit in (("x.csv", 20), ("y.csv", None)):
        rows = ["timestamp,value,anomaly_score,label"]
        rows += [f"{t},1.0,{1.0 if i == hit else 0.0},0" for i, t in enumerate(stamps)]
        (res_dir / name).write_text("\n".join(rows) + "\n")
    out = nab.score_results(tmp_path / "results", tmp_path / "windows.json")
    assert out.files == ["cat/x.csv", "cat/y.csv"]
    assert out.labels["cat/x.csv"].window_rows.tolist() == [[20, 29]]
    assert out.results["standard"].normalised == pytest.approx(100.0)
    assert sum(out.file_points("standard", f) for f in out.files) == pytest.approx(100.0)

    (res_dir / "z.csv").write_text("timestamp,value,anomaly_score,label\n2015-01-01 00:00:00,1,0,0\n")
    with pytest.raises(NabError, match="cat/z.csv: not in the windows file"):
        nab.score_results(tmp_path / "results", tmp_path / "windows.json")


def test_bad_inputs_are_named():
    f = FileLabels.from_rows("x.csv", 10, [(2, 3)])
    with pytest.raises(NabError, match="x.csv: 9 scores for 10 rows"):
        score_file(f, np.zeros(9), 0.5, PROFILES["standard"])
    with pytest.raises(NabError, match="covers no row"):
        FileLabels.from_timestamps("x.csv", np.array(["2015-01-01"], dtype="datetime64[ns]"),
                                   [["2016-01-01", "2016-01-02"]])
    with pytest.raises(NabError, match="non-overlapping"):
        FileLabels.from_rows("x.csv", 10, [(2, 5), (4, 6)])


def test_module_doctest():
    import doctest

    assert doctest.testmod(nab).failed == 0


def test_nab_benchmark_script_on_a_small_corpus(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    rng = np.random.default_rng(1)
    windows = {}
    for k in range(2):
        data = tmp_path / "nab" / "data" / ("cat", "dog")[k]
        data.mkdir(parents=True)
        values = 10 + rng.normal(0, 1, 800)
        values[600:605] += 30
        stamps = [str(np.datetime64("2015-01-01T00:00") + np.timedelta64(5 * i, "m")).replace("T", " ") + ":00"
                  for i in range(800)]
        (data / f"f{k}.csv").write_text("timestamp,value\n" + "".join(f"{t},{v:.3f}\n" for t, v in zip(stamps, values)))
        windows[f"{data.name}/f{k}.csv"] = [[stamps[590] + ".000000", stamps[640] + ".000000"]]
    (tmp_path / "nab" / "labels").mkdir()
    (tmp_path / "nab" / "labels" / "windows.json").write_text(json.dumps(windows))

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "nab_bench.py"
    spec = importlib.util.spec_from_file_location("nab_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "nab"), "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    direct = nab.score_results(tmp_path / "results", tmp_path / "nab" / "labels" / "windows.json")
    for name, res in direct.results.items():
        assert f"{name:<20} {res.normalised:7.2f}" in out
    assert direct.results["standard"].normalised > 0
    assert "cat/f0.csv" in out and "2 files, 1600 rows, 2 windows" in out
    # leave one category out: each file scored at the threshold swept on the other one alone
    std = nab.PROFILES["standard"]
    files = {n: direct.labels[n] for n in ("cat/f0.csv", "dog/f1.csv")}
    scores = {n: nab.read_results_file(tmp_path / "results" / n)[1] for n in files}
    raw = sum(nab.score_file(files[held], scores[held], nab.sweep([files[other]], [scores[other]], std).threshold, std)
              for held, other in (("cat/f0.csv", "dog/f1.csv"), ("dog/f1.csv", "cat/f0.csv")))
    whole = direct.results["standard"]
    assert f"leave one category out (standard): {100 * (raw - whole.null) / (whole.perfect - whole.null):.2f}" in out
    # the profile's options from the command line: one that never finishes its warm-up detects nothing
    assert module.main([str(tmp_path / "nab"), "--quiet", "--anomaly", '{"warmup": 100000}']) == 0
    assert f"{'standard':<20} {0.0:7.2f}" in capsys.readouterr().out
    assert module.main([str(tmp_path / "missing")]) == 2
