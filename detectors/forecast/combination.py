"""Forecast combination: every model runs, each series and horizon follows the ones that did best lately.

No single model wins everywhere: Holt-Winters with a daily profile suits AQI and water probes, the
AR model on the deseasonalised series suits traffic counts and temperatures with a weekly rhythm,
robust Holt-Winters (errors clipped, see `holt_winters`; with and without a weekly profile) suit
spiky, gappy travel times, the median of the last day's values (`recent_median`, no profile at
all) suits a road's speed whose daily dip is weak and irregular, and on a series with a short or
irregular history seasonal-naive is still hard to beat. Rather than
tuning a model per series (which needs someone to look at the future), the combination runs the
members of `MEMBERS` side by side on every series and weighs their forecasts by their own recent
out-of-sample errors, per series and per horizon (Bates and Granger, 1969):

* when the value of hour ``t`` arrives, each member's forecast made ``h`` hours earlier for ``t``
  is compared with it and its absolute error goes into an exponentially weighted mean ``S[m, h]``
  (gain ``max(1 / memory, 1 / n)``: a running mean over the first ``memory`` errors). The error is
  capped at 3 times the best member's ``S`` (a spike no model saw coming would otherwise make all
  members look alike for weeks); a member that had no forecast for ``t`` (seasonal-naive across a
  gap) is charged the combination's own forecast, which stood in for it, so all are scored on the
  same hours;
* the forecast for ``h`` hours ahead is the weighted *median* of the members' forecasts, with
  weights ``(S_best / S[m, h]) ** sharpness`` over the members that have a forecast and at least
  `min_evidence` errors at that horizon. A median, not a mean: a member gone astray (seasonal-naive
  repeating last week's spike) cannot drag the forecast, which is what the absolute errors the
  members are judged on call for;
* like Holt-Winters, the combined median's one-hour errors are treated as AR(1) (``lambda`` from
  exponentially weighted moments of consecutive errors over about two weeks, clipped to
  [0, 0.98]) and ``lambda^h`` times the last error is added: after a sudden step the median of
  members that have not seen it yet is carried along with it at once;
* a series (or horizon) with no member past `min_evidence` yet is forecast by the first member in
  `MEMBERS` order that has a forecast (Holt-Winters: its profile is a running mean from the
  first day). The errors of that start-up (a series' first ``min_evidence + horizon`` values,
  until every horizon has members judged by their errors) do not go into the prediction
  intervals: they are not errors the combination still makes, and on a young series they would
  widen its intervals for a week.

Everything is an array operation over all series at once; the state is each member's state plus an
(members x horizon) table of scores and error counts per series; snapshots carry the members'
states. A revised hour is revised in every member and in the scores. The prediction intervals are,
as for every forecaster, the empirical quantiles of the combination's own past errors.

>>> import numpy as np
>>> from citywatch.detectors.forecast.base import SeriesKeys
>>> f = Combination(SeriesKeys([("tc-1", "flow_veh_h")]), horizon=2, min_evidence=24)
>>> t = np.arange(24 * 28)
>>> y = 100 + 50 * (t % 168 < 120) * np.sin(np.pi * (t % 24) / 24)  # weekdays busy, weekends quiet
>>> for hour, value in zip(t, y):
...     f.update(np.array([0]), np.array([hour]), np.array([value]))
>>> best = f.member_weights(np.array([0]))[0].argmax(axis=0)  # a fixed week: last week's values win
>>> [list(f.members)[j] for j in best]
['seasonal_naive_week', 'seasonal_naive_week']
>>> expected = 100 + 50 * ((t[-1] + np.arange(1, 3)) % 168 < 120) * np.sin(np.pi * ((t[-1] + np.arange(1, 3)) % 24) / 24)
>>> bool(np.allclose(f.forecast(np.array([0]))[0][0], expected, atol=1.0))
True
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.forecast.ar_deseasonalised import ArDeseasonalised
from citywatch.detectors.forecast.base import NO_HOUR, Forecaster
from citywatch.detectors.forecast.holt_winters import HoltWinters
from citywatch.detectors.forecast.recent_median import RecentMedian
from citywatch.detectors.forecast.seasonal_naive import SeasonalNaive

__all__ = ["Combination", "MEMBERS", "SAMPLE_CONFIG", "DEFAULTS"]

# label: (class, parameters); the order is the fallback order for a series without evidence yet
MEMBERS: dict[str, tuple[type[Forecaster], dict]] = {
    "holt_winters": (HoltWinters, {}),
    "holt_winters_robust": (HoltWinters, {"robust": 2.0}),
    "seasonal_naive_week": (SeasonalNaive, {"period": 168}),
    "seasonal_naive_day": (SeasonalNaive, {"period": 24}),
    "holt_winters_weekly_robust": (HoltWinters, {"omega": 0.1, "robust": 2.0}),
    "ar_deseasonalised": (ArDeseasonalised, {}),
    "recent_median": (RecentMedian, {"window": 24}),
}
DEFAULTS = {"memory": 168.0, "sharpness": 4.0, "min_evidence": 24}
_AR_FORGET = 1.0 - 1.0 / 336  # the AR(1) adjustment's memory, hours
_SCORE_CLIP = 3.0  # an error is scored at most this many times the best member's score

SAMPLE_CONFIG = """\
forecasts:
  models: {aqi: combination, water: combination, traffic: combination}
  combination:
    memory: 168                 # hours of errors that score each member (exponential weighting)
    sharpness: 4                # weights (best score / score) ** sharpness; 0: all alike
    min_evidence: 24            # errors a member needs at a horizon before it is weighed by them
