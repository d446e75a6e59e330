"""Backtests: score detector output against labels, write a short report and a PNG per series.

Two kinds of labels:

* NAB windows (``--windows labels/windows.json``) for a results folder laid out like NAB's
  (``<category>/<file>.csv`` with ``timestamp,value,anomaly_score``, as written by
  ``citywatch replay --nab-output``): the NAB scores of the three profiles (`citywatch.nab`), the
  thresholds chosen, and each file's contribution;
* the simulator's ground truth (``--truth ground-truth.jsonl``, one JSON line per injected fault,
  see `citywatch.simulator`) for a folder written by ``citywatch replay`` from simulated readings,
  one ``<sensor>.csv`` per sensor with ``<metric>,<metric>_score,<metric>_level`` columns.

For the ground truth, a row is *anomalous* when its level is warning or critical (or, with
`threshold`, when its score reaches it). An *alert* is the start of a run of anomalous rows in a
series: the engine raises one alert per change of level, not one per row. A fault is *detected*
when one of the series it touches ((sensor, metric) for each of its metrics) has an anomalous row
from its start until `grace` sample intervals after its end (exclusive); its *delay* is the time
from the fault's first row to that row, in sample intervals (the series' median interval). An alert
is *true* when it starts in such a span of a fault on its own series.

* precision = true alerts / alerts; recall = detected faults / evaluable faults;
* dropouts (no readings to score) and faults with no row in the data are listed, not evaluated.

Outputs, in the report folder: ``report.md`` (the figures, then per-fault or per-file lines),
``summary.json`` (the same figures) and ``plots/<series>.png``: values with the alerts marked and the
labelled windows or faults shaded, and the score with the threshold.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from citywatch import nab
from citywatch.detectors.base import LEVEL_NAMES, LEVEL_NOT_EVALUATED, LEVEL_WARNING
from citywatch.replay import ReplayError, parse_timestamps

DEFAULT_GRACE = 5
DEFAULT_SCORE_THRESHOLD = 0.5
_LEVEL_CODES = {name: code for code, name in LEVEL_NAMES.items()}
NOT_OBSERVABLE_KINDS = frozenset({"dropout"})


class BacktestError(ValueError):
    """Inputs the backtest cannot use."""


# --------------------------------------------------------------------------------------------------
# Scored series, as `citywatch replay` writes them

@dataclass(slots=True)
class ScoredSeries:
    file: str  # path relative to the results folder
    sensor: str  # file stem
    metric: str
    ts_ns: np.ndarray
    value: np.ndarray
    score: np.ndarray
    level: np.ndarray | None  # LEVEL_* codes, or None when the file has no level column

    @property
    def key(self) -> str:
        return f"{self.sensor}.{self.metric}" if self.metric != "value" else self.sensor

    def interval_ns(self) -> float:
        d = np.diff(np.sort(self.ts_ns))
        d = d[d > 0]
        return float(np.median(d)) if len(d) else math.nan

    def anomalous(self, threshold: float | None) -> np.ndarray:
        if threshold is None and self.level is not None:
            return self.level >= LEVEL_WARNING
        return self.score >= (DEFAULT_SCORE_THRESHOLD if threshold is None else threshold)


def _float(text: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        return math.nan


def read_scored_file(path: Path, name: str) -> list[ScoredSeries]:
    """Series of a replay output (`c,c_score,c_level`) or a NAB results file (`value,anomaly_score`)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or "timestamp" not in rows[0]:
        raise BacktestError(f"{name}: expected a 'timestamp' column")
    header, body = rows[0], [r for r in rows[1:] if r]
    ts = parse_timestamps([r[header.index("timestamp")] for r in body], name)
    col = {h: [r[j] if j < len(r) else "" for r in body] for j, h in enumerate(header)}
    sensor = Path(name).stem
    if "anomaly_score" in col:
        pairs = [("value", "anomaly_score", None)]
    else:
        pairs = [(h, f"{h}_score", f"{h}_level") for h in header if f"{h}_score" in col]
    if not pairs:
        raise BacktestError(f"{name}: no score columns ('anomaly_score' or '<metric>_score')")
    out = []
    for metric, score_col, level_col in pairs:
        level = None
        if level_col and level_col in col:
            level = np.array([_LEVEL_CODES.get(x.strip(), LEVEL_NOT_EVALUATED) for x in col[level_col]], np.int8)
        out.append(ScoredSeries(name, sensor, metric, ts, np.array([_float(x) for x in col.get(metric, [""] * len(body))]),
                                np.nan_to_num(np.array([_float(x) for x in col[score_col]]), nan=0.0), level))
    return out


