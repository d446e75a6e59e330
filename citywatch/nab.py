"""The Numenta Anomaly Benchmark (NAB) scorer.

A streaming detector emits one anomaly score in [0, 1] per row of each series; NAB rewards the
earliest detection inside each labelled anomaly window and penalises detections outside windows.
The rules (Lavin & Ahmad 2015; Ahmad et al. 2017):

* probationary period: the first ``P = min(floor(0.15 N), 750)`` rows of a file of N rows count for
  nothing; a window with no row at or after P takes no part (neither reward nor miss);
* a row i is a detection at threshold T when ``i >= P`` and ``score >= T``;
* each window ``[l, r]`` (width ``W = r - l + 1``) contributes the weight of its earliest detection,
  ``A_TP * scaled(-(r - i + 1) / W) / scaled(-1)``, or ``-A_FN`` when it has none;
* every detection outside the windows adds ``-A_FP`` before the first window, or
  ``A_FP * scaled((i - r') / (W' - 1))`` after the most recent window ``[l', r']`` (a false alarm
  just after an event costs less than a far one), where ``scaled(y) = -1`` for ``y > 3`` and
  ``2 * sigmoid(-5 y) - 1`` otherwise;
* one threshold per profile for the whole corpus, the one maximising the summed score over every
  distinct score value (and 1.1, which detects nothing), the highest on ties;
* normalised score ``100 * (S - S_null) / (S_perfect - S_null)`` with ``S_perfect = A_TP * windows``
  and ``S_null = -A_FN * windows``.

The sweep over thresholds is exact and vectorised: every file's score, as a function of T, is a
step function that changes only at the score values of a few rows (the rows outside windows, and
the rows inside a window whose score beats every earlier row of the window). Those steps are
collected once, sorted, and summed cumulatively, so every candidate threshold is scored at once.

Choices where the published rules are silent: a window spans the rows whose timestamps lie in
[start, end]; a window inside the probationary period still counts as the "most recent window" for
the false-alarm weight of later rows; after a one-row window (``W' = 1``) a false alarm costs the
full ``-A_FP``; NaN scores never detect; scores within 1e-9 of the best sum count as ties.

>>> files = [FileLabels.from_rows("toy.csv", n_rows=200, windows=[(100, 109)])]
>>> perfect = np.zeros(200); perfect[100] = 1.0
>>> round(sweep(files, [perfect], PROFILES["standard"]).normalised, 6)
100.0
>>> round(sweep(files, [np.zeros(200)], PROFILES["standard"]).normalised, 6)
0.0
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

NO_DETECTION_THRESHOLD = 1.1
TIE_TOLERANCE = 1e-9
PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    tp: float  # A_TP
    fp: float  # A_FP
    fn: float  # A_FN


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """``-1`` for ``y > 3``, else ``2 / (1 + exp(5 y)) - 1`` (which is ``2 * sigmoid(-5 y) - 1``)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)


MAX_TP_WEIGHT = float(scaled_sigmoid(-1.0))  # the m of the rules, about 0.98661


def probationary_rows(n_rows: int) -> int:
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS)


class NabError(ValueError):
    """Inputs the scorer cannot use (missing results, row count mismatch, unknown file...)."""


@dataclass(slots=True)
class FileLabels:
    """One file's rows and windows, with the per-row unit weights the profiles scale.

    `window_rows` is a (K, 2) array of inclusive row ranges, sorted and non-overlapping.
    """

    name: str
    n_rows: int
    window_rows: np.ndarray
    probation: int = field(init=False)
    inside: np.ndarray = field(init=False, repr=False)  # window number per row, -1 outside
    unit_weight: np.ndarray = field(init=False, repr=False)  # per row: TP weight / A_TP inside, FP weight / A_FP outside

    def __post_init__(self) -> None:
        w = np.asarray(self.window_rows, dtype=np.int64).reshape(-1, 2)
        if len(w) and (np.any(w[:, 0] > w[:, 1]) or np.any(w[1:, 0] <= w[:-1, 1]) or w[0, 0] < 0
                       or w[-1, 1] >= self.n_rows):
            raise NabError(f"{self.name}: windows must be sorted, non-overlapping row ranges within 0..{self.n_rows - 1}")
        self.window_rows = w
        self.probation = probationary_rows(self.n_rows)
        rows = np.arange(self.n_rows)
        inside = np.full(self.n_rows, -1, dtype=np.int64)
        for k, (l, r) in enumerate(w):
            inside[l: r + 1] = k
        self.inside = inside
        weight = np.full(self.n_rows, -1.0)
        for l, r in w:
            width = r - l + 1
            weight[l: r + 1] = scaled_sigmoid(-(r - rows[l: r + 1] + 1) / width) / MAX_TP_WEIGHT
        # Outside: relative to the most recent window that ended before the row.
        ends = w[:, 1] if len(w) else np.empty(0, np.int64)
        prev = np.searchsorted(ends, rows, side="left") - 1  # last window with r' < i
        after = (inside < 0) & (prev >= 0)
        if after.any():
            k = prev[after]
            width = w[k, 1] - w[k, 0] + 1
            with np.errstate(divide="ignore"):
                y = np.where(width > 1, (rows[after] - w[k, 1]) / np.maximum(width - 1, 1), np.inf)
            weight[after] = scaled_sigmoid(y)
        self.unit_weight = weight

    @classmethod
    def from_rows(cls, name: str, n_rows: int, windows: Iterable[tuple[int, int]]) -> "FileLabels":
        return cls(name, n_rows, np.asarray(sorted(windows), dtype=np.int64).reshape(-1, 2))

    @classmethod
    def from_timestamps(cls, name: str, timestamps: np.ndarray, windows: Sequence[Sequence[str]]) -> "FileLabels":
        """Windows given as [start, end] timestamps: a window spans from the first to the last row
        whose timestamp lies in [start, end] (real files have repeated or slightly unordered ones)."""
        ts = np.asarray(timestamps, dtype="datetime64[ns]")
        rows = []
        for start, end in windows:
            hit = np.flatnonzero((ts >= np.datetime64(start, "ns")) & (ts <= np.datetime64(end, "ns")))
            if len(hit) == 0:
                raise NabError(f"{name}: window [{start}, {end}] covers no row")
            rows.append((int(hit[0]), int(hit[-1])))
        return cls.from_rows(name, len(ts), rows)

    @property
    def active_windows(self) -> np.ndarray:
        """Windows that take part: those with a row at or after the probationary period."""
        return self.window_rows[self.window_rows[:, 1] >= self.probation] if len(self.window_rows) else self.window_rows

    def _check(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n_rows,):
            raise NabError(f"{self.name}: {len(scores)} scores for {self.n_rows} rows")
        return scores


