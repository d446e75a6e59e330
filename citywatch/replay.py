"""Replay historical CSVs through the detectors, as a stream, and write per-row scores.

Input: a CSV file, or a folder of them (searched recursively). Each file has a ``timestamp`` column
(the first column if none is named so) and one or more value columns: ``timestamp,value`` or wide
``timestamp,pm25,pm10,...``. Every value column of every file is one series: the sensor is the
file (its path relative to the folder, ``/`` turned into ``.``, without ``.csv``) and the metric is
the column name. Timestamps may be ``YYYY-MM-DD HH:MM:SS`` (naive: UTC, as in NAB), ISO 8601 with
or without an offset, or epoch seconds.

The rows go through the same `Detector` interface the engine uses, in micro-batches of at most
`batch_size` readings: each holds the next rows of every series in timestamp order, sorted by
(series, time), flagged LATE / DUPLICATE by the engine's rules (at or before the newest time already
processed for the series; same series and time as the previous reading), and handed to the
detector. The batch size does not change the results. A row is scored using only the rows of its
series before it and itself.

Rows are never dropped: the output has one row per input row, in the input order.

* a blank, ``nan``/``NA``/``null`` or unreadable value is kept as a row with score 0 (it is not
  shown to the detector; unreadable values are counted and logged);
* a repeated timestamp in a series, or one older than a row already seen (rows are processed in
  timestamp order per series, so this only happens for exact repeats), is scored by the detector
  as a late/duplicate reading: it does not move the detector's state; a detector that does not
  evaluate such readings gives them score 0;
* irregular intervals are passed through as they are (event time is the row's timestamp).

Outputs: `write_scores` writes, per input file, ``timestamp`` and for each value column ``c``:
``c``, ``c_score`` (in [0, 1]) and ``c_level`` (``ok``, ``warning``, ``critical`` or
``not_evaluated``). `write_nab_results` writes the NAB results layout
``OUT/<category>/<file>.csv`` with ``timestamp,value,anomaly_score,label`` (label 0).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import structlog

from citywatch.batch import FLAG_DUPLICATE, FLAG_LATE, ReadingBatch
from citywatch.detectors.base import LEVEL_NAMES, LEVEL_NOT_EVALUATED, Detector
from citywatch.registry import SENSOR_ID_PATTERN, Registry, SeriesIndex

log = structlog.get_logger("citywatch.replay")

DetectorFactory = Callable[[SeriesIndex], Detector]
DEFAULT_BATCH_SIZE = 5000
MISSING_VALUE_TEXTS = frozenset({"", "nan", "na", "n/a", "null", "none"})


class ReplayError(ValueError):
    """An input the replay cannot read (named by file and line)."""


def default_detector(series: SeriesIndex) -> Detector:
    """The default profile: the anomaly score detector with its default configuration."""
    from citywatch.detectors.anomaly_score import AnomalyScore

    return AnomalyScore(series)


# --------------------------------------------------------------------------------------------------
# Reading

@dataclass(slots=True)
class SeriesTable:
    """One CSV file: its timestamps (as written and in ns) and its value columns."""

    name: str  # path relative to the replayed folder (or the file name)
    timestamps: list[str]
    ts_ns: np.ndarray
    columns: dict[str, np.ndarray]
    bad_values: int = 0

    def __len__(self) -> int:
        return len(self.timestamps)


def parse_timestamps(texts: Sequence[str], where: str = "") -> np.ndarray:
    """Epoch ns (int64) from epoch seconds, naive (UTC) or offset-aware ISO 8601 / NAB timestamps."""
    if len(texts) == 0:
        return np.empty(0, np.int64)
    try:
        secs = np.array([float(t) for t in texts])
    except ValueError:
        secs = None
    if secs is not None:
        if not np.isfinite(secs).all():
            raise ReplayError(f"{where}: a timestamp is not a finite number")
        return np.round(secs * 1e9).astype(np.int64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns on offsets: those take the exact path below
            return np.array(texts, dtype="datetime64[ns]").astype(np.int64)
    except (ValueError, Warning):
        pass
    out = np.empty(len(texts), np.int64)
    for i, text in enumerate(texts):
        try:
            dt = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ReplayError(f"{where}: row {i + 1}: unreadable timestamp {text!r} "
                              "(expected ISO 8601, 'YYYY-MM-DD HH:MM:SS' or epoch seconds)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
        out[i] = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return out


def _parse_value(text: str) -> float | None:
    """The value, NaN for a missing one, None if unreadable."""
    t = text.strip()
    if t.lower() in MISSING_VALUE_TEXTS:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else math.nan


def read_table(path: str | Path, name: str | None = None) -> SeriesTable:
    path = Path(path)
    name = name or path.name
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ReplayError(f"{path}: empty file (expected a header such as 'timestamp,value')")
        header = [h.strip() for h in header]
        ti = header.index("timestamp") if "timestamp" in header else 0
        value_cols = [(j, h) for j, h in enumerate(header) if j != ti]
        if not value_cols:
            raise ReplayError(f"{path}: no value column besides {header[ti]!r}")
        if len({h for _, h in value_cols}) != len(value_cols) or any(not h for _, h in value_cols):
            raise ReplayError(f"{path}: value columns need distinct, non-empty names")
        stamps: list[str] = []
        cols: list[list[float]] = [[] for _ in value_cols]
        bad: dict[str, list] = {}  # column -> [count, first line, first text]
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= ti or not row[ti].strip():
                raise ReplayError(f"{path}:{line_no}: missing timestamp")
            stamps.append(row[ti].strip())
            for k, (j, h) in enumerate(value_cols):
                v = _parse_value(row[j]) if j < len(row) else math.nan
                if v is None:
                    bad.setdefault(h, [0, line_no, row[j]])[0] += 1
                    v = math.nan
                cols[k].append(v)
    for column, (count, first_line, text) in bad.items():
        log.warning("replay_unreadable_values", file=str(path), column=column, count=count,
                    first_line=first_line, first_text=text, scored=0)
    ts = parse_timestamps(stamps, str(path))
    return SeriesTable(name, stamps, ts, {h: np.asarray(c, dtype=np.float64) for (_, h), c in zip(value_cols, cols)},
                       sum(b[0] for b in bad.values()))


def read_path(path: str | Path) -> list[SeriesTable]:
    """A CSV file, or every CSV under a folder (names relative to it, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return [read_table(path)]
    if not path.is_dir():
        raise ReplayError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*.csv") if p.is_file())
    if not files:
        raise ReplayError(f"{path}: no .csv files")
    return [read_table(p, p.relative_to(path).as_posix()) for p in files]


def sensor_id_for(name: str) -> str:
    """A registry-valid sensor id for a file name ('realTweets/x.csv' -> 'realTweets.x')."""
    stem = name[:-4] if name.lower().endswith(".csv") else name
    sid = re.sub(r"[^A-Za-z0-9_.-]", "_", stem.replace("/", "."))
    if not sid or not sid[0].isalnum():
        sid = "s" + sid
    if len(sid) > 64:
        sid = sid[:55] + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    assert SENSOR_ID_PATTERN.match(sid)
    return sid


# --------------------------------------------------------------------------------------------------
# Replaying

def _flag_late_and_duplicates(batch: ReadingBatch, newest: np.ndarray) -> None:
    """The engine's event-time rule on a (series, ts)-sorted batch; advances `newest` per series."""
    same_as_prev = np.zeros(len(batch), bool)
    same_as_prev[1:] = (batch.series[1:] == batch.series[:-1]) & (batch.ts[1:] == batch.ts[:-1])
    batch.flags[same_as_prev] |= FLAG_DUPLICATE
    batch.flags[batch.ts <= newest[batch.series]] |= FLAG_LATE
    last = batch.is_last
    newest[batch.series[last]] = np.maximum(newest[batch.series[last]], batch.ts[last])


@dataclass(slots=True)
class TableScores:
    table: SeriesTable
    score: dict[str, np.ndarray] = field(default_factory=dict)  # per column, one per row, in [0, 1]
    level: dict[str, np.ndarray] = field(default_factory=dict)  # per column, LEVEL_* (int8)


def replay(tables: Sequence[SeriesTable], detector_factory: DetectorFactory | None = None, *,
           batch_size: int = DEFAULT_BATCH_SIZE, domain: str = "air") -> list[TableScores]:
    """Stream every row of `tables` through one detector (default: `default_detector`); scores
    aligned with the input rows."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    registry = Registry({})
    series = SeriesIndex(registry)
    used: set[str] = set()
    parts_series, parts_ts, parts_value, owners = [], [], [], []
    for t_idx, table in enumerate(tables):
        base = sid = sensor_id_for(table.name)
        suffix = 1
        while sid in used:  # names that differ only in characters an id cannot hold
            sid, suffix = f"{base[:58]}-{suffix}", suffix + 1
        used.add(sid)
        sensor = registry.auto_register(sid, domain)
        for col, values in table.columns.items():
            s = series.add(sensor, col)
            parts_series.append(np.full(len(values), s, np.int32))
            parts_ts.append(table.ts_ns)
            parts_value.append(values)
            owners.append((t_idx, col))
    results = [TableScores(t) for t in tables]
    if not parts_series:
        return results
    s_all = np.concatenate(parts_series)
    ts_all = np.concatenate(parts_ts)
    v_all = np.concatenate(parts_value)
    row_all = np.concatenate([np.arange(len(p)) for p in parts_series])
    score_all = np.zeros(len(s_all))
    level_all = np.full(len(s_all), LEVEL_NOT_EVALUATED, np.int8)

    detector = (detector_factory or default_detector)(series)
    newest = np.full(len(series), np.iinfo(np.int64).min, np.int64)
    # Each series in timestamp order (ties keep the file's row order). A batch holds the next
    # `per_series` rows of every series, like a live micro-batch that carries a few readings of each
    # sensor: the detectors are vectorised across series, so this keeps replays fast. Series are
    # independent for the detectors, so their relative alignment in time does not matter.
    stream = np.lexsort((row_all, ts_all, s_all))
    starts = np.flatnonzero(np.concatenate(([True], s_all[stream][1:] != s_all[stream][:-1])))
    rank = np.arange(len(stream)) - np.repeat(starts, np.diff(np.append(starts, len(stream))))
    per_series = max(1, batch_size // max(1, len(series)))
    batch_of = rank // per_series
    by_batch = np.argsort(batch_of, kind="stable")  # keeps (series, time) order inside each batch
    bounds = np.searchsorted(batch_of[by_batch], np.arange(int(batch_of.max()) + 2))
    for b in range(len(bounds) - 1):
        # More series than `batch_size`: one row per series, cut into pieces of `batch_size`.
        for lo in range(bounds[b], bounds[b + 1], batch_size):
            rows = stream[by_batch[lo: min(lo + batch_size, bounds[b + 1])]]
            batch = ReadingBatch.from_columns(s_all[rows], ts_all[rows], v_all[rows])
            _flag_late_and_duplicates(batch, newest)
            out = detector.process(batch, skip=np.isnan(batch.value))
            score_all[rows] = np.clip(np.nan_to_num(out.score, nan=0.0), 0.0, 1.0)
            level_all[rows] = out.level

    offset = 0
    for (t_idx, col), part in zip(owners, parts_series):
        n = len(part)
        results[t_idx].score[col] = score_all[offset: offset + n]
        results[t_idx].level[col] = level_all[offset: offset + n]
        offset += n
    return results


# --------------------------------------------------------------------------------------------------
# Writing

def _fmt(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def write_scores(results: Sequence[TableScores], out_dir: str | Path) -> list[Path]:
    """Per input file, `timestamp` then `<c>,<c>_score,<c>_level` for each value column."""
    out_dir = Path(out_dir)
    written = []
    for res in results:
        path = out_dir / res.table.name
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = list(res.table.columns)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp"] + [x for c in cols for x in (c, f"{c}_score", f"{c}_level")])
            values = [res.table.columns[c].tolist() for c in cols]
            scores = [res.score[c].tolist() for c in cols]
            levels = [res.level[c].tolist() for c in cols]
            for i, stamp in enumerate(res.table.timestamps):
                row = [stamp]
                for k in range(len(cols)):
                    row += [_fmt(values[k][i]), f"{scores[k][i]:.6f}", LEVEL_NAMES[levels[k][i]]]
                w.writerow(row)
        written.append(path)
    return written


def write_nab_results(results: Sequence[TableScores], out_dir: str | Path) -> list[Path]:
    """NAB's results layout: OUT/<category>/<file>.csv with timestamp,value,anomaly_score,label."""
    out_dir = Path(out_dir)
    written = []
    for res in results:
        if len(res.table.columns) != 1:
            raise ReplayError(f"{res.table.name}: NAB output needs exactly one value column, "
                              f"found {len(res.table.columns)}")
        (col,) = res.table.columns
        path = out_dir / res.table.name
        path.parent.mkdir(parents=True, exist_ok=True)
        values, scores = res.table.columns[col].tolist(), res.score[col].tolist()
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            for stamp, v, s in zip(res.table.timestamps, values, scores):
                w.writerow([stamp, _fmt(v), f"{s:.6f}", 0])
        written.append(path)
    return written


def replay_nab(data_dir: str | Path, out_dir: str | Path, detector_factory: DetectorFactory | None = None,
               *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Path]:
    """`citywatch replay --nab-output OUT DIR`: score a NAB-style data folder into OUT."""
    return write_nab_results(replay(read_path(data_dir), detector_factory, batch_size=batch_size), out_dir)


# --------------------------------------------------------------------------------------------------
# Command line

def add_arguments(p) -> None:
    p.add_argument("path", help="a CSV file (timestamp,value or wide timestamp,<metric>,...) or a folder of them")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", "-o", default="replay-scores", metavar="DIR",
                     help="write <c>,<c>_score,<c>_level per value column, one file per input (default: replay-scores)")
    out.add_argument("--nab-output", default=None, metavar="DIR",
                     help="write NAB results instead: DIR/<category>/<file>.csv with timestamp,value,anomaly_score,label")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"readings per detector batch; does not change the scores (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--domain", choices=("air", "water", "traffic", "forest"), default="air",
                   help="domain given to the replayed series (default: air)")


def run(args) -> int:
    import sys

    from citywatch.cli import setup_logging

    setup_logging("warning")  # unreadable values are logged to stderr, one line per file and column
    try:
        tables = read_path(args.path)
        results = replay(tables, batch_size=args.batch_size, domain=args.domain)
        if args.nab_output:
            written = write_nab_results(results, args.nab_output)
        else:
            written = write_scores(results, args.output)
    except ReplayError as exc:
        print(f"citywatch replay: {exc}", file=sys.stderr)
        return 2
    rows = sum(len(t) for t in tables)
    bad = sum(t.bad_values for t in tables)
    where = args.nab_output or args.output
    print(f"replayed {rows} rows of {len(tables)} file(s) into {where} ({len(written)} file(s))"
          + (f"; {bad} unreadable value(s) scored 0" if bad else ""))
    return 0