def read_scored(path: str | Path) -> list[ScoredSeries]:
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.csv") if p.is_file())
    if not files:
        raise BacktestError(f"{path}: no result CSV files")
    out: list[ScoredSeries] = []
    for p in files:
        try:
            out += read_scored_file(p, p.name if p == path else p.relative_to(path).as_posix())
        except ReplayError as exc:
            raise BacktestError(str(exc)) from None
    return out


# --------------------------------------------------------------------------------------------------
# Simulator ground truth

def export_simulation(simulator, t0: float, t1: float, out_dir: str | Path,
                      truth_path: str | Path | None = None) -> tuple[list[Path], Path]:
    """Write a simulated span [t0, t1) (epoch s) as `citywatch replay` input, one wide
    `<sensor>.csv` per sensor (timestamps in ISO 8601, UTC), and its faults as ground-truth lines in
    the simulator's format (default: `ground-truth.jsonl` beside `out_dir`). Returns (CSV files,
    truth file)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for sensor_id in simulator.sims:
        ts_ms, values = simulator.readings(sensor_id, t0, t1)
        metrics = list(values)
        path = out_dir / f"{sensor_id}.csv"
        stamps = np.asarray(ts_ms, dtype="datetime64[ms]")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", *metrics])
            cols = [values[m].tolist() for m in metrics]
            for i, stamp in enumerate(stamps):
                w.writerow([f"{stamp}Z", *(c[i] for c in cols)])
        files.append(path)
    truth = Path(truth_path) if truth_path is not None else out_dir.parent / "ground-truth.jsonl"
    with open(truth, "w", encoding="utf-8") as fh:
        for fault in simulator.faults(t0, t1):
            if fault.overlaps(t0, t1):
                fh.write(json.dumps(fault.to_json()) + "\n")
    return files, truth



@dataclass(slots=True)
class FaultResult:
    id: str
    kind: str
    sensors: list[str]
    metrics: list[str]
    start_ms: int
    end_ms: int
    status: str  # detected | missed | not observable | no data
    series: list[str] = field(default_factory=list)  # the scored series it touches
    delay_intervals: float | None = None
    detected_in: str | None = None


@dataclass(slots=True)
class TruthScore:
    faults: list[FaultResult]
    alerts: int
    true_alerts: int
    threshold: float | None
    grace: int
    alerts_by_series: dict[str, int]
    true_alerts_by_series: dict[str, int]

    @property
    def evaluated(self) -> list[FaultResult]:
        return [f for f in self.faults if f.status in ("detected", "missed")]

    @property
    def detected(self) -> list[FaultResult]:
        return [f for f in self.faults if f.status == "detected"]

    @property
    def precision(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return len(self.detected) / len(self.evaluated) if self.evaluated else None

    @property
    def delays(self) -> list[float]:
        return [f.delay_intervals for f in self.detected if f.delay_intervals is not None]

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for f in self.faults:
            row = out.setdefault(f.kind, {"faults": 0, "evaluated": 0, "detected": 0})
            row["faults"] += 1
            row["evaluated"] += f.status in ("detected", "missed")
            row["detected"] += f.status == "detected"
        return out

    def summary(self) -> dict[str, Any]:
        d = self.delays
        return {
            "faults": len(self.faults), "evaluated_faults": len(self.evaluated), "detected_faults": len(self.detected),
            "alerts": self.alerts, "true_alerts": self.true_alerts,
            "precision": self.precision, "recall": self.recall,
            "delay_intervals": {"mean": float(np.mean(d)) if d else None, "median": float(np.median(d)) if d else None,
                                "max": float(np.max(d)) if d else None},
            "threshold": self.threshold, "grace_intervals": self.grace, "by_kind": self.by_kind(),
        }


def load_truth(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for k in ("id", "kind", "sensors", "start_ms", "end_ms"):
                    row[k]  # noqa: B018 - presence check
            except (ValueError, KeyError, TypeError) as exc:
                raise BacktestError(f"{path}:{line_no}: not a ground-truth line ({exc})") from None
            rows.append(row)
    return rows


def _fault_metrics(row: dict[str, Any]) -> list[str]:
    return list(row.get("metrics") or ([row["metric"]] if row.get("metric") else []))


def evaluate_truth(series: Sequence[ScoredSeries], truth: Iterable[dict[str, Any]], *,
                   threshold: float | None = None, grace: int = DEFAULT_GRACE) -> TruthScore:
    by_key = {(s.sensor, s.metric): s for s in series}
    anomalous = {k: s.anomalous(threshold) for k, s in by_key.items()}
    order = {k: np.argsort(s.ts_ns, kind="stable") for k, s in by_key.items()}
    # Alerts: starts of runs of anomalous rows, in time order per series.
    alert_rows: dict[tuple[str, str], np.ndarray] = {}
    for k, a in anomalous.items():
        a_sorted = a[order[k]]
        starts = a_sorted & ~np.concatenate(([False], a_sorted[:-1]))
        alert_rows[k] = np.flatnonzero(starts)  # positions in time order
    true_alert = {k: np.zeros(len(r), bool) for k, r in alert_rows.items()}

    results = []
    for row in truth:
        metrics = _fault_metrics(row)
        res = FaultResult(row["id"], row["kind"], list(row["sensors"]), metrics, int(row["start_ms"]), int(row["end_ms"]),
                          "no data")
        if row["kind"] in NOT_OBSERVABLE_KINDS:
            res.status = "not observable"
            results.append(res)
            continue
        best: tuple[float, str] | None = None
        for sensor in row["sensors"]:
            for metric in metrics:
                k = (sensor, metric)
                s = by_key.get(k)
                if s is None:
                    continue
                ts = s.ts_ns[order[k]]
                a = int(np.searchsorted(ts, res.start_ms * 1_000_000, side="left"))
                b = int(np.searchsorted(ts, res.end_ms * 1_000_000, side="left"))
                if b <= a:
                    continue  # no reading of this series during the fault
                res.series.append(s.key)
                hi = min(len(ts), b + grace)
                hits = np.flatnonzero(anomalous[k][order[k]][a:hi])
                starts = alert_rows[k]
                true_alert[k] |= (starts >= a) & (starts < hi)
                if len(hits):
                    step = s.interval_ns()
                    delay = (ts[a + hits[0]] - ts[a]) / step if step and not math.isnan(step) else float(hits[0])
                    if best is None or delay < best[0]:
                        best = (float(delay), s.key)
        if res.series:
            res.status = "detected" if best else "missed"
            if best:
                res.delay_intervals, res.detected_in = round(best[0], 3), best[1]
        results.append(res)
    alerts = sum(len(r) for r in alert_rows.values())
    true_alerts = sum(int(t.sum()) for t in true_alert.values())
    return TruthScore(results, alerts, true_alerts, threshold, grace,
                      {by_key[k].key: len(r) for k, r in alert_rows.items()},
                      {by_key[k].key: int(t.sum()) for k, t in true_alert.items()})


# --------------------------------------------------------------------------------------------------
# Plots

def plot_series(path: Path, s: ScoredSeries, spans: Sequence[tuple[int, int, str]], alerts: np.ndarray,
                threshold: float | None, title: str) -> Path:
    """Values (alerts marked, spans shaded) above the score (threshold drawn). Spans in ns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = s.ts_ns.astype("datetime64[ns]").astype("datetime64[ms]")
    fig, (ax_v, ax_s) = plt.subplots(2, 1, figsize=(12, 5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    try:
        ax_v.plot(t, s.value, lw=0.7, color="tab:blue", label="value")
        if alerts.any():
            ax_v.scatter(t[alerts], s.value[alerts], s=12, color="tab:red", zorder=3, label="alert")
        ax_s.plot(t, s.score, lw=0.7, color="tab:purple", label="score")
        if threshold is not None:
            ax_s.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:.3g}")
        colours: dict[str, str] = {"probation": "0.6"}
        palette = iter(["tab:orange", "tab:green", "tab:olive", "tab:cyan", "tab:pink", "tab:brown"] * 10)
        labelled: set[str] = set()
        for lo, hi, label in spans:
            first = label not in labelled
            labelled.add(label)
            colour = colours.get(label) or next(palette)
            x0, x1 = np.datetime64(int(lo), "ns").astype("datetime64[ms]"), np.datetime64(int(hi), "ns").astype("datetime64[ms]")
            for ax in (ax_v, ax_s):
                ax.axvspan(x0, x1, color=colour, alpha=0.25, label=label if ax is ax_v and first else None)
            colours[label] = colour
        ax_s.set_ylim(-0.02, 1.02)
        ax_v.set_title(title, fontsize=10)
        ax_v.legend(loc="upper left", fontsize=7)
        ax_s.legend(loc="upper left", fontsize=7)
        fig.autofmt_xdate()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return path


def _png_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key) + ".png"


