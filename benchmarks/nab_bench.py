"""NAB benchmark: the default detector profile over a NAB corpus, scored by the NAB rules.

    python benchmarks/nab_bench.py NAB_DIR [--out DIR] [--batch-size N] [--quiet] [--anomaly JSON]

NAB_DIR is laid out like NAB: ``data/<category>/<file>.csv`` and ``labels/windows.json``. The data
go through the same code as ``citywatch replay --nab-output OUT NAB_DIR/data`` (one configuration
for the whole corpus; the detector never sees the labels), then through `citywatch.nab`. Prints the
normalised standard / reward_low_FP_rate / reward_low_FN_rate scores with the thresholds chosen,
and each file's contribution: its raw score at the standard threshold and its share of the
normalised standard score (the shares sum to it). Last, the leave-one-category-out standard score:
each category scored at the threshold swept over the other categories, normalised like the whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from citywatch import nab, replay
from citywatch.detectors.anomaly_score import AnomalyConfig, AnomalyScore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The default detector profile over a NAB corpus, scored by the NAB rules.")
    ap.add_argument("nab_dir", type=Path, help="NAB folder with data/<category>/<file>.csv and labels/windows.json")
    ap.add_argument("--out", type=Path, default=None, help="keep the results folder here (default: a temporary one)")
    ap.add_argument("--batch-size", type=int, default=replay.DEFAULT_BATCH_SIZE, help="readings per detector batch")
    ap.add_argument("--quiet", "-q", action="store_true", help="no per-file table")
    ap.add_argument("--anomaly", default=None, metavar="JSON",
                    help='options of the profile instead of its defaults, e.g. \'{"profile": null}\' (detectors.anomaly)')
    args = ap.parse_args(argv)

    data, windows = args.nab_dir / "data", args.nab_dir / "labels" / "windows.json"
    for p in (data, windows):
        if not p.exists():
            print(f"nab_bench: {p} not found (expected NAB's data/ and labels/windows.json)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "results"
        t0 = time.perf_counter()
        factory = None if args.anomaly is None else partial(
            AnomalyScore, cfg=AnomalyConfig.model_validate(json.loads(args.anomaly)))
        replay.replay_nab(data, out, factory, batch_size=args.batch_size)
        t1 = time.perf_counter()
        corpus = nab.score_results(out, windows)
        t2 = time.perf_counter()
        loco = leave_one_category_out(corpus, {name: nab.read_results_file(out / name)[1] for name in corpus.labels})

    std = corpus.results["standard"]
    rows = sum(f.n_rows for f in corpus.labels.values())
    if not args.quiet:
        print(f"{'file (standard profile)':<60} {'windows':>7} {'raw':>8} {'points':>7}")
        for name, labels in corpus.labels.items():
            print(f"{name:<60} {len(labels.active_windows):>7} {std.per_file[name]:>8.3f} "
                  f"{corpus.file_points('standard', name):>7.2f}")
        print()
    print(f"NAB: {len(corpus.files)} files, {rows} rows, {corpus.n_windows} windows; "
          f"replay and write {t1 - t0:.1f} s ({rows / max(t1 - t0, 1e-9):,.0f} rows/s), scoring {t2 - t1:.2f} s")
    for name, res in corpus.results.items():
        print(f"  {name:<20} {res.normalised:7.2f}   (threshold {res.threshold:.6f}, raw {res.raw:.3f}, "
              f"null {res.null:.1f}, perfect {res.perfect:.1f})")
    print(f"  leave one category out (standard): {loco:.2f}")
    return 0


def leave_one_category_out(corpus: nab.CorpusScore, file_scores: dict, profile: nab.Profile = nab.PROFILES["standard"]
                           ) -> float:
    """Each category scored at the threshold chosen on all the others; the raw sum, normalised."""
    names = list(corpus.labels)
    labels = [corpus.labels[n] for n in names]
    scores = [file_scores[n] for n in names]
    raw = 0.0
    for category in sorted({n.split("/")[0] for n in names}):
        held = [n.split("/")[0] == category for n in names]
        threshold = nab.sweep([f for f, h in zip(labels, held) if not h], [s for s, h in zip(scores, held) if not h],
                              profile).threshold
        raw += nab.score_at([f for f, h in zip(labels, held) if h], [s for s, h in zip(scores, held) if h],
                            threshold, profile).raw
    whole = corpus.results[profile.name]
    return 100.0 * (raw - whole.null) / (whole.perfect - whole.null)


if __name__ == "__main__":
    sys.exit(main())
