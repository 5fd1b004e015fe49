"""The sweep runner: grid expansion, up-front checks, results files, resume, and the power-law fit."""
import json

import numpy as np
import pytest

from gpt2jax.config import ConfigError
from gpt2jax.sweep import Experiment, fit_power_law, run_sweep, variants
from tests.conftest import REPO, XLA_CACHE

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


# ---- sweep integrity (issue 35, item 5): each test failed on the main of 2026-12-07 ---------------------------

INTEGRITY_EXPERIMENT = '''
from gpt2jax.sweep import Experiment

def get_experiment():
    return Experiment(
        name="tiny_integrity",
        base="{base}",
        overrides={{"data.dir": "{data}", "train.max_steps": 4, "train.eval_every": 2, "train.log_every": 2,
                    "train.async_checkpoint": False, "optim.warmup_steps": 1,
                    "train.compilation_cache_dir": "{cache}"}},
        grid={{"model.n_head": {heads}}},
        run_root="{root}",
        metric="val_loss",
        metrics=("loss",),
    )
'''


def integrity_experiment(tmp_path, char_data, heads=(1,)):
    exp_file = tmp_path / "exp.py"
    exp_file.write_text(INTEGRITY_EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=char_data,
                                                    root=tmp_path / "runs", heads=list(heads), cache=XLA_CACHE))
    return exp_file, tmp_path / "runs" / "tiny_integrity"


def test_trainer_resumed_at_its_end_takes_losses_from_metrics(tmp_path, char_data):
    """A run killed after its last checkpoint and before summary.json: the same command again resumes at max_steps
    and its summary carries the losses of metrics.jsonl (they were null)."""
    from gpt2jax.train import parse_config, train

    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(char_data), str(tmp_path), "killed_at_end"
    c.train.compilation_cache_dir = XLA_CACHE
    c.train.update(max_steps=4, eval_every=2, log_every=2, async_checkpoint=False)
    c.optim.warmup_steps = 1
    first = train(c)
    (tmp_path / "killed_at_end" / "summary.json").unlink()
    again = train(c)
    assert again["start_step"] == 4 and again["step"] == 4
    assert again["loss"] == first["loss"] and again["val_loss"] == first["val_loss"]
    assert again["loss"] is not None and again["val_loss"] is not None


def test_sweep_rebuilds_missing_and_incomplete_summaries(tmp_path, capsys, char_data):
    exp_file, out = integrity_experiment(tmp_path, char_data)
    first = run_sweep(str(exp_file))["rows"]
    path = out / first[0]["variant"] / "summary.json"
    written = json.loads(path.read_text())
    for damage in ("missing", "incomplete"):
        if damage == "missing":
            path.unlink()  # killed between the last checkpoint and the summary
        else:  # written by yesterday's trainer for a run resumed at its end
            path.write_text(json.dumps(dict(written, loss=None, val_loss=None)))
        capsys.readouterr()
        again = run_sweep(str(exp_file))["rows"]
        printed = capsys.readouterr().out
        assert "training" not in printed  # nothing retrained: rebuilt from metrics.jsonl and the checkpoints
        assert "summary.json was missing or incomplete: rebuilt" in printed and "1 of 1 runs already finished" in printed
        a, b = first[0], again[0]
        assert b["metric"] == a["metric"] and b["loss"] == a["loss"] and b["steps"] == 4
        assert b["tokens"] == a["tokens"] and b["flops"] == a["flops"] and b["wall_s"] == pytest.approx(a["wall_s"])
        assert json.loads(path.read_text())["val_loss"] == a["metric"]


def test_sweep_never_reports_runs_of_a_different_config(tmp_path, capsys, char_data):
    from gpt2jax.sweep import main

    exp_file, out = integrity_experiment(tmp_path, char_data)
    first = run_sweep(str(exp_file))
    # a field that changes nothing in the results (progress bars) does not make a run stale
    capsys.readouterr()
    run_sweep(str(exp_file), {"train.progress": True, "train.tensorboard": True})
    assert "1 of 1 runs already finished" in capsys.readouterr().out
    # the bug: "1 of 1 runs already finished" and the old lr's table
    with pytest.raises(SystemExit) as stop:
        main([str(exp_file), "--set", "optim.lr=0.1"])
    message = str(stop.value)
    assert len(message.splitlines()) == 1
    assert "optim.lr" in message and "0.003" in message and "0.1" in message
    assert json.loads((out / "results.json").read_text())["rows"] == first["rows"]  # the old table stays as it was
    # --on_change=rename: trained anew under a name of its own, the old run kept
    capsys.readouterr()
    renamed = main([str(exp_file), "--set", "optim.lr=0.1", "--on_change", "rename"])
    row = renamed["rows"][0]
    assert row["variant"] == "n_head=1" and row["run"] != "n_head=1" and row["metric"] != first["rows"][0]["metric"]
    assert json.loads((out / row["run"] / "config.json").read_text())["optim"]["lr"] == 0.1
    assert json.loads((out / "n_head=1" / "config.json").read_text())["optim"]["lr"] == 0.003
    capsys.readouterr()
    again = main([str(exp_file), "--set", "optim.lr=0.1", "--on_change", "rename"])  # finds its renamed run
    assert "1 of 1 runs already finished" in capsys.readouterr().out and again["rows"][0]["run"] == row["run"]