# --------------------------------------------------------------------------------------------------
# Reports

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def backtest_truth(results: str | Path, truth: str | Path, report_dir: str | Path, *, threshold: float | None = None,
                   grace: int = DEFAULT_GRACE, plots: bool = True) -> TruthScore:
    series = read_scored(results)
    rows = load_truth(truth)
    score = evaluate_truth(series, rows, threshold=threshold, grace=grace)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = score.summary()
    (report_dir / "summary.json").write_text(json.dumps(
        {**summary, "faults_detail": [asdict(f) for f in score.faults]}, indent=2))
    d = summary["delay_intervals"]
    how = "level warning or critical" if threshold is None else f"score >= {threshold:g}"
    lines = [
        "# Backtest against the simulator's ground truth", "",
        f"Results `{Path(results).name}`, truth `{Path(truth).name}`; anomalous rows: {how}; "
        f"a fault counts as detected up to {grace} sample intervals after its end.", "",
        "| figure | value |", "|---|---|",
        f"| series scored | {len(series)} |",
        f"| faults (evaluated / in truth) | {len(score.evaluated)} / {len(score.faults)} |",
        f"| detected faults | {len(score.detected)} |",
        f"| recall | {_pct(score.recall)} |",
        f"| alerts (true / all) | {score.true_alerts} / {score.alerts} |",
        f"| precision | {_pct(score.precision)} |",
        "| detection delay, sample intervals (mean / median / max) | "
        + (" / ".join(f"{d[k]:.1f}" for k in ("mean", "median", "max")) if d["mean"] is not None else "n/a") + " |",
        "", "## By kind", "", "| kind | faults | evaluated | detected | recall |", "|---|---|---|---|---|",
    ]
    for kind, row in sorted(score.by_kind().items()):
        rec = row["detected"] / row["evaluated"] if row["evaluated"] else None
        lines.append(f"| {kind} | {row['faults']} | {row['evaluated']} | {row['detected']} | {_pct(rec)} |")
    lines += ["", "## Faults", "", "| fault | status | delay (intervals) | series |", "|---|---|---|---|"]
    for f in score.faults:
        delay = "" if f.delay_intervals is None else f"{f.delay_intervals:.1f}"
        lines.append(f"| `{f.id}` | {f.status} | {delay} | {', '.join(f.series)} |")

    if plots:
        spans_of: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
        for row in rows:
            for sensor in row["sensors"]:
                for metric in _fault_metrics(row) or []:
                    spans_of.setdefault((sensor, metric), []).append(
                        (row["start_ms"] * 1_000_000, row["end_ms"] * 1_000_000, row["kind"]))
        lines += ["", "## Plots", ""]
        for s in series:
            png = plot_series(report_dir / "plots" / _png_name(s.key), s, spans_of.get((s.sensor, s.metric), []),
                              s.anomalous(threshold), threshold, f"{s.key}: value, alerts, faults; score")
            lines.append(f"- [{s.key}](plots/{png.name})")
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
    return score


