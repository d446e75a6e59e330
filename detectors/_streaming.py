"""Per-series recursions over a (series, ts)-sorted batch, vectorised across series.

The statistical detectors keep a few numbers per series (a streaming median, an EWMA, a CUSUM ...)
and update them reading by reading: a recursion, which cannot be written as one ufunc over the
batch. `StreamingDetector` runs it as a loop over the *position within each series' run* of the
batch, not over readings: at position p it updates every series that has more than p readings in
the batch at once. Runs are ordered longest first, so the series still active at position p are a
prefix of the runs, and the state they update is a slice (a view) of the gathered state arrays.
A batch with one reading per series is a single vectorised step; 1,000,000 readings over 10,000
series are 100 steps of 10,000.

Which readings count: LATE and DUPLICATE readings (`Detector.in_order`) and NaN, infinite or absurd
values (beyond +-1e150, whose squares would overflow) are not evaluated (level -1, score NaN) and do
not touch the state.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import special

from citywatch.batch import ReadingBatch
from citywatch.detectors.base import LEVEL_CRITICAL, LEVEL_OK, LEVEL_WARNING, Detector, DetectorOutput

# A p-value p is reported as the score -log10(p) / P_DECADES, clipped to [0, 1]: score 0.5 means
# p = 1e-5 under the detector's model of normal behaviour, 1.0 means p <= 1e-10.
P_DECADES = 10.0
MAX_ABS_VALUE = 1e150
MAD_TO_SIGMA = 1.482602218505602  # sigma / MAD for a normal distribution
MEANAD_TO_SIGMA = 1.2533141373155001  # sigma / mean absolute deviation for a normal distribution


def score_from_p(p: np.ndarray) -> np.ndarray:
    """The score in [0, 1] of a tail probability: -log10(p) / P_DECADES, clipped."""
    with np.errstate(divide="ignore"):
        return np.clip(-np.log10(np.maximum(p, 0.0)) / P_DECADES, 0.0, 1.0)


def p_from_score(score: float) -> float:
    """The tail probability a score stands for (inverse of `score_from_p`)."""
    return float(10.0 ** (-score * P_DECADES))


def normal_two_sided_p(z: np.ndarray) -> np.ndarray:
    """P(|Z| >= |z|) for a standard normal Z."""
    return 2.0 * special.ndtr(-np.abs(z))


def levels_from_score(score: np.ndarray, warning: float, critical: float) -> np.ndarray:
    return np.where(score >= critical, np.int8(LEVEL_CRITICAL),
                    np.where(score >= warning, np.int8(LEVEL_WARNING), np.int8(LEVEL_OK))).astype(np.int8)


@dataclass(slots=True)
class RunLayout:
    """The runs (one per series) of a (series, ts)-sorted batch, longest first."""

    first_row: np.ndarray  # row of each run's first reading
    series: np.ndarray  # series id of each run
    active: np.ndarray  # active[p]: how many runs have more than p readings

    @classmethod
    def of(cls, series: np.ndarray) -> "RunLayout":
        n = len(series)
        first = np.ones(n, dtype=bool)
        first[1:] = series[1:] != series[:-1]
        starts = np.flatnonzero(first)
        lengths = np.diff(np.append(starts, n))
        order = np.argsort(-lengths, kind="stable")
        lengths = lengths[order]
        active = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")
        return cls(starts[order], series[starts[order]], active)


class StreamingDetector(Detector):
    """A detector whose per-series state is updated by a recursion, reading by reading.

    Subclasses declare `state_fields` (all float64 scalars per series), `step_outputs` (the names of
    the per-reading statistics `_step` returns) and implement:

    * `_step(state, x, ts)`: one reading of each active series. `state` maps each field to the
      active series' values (views: update them in place); `x` and `ts` are their readings. Returns
      one array per name in `step_outputs`.
    * `_evaluate(stats, batch)`: turns the statistics of all evaluated readings into the output.
    """

    step_outputs: ClassVar[tuple[str, ...]] = ()
    # Wide fields (e.g. one column per time bin) that `_step` reads and writes in `self.state` itself,
    # by the global series ids of the active runs (`self._step_series`), instead of getting views of
    # a gathered copy: gathering and scattering them whole per batch would cost more than the step.
    direct_fields: ClassVar[tuple[str, ...]] = ()
    _step_series: np.ndarray = np.empty(0, np.int64)

    def _process(self, batch: ReadingBatch) -> DetectorOutput:
        n = len(batch)
        sid = batch.series
        if n > 1 and np.any(sid[1:] < sid[:-1]):
            raise ValueError("the batch must be sorted by (series, ts): use ReadingBatch.sorted_by_series_time()")
        use = self.in_order(batch) & (np.abs(batch.value) <= MAX_ABS_VALUE)  # False for NaN and inf
        out = DetectorOutput.not_evaluated(n)
        rows = np.flatnonzero(use)
        if len(rows) == 0:
            return out
        sub = batch if len(rows) == n else batch.take(rows)
        layout = RunLayout.of(sub.series)
        local = {k: self.state[k][layout.series] for k in self.state_fields if k not in self.direct_fields}
        stats = {k: np.empty(len(sub), np.float64) for k in self.step_outputs}
        x_all, ts_all = sub.value, sub.ts
        for p, m in enumerate(layout.active.tolist()):
            at = layout.first_row[:m] + p
            view = {k: v[:m] for k, v in local.items()}
            self._step_series = layout.series[:m]
            for name, value in zip(self.step_outputs, self._step(view, x_all[at], ts_all[at])):
                stats[name][at] = value
        for k, v in local.items():
            self.state[k][layout.series] = v
        result = self._evaluate(stats, sub)
        out.score[rows] = result.score
        out.level[rows] = result.level
        out.reason[rows] = result.reason
        out.threshold[rows] = result.threshold
        return out

    @abstractmethod
    def _step(self, state: dict[str, np.ndarray], x: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, ...]: ...

    @abstractmethod
    def _evaluate(self, stats: dict[str, np.ndarray], batch: ReadingBatch) -> DetectorOutput: ...
