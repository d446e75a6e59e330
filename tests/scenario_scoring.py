"""Shared rules for scoring detectors against the simulator's labelled faults.

A labelled fault is *observable* only if the readings show it. These helpers decide that from the
faulty readings and the clean signal (the same simulator, same seed, no faults), and give the
*observable onset* from which detection delays are measured:

* noise sd (`noise_sd`): the reading-to-reading measurement noise of the clean series, estimated
  robustly from its first differences (1.4826 x MAD / sqrt 2, so that the diurnal cycle and events
  do not inflate it), floored at the rounding step / sqrt 12 for series whose noise is below the
  reporting resolution;
* onset (`onset_index`): the first reading of the fault whose deviation from the clean signal
  exceeds `K_NOISE` noise sd (for a spike or a stuck run this is the first reading that differs:
  a spike is far outside the noise, a stuck run's first frozen reading is a true one);
* unobservable: a stuck run at a value the metric legitimately holds for hours (`stuck_value_exempt`),
  a spike clipped by the physical range or into the metric's idle range or never followed by a
  reading (`spike_clipped`), a spike inside a stuck run of the same metric (the frozen value
  overrides it), a spike that stays within the range the clean series itself spans within
  `SPIKE_CONTEXT` readings either side (`spike_within_clean_range`: heavy-tailed series such as road
  occupancy jump that far from minute to minute), and any fault whose deviation never exceeds
  `K_NOISE` noise sd.
"""

from __future__ import annotations

import numpy as np

from citywatch.detectors.spike import DEFAULT_IDLE
from citywatch.detectors.stuck import DEFAULT_EXEMPT

K_NOISE = 3.0  # a deviation of 3 noise sd: under 0.3 % of clean readings exceed it by chance
SPIKE_CONTEXT = 10  # readings either side of a spike that tell whether it leaves the series' own range


def stuck_value_exempt(metric: str, value: float) -> bool:
    """A stuck run at a value the metric legitimately holds for hours (no rain, no vehicles, ...)."""
    rng = DEFAULT_EXEMPT.get(metric)
    return rng is not None and rng.min <= value <= rng.max


def spike_clipped(metric: str, faulty: np.ndarray, clean: np.ndarray, magnitude: float, comes_back: bool) -> bool:
    """A spike that is no longer one in the data: clipped by the physical range to under a quarter of
    its size, or into the idle range of its metric (occupancy 0 with no vehicles), or never followed by
    a reading that could come back (the data ends, or the sensor falls silent right after it)."""
    size = float(np.max(np.abs(faulty - clean))) if len(faulty) else 0.0
    idle = DEFAULT_IDLE.get(metric)
    into_idle = idle is not None and bool(np.all((faulty >= idle.min) & (faulty <= idle.max)))
    return size < 0.25 * abs(magnitude) or into_idle or not comes_back


def spike_within_clean_range(faulty: np.ndarray, clean_around: np.ndarray) -> bool:
    """Every reading of the spike lies within the range of the clean readings around it."""
    c = clean_around[np.isfinite(clean_around)]
    return len(c) > 0 and bool(np.all((faulty >= c.min()) & (faulty <= c.max())))


def noise_sd(clean: np.ndarray) -> float:
    """Reading-to-reading noise sd of a clean series (see the module docstring)."""
    x = clean[np.isfinite(clean)]
    d = np.diff(x)
    if len(d) == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    steps = np.abs(d[d != 0])
    floor = float(steps.min()) / np.sqrt(12.0) if len(steps) else 0.0
    return max(1.4826 * mad / np.sqrt(2.0), floor)


def onset_index(faulty: np.ndarray, clean: np.ndarray, sd: float, k: float = K_NOISE) -> int | None:
    """Index of the first reading deviating from the clean signal by more than k noise sd (None: never)."""
    dev = np.abs(faulty - clean)
    hit = np.flatnonzero(np.isfinite(dev) & (dev > k * sd))
    return int(hit[0]) if len(hit) else None
