"""Double-seasonal Holt-Winters (exponential smoothing), additive, with an AR(1) error adjustment.

After Taylor (2003, "Short-term electricity demand forecasting using double seasonal exponential
smoothing", J. Oper. Res. Soc. 54): a level ``L``, a damped trend ``B``, a daily profile ``D``
(24 hourly slots) and a weekly profile ``W`` (168 slots, what the day of the week adds), all
per series, indexed by the absolute hour (``hour % 24``, ``hour % 168``) so nothing is rotated.
For a value ``y`` at hour ``t`` (``s`` = hours since the last value, 1 without a gap):

* ``base = L + (phi + ... + phi^s) * B`` and the one-step error ``r = y - base - D[t] - W[t]``;
* the error is shared out in turn: ``L = base + alpha * r``; ``B = phi^s * B + beta * r``
  (``beta <= alpha``, the stability condition of this error-correction form; neither learns during
  the first day, which goes entirely to the daily profile); what the level left,
  ``r' = (1 - alpha) r``, goes by ``d`` to ``D[t]``; what that left, ``(1 - d) r'``, by ``w`` to
  ``W[t]``. The gains are ``d = max(delta, 1/n_D)`` and ``w = max(omega, 1/n_W)`` with ``n_D``,
  ``n_W`` the visits of the slot: a running mean at the start, so a new series needs no separate initialisation, turning into
  exponential smoothing with the fixed parameters once there is enough history. The weekly slots
  start learning only after the daily slot has had 7 visits (else they would keep the daily
  profile's start-up errors for weeks);
* like Taylor, the one-step errors are treated as AR(1): ``lambda`` is estimated online from
  exponentially weighted moments of consecutive errors (``ar_memory`` hours), clipped to
  [0, 0.98], and ``lambda^h * r`` is added to the h-hour forecast;
* with ``robust = k > 0`` (Huber-type robust smoothing, after Gelper, Fried and Croux 2010), the
  error is clipped to ``k`` times its usual size (an exponentially weighted mean of the clipped
  absolute errors over about a week, from the second day) before it is shared out, so a spike
  (a travel time of 2,900 s among 200s) moves level and profiles no more than a large ordinary
  error. Off by default; the combination (`combination`) runs a member with ``robust = 2``.

Forecast h hours after ``t``: ``L + (phi + ... + phi^h) B + D[t+h] + W[t+h] + lambda^h r``.
A gap of missing hours carries level, trend and profiles over (the damped trend runs across it);
the pair of errors around a gap does not count in the AR(1) estimate.
The smoothing parameters are fixed, chosen once for all series by the rolling-origin backtest
(`benchmarks/forecast_bench.py`) on the simulator and the NAB real series: a weekly profile
(``omega > 0``) pays only where the week matters (traffic); elsewhere its noise costs more than
it brings, so the default is ``omega = 0``, which leaves the weekly profile out entirely.

>>> import numpy as np
>>> from citywatch.detectors.forecast.base import SeriesKeys
>>> f = HoltWinters(SeriesKeys([("aq-1", "vn_aqi")]), horizon=3)
>>> t = np.arange(24 * 21)
>>> y = 50 + 20 * np.sin(2 * np.pi * t / 24)
>>> for hour, value in zip(t, y):
...     f.update(np.array([0]), np.array([hour]), np.array([value]))
>>> expected = 50 + 20 * np.sin(2 * np.pi * (t[-1] + np.arange(1, 4)) / 24)
>>> bool(np.allclose(f.forecast(np.array([0]))[0][0], expected, atol=0.5))
True
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.forecast.base import Forecaster

__all__ = ["HoltWinters", "SAMPLE_CONFIG", "DEFAULTS"]

DAY, WEEK = 24, 168
DEFAULTS = {"alpha": 0.02, "beta": 0.0, "phi": 0.9, "delta": 0.1, "omega": 0.0, "ar_memory": 336.0, "robust": 0.0}

SAMPLE_CONFIG = """\
forecasts:
  model: holt_winters
  holt_winters:                 # smoothing parameters, the same for every series
    alpha: 0.02                 # level
    beta: 0.0                   # trend (0: no trend)
    phi: 0.9                    # trend damping per hour
    delta: 0.1                  # daily profile
    omega: 0.0                  # weekly profile (0: none; traffic: 0.1)
    ar_memory: 336              # hours of one-step errors that estimate the AR(1) adjustment
    robust: 0                   # clip errors at this many times their usual size (0: no clipping)
