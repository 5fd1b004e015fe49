"""Scaling fits (issue 11, acceptance 3): each law recovers known constants from synthetic noisy losses, and the
compute-optimal exponents come with intervals that cover the truth."""
import csv
import json

import numpy as np
import pytest

from gpt2jax import scaling

# Hoffmann et al. 2022 (Chinchilla), approach 3 fitted constants
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def chinchilla_loss(n, d):
    return E + A / n**ALPHA + B / d**BETA


def test_parametric_fit_recovers_chinchilla_constants():
    rng = np.random.default_rng(0)
    n, d = (g.ravel() for g in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e8, 1e12, 8)))
    loss = chinchilla_loss(n, d) * np.exp(rng.normal(0, 0.003, n.size))  # 0.3% multiplicative noise
    fit = scaling.fit_parametric(n, d, loss, n_boot=40)
    assert abs(fit["E"] - E) < 0.03
    assert abs(fit["alpha"] - ALPHA) < 0.01 and abs(fit["beta"] - BETA) < 0.01
    assert abs(fit["A"] / A - 1) < 0.1 and abs(fit["B"] / B - 1) < 0.1
    a_true = BETA / (ALPHA + BETA)
    lo, hi = fit["interval"]["a"]
    assert lo < a_true < hi and hi - lo < 0.05
    for key in ("alpha", "beta", "E"):
        assert fit["interval"][key][0] <= fit[key] <= fit["interval"][key][1]


@pytest.mark.parametrize("x", [np.geomspace(1e5, 1e9, 10), np.geomspace(1e7, 1e11, 12)])
def test_saturating_law_recovers_irreducible_term_and_exponent(x):
    rng = np.random.default_rng(1)
    y = (E + A / x**ALPHA) * np.exp(rng.normal(0, 0.002, x.size))
    fit = scaling.fit_law(x, y)
    assert abs(fit["E"] - E) < 0.05 and abs(fit["alpha"] - ALPHA) < 0.01 and abs(fit["A"] / A - 1) < 0.15
    assert fit["interval"]["alpha"][0] < ALPHA < fit["interval"]["alpha"][1]
    exact = scaling.fit_saturating(x, E + A / x**ALPHA)  # noiseless: exact
    assert abs(exact["alpha"] - ALPHA) < 1e-6 and abs(exact["E"] - E) < 1e-6


def isoflop_rows(rng, noise=0.002):
    rows = []
    for c in np.geomspace(1e18, 1e21, 4):
        n_opt = (c / 6) ** (BETA / (ALPHA + BETA))
        for n in n_opt * np.geomspace(0.1, 10, 7):
            d = c / (6 * n)
            rows.append(dict(params=n, tokens=d, flops=c * rng.uniform(0.97, 1.03),  # steps are whole numbers
                             metric=chinchilla_loss(n, d) * np.exp(rng.normal(0, noise))))
    return rows


def test_isoflop_profiles_and_frontier_recover_the_compute_optimal_exponents():
    fits = scaling.fit_all(isoflop_rows(np.random.default_rng(2)), fits=("isoflop", "L(C)", "parametric"))
    iso = fits["isoflop"]
    a_true = BETA / (ALPHA + BETA)
    assert len(iso["minima"]) == 4
    assert abs(iso["a"] - a_true) < 0.02 and abs(iso["b"] - (1 - a_true)) < 0.02
    assert iso["interval"]["a"][0] < a_true < iso["interval"]["a"][1]
    assert iso["interval"]["b"][0] < 1 - a_true < iso["interval"]["b"][1]
    # the frontier through the IsoFLOP minima: its asymptote is the irreducible loss
    assert abs(fits["L(C)"]["E"] - E) < 0.15 and fits["L(C)"]["interval"]["gamma"][0] > 0
    assert abs(fits["parametric"]["alpha"] - ALPHA) < 0.03 and abs(fits["parametric"]["beta"] - BETA) < 0.03


def test_cli_fits_a_csv_and_writes_plots(tmp_path, capsys):
    rows = isoflop_rows(np.random.default_rng(3))
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scaling.main([str(path), "--fits", "isoflop,L(C),L(N)"])
    out = capsys.readouterr().out
    assert "IsoFLOP (approach 2): N_opt = " in out and "L(C) frontier" in out
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert set(saved) == {"isoflop", "L(C)", "L(N)"}
    assert (tmp_path / "scaling_isoflop.png").stat().st_size > 0 and (tmp_path / "scaling_L_C.png").is_file()
    with pytest.raises(SystemExit, match="has no column 'val'"):
        scaling.main([str(path), "--loss", "val"])
    fits = scaling.fit_all(rows[:2])
    assert all("skipped" in f for f in fits.values())
