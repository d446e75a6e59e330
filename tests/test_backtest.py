"""`citywatch backtest`: NAB scoring of a results folder; precision, recall and delay against the
simulator's ground truth; the report and one PNG per series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from citywatch import backtest, nab, replay
from citywatch.cli import main as cli_main
from citywatch.config import load_settings
from citywatch.registry import Registry
from citywatch.simulator import Simulator

T0_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
STEP_MS = 60_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def iso(ms: int) -> str:
    return str(np.datetime64(ms, "ms")) + "Z"


def write_scores(path: Path, metric: str, levels: list[str], scores: list[float] | None = None) -> None:
    scores = scores or [0.9 if lv != "ok" else 0.1 for lv in levels]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", metric, f"{metric}_score", f"{metric}_level"])
        for i, (lv, sc) in enumerate(zip(levels, scores)):
            w.writerow([iso(T0_MS + i * STEP_MS), 10.0 + i % 3, sc, lv])


def fault(kind: str, sensor: str, metric: str | None, first_row: int, end_row: int) -> dict:
    start, end = T0_MS + first_row * STEP_MS, T0_MS + end_row * STEP_MS
    return {"id": f"{kind}:{sensor}:{metric or '*'}:{start}", "kind": kind, "sensors": [sensor], "sensor": sensor,
            "metric": metric, "metrics": [metric] if metric else ["pm25"], "start_ms": start, "end_ms": end}


@pytest.fixture
def hand_case(tmp_path: Path) -> tuple[Path, Path]:
    levels = ["ok"] * 100
    for i in (20, 21, 22, 50, 70, 71):
        levels[i] = "warning"
    levels[21] = "critical"
    results = tmp_path / "scores"
    results.mkdir()
    write_scores(results / "aq-001.csv", "pm25", levels)
    truth = tmp_path / "truth.jsonl"
    rows = [
        fault("spike", "aq-001", "pm25", 20, 26),  # detected on its first row
        fault("drift", "aq-001", "pm25", 60, 66),  # alert at row 70: 4 rows after its end (grace 5)
        fault("stuck", "aq-001", "pm25", 80, 86),  # missed
        fault("dropout", "aq-001", None, 90, 95),  # no readings to score
        fault("spike", "aq-009", "pm25", 20, 26),  # a sensor not in the results
    ]
    truth.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return results, truth


def test_precision_recall_and_delay_hand_computed(hand_case):
    results, truth = hand_case
    score = backtest.evaluate_truth(backtest.read_scored(results), backtest.load_truth(truth), grace=5)
    assert [f.status for f in score.faults] == ["detected", "detected", "missed", "not observable", "no data"]
    assert score.alerts == 3  # runs of anomalous rows starting at rows 20, 50 and 70
    assert score.true_alerts == 2
    assert score.precision == pytest.approx(2 / 3)
    assert score.recall == pytest.approx(2 / 3)
    assert [f.delay_intervals for f in score.detected] == [0.0, 10.0]

    strict = backtest.evaluate_truth(backtest.read_scored(results), backtest.load_truth(truth), grace=0)
    assert [f.status for f in strict.faults][:3] == ["detected", "missed", "missed"]
    assert (strict.true_alerts, strict.alerts) == (1, 3)

    # With a score threshold instead of the levels: scores are 0.9 on the same rows.
    by_score = backtest.evaluate_truth(backtest.read_scored(results), backtest.load_truth(truth), threshold=0.5)
    assert (by_score.true_alerts, by_score.alerts, len(by_score.detected)) == (2, 3, 2)
    assert backtest.evaluate_truth(backtest.read_scored(results), backtest.load_truth(truth),
                                   threshold=0.95).alerts == 0


def test_truth_report_and_plots(hand_case, tmp_path):
    results, truth = hand_case
    report = tmp_path / "report"
    score = backtest.backtest_truth(results, truth, report)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["precision"] == pytest.approx(score.precision)
    assert summary["detected_faults"] == 2 and summary["evaluated_faults"] == 3
    text = (report / "report.md").read_text()
    assert "| recall | 66.7 % |" in text and "| alerts (true / all) | 2 / 3 |" in text
    assert (report / "plots" / "aq-001.pm25.png").read_bytes().startswith(PNG_MAGIC)


def test_bad_truth_line_is_named(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(backtest.BacktestError, match="t.jsonl:1: not a ground-truth line"):
        backtest.load_truth(bad)


def test_short_simulator_run_through_replay_and_backtest(tmp_path, capsys):
    settings = load_settings(None)
    registry = Registry.load(settings.resolve(settings.registry))
    sensors = [s.id for s in registry.by_domain("air")][:2]
    start = T0_MS / 1000
    sim = Simulator(registry, seed=11, start=start, sensors=sensors, faults=("spike", "stuck", "drift", "dropout"),
                    fault_rate=2.0)
    sim.inject("spike", sensors[0], "pm25", start + 8 * 3600, start + 8 * 3600 + 120, magnitude=150.0)
    files, truth = backtest.export_simulation(sim, start, start + 12 * 3600, tmp_path / "data")
    assert len(files) == 2
    truth_rows = backtest.load_truth(truth)
    assert any(r["id"] == f"spike:{sensors[0]}:pm25:{T0_MS + 8 * 3600 * 1000}" for r in truth_rows)

    scores_dir = tmp_path / "scores"
    assert cli_main(["replay", str(tmp_path / "data"), "--output", str(scores_dir)]) == 0
    report = tmp_path / "report"
    assert cli_main(["backtest", str(scores_dir), "--truth", str(truth), "--report", str(report)]) == 0
    printed = capsys.readouterr().out

    series = backtest.read_scored(scores_dir)
    n_metrics = sum(len(registry.get(s).metrics) for s in sensors)
    assert len(series) == n_metrics
    pngs = sorted((report / "plots").glob("*.png"))
    assert len(pngs) == n_metrics
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)

    summary = json.loads((report / "summary.json").read_text())
    detail = summary["faults_detail"]
    assert summary["faults"] == len(truth_rows) == len(detail)
    statuses = [f["status"] for f in detail]
    assert summary["evaluated_faults"] == statuses.count("detected") + statuses.count("missed")
    assert summary["detected_faults"] == statuses.count("detected")
    assert statuses.count("not observable") == sum(r["kind"] == "dropout" for r in truth_rows)
    assert sum(k["detected"] for k in summary["by_kind"].values()) == summary["detected_faults"]
    if summary["alerts"]:
        assert summary["precision"] == pytest.approx(summary["true_alerts"] / summary["alerts"])
    assert summary["recall"] == pytest.approx(summary["detected_faults"] / summary["evaluated_faults"])
    delays = [f["delay_intervals"] for f in detail if f["status"] == "detected"]
    if delays:
        assert summary["delay_intervals"]["max"] == pytest.approx(max(delays))
    injected_id = f"spike:{sensors[0]}:pm25:{T0_MS + 8 * 3600 * 1000}"
    injected = next(f for f in detail if f["id"] == injected_id)
    assert injected["status"] in ("detected", "missed") and injected["series"] == [f"{sensors[0]}.pm25"]
    # At a threshold the spike's own score reaches, it is detected where it starts, with no delay.
    pm25 = next(s for s in series if (s.sensor, s.metric) == (sensors[0], "pm25"))
    first = int(np.searchsorted(pm25.ts_ns, (T0_MS + 8 * 3600 * 1000) * 1_000_000))
    assert pm25.value[first] > 100 and pm25.score[first] > 0
    at_spike = backtest.evaluate_truth(series, truth_rows, threshold=float(pm25.score[first]))
    hit = next(f for f in at_spike.faults if f.id == injected_id)
    assert hit.status == "detected" and hit.delay_intervals == 0.0
    assert f"detected {summary['detected_faults']}" in printed
    text = (report / "report.md").read_text()
    assert f"| detected faults | {summary['detected_faults']} |" in text


def test_nab_backtest_report_matches_the_scorer(tmp_path):
    rows = [[f"2015-01-01 {h:02d}:{m:02d}:00", float(m % 7)] for h in range(10) for m in range(60)]
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    for name in ("a.csv", "b.csv"):
        with open(data / name, "w", newline="") as fh:
            csv.writer(fh).writerows([["timestamp", "value"], *rows])
    windows = {"cat/a.csv": [["2015-01-01 05:00:00.000000", "2015-01-01 05:30:00.000000"]], "cat/b.csv": []}
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    out = tmp_path / "results"
    replay.replay_nab(tmp_path / "data", out)
    corpus = backtest.backtest_nab(out, tmp_path / "windows.json", tmp_path / "report")
    direct = nab.score_results(out, tmp_path / "windows.json")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    for name, res in direct.results.items():
        assert summary[name]["score"] == pytest.approx(res.normalised)
        assert corpus.results[name].threshold == res.threshold
    assert sum(f["points_standard"] for f in summary["files"].values()) == pytest.approx(summary["standard"]["score"])
    assert sorted(p.name for p in (tmp_path / "report" / "plots").glob("*.png")) == ["cat_a.png", "cat_b.png"]
    assert "| standard |" in (tmp_path / "report" / "report.md").read_text()
