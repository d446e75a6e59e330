"""The forecaster contract: online hourly updates for many series at once, forecasts with intervals.

A forecaster is a `SeriesState`: its state is a set of arrays with one row per series (2-D fields
hold seasonal profiles, lag vectors, the recent forecasts and their errors). `update(ids, hours,
values)` gives it one hourly value per listed series (hour number since the epoch, in event time),
and `forecast(ids)` returns, for hours ``h = 1..horizon`` after each series' latest hour, the
point forecast (the median) and the bounds of the central prediction interval of `level`, all of
shape ``(len(ids), horizon)``. Both are array operations over every listed series: no Python loop
per series.

Hours, per series:

* a value for a later hour than the last one advances the series (missing hours in between are a
  gap: the model carries its state across it, see each model);
* a value for the *same* hour as the last one is a revision (an hourly index computed again as its
  last pollutant closed): the state of before that hour is put back and the new value applied, so
  revising a value never counts it twice;
* a value for an earlier hour, or a NaN, is ignored (and counted in `ignored`).

Prediction intervals are empirical: each forecast issued is kept for `horizon` hours; when the hour
it was for arrives, its error goes into a ring of the last `error_window` errors of that series and
horizon. The bounds are the point forecast plus the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles of those errors (with the finite-sample correction of conformal prediction), so they
widen with the horizon exactly as much as the errors do, and need no distributional assumption; until a horizon has `min_errors` errors its bounds are NaN.
`exceedance_probability` uses the same errors: the share of them that would put the value at or
beyond a limit.

Series are named by (sensor, metric) keys; the forecasters of the engine use `SeriesKeys`, a
growable index of such keys that snapshots and restores like the registry's series index.

>>> import numpy as np
>>> from citywatch.detectors.forecast.seasonal_naive import SeasonalNaive
>>> keys = SeriesKeys([("st-1", "vn_aqi"), ("st-2", "vn_aqi")])
>>> f = SeasonalNaive(keys, horizon=3, period=24)
>>> hours = np.arange(48)
>>> for t in hours:
...     f.update(np.array([0, 1]), np.array([t, t]), np.array([t % 24, 100.0 + t % 24]))
>>> median, lower, upper = f.forecast(np.array([0, 1]))
>>> median.tolist()
[[0.0, 1.0, 2.0], [100.0, 101.0, 102.0]]
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from citywatch.detectors.base import SeriesState
from citywatch.registry import KeyedSeries

__all__ = ["Forecaster", "SeriesKeys", "empirical_quantiles"]

NO_HOUR = -(1 << 62)


class SeriesKeys(KeyedSeries):
    """Dense ids for (sensor, metric) keys: the part of `SeriesIndex` that `SeriesState` uses."""

    def __init__(self, keys: list[tuple[str, str]] | None = None) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self.sensor_ids: list[str] = []
        self.metrics: list[str] = []
        for key in keys or []:
            self.add(*key)

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def add(self, sensor: str, metric: str) -> int:
        sid = self._ids.get((sensor, metric))
        if sid is None:
            sid = self._ids[(sensor, metric)] = len(self.sensor_ids)
            self.sensor_ids.append(sensor)
            self.metrics.append(metric)
        return sid

    def get(self, sensor: str, metric: str) -> int | None:
        return self._ids.get((sensor, metric))



def empirical_quantiles(errors: np.ndarray, probs: tuple[float, ...], min_count: int) -> list[np.ndarray]:
    """Quantiles (linear interpolation) over the last axis, ignoring NaN; NaN where fewer than `min_count`.

    With the finite-sample correction of conformal prediction: from n errors, the quantile p is read
    at ``(p (n + 1) - 1/2 ± 1/2) / n`` (away from the median), so that a new error falls between
    the lower and upper quantile with the nominal probability rather than slightly less.
    """
    ordered = np.sort(errors, axis=-1)  # NaN sort last
    n = np.isfinite(ordered).sum(axis=-1)
    nf = np.maximum(n, 1).astype(np.float64)
    out = []
    for p in probs:
        p_eff = np.clip(p * (nf + 1) / nf if p > 0.5 else (p * (nf + 1) - 1) / nf, 0.0, 1.0) if p != 0.5 \
            else np.full(nf.shape, 0.5)
        pos = p_eff * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        frac = pos - lo
        a = np.take_along_axis(ordered, lo[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(ordered, hi[..., None], axis=-1)[..., 0]
        out.append(np.where(n >= max(min_count, 1), a + frac * (b - a), np.nan))
    return out


class Forecaster(SeriesState):
    """Base of the forecasters: bookkeeping of hours, revisions, issued forecasts and their errors.

    Subclasses declare `model_fields` (like `state_fields`) and implement `_learn` and `_predict`.
    """

    name: ClassVar[str] = "forecaster"
    model_fields: ClassVar[dict[str, tuple]] = {}

    def __init__(self, series, horizon: int = 24, level: float = 0.8, error_window: int = 168,
                 min_errors: int = 24) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1 hour, got {horizon}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval level must be between 0 and 1, got {level}")
        if error_window < 2 or min_errors < 1:
            raise ValueError("error_window must be >= 2 and min_errors >= 1")
        self.horizon = int(horizon)
        self.level = float(level)
        self.error_window = int(error_window)
        self.min_errors = int(min_errors)
        H, K = self.horizon, self.error_window
        self.state_fields = {
            **self.model_fields,
            "hour": (np.int64, NO_HOUR),  # latest hour learnt
            "issued": (np.float64, np.nan, H * H),  # forecasts issued at hour t, in row slot t % H
            "issued_hour": (np.int64, NO_HOUR, H),
            "errors": (np.float32, np.nan, H * K),  # per horizon, a ring of the last K errors (float32: memory)
            "n_errors": (np.int64, 0, H),
        }
        super().__init__(series)
        self.before: dict[str, np.ndarray] = {k: v.copy() for k, v in self.state.items()}
        self.ignored = 0

    def _grow(self) -> None:
        capacity = self._capacity
        super()._grow()
        if self._capacity != capacity:
            for k, v in self.state.items():
                grown = v.copy()
                grown[:capacity] = self.before[k][:capacity]
                self.before[k] = grown

    # -- learning --------------------------------------------------------------------------------
    def update(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray) -> None:
        """One hourly value per listed series (ids unique): learn it, then issue the next forecasts."""
        self._grow()
        ids = np.asarray(ids, dtype=np.int64)
        hours = np.asarray(hours, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("update() takes at most one value per series; call it once per hour")
        last = self.state["hour"][ids]
        revise = (hours == last) & np.isfinite(values)
        fresh = (hours > last) & np.isfinite(values)
        self.ignored += int(len(ids) - revise.sum() - fresh.sum())
        for k, v in self.state.items():
            b = self.before[k]
            v[ids[revise]] = b[ids[revise]]
            b[ids[fresh]] = v[ids[fresh]]
        keep = revise | fresh
        ids, hours, values = ids[keep], hours[keep], values[keep]
        if not len(ids):
            return
        last = self.state["hour"][ids]
        gap = np.where(last == NO_HOUR, 0, hours - last - 1)  # missing hours before this one
        self._record_errors(ids, hours, values)
        self._learn(ids, hours, values, gap)
        self.state["hour"][ids] = hours
        self._issue(ids, hours)

    def forecasts_for(self, ids: np.ndarray, hours: np.ndarray, state: dict[str, np.ndarray] | None = None
                      ) -> np.ndarray:
        """(len(ids), horizon): the forecasts issued for `hours` 1..horizon hours before (NaN: none).

        From `state` (default the current one; `before` for an hour being revised)."""
        state = self.state if state is None else state
        H = self.horizon
        h = np.arange(1, H + 1)
        origin = hours[:, None] - h[None, :]  # (m, H): the hour each forecast of this hour was issued at
        slot = origin % H
        issued_hour = np.take_along_axis(state["issued_hour"][ids], slot, axis=1)
        issued = state["issued"][ids].reshape(len(ids), H, H)
        forecast = issued[np.arange(len(ids))[:, None], slot, h[None, :] - 1]
        return np.where(issued_hour == origin, forecast, np.nan)

    def _record_errors(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray) -> None:
        H, K = self.horizon, self.error_window
        err = values[:, None] - self.forecasts_for(ids, hours)
        ok = np.isfinite(err)
        rows, hz = np.nonzero(ok)
        n_err = self.state["n_errors"]
        pos = n_err[ids[rows], hz] % K
        errors = self.state["errors"].reshape(-1, H, K)
        errors[ids[rows], hz, pos] = err[rows, hz]
        n_err[ids[rows], hz] += 1

    def _issue(self, ids: np.ndarray, hours: np.ndarray) -> None:
        H = self.horizon
        point = self._predict(ids, hours)
        slot = hours % H
        issued = self.state["issued"].reshape(-1, H, H)
        issued[ids, slot] = point
        self.state["issued_hour"][ids, slot] = hours

    # -- forecasting -----------------------------------------------------------------------------
    def forecast(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median, lower, upper), each (len(ids), horizon), for the hours after each series' latest."""
        self._grow()
        ids = np.asarray(ids, dtype=np.int64)
        H = self.horizon
        hours = self.state["hour"][ids]
        slot = hours % H
        known = self.state["issued_hour"][ids, slot] == hours
        point = self.state["issued"].reshape(-1, H, H)[ids, slot]
        point = np.where(known[:, None], point, np.nan)
        q_lo, q_hi = empirical_quantiles(self._errors(ids), ((1 - self.level) / 2, (1 + self.level) / 2),
                                         self.min_errors)
        return point, point + q_lo, point + q_hi

    def _errors(self, ids: np.ndarray) -> np.ndarray:
        H, K = self.horizon, self.error_window
        return self.state["errors"].reshape(-1, H, K)[ids]

    def exceedance_probability(self, ids: np.ndarray, limit: np.ndarray, above: np.ndarray | bool = True
                               ) -> np.ndarray:
        """(len(ids), horizon): share of past errors that would put each forecast hour at or beyond
        `limit` (per series), from `above` or from below; NaN where the errors are too few."""
        ids = np.asarray(ids, dtype=np.int64)
        median, _, _ = self.forecast(ids)
        errors = self._errors(ids)
        value = median[..., None] + errors
        lim = np.asarray(limit, dtype=np.float64).reshape(-1, 1, 1)
        up = np.asarray(above, dtype=bool).reshape(-1, 1, 1) if np.ndim(above) else np.full((1, 1, 1), bool(above))
        beyond = np.where(up, value >= lim, value <= lim) & np.isfinite(value)
        n = np.isfinite(errors).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = beyond.sum(axis=-1) / n
        return np.where(n >= self.min_errors, p, np.nan)

    def latest_hour(self, ids: np.ndarray) -> np.ndarray:
        """Latest hour learnt per series (a very negative number before the first value)."""
        self._grow()
        return self.state["hour"][np.asarray(ids, dtype=np.int64)]

    # -- the model -------------------------------------------------------------------------------
    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        """Update the model state of series `ids` with the value of `hours` (`gap` hours were missing)."""
        raise NotImplementedError

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """Point forecasts (len(ids), horizon) for hours + 1 .. hours + horizon."""
        raise NotImplementedError

    # -- restart ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        snap = super().snapshot()
        n = len(self.series)
        snap.update({f"before.{k}": v[:n].copy() for k, v in self.before.items()})
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        super().restore(snap)
        src, dst = self.series.remap(snap)
        for k in self.state_fields:
            saved = snap.get(f"before.{k}")
            if saved is not None and saved.shape[1:] == self.before[k].shape[1:]:
                self.before[k][dst] = saved[src]
            else:
                self.before[k][dst] = self.state[k][dst]
