"""Live water quality per station: VN_WQI (Decision 1460/QĐ-TCMT) and QCVN 08:2023 limits, in event time.

Two kinds of input arrive as readings of a water station:

* **probes** (the sonde: pH, temperature, dissolved oxygen, N-NH4, ...), every few minutes: averaged
  per hour in event time (`BucketMeans`); an hour's VN_WQI uses that hour's means;
* **lab results** of periodic grab samples (`LAB_METRICS`: BOD5, COD, nutrients, coliform, metals,
  pesticides), every few days to weeks, with the sampling time as event time: the station keeps its
  last `LAB_SLOTS` samples per parameter, and an hour uses, per parameter, the latest sample taken
  before the hour ended and at most `lab_max_age` old.

Each closed station-hour gets its VN_WQI with the decision's data rules (>= 3 of the 5 groups, group
IV with >= 3 parameters; DO as % saturation from the hour's water temperature), computed for all
stations closing that hour at once with `vn_wqi_index`. An hour that fails the rules writes nothing
and is counted (`refused`, per station). When a lab sample arrives for a station whose latest hour
already ended after the sampling time, that hour is computed again (the input changed): the point
has the same series and time, so it is overwritten. A change of class raises an alert (classes 1-2
ok, 3-4 warning, 5-6 critical; `detector` = `index`).

Output ``indices`` points: tags sensor, area, index=vn_wqi; fields value, category (1..6), label_vi,
label_en, dominant (the parameter with the lowest sub-index); time = start of the hour.

QCVN 08:2023/BTNMT: every probe hourly mean and every lab sample of a parameter with a limit is
judged against the limits of the station's class (A/B/C/D of Bảng 2, rivers and canals;
`indices.water_class`, per station `indices.water_class_by_station`) and the Bảng 1 health limits
that hold for every class. An exceedance is counted per local calendar year, written to
``exceedances`` (tags sensor, area, pollutant, averaging = ``1h`` or ``sample``, class; fields mean,
limit, exceeded, year_count), and entering or leaving exceedance raises an alert (`detector` =
``qcvn08``). Bảng 2 was recovered from a garbled copy (some cells inferred): `QCVN08_CLASS_LIMITS`
is a table to check against the signed text. Class D is "worse than C": it has no Bảng 2 limits
(the rendered DO >= 2.0 for D is doubtful and not applied). NO3 and PO4 are not judged (QCVN
08:2023 limits total N and total P, which the samples do not measure).

Options (section ``indices:`` of config/citywatch.yaml)::

    indices:
      water: true
      water_class: B                  # QCVN 08:2023 Bảng 2 class: A, B, C or D
      water_class_by_station: {}      # e.g. {wq-017: C}
      water_lab_max_age: 31d          # a lab result older than this no longer counts
      water_weighted: false           # formula 5 (group IV weight 2) where organic pollution matters
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from citywatch.alerts import AlertEvent
from citywatch.batch import ReadingBatch
from citywatch.detectors.base import Detector
from citywatch.detectors.bucket_means import BucketMeans, Buckets
from citywatch.detectors.indices import vn_wqi
from citywatch.exceedances import HOUR_NS, YearlyExceedances, local_year_of_ns
from citywatch.registry import SeriesIndex, remap_ids
from citywatch.sinks.line_protocol import encode_line

INDEX = "vn_wqi"
SOURCE = "QCVN 08:2023/BTNMT"
#: Parameters that come from lab analyses of periodic samples, not from the continuous probes.
LAB_METRICS = frozenset({
    "BOD5", "COD", "TOC", "TSS", "NO3", "NO2", "PO4", "coliform", "ecoli",
    "As", "Cd", "Pb", "Cr6", "Cu", "Zn", "Hg", "aldrin", "BHC", "dieldrin", "DDTs", "heptachlor",
})
LAB_SLOTS = 8  # samples kept per station and lab parameter
WINDOW = 4  # probe hours kept per station (the hours whose means may still be closing)
DEFAULT_LAB_MAX_AGE_S = 31 * 86400.0
CLASSES = ("A", "B", "C", "D")
_NONE = (None, None)

#: QCVN 08:2023 Bảng 2 (rivers, streams, canals), per class: (lower, upper) bound; None = no bound.
QCVN08_CLASS_LIMITS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "pH": {"A": (6.5, 8.5), "B": (6.0, 8.5), "C": (6.0, 8.5), "D": _NONE},
    "BOD5": {"A": (None, 4.0), "B": (None, 6.0), "C": (None, 10.0), "D": _NONE},
    "COD": {"A": (None, 10.0), "B": (None, 15.0), "C": (None, 20.0), "D": _NONE},
    "TOC": {"A": (None, 4.0), "B": (None, 6.0), "C": (None, 8.0), "D": _NONE},
    "TSS": {"A": (None, 25.0), "B": (None, 100.0), "C": _NONE, "D": _NONE},
    "dissolvedOxygen": {"A": (6.0, None), "B": (5.0, None), "C": (4.0, None), "D": _NONE},
    "coliform": {"A": (None, 1000.0), "B": (None, 5000.0), "C": (None, 7500.0), "D": _NONE},
}
#: QCVN 08:2023 Bảng 1: health limits for every class (mg/L; pesticides ug/L, as in VN_WQI).
QCVN08_HEALTH_LIMITS: dict[str, float] = {
    "NO2": 0.05, "NH4": 0.3, "As": 0.01, "Cd": 0.005, "Pb": 0.02, "Cr6": 0.01, "Cu": 0.1, "Zn": 0.5,
    "Hg": 0.001, "aldrin": 0.1, "BHC": 0.02, "dieldrin": 0.1, "DDTs": 1.0, "heptachlor": 0.2,
}


def qcvn08_bounds(parameter: str, water_class: str) -> tuple[float | None, float | None]:
    """(lower, upper) QCVN 08:2023 bound of a parameter for a class (Bảng 1 or Bảng 2)."""
    if parameter in QCVN08_HEALTH_LIMITS:
        return None, QCVN08_HEALTH_LIMITS[parameter]
    return QCVN08_CLASS_LIMITS.get(parameter, {}).get(water_class, _NONE)


def _level(category: int) -> str:
    return "ok" if category <= 2 else "warning" if category <= 4 else "critical"


class WaterQuality:
    def __init__(self, series: SeriesIndex, water_class: str = "B", class_by_station: Mapping[str, str] | None = None,
                 lab_max_age_s: float = DEFAULT_LAB_MAX_AGE_S, weighted: bool = False,
                 lab_metrics: Iterable[str] = LAB_METRICS) -> None:
        self.series = series
        self.weighted = weighted
        self.lab_max_age_ns = int(lab_max_age_s * 1e9)
        lab_metrics = frozenset(lab_metrics)
        judged = set(QCVN08_CLASS_LIMITS) | set(QCVN08_HEALTH_LIMITS)
        wanted = set(vn_wqi.PARAMETERS) | judged
        sensors = [s for s in series.registry.by_domain("water") if set(s.metrics) & wanted]
        self.stations = [s.id for s in sensors]
        self.areas = [s.area for s in sensors]
        self._station_of = {sid: i for i, sid in enumerate(self.stations)}
        metrics = {m for s in sensors for m in s.metrics if m in wanted}
        self.probes = tuple(sorted(m for m in metrics if m not in lab_metrics))
        self.labs = tuple(sorted(m for m in metrics if m in lab_metrics))
        self.judged = tuple(m for m in self.probes + self.labs if m in judged)
        classes = class_by_station or {}
        for sid, c in {"": water_class, **classes}.items():
            if c not in CLASSES:
                raise ValueError(f"QCVN 08 class of {sid or 'the stations'} must be one of {CLASSES}, got {c!r}")
        self.station_class = [classes.get(sid, water_class) for sid in self.stations]
        n = len(self.stations)
        bounds = [[qcvn08_bounds(p, c) for p in self.judged] for c in self.station_class]
        # shaped (stations, judged metrics) also when there are none of either (an air-only registry)
        self.low = np.array([[np.nan if lo is None else lo for lo, _ in row] for row in bounds],
                            dtype=float).reshape(n, len(self.judged))
        self.high = np.array([[np.nan if hi is None else hi for _, hi in row] for row in bounds],
                             dtype=float).reshape(n, len(self.judged))
        self.means = BucketMeans(series)
        self.hist = np.full((n, len(self.probes), WINDOW), np.nan)
        self.col_hour = np.full((n, WINDOW), -1, np.int64)
        self.lab_ts = np.full((n, len(self.labs), LAB_SLOTS), np.iinfo(np.int64).min, np.int64)
        self.lab_val = np.full((n, len(self.labs), LAB_SLOTS), np.nan)
        self.last_hour = np.full(n, -1, np.int64)  # newest hour computed (for lab recomputes and alerts)
        self.last_category = np.zeros(n, np.int8)
        self.refused = np.zeros(n, np.int64)  # station-hours that failed the data rules
        self.refused_hour = np.full(n, -1, np.int64)
        self.counts = YearlyExceedances(n, len(self.judged))
        self._series_station = np.zeros(0, np.int64)
        self._series_probe = np.zeros(0, np.int64)
        self._series_lab = np.zeros(0, np.int64)

    @property
    def refused_total(self) -> int:
        return int(self.refused.sum())

    def _lookup(self) -> None:
        grown = range(len(self._series_station), len(self.series))
        if not grown:
            return
        st, probe, lab = [], [], []
        for sid in grown:
            s = self._station_of.get(self.series.sensor_ids[sid], -1)
            m = self.series.metrics[sid]
            st.append(s)
            probe.append(self.probes.index(m) if s >= 0 and m in self.probes else -1)
            lab.append(self.labs.index(m) if s >= 0 and m in self.labs else -1)
        self._series_station = np.append(self._series_station, st)
        self._series_probe = np.append(self._series_probe, probe)
        self._series_lab = np.append(self._series_lab, lab)

    # -- the index stage interface -------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> tuple[list[str], list[AlertEvent]]:
        """Points and alerts for a (series, ts)-sorted batch."""
        self._lookup()
        lines: list[str] = []
        events: list[AlertEvent] = []
        if self.stations and len(batch):
            self._lab_samples(batch, lines, events)
        self._closed(self.means.update(batch), lines, events)
        return lines, events

    def process_quiet(self, event_time_ns: int) -> tuple[list[str], list[AlertEvent]]:
        """Close the hours of stations whose probes went quiet before `event_time_ns`."""
        self._lookup()
        lines: list[str] = []
        events: list[AlertEvent] = []
        self._closed(self.means.flush(event_time_ns), lines, events)
        return lines, events

    # -- lab samples ---------------------------------------------------------------------------
    def _lab_samples(self, batch: ReadingBatch, lines: list[str], events: list[AlertEvent]) -> None:
        rows = np.flatnonzero(Detector.in_order(batch) & np.isfinite(batch.value)
                              & (self._series_lab[batch.series] >= 0))
        if not len(rows):
            return
        rows = rows[np.argsort(batch.ts[rows], kind="stable")]
        st = self._series_station[batch.series[rows]]
        lab = self._series_lab[batch.series[rows]]
        ts, value = batch.ts[rows], batch.value[rows]
        for s, j, t, v in zip(st.tolist(), lab.tolist(), ts.tolist(), value.tolist()):
            slots = self.lab_ts[s, j]
            slot = int(np.argmin(slots))
            self.lab_ts[s, j, slot], self.lab_val[s, j, slot] = t, v
            metric = self.labs[j]
            if metric in self.judged:
                self._judge(np.array([s]), self.judged.index(metric), np.array([v]), np.array([t]), "sample",
                            lines, events)
        # A sample taken before the end of a station's newest computed hour changes that hour.
        redo = np.unique(st[(self.last_hour[st] >= 0) & (ts < (self.last_hour[st] + 1) * HOUR_NS)])
        for h in np.unique(self.last_hour[redo]).tolist():
            at = redo[self.last_hour[redo] == h]
            self._compute(at, h, lines, events)

    def _lab_values(self, st: np.ndarray, end_ns: int) -> dict[str, np.ndarray]:
        """Per lab parameter, the latest sample of each station taken before `end_ns`, within the max age."""
        ts = self.lab_ts[st]
        usable = (ts < end_ns) & (ts >= end_ns - self.lab_max_age_ns)
        latest = np.where(usable, ts, np.iinfo(np.int64).min).argmax(axis=2)[..., None]
        val = np.take_along_axis(self.lab_val[st], latest, axis=2)[..., 0]
        val = np.where(usable.any(axis=2), val, np.nan)
        return {p: val[:, j] for j, p in enumerate(self.labs)}

    # -- probe hours ---------------------------------------------------------------------------
    def _closed(self, buckets: Buckets, lines: list[str], events: list[AlertEvent]) -> None:
        self._lookup()
        if len(buckets) == 0 or not self.stations:
            return
        probe = self._series_probe[buckets.series]
        keep = probe >= 0
        st, probe = self._series_station[buckets.series[keep]], probe[keep]
        hour, mean = buckets.start_ns[keep] // HOUR_NS, buckets.mean[keep]
        for h in np.unique(hour).tolist():
            at = hour == h
            stations = self._insert(st[at], probe[at], h, mean[at])
            if not len(stations):
                continue
            for p in self.judged:
                if p in self.probes:
                    i = self.probes.index(p)
                    got = at & (probe == i)
                    self._judge(st[got], self.judged.index(p), mean[got], np.full(got.sum(), h * HOUR_NS), "1h",
                                lines, events)
            self._compute(stations, h, lines, events)

    def _insert(self, st: np.ndarray, probe: np.ndarray, h: int, mean: np.ndarray) -> np.ndarray:
        col = h % WINDOW
        held = self.col_hour[st, col]
        fresh = h >= held
        st, probe, mean, held = st[fresh], probe[fresh], mean[fresh], held[fresh]
        self.hist[st[h > held], :, col] = np.nan
        self.col_hour[st, col] = h
        self.hist[st, probe, col] = mean
        return np.unique(st)

    def _compute(self, st: np.ndarray, h: int, lines: list[str], events: list[AlertEvent]) -> None:
        col = h % WINDOW
        here = self.col_hour[st, col] == h
        sample = {p: np.where(here, self.hist[st, i, col], np.nan) for i, p in enumerate(self.probes)}
        sample.update(self._lab_values(st, (h + 1) * HOUR_NS))
        r = vn_wqi.vn_wqi_index(sample, weighted=self.weighted)
        value, category, dominant = r.value, r.category.astype(np.int8), r.dominant
        ok = category > 0
        # Refusals are counted once per station-hour, and taken back if the hour becomes valid.
        newly_refused = ~ok & (self.refused_hour[st] != h)
        self.refused[st[newly_refused]] += 1
        self.refused_hour[st[newly_refused]] = h
        healed = ok & (self.refused_hour[st] == h)
        self.refused[st[healed]] -= 1
        self.refused_hour[st[healed]] = -1
        for i in np.flatnonzero(ok).tolist():
            s, c = int(st[i]), vn_wqi.CATEGORIES[int(category[i]) - 1]
            lines.append(encode_line(
                "indices", {"sensor": self.stations[s], "area": self.areas[s], "index": INDEX},
                {"value": float(value[i]), "category": int(category[i]), "label_vi": c.label_vi, "label_en": c.label_en,
                 "dominant": str(dominant[i])}, h * HOUR_NS))
        current = h >= self.last_hour[st]
        self.last_hour[st[current]] = h
        s, cat, val = st[ok & current], category[ok & current], value[ok & current]
        prev = self.last_category[s]
        for j in np.flatnonzero((cat != prev) & (prev > 0)).tolist():
            new, old = vn_wqi.CATEGORIES[int(cat[j]) - 1], vn_wqi.CATEGORIES[int(prev[j]) - 1]
            events.append(AlertEvent(
                sensor=self.stations[s[j]], domain="water", area=self.areas[s[j]], metric=INDEX, detector="index",
                level=_level(new.number), previous_level=_level(old.number), value=float(val[j]),
                threshold=float(new.low), score=None, ts_ns=h * HOUR_NS,
                reason=f"VN_WQI class {old.number} -> {new.number}: {new.label_vi} / {new.label_en}"))
        self.last_category[s] = cat

    # -- QCVN 08 -------------------------------------------------------------------------------
    def _judge(self, st: np.ndarray, k: int, value: np.ndarray, ts_ns: np.ndarray, averaging: str,
               lines: list[str], events: list[AlertEvent]) -> None:
        if not len(st):
            return
        low, high = self.low[st, k], self.high[st, k]
        judged = ~(np.isnan(low) & np.isnan(high))
        st, value, ts_ns, low, high = st[judged], value[judged], ts_ns[judged], low[judged], high[judged]
        if not len(st):
            return
        below, above = value < low, value > high  # comparisons with NaN bounds are False
        over = below | above
        limit = np.where(below | np.isnan(high), low, high)
        year = local_year_of_ns(ts_ns)
        rec = self.counts.record(st, k, ts_ns, year, over)
        metric = self.judged[k]
        for i in np.flatnonzero(rec.fresh).tolist():
            s, count, cls = int(st[i]), int(rec.count[i]), self.station_class[int(st[i])]
            table = "Bảng 1" if metric in QCVN08_HEALTH_LIMITS else f"class {cls}"
            lines.append(encode_line(
                "exceedances", {"sensor": self.stations[s], "area": self.areas[s], "pollutant": metric,
                                "averaging": averaging, "class": cls},
                {"mean": float(value[i]), "limit": float(limit[i]), "exceeded": bool(over[i]), "year_count": count},
                int(ts_ns[i])))
            if rec.changed[i]:
                what = "below" if below[i] else "above" if above[i] else "back within"
                events.append(AlertEvent(
                    sensor=self.stations[s], domain="water", area=self.areas[s], metric=metric, detector="qcvn08",
                    level="critical" if over[i] else "ok", previous_level="ok" if over[i] else "critical",
                    value=float(value[i]), threshold=float(limit[i]), score=None, ts_ns=int(ts_ns[i]),
                    reason=(f"{'hourly mean' if averaging == '1h' else 'lab sample'} {value[i]:g} {what} the {SOURCE} "
                            f"{table} limit {limit[i]:g} ({count} exceedances in {int(year[i])})")))

    # -- restart -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        snap = {f"means.{k}": v for k, v in self.means.snapshot().items()}
        snap.update({f"counts.{k}": v for k, v in self.counts.snapshot().items()})
        snap.update({"hist": self.hist, "col_hour": self.col_hour, "lab_ts": self.lab_ts, "lab_val": self.lab_val,
                     "last_hour": self.last_hour, "last_category": self.last_category, "refused": self.refused,
                     "refused_hour": self.refused_hour, "__stations": np.asarray(self.stations, dtype=str),
                     "__probes": np.asarray(self.probes, dtype=str), "__labs": np.asarray(self.labs, dtype=str),
                     "__judged": np.asarray(self.judged, dtype=str)})
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.means.restore({k[len("means."):]: v for k, v in snap.items() if k.startswith("means.")})
        src, dst = remap_ids(snap["__stations"], self._station_of)
        for name in ("last_hour", "last_category", "refused", "refused_hour"):
            getattr(self, name)[dst] = snap[name][src]
        if tuple(snap["__probes"].tolist()) == self.probes:
            self.hist[dst], self.col_hour[dst] = snap["hist"][src], snap["col_hour"][src]
        if tuple(snap["__labs"].tolist()) == self.labs:
            self.lab_ts[dst], self.lab_val[dst] = snap["lab_ts"][src], snap["lab_val"][src]
        if tuple(snap["__judged"].tolist()) == self.judged:
            self.counts.restore({k[len("counts."):]: v for k, v in snap.items() if k.startswith("counts.")}, src, dst)