def test_wall_time_sums_every_process_of_a_run(tmp_path, char_data):
    from gpt2jax.train import parse_config, train

    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(char_data), str(tmp_path), "resumed"
    c.train.compilation_cache_dir = XLA_CACHE
    c.train.update(max_steps=4, eval_every=2, log_every=2, async_checkpoint=False, stop_at=2)
    c.optim.warmup_steps = 1
    first = train(c)
    assert first["step"] == 2
    c.train.stop_at = 0
    second = train(c)
    assert second["start_step"] == 2 and second["step"] == 4
    assert second["wall_s"] >= first["wall_s"] + second["time_s"]["wall"] - 0.01
    assert second["processes"] == 2


def test_results_of_an_isoflop_study_with_a_tuned_lr(tmp_path):
    """The table names each point's best lr, flags the ones at the grid's edge, states the FLOP convention; the
    sweep records budgets and tuned values as columns."""
    from gpt2jax.sweep import budgets, write_results
    from gpt2jax.training.compute import isoflop_grid
    from tests.test_scaling import tuned_rows

    grid = isoflop_grid([1e11, 3e11], [(1, 16), (2, 32)], 64, 64 * 16, vocab_size=65, head_dim=16)
    exp = Experiment(name="iso_lr", base="b.py", grid={"point": grid, "optim.lr": [1e-3, 2e-3]}, tuned=("optim.lr",),
                     fit=("isoflop", "L(N)"), compare=("hoffmann2022",))
    assert set(budgets(exp).values()) == {1e11, 3e11} and "budget" not in variants(exp)[0][1]
    rows = [dict(variant=f"v{i}", non_embedding_params=r["params"], steps=1, metric=r["metric"], seed=r["seed"],
                 run=f"v{i}", budget=r["budget"], **{"optim.lr": r["optim.lr"]}, params=r["params"],
                 tokens=r["tokens"], flops=r["flops"], wall_s=1.0, mfu=None)
            for i, r in enumerate(tuned_rows([1e-3, 2e-3, 4e-3], lambda n: 8e-3 if n < 1e9 else 2e-3))]
    result = write_results(tmp_path, exp, rows)
    md = (tmp_path / "results.md").read_text()
    assert "- FLOPs: convention '6N+12LTC'" in md and "| optim.lr tried | optim.lr best |" in md
    assert "extend the lr grid" in md and "- isoflop: FLAGGED, not a result (" in md
    assert "- L(N): refused (these are IsoFLOP rows" in md
    assert "![scaling_tuned](scaling_tuned.png)" in md and (tmp_path / "scaling_tuned.png").stat().st_size > 0
    assert result["scaling"]["tuned"]["axes"] == ["optim.lr"]


def test_config_differences_name_only_fields_that_change_results(tmp_path, char_data):
    """Without training: the run dir's config.json against the sweep's config, field by field."""
    from gpt2jax.studies.runs import config_differences, config_tag, resolved_dict
    from gpt2jax.sweep import build_configs, load_py

    exp_file, out = integrity_experiment(tmp_path, char_data)
    (_, config), = build_configs(load_py(exp_file, "get_experiment"), {})
    run = out / config.name
    run.mkdir(parents=True)
    assert config_differences(config) == []  # nothing trained yet

    def write(**changes):
        flat = dict(resolved_dict(config), **changes)
        nested: dict = {}
        for key, value in flat.items():
            *parents, leaf = key.split(".")
            node = nested
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        (run / "config.json").write_text(json.dumps(nested))

    write(**{"train.progress": False, "train.log_every": 99, "train.compilation_cache_dir": "/elsewhere"})
    assert config_differences(config) == []
    write(**{"optim.lr": 0.1, "data.seq_len": 64})
    assert config_differences(config) == ["data.seq_len 64 -> 32", "optim.lr 0.1 -> 0.003"]
    flat = resolved_dict(config)
    del flat["optim.b2"]  # a field added to the schema since: equal when the sweep asks for its default
    write()
    (run / "config.json").write_text(json.dumps({k: v for k, v in json.loads((run / "config.json").read_text()).items()
                                                 if k != "optim"} | {"optim": {k.split(".")[1]: v for k, v in flat.items()
                                                                              if k.startswith("optim.")}}))
    assert config_differences(config) == ["optim.b2 (not set) -> 0.99"]  # tiny_test sets b2 = 0.99, not the default
    write()
    (run / "config.before_step2.json").write_text((run / "config.json").read_text().replace('"seed": 0', '"seed": 5'))
    assert config_differences(config) == ["seed 5 -> 0"]  # resumed under other settings: a mix, not this run
    assert len(config_tag(config)) == 8


def test_base_config_by_shipped_name_and_from_outside_a_checkout(tmp_path, monkeypatch):
    """An experiment's base may name a shipped config, and `configs/<name>.py` (as the experiments/ files write it)
    still resolves when the sweep runs from another directory; anything else is refused naming the fix."""
    from gpt2jax.sweep import build_configs

    monkeypatch.chdir(tmp_path)  # no configs/ here
    for base in ("tiny_test", "configs/tiny_test.py"):
        exp = Experiment(name="x", base=base, grid={"model.n_head": [1]}, run_root=str(tmp_path))
        (name, config), = build_configs(exp, {})
        assert config.model.n_embd == 32 and config.train.max_steps == 20  # configs/tiny_test.py's values
    with pytest.raises(ConfigError, match=r"base='nope' is no file .* and no shipped config; .*tiny_test"):
        build_configs(Experiment(name="x", base="nope", grid={"model.n_head": [1]}), {})