def backtest_nab(results: str | Path, windows: str | Path, report_dir: str | Path, *, plots: bool = True) -> nab.CorpusScore:
    corpus = nab.score_results(results, windows)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    std = corpus.results["standard"]
    summary = {name: {"score": r.normalised, "threshold": r.threshold, "raw": r.raw, "null": r.null,
                      "perfect": r.perfect} for name, r in corpus.results.items()}
    summary["files"] = {f: {"windows": len(corpus.labels[f].active_windows), "raw_standard": std.per_file[f],
                            "points_standard": corpus.file_points("standard", f)} for f in corpus.files}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# NAB backtest", "",
        f"Results `{Path(results).name}`: {len(corpus.files)} files, {corpus.n_windows} windows.", "",
        "| profile | score | threshold |", "|---|---|---|",
        *[f"| {name} | {r.normalised:.2f} | {r.threshold:.6f} |" for name, r in corpus.results.items()],
        "", "## Files (standard profile)", "", "| file | windows | raw | points |", "|---|---|---|---|",
        *[f"| {f} | {len(corpus.labels[f].active_windows)} | {std.per_file[f]:.3f} | "
          f"{corpus.file_points('standard', f):.2f} |" for f in corpus.files],
    ]
    if plots:
        lines += ["", "## Plots", ""]
        for s in read_scored(results):
            labels = corpus.labels[s.file]
            spans = [(int(s.ts_ns[l]), int(s.ts_ns[r]), "window") for l, r in labels.window_rows]
            if labels.probation:
                spans.append((int(s.ts_ns[0]), int(s.ts_ns[labels.probation - 1]), "probation"))
            alerts = (s.score >= std.threshold) & (np.arange(len(s.score)) >= labels.probation)
            png = plot_series(report_dir / "plots" / _png_name(s.file[:-4] if s.file.endswith(".csv") else s.file),
                              s, spans, alerts, std.threshold, f"{s.file}: value, detections, windows; score")
            lines.append(f"- [{s.file}](plots/{png.name})")
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
    return corpus


