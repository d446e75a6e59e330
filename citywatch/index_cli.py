"""`citywatch index NAME --input FILE.csv [--output FILE.csv]`: official indices over a CSV file.

NAME is one of ``vn-aqi``, ``us-aqi``, ``vn-wqi``, ``fire``, ``traffic``. The input CSV has a
``timestamp`` column (RFC 3339 / ISO 8601, e.g. ``2026-11-27T08:00:00+07:00``, or epoch seconds)
and metric columns named as in the sensor registry; an empty cell is a missing value. Output goes
to `--output` or stdout, CSV with the columns ``timestamp, value, category, label`` plus
``dominant`` where it applies and a few index-specific ones:

* ``vn-aqi``, ``us-aqi``: columns among ``pm25, pm10, o3, no2, so2, co`` (ug/m3). Each row is an
  hourly mean whose timestamp marks the *start* of the hour (so it must be on the hour). The
  output row for hour t uses the hours up to and including t (missing hours are gaps in the
  NowCast); rows come out in time order; ``category`` is 1..6. ``--period daily`` gives one row per local day (``--utc-offset``,
  default +7 h, Vietnam) instead, stamped at local midnight.
* ``vn-wqi``: one sample per row; columns among the parameters of
  `citywatch.detectors.indices.vn_wqi.PARAMETERS` (``pH``, ``temperature``, ``dissolvedOxygen``,
  ``NH4``, ``BOD5``, ``COD``, ``PO4``, ``coliform`` ...); ``dominant`` is the parameter with the
  lowest sub-index.
* ``fire``: ``temperature`` (°C), ``relativeHumidity`` (fraction 0..1), ``precipitation`` (mm per
  reading) at any interval. Per local day: t13 and RH13 are the reading nearest 13:00 local time
  within 30 minutes, the rain is the day's sum; one row per day from the first to the last,
  stamped at local midnight, ``value`` the Nesterov index P and ``category`` the level I..V.
* ``traffic``: ``intensity`` (vehicles in the interval), ``averageVehicleSpeed`` (km/h) and
  optionally ``occupancy`` (fraction) and per-class counts (``motorbike``, ``car`` ...). ``value``
  is the speed as % of `--free-flow-speed`, ``category`` the urban-street LOS letter (F also when
  v/c > 1 with `--capacity`); extra columns flow_veh_h, flow_pcu_h, occupancy_pct, tti, vc.

Errors in the input (missing file or column, bad timestamp or number) exit with code 2 and a
message naming the line.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from citywatch.detectors.indices import fire_danger as fire_mod
from citywatch.detectors.indices import traffic as traffic_mod
from citywatch.detectors.indices import us_aqi as us_mod
from citywatch.detectors.indices import vn_aqi as vn_mod
from citywatch.detectors.indices import vn_wqi as wqi_mod

__all__ = ["INDEX_NAMES", "add_arguments", "run"]

INDEX_NAMES = ("vn-aqi", "us-aqi", "vn-wqi", "fire", "traffic")
AQI_COLUMNS = ("pm25", "pm10", "o3", "no2", "so2", "co")
HOUR = 3600


class InputError(Exception):
    """A problem with the input file: reported with exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `index` command's arguments to `parser`."""
    parser.add_argument("name", choices=INDEX_NAMES, metavar="NAME", help=f"the index: {', '.join(INDEX_NAMES)}")
    parser.add_argument("--input", "-i", required=True, type=Path, help="input CSV: timestamp + metric columns")
    parser.add_argument("--output", "-o", type=Path, default=None, help="output CSV (default: stdout)")
    parser.add_argument("--period", choices=("hourly", "daily"), default="hourly",
                        help="AQIs: one row per input hour (default) or per local day")
    parser.add_argument("--utc-offset", type=float, default=7.0, metavar="HOURS",
                        help="local time for days and 13:00 readings, hours east of UTC (default: 7, Vietnam)")
    parser.add_argument("--weighted", action="store_true", help="vn-wqi: formula 5 (group IV weight 2, V weight 1)")
    parser.add_argument("--rain-reset", type=float, default=fire_mod.RAIN_RESET_MM, metavar="MM",
                        help=f"fire: daily rain that resets the index (default: {fire_mod.RAIN_RESET_MM:g})")
    parser.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="traffic: counting interval (default: the median spacing of the timestamps)")
    parser.add_argument("--free-flow-speed", type=float, default=50.0, metavar="KMH",
                        help="traffic: free-flow speed in km/h (default: 50)")
    parser.add_argument("--lanes", type=int, default=1, help="traffic: lanes counted (default: 1)")
    parser.add_argument("--capacity", type=float, default=None, metavar="PCU_H_LANE",
                        help="traffic: capacity per lane in PCU/h, for v/c (default: none)")


