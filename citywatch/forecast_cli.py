"""`citywatch forecast --input FILE.csv --horizon H [--output FILE.csv]`: forecasts for staff.

The input CSV has a ``timestamp`` column (RFC 3339 / ISO 8601 such as ``2026-11-27T08:00:00+07:00``,
``2015-09-01 11:25:00`` read as UTC, or epoch seconds) and one or more value columns; an empty
cell is a missing value. Readings are averaged per hour (the hour is the bucket that starts at
the hour; hours with no reading are gaps), every column is fed hour by hour to the forecaster
(`--model`, default Holt-Winters), and the forecasts issued after the last hour come out: one row
per column and horizon 1..H with ``timestamp`` (the start of the target hour, UTC), ``column``,
``horizon``, ``value`` (the median forecast) and ``lower``/``upper`` (the central `--level`
prediction interval, empty while the history is too short to estimate it: one day of errors).

Errors in the input (missing file or column, bad timestamp or number) exit with code 2 and a
message naming the line.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from citywatch.detectors.forecast import MODELS, SeriesKeys, build_forecaster

__all__ = ["add_arguments", "hourly_means", "read_series_csv", "run", "forecast_table"]

HOUR = 3600


class InputError(Exception):
    """A problem with the input file: reported with exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", type=Path, required=True, help="CSV: timestamp + value column(s)")
    parser.add_argument("--horizon", type=int, default=24, help="hours ahead, 1..168 (default 24)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="CSV to write (default: stdout)")
    parser.add_argument("--model", choices=sorted(MODELS), default="holt_winters", help="forecast model")
    parser.add_argument("--level", type=float, default=0.8, help="prediction interval level (default 0.8)")
    parser.add_argument("--columns", default=None, help="comma-separated value columns (default: all but timestamp)")


def _parse_time(text: str, line: int) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"line {line}: bad timestamp {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_series_csv(path: Path, columns: list[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(epoch seconds, {column: values}) from a CSV with a timestamp column; NaN for empty cells."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "timestamp" not in fields:
            raise InputError(f"{path}: no 'timestamp' column (columns: {', '.join(fields) or 'none'})")
        wanted = columns or [f for f in fields if f != "timestamp"]
        missing = [c for c in wanted if c not in fields]
        if missing or not wanted:
            raise InputError(f"{path}: missing value column(s) {', '.join(missing) or '(none given)'}")
        ts: list[float] = []
        cols: dict[str, list[float]] = {c: [] for c in wanted}
        for line, row in enumerate(reader, start=2):
            ts.append(_parse_time(row["timestamp"] or "", line))
            for c in wanted:
                cell = (row.get(c) or "").strip()
                try:
                    v = float(cell) if cell else math.nan
                except ValueError:
                    raise InputError(f"line {line}: column {c}: not a number: {cell!r}") from None
                cols[c].append(v)
    if not ts:
        raise InputError(f"{path}: no rows")
    return np.asarray(ts), {c: np.asarray(v) for c, v in cols.items()}


def hourly_means(ts_s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour numbers first..last, mean per hour with NaN for hours without a finite value)."""
    ts_s, values = np.asarray(ts_s, dtype=np.float64), np.asarray(values, dtype=np.float64)
    hour = np.floor(ts_s / HOUR).astype(np.int64)
    ok = np.isfinite(values)
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros(0)
    first, last = hour[ok].min(), hour[ok].max()
    idx = hour[ok] - first
    total = np.bincount(idx, weights=values[ok], minlength=last - first + 1)
    count = np.bincount(idx, minlength=last - first + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.arange(first, last + 1), np.where(count > 0, total / np.maximum(count, 1), np.nan)


def forecast_table(hours: np.ndarray, matrix: np.ndarray, names: list[str], horizon: int, model: str = "holt_winters",
                   level: float = 0.8) -> list[dict[str, object]]:
    """Feed a (n_columns, n_hours) hourly matrix to one forecaster; rows of the last forecasts."""
    keys = SeriesKeys([("csv", n) for n in names])
    f = build_forecaster(model, keys, horizon=horizon, level=level)
    ids = np.arange(len(names))
    for j, h in enumerate(hours.tolist()):
        f.update(ids, np.full(len(ids), h), matrix[:, j])
    median, lower, upper = f.forecast(ids)
    last = f.latest_hour(ids)
    rows: list[dict[str, object]] = []
    for i, name in enumerate(names):
        for k in range(horizon):
            t = datetime.fromtimestamp(float((last[i] + k + 1) * HOUR), tz=timezone.utc)
            rows.append({"timestamp": t.isoformat().replace("+00:00", "Z"), "column": name, "horizon": k + 1,
                         "value": median[i, k], "lower": lower[i, k], "upper": upper[i, k]})
    return rows


def _cell(v: object) -> object:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def run(args) -> int:
    try:
        if not 1 <= args.horizon <= 168:
            raise InputError(f"--horizon must be 1..168 hours, got {args.horizon}")
        if not 0 < args.level < 1:
            raise InputError(f"--level must be between 0 and 1, got {args.level}")
        columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
        ts, cols = read_series_csv(args.input, columns)
        hourly = {c: hourly_means(ts, v) for c, v in cols.items()}
        hourly = {c: hv for c, hv in hourly.items() if len(hv[0])}
        if not hourly:
            raise InputError(f"{args.input}: no finite value in any column")
        first = min(int(h[0]) for h, _ in hourly.values())
        last = max(int(h[-1]) for h, _ in hourly.values())
        grid = np.arange(first, last + 1)
        names = list(hourly)
        matrix = np.full((len(names), len(grid)), np.nan)
        for i, name in enumerate(names):
            h, v = hourly[name]
            matrix[i, h - first] = v
    except InputError as exc:
        print(f"citywatch forecast: {exc}", file=sys.stderr)
        return 2
    rows = forecast_table(grid, matrix, names, args.horizon, args.model, args.level)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=["timestamp", "column", "horizon", "value", "lower", "upper"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    finally:
        if args.output:
            out.close()
    return 0
