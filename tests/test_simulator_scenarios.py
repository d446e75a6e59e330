"""The engine's whole default detector set on a simulated city with injected faults and events.

One warm-up day, then a day in which the simulator (seed 7) injects, per sensor, about one spike,
stuck run, drift and dropout, and pollution episodes over neighbouring air stations. The readings go
through `Evaluator` exactly as in the engine (event-time batches of one minute, devices checked on
the event clock), and the alerts it raises are scored against the simulator's ground truth:

* an *alert* is a detector's alert event that leaves ok (or, for the spatial detector, changes
  between "sensor suspect" and "area event"); regulatory and index alerts are not fault alerts;
* precision: alerts on a sensor with a labelled fault or event that overlaps them (until an hour
  after its end), over all alerts after the warm-up;
* recall: faults with an alert on one of their sensors from their start until five sample
  intervals after their end (a dropout: the device going late or offline);
* delay: from the fault's start to its first alert, in the sensor's sample intervals.

Figures on this seed (printed with -s): 967 alerts, precision 0.92; recall dropout 0.98, stuck
0.92, spike 0.85, drift 0.81, episodes 1.00; median delay dropout 1.3, spike 0, stuck 3 (2 after the
first repeated value, since the first frozen reading is a true one), drift about 70 (a drift starts
at zero), episodes 7.5 (they build up). Inside episodes 83 % of the spatial alerts say "area event";
elsewhere most say "sensor suspect". The issue's target (0.95 / 0.95 / 2 intervals) is met for
dropouts only; the assertions below hold what is reached, so that it cannot slip back unnoticed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from citywatch.batch import ReadingBatch
from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.registry import Registry, SeriesIndex
from citywatch.simulator import FAULT_KINDS, Simulator

REGISTRY = Path(__file__).resolve().parents[1] / "config" / "sensors" / "bienhoa.yaml"
NS = 10**9
START = 1_780_000_000.0  # a fixed day, so that the figures are reproducible
FAULT_DETECTORS = {"stuck", "spike", "drift", "no_data", "anomaly", "seasonal", "traffic_zero", "spatial"}
PRECISION_GRACE_S = 3600.0
RECALL_GRACE_INTERVALS = 5


@pytest.fixture(scope="module")
def city_day():
    registry = Registry.load(REGISTRY)
    series = SeriesIndex(registry)
    series.add_registry()
    settings = Settings.model_validate({
        "detectors": {"write_scores": "none", "state_file": None},
        "indices": {"air": False, "fire": False, "traffic": False, "water": False},
        "forecasts": {"enabled": False},
    })
    evaluator = Evaluator(settings, series)
    sim = Simulator(registry, seed=7, start=START, faults=list(FAULT_KINDS))
    t0, t1 = START - 86400.0, START + 86400.0
    cols = []
    for sensor_id in sim.sims:
        ts, values = sim.readings(sensor_id, t0, t1)
        for metric, v in values.items():
            sid = series.get(sensor_id, metric)
            ok = np.isfinite(v)
            if sid is not None and ok.any():
                cols.append((np.full(int(ok.sum()), sid, np.int32), ts[ok].astype(np.int64) * 1_000_000, v[ok]))
    s, t, v = (np.concatenate(parts) for parts in zip(*cols))
    order = np.lexsort((s, t))
    s, t, v = s[order], t[order], v[order]
    edges = np.arange(t[0], t[-1] + 60 * NS + 1, 60 * NS)
    bounds = np.searchsorted(t, edges)
    events = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            batch = ReadingBatch.from_columns(s[lo:hi], t[lo:hi], v[lo:hi]).sorted_by_series_time()
            events += evaluator.ingest(batch, now_ns=0)[1]
        events += evaluator.check_devices()[1]
    interval = {x.id: float(x.interval) for x in registry.sensors.values() if x.interval}
    return events, sim.faults(START, t1), interval


def _alerts(events):
    return [e for e in events if e.detector in FAULT_DETECTORS and e.ts_ns >= START * NS and e.level != "ok"
            and (e.previous_level == "ok" or e.detector == "spatial")]


def _score(events, faults, interval):
    alerts = _alerts(events)
    true = [a for a in alerts if any(a.sensor in f.sensors and f.start * NS <= a.ts_ns <= (f.end + PRECISION_GRACE_S) * NS
                                     for f in faults)]
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    for f in faults:
        iv = interval[f.sensors[0]]
        until = (f.end + RECALL_GRACE_INTERVALS * iv) * NS
        hits = [a.ts_ns for a in alerts if a.sensor in f.sensors and f.start * NS <= a.ts_ns <= until
                and (f.kind != "dropout" or a.detector == "no_data")]
        by_kind[f.kind].append((min(hits) / NS - f.start) / iv if hits else None)
    return alerts, true, by_kind


def test_fault_and_event_alerts_on_a_simulated_city(city_day):
    events, faults, interval = city_day
    alerts, true, by_kind = _score(events, faults, interval)
    precision = len(true) / len(alerts)
    per_detector = Counter(a.detector for a in alerts)
    print(f"\nalerts {len(alerts)} precision {precision:.3f} by detector {dict(per_detector)}")
    recall, delay = {}, {}
    for kind, delays in sorted(by_kind.items()):
        found = [d for d in delays if d is not None]
        recall[kind] = len(found) / len(delays)
        delay[kind] = float(np.median(found)) if found else float("nan")
        print(f"{kind:8s} faults {len(delays):4d} recall {recall[kind]:.3f} median delay {delay[kind]:.1f} intervals")
    assert set(by_kind) == set(FAULT_KINDS) and min(len(d) for d in by_kind.values()) >= 3
    assert precision >= 0.9
    assert recall["dropout"] >= 0.98 and delay["dropout"] <= 2.0
    assert recall["stuck"] >= 0.9
    assert recall["spike"] >= 0.82 and delay["spike"] <= 1.0
    assert recall["drift"] >= 0.78
    assert recall["episode"] == 1.0


def test_an_area_event_and_a_suspect_sensor_reach_people_as_different_alerts(city_day):
    events, faults, _ = city_day
    spatial = [e for e in _alerts(events) if e.detector == "spatial"]
    episodes = [f for f in faults if f.kind == "episode"]
    in_episode = [e for e in spatial if any(e.sensor in f.sensors and f.start * NS <= e.ts_ns <= f.end * NS for f in episodes)]
    lone = [e for e in spatial if not any(e.sensor in f.sensors and f.start * NS <= e.ts_ns <= (f.end + 3600) * NS
                                          for f in episodes)]
    reasons_in, reasons_lone = Counter(e.reason for e in in_episode), Counter(e.reason for e in lone)
    print(f"\nin episodes {dict(reasons_in)}, elsewhere {dict(reasons_lone)}")
    assert reasons_in["area_event"] >= 0.8 * len(in_episode) > 0
    assert reasons_lone["sensor_suspect"] > reasons_lone["area_event"]
