"""The sweep runner: grid expansion, up-front checks, results files, resume, and the power-law fit."""
import json

import numpy as np
import pytest

from gpt2jax.config import ConfigError
from gpt2jax.sweep import Experiment, fit_power_law, run_sweep, variants
from tests.conftest import REPO

EXPERIMENT = '''
from gpt2jax.sweep import Experiment

def get_experiment():
    return Experiment(
        name="tiny_heads",
        base="{base}",
        overrides={{"data.dir": "{data}", "train.max_steps": 6, "train.eval_every": 3, "train.log_every": 3,
                    "train.async_checkpoint": False}},
        grid={{"model.n_head": [1, 2], "ctx": [{{"data.seq_len": 16, "model.n_positions": 16}}]}},
        run_root="{root}",
        metric="{metric}",
    )
'''


def test_grid_expansion_names_fields_and_bundles():
    exp = Experiment(name="x", base="b.py", overrides={"train.max_steps": 5},
                     grid={"model.n_head": [1, 2], "size": [{"model.n_layer": 1, "model.n_embd": 8},
                                                            {"model.n_layer": 2, "model.n_embd": 16}]})
    names = [name for name, _ in variants(exp)]
    assert names == ["n_head=1,size=1-8", "n_head=1,size=2-16", "n_head=2,size=1-8", "n_head=2,size=2-16"]
    assert variants(exp)[3][1] == {"train.max_steps": 5, "model.n_head": 2, "model.n_layer": 2, "model.n_embd": 16}


def test_power_law_fit_recovers_exponent():
    n = np.geomspace(1e4, 1e7, 6)
    loss = (8.8e13 / n) ** 0.076  # Kaplan et al.'s fitted constants
    fit = fit_power_law(n, loss)
    assert abs(fit["alpha"] - 0.076) < 1e-9
    assert abs(fit["n_c"] / 8.8e13 - 1) < 1e-6


def test_sweep_runs_writes_results_and_resumes(tmp_path, capsys, char_data):
    data = char_data
    exp_file = tmp_path / "exp.py"
    exp_file.write_text(EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=data, root=tmp_path / "runs",
                                          metric="val_loss"))
    result = run_sweep(str(exp_file))
    out = tmp_path / "runs" / "tiny_heads"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["n_head=1,ctx=16-16", "n_head=2,ctx=16-16"]
    assert all(r["steps"] == 6 and np.isfinite(r["metric"]) for r in rows)
    assert rows == result["rows"]
    assert (out / "results.csv").read_text().startswith("variant,non_embedding_params,steps,metric")
    assert "| n_head=1,ctx=16-16 |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0
    for r in rows:
        assert (out / r["variant"] / "config.json").is_file()
    # A second call trains nothing: every run is finished.
    capsys.readouterr()
    again = run_sweep(str(exp_file))
    assert "already finished" in capsys.readouterr().out
    assert again["rows"] == rows


def test_bad_field_is_refused_before_training(tmp_path):
    exp_file = tmp_path / "exp.py"
    exp_file.write_text(EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=tmp_path, root=tmp_path,
                                          metric="val_loss").replace("model.n_head", "model.n_heads"))
    with pytest.raises(ConfigError, match=r"unknown config field 'model.n_heads'"):
        run_sweep(str(exp_file))
    assert not (tmp_path / "tiny_heads").exists()


SEEDS_EXPERIMENT = '''
from gpt2jax.sweep import Experiment

def get_experiment():
    return Experiment(
        name="tiny_seeds",
        base="{base}",
        overrides={{"data.dir": "{data}", "train.max_steps": 4, "train.eval_every": 4, "train.log_every": 2,
                    "optim.warmup_steps": 1, "train.async_checkpoint": False}},
        grid={{"optim.lr": [3e-3, 1e-2]}},
        seeds=3,
        replicas=True,  # on CPU the default "auto" trains seeds one by one
        baseline="lr=0.003",
        metrics=("loss",),
        run_root="{root}",
        metric="val_loss",
    )
'''


