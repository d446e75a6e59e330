"""The engine's whole default detector set on a simulated city with injected faults and events.

Three warm-up days, then a day in which the simulator injects, per sensor, about one spike, stuck
run, drift and dropout, and pollution episodes over neighbouring air stations; seeds 7, 3 and 21
(three different schedules, so that defaults are not fitted to one). The readings go through
`Evaluator` exactly as in the engine (event-time batches of one minute, devices checked on the event
clock), and the alerts it raises are scored against the simulator's ground truth, with the clean
signal (the same seed, no faults) to tell what the readings show (rules in `scenario_scoring`):

* an *alert* is a detector's alert event that leaves ok (or, for the spatial detector, changes
  between "sensor suspect" and "area event"); regulatory and index alerts are not fault alerts;
* an alert is *on* a fault if it is on one of the fault's sensors and one of the metrics it touches
  (any metric for a dropout; the device for the no-data detector);
* precision: alerts on a labelled fault or event from its start until an hour after its end, over
  all alerts after the warm-up;
* unobservable faults are counted apart and not scored for recall: a dropout inside an earlier one,
  a stuck run at a value the metric legitimately holds, a spike clipped by the physical range (or
  into the idle range, or followed by silence), a drift or episode that never deviates from the
  clean signal by more than 3 noise sd;
* recall: observable faults with an alert on them from their start until five sample intervals
  after their end (a dropout: the device going late or offline);
* delay: from the fault's *observable onset* to its first alert, in the sensor's sample intervals
  (0 if the alert comes first). The onset is the fault's start for a dropout, its first reading that
  differs from the clean signal for a spike or a stuck run (a stuck run's first frozen reading is a
  true one), and for a drift or an episode the first reading whose deviation from the clean signal
  exceeds 3 noise sd (the clean series' reading-to-reading noise: 1.4826 MAD of its first
  differences / sqrt 2).

Figures (printed with -s; seed 7 / 3 / 21): precision 0.964 / 0.965 / 0.951 (of 926 / 738 / 756
alerts); recall (median delay in intervals) dropout 1.00 (1.3) / 0.99 (1.2) / 1.00 (1.3), stuck 0.99
(3 / 3 / 2), spike 0.99 / 0.96 / 0.96 (0), drift 0.74 (26) / 0.71 (36) / 0.67 (60), episodes 1.0
(7.4 / none scheduled / 4.5). Unobservable: 19 / 18 / 20 spikes, 9 / 5 / 8 stuck runs, 4 / 8 / 13
drifts, 2 / 4 / 3 dropouts. The rain's coherent response is no longer a fault: the `anomaly` profile
damps deviations its water and forest neighbours share, `drift` leaves offsets two neighbours share,
and `spatial` holds a deviation until it has clearly ended (precision was 0.942 / 0.927 / 0.873 with
the same recall). Queues at dawn are no longer spikes: `spike` lets an occupancy jump pass when the
speed drops in the same minute (0.921 -> 0.941 on seed 21), and `traffic_zero` warns below a joint
probability of 1e-4, not 1e-3 (ordinary quiet minutes at night: -> 0.951). Seed 21's drift recall
fell from 0.68 to 0.67 with that: one drifting occupancy sensor had been "found" by a queue's spike
alert an hour before its drift showed. What is left: drifts of weather metrics (temperature,
humidity, vehicle speed) are compared with their own baseline only, which judges after eight days,
so most of the missed drifts are theirs, and a drift that builds up from zero is confirmed long
after it first exceeds 3 noise sd; a stuck run needs about three repeats at a 90-day false-alarm
budget; the remaining false alerts are mostly drifts against neighbours under local showers.
Inside episodes about 80 % of the spatial alerts say "area event"; elsewhere most say "sensor
suspect". The issue's target (0.95 / 0.95 / 2 intervals) is met for precision on every seed, for
dropouts and spikes, and for stuck recall; the assertions below hold what is reached on every
seed, so that it cannot slip back unnoticed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.config import Settings
from citywatch.evaluate import Evaluator
from citywatch.registry import Registry, SeriesIndex
from citywatch.simulator import FAULT_KINDS, Fault, Simulator
from scenario_scoring import (SPIKE_CONTEXT, noise_sd, onset_index, spike_clipped, spike_within_clean_range,
                              stuck_value_exempt)

REGISTRY = Path(__file__).resolve().parents[1] / "config" / "sensors" / "bienhoa.yaml"
NS = 10**9
START = 1_780_000_000.0  # a fixed day, so that the figures are reproducible
SEEDS = (7, 3, 21)
WARMUP_DAYS = 3.0  # an engine runs for days: the anomaly profile's ranges are young on its first day
FAULT_DETECTORS = {"stuck", "spike", "drift", "no_data", "anomaly", "seasonal", "traffic_zero", "spatial"}
PRECISION_GRACE_S = 3600.0
RECALL_GRACE_INTERVALS = 5


@dataclass
class Series:
    ts: np.ndarray  # epoch s
    value: np.ndarray
    clean: np.ndarray  # the same reading without faults
    sd: float  # noise sd of the clean series (scenario_scoring.noise_sd)


@dataclass
class CityDay:
    events: list[AlertEvent]
    faults: list[Fault]
    interval: dict[str, float]
    series: dict[tuple[str, str], Series]


@dataclass
class KindScore:
    observable: int = 0
    unobservable: int = 0
    delays: list[float] = field(default_factory=list)  # of the detected faults, from the observable onset

    @property
    def recall(self) -> float:
        return len(self.delays) / self.observable if self.observable else 1.0

    @property
    def median_delay(self) -> float:
        return float(np.median(self.delays)) if self.delays else float("nan")


def simulate_city_day(seed: int) -> CityDay:
    registry = Registry.load(REGISTRY)
    index = SeriesIndex(registry)
    index.add_registry()
    settings = Settings.model_validate({
        "detectors": {"write_scores": "none", "state_file": None},
        "indices": {"air": False, "fire": False, "traffic": False, "water": False},
        "forecasts": {"enabled": False},
    })
    evaluator = Evaluator(settings, index)
    sim = Simulator(registry, seed=seed, start=START, faults=list(FAULT_KINDS))
    clean_sim = Simulator(registry, seed=seed, start=START, faults=[])
    t0, t1 = START - WARMUP_DAYS * 86400.0, START + 86400.0
    cols, series = [], {}
    for sensor_id in sim.sims:
        ts, values = sim.readings(sensor_id, t0, t1)
        cts, clean = clean_sim.readings(sensor_id, t0, t1)
        where = np.searchsorted(cts, ts)
        for metric, v in values.items():
            sid = index.get(sensor_id, metric)
            ok = np.isfinite(v)
            if sid is None or not ok.any():
                continue
            c = clean[metric][where]
            series[(sensor_id, metric)] = Series(ts[ok] / 1000.0, v[ok], c[ok], noise_sd(clean[metric]))
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
    return CityDay(events, sim.faults(START, t1), interval, series)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def city_day(request) -> CityDay:
    return simulate_city_day(request.param)


def alerts(events: list[AlertEvent]) -> list[AlertEvent]:
    return [e for e in events if e.detector in FAULT_DETECTORS and e.ts_ns >= START * NS and e.level != "ok"
            and (e.previous_level == "ok" or e.detector == "spatial")]


def ns(t_s: float) -> int:
    """Epoch seconds as the simulator keeps them (ms resolution) to ns, exactly (t_s * NS is not)."""
    return int(round(t_s * 1000)) * 1_000_000


def _on_fault(a: AlertEvent, f: Fault) -> bool:
    """The alert is on a sensor and metric the fault touches (a dropout: any metric of the sensor;
    a device alert of the no-data detector: any fault of the device)."""
    return a.sensor in f.sensors and (f.kind == "dropout" or a.metric in f.metrics or a.detector == "no_data")


def onset(day: CityDay, f: Fault) -> float | None:
    """Event time (s) of the fault's observable onset; None if it is unobservable (module docstring)."""
    if f.kind == "dropout":
        earlier = [g for g in day.faults if g.kind == "dropout" and g.sensors == f.sensors and g.start < f.start < g.end]
        return None if earlier else f.start  # silent already: nothing new to see
    iv = day.interval[f.sensors[0]]
    first = []
    for sensor in f.sensors:
        for metric in f.metrics:
            x = day.series.get((sensor, metric))
            if x is None:
                continue
            inside = (x.ts >= f.start) & (x.ts < f.end)
            v, c = x.value[inside], x.clean[inside]
            if not len(v):
                continue
            if f.kind == "stuck" and stuck_value_exempt(metric, v[0]):
                continue
            if f.kind == "spike":
                comes_back = bool(((x.ts >= f.end) & (x.ts <= f.end + iv)).any())
                frozen = any(g.kind == "stuck" and g.metric == metric and g.sensors == f.sensors
                             and g.start <= f.start < g.end for g in day.faults)
                lo, hi = np.searchsorted(x.ts, [f.start, f.end])
                around = np.r_[x.clean[max(lo - SPIKE_CONTEXT, 0):lo], x.clean[hi:hi + SPIKE_CONTEXT]]
                if frozen or spike_clipped(metric, v, c, f.params["magnitude"], comes_back) \
                        or spike_within_clean_range(v, around):
                    continue
            # a spike or a stuck run shows in its first differing reading; a drift or an episode once
            # it exceeds K_NOISE noise sd
            i = onset_index(v, c, 0.0 if f.kind in ("spike", "stuck") else x.sd)
            if i is not None:
                first.append(float(x.ts[inside][i]))
    return min(first) if first else None


