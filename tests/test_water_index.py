"""Live VN_WQI and QCVN 08:2023 per water station: probe hourly means + lab samples -> indices, exceedances."""

from __future__ import annotations

import datetime as dt
import re
import time

import numpy as np
import pytest

from citywatch.batch import ReadingBatch
from citywatch.config import Settings
from citywatch.detectors.indices import vn_wqi
from citywatch.evaluate import Evaluator
from citywatch.registry import Registry, RegistryFile, SeriesIndex
from citywatch.stats import Stats
from citywatch.water_index import WaterQuality, qcvn08_bounds

HOUR_NS = 3_600_000_000_000
MIN_NS = 60_000_000_000
LOCAL = dt.timezone(dt.timedelta(hours=7))
H0 = int(dt.datetime(2026, 6, 1, 8, tzinfo=LOCAL).timestamp()) // 3600  # 08:00 local, 1 June 2026

PROBES = {"temperature": "Cel", "pH": "pH", "dissolvedOxygen": "mg/L", "NH4": "mg/L"}
LABS = {"BOD5": "mg/L", "COD": "mg/L", "PO4": "mg/L", "NO3": "mg/L", "coliform": "MPN/100mL", "Cu": "mg/L",
        "As": "mg/L", "aldrin": "ug/L", "dieldrin": "ug/L", "TSS": "mg/L"}


def water_registry() -> Registry:
    metrics = {m: {"unit": u, "min": 0} for m, u in {**PROBES, **LABS}.items()}
    doc = {"profiles": {"sonde": {"domain": "water", "interval": "300s", "metrics": metrics}},
           "sensors": [{"id": f"wq-{i}", "domain": "water", "area": "Bửu Long", "lat": 10.95, "lon": 106.80,
                        "profile": "sonde"} for i in (1, 2, 3)]}
    parsed = RegistryFile.model_validate(doc)
    return Registry({s.id: s for s in parsed.sensors})


@pytest.fixture
def series() -> SeriesIndex:
    s = SeriesIndex(water_registry())
    s.add_registry()
    return s


def probe_hours(series, sensor, values: dict[str, list[float]], start_hour=H0):
    """Probe readings every 10 minutes, constant within each hour (so the hourly mean is the value)."""
    cols = []
    for metric, hourly in values.items():
        sid = series.get(sensor, metric)
        ts = [(start_hour + h) * HOUR_NS + m * MIN_NS for h in range(len(hourly)) for m in range(0, 60, 10)]
        cols.append((np.full(len(ts), sid), np.asarray(ts), np.repeat(hourly, 6).astype(float)))
    return cols


def lab_sample(series, sensor, ts_ns, values: dict[str, float]):
    return [(np.array([series.get(sensor, m)]), np.array([ts_ns]), np.array([float(v)])) for m, v in values.items()]


def run(stage: WaterQuality, cols, flush_hour: int | None = None, cuts=()):
    """Feed readings in time order (optionally cut into several batches at the given times)."""
    s, t, v = (np.concatenate(c) for c in zip(*cols))
    order = np.argsort(t, kind="stable")
    s, t, v = s[order], t[order], v[order]
    lines, events = [], []
    bounds = [0, *[int(np.searchsorted(t, c)) for c in cuts], len(t)]
    for a, b in zip(bounds, bounds[1:]):
        batch = ReadingBatch.from_columns(s[a:b], t[a:b], v[a:b]).sorted_by_series_time()
        out = stage.process(batch)
        lines += out[0]
        events += out[1]
    if flush_hour is not None:
        out = stage.process_quiet(flush_hour * HOUR_NS)
        lines += out[0]
        events += out[1]
    return lines, events


def parse(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    head, rest = re.split(r"(?<!\\) ", line, maxsplit=1)
    fields, ts = rest.rsplit(" ", 1)
    measurement, *tags = re.split(r"(?<!\\),", head)
    return (measurement, dict(t.split("=", 1) for t in tags),
            dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,]+)', fields)), int(ts))


def wqi_points(lines, sensor=None):
    out = []
    for line in lines:
        m, tags, fields, ts = parse(line)
        if m == "indices" and tags["index"] == "vn_wqi" and (sensor is None or tags["sensor"] == sensor):
            out.append((ts // HOUR_NS, float(fields["value"]), int(fields["category"].rstrip("i")),
                        fields["label_vi"].strip('"')))
    return out


