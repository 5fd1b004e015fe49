"""Seed statistics for sweeps, in numpy alone (scipy is a test-only reference).

    summarize(values)           -> n, mean, std (ddof=1), 95% t-interval of the mean
    welch_p(a, b)               -> two-sided Welch t-test p-value (unequal variances)

Student's t distribution through the regularized incomplete beta function I_x(a, b):
    P(|T| > t) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2)        (two-sided tail, nu degrees of freedom)
I_x(a, b) is evaluated with the continued fraction of Numerical Recipes (3rd ed., 6.4, modified Lentz) in float64;
the 95% quantile t* with P(|T| > t*) = 0.05 is found by bisection on that tail.
"""
from __future__ import annotations

import math

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (valid for x < (a + 1) / (a + b + 2))."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, nu: float) -> float:
    """P(|T| >= |t|) for Student's t with nu degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return betainc(nu / 2.0, 0.5, nu / (nu + t * t))


def t_quantile(level: float, nu: float) -> float:
    """t* with P(|T| <= t*) = level (e.g. 0.95 -> the two-sided 97.5% quantile)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, nu) > 1.0 - level:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, nu) > 1.0 - level else (lo, mid)
    return 0.5 * (lo + hi)


def summarize(values, level: float = 0.95) -> dict:
    """n, mean, std (sample, ddof=1), and the `level` t-interval of the mean [ci_lo, ci_hi] (None when undefined:
    no finite values, or one)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    n = int(x.size)
    if n == 0:
        return dict(n=0, mean=None, std=None, ci_lo=None, ci_hi=None)
    mean = float(x.mean())
    if n < 2:
        return dict(n=1, mean=mean, std=None, ci_lo=None, ci_hi=None)
    std = float(x.std(ddof=1))
    half = t_quantile(level, n - 1) * std / math.sqrt(n)
    return dict(n=n, mean=mean, std=std, ci_lo=mean - half, ci_hi=mean + half)


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test that samples a and b have equal means (None with < 2 values each)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    nu = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))  # Welch-Satterthwaite
    return t_two_sided_p(float(t), float(nu))
