"""Warmup-stable-decay cooldown branches (issue 35, item 1): train.fork_from continues a run bitwise, refuses
sources that cannot continue, and the sweep's cooldown planning forks at branch points where the learning rates
of the stable run and of every cooldown are equal step by step. (The schedule values: tests/test_optim.py.)"""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax.config import ConfigError
from gpt2jax.studies import cooldowns
from gpt2jax.sweep import Experiment, build_configs, jobs_of, run_sweep
from gpt2jax.train import parse_config, train
from gpt2jax.training.compute import shared_prefix_compute
from gpt2jax.training.optim import SCHEDULES, OptimSpec
from gpt2jax.weights.checkpoint import Checkpoints, RunDirError
from tests.conftest import REPO


def tiny(data, root, name, **train_kw):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(data), str(root), name
    c.optim.update(schedule="wsd", decay_fraction=0.25, warmup_steps=2)
    c.train.update(async_checkpoint=False, max_steps=20, eval_every=5, checkpoint_every=5, keep_checkpoints=10,
                   **train_kw)
    return c


def params_at(run_dir, step):
    ckpts = Checkpoints(run_dir, read_only=True)
    assert ckpts.problem(step) is None
    return ckpts._item(step, params=ocp.args.StandardRestore())["params"]


@pytest.fixture(scope="module")
def original(char_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("wsd")
    summary = train(tiny(char_data, root, "original"), devices=jax.devices()[:1])
    assert summary["step"] == 20
    return root


def test_fork_is_bitwise_the_continued_run(char_data, original):
    c = tiny(char_data, original, "fork")
    c.train.fork_from = f"{original / 'original'}@10"
    summary = train(c, devices=jax.devices()[:1])
    assert summary["start_step"] == 10 and summary["step"] == 20
    a, b = params_at(original / "original", 20), params_at(original / "fork", 20)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    record = json.loads((original / "fork" / "fork.json").read_text())
    assert record["step"] == 10 and record["run_dir"] == str((original / "original").resolve())
    assert summary["fork"]["step"] == 10 and summary["fork"]["flops"] == summary["flops"] / 2
    assert summary["own_flops"] == summary["flops"] / 2
    # a resumed fork continues from its own checkpoints (fork_from is not read again)
    c.train.max_steps, c.optim.decay_steps = 25, 20
    again = train(c, devices=jax.devices()[:1])
    assert again["start_step"] == 20 and again["step"] == 25 and again["fork"]["step"] == 10


def test_fork_refusals(char_data, original, tmp_path):
    def refused(fork_from, match, **model):
        c = tiny(char_data, tmp_path, f"f{len(list(tmp_path.iterdir()))}")
        c.model.update(**model)
        c.train.fork_from = fork_from
        with pytest.raises(ConfigError, match=match):
            train(c, devices=jax.devices()[:1])
        assert not (tmp_path / c.name / "checkpoints").exists()

    src = original / "original"
    refused(str(src), "must be '<run dir>@<step>'")
    refused(f"{src}@7", "no checkpoint at step 7")
    refused(f"{tmp_path / 'nowhere'}@5", "not a run directory")
    refused(f"{src}@10", "model.n_embd 32 vs 64", n_embd=64, n_head=2)
    damaged = tmp_path / "damaged"
    shutil.copytree(src, damaged)
    victim = max((p for p in (damaged / "checkpoints" / "10").rglob("*") if p.is_file() and p.stat().st_size > 64),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    refused(f"{damaged}@10", "damaged")
    c = tiny(char_data, tmp_path, "both")
    c.train.fork_from, c.init_from = f"{src}@10", str(src)
    with pytest.raises(ConfigError, match="keep one"):
        train(c, devices=jax.devices()[:1])
    # another alphabet of the same size: the same model, another tokenizer
    text = (REPO / "data" / "tinyshakespeare.txt").read_text()
    assert "z" in text and "#" not in text
    (tmp_path / "other.txt").write_text(text.replace("z", "#"))
    from gpt2jax.data import prepare as prep

    prep.prepare_files([tmp_path / "other.txt"], tmp_path / "other_data", tokenizer="char")
    c = tiny(tmp_path / "other_data", tmp_path, "tok")
    c.train.fork_from = f"{src}@10"
    with pytest.raises(RunDirError, match=r"the source cannot continue as this run: tokenizer \S+ vs \S+; nothing"):
        train(c, devices=jax.devices()[:1])
    c = tiny(char_data, tmp_path, "seed")
    c.seed, c.train.fork_from = 3, f"{src}@10"
    with pytest.raises(RunDirError, match="seed 0 vs 3"):
        train(c, devices=jax.devices()[:1])


def experiment(root, base, **kw):
    return Experiment(name="wsd_test", base=str(base), run_root=str(root), grid={"model.n_layer": [2]},
                      overrides={"optim.warmup_steps": 4, "optim.decay_fraction": 0.2, "train.max_steps": 104,
                                 "train.eval_every": 20},
                      cooldowns=kw.pop("cooldowns", (0.5, 0.75, 1.0)), **kw)


def test_cooldown_plan_and_branch_point_learning_rates(tmp_path):
    e = experiment(tmp_path, REPO / "configs" / "tiny_test.py", cooldown_twins="cosine")
    configs = build_configs(e, {})
    names = [c.name for _, c in configs]
    assert names[0] == "n_layer=2,stable" and len(configs) == 7
    stable = configs[0][1]
    forks = [c for _, c in configs if c.train.fork_from]
    twins = [c for _, c in configs if ",cosine=" in c.name]
    assert [c.train.max_steps for c in forks] == [52, 78, 104] == [c.train.max_steps for c in twins]
    # branch b = floor(S - 0.2 (S - 4)): 42, 63, 84; the stable run ends at the last and checkpoints at all three
    assert [int(c.train.fork_from.rpartition("@")[2]) for c in forks] == [42, 63, 84]
    assert all(c.train.fork_from.startswith(str(tmp_path / "wsd_test" / "n_layer=2,stable") + "@") for c in forks)
    assert stable.train.max_steps == 84 and stable.optim.decay_steps == 104 and stable.optim.schedule == "wsd"
    assert stable.train.checkpoint_every == 21 and stable.train.keep_checkpoints >= 4
    assert all(c.optim.schedule == "wsd" for c in forks) and all(c.optim.schedule == "cosine" for c in twins)
    lr = lambda c: SCHEDULES[c.optim.schedule](OptimSpec.resolve(c.optim, c.train.max_steps))  # noqa: E731
    stable_lr = np.asarray(lr(stable)(np.arange(105)))
    assert np.all(stable_lr[4:84] == np.float32(stable.optim.lr))  # never leaves the stable phase before its end
    for c in forks:
        b = int(c.train.fork_from.rpartition("@")[2])
        mine = np.asarray(lr(c)(np.arange(c.train.max_steps)))
        for it in range(b):  # step by step, bitwise
            assert mine[it] == stable_lr[it], (c.name, it)
        assert mine[b + 1] < np.float32(c.optim.lr) and mine[-1] < mine[b + 1]  # decays after its branch point
    # seeds: one stable run per (variant, seed)
    e2 = experiment(tmp_path, REPO / "configs" / "tiny_test.py", seeds=2)
    assert sum(cooldowns.is_stable(c) for _, c in build_configs(e2, {})) == 2
    # ... which never train as one replica group (replicas save only their last checkpoint; the forks need all)
    e3 = experiment(tmp_path, REPO / "configs" / "tiny_test.py", seeds=2, replicas=True)
    assert all(len(job) == 1 for job in jobs_of(e3, build_configs(e3, {})))
    with pytest.raises(ConfigError, match="fraction"):
        build_configs(experiment(tmp_path, REPO / "configs" / "tiny_test.py", cooldowns=(-1,)), {})


def test_shared_prefix_compute_counts_the_prefix_once():
    c = shared_prefix_compute([80.0], [(50.0, 40.0), (75.0, 60.0), (100.0, 80.0)])
    assert c["study_flops"] == 80 + 10 + 15 + 20 and c["separate_flops"] == 225
    assert c["saved_flops"] == 100 and abs(c["saved_fraction"] - 100 / 225) < 1e-12
    assert shared_prefix_compute([80.0], [(50.0, None)])["saved_flops"] is None


def test_tiny_cooldown_sweep_end_to_end(char_data, tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text(f"""from gpt2jax.training.schema import base_config


def get_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location("t", {str(REPO / 'configs' / 'tiny_test.py')!r})
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    c = m.get_config()
    c.data.dir = {str(char_data)!r}
    c.train.async_checkpoint = False
    return c
""")
    e = tmp_path / "exp.py"
    e.write_text(f"""from gpt2jax.sweep import Experiment


def get_experiment():
    return Experiment(name="wsd_e2e", base={str(base)!r}, run_root={str(tmp_path / 'runs')!r},
                      grid={{"model.n_layer": [1]}}, metric="val_loss",
                      overrides={{"optim.warmup_steps": 4, "optim.decay_fraction": 0.2, "train.max_steps": 24,
                                  "train.eval_every": 4}},
                      cooldowns=(0.5, 1.0), cooldown_twins="cosine")
""")
    assert run_sweep(str(e), dry_run=True) == {}
    assert "forked from" in capsys.readouterr().out
    result = run_sweep(str(e))
    section = result["cooldowns"]
    assert [r["fork_step"] for r in section["rows"]] == [10, 20]
    assert all(isinstance(r["metric"], float) and isinstance(r["twin_metric"], float) for r in section["rows"])
    assert section["compute"]["saved_flops"] > 0
    md = (tmp_path / "runs" / "wsd_e2e" / "results.md").read_text()
    assert "## Cooldowns" in md and "separate full runs" in md
    assert "![cooldowns](cooldowns.png)" in md and (tmp_path / "runs" / "wsd_e2e" / "cooldowns.png").is_file()
    assert all(r["variant"] != "n_layer=1,stable" for r in result["rows"])