# --- input ------------------------------------------------------------------------------------


def parse_timestamp(text: str, line: int, default_tz: timezone) -> datetime:
    s = text.strip()
    if not s:
        raise InputError(f"line {line}: empty timestamp")
    try:
        if s.lstrip("-").replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(s), tz=timezone.utc)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InputError(f"line {line}: bad timestamp {text!r} (use ISO 8601 such as 2026-11-27T08:00:00+07:00)") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=default_tz)


def _number(text: str, column: str, line: int) -> float:
    s = text.strip()
    if s == "" or s.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        x = float(s)
    except ValueError:
        raise InputError(f"line {line}: column {column!r}: not a number: {text!r}") from None
    if math.isinf(x):
        raise InputError(f"line {line}: column {column!r}: not a finite number: {text!r}")
    return x


class Table:
    """The parsed CSV: timestamps (texts and datetimes), line numbers and numeric columns."""

    def __init__(self, path: Path, columns: Sequence[str], default_tz: timezone) -> None:
        try:
            fh = path.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"cannot read the file: {exc.strerror or exc}") from None
        with fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if "timestamp" not in header:
                raise InputError(f"missing column 'timestamp' (columns: {', '.join(header) or 'none'})")
            self.header = header
            self.columns = [c for c in columns if c in header]
            self.ts_text: list[str] = []
            self.ts: list[datetime] = []
            self.lines: list[int] = []
            values: dict[str, list[float]] = {c: [] for c in self.columns}
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                self.ts_text.append((row.get("timestamp") or "").strip())
                self.ts.append(parse_timestamp(row.get("timestamp") or "", line, default_tz))
                self.lines.append(line)
                for c in self.columns:
                    values[c].append(_number(row.get(c) or "", c, line))
        self.values = {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
        self.epoch = np.asarray([t.timestamp() for t in self.ts], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ts)

    def require(self, columns: Sequence[str], what: str = "") -> None:
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise InputError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}{what}")


def _hour_grid(table: Table, origin: float = None) -> tuple[np.ndarray, int, float]:
    """Grid index of each row on an hourly grid starting at `origin` (default the first hour)."""
    for i, t in enumerate(table.ts):
        if t.minute or t.second or t.microsecond:
            raise InputError(f"line {table.lines[i]}: timestamp {table.ts_text[i]!r} is not the start of an hour")
    start = table.epoch.min() if origin is None else origin
    idx = np.rint((table.epoch - start) / HOUR).astype(np.int64)
    order = np.argsort(idx, kind="stable")
    dup = np.flatnonzero(np.diff(idx[order]) == 0)
    if len(dup):
        i = order[dup[0] + 1]
        raise InputError(f"line {table.lines[i]}: duplicate hour {table.ts_text[i]!r}")
    return idx, int(idx.max()) + 1, start


def _on_grid(table: Table, idx: np.ndarray, n: int) -> dict[str, np.ndarray]:
    out = {}
    for c, v in table.values.items():
        g = np.full(n, np.nan)
        g[idx] = v
        out[c] = g
    return out


# --- formatting -------------------------------------------------------------------------------


