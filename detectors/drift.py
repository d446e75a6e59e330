"""Calibration drift: a slowly growing, persistent offset of a series, against its neighbours and
against its own long baseline.

Per series (sensor x metric), in event time, two comparisons:

* **drift_neighbours** - what this sensor says beyond what its area says. Each series has a *level*
  (an EWMA over `level_window`). For each spatial neighbour j (same metric, same domain, from
  `NeighbourGraph`: the `neighbours` nearest within `neighbour_radius_km`) whose level is no older
  than `max_staleness`, the pair difference ``d_j`` = level - level_j (for metrics that cannot be
  negative, the log ratio ``log((level + c) / (level_j + c))`` with ``c = ratio_offset x`` the
  series' mean: stations differ by factors, a main road carries more traffic than a side street)
  is compared with that pair's long baseline (an EWMA over `baseline_window`, days). The *residual*
  is the median of ``d_j - baseline_j`` over at least `min_neighbours` neighbours: weather, rush
  hours and seasons cancel out, and it does not jump when a neighbour stops reporting. The
  residual's recent value (an EWMA over `window`) against its long baseline, in units of its
  long-run mean absolute deviation (the *spread*), is ``z``; ``|z| >= neighbour_z`` is a drift when
  the current residual is at least half as far off on the same side (a burst that has passed, but
  still lifts the recent average, is not), and the neighbours do not themselves stand out the other
  way (the median of their own latest ``z`` at half the limit or more, opposite: a pollution episode
  or a shower over the neighbours makes a sensor beside it look low, but the deviation is theirs),
  nor do `shared_neighbours` (2) of them stand out the same way (their own ``z`` at the limit or
  more, same sign; a pending drift ends while they do): a calibration drift is one device's,
  a shower over part of a cluster or the inside of an episode is the area's.
* **drift_baseline** - the series' daily level (an EWMA over `own_window`, so the daily cycle
  cancels out) against its own long baseline (`own_baseline_window`) and spread (of the daily level), judged after
  `own_min_history`; ``|z| >= own_z`` is a drift. Slow (calibration drifts over days and weeks);
  the check for sensors without neighbours.

A drift is persistent: ``|z|`` must stay at or above its warning limit for `persist` in event time
before the level turns WARNING (reason ``pending`` meanwhile); CRITICAL at ``critical_z``. Once on,
it stays on until both ``|z|`` (or the current residual's) fall below half their limits (hysteresis). Score:
``max(|z|) / critical_z`` clipped to [0, 1]. A short burst that comes and goes within `persist`, or
an episode the neighbours share, is not a drift. While a series drifts (``|z|`` above `freeze_z`)
its baselines do not learn, and its spread learns only from deviations clipped at `freeze_z`
spreads, so a drift does not become the new normal. Nothing is judged before `min_history` of data
(readings x interval; level -1). Metrics in `neighbour_exclude` (vehicle speed depends on the road)
are compared with their own baseline only; metrics in `exclude` are not judged.

Output `threshold`: the warning limit of the comparison that decided (`neighbour_z` or `own_z`).
Not evaluated and leaving the state untouched: LATE or DUPLICATE readings, rows in `skip`, NaN,
infinite or absurd (beyond 1e150) values.

A snapshot also records which neighbour each slot held; on restore, a pair baseline is kept only if
its slot still holds the same neighbour (the registry may have changed).

State per series: 13 numbers plus one pair baseline per neighbour slot (with the default 6
neighbours, 152 bytes). The pair differences read the neighbours' levels as they stood at the start
of the batch (a batch is a fraction of a second of arrivals).

Sample configuration: see `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from citywatch.batch import ReadingBatch, last_index_where
from citywatch.config import Duration, StrictModel
from citywatch.detectors.base import (
    LEVEL_CRITICAL,
    LEVEL_NOT_EVALUATED,
    LEVEL_OK,
    LEVEL_WARNING,
    Detector,
    DetectorOutput,
)
from citywatch.detectors.neighbours import NeighbourConfig, NeighbourGraph
from citywatch.detectors.stuck import (
    DEFAULT_INTERVAL_S,
    count_in_run,
    grow_param,
    previous_in_run,
    segmented_linear_scan,
    require_sorted,
    series_intervals,
    usable,
)
from citywatch.registry import SeriesIndex

__all__ = ["DriftDetector", "DriftConfig", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  drift:
    enabled: true
    level_window: 10m             # a series' current level (what its neighbours compare with)
    window: 1h                    # the recent offset
    baseline_window: 2d           # the long baseline and spread
    min_history: 12h              # data (readings x interval) before drift_neighbours is judged
    neighbour_z: 6                # drift_neighbours: recent residual this many spreads off its baseline
    own_z: 6                      # drift_baseline: daily level this many spreads off the own baseline
    own_window: 1d                # drift_baseline: the daily level ...
    own_baseline_window: 14d      # ... against the long baseline
    own_min_history: 3d           # drift_baseline is judged after this much data
    ratio_offset: 0.2             # non-negative metrics compare as log((x + c) / (median + c)), c = 0.2 x own mean
    critical_z: 12                # critical (either comparison)
    persist: 20m                  # must hold this long in event time
    freeze_z: 3                   # baselines stop learning beyond this
    neighbours: 6                 # up to this many nearest same-metric neighbours ...
    neighbour_radius_km: 10       # ... within this distance (null: any distance)
    min_neighbours: 3             # fewer usable neighbours: only the own baseline is judged
    shared_neighbours: 2          # this many neighbours off the same way (by neighbour_z): the area's, not a drift
    max_staleness: 30m            # a neighbour level older than this is not used
    exclude: [precipitation]      # metrics not judged
    neighbour_exclude: [averageVehicleSpeed]  # metrics not compared with neighbours (speed depends on the road;
                                  # the engine also leaves out the weather metrics, local to a station)
"""