def score(day: CityDay) -> tuple[list[AlertEvent], list[AlertEvent], dict[str, KindScore]]:
    found = alerts(day.events)
    true = [a for a in found if any(_on_fault(a, f) and ns(f.start) <= a.ts_ns <= ns(f.end + PRECISION_GRACE_S)
                                    for f in day.faults)]
    kinds: dict[str, KindScore] = defaultdict(KindScore)
    for f in day.faults:
        ks = kinds[f.kind]
        t_on = onset(day, f)
        if t_on is None:
            ks.unobservable += 1
            continue
        ks.observable += 1
        iv = day.interval[f.sensors[0]]
        until = ns(f.end + RECALL_GRACE_INTERVALS * iv)
        hits = [a.ts_ns for a in found if _on_fault(a, f) and ns(f.start) <= a.ts_ns <= until
                and (f.kind != "dropout" or a.detector == "no_data")]
        if hits:
            ks.delays.append(max(0.0, (min(hits) - ns(t_on)) / NS / iv))
    return found, true, kinds


def test_fault_and_event_alerts_on_a_simulated_city(city_day):
    found, true, kinds = score(city_day)
    precision = len(true) / len(found)
    false = Counter((a.detector, a.metric, a.reason) for a in found if a not in true)
    print(f"\nalerts {len(found)} precision {precision:.3f} by detector {dict(Counter(a.detector for a in found))}")
    print(f"false alerts by (detector, metric, reason): {dict(false.most_common(12))}")
    for kind, ks in sorted(kinds.items()):
        print(f"{kind:8s} faults {ks.observable:4d} (+{ks.unobservable} unobservable) recall {ks.recall:.3f} "
              f"median delay {ks.median_delay:.1f} intervals from the observable onset")
    assert set(kinds) - {"episode"} == set(FAULT_KINDS) - {"episode"}  # seed 3 happens to schedule no episode
    assert min(ks.observable for kind, ks in kinds.items() if kind != "episode") >= 80
    # What is reached on every seed (module docstring); the 0.95 / 0.95 / 2 intervals is met
    # by precision, by dropouts, by stuck and spike recall and by spike delays.
    assert precision >= 0.95
    assert kinds["dropout"].recall >= 0.99 and kinds["dropout"].median_delay <= 2.0
    assert kinds["stuck"].recall >= 0.99 and kinds["stuck"].median_delay <= 3.0
    assert kinds["spike"].recall >= 0.95 and kinds["spike"].median_delay <= 1.0
    assert kinds["drift"].recall >= 0.67 and kinds["drift"].median_delay <= 60.0
    if "episode" in kinds:
        assert kinds["episode"].recall == 1.0 and kinds["episode"].median_delay <= 8.0


def test_an_area_event_and_a_suspect_sensor_reach_people_as_different_alerts(city_day):
    faults = city_day.faults
    spatial = [e for e in alerts(city_day.events) if e.detector == "spatial"]
    episodes = [f for f in faults if f.kind == "episode"]
    in_episode = [e for e in spatial if any(e.sensor in f.sensors and ns(f.start) <= e.ts_ns <= ns(f.end) for f in episodes)]
    lone = [e for e in spatial if not any(e.sensor in f.sensors and ns(f.start) <= e.ts_ns <= ns(f.end + 3600)
                                          for f in episodes)]
    reasons_in, reasons_lone = Counter(e.reason for e in in_episode), Counter(e.reason for e in lone)
    print(f"\nin episodes {dict(reasons_in)}, elsewhere {dict(reasons_lone)}")
    if episodes:
        assert reasons_in["area_event"] >= 0.75 * len(in_episode) > 0
    assert reasons_lone["sensor_suspect"] > reasons_lone["area_event"]
