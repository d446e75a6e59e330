"""Autoregression on the deseasonalised series: a seasonal profile, and an AR(p) on what it leaves.

Per series, the profile ``P(t)`` is an exponentially weighted mean of the values seen at the same
hour of the week (168 slots), falling back to the same hour of the day (24 slots) for a slot not
seen yet, and to the mean of the daily slots seen for an hour of the day not seen yet (a young
series), with gain ``max(profile_gain, 1/visits)`` (a running mean for the first visits). The
deseasonalised value ``x = y - P(t)`` (profile from before ``y``) follows an AR(p) with intercept,
``x(t) = c + a1 x(t-1) + ... + ap x(t-p) + e``, whose coefficients are estimated online by
recursive least squares with exponential forgetting (`forgetting`, e.g. 0.998 = a memory of about
500 hours), as NumPy operations over all series at once (the p+1 by p+1 inverse-covariance
matrices of all series are one (n, p+1, p+1) array). Forecasts iterate the AR recursion h steps
and add the profile back. If the estimated lag coefficients sum (in absolute value) to more than
0.98 they are scaled down to 0.98 for forecasting, so a forecast never explodes.

A gap of missing hours shifts the lags by the gap with zeros (the deseasonalised mean), so the AR
part fades out across a long outage and the profile remains.

>>> import numpy as np
>>> from citywatch.detectors.forecast.base import SeriesKeys
>>> f = ArDeseasonalised(SeriesKeys([("wq-1", "pH"), ("wq-2", "pH")]), horizon=2)
>>> t = np.arange(24 * 14)
>>> for hour in t:
...     f.update(np.array([0, 1]), np.array([hour, hour]), np.array([7.0 + (hour % 24 == 12), 6.5]))
>>> np.round(f.forecast(np.array([0, 1]))[0], 2).tolist()  # hours 0 and 1 of the 15th day
[[7.0, 7.0], [6.5, 6.5]]
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.forecast.base import Forecaster

__all__ = ["ArDeseasonalised", "SAMPLE_CONFIG", "DEFAULTS"]

DAY, WEEK = 24, 168
DEFAULTS = {"order": 3, "forgetting": 0.998, "profile_gain": 0.1}
_P0 = 1e3  # initial inverse covariance (times the identity): the first values dominate quickly
_P_MAX_TRACE = 1e8  # no more forgetting once the covariance is this large (input not exciting)
_MAX_LAG_SUM = 0.98

SAMPLE_CONFIG = """\
forecasts:
  model: ar_deseasonalised
  ar_deseasonalised:
    order: 3                    # p, hours of lags
    forgetting: 0.998           # RLS forgetting factor per hour (memory ~ 1 / (1 - forgetting) hours)
    profile_gain: 0.1           # weight of a new value in its hour-of-week profile slot
