"""Seed statistics (issue 11, acceptance 1): gpt2jax.studies.stats against scipy.stats on fixed numbers."""
import numpy as np
import pytest
import scipy.stats

from gpt2jax.studies import stats

A = [2.31, 2.35, 2.29, 2.40, 2.33]
B = [2.28, 2.27, 2.30, 2.25]
C = [1.512, 1.498, 1.530, 1.477, 1.505, 1.520, 1.491, 1.488]


@pytest.mark.parametrize("a,b", [(A, B), (B, A), (A, C), (C[:2], B), ([1.0, 1.1, 0.9], [1.0, 1.2, 0.8])])
def test_welch_p_value_matches_scipy(a, b):
    expected = scipy.stats.ttest_ind(a, b, equal_var=False).pvalue
    assert stats.welch_p(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("values", [A, B, C, C[:2]])
def test_mean_std_and_95_interval_match_scipy(values):
    s = stats.summarize(values)
    lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert s["n"] == len(values) and s["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert s["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert s["ci_lo"] == pytest.approx(lo, rel=1e-10) and s["ci_hi"] == pytest.approx(hi, rel=1e-10)


@pytest.mark.parametrize("x,a,b", [(0.3, 2.5, 0.5), (0.9, 0.5, 7.0), (1e-4, 3.0, 3.0), (0.999, 40.0, 0.5)])
def test_incomplete_beta_and_t_quantiles_match_scipy(x, a, b):
    assert stats.betainc(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-10, abs=1e-300)
    for nu in (1, 2.5, 4, 30):
        assert stats.t_quantile(0.95, nu) == pytest.approx(scipy.stats.t.ppf(0.975, nu), rel=1e-9)


def test_degenerate_samples_are_none_not_nan():
    assert stats.summarize([2.0]) == dict(n=1, mean=2.0, std=None, ci_lo=None, ci_hi=None)
    assert stats.summarize([])["mean"] is None and stats.welch_p([1.0], [1.0, 2.0]) is None