REASON_OK = 0
REASON_BASELINE = 1
REASON_NEIGHBOURS = 2
REASON_PENDING = 3


class DriftConfig(StrictModel):
    enabled: bool = True
    level_window: Duration = 600.0
    window: Duration = 3600.0
    baseline_window: Duration = 2 * 86400.0
    min_history: Duration = 12 * 3600.0
    neighbour_z: float = Field(default=6.0, gt=0)
    own_z: float = Field(default=6.0, gt=0)
    own_window: Duration = 86400.0
    own_baseline_window: Duration = 14 * 86400.0
    own_min_history: Duration = 3 * 86400.0
    ratio_offset: float = Field(default=0.2, ge=0)
    critical_z: float = Field(default=12.0, gt=0)
    persist: Duration = 1200.0
    freeze_z: float = Field(default=3.0, gt=0)
    neighbours: int = Field(default=6, ge=1, le=64)
    neighbour_radius_km: float | None = Field(default=10.0, gt=0)
    min_neighbours: int = Field(default=3, ge=1)
    shared_neighbours: int = Field(default=2, ge=1)
    max_staleness: Duration = 1800.0
    exclude: list[str] = Field(default_factory=lambda: ["precipitation"])
    neighbour_exclude: list[str] = Field(default_factory=lambda: ["averageVehicleSpeed"])


def _alpha(dt_s: np.ndarray, tau_s: float | np.ndarray, n: np.ndarray, use: np.ndarray) -> np.ndarray:
    """EWMA weight of a reading `dt_s` after the previous one; a running mean over the first readings."""
    a = -np.expm1(-np.maximum(dt_s, 0.0) / tau_s)
    return np.where(use, np.maximum(a, 1.0 / np.maximum(n, 1)), 0.0)