"""


class ArDeseasonalised(Forecaster):
    name = "ar_deseasonalised"

    def __init__(self, series, horizon: int = 24, level: float = 0.8, *, order: int = DEFAULTS["order"],
                 forgetting: float = DEFAULTS["forgetting"], profile_gain: float = DEFAULTS["profile_gain"],
                 **kwargs) -> None:
        if not 1 <= order <= 48:
            raise ValueError(f"ar_deseasonalised.order must be 1..48, got {order}")
        if not 0.9 <= forgetting <= 1.0:
            raise ValueError(f"ar_deseasonalised.forgetting must be in [0.9, 1], got {forgetting}")
        if not 0.0 < profile_gain <= 1.0:
            raise ValueError(f"ar_deseasonalised.profile_gain must be in (0, 1], got {profile_gain}")
        self.order, self.forgetting, self.profile_gain = int(order), float(forgetting), float(profile_gain)
        k = self.order + 1
        self.model_fields = {
            "week": (np.float64, np.nan, WEEK), "week_n": (np.int64, 0, WEEK),
            "day": (np.float64, np.nan, DAY), "day_n": (np.int64, 0, DAY),
            "lags": (np.float64, 0.0, self.order), "theta": (np.float64, 0.0, k),
            "cov": (np.float64, np.nan, k * k),
        }
        super().__init__(series, horizon=horizon, level=level, **kwargs)

    def _profile(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """P at `hours` (shape of hours: (m,) or (m, H)) for series ids (m,)."""
        hrs = np.atleast_2d(hours.T).T if hours.ndim == 1 else hours
        week = np.take_along_axis(self.state["week"][ids], hrs % WEEK, axis=1)
        day = np.take_along_axis(self.state["day"][ids], hrs % DAY, axis=1)
        p = np.where(np.isfinite(week), week, day)
        daily = self.state["day"][ids]
        seen = np.isfinite(daily)
        level = np.where(seen, daily, 0.0).sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
        p = np.where(np.isfinite(p), p, np.where(seen.any(axis=1), level, np.nan)[:, None])
        return p[:, 0] if hours.ndim == 1 else p

    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        st, p, k = self.state, self.order, self.order + 1
        m = len(ids)
        prof = self._profile(ids, hours)
        seen = np.isfinite(prof)
        x = np.where(seen, values - prof, 0.0)
        # lags across a gap: shifted by the missing hours, with zeros
        lags = st["lags"][ids]
        shift = np.minimum(gap, p)
        col = np.arange(p)[None, :] - shift[:, None]
        lags = np.where(col >= 0, np.take_along_axis(lags, np.clip(col, 0, p - 1), axis=1), 0.0)
        # recursive least squares on z = [1, lags]
        z = np.concatenate([np.ones((m, 1)), lags], axis=1)
        cov = st["cov"][ids].reshape(m, k, k)
        fresh = ~np.isfinite(cov[:, 0, 0])
        cov[fresh] = _P0 * np.eye(k)
        theta = st["theta"][ids]
        pz = np.einsum("nij,nj->ni", cov, z)
        denom = self.forgetting + np.einsum("ni,ni->n", z, pz)
        gain = pz / denom[:, None]
        err = x - np.einsum("ni,ni->n", theta, z)
        learn = seen[:, None]
        theta = np.where(learn, theta + gain * err[:, None], theta)
        new_cov = cov - np.einsum("ni,nj->nij", gain, pz)
        trace = np.trace(new_cov, axis1=1, axis2=2)
        new_cov = np.where((trace < _P_MAX_TRACE)[:, None, None], new_cov / self.forgetting, new_cov)
        cov = np.where(learn[:, :, None], new_cov, cov)
        st["theta"][ids] = theta
        st["cov"][ids] = cov.reshape(m, k * k)
        st["lags"][ids] = np.concatenate([x[:, None], lags[:, :-1]], axis=1)
        # profiles (after the AR step, which used the profile from before this value)
        for name, period in (("week", WEEK), ("day", DAY)):
            slot = hours % period
            n = st[f"{name}_n"][ids, slot] + 1
            g = np.maximum(self.profile_gain, 1.0 / n)
            old = st[name][ids, slot]
            st[name][ids, slot] = np.where(np.isfinite(old), old + g * (values - old), values)
            st[f"{name}_n"][ids, slot] = n

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        st = self.state
        theta = st["theta"][ids]
        c, a = theta[:, 0], theta[:, 1:].copy()
        total = np.abs(a).sum(axis=1)
        scale = np.where(total > _MAX_LAG_SUM, _MAX_LAG_SUM / np.maximum(total, 1e-12), 1.0)
        a *= scale[:, None]
        lags = st["lags"][ids].copy()
        x_hat = np.empty((len(ids), self.horizon))
        for j in range(self.horizon):  # the recursion runs over the horizon, vectorised over series
            x_next = c + np.einsum("ni,ni->n", a, lags)
            x_hat[:, j] = x_next
            lags = np.concatenate([x_next[:, None], lags[:, :-1]], axis=1)
        target = hours[:, None] + np.arange(1, self.horizon + 1)[None, :]
        return self._profile(ids, target) + x_hat