def score_file(labels: FileLabels, scores: np.ndarray, threshold: float, profile: Profile) -> float:
    """The file's raw score at one threshold, straight from the rules (the sweep's reference)."""
    scores = labels._check(scores)
    detected = (np.arange(labels.n_rows) >= labels.probation) & (scores >= threshold)
    total = 0.0
    for l, r in labels.active_windows:
        hits = np.flatnonzero(detected[l: r + 1])
        total += profile.tp * labels.unit_weight[l + hits[0]] if len(hits) else -profile.fn
    outside = detected & (labels.inside < 0)
    return total + profile.fp * float(labels.unit_weight[outside].sum())


@dataclass(slots=True)
class _Steps:
    """S(T) = base + sum of (tp * a + fp * b + fn * c) over the steps whose value >= T."""

    value: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    file: np.ndarray
    n_windows: int


def _steps(files: Sequence[FileLabels], scores: Sequence[np.ndarray]) -> _Steps:
    vals, a_s, b_s, c_s, file_ids = [], [], [], [], []
    n_windows = 0
    for f_id, (labels, s) in enumerate(zip(files, scores)):
        s = labels._check(s)
        s = np.where(np.isnan(s), -np.inf, s)  # NaN never detects
        p = labels.probation
        out = np.flatnonzero(labels.inside[p:] < 0) + p
        vals.append(s[out]); a_s.append(np.zeros(len(out))); b_s.append(labels.unit_weight[out])
        c_s.append(np.zeros(len(out))); file_ids.append(np.full(len(out), f_id))
        for l, r in labels.active_windows:
            n_windows += 1
            lo = max(l, p)
            seg = s[lo: r + 1]
            prior = np.concatenate(([-np.inf], np.maximum.accumulate(seg)[:-1]))
            rec = np.flatnonzero(seg > prior)  # rows that are the earliest detection for some T
            if len(rec) == 0:
                continue
            w = labels.unit_weight[lo + rec]
            # Below the best record the window is detected: -A_FN becomes A_TP * w[last record];
            # each lower record moves the earliest detection back to its own (earlier) row.
            a = np.empty(len(rec)); a[-1] = w[-1]; a[:-1] = w[:-1] - w[1:]
            c = np.zeros(len(rec)); c[-1] = 1.0
            vals.append(seg[rec]); a_s.append(a); b_s.append(np.zeros(len(rec))); c_s.append(c)
            file_ids.append(np.full(len(rec), f_id))
    cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.empty(0, dt))
    return _Steps(cat(vals), cat(a_s), cat(b_s), cat(c_s), cat(file_ids, np.int64), n_windows)


@dataclass(slots=True)
class SweepResult:
    profile: Profile
    threshold: float
    raw: float  # S at the chosen threshold
    null: float
    perfect: float
    per_file: dict[str, float]
    n_windows: int

    @property
    def normalised(self) -> float:
        if self.perfect == self.null:
            return 0.0
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)


def sweep(files: Sequence[FileLabels], scores: Sequence[np.ndarray], profile: Profile) -> SweepResult:
    """Choose the corpus-wide threshold for `profile` and score every file at it."""
    return sweep_profiles(files, scores, [profile])[profile.name]