class DriftDetector(Detector):
    """Slow persistent offsets against the own baseline and the neighbours; see the module docstring.

    Examples
    --------
    Four air stations a kilometre apart measure the same city NO2 (a daily cycle), every 10 minutes;
    after two days one of them starts reading high, 0.5 ug/m3 more every hour:

    >>> import numpy as np
    >>> from citywatch.batch import ReadingBatch
    >>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
    >>> temp = {"no2": MetricSpec(unit="ug/m3", min=0, max=2000)}
    >>> sensors = [Sensor(id=f"aq-{i}", domain="air", area="Tân Phong", lat=10.95 + 0.01 * i, lon=106.84,
    ...                   interval=600, metrics=temp) for i in range(4)]
    >>> series = SeriesIndex(Registry({s.id: s for s in sensors}))
    >>> series.add_registry()
    >>> detector = DriftDetector(series, DriftConfig(min_history="16h"))
    >>> t = np.arange(0, 3 * 86400, 600)
    >>> values = 29 + 3.5 * np.sin(2 * np.pi * t / 86400) + np.random.default_rng(1).normal(0, 0.1, (4, len(t)))
    >>> values[0] += np.clip((t - 2 * 86400) / 3600, 0, None) * 0.5        # the drift, from hour 48
    >>> levels, reasons = [], []
    >>> for i in range(len(t)):                                             # one batch per 10 minutes
    ...     out = detector.process(ReadingBatch.from_columns([0, 1, 2, 3], [t[i] * 10**9] * 4, values[:, i]))
    ...     levels.append(int(out.level[0]))
    ...     reasons.append(detector.reason_names(out.reason[:1])[0])
    >>> first_alarm_hour = levels.index(1) / 6
    >>> 48 < first_alarm_hour < 51
    True
    >>> reasons[levels.index(1)], max(levels), max(levels[:48 * 6])                     # no alarm before
    ('drift_neighbours', 2, 0)

    Six stations, of which three read high together, in step, from hour 48 (a local event over part
    of the group): each has two neighbours standing out the same way, so none drifts; judged alone
    (``shared_neighbours`` above the group's size) all three would:

    >>> sensors = [Sensor(id=f"aq-{i}", domain="air", area="Tân Phong", lat=10.95 + 0.01 * i, lon=106.84,
    ...                   interval=600, metrics=temp) for i in range(6)]
    >>> series = SeriesIndex(Registry({s.id: s for s in sensors}))
    >>> series.add_registry()
    >>> values = 29 + 3.5 * np.sin(2 * np.pi * t / 86400) + np.random.default_rng(1).normal(0, 0.1, (6, len(t)))
    >>> values[1:3] = values[0]                                           # three stations in the same air ...
    >>> values[:3] += np.clip((t - 2 * 86400) / 3600, 0, None) * 0.5     # ... that rises from hour 48
    >>> def alarms(config):
    ...     det = DriftDetector(series, config)
    ...     return sum(int((det.process(ReadingBatch.from_columns(list(range(6)), [ti * 10**9] * 6,
    ...                                                           values[:, i])).level > 0).sum())
    ...                for i, ti in enumerate(t))
    >>> alarms(DriftConfig(min_history="16h")), alarms(DriftConfig(min_history="16h", shared_neighbours=6)) > 0
    (0, True)
    """

    name = "drift"
    reasons = ("ok", "drift_baseline", "drift_neighbours", "pending")
    state_fields = {
        "last_ts": (np.int64, 0),
        "n": (np.int64, 0),
        "level": (np.float64, np.nan),  # current level (EWMA over level_window)
        "resid_recent": (np.float64, np.nan),
        "resid_base": (np.float64, np.nan),
        "resid_spread": (np.float64, np.nan),
        "n_resid": (np.int64, 0),
        "own_recent": (np.float64, np.nan),
        "own_base": (np.float64, np.nan),
        "own_spread": (np.float64, np.nan),
        "on": (np.bool_, False),  # the drift condition holds ...
        "since": (np.int64, 0),  # ... since this event time
        "z_nb": (np.float64, 0.0),  # the latest neighbour z (what the neighbours read of this series)
    }

    def __init__(self, series: SeriesIndex, config: DriftConfig | None = None,
                 graph: NeighbourGraph | None = None) -> None:
        self.config = config or DriftConfig()
        self.graph = graph or NeighbourGraph(series, NeighbourConfig(radius_km=self.config.neighbour_radius_km,
                                                                     k=self.config.neighbours))
        self._interval = np.zeros(0)
        self._judged = np.zeros(0, bool)
        self._ratio = np.zeros(0, bool)
        k = self.graph.k
        self.state_fields = {**type(self).state_fields,
                             **{f"pair{j}": (np.float64, np.nan) for j in range(k)}}
        self._graph_rows = self.graph.index.copy()
        super().__init__(series)

    def _on_new_series(self, start: int, stop: int) -> None:
        cap = self._capacity
        self._interval = grow_param(self._interval, cap, DEFAULT_INTERVAL_S)
        self._judged = grow_param(self._judged, cap, False)
        self._ratio = grow_param(self._ratio, cap, False)
        self._ratio[start:stop] = self.series.physical_min[start:stop] >= 0
        self._compare_nb = grow_param(getattr(self, "_compare_nb", np.zeros(0, bool)), cap, False)
        for sid in range(start, stop):
            self._compare_nb[sid] = self.series.metrics[sid] not in self.config.neighbour_exclude
        self._interval[start:stop] = series_intervals(self.series, start, stop)
        for sid in range(start, stop):
            self._judged[sid] = self.series.metrics[sid] not in self.config.exclude
        if self.graph.update():
            # Pair baselines belong to (series, neighbour): forget those whose neighbour changed.
            old, new = self._graph_rows, self.graph.index
            rows = min(len(old), len(new))
            changed = old[:rows] != new[:rows]
            for j in range(self.graph.k):
                self.state[f"pair{j}"][:rows][changed[:, j]] = np.nan
            self._graph_rows = new.copy()

    def _neighbour_keys(self) -> np.ndarray:
        """The (sensor, metric) of each neighbour slot, as "sensor/metric" strings ("" where empty)."""
        keys = np.asarray([f"{a}/{m}" for a, m in zip(self.series.sensor_ids, self.series.metrics)] + [""], dtype=str)
        index = self.graph.index[: len(self.series)]
        return keys[np.where(index >= 0, index, len(keys) - 1)]

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = super().snapshot()
        self.graph.update()
        snap["__neighbours"] = self._neighbour_keys()
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Load a snapshot; a pair baseline is kept only if its slot still holds the same neighbour."""
        super().restore(snap)
        saved = snap.get("__neighbours")
        src, dst = self.series.remap(snap)
        now = self._neighbour_keys()
        for j in range(self.graph.k):
            same = np.zeros(len(dst), bool)
            if saved is not None and j < saved.shape[1]:
                same = saved[src, j] == now[dst, j]
            self.state[f"pair{j}"][dst[~same]] = np.nan

    def neighbour_residual(self, sid: np.ndarray, ts: np.ndarray, level: np.ndarray, offset: np.ndarray,
                           dt: np.ndarray, n: np.ndarray, first: np.ndarray,
                           frozen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's residual against its neighbours: the median over fresh neighbours j of
        ``d_j - baseline_j``, where ``d_j`` compares this series' level with neighbour j's (log ratio or
        difference) and ``baseline_j`` is that pair's long EWMA. Pair baselines make the residual
        indifferent to which neighbours happen to be reporting. Returns (residual, new pair baselines);
        NaN residual with fewer than `min_neighbours` fresh neighbours."""
        cfg = self.config
        st = self.state
        k = self.graph.k
        nb = self.graph.index[sid]
        valid = nb >= 0
        nbc = np.where(valid, nb, 0)
        lv = st["level"][nbc]
        fresh = valid & np.isfinite(lv) & (ts[:, None] - st["last_ts"][nbc] <= int(cfg.max_staleness * 1e9))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self._ratio[sid][:, None]
            c = offset[:, None]
            d = np.where(ratio, np.log((level[:, None] + c) / (lv + c)), level[:, None] - lv)
        fresh &= np.isfinite(d)
        base = np.empty_like(d)
        for j in range(k):
            b0 = st[f"pair{j}"][sid]
            use = fresh[:, j] & ~frozen
            a = _alpha(dt, cfg.baseline_window, n, use)
            start = use & np.isnan(b0) & (count_in_run(use, first) == 1)
            a = np.where(start, 1.0, a)
            base[:, j] = segmented_linear_scan(1.0 - a, a * np.where(use, d[:, j], 0.0), first, np.nan_to_num(b0))
            base[:, j] = np.where(np.isnan(b0) & (count_in_run(use, first) == 0), np.nan, base[:, j])
        dev = np.where(fresh, d - base, np.nan)
        enough = (np.isfinite(dev).sum(axis=1) >= cfg.min_neighbours) & self._compare_nb[sid]
        out = np.full(len(sid), np.nan)
        if enough.any():
            out[enough] = np.nanmedian(dev[enough], axis=1)
        return out, base

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        out = DetectorOutput.not_evaluated(n)
        require_sorted(batch)
        keep = np.flatnonzero(self.in_order(batch) & usable(batch.value) & self._judged[batch.series])
        if len(keep) == 0:
            return out
        b = batch.take(keep) if len(keep) < n else batch
        cfg = self.config
        st = self.state
        sid, ts, x = b.series, b.ts, b.value
        m = len(b)
        first, last = b.is_first, b.is_last
        gs = b.group_start
        ones = np.ones(m, bool)

        prev_ts = previous_in_run(ts, first, st["last_ts"][sid])
        seen = st["n"][sid] > 0
        dt = np.where(~first | seen, (ts - prev_ts) / 1e9, np.inf)
        n_i = st["n"][sid] + count_in_run(ones, first)

        level0 = st["level"][sid]
        a_level = _alpha(dt, cfg.level_window, n_i, ones)
        level = segmented_linear_scan(1.0 - a_level, a_level * x, first, np.nan_to_num(level0))

        # Own comparison: the daily level against the long baseline (diurnal cycles cancel out).
        interval = self._interval[sid]
        ready_own = n_i * interval >= cfg.own_min_history
        own = self._compare(x, dt, n_i, first, sid, "own", cfg.own_window, cfg.own_baseline_window, ready_own,
                            spread_of_recent=True)
        # Neighbour comparison (rows with enough neighbours only). Non-negative quantities compare as
        # log ratios: stations differ by factors (a main road carries more traffic than a side street).
        offset = cfg.ratio_offset * np.abs(own["base"]) + 1e-9
        resid, pair_base = self.neighbour_residual(sid, ts, level, offset, dt, n_i, first, st["on"][sid])
        has_nb = np.isfinite(resid)
        n_r = st["n_resid"][sid] + count_in_run(has_nb, first)
        ready_nb = has_nb & (n_r * interval >= cfg.min_history)
        nbr = self._compare(np.where(has_nb, resid, 0.0), dt, n_r, first, sid, "resid", cfg.window,
                            cfg.baseline_window, ready_nb, use=has_nb)

        z_own = np.where(ready_own, own["z"], 0.0)
        z_nb = np.where(ready_nb, nbr["z"], 0.0)
        # A drift is there now, not only in the recent average: a burst that has passed does not count.
        hit_nb = (np.abs(z_nb) >= cfg.neighbour_z) & (np.abs(nbr["z_now"]) >= cfg.neighbour_z / 2) \
            & (np.sign(nbr["z_now"]) == np.sign(z_nb))
        # If the neighbours themselves stand out the other way (a pollution episode over them, a shower),
        # the difference is theirs, not this sensor's.
        hit_nb &= ~self._neighbours_deviate(sid, ts, -np.sign(z_nb))
        # A calibration drift is one device's: if a neighbour stands out the same way against its own
        # neighbours (a shower over two stations of a cluster, the inside of an episode), it is the area's.
        shared = self._neighbours_deviate(sid, ts, np.sign(z_nb), shared=True)
        hit_nb &= ~shared
        hit_own = np.abs(z_own) >= cfg.own_z
        # Hysteresis: a drift that is on stays on until both z fall below half their limits, so a
        # passing transient (a common step the neighbours' levels catch up with a reading later) does
        # not restart it.
        on_evt = hit_nb | hit_own
        off_evt = ~on_evt & (np.abs(z_own) < cfg.own_z / 2) \
            & ((np.abs(z_nb) < cfg.neighbour_z / 2)
               | (np.abs(np.where(ready_nb, nbr["z_now"], 0.0)) < cfg.neighbour_z / 2))
        at = last_index_where(on_evt | off_evt, gs)
        cond = np.where(at >= 0, on_evt[np.maximum(at, 0)], st["on"][sid])
        # While the neighbours share it, a pending drift is none of this sensor's (one already reported
        # stays, so that a deviation at the bar does not come and go).
        reported = st["on"][sid] & (ts - st["since"][sid] >= int(cfg.persist * 1e9))
        cond &= ~(shared & ~hit_own & ~reported)
        hit_nb = hit_nb | (cond & ~hit_own & (np.abs(z_nb) / cfg.neighbour_z >= np.abs(z_own) / cfg.own_z))

        # Persistence ("for" in event time), carried across batches.
        before = previous_in_run(cond, first, st["on"][sid])
        turned_on = last_index_where(cond & ~before, gs)
        since = np.where(turned_on >= 0, ts[np.maximum(turned_on, 0)], st["since"][sid])
        effective = cond & (ts - since >= int(cfg.persist * 1e9))

        score = np.clip(np.maximum(np.abs(z_nb), np.abs(z_own)) / cfg.critical_z, 0.0, 1.0)
        critical = effective & ((np.abs(z_nb) >= cfg.critical_z) | (np.abs(z_own) >= cfg.critical_z))
        level_out = np.where(critical, LEVEL_CRITICAL, np.where(effective, LEVEL_WARNING, LEVEL_OK)).astype(np.int8)
        by_nb = hit_nb & (np.abs(z_nb) / cfg.neighbour_z >= np.abs(z_own) / cfg.own_z)
        reason = np.where(effective, np.where(by_nb, REASON_NEIGHBOURS, REASON_BASELINE),
                          np.where(cond, REASON_PENDING, REASON_OK)).astype(np.int16)
        threshold = np.where(by_nb | (~hit_own & ready_nb), cfg.neighbour_z, cfg.own_z)
        judged = ready_own | ready_nb
        level_out[~judged] = LEVEL_NOT_EVALUATED
        score[~judged] = np.nan
        threshold = threshold.astype(np.float64)
        threshold[~judged] = np.nan
        reason[~judged] = REASON_OK

        ls = sid[last]
        st["last_ts"][ls] = ts[last]
        st["n"][ls] = n_i[last]
        st["level"][ls] = level[last]
        st["n_resid"][ls] = n_r[last]
        for prefix, res in (("own", own), ("resid", nbr)):
            for key in ("recent", "base", "spread"):
                st[f"{prefix}_{key}"][ls] = res[key][last]
        for j in range(self.graph.k):
            st[f"pair{j}"][ls] = pair_base[last, j]
        st["z_nb"][ls] = z_nb[last]
        st["on"][ls] = cond[last]
        st["since"][ls] = np.where(cond[last], since[last], 0)

        out.score[keep] = score
        out.level[keep] = level_out
        out.reason[keep] = reason
        out.threshold[keep] = threshold
        return out

    def _neighbours_deviate(self, sid: np.ndarray, ts: np.ndarray, direction: np.ndarray,
                            shared: bool = False) -> np.ndarray:
        """Rows whose fresh neighbours' latest z, by median, is at least half the limit in `direction`
        (with `shared`: rows where at least `shared_neighbours` of them reach the limit itself)."""
        cfg = self.config
        st = self.state
        nb = self.graph.index[sid]
        valid = nb >= 0
        nbc = np.where(valid, nb, 0)
        fresh = valid & (ts[:, None] - st["last_ts"][nbc] <= int(cfg.max_staleness * 1e9))
        z = np.where(fresh, st["z_nb"][nbc], np.nan)
        out = np.zeros(len(sid), bool)
        if shared:
            with np.errstate(invalid="ignore"):
                agree = (z * direction[:, None] >= cfg.neighbour_z).sum(axis=1)
            return (direction != 0) & (agree >= cfg.shared_neighbours)
        some = fresh.any(axis=1)
        if some.any():
            med = np.nanmedian(z[some], axis=1)
            out[some] = med * direction[some] >= cfg.neighbour_z / 2
        return out

    def _compare(self, values: np.ndarray, dt: np.ndarray, n: np.ndarray, first: np.ndarray, sid: np.ndarray,
                 prefix: str, window: float, baseline_window: float, ready: np.ndarray,
                 use: np.ndarray | None = None, spread_of_recent: bool = False) -> dict[str, np.ndarray]:
        """Recent EWMA, long baseline and spread (mean |value - baseline|, or mean |recent - baseline|) of
        `values`, and the z of recent (and of the value itself) vs baseline."""
        cfg = self.config
        st = self.state
        use = np.ones(len(values), bool) if use is None else use
        recent0 = st[f"{prefix}_recent"][sid]
        base0 = st[f"{prefix}_base"][sid]
        spread0 = st[f"{prefix}_spread"][sid]
        a_recent = _alpha(dt, window, n, use)
        recent = segmented_linear_scan(1.0 - a_recent, a_recent * values, first, np.nan_to_num(recent0))
        # Baselines learn only while the series is not drifting (judged with the baseline at batch start).
        with np.errstate(invalid="ignore", divide="ignore"):
            z0 = np.abs(recent - base0) / spread0
        learn = use & ~(ready & (spread0 > 0) & (z0 > cfg.freeze_z))
        a_base = _alpha(dt, baseline_window, n, learn)
        base = segmented_linear_scan(1.0 - a_base, a_base * values, first, np.nan_to_num(base0))
        # The spread always learns (a frozen spread could never recover from an early underestimate), but
        # once judged, from deviations clipped at freeze_z spreads, so that a drift hardly widens it.
        a_spread = _alpha(dt, baseline_window, n, use)
        dev = np.abs((recent if spread_of_recent else values) - base)
        dev = np.where(ready & (spread0 > 0), np.minimum(dev, cfg.freeze_z * np.nan_to_num(spread0)), dev)
        spread = segmented_linear_scan(1.0 - a_spread, a_spread * dev, first, np.nan_to_num(spread0))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(spread > 0, (recent - base) / spread, 0.0)
            z_now = np.where(spread > 0, (values - base) / spread, 0.0)
        return {"recent": recent, "base": base, "spread": spread, "z": z, "z_now": z_now}
