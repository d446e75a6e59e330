"""The common part of the atheris harnesses: outcome counting and the hand-off to libFuzzer.

libFuzzer ends the process with exit() after `-runs=N` inputs, so Python's atexit never runs: the
counts are printed (one `FUZZ-STATS {json}` line) when the N-th input is done, and every 20 000
inputs on the way. A crash is an uncaught exception: libFuzzer prints it, saves the input as
`crash-<sha1>` and exits non-zero.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # checks.py, when run as a script


class Outcomes:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = 0
        self.kinds: Counter[str] = Counter()
        self.target = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-runs=")), 0)

    def count(self, kinds: Iterable[str]) -> None:
        self.inputs += 1
        self.kinds.update(set(kinds))
        if self.inputs == self.target or self.inputs % 20_000 == 0:
            print("FUZZ-STATS " + json.dumps({"harness": self.name, "inputs": self.inputs,
                                              "outcomes": dict(sorted(self.kinds.items()))}), flush=True)


def fuzz(test_one: Callable[[bytes], None]) -> None:
    import atheris

    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
