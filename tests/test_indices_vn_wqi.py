"""VN_WQI (QĐ 1460/QĐ-TCMT): the worked examples and test vectors of the domain reference, §3."""

from __future__ import annotations

import numpy as np
import pytest

from citywatch.detectors.indices.vn_wqi import (
    CATEGORIES,
    SUBINDEX_TABLES,
    SubindexTable,
    do_percent_saturation,
    do_saturation,
    vn_wqi_index,
    vn_wqi_category,
    wqi_subindex,
)

NAN = np.nan

EXAMPLE_A = dict(pH=7.2, Cu=0.05, As=0.02, temperature=27.5, dissolvedOxygen=5.7, BOD5=20.0, COD=25.0,
                 NH4=0.2, PO4=0.3, aldrin=0.05, dieldrin=0.05, coliform=10_000)
EXAMPLE_B = dict(pH=7.0, temperature=25.0, dissolvedOxygen=7.0, BOD5=5, COD=12, NH4=0.45, PO4=0.15, coliform=3000)


def test_example_a_subindices():
    assert do_saturation(27.5) == pytest.approx(7.797, abs=5e-4)  # the draft's 7.78 is a slip
    assert do_percent_saturation(5.7, 27.5) == pytest.approx(73.11, abs=5e-3)
    r = vn_wqi_index(EXAMPLE_A)
    s = {k: float(v) for k, v in r.subindices.items()}
    # printed in the decision
    for k, q in dict(pH=100, Cu=100, As=75, NH4=100, PO4=50, coliform=25, aldrin=100, dieldrin=100).items():
        assert s[k] == q, k
    assert s["dissolvedOxygen"] == pytest.approx(73.11, abs=5e-3)
    assert s["BOD5"] == pytest.approx(37.5)
    assert s["COD"] == pytest.approx(58.33, abs=5e-3)


def test_example_a_aggregation():
    # The draft prints 16 / 19; no formula reading reproduces them (domain.md §3.6 A): not used.
    r = vn_wqi_index(EXAMPLE_A)
    assert r.value == 35 and r.category == 4 and CATEGORIES[3].label_vi == "Xấu"
    assert vn_wqi_index(EXAMPLE_A, weighted=True).value == 40
    no_v = {k: v for k, v in EXAMPLE_A.items() if k != "coliform"}
    assert vn_wqi_index(no_v).value == 55  # formula 4


def test_example_b_clean_river():
    assert do_saturation(25.0) == pytest.approx(8.1757, abs=5e-5)
    r = vn_wqi_index(EXAMPLE_B)
    s = {k: float(v) for k, v in r.subindices.items()}
    assert s["dissolvedOxygen"] == pytest.approx(95.42, abs=5e-3)
    assert s["BOD5"] == 87.5 and s["COD"] == 90 and s["NH4"] == pytest.approx(62.5)
    assert s["PO4"] == pytest.approx(87.5) and s["coliform"] == 95
    assert r.value == 90 and r.category == 2
    assert r.dominant == "NH4"
    assert vn_wqi_index(EXAMPLE_B, weighted=True).value == 88


def test_example_c_ph_effects():
    assert vn_wqi_index({**EXAMPLE_B, "pH": 9.5}).value == 9
    assert vn_wqi_index({**EXAMPLE_B, "pH": 9.5}).category == 6
    assert vn_wqi_index({**EXAMPLE_B, "pH": 8.8}).value == 63
    assert wqi_subindex("pH", 8.8) == pytest.approx(70)
    assert wqi_subindex("pH", 5.8) == pytest.approx(80)
    assert wqi_subindex("pH", [5.4, 5.5, 6.0, 8.5, 9.0, 9.01]).tolist() == [10, 50, 100, 100, 50, 10]


def test_example_d_subindex_edges():
    assert wqi_subindex("NH4", [0.29, 0.30, 0.75, 5.0, 7.0]).tolist()[:2] == [100, 75]
    assert wqi_subindex("NH4", 0.75) == pytest.approx(37.5)
    assert wqi_subindex("NH4", 2.0) == pytest.approx(20.98, abs=5e-3)
    assert wqi_subindex("NH4", [5.0, 7.0]).tolist() == [10, 10]
    assert wqi_subindex("coliform", [10_000, 10_001]).tolist() == [25, 10]
    assert wqi_subindex("NO2", [0.05, 0.051]).tolist() == [100, 10]
    assert wqi_subindex("dissolvedOxygen", [19, 20, 100, 112, 200, 201]).tolist() == [10, 25, 100, 100, 25, 10]