def test_seeds_sweep_in_parallel_gives_statistics_and_resumes(tmp_path, capsys, char_data):
    """Issue 11, acceptances 1 and 5 in small: 2 variants x 3 seeds, each variant's seeds one vmapped program, the
    two programs in two child processes; mean, std, 95% interval and Welch p against the baseline; resumable."""
    from gpt2jax.studies.stats import summarize, welch_p
    from gpt2jax.sweep import main

    exp_file = tmp_path / "exp.py"
    exp_file.write_text(SEEDS_EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=char_data,
                                                root=tmp_path / "runs"))
    result = main([str(exp_file), "--parallel", "2"])
    out = tmp_path / "runs" / "tiny_seeds"
    printed = capsys.readouterr().out
    assert "parallel: 2 jobs, 2 at once" in printed and "[2/2 done, 0 running" in printed
    for log in ("lr=0.003,seeds=0-1-2.log", "lr=0.01,seeds=0-1-2.log"):
        assert "as one vmapped program" in (out / "logs" / log).read_text()
    rows = result["rows"]
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in ("lr=0.003", "lr=0.01") for s in range(3)]
    assert all(r["tokens"] == 4 * 8 * 32 and r["flops"] > 0 and r["params"] > 0 for r in rows)
    base = [r["metric"] for r in rows[:3]]
    other = [r["metric"] for r in rows[3:]]
    assert len(set(base)) == 3  # seeds differ
    st = result["stats"]["lr=0.01"]["metric"]
    assert st == {**summarize(other), "p_vs_baseline": welch_p(other, base)}
    assert result["stats"]["lr=0.003"]["loss"]["n"] == 3
    md = (out / "results.md").read_text()
    assert "| lr=0.01 | 3 | " in md and f"{st['p_vs_baseline']:.3g}" in md and "| lr=0.003 | 3 |" in md
    assert "metric_ci_lo" in (out / "results.csv").read_text().splitlines()[0]
    assert (out / "results.png").stat().st_size > 0
    for r in rows:
        summary = json.loads((out / f"{r['variant']},seed={r['seed']}" / "summary.json").read_text())
        assert summary["replicas"] == 3 and summary["mfu"] is not None
        run_config = json.loads((out / f"{r['variant']},seed={r['seed']}" / "config.json").read_text())
        assert run_config["train"]["compilation_cache_dir"] == str(out / "xla_cache")
    assert any((out / "xla_cache").iterdir())  # the child processes compiled into the sweep's shared cache
    again = main([str(exp_file), "--parallel", "2"])
    assert "6 of 6 runs already finished" in capsys.readouterr().out
    assert again["stats"] == result["stats"]


def test_results_with_scaling_fits_write_fits_and_plots(tmp_path):
    """The sweep's table feeds gpt2jax.scaling (IsoFLOP rows from the Chinchilla law) and links its plots."""
    from gpt2jax.sweep import write_results
    from tests.test_scaling import isoflop_rows

    exp = Experiment(name="iso", base="b.py", grid={"model.n_layer": [1]}, metric="final.val_loss",
                     fit=("isoflop", "L(C)"))
    rows = [dict(variant=f"v{i}", non_embedding_params=r["params"], steps=1, metric=r["metric"], seed=0,
                 params=r["params"], tokens=r["tokens"], flops=r["flops"], wall_s=1.0, mfu=None)
            for i, r in enumerate(isoflop_rows(np.random.default_rng(0)))]
    result = write_results(tmp_path, exp, rows)
    assert abs(result["scaling"]["isoflop"]["a"] - 0.28 / 0.62) < 0.02
    md = (tmp_path / "results.md").read_text()
    assert "IsoFLOP (approach 2): N_opt = " in md and "![scaling_isoflop](scaling_isoflop.png)" in md
    assert (tmp_path / "scaling_isoflop.png").stat().st_size > 0 and (tmp_path / "scaling.json").is_file()
