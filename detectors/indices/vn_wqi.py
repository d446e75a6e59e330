"""Vietnam water quality index (VN_WQI) per Decision 1460/QĐ-TCMT (12 Nov 2019), vectorised.

Every input is an array (any common shape, e.g. (n_stations, n_samples)); NaN means "not
measured". Parameter names (`PARAMETERS`) follow the registry where it has them (``pH``,
``temperature`` in °C, ``dissolvedOxygen`` in mg/L, ``NH4``) and the decision otherwise.
Concentrations are mg/L, pesticides ug/L, Coliform and E.coli MPN/100 mL. ``NH4``, ``NO3``,
``NO2`` and ``PO4`` are N-NH4, N-NO3, N-NO2 and P-PO4 (as N, as P), as in the decision: a sensor
reporting ammonium as NH4+ must be converted (x 14.007/18.038) first.

* **Sub-indices** (`wqi_subindex`): piecewise-linear in the decision's tables (formula 1 where
  quality falls as the value rises, formula 2 where it rises; a value equal to a breakpoint gets
  that breakpoint's q). The decision's steps are kept: N-NH4, Cd, Pb and Hg are 100 *below* BP1
  but 75 *at* BP1 (NH4 0.29 -> 100, 0.30 -> 75); where level 5 is written ">" (As, N-NO3,
  Coliform, E.coli) anything above BP4 is 10 with no interpolation band; N-NO2 and the pesticides
  are 100 up to their limit and 10 above it; pH and DO% (Bảng 3/4) are 10 outside their tables.
* **DO % saturation** from the water temperature:
  ``DO_sat = 14.652 - 0.41022 T + 0.0079910 T² - 0.000077774 T³``; ``DO% = DO / DO_sat x 100``.
  A ``DO_percent`` input, when given, is used as is.
* **Aggregation**: ``WQI = WQI_I/100 x G_II/100 x G_III/100 x [IV x V]^(1/2)`` (formula 3), where
  I is the pH sub-index, II and III are *geometric* means and IV and V *arithmetic* means of the
  group's sub-indices; without group V the bracket is IV (formula 4); with ``weighted=True``
  (formula 5, water bodies where organic pollution matters; Bảng 5 weights IV = 2, V = 1) it is
  ``(IV² x V)^(1/3)``. An absent group I, II or III is a factor 1 (convention of the known
  implementations; the text does not say). Rounded half up to an integer at the end only.
* **Validity**: at least 3 of the 5 groups, group IV among them, with at least 3 group-IV
  parameters; otherwise NaN. (The rule that groups II/III are mandatory where pesticide or metal
  sources exist is the caller's to enforce: pass ``require_groups``.)
* **Classes** `CATEGORIES` 1..6 (1 = Rất tốt, 91-100) with the decision's §1.4 labels and colours.

Confidence: medium-high. The aggregation formulas were reconstructed from the decision's vector
glyphs (they agree with three independent implementations), the copy read was unnumbered, and the
decision's own worked example prints results (16 / 19) that no formula reproduces. Everything is
therefore a parameter with the reference's values as defaults: `SUBINDEX_TABLES`, `GROUPS`,
`DO_SATURATION_COEFFS`, the class bounds `CLASS_LOWER_BOUNDS`, the minimum group counts and the
weighted exponents.

Example: the decision's §2.3 input (groups I..V); DO_sat(27.5 °C) = 7.797, DO% = 73.1:

>>> import numpy as np
>>> sample = dict(pH=7.2, Cu=0.05, As=0.02, temperature=27.5, dissolvedOxygen=5.7, BOD5=20.0,
...               COD=25.0, NH4=0.2, PO4=0.3, aldrin=0.05, dieldrin=0.05, coliform=10_000)
>>> r = vn_wqi_index(sample)
>>> float(r.value), int(r.category), CATEGORIES[int(r.category) - 1].label_vi
(35.0, 4, 'Xấu')
>>> float(vn_wqi_index(sample, weighted=True).value)
40.0
>>> {k: round(float(v), 2) for k, v in r.subindices.items() if k in ("dissolvedOxygen", "BOD5", "COD", "As")}
{'As': 75.0, 'dissolvedOxygen': 73.11, 'BOD5': 37.5, 'COD': 58.33}

Sample configuration (a proposed ``indices:`` section; not read by the engine yet): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from citywatch.detectors.indices._common import Category, IndexResult, round_half_up

__all__ = [
    "CATEGORIES",
    "CLASS_LOWER_BOUNDS",
    "DO_SATURATION_COEFFS",
    "GROUPS",
    "PARAMETERS",
    "SAMPLE_CONFIG",
    "SUBINDEX_TABLES",
    "SubindexTable",
    "do_percent_saturation",
    "do_saturation",
    "vn_wqi_index",
    "vn_wqi_category",
    "wqi_subindex",
]

SAMPLE_CONFIG = """\
indices:
  vn_wqi:
    ## VN_WQI per QĐ 1460/QĐ-TCMT; tables default to the decision's (see the module docstring)
    weighted: false           # true = formula 5 (IV weight 2, V weight 1) for organic pollution
    min_groups: 3             # groups needed (group IV always required)
    min_group_iv: 3           # group-IV parameters needed
    require_groups: []        # e.g. [III] where metal sources exist, [II] for pesticides
