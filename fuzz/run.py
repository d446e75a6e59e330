"""Run every atheris harness of this folder for N inputs each and print what happened.

    python fuzz/run.py                      # 100 000 inputs per harness (make fuzz)
    python fuzz/run.py --runs 1000000 --harness payloads validate

Each harness is a separate process (libFuzzer owns it), started on a fresh corpus seeded with valid
payloads of every format, so mutation starts from the inside of the grammar. Prints, per harness:
inputs, outcomes by kind (rejection reason codes, accepted readings), crashes. A crash is an
uncaught exception or a broken invariant (see checks.py); its input is kept as crash-<sha1> in the
artifacts directory and the exit status is 1.

Needs the `fuzz` extra: pip install -e '.[fuzz]' (atheris ships manylinux wheels with libFuzzer
built in; on other platforms it builds from source and needs clang with libFuzzer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = ("payloads", "senml", "timestamps", "validate", "line_protocol")
T = b"1795000000"

SEED_PAYLOADS: list[bytes] = [
    b'{"ts": ' + T + b'000, "pm25": 12.3, "no2": 40.1}',
    b'{"time": "2026-11-17T08:00:00+07:00", "pm25": {"value": 35.2, "unit": "mg/m3"}, "id": "aq-001"}',
    b'[{"ts": ' + T + b', "pm25": 20.5}, {"ts": "2026-11-17T01:01:00.250Z", "pm25": 21.0}, {"pm25": 3}]',
    b'[{"bn": "aq-001:", "bt": ' + T + b', "bu": "ug/m3", "n": "pm25", "v": 12.3}, {"n": "no2", "v": 40.1, "t": 60}]',
    b'{"bn": "aq-001/pm25", "v": 1.5, "u": "mg/m3"}',
    b'{"dateObserved": {"type": "Property", "value": "2026-11-17T01:00:00Z"}, "pm25": {"value": 1, "unitCode": "GQ"}}',
    b'{"ts": ' + T + b', "pm25": NaN, "no2": Infinity, "relativeHumidity": 45, "temperature": {"value": 88, "unit": "degF"}}',
    b'{"ts": 1e400, "pm25": 123456789012345678901234567890e300}',
    b'[{"n": "pm25", "vs": "high"}, {"n": "pm25", "vb": true}, {"n": "pm25", "s": 3}, {"bt": "x"}]',
    b'{"pH": 7.1, "ts": "2026-11-17T01:00:00"}',
]


def seeds(harness: str) -> list[bytes]:
    if harness == "payloads":
        return SEED_PAYLOADS
    if harness == "validate":  # first byte: validator and topic (see fuzz_validate.py)
        return [bytes([head]) + p for p in SEED_PAYLOADS for head in (0, 1, 2, 3, 6)]
    return []  # the structure-aware harnesses build their documents from any bytes


def run_one(harness: str, runs: int, seed: int, workdir: Path, max_len: int) -> dict:
    corpus = workdir / harness / "corpus"
    artifacts = workdir / harness / "artifacts"
    corpus.mkdir(parents=True)
    artifacts.mkdir()
    for i, s in enumerate(seeds(harness)):
        (corpus / f"seed-{i:03d}").write_bytes(s)
    cmd = [sys.executable, str(HERE / f"fuzz_{harness}.py"), str(corpus), f"-runs={runs}", f"-seed={seed}",
           f"-artifact_prefix={artifacts}/", f"-max_len={max_len}", "-timeout=20", "-rss_limit_mb=2048",
           "-print_final_stats=1"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    output = proc.stdout + proc.stderr
    stats = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("FUZZ-STATS ")]
    crashed = proc.returncode != 0 or "Uncaught Python exception" in output
    result = {"harness": harness, "inputs": stats[-1]["inputs"] if stats else 0,
              "outcomes": stats[-1]["outcomes"] if stats else {}, "crashes": int(crashed),
              "seconds": round(time.monotonic() - started, 1), "corpus": len(list(corpus.iterdir()))}
    if crashed or not stats or result["inputs"] < runs:
        result["log"] = "\n".join(output.splitlines()[-40:])
        result["artifacts"] = [str(p) for p in artifacts.iterdir()]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000, help="inputs per harness (default 100000)")
    ap.add_argument("--harness", nargs="*", choices=HARNESSES, default=list(HARNESSES))
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (default 1)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--workdir", type=Path, help="keep corpora and crash inputs here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="citywatch-fuzz-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = []
        for harness in args.harness:
            r = run_one(harness, args.runs, args.seed, workdir, args.max_len)
            results.append(r)
            if not args.json:
                rejected = {k: v for k, v in r["outcomes"].items() if k not in ("readings", "ok", "round_trip")}
                print(f"{harness:14} inputs {r['inputs']:>8}  crashes {r['crashes']}  {r['seconds']:>6.1f} s  "
                      f"corpus {r['corpus']}", flush=True)
                print(f"{'':14} accepted: {sum(v for k, v in r['outcomes'].items() if k not in rejected)}"
                      f"  rejected by kind: {json.dumps(rejected)}", flush=True)
                if "log" in r:
                    print(r["log"], "\nartifacts:", r["artifacts"], flush=True)
        total = sum(r["inputs"] for r in results)
        crashes = sum(r["crashes"] for r in results)
        incomplete = [r["harness"] for r in results if r["inputs"] < args.runs]
        if args.json:
            print(json.dumps({"runs_per_harness": args.runs, "seed": args.seed, "results": results}, indent=2))
        else:
            print(f"total: {total} inputs over {len(results)} harnesses, {crashes} crashes"
                  + (f", incomplete: {incomplete}" if incomplete else ""))
    return 1 if crashes or incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