"""


def _damped_sum(phi: float, steps: np.ndarray) -> np.ndarray:
    """phi + phi^2 + ... + phi^steps."""
    steps = np.asarray(steps, dtype=np.float64)
    if phi == 1.0:
        return steps
    return phi * (1.0 - phi ** steps) / (1.0 - phi)


class HoltWinters(Forecaster):
    name = "holt_winters"
    model_fields = {
        "level": (np.float64, np.nan), "trend": (np.float64, 0.0), "n": (np.int64, 0),
        "day": (np.float64, 0.0, DAY), "day_n": (np.int64, 0, DAY),
        "week": (np.float64, 0.0, WEEK), "week_n": (np.int64, 0, WEEK),
        "last_error": (np.float64, 0.0), "sxy": (np.float64, 0.0), "sxx": (np.float64, 0.0),
        "spread": (np.float64, np.nan),
    }

    def __init__(self, series, horizon: int = 24, level: float = 0.8, *, alpha: float = DEFAULTS["alpha"],
                 beta: float = DEFAULTS["beta"], phi: float = DEFAULTS["phi"], delta: float = DEFAULTS["delta"],
                 omega: float = DEFAULTS["omega"], ar_memory: float = DEFAULTS["ar_memory"],
                 robust: float = DEFAULTS["robust"], **kwargs) -> None:
        for name, v in (("alpha", alpha), ("beta", beta), ("delta", delta), ("omega", omega)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"holt_winters.{name} must be in [0, 1], got {v}")
        if beta > alpha:
            raise ValueError(f"holt_winters.beta ({beta}) must not exceed alpha ({alpha}): the trend would be unstable")
        if not 0.0 < phi <= 1.0:
            raise ValueError(f"holt_winters.phi must be in (0, 1], got {phi}")
        if ar_memory < 0:
            raise ValueError("holt_winters.ar_memory cannot be negative (0 turns the AR(1) adjustment off)")
        if robust < 0:
            raise ValueError(f"holt_winters.robust cannot be negative (0: no clipping), got {robust}")
        self.alpha, self.beta, self.phi, self.delta, self.omega = alpha, beta, phi, delta, omega
        self.robust = float(robust)
        self.ar_forget = 1.0 - 1.0 / ar_memory if ar_memory >= 1 else 0.0
        self.use_ar = ar_memory > 0
        super().__init__(series, horizon=horizon, level=level, **kwargs)

    def _ar_lambda(self, ids: np.ndarray) -> np.ndarray:
        if not self.use_ar:
            return np.zeros(len(ids))
        sxx, sxy = self.state["sxx"][ids], self.state["sxy"][ids]
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = np.where(sxx > 0, sxy / sxx, 0.0)
        return np.clip(lam, 0.0, 0.98)

    def _learn(self, ids: np.ndarray, hours: np.ndarray, values: np.ndarray, gap: np.ndarray) -> None:
        st = self.state
        first = st["n"][ids] == 0
        steps = gap + 1
        d, w = hours % DAY, hours % WEEK
        level = np.where(first, values, st["level"][ids])
        base = level + _damped_sum(self.phi, steps) * st["trend"][ids]
        r = np.where(first, 0.0, values - base - st["day"][ids, d] - st["week"][ids, w])
        if self.robust > 0:
            # Huber: an error beyond `robust` times the usual absolute error is learnt as if it were
            # that size, so one spike does not drag level and profiles (Gelper, Fried & Croux 2010)
            spread = st["spread"][ids]
            limit = np.where(np.isfinite(spread) & (st["n"][ids] > DAY), self.robust * spread, np.inf)
            r = np.clip(r, -limit, limit)
            g = np.maximum(1.0 / DAY / 7, 1.0 / np.maximum(st["n"][ids], 1))
            a_r = np.abs(r)
            st["spread"][ids] = np.where(first, np.nan, np.where(np.isfinite(spread), spread + g * (a_r - spread), a_r))
        n = st["n"][ids] + 1
        dn = st["day_n"][ids, d] + 1
        # the weekly profile learns once the daily one has had a week (else it would keep the
        # daily profile's start-up errors for weeks)
        weekly = (dn > 7) & (self.omega > 0)  # omega 0: no weekly profile at all
        wn = st["week_n"][ids, w] + weekly
        a = np.where(n > DAY, self.alpha, 0.0)  # the first day goes to the daily profile
        gd = np.maximum(self.delta, 1.0 / dn)
        gw = np.where(weekly, np.maximum(self.omega, 1.0 / np.maximum(wn, 1)), 0.0)
        st["level"][ids] = base + a * r
        st["trend"][ids] = np.where(first, 0.0, self.phi ** steps * st["trend"][ids] + np.where(a > 0, self.beta, 0.0) * r)
        r2 = (1.0 - a) * r
        st["day"][ids, d] += gd * r2
        st["week"][ids, w] += gw * (1.0 - gd) * r2
        st["n"][ids], st["day_n"][ids, d], st["week_n"][ids, w] = n, dn, wn
        # AR(1) of consecutive one-step errors (a gap breaks the pair)
        prev = st["last_error"][ids]
        pair = (gap == 0) & ~first
        rho = self.ar_forget
        st["sxy"][ids] = np.where(pair, rho * st["sxy"][ids] + prev * r, st["sxy"][ids])
        st["sxx"][ids] = np.where(pair, rho * st["sxx"][ids] + prev * prev, st["sxx"][ids])
        st["last_error"][ids] = r

    def _predict(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        st = self.state
        h = np.arange(1, self.horizon + 1)
        target = hours[:, None] + h[None, :]
        point = (st["level"][ids, None] + _damped_sum(self.phi, h)[None, :] * st["trend"][ids, None]
                 + np.take_along_axis(st["day"][ids], target % DAY, axis=1)
                 + np.take_along_axis(st["week"][ids], target % WEEK, axis=1))
        lam = self._ar_lambda(ids)
        return point + lam[:, None] ** h[None, :] * st["last_error"][ids, None]