"""


class SubindexTable(NamedTuple):
    """A sub-index table: np.interp(x, bp, q), then x < bp[0] -> `below`, x > bp[-1] -> `above`
    (when not None); a value equal to a breakpoint gets its q."""

    bp: tuple[float, ...]
    q: tuple[float, ...]
    below: float | None = None
    above: float | None = None


_Q = (100.0, 75.0, 50.0, 25.0, 10.0)

#: The decision's tables (Bảng 1-4 and the group II limits).
SUBINDEX_TABLES: dict[str, SubindexTable] = {
    # group I (Bảng 4)
    "pH": SubindexTable((5.5, 6.0, 8.5, 9.0), (50, 100, 100, 50), below=10, above=10),
    # group II: 100 up to the limit (ug/L), 10 above it
    "aldrin": SubindexTable((0.1,), (100,), above=10),
    "BHC": SubindexTable((0.02,), (100,), above=10),
    "dieldrin": SubindexTable((0.1,), (100,), above=10),
    "DDTs": SubindexTable((1.0,), (100,), above=10),
    "heptachlor": SubindexTable((0.2,), (100,), above=10),
    # group III (Bảng 2, mg/L); "<BP1" steps for Cd, Pb, Hg; ">BP4" level 5 for As
    "As": SubindexTable((0.01, 0.02, 0.05, 0.1), _Q[:4], above=10),
    "Cd": SubindexTable((0.005, 0.008, 0.01, 0.1), _Q[1:], below=100),
    "Pb": SubindexTable((0.02, 0.04, 0.05, 0.5), _Q[1:], below=100),
    "Cr6": SubindexTable((0.01, 0.02, 0.04, 0.05, 0.1), _Q),
    "Cu": SubindexTable((0.1, 0.2, 0.5, 1.0, 2.0), _Q),
    "Zn": SubindexTable((0.5, 1.0, 1.5, 2.0, 3.0), _Q),
    "Hg": SubindexTable((0.001, 0.0015, 0.002, 0.01), _Q[1:], below=100),
    # group IV (Bảng 1 and 3, mg/L; DO as % saturation)
    "dissolvedOxygen": SubindexTable((20, 50, 75, 88, 112, 125, 150, 200), (25, 50, 75, 100, 100, 75, 50, 25),
                                     below=10, above=10),
    "BOD5": SubindexTable((4, 6, 15, 25, 50), _Q),
    "COD": SubindexTable((10, 15, 30, 50, 150), _Q),
    "TOC": SubindexTable((4, 6, 15, 25, 50), _Q),
    "NH4": SubindexTable((0.3, 0.6, 0.9, 5.0), _Q[1:], below=100),
    "NO3": SubindexTable((2, 5, 10, 15), _Q[:4], above=10),
    "NO2": SubindexTable((0.05,), (100,), above=10),
    "PO4": SubindexTable((0.1, 0.2, 0.3, 0.5, 4.0), _Q),
    # group V (MPN/100 mL); ">BP4" level 5
    "coliform": SubindexTable((2500, 5000, 7500, 10000), _Q[:4], above=10),
    "ecoli": SubindexTable((20, 50, 100, 200), _Q[:4], above=10),
}

GROUPS: dict[str, tuple[str, ...]] = {
    "I": ("pH",),
    "II": ("aldrin", "BHC", "dieldrin", "DDTs", "heptachlor"),
    "III": ("As", "Cd", "Pb", "Cr6", "Cu", "Zn", "Hg"),
    "IV": ("dissolvedOxygen", "BOD5", "COD", "TOC", "NH4", "NO3", "NO2", "PO4"),
    "V": ("coliform", "ecoli"),
}
PARAMETERS = tuple(p for g in GROUPS.values() for p in g) + ("temperature", "DO_percent")

#: DO_sat(T) = c0 + c1 T + c2 T² + c3 T³ (mg/L, T in °C).
DO_SATURATION_COEFFS = (14.652, -0.41022, 0.0079910, -0.000077774)

#: Lower bound of each class, best first: 91-100, 76-90, 51-75, 26-50, 10-25, < 10.
CLASS_LOWER_BOUNDS = (91, 76, 51, 26, 10)
CATEGORIES = (
    Category(1, 91, 100, "Rất tốt", "Very good", "Xanh nước biển", (51, 51, 255)),
    Category(2, 76, 90, "Tốt", "Good", "Xanh lá cây", (0, 228, 0)),
    Category(3, 51, 75, "Trung bình", "Medium", "Vàng", (255, 255, 0)),
    Category(4, 26, 50, "Xấu", "Bad", "Da cam", (255, 126, 0)),
    Category(5, 10, 25, "Kém", "Poor", "Đỏ", (255, 0, 0)),
    Category(6, 0, 9, "Ô nhiễm rất nặng", "Very heavily polluted", "Nâu", (126, 0, 35)),
)


def do_saturation(temperature, coeffs: tuple[float, ...] = DO_SATURATION_COEFFS) -> np.ndarray:
    """Saturated dissolved oxygen (mg/L) at a water temperature (°C).

    >>> round(float(do_saturation(25.0)), 4)
    8.1757
    """
    t = np.asarray(temperature, dtype=np.float64)
    return coeffs[0] + t * (coeffs[1] + t * (coeffs[2] + t * coeffs[3]))


def do_percent_saturation(dissolved_oxygen, temperature, coeffs: tuple[float, ...] = DO_SATURATION_COEFFS) -> np.ndarray:
    """DO as % of saturation: DO / DO_sat(T) x 100."""
    return np.asarray(dissolved_oxygen, dtype=np.float64) / do_saturation(temperature, coeffs) * 100.0


def wqi_subindex(parameter: str, value, tables: Mapping[str, SubindexTable] = SUBINDEX_TABLES) -> np.ndarray:
    """Unrounded sub-index of one parameter (DO as % saturation for ``dissolvedOxygen``).

    >>> wqi_subindex("NH4", [0.29, 0.30, 0.75, 5.0]).tolist()
    [100.0, 75.0, 37.5, 10.0]
    >>> wqi_subindex("coliform", [10_000, 10_001]).tolist()
    [25.0, 10.0]
    """
    t = tables[parameter]
    x = np.asarray(value, dtype=np.float64)
    out = np.interp(x, np.asarray(t.bp, dtype=np.float64), np.asarray(t.q, dtype=np.float64))
    if t.below is not None:
        out = np.where(x < t.bp[0], t.below, out)
    if t.above is not None:
        out = np.where(x > t.bp[-1], t.above, out)
    return np.where(np.isnan(x), np.nan, out)


def vn_wqi_category(wqi, lower_bounds: tuple[float, ...] = CLASS_LOWER_BOUNDS) -> np.ndarray:
    """Class 1..6 of a rounded WQI (1 = best); 0 for NaN."""
    v = np.asarray(wqi, dtype=np.float64)
    below = (v[..., None] < np.asarray(lower_bounds, dtype=np.float64)).sum(axis=-1)
    return np.where(np.isnan(v), 0, below + 1).astype(np.int8)


def _nanmean(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = ~np.isnan(stack)
    n = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, stack, 0.0).sum(axis=0) / n, n


def _nangeomean(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = ~np.isnan(stack)
    n = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.exp(np.where(present, np.log(np.where(present, stack, 1.0)), 0.0).sum(axis=0) / n), n


def vn_wqi_index(
    sample: Mapping[str, np.ndarray | float],
    *,
    weighted: bool = False,
    weights: tuple[float, float] = (2.0, 1.0),
    tables: Mapping[str, SubindexTable] = SUBINDEX_TABLES,
    groups: Mapping[str, tuple[str, ...]] = GROUPS,
    do_coeffs: tuple[float, ...] = DO_SATURATION_COEFFS,
    min_groups: int = 3,
    min_group_iv: int = 3,
    require_groups: Iterable[str] = (),
    class_lower_bounds: tuple[float, ...] = CLASS_LOWER_BOUNDS,
) -> IndexResult:
    """VN_WQI of samples: `sample` maps parameter names (`PARAMETERS`) to arrays of one common
    shape (or scalars); NaN = not measured; unknown names are ignored.

    ``weighted`` selects formula 5 with group `weights` (IV, V); groups II and III are geometric
    means, IV and V arithmetic means. Returns an `IndexResult`: `value` (rounded, NaN when the
    data rules fail), `category` (1..6, 0 = none), `dominant` (the parameter with the lowest
    sub-index: what pulls the index down; "" when invalid) and unrounded `subindices`.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in sample.items()}
    shape = np.broadcast_shapes(*(a.shape for a in arrays.values())) if arrays else ()
    missing = np.full(shape, np.nan)
    sub: dict[str, np.ndarray] = {}
    for group in groups.values():
        for p in group:
            if p == "dissolvedOxygen":
                if "DO_percent" in arrays:
                    pct = arrays["DO_percent"]
                elif "dissolvedOxygen" in arrays and "temperature" in arrays:
                    pct = do_percent_saturation(arrays["dissolvedOxygen"], arrays["temperature"], do_coeffs)
                else:
                    continue
                sub[p] = np.broadcast_to(wqi_subindex(p, pct, tables), shape)
            elif p in arrays:
                sub[p] = np.broadcast_to(wqi_subindex(p, arrays[p], tables), shape)

    def stack(g: str) -> np.ndarray:
        return np.stack([sub.get(p, missing) for p in groups[g]]) if groups[g] else missing[None]

    n_groups = np.zeros(shape, np.int64)
    factor = np.ones(shape)
    present: dict[str, np.ndarray] = {}
    for g, mean in (("I", _nanmean), ("II", _nangeomean), ("III", _nangeomean)):
        m, n = mean(stack(g))
        present[g] = n > 0
        factor = factor * np.where(n > 0, m / 100.0, 1.0)
    iv, n_iv = _nanmean(stack("IV"))
    v, n_v = _nanmean(stack("V"))
    present["IV"], present["V"] = n_iv > 0, n_v > 0
    for g in present:
        n_groups += present[g]
    w_iv, w_v = weights
    with np.errstate(invalid="ignore", divide="ignore"):
        if weighted:
            bracket = np.where(present["V"], (iv**w_iv * v**w_v) ** (1.0 / (w_iv + w_v)), iv)
        else:
            bracket = np.where(present["V"], np.sqrt(iv * v), iv)
    ok = (n_iv >= min_group_iv) & (n_groups >= min_groups)
    for g in require_groups:
        ok = ok & present[g]
    value = np.where(ok, round_half_up(factor * bracket), np.nan)

    names = [p for g in groups.values() for p in g if p in sub]
    if names:
        all_sub = np.stack([sub[p] for p in names])
        worst = np.where(np.isnan(all_sub), np.inf, all_sub).argmin(axis=0)
        dominant = np.where(ok, np.asarray(names)[worst], "")
    else:
        dominant = np.full(shape, "")
    return IndexResult(
        value=value,
        category=vn_wqi_category(value, class_lower_bounds),
        dominant=dominant,
        subindices={p: np.asarray(sub[p]) for p in names},
    )
