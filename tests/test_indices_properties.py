"""Properties of the index functions, checked with hypothesis."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch.detectors.indices import nesterov_vn, nowcast, us_aqi_subindex, vn_aqi_subindex
from citywatch.detectors.indices.us_aqi import BREAKPOINTS as US_BP
from citywatch.detectors.indices.vn_aqi import BREAKPOINTS as VN_BP

conc = st.floats(min_value=0, max_value=5000, allow_nan=False)
maybe = st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(maybe, min_size=1, max_size=30))
def test_nowcast_is_within_the_window_and_valid_by_rule(values):
    x = np.array([np.nan if v is None else v for v in values])
    out = nowcast(x)
    for t in range(len(x)):
        win = x[max(0, t - 11) : t + 1]
        recent = x[max(0, t - 2) : t + 1]
        if (~np.isnan(recent)).sum() >= 2:
            assert np.nanmin(win) - 1e-9 <= out[t] <= np.nanmax(win) + 1e-9
        else:
            assert np.isnan(out[t])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(VN_BP)), conc, conc)
def test_vn_subindex_monotone_and_bounded(column, a, b):
    lo, hi = sorted((a, b))
    s_lo, s_hi = vn_aqi_subindex(column, lo), vn_aqi_subindex(column, hi)
    if not np.isnan(s_hi):
        assert 0 <= s_lo <= s_hi <= 500


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(US_BP)), st.floats(min_value=0, max_value=3000, allow_nan=False),
       st.floats(min_value=0, max_value=3000, allow_nan=False))
def test_us_subindex_monotone_and_bounded(table, a, b):
    scale = 1e-3 if table.startswith("o3") else 1.0
    lo, hi = sorted((a * scale, b * scale))
    s_lo, s_hi = us_aqi_subindex(table, lo), us_aqi_subindex(table, hi)
    if not (np.isnan(s_lo) or np.isnan(s_hi)):
        assert 0 <= s_lo <= s_hi <= 500 and s_lo == int(s_lo)


day = st.tuples(st.floats(min_value=-5, max_value=45), st.floats(min_value=0, max_value=60),
                st.floats(min_value=0, max_value=50))


@settings(max_examples=200, deadline=None)
@given(st.lists(day, min_size=1, max_size=40), st.floats(min_value=0, max_value=5000))
def test_nesterov_matches_a_loop(days, p0):
    t, d, r = (np.array(c, dtype=float) for c in zip(*days))
    acc, ref = p0, []
    for ti, di, ri in days:
        acc = 0.0 if ri >= 5 else acc + ti * di
        ref.append(acc)
    np.testing.assert_allclose(nesterov_vn(t, d, r, p0=p0), ref, rtol=1e-9, atol=1e-6)
