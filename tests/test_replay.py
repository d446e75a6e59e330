"""`citywatch replay`: CSV rows streamed through a detector, one score per input row."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from citywatch import replay
from citywatch.batch import ReadingBatch
from citywatch.cli import main as cli_main
from citywatch.detectors.base import LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput


class RunningDeviation(Detector):
    """Test detector with memory: score = |x - mean of the earlier in-order readings| / (1 + that)."""

    name = "running_deviation"
    state_fields = {"sum": (np.float64, 0.0), "n": (np.int64, 0)}

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        score = np.zeros(n)
        total, count = self.state["sum"], self.state["n"]
        in_order = self.in_order(batch)
        for i in range(n):  # sequential on purpose: the simplest causal reference
            s, x = batch.series[i], batch.value[i]
            if count[s]:
                d = abs(x - total[s] / count[s])
                score[i] = d / (1.0 + d)
            if in_order[i]:
                total[s] += x
                count[s] += 1
        level = np.where(score > 0.9, LEVEL_WARNING, LEVEL_OK).astype(np.int8)
        return DetectorOutput(score, level, np.zeros(n, np.int16), np.full(n, np.nan))


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def nab_like_series(n: int = 600, seed: int = 0) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2014-04-01T00:00:00")
    values = 50 + 10 * np.sin(np.arange(n) * 2 * np.pi / 288) + rng.normal(0, 1, n)
    values[n // 2: n // 2 + 5] += 40  # an anomaly
    stamps = [str(t0 + np.timedelta64(5 * i, "m")).replace("T", " ") for i in range(n)]
    return [[s, round(float(v), 3)] for s, v in zip(stamps, values)]


def scores_of(path: Path, factory=RunningDeviation, **kw) -> dict[str, np.ndarray]:
    (res,) = replay.replay(replay.read_path(path), factory, **kw)
    return res.score


@pytest.fixture
def nab_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_csv(data / "realA" / "one.csv", ["timestamp", "value"], nab_like_series(600, 1))
    write_csv(data / "realA" / "two.csv", ["timestamp", "value"], nab_like_series(450, 2))
    write_csv(data / "artificialB" / "three.csv", ["timestamp", "value"], nab_like_series(300, 3))
    return data


@pytest.mark.parametrize("factory", [RunningDeviation, None], ids=["test-detector", "default-profile"])
def test_nab_output_layout_rows_columns_and_score_range(nab_dir, tmp_path, factory):
    out = tmp_path / "out"
    written = replay.replay_nab(nab_dir, out, factory)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "artificialB/three.csv", "realA/one.csv", "realA/two.csv"]
    for src in sorted(nab_dir.rglob("*.csv")):
        rows_in = list(csv.reader(open(src)))
        rows_out = list(csv.reader(open(out / src.relative_to(nab_dir))))
        assert rows_out[0] == ["timestamp", "value", "anomaly_score", "label"]
        assert len(rows_out) == len(rows_in)
        assert [r[0] for r in rows_out[1:]] == [r[0] for r in rows_in[1:]]
        assert [float(r[1]) for r in rows_out[1:]] == [float(r[1]) for r in rows_in[1:]]
        scores = np.array([float(r[2]) for r in rows_out[1:]])
        assert ((scores >= 0) & (scores <= 1)).all()
        assert {r[3] for r in rows_out[1:]} == {"0"}
        assert scores.max() > 0  # the detector did score something


@pytest.mark.parametrize("factory", [RunningDeviation, None], ids=["test-detector", "default-profile"])
def test_batch_size_does_not_change_scores(nab_dir, factory):
    tables = replay.read_path(nab_dir)
    ref = replay.replay(tables, factory, batch_size=100_000)
    for bs in (1, 7, 64, 1000):
        got = replay.replay(tables, factory, batch_size=bs)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a.score["value"], b.score["value"])
            np.testing.assert_array_equal(a.level["value"], b.level["value"])


@pytest.mark.parametrize("factory", [RunningDeviation, None], ids=["test-detector", "default-profile"])
def test_causal_each_row_scored_from_earlier_rows_only(tmp_path, factory):
    rows = nab_like_series(600, 4)
    full = scores_of(write_csv(tmp_path / "full.csv", ["timestamp", "value"], rows), factory)["value"]
    for k in (1, 150, 301, 450):
        prefix = scores_of(write_csv(tmp_path / f"p{k}.csv", ["timestamp", "value"], rows[:k]), factory)["value"]
        np.testing.assert_array_equal(prefix, full[:k])


def test_wide_csv_scores_each_column_as_its_own_series(tmp_path):
    base = nab_like_series(200, 5)
    other = nab_like_series(200, 6)
    wide = [[t, a, b] for (t, a), (_, b) in zip(base, other)]
    got = scores_of(write_csv(tmp_path / "station.csv", ["timestamp", "pm25", "no2"], wide))
    assert set(got) == {"pm25", "no2"}
    np.testing.assert_array_equal(got["pm25"], scores_of(write_csv(tmp_path / "a.csv", ["timestamp", "v"], base))["v"])
    np.testing.assert_array_equal(got["no2"], scores_of(write_csv(tmp_path / "b.csv", ["timestamp", "v"], other))["v"])

    (res,) = replay.replay(replay.read_path(tmp_path / "station.csv"), RunningDeviation)
    (path,) = replay.write_scores([res], tmp_path / "out")
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["timestamp", "pm25", "pm25_score", "pm25_level", "no2", "no2_score", "no2_level"]
    assert len(rows) == 201
    assert {r[3] for r in rows[1:]} <= {"ok", "warning"}


def test_folder_input_names_and_sensor_ids(nab_dir):
    tables = replay.read_path(nab_dir)
    assert [t.name for t in tables] == ["artificialB/three.csv", "realA/one.csv", "realA/two.csv"]
    assert replay.sensor_id_for("realA/one.csv") == "realA.one"
    assert replay.sensor_id_for("weird name (1).csv") == "weird_name__1_"
    long = replay.sensor_id_for("x" * 100 + ".csv")
    assert len(long) == 64 and long != replay.sensor_id_for("x" * 101 + ".csv")


def test_missing_and_unreadable_values_are_kept_with_score_0(tmp_path):
    rows = nab_like_series(50, 7)
    rows[10][1] = ""
    rows[11][1] = "NaN"
    rows[12][1] = "oops"
    path = write_csv(tmp_path / "gaps.csv", ["timestamp", "value"], rows)
    (table,) = replay.read_path(path)
    assert table.bad_values == 1
    assert np.isnan(table.columns["value"][10:13]).all()
    score = scores_of(path)["value"]
    assert len(score) == 50
    assert (score[10:13] == 0).all()
    # The gaps are not shown to the detector: the rows after them score as without the gap rows.
    clean = [r for i, r in enumerate(rows) if i not in (10, 11, 12)]
    ref = scores_of(write_csv(tmp_path / "clean.csv", ["timestamp", "value"], clean))["value"]
    np.testing.assert_array_equal(np.delete(score, [10, 11, 12]), ref)


def test_duplicate_and_unordered_timestamps(tmp_path):
    rows = nab_like_series(100, 8)
    dup = rows[:40] + [[rows[39][0], 999.0]] + rows[40:]  # a repeated timestamp with another value
    score = scores_of(write_csv(tmp_path / "dup.csv", ["timestamp", "value"], dup))["value"]
    assert len(score) == 101
    ref = scores_of(write_csv(tmp_path / "ref.csv", ["timestamp", "value"], rows))["value"]
    # The repeat does not move the state: every other row scores as without it.
    np.testing.assert_array_equal(np.delete(score, 40), ref)

    shuffled = list(rows)
    shuffled[20], shuffled[21] = shuffled[21], shuffled[20]
    got = scores_of(write_csv(tmp_path / "swap.csv", ["timestamp", "value"], shuffled))["value"]
    expect = ref.copy()
    expect[20], expect[21] = ref[21], ref[20]  # each row keeps its own score, processed in time order
    np.testing.assert_array_equal(got, expect)


def test_timestamp_formats_agree():
    ns = replay.parse_timestamps(["2015-02-26 21:42:53"])
    assert (replay.parse_timestamps(["2015-02-26T21:42:53Z"]) == ns).all()
    assert (replay.parse_timestamps(["2015-02-27T04:42:53+07:00"]) == ns).all()
    assert (replay.parse_timestamps(["1424986973"]) == ns).all()
    assert (replay.parse_timestamps(["1424986973.5"]) == ns + 500_000_000).all()
    with pytest.raises(replay.ReplayError, match="row 2: unreadable timestamp 'yesterday'"):
        replay.parse_timestamps(["2015-02-26T21:42:53Z", "yesterday"], "f.csv")


def test_bad_files_get_clear_errors(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(replay.ReplayError, match="empty file"):
        replay.read_path(tmp_path / "empty.csv")
    with pytest.raises(replay.ReplayError, match="no such file"):
        replay.read_path(tmp_path / "missing")
    write_csv(tmp_path / "wide.csv", ["timestamp", "a", "b"], [["2015-01-01 00:00:00", 1, 2]])
    tables = replay.read_path(tmp_path / "wide.csv")
    with pytest.raises(replay.ReplayError, match="exactly one value column"):
        replay.write_nab_results(replay.replay(tables, RunningDeviation), tmp_path / "nab")
    assert cli_main(["replay", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_replay_nab_output(nab_dir, tmp_path, capsys):
    out = tmp_path / "nab-out"
    assert cli_main(["replay", "--nab-output", str(out), str(nab_dir), "--batch-size", "333"]) == 0
    assert "replayed 1350 rows of 3 file(s)" in capsys.readouterr().out
    rows = list(csv.reader(open(out / "realA" / "one.csv")))
    assert len(rows) == 601
    direct = replay.replay(replay.read_path(nab_dir), None)
    one = next(r for r in direct if r.table.name == "realA/one.csv")
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(one.score["value"].tolist(), abs=1e-6)
    assert not math.isnan(float(rows[1][1]))


def test_cli_help(capsys):
    for command, option in (("replay", "--nab-output"), ("backtest", "--truth")):
        with pytest.raises(SystemExit) as exc:
            cli_main([command, "--help"])
        assert exc.value.code == 0
        assert option in capsys.readouterr().out


def test_more_series_than_the_batch_size(tmp_path):
    folder = tmp_path / "many"
    for k in range(12):
        write_csv(folder / f"s{k:02d}.csv", ["timestamp", "value"], nab_like_series(40, 10 + k))
    tables = replay.read_path(folder)
    seen: list[int] = []

    def recording(series):
        det = RunningDeviation(series)
        original = det.process

        def process(batch, skip=None):
            seen.append(len(batch))
            return original(batch, skip)

        det.process = process
        return det

    small = replay.replay(tables, recording, batch_size=5)
    assert max(seen) <= 5 and sum(seen) == 12 * 40
    big = replay.replay(tables, RunningDeviation, batch_size=10_000)
    for a, b in zip(small, big):
        np.testing.assert_array_equal(a.score["value"], b.score["value"])
    # Files whose names map to the same sensor id still get distinct series.
    write_csv(tmp_path / "pair" / "a b.csv", ["timestamp", "value"], nab_like_series(30, 1))
    write_csv(tmp_path / "pair" / "a_b.csv", ["timestamp", "value"], nab_like_series(30, 2))
    pair = replay.replay(replay.read_path(tmp_path / "pair"), RunningDeviation)
    for res in pair:
        alone = scores_of(tmp_path / "pair" / res.table.name)["value"]
        np.testing.assert_array_equal(res.score["value"], alone)