def sweep_profiles(files: Sequence[FileLabels], scores: Sequence[np.ndarray],
                   profiles: Iterable[Profile] = PROFILES.values()) -> dict[str, SweepResult]:
    if len(files) != len(scores):
        raise NabError(f"{len(files)} label sets for {len(scores)} score arrays")
    st = _steps(files, scores)
    order = np.argsort(-st.value, kind="stable")
    value = st.value[order]
    present = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores]) if scores else np.empty(0)
    present = present[~np.isnan(present)]
    candidates = np.unique(np.concatenate((present, [NO_DETECTION_THRESHOLD])))[::-1]  # descending
    # Steps with value >= T are those before the first value < T in the descending order.
    n_active = np.searchsorted(-value, -candidates, side="right")
    results = {}
    for profile in profiles:
        delta = profile.tp * st.a[order] + profile.fp * st.b[order] + profile.fn * st.c[order]
        cum = np.concatenate(([0.0], np.cumsum(delta)))
        null = -profile.fn * st.n_windows
        total = null + cum[n_active]
        best = total.max()
        pick = int(np.flatnonzero(total >= best - TIE_TOLERANCE)[0])  # candidates descend: highest T
        threshold = float(candidates[pick])
        per_file = {f.name: score_file(f, s, threshold, profile) for f, s in zip(files, scores)}
        results[profile.name] = SweepResult(profile, threshold, float(total[pick]), null,
                                            profile.tp * st.n_windows, per_file, st.n_windows)
    return results


def score_at(files: Sequence[FileLabels], scores: Sequence[np.ndarray], threshold: float,
             profile: Profile) -> SweepResult:
    """The corpus scored at a given threshold (no sweep): e.g. a detector's own alert threshold."""
    if len(files) != len(scores):
        raise NabError(f"{len(files)} label sets for {len(scores)} score arrays")
    per_file = {f.name: score_file(f, s, threshold, profile) for f, s in zip(files, scores)}
    n_windows = sum(len(f.active_windows) for f in files)
    return SweepResult(profile, float(threshold), float(sum(per_file.values())), -profile.fn * n_windows,
                       profile.tp * n_windows, per_file, n_windows)


# --------------------------------------------------------------------------------------------------
# Files: a windows file and a results folder laid out like NAB's (<category>/<file>.csv)

def load_windows(path: str | Path) -> dict[str, list[list[str]]]:
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise NabError(f"{path}: expected an object mapping '<category>/<file>.csv' to [[start, end], ...]")
    return {k.replace("\\", "/"): [list(w) for w in v] for k, v in raw.items()}


def read_results_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps as datetime64[ns], anomaly_score) of a results CSV with those columns."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or "timestamp" not in header or "anomaly_score" not in header:
            raise NabError(f"{path}: needs the columns 'timestamp' and 'anomaly_score'")
        ti, si = header.index("timestamp"), header.index("anomaly_score")
        ts, sc = [], []
        for line_no, row in enumerate(reader, start=2):
            try:
                ts.append(row[ti]); sc.append(float(row[si]) if row[si].strip() else np.nan)
            except (IndexError, ValueError) as exc:
                raise NabError(f"{path}:{line_no}: {exc}") from None
    from citywatch.replay import ReplayError, parse_timestamps

    try:
        stamps = parse_timestamps(ts, str(path)).astype("datetime64[ns]")
    except ReplayError as exc:
        raise NabError(str(exc)) from None
    return stamps, np.asarray(sc, dtype=np.float64)


@dataclass(slots=True)
class CorpusScore:
    results: dict[str, SweepResult]
    labels: dict[str, FileLabels]

    @property
    def files(self) -> list[str]:
        return list(self.labels)

    @property
    def n_windows(self) -> int:
        return sum(len(f.active_windows) for f in self.labels.values())

    def file_points(self, profile: str, name: str) -> float:
        """A file's share of the normalised score (the shares sum to it): its raw score plus the
        A_FN of each of its windows, over the corpus' (S_perfect - S_null)."""
        res = self.results[profile]
        if res.perfect == res.null:
            return 0.0
        own_null = res.profile.fn * len(self.labels[name].active_windows)
        return 100.0 * (res.per_file[name] + own_null) / (res.perfect - res.null)


def score_results(results_dir: str | Path, windows: Mapping[str, list[list[str]]] | str | Path,
                  profiles: Iterable[Profile] = PROFILES.values()) -> CorpusScore:
    """Score every `<category>/<file>.csv` under `results_dir` against the windows file."""
    results_dir = Path(results_dir)
    if not isinstance(windows, Mapping):
        windows = load_windows(windows)
    paths = sorted(p for p in results_dir.rglob("*.csv") if p.is_file())
    if not paths:
        raise NabError(f"{results_dir}: no results CSV files")
    labels, scores = [], []
    for p in paths:
        name = p.relative_to(results_dir).as_posix()
        if name not in windows:
            raise NabError(f"{name}: not in the windows file")
        ts, sc = read_results_file(p)
        labels.append(FileLabels.from_timestamps(name, ts, windows[name]))
        scores.append(sc)
    return CorpusScore(sweep_profiles(labels, scores, profiles), {f.name: f for f in labels})
