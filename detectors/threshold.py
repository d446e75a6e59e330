"""Multi-level thresholds with hysteresis and a for-duration, per series, in event time.

Each rule (`citywatch.config.ThresholdRule`) gives up to two levels, *warn* and *crit*, each with
a set level and a reset level, like Kapacitor's `.warn()`/`.warnReset()` and `.crit()`/`.critReset()`,
and a for-duration like Kapacitor's `stateDuration` or Grafana's pending period.

Semantics, per series and per level (written for `direction: above`; `below` mirrors every
comparison, e.g. dissolved oxygen falling below its limits):

* the level's *raw state* turns on at a reading ``x >= set``, turns off at a reading ``x < reset``,
  and otherwise keeps its previous value, across batches (``reset`` None means ``reset = set``: no
  hysteresis);
* the level is *effective* when its raw state is on and the reading's event time is at least
  ``for`` after the reading that turned the raw state on (``for: 0`` fires at once);
* the output level is CRITICAL if crit is effective, else WARNING if warn is effective, else OK.
  When a raw state above the output level is on but its for-duration has not elapsed yet, the
  reason is ``pending`` (the level stays at the lower, effective one).

Not evaluated (level -1, score NaN) and leaving the state untouched: readings flagged LATE or
DUPLICATE, rows given in `skip` (the engine passes the readings the physical-range check failed),
NaN values, and series no rule applies to.

Which rule applies to a series: the rule whose `metric` is the series' metric and whose `domain` is
the series' sensor's domain; failing that, the rule for that metric with no domain. Two rules for
the same (metric, domain) are an error.

Score, a function of the value alone, non-decreasing in the direction of the rule, in [0, 1]:
0 at or before ``warn_reset``, rising linearly to 0.5 at ``warn`` and to 1.0 at ``crit``, then 1.0.
A rule without crit stays at 0.5 from ``warn`` on; a rule without warn rises from 0 at
``crit_reset`` to 1.0 at ``crit``. A set level equal to its reset level is a step.

Output `threshold`: the crit limit for CRITICAL, else the warn limit (the crit limit when the rule
has no warn).

Sample configuration (`config/citywatch.yaml`): see `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import numpy as np

from citywatch.batch import ReadingBatch, last_index_where
from citywatch.config import ThresholdRule
from citywatch.detectors.base import (
    LEVEL_CRITICAL,
    LEVEL_NOT_EVALUATED,
    LEVEL_OK,
    LEVEL_WARNING,
    Detector,
    DetectorOutput,
)
from citywatch.registry import SeriesIndex

__all__ = ["ThresholdDetector", "SAMPLE_CONFIG"]

SAMPLE_CONFIG = """\
detectors:
  thresholds:
    ## One entry per metric (and optionally per domain; a rule with a domain wins over one without).
    - metric: no2                 # metric name as in the sensor registry
      domain: air                 # omit to apply to every domain
      direction: above            # "above" (pollutants) or "below" (e.g. dissolved oxygen)
      warn: 160                   # in the registry's unit (here ug/m3)
      warn_reset: 144             # leave warning only below this (hysteresis); omit = warn
      crit: 200
      crit_reset: 180
      for: 10m                    # must hold this long in event time before it fires; omit = 0
      source: "QCVN 05:2023/BTNMT 1-hour limit"
    - metric: do
      domain: water
      direction: below
      warn: 4.0
      warn_reset: 4.5             # for "below", resets are above their levels
      crit: 2.0
      crit_reset: 2.5
      for: 15m
