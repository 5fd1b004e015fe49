"""Scaling-law fits over a table of runs (numpy only), used by the sweep and callable on its CSV:

    python -m gpt2jax.scaling runs/chinchilla_cpu/results.csv [--loss metric] [--out DIR]

Each row needs the loss and the compute columns that every run records (`gpt2jax.training.compute`): params (N),
non_embedding_params, tokens (D), flops (C). The fits (each runs when the rows allow it, else says why not):

    L(N), L(D)   L = E + A / x^alpha with an irreducible term E >= 0; for each distinct x the lowest loss
                 (the envelope over the other axis). Least squares on relative residuals; for a fixed alpha, E
                 and A are linear (variable projection), alpha by a grid then golden-section search.
    isoflop      Hoffmann et al. 2022, approach 2: runs are grouped by compute budget (the `budget` column when
                 present, else runs whose C lie within a factor 1.3); per budget a parabola of L over log N
                 gives N_opt(C) at its minimum and D_opt(C) (log D interpolated linearly in log N within the
                 budget); then N_opt = k C^a and D_opt = k' C^b by least squares in log-log space.
    L(C)         the compute frontier: the IsoFLOP minima (else the runs no cheaper run beats), fitted as
                 L = E + A / C^gamma.
    parametric   approach 3: L(N, D) = E + A / N^alpha + B / D^beta, minimising the Huber loss (delta 1e-3) of
                 log L against LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, from the
                 paper's grid of 4500 initialisations (BFGS, batched over initialisations in numpy); the
                 compute-optimal exponents follow as a = beta / (alpha + beta), b = alpha / (alpha + beta).

Every exponent comes with a 95% bootstrap interval (runs resampled with replacement, the fit repeated).

Fits that would lie are refused ({"skipped": why}) or carry "flags" (printed as FLAGGED ... not a result, written
on the plot), never reported as results: a constant loss, a law without dependence on x (A = 0) or with a
non-finite constant; an exponent at the edge of its search interval [0.01, 3]; a zero-width bootstrap interval;
L(C) over fewer than 3 budgets; L(N) and L(D) on IsoFLOP rows (each N trained at a budget's D, so the envelope
over D is no law of N); the parametric law where N and D vary together (one budget); budgets too close for the
1.3 ratio rule to separate (record a `budget` column) or whose runs' C overlap.

    tuned axes   `best_over(rows, ("optim.lr",))`: per (N, budget), or (N, D) without budgets, the tuned values'
                 best run (mean over seeds); the table names the winner, and a winner at the edge of the values
                 tried is flagged ("extend the lr grid"), also in every fit over it.
    FLOPs        C follows a named convention (gpt2jax.training.compute.FLOP_CONVENTIONS: "6N+12LTC", what runs
                 record; "6N_nonemb", Kaplan et al. 2020's; "6ND"), stated in every table.
    published    `compare=("kaplan2020", "hoffmann2022", "besiroglu2024")` draws those laws on the plots, for
                 shape only: they are nats per token of other data and tokenizers.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

# Published laws, drawn beside a study's fits for comparison only: they are in nats per token of other data and
# tokenizers (WebText2 BPE; MassiveText SentencePiece), so their levels do not transfer, their shapes may.
PUBLISHED = {
    "kaplan2020": dict(label="Kaplan et al. 2020", kind="kaplan", n_c=8.8e13, alpha_n=0.076, d_c=5.4e13,
                       alpha_d=0.095, c_c=3.1e8 * 8.64e19, alpha_c=0.050,
                       note="L(N) = (N_c/N)^0.076 over non-embedding N, L(D) = (D_c/D)^0.095, "
                            "L(C_min) = (C_c/C)^0.050 (C_c = 3.1e8 PF-days); WebText2, GPT-2 BPE"),
    "hoffmann2022": dict(label="Hoffmann et al. 2022 (approach 3)", kind="parametric", E=1.69, A=406.4, B=410.7,
                         alpha=0.34, beta=0.28, note="MassiveText, SentencePiece"),
    "besiroglu2024": dict(label="Besiroglu et al. 2024 (replication)", kind="parametric", E=1.82, A=482.01,
                          B=2085.43, alpha=0.3478, beta=0.3658, note="Hoffmann et al.'s data, refitted"),
}
PUBLISHED_NOTE = "published laws: nats/token on other data and tokenizers, for shape only"
PUBLISHED_COLORS = {"kaplan2020": "dimgray", "hoffmann2022": "black", "besiroglu2024": "tab:purple"}

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, approach 3
N_BOOT = 100
GROUP_RATIO = 1.3  # runs within this factor of a group's smallest C share a budget
GROUP_SPREAD = 1.1  # ... but a group whose C spread more than this mixes budgets (whole steps round C by ~3%)
ALPHA_BOUNDS = (0.01, 3.0)  # the saturating law's exponent search interval
MIN_SPREAD = 1e-4  # a loss whose (max - min) / mean is below this is constant: nothing to fit


# ---- L = E + A / x^alpha ------------------------------------------------------------------------------------

def _linear_e_a(x, y, alphas):
    """Best E >= 0 and A for each alpha, least squares on residuals relative to y -> (E, A, sse), each (K,)."""
    f = x[None, :] ** -np.asarray(alphas, np.float64)[:, None]  # (K, n)
    u, v = 1.0 / y, f / y  # the model (E + A f) / y  =  E u + A v, fitted to 1
    suu, svv, suv, su, sv = (u * u).sum(), (v * v).sum(1), (u * v).sum(1), u.sum(), v.sum(1)
    det = suu * svv - suv**2
    e = (su * svv - sv * suv) / det
    a = (suu * sv - suv * su) / det
    neg = e < 0  # E pinned at 0: A alone
    e, a = np.where(neg, 0.0, e), np.where(neg, sv / svv, a)
    sse = (((e[:, None] * u + a[:, None] * v) - 1.0) ** 2).sum(1)
    return e, a, sse


def fit_saturating(x, y) -> dict:
    """L = E + A / x^alpha -> dict(E, A, alpha): alpha on a grid, then golden-section refinement."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_scale = float(np.exp(np.mean(np.log(x))))  # conditioning: fit on x / x_scale, convert A back
    xs = x / x_scale
    grid = np.linspace(*ALPHA_BOUNDS, 300)
    best = int(np.argmin(_linear_e_a(xs, y, grid)[2]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section on alpha
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        sse = _linear_e_a(xs, y, [m1, m2])[2]
        lo, hi = (lo, m2) if sse[0] < sse[1] else (m1, hi)
    alpha = float(0.5 * (lo + hi))
    e, a, _ = _linear_e_a(xs, y, [alpha])
    return dict(E=float(e[0]), A=float(a[0]) * x_scale**alpha, alpha=float(alpha))


def fit_power(x, y) -> dict:
    """y = k x^a by least squares in log-log space -> dict(k, a)."""
    a, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return dict(k=float(np.exp(log_k)), a=float(a))  # np.exp: inf rather than OverflowError on degenerate data


def bootstrap(fit, columns: list[np.ndarray], keys: list[str], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """95% percentile intervals of fit(*columns)[key] over resampled rows -> {key: [lo, hi]}."""
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    draws = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if len(np.unique(columns[0][idx])) < 3:
            continue
        try:
            r = fit(*(c[idx] for c in columns))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        for k in keys:
            draws[k].append(r[k])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [math.nan, math.nan]
            for k, v in draws.items()}


# ---- refusals and flags -------------------------------------------------------------------------------------

def check_varies(y, what: str = "the loss") -> None:
    """Refuse a constant loss: no law can be fitted to it (the exponent would be anything, its interval zero)."""
    y = np.asarray(y, np.float64)
    spread = (y.max() - y.min()) / abs(y.mean()) if y.size and y.mean() else 0.0
    if spread < MIN_SPREAD:
        raise ValueError(f"{what} is constant over these runs (spread {spread:.1e} of its mean): nothing to fit")


def check_saturating(fit: dict, key: str = "alpha") -> list[str]:
    """Refuse a non-finite or x-independent law; flags for an exponent at its search bound."""
    bad = [k for k in ("E", "A", key) if not math.isfinite(fit[k])]
    if bad:
        raise ValueError(f"the fit is degenerate ({bad[0]} = {fit[bad[0]]}): the points do not determine a law")
    if fit["A"] <= 0:
        raise ValueError("the fitted law does not depend on x (A = 0): the loss does not fall with x")
    flags = []
    for bound in ALPHA_BOUNDS:
        if abs(fit[key] - bound) < 1e-3 * max(1.0, bound):
            flags.append(f"{key} = {fit[key]:.3f} sits at its search bound {bound}: these runs do not determine it "
                         "(too few points, too narrow a range, or a loss that does not saturate)")
    return flags


def interval_flags(fit: dict) -> list[str]:
    flags = []
    for k, (lo, hi) in fit.get("interval", {}).items():
        if math.isnan(lo) or math.isnan(hi):
            flags.append(f"no bootstrap interval for {k}: the resampled fits failed")
        elif not (math.isfinite(lo) and math.isfinite(hi)):
            flags.append(f"unbounded bootstrap interval for {k} ([{lo:.3g}, {hi:.3g}]): resampled fits send it to "
                         "infinity, these runs do not determine it")
        elif hi - lo <= 1e-9 * max(1.0, abs(fit.get(k, 1.0))):
            flags.append(f"zero-width interval for {k}: every resample gives the same fit (degenerate data)")
    return flags


def _flagged(fit: dict, flags: list[str]) -> dict:
    if flags:
        fit.setdefault("flags", [])
        fit["flags"] += [f for f in flags if f not in fit["flags"]]
    return fit


def envelope(x, y):
    """For each distinct x, the lowest y: (xs, ys) sorted by x."""
    best: dict[float, float] = {}
    for xi, yi in zip(x, y):
        best[xi] = min(yi, best.get(xi, math.inf))
    xs = np.array(sorted(best))
    return xs, np.array([best[v] for v in xs])


def fit_law(x, y) -> dict:
    """L(x) = E + A / x^alpha on the envelope, with bootstrap intervals for alpha and E."""
    xs, ys = envelope(x, y)
    if len(xs) < 3:
        raise ValueError(f"needs >= 3 distinct values, has {len(xs)}")
    check_varies(ys)
    fit = fit_saturating(xs, ys)
    flags = check_saturating(fit)
    fit["interval"] = bootstrap(fit_saturating, [xs, ys], ["alpha", "E"])
    fit["points"] = [xs.tolist(), ys.tolist()]
    return _flagged(fit, flags + interval_flags(fit))


# ---- IsoFLOP profiles (approach 2) --------------------------------------------------------------------------

def budget_groups(c, budget=None) -> list[np.ndarray]:
    """Indices of the runs of each compute budget, by ascending budget: the `budget` column when there is one,
    else runs within GROUP_RATIO of a group's smallest C. Refuses groups that mix budgets (C spread over
    GROUP_SPREAD: budgets too close for the ratio rule) and declared budgets whose runs' C overlap."""
    c = np.asarray(c, np.float64)
    if budget is not None:
        budget = np.asarray(budget, np.float64)
        groups = [np.flatnonzero(budget == b) for b in np.unique(budget)]
        ranges = [(c[g].min(), c[g].max()) for g in groups]
        for (lo1, hi1), (lo2, hi2), b1, b2 in zip(ranges, ranges[1:], np.unique(budget), np.unique(budget)[1:]):
            if hi1 >= lo2:
                raise ValueError(f"budgets {b1:.3g} and {b2:.3g} overlap: runs of the smaller spend up to {hi1:.3g} "
                                 f"FLOPs, of the larger from {lo2:.3g}; they cannot be told apart")
        return groups
    order, groups = np.argsort(c), []
    for i in order:
        if groups and c[i] <= GROUP_RATIO * c[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    for g in groups:
        if c[g[-1]] > GROUP_SPREAD * c[g[0]]:
            raise ValueError(f"runs with C from {c[g[0]]:.3g} to {c[g[-1]]:.3g} ({c[g[-1]] / c[g[0]]:.2f}x) fall in one "
                             f"group of the {GROUP_RATIO} ratio rule: budgets too close to separate; record each "
                             "run's budget (the `budget` column, as gpt2jax.training.compute.isoflop_grid's do)")
    return [np.array(g) for g in groups]


def isoflop_design(c, n, budget=None, d=None) -> bool:
    """Whether the rows are IsoFLOP profiles: declared budgets, or >= 3 sizes N trained at (nearly) one C
    (within GROUP_SPREAD) with different D. A fixed-D study's C grows with N and is not one."""
    if budget is not None:
        return True
    c, n = np.asarray(c, np.float64), np.asarray(n, np.float64)
    d = np.asarray(d, np.float64) if d is not None else c / n
    order = np.argsort(c)
    c, n, d = c[order], n[order], d[order]
    for i in range(len(c)):
        near = slice(i, int(np.searchsorted(c, GROUP_SPREAD * c[i], side="right")))
        if len(np.unique(n[near])) >= 3 and len(np.unique(d[near])) >= 2:
            return True
    return False


def isoflop_minimum(n, d, loss) -> dict:
    """One budget: the parabola L = p0 (log N)^2 + p1 log N + p2 and its minimum."""
    log_n = np.log(n)
    if len(np.unique(log_n)) < 3:
        raise ValueError("an IsoFLOP profile needs >= 3 model sizes")
    check_varies(loss, "the loss of this budget")
    p = np.polyfit(log_n, loss, 2)
    if p[0] <= 0:
        raise ValueError("the profile is not convex (no minimum): widen the range of model sizes")
    x = -p[1] / (2 * p[0])
    if not log_n.min() <= x <= log_n.max():  # a vertex outside the sizes run is an extrapolation, not a minimum
        side = "smaller" if x < log_n.min() else "larger"
        raise ValueError(f"the profile's minimum lies outside the sampled sizes: add {side} models to this budget")
    q = np.polyfit(log_n, np.log(d), 1)
    return dict(n_opt=float(math.exp(x)), d_opt=float(math.exp(np.polyval(q, x))), loss_opt=float(np.polyval(p, x)),
                parabola=p.tolist())


def _isoflop_exponents(n, d, c, loss, groups) -> dict:
    minima = []
    for i, g in enumerate(groups):
        try:
            minima.append(dict(flops=float(np.exp(np.mean(np.log(c[g])))), group=i,
                               **isoflop_minimum(n[g], d[g], loss[g])))
        except ValueError:
            continue
    if len(minima) < 2:
        why = ""
        for g in groups:
            try:
                isoflop_minimum(n[g], d[g], loss[g])
            except ValueError as e:
                why = f" ({e})"
                break
        raise ValueError(f"needs >= 2 budgets with a convex profile over >= 3 sizes, has {len(minima)}{why}")
    cs = np.array([m["flops"] for m in minima])
    fn, fd = fit_power(cs, [m["n_opt"] for m in minima]), fit_power(cs, [m["d_opt"] for m in minima])
    return dict(a=fn["a"], k_n=fn["k"], b=fd["a"], k_d=fd["k"], minima=minima)


def fit_isoflop(n, d, c, loss, budget=None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    n, d, c, loss = (np.asarray(v, np.float64) for v in (n, d, c, loss))
    groups = budget_groups(c, budget)
    fit = _isoflop_exponents(n, d, c, loss, groups)
    rng, draws = np.random.default_rng(seed), {"a": [], "b": []}
    for _ in range(n_boot):  # resample runs within each budget
        resampled = [rng.choice(g, len(g)) for g in groups]
        flat = np.concatenate(resampled)
        offsets = np.cumsum([0] + [len(g) for g in resampled])
        try:
            r = _isoflop_exponents(n[flat], d[flat], c[flat], loss[flat],
                                   [np.arange(offsets[i], offsets[i + 1]) for i in range(len(resampled))])
        except (ValueError, np.linalg.LinAlgError):
            continue
        draws["a"].append(r["a"])
        draws["b"].append(r["b"])
    fit["interval"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [math.nan] * 2
                       for k, v in draws.items()}
    fit["groups"] = [g.tolist() for g in groups]
    flags = interval_flags(fit)
    if len(fit["minima"]) == 2:
        flags.append("the exponents come from 2 budgets: a line through two points, no test of the power law")
    skipped = len(groups) - len(fit["minima"])
    if skipped:
        flags.append(f"{skipped} of {len(groups)} budgets have no minimum inside their sizes and are left out")
    return _flagged(fit, flags)


def fit_frontier(c, loss, isoflop: dict | None = None, budget=None) -> dict:
    """L(C) = E + A / C^gamma through the IsoFLOP minima, else through the runs that no cheaper run beats; over
    at least 3 distinct budgets (one budget's runs differ in C only by the rounding of whole steps)."""
    c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
    check_varies(loss)
    if budget is not None and len(np.unique(budget)) < 3:
        raise ValueError(f"needs >= 3 compute budgets, has {len(np.unique(budget))}: a frontier over one or two "
                         "budgets is no law of C")
    if isoflop and len(isoflop["minima"]) >= 3:
        cs = np.array([m["flops"] for m in isoflop["minima"]])
        ls = np.array([m["loss_opt"] for m in isoflop["minima"]])
    else:
        order = np.argsort(c)
        keep, best = [], math.inf
        for i in order:
            if loss[i] < best:
                keep.append(i)
                best = loss[i]
        cs, ls = np.asarray(c, np.float64)[keep], np.asarray(loss, np.float64)[keep]
        levels = 0 if not keep else 1 + int(np.sum(np.diff(np.log(cs)) > math.log(GROUP_SPREAD)))
        if levels < 3:
            raise ValueError(f"the frontier points (runs no cheaper run beats) span {levels} compute level(s) "
                             f"({GROUP_SPREAD}x apart); needs >= 3 budgets: one budget's runs differ in C only by "
                             "the rounding of whole steps")
    if len(cs) < 3:
        raise ValueError(f"needs >= 3 frontier points, has {len(cs)}")
    check_varies(ls)
    fit = fit_saturating(cs, ls)
    flags = check_saturating(fit)
    fit["gamma"] = fit.pop("alpha")
    flags = [f.replace("alpha", "gamma", 1) for f in flags]
    boot = bootstrap(lambda x, y: {"gamma": fit_saturating(x, y)["alpha"]}, [cs, ls], ["gamma"])
    fit = dict(fit, interval=boot, points=[cs.tolist(), ls.tolist()])
    return _flagged(fit, flags + interval_flags(fit))


# ---- parametric L(N, D) (approach 3) ------------------------------------------------------------------------

def _objective(theta, log_n, log_d, log_l, weights, delta):
    """theta (K, 5) = (a, b, e, alpha, beta); weights (K, n) -> (f (K,), grad (K, 5))."""
    a, b, e, al, be = (theta[:, i:i + 1] for i in range(5))
    terms = np.stack([a - al * log_n, b - be * log_d, np.broadcast_to(e, (theta.shape[0], log_n.size))], -1)
    m = terms.max(-1, keepdims=True)
    w = np.exp(terms - m)  # (K, n, 3)
    s = w.sum(-1)
    r = (m[..., 0] + np.log(s)) - log_l  # (K, n)
    w /= s[..., None]
    huber = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    h = np.clip(r, -delta, delta) * weights  # dHuber/dr, weighted
    grad = np.stack([(h * w[..., 0]).sum(1), (h * w[..., 1]).sum(1), (h * w[..., 2]).sum(1),
                     -(h * w[..., 0] * log_n).sum(1), -(h * w[..., 1] * log_d).sum(1)], 1)
    return (huber * weights).sum(1), grad


def _bfgs(theta, fn, iters: int = 500):
    """Batched BFGS with backtracking (Armijo) line search: every row of theta (K, P) is its own problem, and a
    row stops once a step changes neither theta nor f any more. fn(theta_rows, row_indices) -> (f, grad)."""
    K, P = theta.shape
    theta, eye = theta.copy(), np.eye(P)
    H = np.broadcast_to(eye, (K, P, P)).copy()
    f, g = fn(theta, np.arange(K))
    live = np.arange(K)
    for _ in range(iters):
        if live.size == 0:
            break
        th, fl, gl, Hl = theta[live], f[live], g[live], H[live]
        p = -np.einsum("kij,kj->ki", Hl, gl)
        bad = (gl * p).sum(1) >= 0  # not a descent direction: restart from the gradient
        p[bad], Hl[bad] = -gl[bad], eye
        slope = (gl * p).sum(1)
        t = np.ones(live.size)
        new_th, new_f, new_g = th.copy(), fl.copy(), gl.copy()
        searching = np.arange(live.size)
        for _ in range(40):
            cand = th[searching] + t[searching, None] * p[searching]
            cf, cg = fn(cand, live[searching])
            ok = cf <= fl[searching] + 1e-4 * t[searching] * slope[searching]
            done = searching[ok]
            new_th[done], new_f[done], new_g[done] = cand[ok], cf[ok], cg[ok]
            searching = searching[~ok]
            t[searching] *= 0.5
            if searching.size == 0:
                break
        s, y = new_th - th, new_g - gl
        sy = (s * y).sum(1)
        upd = sy > 1e-20
        rho = np.where(upd, 1.0 / np.where(upd, sy, 1.0), 0.0)[:, None, None]
        left = eye - rho * np.einsum("ki,kj->kij", s, y)
        H_new = np.einsum("kij,kjl,kml->kim", left, Hl, left) + rho * np.einsum("ki,kj->kij", s, s)
        Hl[upd] = H_new[upd]
        theta[live], f[live], g[live], H[live] = new_th, new_f, new_g, Hl
        still = (np.abs(s).max(1) > 1e-12) & (fl - new_f > 1e-15 * np.maximum(1.0, np.abs(fl)))
        live = live[still]
    return theta, f


def fit_parametric(n, d, loss, delta: float = HUBER_DELTA, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """L(N, D) = E + A / N^alpha + B / D^beta (approach 3) with bootstrap intervals."""
    log_n, log_d, log_l = (np.log(np.asarray(v, np.float64)) for v in (n, d, loss))
    if len(np.unique(log_n)) < 3 or len(np.unique(log_d)) < 3:
        raise ValueError("needs >= 3 distinct N and >= 3 distinct D")
    check_varies(np.exp(log_l))
    if abs(np.corrcoef(log_n, log_d)[0, 1]) > 0.99:
        raise ValueError("N and D vary together (|corr(log N, log D)| > 0.99, e.g. one budget): A / N^alpha and "
                         "B / D^beta cannot be told apart")
    grid = np.array(np.meshgrid(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
                                np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5), indexing="ij")).reshape(5, -1).T

    def solve(theta0, weights, iters=500):
        def fn(theta, rows):
            return _objective(theta, log_n, log_d, log_l, weights[rows], delta)
        return _bfgs(theta0, fn, iters)

    # every initialisation gets 30 BFGS iterations; the 16 best of them run to convergence
    theta, f = solve(grid, np.ones((len(grid), log_n.size)), iters=30)
    top = np.argsort(np.where(np.isfinite(f), f, np.inf))[:16]
    theta, f = solve(theta[top], np.ones((len(top), log_n.size)))
    best = theta[int(np.nanargmin(f))]
    # bootstrap: resampled rows as multinomial weights, each started from the best fit and 3 nearby starts
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(log_n.size, np.full(log_n.size, 1.0 / log_n.size), size=n_boot)  # (n_boot, n)
    starts = best + np.concatenate([np.zeros((1, 5)), rng.normal(0, [1, 1, 0.1, 0.05, 0.05], (3, 5))])
    bt, bf = solve(np.repeat(starts[None], n_boot, 0).reshape(-1, 5), np.repeat(counts, len(starts), 0).astype(float))
    bt = bt.reshape(n_boot, len(starts), 5)[np.arange(n_boot), np.nanargmin(bf.reshape(n_boot, -1), 1)]
    out = _parametric_dict(best)
    draws = [_parametric_dict(t) for t in bt]
    out["interval"] = {k: [float(np.nanpercentile([d[k] for d in draws], 2.5)),
                           float(np.nanpercentile([d[k] for d in draws], 97.5))] for k in out}
    out["huber_loss"] = float(np.nanmin(f))
    bad = [k for k in ("E", "A", "B", "alpha", "beta") if not math.isfinite(out[k])]
    if bad:
        raise ValueError(f"the fit is degenerate ({bad[0]} = {out[bad[0]]})")
    flags = [f"{k} = {out[k]:.3f} lies outside [0, {ALPHA_BOUNDS[1]}]: not a plausible exponent, these runs do "
             "not determine it" for k in ("alpha", "beta") if not 0 < out[k] <= ALPHA_BOUNDS[1]]
    flags += [f"{k}'s 95% interval [{out['interval'][k][0]:.3g}, {out['interval'][k][1]:.3g}] reaches outside "
              f"[0, {ALPHA_BOUNDS[1]}]: these runs do not pin the exponent down (more sizes or budgets)"
              for k in ("alpha", "beta") if 0 < out[k] <= ALPHA_BOUNDS[1]
              and not 0 < out["interval"][k][0] <= out["interval"][k][1] <= ALPHA_BOUNDS[1]]
    return _flagged(out, flags + interval_flags(out))


def _parametric_dict(theta) -> dict:
    a, b, e, alpha, beta = (float(v) for v in theta)
    with np.errstate(over="ignore"):  # a bootstrap draw may wander to log A > 709: inf, which the interval shows
        E, A, B = (float(np.exp(v)) for v in (e, a, b))
    return dict(E=E, A=A, B=B, alpha=alpha, beta=beta, a=beta / (alpha + beta), b=alpha / (alpha + beta))


def predict_parametric(fit: dict, n, d):
    return fit["E"] + fit["A"] / np.asarray(n, np.float64) ** fit["alpha"] + fit["B"] / np.asarray(d, np.float64) ** fit["beta"]


# ---- the best run over tuned hyperparameters ----------------------------------------------------------------

def _axis_name(axis: str) -> str:
    return axis.split(".")[-1]


def best_over(rows: list[dict], tuned, loss_key: str = "metric", n_key: str = "params") -> tuple[list[dict], list[dict]]:
    """The envelope over tuned axes: per point (N, budget) when rows have budgets, else (N, D), the tuned values'
    best run (the mean over seeds of runs with the same values). -> (best rows, table) where each best row is a
    copy of one winning run with the mean loss, and each table entry says what was tried, what won and whether
    the winner sits at the edge of its grid (flag "extend the <axis> grid")."""
    tuned = tuple(tuned)
    rows = [r for r in rows if _num(r.get(loss_key)) and _num(r.get(n_key))]
    if not tuned or not rows:
        return rows, []
    missing = [a for a in tuned if any(a not in r for r in rows)]
    if missing:
        raise ValueError(f"the rows have no column {missing[0]!r} (a tuned axis)")
    by_budget = all(_num(r.get("budget")) for r in rows)
    point = lambda r: (float(r[n_key]), float(r["budget"]) if by_budget else float(r["tokens"]))  # noqa: E731
    points: dict = {}
    for r in rows:
        points.setdefault(point(r), {}).setdefault(tuple(r[a] for a in tuned), []).append(r)
    best, table = [], []
    for key in sorted(points, key=lambda k: (k[1], k[0])):  # by budget (or D), then N
        settings = points[key]
        means = {v: float(np.mean([float(r[loss_key]) for r in rs])) for v, rs in settings.items()}
        winner = min(means, key=means.get)
        entry = dict(n=key[0], budget=key[1] if by_budget else None, tokens=None if by_budget else key[1],
                     loss=means[winner], won=dict(zip(tuned, winner)), tried={}, flags=[])
        for i, axis in enumerate(tuned):
            # the values tried with the winner's other axes fixed
            values = sorted({v[i] for v in settings if all(v[j] == winner[j] for j in range(len(tuned)) if j != i)},
                            key=float)
            entry["tried"][axis] = values
            if len(values) < 2:
                entry["flags"].append(f"{_axis_name(axis)} not tuned here: one value ({values[0]})")
            elif winner[i] in (values[0], values[-1]):
                edge = "lowest" if winner[i] == values[0] else "highest"
                entry["flags"].append(f"{_axis_name(axis)}={winner[i]} is the {edge} value tried: extend the "
                                      f"{_axis_name(axis)} grid")
        table.append(entry)
        best.append(dict(settings[winner][0], **{loss_key: means[winner]}, tuned_flags="; ".join(entry["flags"])))
    return best, table


def tuned_flags(table: list[dict]) -> list[str]:
    """One flag per kind of edge winner over the table: for the fits that use those points."""
    edge = [e for e in table if any("extend" in f for f in e["flags"])]
    if not edge:
        return []
    axes = sorted({f.split("=")[0] for e in edge for f in e["flags"] if "extend" in f})
    return [f"the best {', '.join(axes)} of {len(edge)} of {len(table)} points is at the edge of its grid: extend the "
            f"{', '.join(axes)} grid (those points' losses are upper bounds of their best)"]


# ---- everything, from rows ----------------------------------------------------------------------------------

FITS = ("L(N)", "L(D)", "isoflop", "L(C)", "parametric")


def flops_column(rows: list[dict], convention: str) -> np.ndarray | None:
    from gpt2jax.training.compute import FLOP_CONVENTIONS, convention_flops  # lazily: the fits stay numpy-only (no JAX) unless FLOP columns are asked for

    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"FLOP convention {convention!r} must be one of {list(FLOP_CONVENTIONS)}")
    try:
        c = np.array([convention_flops(r, convention) for r in rows])
    except (KeyError, TypeError, ValueError):
        return None
    return c if rows and np.all(np.isfinite(c)) else None


def fit_all(rows: list[dict], loss_key: str = "metric", n_key: str = "params", fits=FITS, tuned=(),
            flops: str = "6N+12LTC") -> dict:
    """Every requested fit that the rows allow: {name: fit dict (with "flags" when it is not to be trusted) or
    {"skipped": reason}}. tuned: config columns to take the best run over first (best_over; its table is
    returned as fits["tuned"]). flops: the FLOP convention of C."""
    rows = [r for r in rows if _num(r.get(loss_key)) and _num(r.get(n_key))]
    pre: dict = {}
    extra_flags: list[str] = []
    if tuned:
        rows, table = best_over(rows, tuned, loss_key, n_key)
        pre["tuned"] = dict(axes=list(tuned), points=table)
        extra_flags = tuned_flags(table)
    col = lambda k: np.array([float(r[k]) for r in rows]) if rows and all(_num(r.get(k)) for r in rows) else None  # noqa: E731
    loss, n, d = col(loss_key), col(n_key), col("tokens")
    c = flops_column(rows, flops)
    budget = col("budget") if rows and all(_num(r.get("budget")) for r in rows) else None
    out: dict = {}
    for name in fits:
        try:
            if loss is None or len(rows) < 3:
                raise ValueError(f"needs >= 3 finished runs with {loss_key!r} and {n_key!r}")
            if name != "L(N)" and (d is None or c is None):
                raise ValueError("needs the columns tokens and flops (recorded by every run since compute accounting)")
            if name in ("L(N)", "L(D)") and c is not None and isoflop_design(c, n, budget, d):
                raise ValueError("these are IsoFLOP rows (each N trained at its budget's D): the envelope over them "
                                 "is no law of N or D alone; read the isoflop and parametric fits")
            if name == "L(N)":
                out[name] = fit_law(n, loss)
            elif name == "L(D)":
                out[name] = fit_law(d, loss)
            elif name == "isoflop":
                out[name] = fit_isoflop(n, d, c, loss, budget)
            elif name == "L(C)":
                iso = out.get("isoflop")
                out[name] = fit_frontier(c, loss, iso if iso and "skipped" not in iso else None, budget)
            elif name == "parametric":
                out[name] = fit_parametric(n, d, loss)
            if name != "L(N)":
                out[name]["flops_convention"] = flops
            _flagged(out[name], extra_flags)
        except ValueError as e:
            out[name] = {"skipped": str(e)}
    return {**out, **pre}


def _num(v) -> bool:
    try:
        return v is not None and v != "" and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def convention_line(flops: str) -> str:
    from gpt2jax.training.compute import FLOP_CONVENTIONS  # lazily: the fits stay numpy-only (no JAX) unless FLOP columns are asked for

    return f"FLOPs: convention {flops!r}: {FLOP_CONVENTIONS[flops][0]}"


def describe(fits: dict, n_key: str = "params", flops: str = "6N+12LTC") -> list[str]:
    """Human-readable lines: the FLOP convention, the tuned axes' winners, then one line per fit; a refused fit
    says why, a flagged one says FLAGGED and why before any number."""
    iv = lambda f, k: f"[{f['interval'][k][0]:.3f}, {f['interval'][k][1]:.3f}]"  # noqa: E731
    lines = [f"- {convention_line(flops)}"]
    if "tuned" in fits:
        lines += tuned_table(fits["tuned"])
    for name, f in fits.items():
        if name == "tuned":
            continue
        if "skipped" in f:
            lines.append(f"- {name}: refused ({f['skipped']})")
            continue
        head = f"- {name}: FLAGGED, not a result ({'; '.join(f['flags'])}); for diagnosis only: " if f.get("flags") \
            else f"- {name}: "
        if name in ("L(N)", "L(D)"):
            x = n_key if name == "L(N)" else "tokens"
            lines.append(f"{head}L = {f['E']:.4f} + {f['A']:.4g} / {x}^{f['alpha']:.4f}; "
                         f"alpha 95% {iv(f, 'alpha')}, E 95% {iv(f, 'E')}")
        elif name == "isoflop":
            lines.append(f"{head}IsoFLOP (approach 2): N_opt = {f['k_n']:.3g} C^{f['a']:.3f} (a 95% {iv(f, 'a')}), "
                         f"D_opt = {f['k_d']:.3g} C^{f['b']:.3f} (b 95% {iv(f, 'b')}); minima: "
                         + ", ".join(f"C={m['flops']:.3g}: N_opt={m['n_opt']:.3g}, D_opt={m['d_opt']:.3g}, "
                                     f"L={m['loss_opt']:.4f}" for m in f["minima"]))
        elif name == "L(C)":
            lines.append(f"{head}L(C) frontier: L = {f['E']:.4f} + {f['A']:.4g} / C^{f['gamma']:.4f}; "
                         f"gamma 95% {iv(f, 'gamma')}")
        elif name == "parametric":
            lines.append(f"{head}L(N, D) (approach 3): E={f['E']:.4f}, A={f['A']:.4g}, B={f['B']:.4g}, "
                         f"alpha={f['alpha']:.4f} {iv(f, 'alpha')}, beta={f['beta']:.4f} {iv(f, 'beta')}; "
                         f"N_opt ~ C^{f['a']:.3f} {iv(f, 'a')}, D_opt ~ C^{f['b']:.3f} {iv(f, 'b')}")
    return lines


def tuned_table(tuned: dict) -> list[str]:
    """The envelope's markdown table: per point, the values tried, the winner, its loss and its flags."""
    axes = tuned["axes"]
    by_budget = any(p["budget"] is not None for p in tuned["points"])
    lines = ["", f"Best over {', '.join(axes)} per (N, {'budget' if by_budget else 'D'}) (mean over seeds):", "",
             f"| N | {'budget' if by_budget else 'tokens'} | " + " | ".join(f"{a} tried | {a} best" for a in axes)
             + " | loss | flag |", "|---|---|" + "---|---|" * len(axes) + "---|---|"]
    for p in tuned["points"]:
        cells = [f"{p['n']:.4g}", f"{(p['budget'] if by_budget else p['tokens']):.3g}"]
        for a in axes:
            cells += [", ".join(str(v) for v in p["tried"][a]), f"**{p['won'][a]}**"]
        cells += [f"{p['loss']:.4f}", "; ".join(p["flags"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# ---- published laws ----------------------------------------------------------------------------------------

def published_curve(name: str, fit_name: str, x, other=None):
    """A published law's loss along a fit's x axis (None where it has no such curve). L(N): other = each point's
    D; L(D): other = each point's N; L(C): the law's compute-optimal frontier (parametric laws minimised over N
    with C = 6 N D, Kaplan's L(C_min)); isoflop: x = N at budget other."""
    law = PUBLISHED[name]
    x = np.asarray(x, np.float64)
    if law["kind"] == "kaplan":
        if fit_name == "L(N)":
            return (law["n_c"] / x) ** law["alpha_n"]
        if fit_name == "L(D)":
            return (law["d_c"] / x) ** law["alpha_d"]
        if fit_name == "L(C)":
            return (law["c_c"] / x) ** law["alpha_c"]
        return None
    f = lambda n, d: law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]  # noqa: E731
    if fit_name == "L(N)" and other is not None:
        return f(x, np.asarray(other, np.float64))
    if fit_name == "L(D)" and other is not None:
        return f(np.asarray(other, np.float64), x)
    if fit_name == "L(C)":
        n = np.geomspace(1e3, 1e15, 2000)[None, :]
        return f(n, x[:, None] / (6 * n)).min(1)
    if fit_name == "isoflop" and other is not None:
        return f(x, float(other) / (6 * x))
    return None


# ---- plots -------------------------------------------------------------------------------------------------

def plot_fits(fits: dict, rows: list[dict], out_dir: Path, loss_key: str = "metric", n_key: str = "params",
              title: str = "", loss_label: str = "", flops: str = "6N+12LTC", compare=()) -> list[Path]:
    """One PNG per fit (scaling_<name>.png) -> the paths written. loss_key: the column; loss_label: its name.
    A refused fit's plot shows its runs and why it was refused; a flagged fit is drawn dashed, with its flags in
    red; both texts are also in the PNG's Description. compare: PUBLISHED laws drawn beside (noted as such).
    With tuned axes (fits["tuned"]) the points are the envelope's and scaling_tuned.png shows loss against each
    tuned value per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if _num(r.get(loss_key)) and _num(r.get(n_key))]
    all_rows = rows
    if "tuned" in fits:
        rows, _ = best_over(rows, fits["tuned"]["axes"], loss_key, n_key)
    c = flops_column(rows, flops)
    paths = []
    for name, f in fits.items():
        if name == "tuned":
            paths.append(_plot_tuned(plt, f, all_rows, out_dir, loss_key, n_key, title, loss_label))
            continue
        notes = []
        fig, axes = plt.subplots(1, 2 if name == "isoflop" and "skipped" not in f else 1,
                                 figsize=(11 if name == "isoflop" and "skipped" not in f else 6, 4.5))
        ax = axes[0] if isinstance(axes, np.ndarray) else axes
        style = "--" if f.get("flags") else "-"
        if "skipped" in f:
            notes.append(f"REFUSED: {f['skipped']}")
            _plot_refused(ax, name, rows, loss_key, n_key, c)
        elif name in ("L(N)", "L(D)", "L(C)"):
            xs, ys = (np.array(v) for v in f["points"])
            exp = f.get("alpha", f.get("gamma"))
            grid = np.geomspace(xs.min(), xs.max(), 100)
            ax.semilogx(xs, ys, "o", label="runs" if name != "L(C)" else "frontier points")
            ax.semilogx(grid, f["E"] + f["A"] / grid**exp, style, label=f"E + A/x^{exp:.3f}, E={f['E']:.3f}")
            ax.set_xlabel({"L(N)": n_key, "L(D)": "tokens D", "L(C)": f"training FLOPs C ({flops})"}[name])
            for law in compare:
                other = None
                if name in ("L(N)", "L(D)"):  # each point's other coordinate, from its envelope run
                    key, okey = (n_key, "tokens") if name == "L(N)" else ("tokens", n_key)
                    pick = {float(r[key]): r for r in sorted(rows, key=lambda r: -float(r[loss_key]))}
                    other = [float(pick[x][okey]) for x in xs]
                y = published_curve(law, name, xs if other is not None else grid, other)
                if y is not None:
                    _published_axis(ax).semilogx(xs if other is not None else grid, y, ":",
                                                 color=PUBLISHED_COLORS[law], label=PUBLISHED[law]["label"])
        elif name == "isoflop":
            _plot_isoflop(ax, axes[1], f, rows, loss_key, n_key, flops, compare)
        elif name == "parametric":
            obs = np.array([float(r[loss_key]) for r in rows])
            nn, dd = np.array([float(r[n_key]) for r in rows]), np.array([float(r["tokens"]) for r in rows])
            pred = predict_parametric(f, nn, dd)
            ax.plot(pred, obs, "o", label="this study's fit")
            for law in compare:
                if PUBLISHED[law]["kind"] == "parametric":
                    _published_axis(ax, "x").plot(predict_parametric(PUBLISHED[law], nn, dd), obs, "x",
                                                  color=PUBLISHED_COLORS[law], label=PUBLISHED[law]["label"])
            lim = [min(obs.min(), pred.min()), max(obs.max(), pred.max())]
            ax.plot(lim, lim, "k" + style, lw=1, label=f"alpha={f['alpha']:.3f}, beta={f['beta']:.3f}, E={f['E']:.3f}")
            ax.set_xlabel("L(N, D) predicted")
        if compare and "skipped" not in f:
            notes.append(PUBLISHED_NOTE)
        notes += [f"FLAGGED: {x}" for x in f.get("flags", [])]
        if name != "L(N)":
            notes.append(f"C: {flops} FLOPs")
        ax.set_ylabel(loss_label or loss_key)
        _legend(ax)
        import textwrap

        text = "\n".join(textwrap.fill(t, 110) for t in notes)
        if text:
            fig.text(0.01, 0.01, text, fontsize=6.5, va="bottom", ha="left",
                     color="red" if "skipped" in f or f.get("flags") else "dimgray")
        fig.suptitle(f"{title} {name}".strip() + (" - REFUSED" if "skipped" in f else
                                                  " - FLAGGED, not a result" if f.get("flags") else ""))
        fig.tight_layout(rect=(0, 0.03 + 0.022 * text.count("\n") + (0.03 if text else 0), 1, 1))
        path = out_dir / f"scaling_{name.replace('(', '_').replace(')', '').replace(', ', '_')}.png"
        fig.savefig(path, dpi=110, metadata={"Description": text})
        plt.close(fig)
        paths.append(path)
    return paths


def _published_axis(ax, which: str = "y"):
    """A twin axis for published laws (their losses are another data set's, on another scale), made once."""
    if not hasattr(ax, "_published"):
        ax._published = ax.twinx() if which == "y" else ax.twiny()
        label = "published law's loss (nats/token, other data)"
        (ax._published.set_ylabel if which == "y" else ax._published.set_xlabel)(label, fontsize=7, color="dimgray")
        ax._published.tick_params(labelsize=7, colors="dimgray")
    return ax._published


def _legend(ax):
    handles, labels = ax.get_legend_handles_labels()
    if hasattr(ax, "_published"):
        more = ax._published.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, fontsize=7)


def _plot_refused(ax, name, rows, loss_key, n_key, c):
    x = {"L(N)": [float(r[n_key]) for r in rows], "isoflop": [float(r[n_key]) for r in rows],
         "parametric": [float(r[n_key]) for r in rows], "L(D)": [float(r.get("tokens") or math.nan) for r in rows],
         "L(C)": list(c) if c is not None else [math.nan] * len(rows)}[name]
    ax.semilogx(x, [float(r[loss_key]) for r in rows], "o", color="gray", label="runs")
    ax.set_xlabel({"L(D)": "tokens D", "L(C)": "training FLOPs C"}.get(name, f"{n_key} N"))


def _plot_tuned(plt, tuned, rows, out_dir, loss_key, n_key, title, loss_label) -> Path:
    """Loss against each tuned value, one line per point (N, budget or D), coloured by budget (or D); the winner
    starred, an edge winner ringed in red."""
    import textwrap

    axes_names = tuned["axes"]
    fig, axs = plt.subplots(1, len(axes_names), figsize=(6.5 * len(axes_names), 4.8), squeeze=False)
    key = "budget" if any(p["budget"] is not None for p in tuned["points"]) else "tokens"
    groups = sorted({p[key] for p in tuned["points"]})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(groups)))
    for ax, axis in zip(axs[0], axes_names):
        labelled = set()
        for p in tuned["points"]:
            mine = [r for r in rows if float(r[n_key]) == p["n"] and float(r[key]) == p[key]
                    and all(r[a] == p["won"][a] for a in axes_names if a != axis)]
            vals = sorted({float(r[axis]) for r in mine})
            means = [np.mean([float(r[loss_key]) for r in mine if float(r[axis]) == v]) for v in vals]
            color = colors[groups.index(p[key])]
            label = None if p[key] in labelled else f"{'C' if key == 'budget' else 'D'} = {p[key]:.2g}"
            labelled.add(p[key])
            ax.semilogx(vals, means, "o-", ms=3, lw=1, color=color, label=label)
            ax.plot([float(p["won"][axis])], [p["loss"]], "*", color=color, ms=10)
            if any("extend" in f and f.startswith(_axis_name(axis) + "=") for f in p["flags"]):
                ax.plot([float(p["won"][axis])], [p["loss"]], "o", mfc="none", mec="red", ms=13, mew=1.5)
        ax.plot([], [], "k*", ms=8, label="best value of a size")
        ax.plot([], [], "o", mfc="none", mec="red", ms=10, label="best at the grid's edge")
        ax.set_xlabel(f"{axis} (one line per model size)")
        ax.set_ylabel(loss_label or loss_key)
        ax.legend(fontsize=7)
    text = "\n".join(textwrap.fill(f"FLAGGED: {f}", 120) for f in tuned_flags(tuned["points"]))
    if text:
        fig.text(0.01, 0.01, text, fontsize=7, color="red", va="bottom")
    fig.suptitle(f"{title} best over {', '.join(axes_names)}".strip())
    fig.tight_layout(rect=(0, 0.04 + 0.025 * text.count("\n") if text else 0, 1, 1))
    path = out_dir / "scaling_tuned.png"
    fig.savefig(path, dpi=110, metadata={"Description": text})
    plt.close(fig)
    return path


def _plot_isoflop(ax, ax2, f, rows, loss_key, n_key, flops="6N+12LTC", compare=()):
    from matplotlib.ticker import NullFormatter

    n = np.array([float(r[n_key]) for r in rows])
    loss = np.array([float(r[loss_key]) for r in rows])
    edge = np.array([bool(r.get("tuned_flags")) and "extend" in r.get("tuned_flags", "") for r in rows])
    minima = {m["group"]: m for m in f["minima"]}
    for i, g in enumerate(f["groups"]):  # every budget's runs; the parabola and its minimum where one was fitted
        line, = ax.semilogx(n[g], loss[g], "o", label=None if i in minima else f"group {i}: no minimum inside")
        if i in minima:
            m = minima[i]
            grid = np.geomspace(n[g].min(), n[g].max(), 50)
            ax.semilogx(grid, np.polyval(m["parabola"], np.log(grid)), "--" if f.get("flags") else "-",
                        color=line.get_color(), label=f"C={m['flops']:.2g}")
            ax.plot([m["n_opt"]], [m["loss_opt"]], "k*", ms=10)
            for law in compare:
                y = published_curve(law, "isoflop", grid, m["flops"])
                if y is not None:
                    _published_axis(ax).semilogx(grid, y, ":", color=line.get_color(), lw=1)
    g = np.asarray(edge)
    if g.any():
        ax.plot(n[g], loss[g], "o", mfc="none", mec="red", ms=11, mew=1.5, label="best lr at its grid's edge")
    if compare:
        ax.plot([], [], "k:", lw=1, label="dotted, right axis: " + ", ".join(
            PUBLISHED[k]["label"] for k in compare if PUBLISHED[k]["kind"] == "parametric"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.set_xlabel(f"{n_key} N")
    _legend(ax)
    cs = np.array([m["flops"] for m in f["minima"]])
    ax2.loglog(cs, [m["n_opt"] for m in f["minima"]], "o", label="N_opt")
    ax2.loglog(cs, [m["d_opt"] for m in f["minima"]], "s", label="D_opt")
    ax2.loglog(cs, f["k_n"] * cs ** f["a"], "-", label=f"N_opt ~ C^{f['a']:.3f}")
    ax2.loglog(cs, f["k_d"] * cs ** f["b"], "-", label=f"D_opt ~ C^{f['b']:.3f}")
    for law in compare:
        p = PUBLISHED[law]
        if p["kind"] == "parametric":
            a = p["beta"] / (p["alpha"] + p["beta"])
            ax2.loglog(cs, f["k_n"] * cs ** f["a"] * (cs / cs[0]) ** (a - f["a"]), ":", lw=1,
                       label=f"{p['label']}: N_opt ~ C^{a:.3f} (slope only)")
    ax2.set_xlabel(f"training FLOPs C ({flops})")
    ax2.legend(fontsize=7)


# ---- command line ------------------------------------------------------------------------------------------

def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m gpt2jax.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="a results table (e.g. runs/<experiment>/results.csv or runs.csv)")
    p.add_argument("--loss", default="metric", help="the loss column (default: metric)")
    p.add_argument("--n", default="params", help="the parameter-count column (params or non_embedding_params)")
    p.add_argument("--fits", default=",".join(FITS), help=f"comma-separated subset of {','.join(FITS)}")
    p.add_argument("--out", default="", help="directory for scaling.json and the plots (default: beside the CSV)")
    p.add_argument("--tuned", default="", help="comma-separated columns tuned by the study (e.g. optim.lr): the fits "
                                               "take the best run over them per (N, budget) or (N, D)")
    p.add_argument("--flops", default="6N+12LTC", help="FLOP convention of C: 6N+12LTC (recorded), 6N_nonemb "
                                                       "(Kaplan et al. 2020) or 6ND")
    p.add_argument("--compare", default="", help=f"published laws to draw beside the fits: {','.join(PUBLISHED)}")
    args = p.parse_args(argv)
    if not Path(args.csv).is_file():
        raise SystemExit(f"error: {args.csv} does not exist")
    rows = read_csv(args.csv)
    missing = [k for k in (args.loss, args.n) if rows and k not in rows[0]]
    if missing:
        raise SystemExit(f"error: {args.csv} has no column {missing[0]!r}; columns: {list(rows[0]) if rows else []}")
    tuned = [t for t in args.tuned.split(",") if t]
    compare = [t for t in args.compare.split(",") if t]
    bad = [t for t in compare if t not in PUBLISHED] + [t for t in tuned if rows and t not in rows[0]]
    if bad:
        raise SystemExit(f"error: {bad[0]!r} is neither a published law ({list(PUBLISHED)}) nor a column of {args.csv}")
    try:
        fits = fit_all(rows, args.loss, args.n, [s for s in args.fits.split(",") if s], tuned, args.flops)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out or Path(args.csv).parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(fits, indent=1) + "\n")
    paths = plot_fits(fits, rows, out, args.loss, args.n, flops=args.flops, compare=compare)
    print("\n".join(describe(fits, args.n, args.flops)))
    print("wrote " + ", ".join(str(q) for q in [out / "scaling.json", *paths]))
    return fits


if __name__ == "__main__":
    main()
