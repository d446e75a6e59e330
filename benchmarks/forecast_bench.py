"""Rolling-origin backtest of the forecasters: MASE against seasonal-naive, and interval coverage.

    python benchmarks/forecast_bench.py --nab PATH/TO/NAB/data [--weeks 8] [--horizon 24] [--scale 1000]

(``--nab`` is the corpus' ``data`` directory, the one holding ``realTraffic/``.)

Series:

* the simulator (`citywatch.simulator.Simulator`, the Biên Hòa registry, no faults): hourly VN_AQI
  and US AQI per air station (computed from the hourly means with the index functions the engine
  uses), hourly means of the water stations' probes, hourly vehicle counts of the traffic cameras,
  over `--weeks` simulated weeks;
* NAB real sensor series (`--nab`, the corpus' ``data`` directory): ``realTraffic/*`` (speed,
  occupancy, travel time of road sensors) and the temperature series of ``realKnownCause``
  (``ambient_temperature_system_failure``, ``machine_temperature_system_failure``), averaged per hour.

Every model runs online over every series at once; at every hour after a burn-in (two weeks for
the simulator, one week for NAB) its forecasts for 1..H hours ahead are compared with what came.
MASE = mean absolute error / mean absolute one-day-seasonal difference of the series (the same
scale for every model, so the ratio of two models' MASE is the ratio of their errors), averaged
over all (series, origin, horizon) with a value. Coverage = share of those values inside the 80 %
interval (when the model had one). Targets: MASE at least 15 % below seasonal-naive's (the better
of the daily and the weekly seasonal-naive), 80 % intervals covering 75-85 %. They are judged
twice: with the engine's default model per kind of series, and with the forecast combination
(`combination`) as the one configuration of every series.

First, what a closed hour costs the engine: the update and the forecasts of `--scale` series at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from citywatch.detectors.forecast import SeriesKeys, build_forecaster
from citywatch.forecast_cli import hourly_means, read_series_csv

HOUR = 3600
NAB_SERIES = ("realTraffic/*.csv", "realKnownCause/*temperature*.csv")  # the real sensor series
MODELS = {
    "snaive_24": ("seasonal_naive", {"period": 24}),
    "snaive_168": ("seasonal_naive", {"period": 168}),
    "holt_winters": ("holt_winters", {}),
    "holt_winters_weekly": ("holt_winters", {"omega": 0.1}),
    "ar_deseasonalised": ("ar_deseasonalised", {}),
    "holt_winters_robust": ("holt_winters", {"robust": 2.0}),
    "recent_median": ("recent_median", {"window": 24}),
    "combination": ("combination", {}),
}
# The model the engine runs for each kind of series (`forecasts.models`, citywatch/forecast_stage.py);
# the NAB series (speeds, occupancies, travel times, temperatures) are judged with the general default.
ENGINE_MODEL = {"simulator/aqi": "holt_winters", "simulator/water": "holt_winters",
                "simulator/traffic": "ar_deseasonalised"}
# One configuration for every series (`forecasts.models: combination` for every kind): nothing chosen per series.
ONE_CONFIGURATION = "combination"


def simulator_series(weeks: int, seed: int, start: float) -> dict[str, tuple[list[str], np.ndarray]]:
    """{group: (series names, (n, hours) matrix)} of hourly simulated series."""
    from importlib import resources

    from citywatch.detectors.indices import us_aqi, vn_aqi
    from citywatch.registry import Registry
    from citywatch.simulator import Simulator, continuous_metrics
    from citywatch.water_index import QCVN08_CLASS_LIMITS, QCVN08_HEALTH_LIMITS

    registry = Registry.load(Path(str(resources.files("citywatch.sample_config").joinpath("sensors/bienhoa.yaml"))))
    sim = Simulator(registry, seed=seed, start=start)
    t0, t1 = start, start + weeks * 7 * 86400
    n_hours = int((t1 - t0) // HOUR)
    first_hour = int(t0 // HOUR)

    def hourly(ts_ms: np.ndarray, v: np.ndarray, how: str = "mean") -> np.ndarray:
        idx = (ts_ms // 1000 // HOUR).astype(np.int64) - first_hour
        ok = np.isfinite(v) & (idx >= 0) & (idx < n_hours)
        total = np.bincount(idx[ok], weights=v[ok], minlength=n_hours)
        count = np.bincount(idx[ok], minlength=n_hours)
        if how == "sum":
            return np.where(count > 0, total, np.nan)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    groups: dict[str, tuple[list[str], list[np.ndarray]]] = {"aqi": ([], []), "water": ([], []), "traffic": ([], [])}
    judged = set(QCVN08_CLASS_LIMITS) | set(QCVN08_HEALTH_LIMITS) | {"temperature", "conductivity", "turbidity"}
    for sid in sorted(sim.sims):
        s = sim.sims[sid].sensor
        if s.domain not in ("air", "water", "traffic"):
            continue
        ts, vals = sim.readings(sid, t0, t1)
        if s.domain == "air":
            window = {p: hourly(ts, vals[p])[None, :] for p in vn_aqi.POLLUTANTS if p in vals}
            if "pm25" not in window:
                continue
            for name, fn in (("vn_aqi", vn_aqi.vn_aqi_hourly), ("us_aqi", us_aqi.us_aqi_hourly)):
                groups["aqi"][0].append(f"{sid}/{name}")
                groups["aqi"][1].append(fn(window).value[0])
        elif s.domain == "water":
            for m in continuous_metrics(s):
                if m in judged and m in vals:
                    groups["water"][0].append(f"{sid}/{m}")
                    groups["water"][1].append(hourly(ts, vals[m]))
        elif "intensity" in vals:
            groups["traffic"][0].append(f"{sid}/intensity")
            groups["traffic"][1].append(hourly(ts, vals["intensity"], "sum"))
    return {g: (names, np.vstack(rows)) for g, (names, rows) in groups.items() if rows}


def nab_series(nab_dir: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    paths = sorted(p for pattern in NAB_SERIES for p in nab_dir.glob(pattern))
    if not paths:
        raise SystemExit(f"{nab_dir}: no NAB series ({', '.join(NAB_SERIES)}); give the corpus' data directory")
    for path in paths:
        rel = path.relative_to(nab_dir).as_posix()
        ts, cols = read_series_csv(path, ["value"])
        _, v = hourly_means(ts, cols["value"])
        out[rel] = ([rel], v[None, :])
    return out


def backtest(matrix: np.ndarray, model: str, params: dict, horizon: int, burn_in: int, level: float = 0.8
             ) -> dict[str, float]:
    """Sums over every (series, origin >= burn_in, horizon) with an observed value."""
    n, T = matrix.shape
    keys = SeriesKeys([(str(i), "y") for i in range(n)])
    f = build_forecaster(model, keys, horizon=horizon, level=level, **params)
    ids = np.arange(n)
    abs_err = np.zeros(n)
    count = np.zeros(n)
    covered = inside_n = 0
    hz = np.arange(1, horizon + 1)
    for t in range(T - 1):
        f.update(ids, np.full(n, t), matrix[:, t])
        if t < burn_in:
            continue
        median, lower, upper = f.forecast(ids)
        target = t + hz
        ok_t = target < T
        actual = np.full((n, horizon), np.nan)
        actual[:, ok_t] = matrix[:, target[ok_t]]
        have = np.isfinite(actual) & np.isfinite(median)
        # a model without a forecast for a value (e.g. seasonal-naive after a gap) is charged
        # the persistence forecast instead, so every model is scored on the same values
        last = f.latest_hour(ids)
        fallback = matrix[ids, np.clip(last, 0, T - 1)]
        pred = np.where(np.isfinite(median), median, fallback[:, None])
        scored = np.isfinite(actual) & np.isfinite(pred)
        abs_err += np.where(scored, np.abs(actual - pred), 0.0).sum(axis=1)
        count += scored.sum(axis=1)
        band = have & np.isfinite(lower) & np.isfinite(upper)
        covered += int(((actual >= lower) & (actual <= upper) & band).sum())
        inside_n += int(band.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.nanmean(np.abs(matrix[:, 24:] - matrix[:, :-24]), axis=1)
        mase = np.nanmean(np.where(count > 0, abs_err / np.maximum(count, 1) / scale, np.nan))
    return {"mase": float(mase), "coverage": covered / inside_n if inside_n else float("nan"), "n": int(count.sum())}


def run_group(title: str, matrix: np.ndarray, horizon: int, burn_in: int, models: dict) -> dict[str, dict]:
    results = {}
    for label, (model, params) in models.items():
        t = time.perf_counter()
        results[label] = backtest(matrix, model, params, horizon, burn_in)
        results[label]["seconds"] = time.perf_counter() - t
    base = min(results["snaive_24"]["mase"], results["snaive_168"]["mase"])
    print(f"\n{title}  ({matrix.shape[0]} series x {matrix.shape[1]} h, burn-in {burn_in} h, H = {horizon})")
    print(f"  {'model':<20}{'MASE':>8}{'vs best snaive':>16}{'80% coverage':>14}{'values':>10}{'s':>7}")
    for label, r in results.items():
        ratio = r["mase"] / base if base > 0 else float("nan")
        print(f"  {label:<20}{r['mase']:>8.3f}{ratio:>15.0%} {r['coverage']:>13.1%}{r['n']:>10}{r['seconds']:>7.1f}")
    return results


def engine_scale(n_series: int, horizon: int, weeks: int = 2) -> None:
    """What one closed hour costs the engine: update + forecast of `n_series` series at once."""
    keys = SeriesKeys([(str(i), "y") for i in range(n_series)])
    rng = np.random.default_rng(0)
    ids = np.arange(n_series)
    for model in ("holt_winters", "ar_deseasonalised", "combination"):
        f = build_forecaster(model, keys, horizon=horizon)
        timings = []
        for t in range(weeks * 168):
            y = 50 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 3, n_series)
            t0 = time.perf_counter()
            f.update(ids, np.full(n_series, t), y)
            f.forecast(ids)
            timings.append(time.perf_counter() - t0)
        parts = [f, *getattr(f, "members", {}).values()]  # a combination holds its members' states too
        state = sum(v[:n_series].nbytes for p in parts for d in (p.state, p.before) for v in d.values())
        print(f"  {model:<20} {n_series} series: {1000 * np.median(timings[-168:]):.1f} ms per closed hour "
              f"(update + {horizon} h forecasts with intervals), state {state / n_series / 1024:.0f} KiB per series")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nab", type=Path, default=None, help="the NAB corpus' data directory")
    ap.add_argument("--weeks", type=int, default=8, help="simulated weeks (default 8)")
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", default="2026-01-05T00:00:00+07:00", help="simulated start (a Monday)")
    ap.add_argument("--skip-simulator", action="store_true")
    ap.add_argument("--scale", type=int, default=1000, help="series for the per-hour cost (0: skip)")
    args = ap.parse_args(argv)
    if args.scale:
        print("engine cost")
        engine_scale(args.scale, args.horizon)
    from datetime import datetime

    summary: list[tuple[str, dict[str, dict]]] = []
    if not args.skip_simulator:
        t = time.perf_counter()
        sim = simulator_series(args.weeks, args.seed, datetime.fromisoformat(args.start).timestamp())
        print(f"simulated {args.weeks} weeks in {time.perf_counter() - t:.0f} s")
        for group, (names, matrix) in sim.items():
            summary.append((f"simulator/{group}", run_group(f"simulator: {group}", matrix, args.horizon, 336, MODELS)))
    if args.nab is not None:
        for rel, (names, matrix) in nab_series(args.nab).items():
            summary.append((f"nab/{rel}", run_group(f"NAB: {rel}", matrix, args.horizon, 168, MODELS)))
    for title, pick in (("the engine's default models (per kind of series)", lambda label: ENGINE_MODEL.get(label, "holt_winters")),
                        ("one configuration for every series", lambda label: ONE_CONFIGURATION)):
        print(f"\ntargets, {title}: MASE <= 85% of the best seasonal-naive, 80% interval coverage in [75%, 85%]")
        met = 0
        for label, res in summary:
            base = min(res["snaive_24"]["mase"], res["snaive_168"]["mase"])
            model = pick(label)
            r = res[model]
            skill, cov = r["mase"] / base, r["coverage"]
            ok_skill, ok_cov = skill <= 0.85, 0.75 <= cov <= 0.85
            met += ok_skill and ok_cov
            print(f"  {label:<58} {model:<18} MASE {skill:5.0%} of snaive ({'met' if ok_skill else 'NOT met'}), "
                  f"coverage {cov:5.1%} ({'met' if ok_cov else 'NOT met'})")
        print(f"both targets met on {met} of {len(summary)} series groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