"""

REASON_OK = 0
REASON_ABOVE_WARN = 1
REASON_ABOVE_CRIT = 2
REASON_BELOW_WARN = 3
REASON_BELOW_CRIT = 4
REASON_PENDING = 5

_LEVELS = ("warn", "crit")


def _ramp(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """0 at or below lo, 1 at or above hi, linear in between; a step at hi when lo == hi."""
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.where(hi > lo, frac, (x >= hi).astype(np.float64))


class ThresholdDetector(Detector):
    """Warn/crit thresholds with reset levels (hysteresis) and a for-duration, per series.

    Parameters
    ----------
    series
        The series index. Rules are matched to series as they appear (by metric and domain).
    rules
        `ThresholdRule`s; see the module docstring for the semantics.

    State per series (carried across batches, saved by `snapshot()`): for each level, whether its
    raw state is on and the event time (ns) at which it turned on.

    Examples
    --------
    Dissolved oxygen should stay above 4 mg/L (warning) and 2 mg/L (critical); an alert needs the
    condition to hold for 10 minutes. Readings every 5 minutes:

    >>> from citywatch.batch import ReadingBatch
    >>> from citywatch.config import ThresholdRule
    >>> from citywatch.registry import MetricSpec, Registry, SeriesIndex, Sensor
    >>> sensor = Sensor(id="wq-01", domain="water", area="dong-nai", lat=10.95, lon=106.82,
    ...                 interval=300, metrics={"do": MetricSpec(unit="mg/L", min=0, max=20)})
    >>> series = SeriesIndex(Registry({sensor.id: sensor}))
    >>> series.add_registry()
    >>> rule = ThresholdRule(metric="do", direction="below", warn=4.0, warn_reset=4.5,
    ...                      crit=2.0, crit_reset=2.5, **{"for": "10m"})
    >>> detector = ThresholdDetector(series, [rule])
    >>> minutes = [0, 5, 10, 15, 20, 25, 30, 35, 40]
    >>> do_mg_l = [6.0, 3.8, 4.2, 3.6, 1.8, 2.4, 2.2, 4.3, 4.7]
    >>> batch = ReadingBatch.from_columns(
    ...     series=[series.get("wq-01", "do")] * len(minutes),
    ...     ts=[m * 60 * 10**9 for m in minutes],
    ...     value=do_mg_l,
    ... )
    >>> out = detector.process(batch)
    >>> out.level.tolist()
    [0, 0, 0, 1, 1, 1, 2, 1, 0]
    >>> detector.reason_names(out.reason).tolist()  # doctest: +NORMALIZE_WHITESPACE
    ['ok', 'pending', 'pending', 'below_warn', 'pending', 'pending', 'below_crit',
     'below_warn', 'ok']
    >>> out.score.round(3).tolist()
    [0.0, 0.55, 0.3, 0.6, 1.0, 0.9, 0.95, 0.2, 0.0]

    Warn turns on at 5 min (3.8 <= 4.0); 4.2 at 10 min lies between warn and warn_reset, so the
    state holds, and at 15 min it has held 10 minutes: WARNING. Crit turns on at 20 min and holds
    through 2.4 (below crit_reset 2.5): CRITICAL at 30 min. 4.3 turns crit off but not warn
    (4.3 <= 4.5); 4.7 turns warn off. The state carries over to the next batch:

    >>> out = detector.process(ReadingBatch.from_columns(
    ...     series=[series.get("wq-01", "do")] * 2, ts=[45 * 60 * 10**9, 50 * 60 * 10**9], value=[3.0, 3.1]))
    >>> detector.reason_names(out.reason).tolist()
    ['pending', 'pending']

    """

    name = "threshold"
    reasons = ("ok", "above_warn", "above_crit", "below_warn", "below_crit", "pending")
    state_fields = {
        "warn_on": (np.bool_, False),
        "warn_since": (np.int64, 0),
        "crit_on": (np.bool_, False),
        "crit_since": (np.int64, 0),
    }

    def __init__(self, series: SeriesIndex, rules: list[ThresholdRule]) -> None:
        self.rules = list(rules)
        self._rule_for: dict[tuple[str, str | None], int] = {}
        for i, rule in enumerate(self.rules):
            key = (rule.metric, rule.domain)
            if key in self._rule_for:
                where = f"metric {rule.metric!r}" + (f", domain {rule.domain!r}" if rule.domain else "")
                raise ValueError(f"two threshold rules for {where} (rules {self._rule_for[key]} and {i})")
            self._rule_for[key] = i
        # Per-rule parameters, in "above" form (values multiplied by `sign`); the last entry is
        # the "no rule" row. Per-series lookups go through `_rule_of[series id]`.
        m = len(self.rules)
        p = {k: np.full(m + 1, np.nan) for k in ("warn", "crit", "warn_set", "warn_reset", "crit_set",
                                                 "crit_reset", "a0", "a1", "a2", "wa", "wb")}
        sign = np.ones(m + 1)
        for_ns = np.zeros(m + 1, np.int64)
        for i, r in enumerate(self.rules):
            s = 1.0 if r.direction == "above" else -1.0
            sign[i] = s
            for_ns[i] = int(round(r.for_ * 1e9))
            for lvl in _LEVELS:
                limit = getattr(r, lvl)
                if limit is None:
                    continue
                reset = getattr(r, f"{lvl}_reset")
                p[lvl][i] = limit
                p[f"{lvl}_set"][i] = s * limit
                p[f"{lvl}_reset"][i] = s * (limit if reset is None else reset)
            # Score anchors: wa * ramp(a0 -> a1) + wb * ramp(a1 -> a2).
            if r.warn is not None and r.crit is not None:
                p["a0"][i], p["a1"][i], p["a2"][i] = p["warn_reset"][i], p["warn_set"][i], p["crit_set"][i]
                p["wa"][i], p["wb"][i] = 0.5, 0.5
            elif r.warn is not None:
                p["a0"][i], p["a1"][i], p["a2"][i] = p["warn_reset"][i], p["warn_set"][i], p["warn_set"][i]
                p["wa"][i], p["wb"][i] = 0.5, 0.0
            else:
                p["a0"][i], p["a1"][i], p["a2"][i] = p["crit_reset"][i], p["crit_set"][i], p["crit_set"][i]
                p["wa"][i], p["wb"][i] = 1.0, 0.0
        # The threshold reported when not CRITICAL: warn, or crit when the rule has no warn.
        p["low_limit"] = np.where(np.isnan(p["warn"]), p["crit"], p["warn"])
        self._param = p
        self._sign = sign
        self._for_ns = for_ns
        self._is_below = sign < 0
        self._rule_of = np.full(0, m, np.intp)
        super().__init__(series)

    def rule_for(self, metric: str, domain: str) -> ThresholdRule | None:
        """The rule that applies to a series of this metric in this domain, if any."""
        i = self._rule_for.get((metric, domain), self._rule_for.get((metric, None)))
        return None if i is None else self.rules[i]

    def _on_new_series(self, start: int, stop: int) -> None:
        none = len(self.rules)
        if len(self._rule_of) < self._capacity:
            grown = np.full(self._capacity, none, np.intp)
            grown[: len(self._rule_of)] = self._rule_of
            self._rule_of = grown
        metrics, domains = self.series.metrics, self.series.domains
        for sid in range(start, stop):
            key = metrics[sid]
            i = self._rule_for.get((key, domains[sid]), self._rule_for.get((key, None)))
            self._rule_of[sid] = none if i is None else i

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        sid = batch.series
        if n > 1 and np.any(sid[1:] < sid[:-1]):
            raise ValueError("the batch must be sorted by (series, ts): use ReadingBatch.sorted_by_series_time()")
        rule = self._rule_of[sid]
        p = self._param
        x = batch.value * self._sign[rule]  # "above" form
        active = (rule < len(self.rules)) & self.in_order(batch) & ~np.isnan(x)
        ts = batch.ts
        gs = batch.group_start
        first = gs == np.arange(n)
        last = batch.is_last
        last_sid = sid[last]
        for_ns = self._for_ns[rule]

        raw: dict[str, np.ndarray] = {}
        eff: dict[str, np.ndarray] = {}
        for lvl in _LEVELS:
            on_evt = active & (x >= p[f"{lvl}_set"][rule])
            off_evt = active & (x < p[f"{lvl}_reset"][rule])
            carried_on = self.state[f"{lvl}_on"][sid]
            # Raw state: the latest on/off event at or before each row, else the carried state.
            at = last_index_where(on_evt | off_evt, gs)
            raw_on = np.where(at >= 0, on_evt[at], carried_on)
            # The rows where the raw state turns on, and the latest such row before each row.
            before = np.empty(n, np.bool_)
            before[1:] = raw_on[:-1]
            before[first] = carried_on[first]
            turned_on = last_index_where(on_evt & ~before, gs)
            since = np.where(turned_on >= 0, ts[turned_on], self.state[f"{lvl}_since"][sid])
            raw[lvl] = raw_on
            eff[lvl] = raw_on & (ts - since >= for_ns)
            self.state[f"{lvl}_on"][last_sid] = raw_on[last]
            self.state[f"{lvl}_since"][last_sid] = np.where(raw_on[last], since[last], 0)

        crit_eff, warn_eff = eff["crit"], eff["warn"]
        level = np.where(crit_eff, np.int8(LEVEL_CRITICAL), np.where(warn_eff, np.int8(LEVEL_WARNING), np.int8(LEVEL_OK)))
        pending = ~crit_eff & (raw["crit"] | (raw["warn"] & ~warn_eff))
        below = self._is_below[rule]
        reason = np.where(
            pending,
            REASON_PENDING,
            np.where(
                crit_eff,
                np.where(below, REASON_BELOW_CRIT, REASON_ABOVE_CRIT),
                np.where(warn_eff, np.where(below, REASON_BELOW_WARN, REASON_ABOVE_WARN), REASON_OK),
            ),
        ).astype(np.int16)
        threshold = np.where(crit_eff, p["crit"][rule], p["low_limit"][rule])
        score = p["wa"][rule] * _ramp(x, p["a0"][rule], p["a1"][rule])
        score += p["wb"][rule] * _ramp(x, p["a1"][rule], p["a2"][rule])

        idle = ~active
        level[idle] = LEVEL_NOT_EVALUATED
        reason[idle] = REASON_OK
        score[idle] = np.nan
        threshold[idle] = np.nan
        return DetectorOutput(score=score, level=level, reason=reason, threshold=threshold)