"""


def _weighted_median(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Over axis 1 of (n, members, horizon): the value where the sorted weights reach half (NaN: no weight)."""
    filled = np.where(weights > 0, points, np.inf)
    order = np.argsort(filled, axis=1)
    v = np.take_along_axis(filled, order, axis=1)
    cum = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    total = cum[:, -1:]
    at = np.argmax(cum >= 0.5 * total - 1e-12, axis=1)[:, None]
    med = np.take_along_axis(v, at, axis=1)[:, 0]
    return np.where(total[:, 0] > 0, med, np.nan)


class Combination(Forecaster):
    name = "combination"

    def __init__(self, series, horizon: int = 24, level: float = 0.8, *, memory: float = DEFAULTS["memory"],
                 sharpness: float = DEFAULTS["sharpness"], min_evidence: int = DEFAULTS["min_evidence"],
                 **kwargs) -> None:
        if memory < 1:
            raise ValueError(f"combination.memory must be at least 1 hour, got {memory}")
        if not 0.0 <= sharpness <= 50.0:
            raise ValueError(f"combination.sharpness must be in [0, 50], got {sharpness}")
        if min_evidence < 1:
            raise ValueError(f"combination.min_evidence must be at least 1, got {min_evidence}")
        self.memory, self.sharpness, self.min_evidence = float(memory), float(sharpness), int(min_evidence)
        self.warm_up = self.min_evidence + int(horizon)  # values before the errors count for the intervals
        # the members' own intervals are never used: the smallest error rings
        self.members: dict[str, Forecaster] = {
            label: cls(series, horizon=horizon, level=level, error_window=2, min_errors=1, **params)
            for label, (cls, params) in MEMBERS.items()
        }
        M = len(self.members)
        self.model_fields = {"score": (np.float64, np.nan, M * horizon), "evidence": (np.int64, 0, M * horizon),
                             "next": (np.float64, np.nan), "next_hour": (np.int64, NO_HOUR),
                             "last_error": (np.float64, np.nan), "sxy": (np.float64, 0.0), "sxx": (np.float64, 0.0),
                             "seen": (np.int64, 0)}
        super().__init__(series, horizon=horizon, level=level, **kwargs)

    def _record_errors(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray) -> None:
        """Only past the warm-up: the start-up forecasts (one member's first-day profile) would widen
        the intervals for a week with errors the combination no longer makes."""
        warm = self.state["seen"][ids] >= self.warm_up
        if warm.any():
            super()._record_errors(ids[warm], hours[warm], values[warm])

    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        self.state["seen"][ids] += 1
        H, M, m = self.horizon, len(self.members), len(ids)
        score = self.state["score"][ids].reshape(m, M, H)
        evidence = self.state["evidence"][ids].reshape(m, M, H)
        # an error far beyond the best member's usual one (a spike no model saw coming) is scored as
        # `clip` times that: else one spike makes every member look alike for `memory` hours
        judged = evidence >= self.min_evidence
        best = np.min(np.where(judged & np.isfinite(score), score, np.inf), axis=1)
        cap = np.where(np.isfinite(best), _SCORE_CLIP * best, np.inf)
        # a member that made no forecast for this hour (seasonal-naive across a gap) is charged the
        # combination's own, which stood in for it: all are scored on the same hours
        own = self.forecasts_for(ids, hours)
        for j, member in enumerate(self.members.values()):
            member._grow()
            revised = member.state["hour"][ids] == hours
            made = np.where(revised[:, None], member.forecasts_for(ids, hours, member.before),
                            member.forecasts_for(ids, hours))
            made = np.where(np.isfinite(made), made, own)
            err = np.minimum(np.abs(values[:, None] - made), cap)
            ok = np.isfinite(err)
            n = evidence[:, j] + ok
            gain = np.maximum(1.0 / self.memory, 1.0 / np.maximum(n, 1))
            old = score[:, j]
            score[:, j] = np.where(ok, np.where(np.isfinite(old), old + gain * (err - old), err), old)
            evidence[:, j] = n
            member.update(ids, hours, values)
        # AR(1) of the combined median's one-hour errors (as Holt-Winters does with its own)
        st = self.state
        e = np.where(st["next_hour"][ids] == hours, values - st["next"][ids], np.nan)
        prev = st["last_error"][ids]
        pair = np.isfinite(e) & np.isfinite(prev) & (gap == 0)
        st["sxy"][ids] = np.where(pair, _AR_FORGET * st["sxy"][ids] + prev * e, st["sxy"][ids])
        st["sxx"][ids] = np.where(pair, _AR_FORGET * st["sxx"][ids] + prev * prev, st["sxx"][ids])
        st["last_error"][ids] = e
        self.state["score"][ids] = score.reshape(m, M * H)
        self.state["evidence"][ids] = evidence.reshape(m, M * H)

    def _member_points(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), members, horizon): each member's latest forecasts (NaN: none)."""
        H = self.horizon
        out = []
        for member in self.members.values():
            member._grow()
            hours = member.state["hour"][ids]
            slot = hours % H
            point = member.state["issued"].reshape(-1, H, H)[ids, slot]
            known = member.state["issued_hour"][ids, slot] == hours
            out.append(np.where(known[:, None], point, np.nan))
        return np.stack(out, axis=1)

    def member_weights(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), members, horizon): the weights of the members' latest forecasts (sum 1, or 0: none)."""
        ids = np.asarray(ids, dtype=np.int64)
        self._grow()
        return self._weights(ids, self._member_points(ids))

    def _weights(self, ids: np.ndarray, points: np.ndarray) -> np.ndarray:
        H, M, m = self.horizon, len(self.members), len(ids)
        score = self.state["score"][ids].reshape(m, M, H)
        evidence = self.state["evidence"][ids].reshape(m, M, H)
        has = np.isfinite(points)
        judged = has & (evidence >= self.min_evidence) & np.isfinite(score)
        with np.errstate(invalid="ignore", divide="ignore"):
            best = np.min(np.where(judged, score, np.inf), axis=1, keepdims=True)
            tiny = 1e-12 * (1.0 + np.where(np.isfinite(best), best, 0.0))
            w = np.where(judged, ((best + tiny) / (score + tiny)) ** self.sharpness, 0.0)
        # no evidence yet at that horizon: the first member (in MEMBERS order) with a forecast
        first = has & (np.cumsum(has, axis=1) == 1)
        w = np.where(w.sum(axis=1, keepdims=True) > 0, w, first.astype(np.float64))
        total = w.sum(axis=1, keepdims=True)
        return np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        points = self._member_points(ids)
        w = self._weights(ids, points)
        median = _weighted_median(points, w)
        st = self.state
        st["next"][ids], st["next_hour"][ids] = median[:, 0], hours + 1
        sxx, sxy = st["sxx"][ids], st["sxy"][ids]
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = np.clip(np.where(sxx > 0, sxy / sxx, 0.0), 0.0, 0.98)
        last = st["last_error"][ids]
        h = np.arange(1, self.horizon + 1)
        return median + np.where(np.isfinite(last), last, 0.0)[:, None] * lam[:, None] ** h[None, :]

    # -- restart: the members' states beside the combination's --------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        snap = super().snapshot()
        for label, member in self.members.items():
            snap.update({f"{label}/{k}": v for k, v in member.snapshot().items()})
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        super().restore({k: v for k, v in snap.items() if "/" not in k})
        for label, member in self.members.items():
            prefix = f"{label}/"
            part = {k[len(prefix):]: v for k, v in snap.items() if k.startswith(prefix)}
            if "__sensor" in part:
                member.restore(part)
