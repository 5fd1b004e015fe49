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
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, approach 3
N_BOOT = 100
GROUP_RATIO = 1.3  # runs within this factor of a group's smallest C share a budget


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
    grid = np.linspace(0.01, 3.0, 300)
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
    fit = fit_saturating(xs, ys)
    fit["interval"] = bootstrap(fit_saturating, [xs, ys], ["alpha", "E"])
    fit["points"] = [xs.tolist(), ys.tolist()]
    return fit


# ---- IsoFLOP profiles (approach 2) --------------------------------------------------------------------------

def budget_groups(c, budget=None) -> list[np.ndarray]:
    """Indices of the runs of each compute budget, by ascending budget."""
    c = np.asarray(c, np.float64)
    if budget is not None:
        budget = np.asarray(budget, np.float64)
        return [np.flatnonzero(budget == b) for b in np.unique(budget)]
    order, groups = np.argsort(c), []
    for i in order:
        if groups and c[i] <= GROUP_RATIO * c[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [np.array(g) for g in groups]


def isoflop_minimum(n, d, loss) -> dict:
    """One budget: the parabola L = p0 (log N)^2 + p1 log N + p2 and its minimum."""
    log_n = np.log(n)
    if len(np.unique(log_n)) < 3:
        raise ValueError("an IsoFLOP profile needs >= 3 model sizes")
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
        raise ValueError(f"needs >= 2 budgets with a convex profile over >= 3 sizes, has {len(minima)}")
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
    return fit


def fit_frontier(c, loss, isoflop: dict | None = None) -> dict:
    """L(C) = E + A / C^gamma through the IsoFLOP minima, else through the runs that no cheaper run beats."""
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
    if len(cs) < 3:
        raise ValueError(f"needs >= 3 frontier points, has {len(cs)}")
    fit = fit_saturating(cs, ls)
    fit["gamma"] = fit.pop("alpha")
    boot = bootstrap(lambda x, y: {"gamma": fit_saturating(x, y)["alpha"]}, [cs, ls], ["gamma"])
    return dict(fit, interval=boot, points=[cs.tolist(), ls.tolist()])


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
    return out


def _parametric_dict(theta) -> dict:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                a=beta / (alpha + beta), b=alpha / (alpha + beta))


def predict_parametric(fit: dict, n, d):
    return fit["E"] + fit["A"] / np.asarray(n, np.float64) ** fit["alpha"] + fit["B"] / np.asarray(d, np.float64) ** fit["beta"]


# ---- everything, from rows ----------------------------------------------------------------------------------

FITS = ("L(N)", "L(D)", "isoflop", "L(C)", "parametric")


def fit_all(rows: list[dict], loss_key: str = "metric", n_key: str = "params", fits=FITS) -> dict:
    """Every requested fit that the rows allow: {name: fit dict or {"skipped": reason}}."""
    rows = [r for r in rows if _num(r.get(loss_key)) and _num(r.get(n_key))]
    col = lambda k: np.array([float(r[k]) for r in rows]) if rows and all(_num(r.get(k)) for r in rows) else None  # noqa: E731
    loss, n, d, c = col(loss_key), col(n_key), col("tokens"), col("flops")
    budget = col("budget") if rows and "budget" in rows[0] else None
    out: dict = {}
    for name in fits:
        try:
            if loss is None or len(rows) < 3:
                raise ValueError(f"needs >= 3 finished runs with {loss_key!r} and {n_key!r}")
            if name != "L(N)" and (d is None or c is None):
                raise ValueError("needs the columns tokens and flops (recorded by every run since compute accounting)")
            if name == "L(N)":
                out[name] = fit_law(n, loss)
            elif name == "L(D)":
                out[name] = fit_law(d, loss)
            elif name == "isoflop":
                out[name] = fit_isoflop(n, d, c, loss, budget)
            elif name == "L(C)":
                iso = out.get("isoflop")
                out[name] = fit_frontier(c, loss, iso if iso and "skipped" not in iso else None)
            elif name == "parametric":
                out[name] = fit_parametric(n, d, loss)
        except ValueError as e:
            out[name] = {"skipped": str(e)}
    return out


def _num(v) -> bool:
    try:
        return v is not None and v != "" and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def describe(fits: dict, n_key: str = "params") -> list[str]:
    """Human-readable lines, one per fit."""
    iv = lambda f, k: f"[{f['interval'][k][0]:.3f}, {f['interval'][k][1]:.3f}]"  # noqa: E731
    lines = []
    for name, f in fits.items():
        if "skipped" in f:
            lines.append(f"- {name}: skipped ({f['skipped']})")
        elif name in ("L(N)", "L(D)"):
            x = n_key if name == "L(N)" else "tokens"
            lines.append(f"- {name}: L = {f['E']:.4f} + {f['A']:.4g} / {x}^{f['alpha']:.4f}; "
                         f"alpha 95% {iv(f, 'alpha')}, E 95% {iv(f, 'E')}")
        elif name == "isoflop":
            lines.append(f"- IsoFLOP (approach 2): N_opt = {f['k_n']:.3g} C^{f['a']:.3f} (a 95% {iv(f, 'a')}), "
                         f"D_opt = {f['k_d']:.3g} C^{f['b']:.3f} (b 95% {iv(f, 'b')}); minima: "
                         + ", ".join(f"C={m['flops']:.3g}: N_opt={m['n_opt']:.3g}, D_opt={m['d_opt']:.3g}, "
                                     f"L={m['loss_opt']:.4f}" for m in f["minima"]))
        elif name == "L(C)":
            lines.append(f"- L(C) frontier: L = {f['E']:.4f} + {f['A']:.4g} / C^{f['gamma']:.4f}; "
                         f"gamma 95% {iv(f, 'gamma')}")
        elif name == "parametric":
            lines.append(f"- L(N, D) (approach 3): E={f['E']:.4f}, A={f['A']:.4g}, B={f['B']:.4g}, "
                         f"alpha={f['alpha']:.4f} {iv(f, 'alpha')}, beta={f['beta']:.4f} {iv(f, 'beta')}; "
                         f"N_opt ~ C^{f['a']:.3f} {iv(f, 'a')}, D_opt ~ C^{f['b']:.3f} {iv(f, 'b')}")
    return lines