def _fmt(x: float, decimals: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or (isinstance(x, np.floating) and np.isnan(x)):
        return ""
    if np.isinf(x):
        return "inf"
    return f"{float(x):.{decimals}f}"


def _local_midnight(day: int, tz: timezone) -> str:
    return (datetime(1970, 1, 1, tzinfo=tz) + timedelta(days=day)).isoformat()


def _category_cells(number: int, categories) -> tuple[str, str]:
    return ("", "") if number <= 0 else (str(number), categories[number - 1].label_vi)


# --- the indices ------------------------------------------------------------------------------


def _aqi(args, tz: timezone) -> tuple[list[str], list[list[str]]]:
    vn = args.name == "vn-aqi"
    mod = vn_mod if vn else us_mod
    table = Table(args.input, AQI_COLUMNS, tz)
    if vn and not {"pm25", "pm10"} & set(table.header):
        raise InputError("missing column 'pm25' or 'pm10': a VN_AQI needs PM2.5 or PM10 (QĐ 1459)")
    if not table.columns:
        raise InputError(f"missing columns: none of {', '.join(AQI_COLUMNS)}")
    header = ["timestamp", "value", "category", "label", "dominant"]
    if not len(table):
        return header, []
    offset = tz.utcoffset(None).total_seconds()
    if args.period == "hourly":
        idx, n, _ = _hour_grid(table)
        result = (vn_mod.vn_aqi_hourly if vn else us_mod.us_aqi_hourly)(_on_grid(table, idx, n))
        rows = []
        for i in np.argsort(table.epoch, kind="stable"):
            j = idx[i]
            rows.append([table.ts_text[i], _fmt(result.value[j]),
                         *_category_cells(int(result.category[j]), mod.CATEGORIES), str(result.dominant[j])])
        return header, rows
    # daily: a grid from 7 hours before the first local midnight to the end of the last local day
    lead = 7
    local = table.epoch + offset
    first_day, last_day = int(local.min() // 86400), int(local.max() // 86400)
    origin = first_day * 86400 - offset - lead * HOUR
    idx, _, _ = _hour_grid(table, origin)
    n = lead + (last_day - first_day + 1) * 24
    result = (vn_mod.vn_aqi_daily if vn else us_mod.us_aqi_daily)(_on_grid(table, idx, n), lead_hours=lead)
    rows = []
    for d in range(last_day - first_day + 1):
        rows.append([_local_midnight(first_day + d, tz), _fmt(result.value[d]),
                     *_category_cells(int(result.category[d]), mod.CATEGORIES), str(result.dominant[d])])
    return header, rows


def _wqi(args, tz: timezone) -> tuple[list[str], list[list[str]]]:
    table = Table(args.input, wqi_mod.PARAMETERS, tz)
    group_iv = [c for c in wqi_mod.GROUPS["IV"] if c in table.header]
    if not table.columns:
        raise InputError(f"missing columns: none of the VN_WQI parameters ({', '.join(wqi_mod.PARAMETERS)})")
    if "dissolvedOxygen" in table.header and "temperature" not in table.header and "DO_percent" not in table.header:
        raise InputError("missing column 'temperature': needed with 'dissolvedOxygen' for the DO saturation")
    if len(group_iv) < 3:
        raise InputError(f"missing columns: VN_WQI needs at least 3 group IV parameters "
                         f"({', '.join(wqi_mod.GROUPS['IV'])}); found {', '.join(group_iv) or 'none'}")
    header = ["timestamp", "value", "category", "label", "dominant"]
    if not len(table):
        return header, []
    r = wqi_mod.vn_wqi_index(table.values, weighted=args.weighted)
    rows = [[table.ts_text[i], _fmt(r.value[i]), *_category_cells(int(r.category[i]), wqi_mod.CATEGORIES),
             str(r.dominant[i])] for i in range(len(table))]
    return header, rows


def _fire(args, tz: timezone) -> tuple[list[str], list[list[str]]]:
    cols = ("temperature", "relativeHumidity", "precipitation")
    table = Table(args.input, cols, tz)
    table.require(cols, " (fire danger needs temperature, relativeHumidity and precipitation)")
    header = ["timestamp", "value", "category", "label", "t13", "rh13", "rain_mm"]
    if not len(table):
        return header, []
    rh = table.values["relativeHumidity"]
    if np.nanmax(np.r_[rh, 0.0]) > 1.0:
        i = int(np.nanargmax(rh))
        raise InputError(f"line {table.lines[i]}: relativeHumidity {rh[i]:g} is not a fraction 0..1 (divide % by 100)")
    local = table.epoch + tz.utcoffset(None).total_seconds()
    day = np.floor(local / 86400).astype(np.int64)
    first = int(day.min())
    n_days = int(day.max()) - first + 1
    d = day - first
    # t13 / RH13: the reading nearest 13:00 local, within 30 minutes
    dist = np.abs(local - (day * 86400 + 13 * HOUR))
    near = np.flatnonzero(dist <= 1800)
    near = near[np.lexsort((dist[near], d[near]))]  # by day, then by distance to 13:00
    first_of_day = np.r_[True, d[near][1:] != d[near][:-1]] if len(near) else np.zeros(0, bool)
    best = np.full(n_days, -1)
    best[d[near[first_of_day]]] = near[first_of_day]
    t13 = np.where(best >= 0, table.values["temperature"][np.maximum(best, 0)], np.nan)
    rh13 = np.where(best >= 0, rh[np.maximum(best, 0)], np.nan)
    prec = table.values["precipitation"]
    rain = np.bincount(d, weights=np.nan_to_num(prec), minlength=n_days)
    has_rain = np.bincount(d, weights=(~np.isnan(prec)).astype(float), minlength=n_days) > 0
    rain = np.where(has_rain, rain, np.nan)
    p, level = fire_mod.fire_danger_index(t13, rh13, rain, rain_reset_mm=args.rain_reset)
    rows = []
    for k in range(n_days):
        lvl = int(level[k])
        cells = ("", "") if lvl <= 0 else (fire_mod.LEVELS[lvl - 1].roman, fire_mod.LEVELS[lvl - 1].label_vi)
        rows.append([_local_midnight(first + k, tz), _fmt(p[k], 1), *cells, _fmt(t13[k], 1), _fmt(rh13[k], 3),
                     _fmt(rain[k], 1)])
    return header, rows


def _traffic(args, tz: timezone) -> tuple[list[str], list[list[str]]]:
    classes = tuple(traffic_mod.PCU_FACTORS_TCVN4054_PLAIN)
    table = Table(args.input, ("intensity", "averageVehicleSpeed", "occupancy") + classes, tz)
    table.require(("intensity", "averageVehicleSpeed"), " (traffic needs intensity and averageVehicleSpeed)")
    header = ["timestamp", "value", "category", "flow_veh_h", "flow_pcu_h", "occupancy_pct", "tti", "vc"]
    if not len(table):
        return header, []
    interval = args.interval
    if interval is None:
        gaps = np.diff(np.sort(table.epoch))
        gaps = gaps[gaps > 0]
        if not len(gaps):
            raise InputError("cannot infer the counting interval from the timestamps: give --interval SECONDS")
        interval = float(np.median(gaps))
    if interval <= 0 or args.lanes < 1 or args.free_flow_speed <= 0:
        raise InputError("--interval, --lanes and --free-flow-speed must be positive")
    v = table.values
    flow = traffic_mod.flow_veh_per_hour(v["intensity"], interval)
    per_class = {c: np.nan_to_num(v[c]) for c in classes if c in v}
    if per_class:
        pcu = traffic_mod.pcu_flow(per_class, interval_s=interval)
    else:
        pcu = traffic_mod.pcu_flow(total=v["intensity"], interval_s=interval)
    pct = 100.0 * traffic_mod.speed_ratio(v["averageVehicleSpeed"], args.free_flow_speed)
    vc = None if args.capacity is None else traffic_mod.vc_ratio(pcu / args.lanes, args.capacity)
    los = traffic_mod.level_of_service(pct, "urban_speed_pct", vc=vc)
    tti = traffic_mod.travel_time_index(v["averageVehicleSpeed"], args.free_flow_speed)
    occ = traffic_mod.occupancy_percent(v["occupancy"]) if "occupancy" in v else np.full(len(table), np.nan)
    rows = [[table.ts_text[i], _fmt(pct[i], 1), str(los[i]), _fmt(flow[i], 0), _fmt(pcu[i], 0), _fmt(occ[i], 1),
             _fmt(tti[i], 2), "" if vc is None else _fmt(vc[i], 2)] for i in range(len(table))]
    return header, rows


_HANDLERS = {"vn-aqi": _aqi, "us-aqi": _aqi, "vn-wqi": _wqi, "fire": _fire, "traffic": _traffic}


def run(args: argparse.Namespace) -> int:
    """Compute the index; 0 on success, 2 on an input error (message on stderr)."""
    try:
        if not -14 <= args.utc_offset <= 14:
            raise InputError("--utc-offset must be between -14 and 14 hours")
        tz = timezone(timedelta(hours=args.utc_offset))
        header, rows = _HANDLERS[args.name](args, tz)
    except InputError as exc:
        print(f"citywatch index {args.name}: {args.input}: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        _write(sys.stdout, header, rows)
    else:
        try:
            with args.output.open("w", newline="", encoding="utf-8") as fh:
                _write(fh, header, rows)
        except OSError as exc:
            print(f"citywatch index {args.name}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


def _write(fh, header: list[str], rows: list[list[str]]) -> None:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