def final_by_hour(points):
    """The stored value per hour: later points of the same hour overwrite earlier ones."""
    return {h: (v, c) for h, v, c, _ in points}


EXAMPLE_A_PROBES = {"pH": [7.2], "temperature": [27.5], "dissolvedOxygen": [5.7], "NH4": [0.2]}
EXAMPLE_A_LAB = {"Cu": 0.05, "As": 0.02, "BOD5": 20.0, "COD": 25.0, "PO4": 0.3, "aldrin": 0.05, "dieldrin": 0.05,
                 "coliform": 10_000}


def test_decision_1460_example_end_to_end(series):
    stage = WaterQuality(series)
    cols = lab_sample(series, "wq-1", (H0 - 30) * HOUR_NS, EXAMPLE_A_LAB) + probe_hours(series, "wq-1", EXAMPLE_A_PROBES)
    lines, _ = run(stage, cols, flush_hour=H0 + 2)
    # domain reference §3.6 A: DO_sat(27.5) = 7.797, DO% 73.1; formula 3 -> 34.58 -> 35 (Xấu)
    assert wqi_points(lines) == [(H0, 35.0, 4, "Xấu")]
    weighted = WaterQuality(series, weighted=True)
    lines, _ = run(weighted, cols, flush_hour=H0 + 2)
    assert [v for _, v, _, _ in wqi_points(lines)] == [40.0]  # formula 5 -> 40.43 -> 40