# ---- plots -------------------------------------------------------------------------------------------------

def plot_fits(fits: dict, rows: list[dict], out_dir: Path, loss_key: str = "metric", n_key: str = "params",
              title: str = "", loss_label: str = "") -> list[Path]:
    """One PNG per fit (scaling_<name>.png) -> the paths written. loss_key: the column; loss_label: its name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, f in fits.items():
        if "skipped" in f:
            continue
        fig, axes = plt.subplots(1, 2 if name == "isoflop" else 1, figsize=(11 if name == "isoflop" else 6, 4))
        ax = axes[0] if name == "isoflop" else axes
        if name in ("L(N)", "L(D)", "L(C)"):
            xs, ys = (np.array(v) for v in f["points"])
            exp = f.get("alpha", f.get("gamma"))
            grid = np.geomspace(xs.min(), xs.max(), 100)
            ax.semilogx(xs, ys, "o", label="runs" if name != "L(C)" else "frontier points")
            ax.semilogx(grid, f["E"] + f["A"] / grid**exp, "-", label=f"E + A/x^{exp:.3f}, E={f['E']:.3f}")
            ax.set_xlabel({"L(N)": n_key, "L(D)": "tokens D", "L(C)": "training FLOPs C"}[name])
        elif name == "isoflop":
            _plot_isoflop(ax, axes[1], f, rows, loss_key, n_key)
        elif name == "parametric":
            obs = np.array([float(r[loss_key]) for r in rows if _num(r.get(loss_key))])
            pred = predict_parametric(f, [float(r[n_key]) for r in rows if _num(r.get(loss_key))],
                                      [float(r["tokens"]) for r in rows if _num(r.get(loss_key))])
            ax.plot(pred, obs, "o")
            lim = [min(obs.min(), pred.min()), max(obs.max(), pred.max())]
            ax.plot(lim, lim, "k--", lw=1, label=f"alpha={f['alpha']:.3f}, beta={f['beta']:.3f}, E={f['E']:.3f}")
            ax.set_xlabel("L(N, D) fit")
        ax.set_ylabel(loss_label or loss_key)
        ax.legend(fontsize=8)
        fig.suptitle(f"{title} {name}".strip())
        fig.tight_layout()
        path = out_dir / f"scaling_{name.replace('(', '_').replace(')', '').replace(', ', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_isoflop(ax, ax2, f, rows, loss_key, n_key):
    from matplotlib.ticker import NullFormatter

    n = np.array([float(r[n_key]) for r in rows if _num(r.get(loss_key))])
    loss = np.array([float(r[loss_key]) for r in rows if _num(r.get(loss_key))])
    minima = {m["group"]: m for m in f["minima"]}
    for i, g in enumerate(f["groups"]):  # every budget's runs; the parabola and its minimum where one was fitted
        line, = ax.semilogx(n[g], loss[g], "o", label=None if i in minima else f"group {i}: no minimum inside")
        if i in minima:
            m = minima[i]
            grid = np.geomspace(n[g].min(), n[g].max(), 50)
            ax.semilogx(grid, np.polyval(m["parabola"], np.log(grid)), "-", color=line.get_color(),
                        label=f"C={m['flops']:.2g}")
            ax.plot([m["n_opt"]], [m["loss_opt"]], "k*", ms=10)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.set_xlabel(f"{n_key} N")
    cs = np.array([m["flops"] for m in f["minima"]])
    ax2.loglog(cs, [m["n_opt"] for m in f["minima"]], "o", label="N_opt")
    ax2.loglog(cs, [m["d_opt"] for m in f["minima"]], "s", label="D_opt")
    ax2.loglog(cs, f["k_n"] * cs ** f["a"], "-", label=f"N_opt ~ C^{f['a']:.3f}")
    ax2.loglog(cs, f["k_d"] * cs ** f["b"], "-", label=f"D_opt ~ C^{f['b']:.3f}")
    ax2.set_xlabel("training FLOPs C")
    ax2.legend(fontsize=8)


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
    args = p.parse_args(argv)
    if not Path(args.csv).is_file():
        raise SystemExit(f"error: {args.csv} does not exist")
    rows = read_csv(args.csv)
    missing = [k for k in (args.loss, args.n) if rows and k not in rows[0]]
    if missing:
        raise SystemExit(f"error: {args.csv} has no column {missing[0]!r}; columns: {list(rows[0]) if rows else []}")
    fits = fit_all(rows, args.loss, args.n, [s for s in args.fits.split(",") if s])
    out = Path(args.out or Path(args.csv).parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(fits, indent=1) + "\n")
    paths = plot_fits(fits, rows, out, args.loss, args.n)
    print("\n".join(describe(fits, args.n)))
    print("wrote " + ", ".join(str(q) for q in [out / "scaling.json", *paths]))
    return fits


if __name__ == "__main__":
    main()