def test_other_steps_and_bands():
    for p, bp1 in {"Cd": 0.005, "Pb": 0.02, "Hg": 0.001}.items():
        assert wqi_subindex(p, [bp1 * 0.99, bp1]).tolist() == [100, 75], p
    # ">" level 5: As, NO3, E.coli jump to 10 above BP4; "≥" level 5 interpolates 25 -> 10
    assert wqi_subindex("As", [0.1, 0.1001]).tolist() == [25, 10]
    assert wqi_subindex("NO3", [15, 15.1]).tolist() == [25, 10]
    assert wqi_subindex("ecoli", [200, 201]).tolist() == [25, 10]
    assert wqi_subindex("BOD5", 37.5) == pytest.approx(17.5)
    assert wqi_subindex("Cd", 0.055) == pytest.approx(17.5)
    # DO% between 112 and 200 falls (formula 1)
    assert wqi_subindex("dissolvedOxygen", 137.5) == pytest.approx(62.5)
    assert wqi_subindex("aldrin", [0.1, 0.11]).tolist() == [100, 10]


def test_hand_vector_metals_and_pesticides():
    # I: pH 7 -> 1; II: aldrin 100, BHC 10 -> sqrt(1000) = 31.62 -> 0.3162; III: Zn 1.25 -> 62.5
    # IV: BOD 4, COD 10, NH4 0.1 -> 100; V absent (formula 4): 1 x 0.3162 x 0.625 x 100 = 19.76 -> 20
    r = vn_wqi_index(dict(pH=7, aldrin=0.01, BHC=0.05, Zn=1.25, BOD5=4, COD=10, NH4=0.1))
    assert r.value == 20 and r.category == 5 and r.dominant == "BHC"


def test_data_rules():
    few_iv = dict(pH=7, BOD5=5, COD=12, coliform=3000)
    assert np.isnan(vn_wqi_index(few_iv).value)  # only 2 group-IV parameters
    two_groups = dict(BOD5=5, COD=12, NH4=0.45, coliform=3000)
    assert np.isnan(vn_wqi_index(two_groups).value)  # groups IV and V only
    assert vn_wqi_index(two_groups, min_groups=2).value == 87  # sqrt(mean(87.5, 90, 62.5) x 95) = 87.18
    assert np.isnan(vn_wqi_index(EXAMPLE_B, require_groups=["III"]).value)
    # DO needs the temperature (or DO_percent given directly)
    no_t = {k: v for k, v in EXAMPLE_B.items() if k != "temperature"}
    assert "dissolvedOxygen" not in vn_wqi_index(no_t).subindices
    assert vn_wqi_index({**no_t, "DO_percent": 85.62}).subindices["dissolvedOxygen"] == pytest.approx(95.42, abs=0.01)


def test_classes_on_edges():
    assert vn_wqi_category([100, 91, 90, 76, 75, 51, 50, 26, 25, 10, 9, 0, NAN]).tolist() == [
        1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 0,
    ]
    assert CATEGORIES[0].rgb == (51, 51, 255)


def test_tables_are_configurable():
    tables = dict(SUBINDEX_TABLES, NH4=SubindexTable((0.3, 0.6, 0.9, 5.0), (100, 50, 25, 10)))
    assert wqi_subindex("NH4", 0.45, tables) == pytest.approx(75)
    assert vn_wqi_category(85, lower_bounds=(80, 70, 50, 25, 10)) == 1


def test_many_samples_equal_each_alone():
    rng = np.random.default_rng(1460)
    n = (4, 9)
    sample = {
        "pH": rng.uniform(5, 10, n), "temperature": rng.uniform(20, 34, n),
        "dissolvedOxygen": rng.uniform(1, 12, n), "BOD5": rng.uniform(1, 60, n), "COD": rng.uniform(5, 160, n),
        "NH4": rng.uniform(0, 6, n), "PO4": rng.uniform(0, 5, n), "NO3": rng.uniform(0, 20, n),
        "coliform": rng.uniform(100, 15000, n), "ecoli": rng.uniform(1, 400, n),
        "As": rng.uniform(0, 0.2, n), "Pb": rng.uniform(0, 0.6, n), "aldrin": rng.uniform(0, 0.2, n),
    }
    for v in sample.values():
        v[rng.random(n) < 0.25] = NAN
    together = vn_wqi_index(sample)
    assert together.value.shape == n
    for i in range(n[0]):
        for j in range(n[1]):
            alone = vn_wqi_index({k: v[i, j] for k, v in sample.items()})
            np.testing.assert_array_equal(together.value[i, j], alone.value)
            assert together.category[i, j] == alone.category
            assert together.dominant[i, j] == alone.dominant