def test_clean_river_and_ph_effects_hour_by_hour(series):
    stage = WaterQuality(series)
    lab = {"BOD5": 5, "COD": 12, "PO4": 0.15, "coliform": 3000}
    probes = {"pH": [7.0, 9.5, 8.8], "temperature": [25.0] * 3, "dissolvedOxygen": [7.0] * 3, "NH4": [0.45] * 3}
    lines, events = run(stage, lab_sample(series, "wq-2", (H0 - 1) * HOUR_NS, lab) + probe_hours(series, "wq-2", probes),
                        flush_hour=H0 + 5)
    # §3.6 B: 89.64 -> 90 (Tốt); C: pH 9.5 -> 9 (Ô nhiễm rất nặng), pH 8.8 -> 62.75 -> 63
    assert final_by_hour(wqi_points(lines)) == {H0: (90.0, 2), H0 + 1: (9.0, 6), H0 + 2: (63.0, 3)}
    changes = [(e.ts_ns // HOUR_NS, e.level, e.previous_level) for e in events if e.detector == "index"]
    assert changes == [(H0 + 1, "critical", "ok"), (H0 + 2, "warning", "critical")]


def test_do_saturation_from_the_hours_water_temperature(series):
    stage = WaterQuality(series)
    lab = {"BOD5": 4, "COD": 10, "coliform": 2500}  # all 100
    # DO 8.1757 mg/L at 25 °C is 100 % saturation (sub-index 100); at 30 °C the same DO is 107.6 % (still 100);
    # DO 4.0875 at 25 °C is 50 % -> sub-index 50
    probes = {"pH": [7.0] * 3, "temperature": [25.0, 30.0, 25.0], "dissolvedOxygen": [8.1757, 8.1757, 4.08785],
              "NH4": [0.1] * 3}
    lines, _ = run(stage, lab_sample(series, "wq-1", (H0 - 1) * HOUR_NS, lab) + probe_hours(series, "wq-1", probes),
                   flush_hour=H0 + 5)
    pct30 = float(vn_wqi.do_percent_saturation(8.1757, 30.0))
    assert 105 < pct30 < 112
    # mean IV = (DO + BOD + COD + NH4) / 4; V = 100: WQI = sqrt(IV * 100)
    expect_50 = round(np.sqrt((50 + 300) / 4 * 100))
    assert final_by_hour(wqi_points(lines)) == {H0: (100.0, 1), H0 + 1: (100.0, 1),
                                                H0 + 2: (float(expect_50), int(vn_wqi.vn_wqi_category(expect_50)))}
    assert expect_50 == 94


def test_data_rules_refuse_and_count(series):
    stage = WaterQuality(series)
    probes = {"pH": [7.0] * 4, "temperature": [26.0] * 4, "dissolvedOxygen": [6.5] * 4, "NH4": [0.2] * 4}
    cols = probe_hours(series, "wq-3", probes)
    # hour 0: probes only (groups I, IV with 2 parameters); hour 1: + BOD5 (IV has 3, but only 2 groups)
    cols += lab_sample(series, "wq-3", (H0 + 1) * HOUR_NS + 5 * MIN_NS, {"BOD5": 5})
    # hour 2: + coliform (I, IV, V): valid
    cols += lab_sample(series, "wq-3", (H0 + 2) * HOUR_NS + 5 * MIN_NS, {"coliform": 3000})
    lines, _ = run(stage, cols, flush_hour=H0 + 6)
    hours = sorted(final_by_hour(wqi_points(lines)))
    assert hours == [H0 + 2, H0 + 3]
    assert stage.refused.tolist() == [0, 0, 2] and stage.refused_total == 2


def test_a_refusal_is_taken_back_when_the_hour_completes(series):
    stage = WaterQuality(series)
    lab = lab_sample(series, "wq-1", (H0 - 2) * HOUR_NS, {"BOD5": 5, "COD": 12, "coliform": 3000})
    ph = probe_hours(series, "wq-1", {"pH": [7.0, 7.0]})
    rest = probe_hours(series, "wq-1", {"temperature": [26.0, 26.0], "dissolvedOxygen": [6.5, 6.5], "NH4": [0.2, 0.2]})
    # pH closes hour 0 first (the hour is computed and refused: no DO yet), then the other probes close it
    run(stage, lab + ph, cuts=())
    run(stage, rest, flush_hour=H0 + 4)
    assert stage.refused_total == 0
    assert stage.last_category[0] > 0


def test_lab_samples_older_than_the_max_age_no_longer_count(series):
    probes = {"pH": [7.0], "temperature": [26.0], "dissolvedOxygen": [6.5], "NH4": [0.2]}
    lab = {"BOD5": 5, "COD": 12, "coliform": 3000}
    cols = lab_sample(series, "wq-1", (H0 - 24 * 10) * HOUR_NS, lab) + probe_hours(series, "wq-1", probes)
    fresh_enough = WaterQuality(series, lab_max_age_s=14 * 86400)
    assert len(wqi_points(run(fresh_enough, cols, flush_hour=H0 + 2)[0])) == 1
    too_old = WaterQuality(series, lab_max_age_s=7 * 86400)
    assert wqi_points(run(too_old, cols, flush_hour=H0 + 2)[0]) == []
    assert too_old.refused_total == 1


def test_the_latest_sample_before_the_hour_is_used(series):
    stage = WaterQuality(series)
    probes = {"pH": [7.0] * 3, "temperature": [26.0] * 3, "dissolvedOxygen": [6.5] * 3, "NH4": [0.2] * 3}
    cols = probe_hours(series, "wq-1", probes)
    cols += lab_sample(series, "wq-1", (H0 - 5) * HOUR_NS, {"BOD5": 4, "COD": 10, "coliform": 2500})
    cols += lab_sample(series, "wq-1", (H0 + 1) * HOUR_NS + 20 * MIN_NS, {"BOD5": 25, "COD": 50, "coliform": 10000})
    lines, _ = run(stage, cols, flush_hour=H0 + 5)
    values = final_by_hour(wqi_points(lines))
    assert values[H0][0] > values[H0 + 2][0]
    clean = vn_wqi.vn_wqi_index({"pH": 7.0, "temperature": 26.0, "dissolvedOxygen": 6.5, "NH4": 0.2, "BOD5": 4,
                                 "COD": 10, "coliform": 2500}).value
    dirty = vn_wqi.vn_wqi_index({"pH": 7.0, "temperature": 26.0, "dissolvedOxygen": 6.5, "NH4": 0.2, "BOD5": 25,
                                 "COD": 50, "coliform": 10000}).value
    assert values[H0][0] == float(clean) and values[H0 + 1][0] == float(dirty) and values[H0 + 2][0] == float(dirty)


def test_a_late_lab_result_recomputes_the_newest_hour(series):
    stage = WaterQuality(series)
    probes = {"pH": [7.0] * 2, "temperature": [26.0] * 2, "dissolvedOxygen": [6.5] * 2, "NH4": [0.2] * 2}
    before, _ = run(stage, lab_sample(series, "wq-1", (H0 - 48) * HOUR_NS, {"BOD5": 5, "COD": 12, "coliform": 3000})
                    + probe_hours(series, "wq-1", probes), flush_hour=H0 + 2)
    assert stage.last_hour[0] == H0 + 1 and final_by_hour(wqi_points(before))[H0 + 1][1] <= 2
    # results of a sample taken during hour H0+1 come later: that hour is computed again, with them
    lines, _ = run(stage, lab_sample(series, "wq-1", (H0 + 1) * HOUR_NS + 10 * MIN_NS, {"coliform": 20000}))
    expect = vn_wqi.vn_wqi_index({"pH": 7.0, "temperature": 26.0, "dissolvedOxygen": 6.5, "NH4": 0.2, "BOD5": 5,
                                  "COD": 12, "coliform": 20000})
    assert [(h, v) for h, v, _, _ in wqi_points(lines)] == [(H0 + 1, float(expect.value))]


def exceedances(lines, pollutant):
    out = []
    for line in lines:
        m, tags, fields, ts = parse(line)
        if m == "exceedances" and tags["pollutant"] == pollutant:
            out.append((tags["averaging"], tags["class"], float(fields["mean"]), float(fields["limit"]),
                        fields["exceeded"], int(fields["year_count"].rstrip("i"))))
    return out


def test_qcvn08_class_changes_the_outcome(series):
    cols = lab_sample(series, "wq-1", H0 * HOUR_NS, {"BOD5": 8.0, "As": 0.02})
    strict, lenient = WaterQuality(series, water_class="A"), WaterQuality(series, water_class="C")
    lines_a, events_a = run(strict, cols)
    lines_c, events_c = run(lenient, cols)
    assert exceedances(lines_a, "BOD5") == [("sample", "A", 8.0, 4.0, "true", 1)]
    assert exceedances(lines_c, "BOD5") == [("sample", "C", 8.0, 10.0, "false", 0)]
    # arsenic has a Bảng 1 health limit (0.01) whatever the class
    assert exceedances(lines_a, "As")[0][4] == exceedances(lines_c, "As")[0][4] == "true"
    assert {(e.metric, e.detector) for e in events_a} == {("BOD5", "qcvn08"), ("As", "qcvn08")}
    assert {e.metric for e in events_c} == {"As"}
    # a per-station override
    mixed = WaterQuality(series, water_class="C", class_by_station={"wq-1": "A"})
    assert exceedances(run(mixed, cols)[0], "BOD5")[0][1:] == ("A", 8.0, 4.0, "true", 1)
    with pytest.raises(ValueError, match="class"):
        WaterQuality(series, water_class="E")


def test_qcvn08_probe_hourly_means_do_below_the_minimum_and_ph_range(series):
    stage = WaterQuality(series, water_class="B")
    probes = {"dissolvedOxygen": [6.0, 4.5, 4.8, 5.5], "pH": [7.0, 8.7, 5.8, 7.0]}
    lines, events = run(stage, probe_hours(series, "wq-2", probes), flush_hour=H0 + 6)
    assert [(x[2], x[3], x[4]) for x in exceedances(lines, "dissolvedOxygen")] == [
        (6.0, 5.0, "false"), (4.5, 5.0, "true"), (4.8, 5.0, "true"), (5.5, 5.0, "false")]
    assert [(x[3], x[4], x[5]) for x in exceedances(lines, "pH")] == [
        (8.5, "false", 0), (8.5, "true", 1), (6.0, "true", 2), (8.5, "false", 2)]
    do = [(e.level, e.ts_ns // HOUR_NS) for e in events if e.metric == "dissolvedOxygen"]
    assert do == [("critical", H0 + 1), ("ok", H0 + 3)]
    assert qcvn08_bounds("dissolvedOxygen", "B") == (5.0, None) and qcvn08_bounds("NH4", "D") == (None, 0.3)


def test_yearly_counts_restart_at_local_new_year(series):
    stage = WaterQuality(series, water_class="A")
    new_year_ns = int(dt.datetime(2027, 1, 1, tzinfo=LOCAL).timestamp()) * 10**9
    cols = []
    for i, offset_h in enumerate((-30, -3, 2, 20)):  # two samples in local 2026, two in 2027 (one still 2026 UTC)
        cols += lab_sample(series, "wq-1", new_year_ns + offset_h * HOUR_NS, {"COD": 30.0})
    lines, events = run(stage, cols)
    assert [x[5] for x in exceedances(lines, "COD")] == [1, 2, 1, 2]
    cod = [e for e in events if e.metric == "COD"]
    assert len(cod) == 1 and "(1 exceedances in 2026)" in cod[0].reason  # still exceeding: one alert


def test_snapshot_restore_keeps_lab_samples_counts_and_classes(series):
    stage = WaterQuality(series, water_class="A")
    lab = {"BOD5": 5, "COD": 12, "coliform": 3000}
    probes = {"pH": [7.0] * 2, "temperature": [26.0] * 2, "dissolvedOxygen": [6.5] * 2, "NH4": [0.2] * 2}
    lines, _ = run(stage, lab_sample(series, "wq-1", (H0 - 1) * HOUR_NS, lab) + probe_hours(series, "wq-1", probes))
    reference = WaterQuality(series, water_class="A")
    ref_lines, _ = run(reference, lab_sample(series, "wq-1", (H0 - 1) * HOUR_NS, lab)
                       + probe_hours(series, "wq-1", {k: v * 2 for k, v in probes.items()}), flush_hour=H0 + 6)
    resumed = WaterQuality(series, water_class="A")
    resumed.restore({k: np.array(v, copy=True) for k, v in stage.snapshot().items()})
    more = probe_hours(series, "wq-1", probes, start_hour=H0 + 2)
    resumed_lines, _ = run(resumed, more, flush_hour=H0 + 6)
    # without the lab samples of the snapshot the hours after the restart would be refused
    assert final_by_hour(wqi_points(lines + resumed_lines)) == final_by_hour(wqi_points(ref_lines))
    assert exceedances(resumed_lines, "dissolvedOxygen")  # judged after the restart too
    assert resumed.counts.count.sum() == reference.counts.count.sum() > 0


def test_vectorised_across_stations_in_one_batch(series):
    stage = WaterQuality(series)
    lab = {"BOD5": 5, "COD": 12, "coliform": 3000}
    cols = []
    for i, sensor in enumerate(("wq-1", "wq-2", "wq-3")):
        cols += lab_sample(series, sensor, (H0 - 1) * HOUR_NS, lab)
        cols += probe_hours(series, sensor, {"pH": [7.0, 9.5 - i], "temperature": [25.0] * 2,
                                             "dissolvedOxygen": [7.0] * 2, "NH4": [0.45] * 2})
    lines, _ = run(stage, cols, flush_hour=H0 + 3)
    for i, sensor in enumerate(("wq-1", "wq-2", "wq-3")):
        expect = vn_wqi.vn_wqi_index({"pH": 9.5 - i, "temperature": 25.0, "dissolvedOxygen": 7.0, "NH4": 0.45,
                                      **lab}).value
        assert final_by_hour(wqi_points(lines, sensor))[H0 + 1][0] == float(expect)


@pytest.mark.integration
def test_engine_writes_vn_wqi_from_lab_samples_and_probes(mosquitto, influxdb, db_name, tmp_path):
    import time

    from citywatch.pipeline import Engine

    from pipeline_helpers import Device, engine_settings, rows, wait_for

    settings = engine_settings(mosquitto.url, influxdb.url, db_name, tmp_path / "e", f"{db_name}-wq",
                               indices={"water_class": "A"})
    engine = Engine(settings, water_registry())
    engine.start()
    device = Device(mosquitto.port, client_id=f"{db_name}-d")
    try:
        wait_for(engine.consumer.connected.is_set, 10, "engine connected")
        start_hour = int(time.time()) // 3600 - 6
        lab = {"BOD5": 5.0, "COD": 12.0, "PO4": 0.15, "coliform": 3000}
        msgs = [("city/water/wq-1/telemetry", {"ts": (start_hour - 20) * 3_600_000, **lab})]
        ph = [7.0, 8.8, 7.0]  # the last hour stays open
        msgs += [("city/water/wq-1/telemetry", {"ts": (start_hour + h) * 3_600_000 + m * 60_000, "pH": v,
                                                "temperature": 25.0, "dissolvedOxygen": 7.0, "NH4": 0.45})
                 for h, v in enumerate(ph) for m in range(0, 60, 15)]
        device.publish_all(msgs)
        query = "SELECT value, category, label_vi, dominant FROM indices WHERE index = 'vn_wqi' ORDER BY time"
        wait_for(lambda: len(rows(influxdb, db_name, query)) >= 2, 15, "vn_wqi points")
        stored = rows(influxdb, db_name, query)
        expect = vn_wqi.vn_wqi_index({"pH": np.array(ph[:2]), "temperature": 25.0, "dissolvedOxygen": 7.0,
                                      "NH4": 0.45, **lab})
        assert [r["time"] for r in stored] == [start_hour * HOUR_NS, (start_hour + 1) * HOUR_NS]
        assert [r["value"] for r in stored] == expect.value.tolist() == [90.0, 63.0]  # domain.md §3.6 B and C
        assert [r["category"] for r in stored] == expect.category.tolist()
        assert stored[0]["label_vi"] == "Tốt"
        # class A: BOD5 5 > 4 and COD 12 > 10 exceed QCVN 08:2023; counted for the year
        ex = rows(influxdb, db_name, "SELECT mean, exceeded, year_count FROM exceedances WHERE \"class\" = 'A' "
                                     "AND averaging = 'sample' GROUP BY pollutant")
        assert {r["pollutant"]: (r["exceeded"], r["year_count"]) for r in ex if r["pollutant"] in ("BOD5", "COD")} == {
            "BOD5": (True, 1), "COD": (True, 1)}
    finally:
        device.close()
        engine.stop()


def test_the_index_cli_agrees_with_the_live_stage(series, tmp_path, capsys):
    """`citywatch index vn-wqi` over a CSV of the hourly means and lab values gives the live values."""
    import argparse
    import csv
    import io

    from citywatch import index_cli

    lab = {"BOD5": 7.5, "COD": 22.0, "PO4": 0.25, "coliform": 6000, "Cu": 0.3}
    probes = {"pH": [7.0, 8.7, 5.8, 6.4], "temperature": [24.0, 27.0, 30.0, 29.0],
              "dissolvedOxygen": [7.5, 5.0, 3.2, 9.5], "NH4": [0.1, 0.3, 1.2, 0.6]}
    stage = WaterQuality(series)
    lines, _ = run(stage, lab_sample(series, "wq-1", (H0 - 3) * HOUR_NS, lab) + probe_hours(series, "wq-1", probes),
                   flush_hour=H0 + 6)
    live = final_by_hour(wqi_points(lines))
    path = tmp_path / "samples.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *probes, *lab])
        for h in range(4):
            stamp = dt.datetime.fromtimestamp((H0 + h) * 3600, dt.timezone.utc).isoformat()
            w.writerow([stamp, *(v[h] for v in probes.values()), *lab.values()])
    parser = argparse.ArgumentParser()
    index_cli.add_arguments(parser)
    assert index_cli.run(parser.parse_args(["vn-wqi", "--input", str(path)])) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(float(r["value"]), int(r["category"])) for r in out] == [live[H0 + h] for h in range(4)]
    assert len({v for v, _ in live.values()}) == 4  # four different hours, four different values


def test_an_air_only_registry_runs_without_water_stations():
    reg = RegistryFile.model_validate({"sensors": [{"id": "aq-1", "domain": "air", "area": "x", "lat": 11, "lon": 107,
                                                    "interval": 60, "metrics": {"pm25": {"unit": "ug/m3"}}}]})
    series = SeriesIndex(Registry({s.id: s for s in reg.sensors}))
    series.add_registry()
    ev = Evaluator(Settings(), series, Stats())
    t0 = int(time.time()) * 10**9
    for i in range(3):
        lines, _ = ev.ingest(ReadingBatch.from_columns(np.array([0], np.int32), np.array([t0 + i * 60 * 10**9]),
                                                       np.array([12.0]), np.zeros(1, np.uint8)), time.time_ns())
        assert any(line.startswith("air,") for line in lines)
    snap = ev.stateful()["__water"].snapshot()
    assert snap["hist"].shape[0] == 0
    ev.stateful()["__water"].restore(snap)
