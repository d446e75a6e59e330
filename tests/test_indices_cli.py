"""`citywatch index`: run() over CSV files, with the Namespace built by add_arguments."""

from __future__ import annotations

import argparse
import csv
import io

import numpy as np
import pytest

from citywatch import index_cli
from citywatch.detectors.indices.fire_danger import fire_danger_index

EXAMPLE_PM25 = [26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    index_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def run_ok(capsys, *argv):
    assert index_cli.run(parse(*argv)) == 0
    return read_csv(capsys.readouterr().out)


def run_error(capsys, *argv) -> str:
    assert index_cli.run(parse(*argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.fixture
def aqi_csv(tmp_path):
    rows = [[f"2026-11-27T{9 + i:02d}:00:00+07:00", pm, "", ""] for i, pm in enumerate(EXAMPLE_PM25)]
    rows[-1][2:] = ["136.1", "118.7"]
    return write_csv(tmp_path / "aqi.csv", ["timestamp", "pm25", "o3", "no2"], rows)


def test_vn_aqi_hourly_stdout(capsys, aqi_csv):
    out = run_ok(capsys, "vn-aqi", "--input", str(aqi_csv))
    assert list(out[0]) == ["timestamp", "value", "category", "label", "dominant"]
    assert len(out) == 12
    assert out[0]["value"] == ""  # one hour is not enough for a NowCast
    assert out[-1] == {"timestamp": "2026-11-27T20:00:00+07:00", "value": "59", "category": "2",
                       "label": "Trung bình", "dominant": "no2"}


def test_vn_aqi_output_file(capsys, aqi_csv, tmp_path):
    dest = tmp_path / "out.csv"
    assert index_cli.run(parse("vn-aqi", "--input", str(aqi_csv), "--output", str(dest))) == 0
    assert capsys.readouterr().out == ""
    rows = read_csv(dest.read_text(encoding="utf-8"))
    assert rows[-1]["value"] == "59"


def test_us_aqi_nowcast_example(capsys, tmp_path):
    pm = [50, 80, 75, 90, 82, 53, 64, 74, 21, 10, 16, 13]
    rows = [[f"2026-11-27T{i:02d}:00:00Z", v] for i, v in enumerate(pm)]
    out = run_ok(capsys, "us-aqi", "--input", str(write_csv(tmp_path / "a.csv", ["timestamp", "pm25"], rows)))
    assert out[-1]["value"] == "66" and out[-1]["label"] == "Trung bình" and out[-1]["dominant"] == "pm25"


def test_missing_hours_and_row_order(capsys, tmp_path):
    # hours 08, 09, 11 (10 missing): at 11:00, c1 and c3 are present -> valid NowCast
    rows = [["2026-11-27T11:00:00+07:00", "30"], ["2026-11-27T08:00:00+07:00", "20"],
            ["2026-11-27T09:00:00+07:00", "20"]]
    out = run_ok(capsys, "vn-aqi", "--input", str(write_csv(tmp_path / "a.csv", ["timestamp", "pm25"], rows)))
    assert [r["timestamp"][11:16] for r in out] == ["08:00", "09:00", "11:00"]
    w = 20 / 30
    nc = (30 + w * w * 20 + w**3 * 20) / (1 + w * w + w**3)
    assert out[-1]["value"] == str(int(np.floor(nc * 2 + 0.5)))  # PM2.5 0..25 -> 0..50


def test_vn_aqi_daily(capsys, tmp_path):
    rows = [[f"2026-11-27T{h:02d}:00:00+07:00", "38", "20"] for h in range(24)]
    rows[5][2] = "180"
    path = write_csv(tmp_path / "a.csv", ["timestamp", "pm25", "no2"], rows)
    out = run_ok(capsys, "vn-aqi", "--input", str(path), "--period", "daily")
    assert out == [{"timestamp": "2026-11-27T00:00:00+07:00", "value": "90", "category": "2",
                    "label": "Trung bình", "dominant": "no2"}]


def test_vn_wqi(capsys, tmp_path):
    header = ["timestamp", "pH", "temperature", "dissolvedOxygen", "BOD5", "COD", "NH4", "PO4", "coliform"]
    rows = [["2026-11-01T09:00:00+07:00", 7.0, 25.0, 7.0, 5, 12, 0.45, 0.15, 3000],
            ["2026-11-02T09:00:00+07:00", 9.5, 25.0, 7.0, 5, 12, 0.45, 0.15, 3000],
            ["2026-11-03T09:00:00+07:00", 7.0, 25.0, 7.0, "", "", 0.45, "", 3000]]
    out = run_ok(capsys, "vn-wqi", "--input", str(write_csv(tmp_path / "w.csv", header, rows)))
    assert [(r["value"], r["category"]) for r in out] == [("90", "2"), ("9", "6"), ("", "")]
    assert out[0]["dominant"] == "NH4" and out[1]["label"] == "Ô nhiễm rất nặng"


def test_fire(capsys, tmp_path):
    # three readings a day (12:00, 13:00, 14:00 local); the 13:00 one counts; rain summed per day
    t13 = [30, 32, 33, 34]
    rh13 = [0.6, 0.5, 0.45, 0.4]
    rain = [[6, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]]
    rows = []
    for d in range(4):
        for k, hour in enumerate((12, 13, 14)):
            t, rh = (t13[d], rh13[d]) if hour == 13 else (25.0, 0.9)
            rows.append([f"2026-02-{d + 1:02d}T{hour:02d}:00:00+07:00", t, rh, rain[d][k]])
    path = write_csv(tmp_path / "f.csv", ["timestamp", "temperature", "relativeHumidity", "precipitation"], rows)
    out = run_ok(capsys, "fire", "--input", str(path))
    p, lvl = fire_danger_index(t13, rh13, [6, 0, 3, 0])
    assert [r["timestamp"] for r in out] == [f"2026-02-{d:02d}T00:00:00+07:00" for d in range(1, 5)]
    assert [float(r["value"]) for r in out] == pytest.approx(p, abs=0.05)
    assert out[0]["value"] == "0.0" and out[0]["category"] == "I"
    assert [r["category"] for r in out] == [["I", "II", "III", "IV", "V"][i - 1] for i in lvl]
    assert out[2]["rain_mm"] == "3.0"
    # a 7 mm reset threshold keeps day 1's sum
    out7 = run_ok(capsys, "fire", "--input", str(path), "--rain-reset", "7")
    assert float(out7[0]["value"]) > 0


def test_fire_rejects_percent_humidity(capsys, tmp_path):
    path = write_csv(tmp_path / "f.csv", ["timestamp", "temperature", "relativeHumidity", "precipitation"],
                     [["2026-02-01T13:00:00+07:00", 30, 55, 0]])
    assert "fraction" in run_error(capsys, "fire", "--input", str(path))


def test_traffic(capsys, tmp_path):
    rows = [["2026-11-27T08:00:00+07:00", 60, 0.25, 40], ["2026-11-27T08:01:00+07:00", 120, 0.6, 10]]
    path = write_csv(tmp_path / "t.csv", ["timestamp", "intensity", "occupancy", "averageVehicleSpeed"], rows)
    out = run_ok(capsys, "traffic", "--input", str(path), "--capacity", "1800", "--lanes", "2")
    assert out[0]["value"] == "80.0" and out[0]["category"] == "B"
    assert out[0]["flow_veh_h"] == "3600" and out[0]["occupancy_pct"] == "25.0" and out[0]["tti"] == "1.25"
    assert out[1]["category"] == "F"
    # 7200 veh/h x 0.465 PCU/veh / 2 lanes = 1674 PCU/h/lane: v/c 0.93
    assert out[1]["flow_pcu_h"] == "3348" and out[1]["vc"] == "0.93"


def test_traffic_per_class_counts(capsys, tmp_path):
    header = ["timestamp", "intensity", "averageVehicleSpeed", "motorbike", "car", "bus_large", "truck_2axle"]
    rows = [["2026-11-27T08:00:00+07:00", 1050, 30, 900, 120, 10, 20]]
    out = run_ok(capsys, "traffic", "--input", str(write_csv(tmp_path / "t.csv", header, rows)), "--interval", "900")
    assert out[0]["flow_veh_h"] == "4200" and out[0]["flow_pcu_h"] == "1820"


@pytest.mark.parametrize(
    "name, header, rows, message",
    [
        ("vn-aqi", ["timestamp", "no2"], [["2026-11-27T08:00:00Z", 1]], "'pm25' or 'pm10'"),
        ("vn-aqi", ["time", "pm25"], [["2026-11-27T08:00:00Z", 1]], "missing column 'timestamp'"),
        ("us-aqi", ["timestamp", "pm25"], [["2026-11-27T08:00:00Z", 1], ["yesterday", 2]], "line 3: bad timestamp"),
        ("us-aqi", ["timestamp", "pm25"], [["2026-11-27T08:30:00Z", 1]], "not the start of an hour"),
        ("vn-aqi", ["timestamp", "pm25"], [["2026-11-27T08:00:00Z", 1], ["2026-11-27T15:00:00+07:00", 2]],
         "line 3: duplicate hour"),
        ("vn-aqi", ["timestamp", "pm25"], [["2026-11-27T08:00:00Z", "high"]], "line 2: column 'pm25': not a number"),
        ("fire", ["timestamp", "temperature", "precipitation"], [["2026-11-27T13:00:00Z", 30, 0]],
         "missing column 'relativeHumidity'"),
        ("traffic", ["timestamp", "intensity"], [["2026-11-27T13:00:00Z", 30]], "'averageVehicleSpeed'"),
        ("traffic", ["timestamp", "intensity", "averageVehicleSpeed"], [["2026-11-27T13:00:00Z", 30, 20]], "--interval"),
        ("vn-wqi", ["timestamp", "pH", "BOD5", "COD"], [["2026-11-27T13:00:00Z", 7, 4, 10]], "3 group IV"),
        ("vn-wqi", ["timestamp", "BOD5", "COD", "dissolvedOxygen"], [["2026-11-27T13:00:00Z", 4, 10, 7]],
         "'temperature'"),
    ],
)
def test_input_errors_exit_2(capsys, tmp_path, name, header, rows, message):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    assert message in run_error(capsys, name, "--input", str(path))


def test_missing_file(capsys, tmp_path):
    assert "cannot read" in run_error(capsys, "vn-aqi", "--input", str(tmp_path / "nope.csv"))


def test_epoch_and_naive_timestamps(capsys, tmp_path):
    # epoch seconds, and a naive timestamp taken as local time (+07:00 by default)
    rows = [["1795741200", "20"], ["2026-11-27T09:00:00", "20"]]  # 2026-11-27T01:00Z = 08:00+07:00
    out = run_ok(capsys, "vn-aqi", "--input", str(write_csv(tmp_path / "a.csv", ["timestamp", "pm25"], rows)))
    assert [r["value"] for r in out] == ["", "40"]


def test_name_must_be_known():
    with pytest.raises(SystemExit):
        parse("pollen", "--input", "x.csv")