# --------------------------------------------------------------------------------------------------
# Command line

def add_arguments(p) -> None:
    p.add_argument("results", help="a folder (or file) of scores written by `citywatch replay` (--nab-output for NAB)")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--windows", metavar="FILE", help="NAB windows file (labels/windows.json): NAB scoring")
    labels.add_argument("--truth", metavar="FILE",
                        help="the simulator's ground-truth JSON lines: precision, recall, detection delay")
    p.add_argument("--report", "-o", default="backtest-report", metavar="DIR",
                   help="where report.md, summary.json and plots/ go (default: backtest-report)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="with --truth: a row is anomalous when its score >= T (default: its level is warning or "
                        "critical, or score >= 0.5 without a level column)")
    p.add_argument("--grace", type=int, default=DEFAULT_GRACE, metavar="N",
                   help=f"with --truth: detections up to N sample intervals after a fault's end count (default: {DEFAULT_GRACE})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG per series")


def run(args) -> int:
    import sys

    try:
        if args.windows:
            corpus = backtest_nab(args.results, args.windows, args.report, plots=not args.no_plots)
            for name, r in corpus.results.items():
                print(f"{name:<20} {r.normalised:7.2f}  (threshold {r.threshold:.6f})")
        else:
            score = backtest_truth(args.results, args.truth, args.report, threshold=args.threshold, grace=args.grace,
                                   plots=not args.no_plots)
            print(f"faults evaluated {len(score.evaluated)}, detected {len(score.detected)} (recall {_pct(score.recall)}); "
                  f"alerts {score.alerts}, true {score.true_alerts} (precision {_pct(score.precision)})")
    except (BacktestError, nab.NabError, OSError) as exc:
        print(f"citywatch backtest: {exc}", file=sys.stderr)
        return 2
    print(f"report: {Path(args.report) / 'report.md'}")
    return 0
