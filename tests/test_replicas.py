"""Replicas (issue 11, acceptance 2): S=4 seeds trained as one vmapped program equal the same 4 seeds trained
one by one with `train`: every loss curve and every final parameter to 1e-5."""
import jax
import numpy as np

from gpt2jax.training import metrics as metrics_lib
from gpt2jax.weights.checkpoint import load_run
from gpt2jax.training.replicas import replica_key, train_replicas
from gpt2jax.train import parse_config, train
from tests.conftest import REPO

SEEDS = [0, 1, 2, 3]


def config(data, root, seed):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name, c.seed = str(data), str(root), f"seed={seed}", seed
    c.model.dropout = 0.1  # each replica draws its own dropout masks
    c.optim.warmup_steps = 2
    c.train.update(max_steps=6, log_every=1, eval_every=3, async_checkpoint=False)
    return c


def curve(run_dir):
    return {(r["kind"], r["step"]): r.get("loss", r.get("val_loss")) for r in metrics_lib.read_metrics(run_dir)
            if r["kind"] in ("train", "eval")}


def test_vmapped_replicas_equal_separate_runs(char_data, tmp_path):
    configs = [config(char_data, tmp_path / "vmapped", s) for s in SEEDS]
    assert len({replica_key(c) for c in configs}) == 1
    summaries = train_replicas(configs, jax.devices()[:1])
    for seed, summary in zip(SEEDS, summaries):
        alone = train(config(char_data, tmp_path / "alone", seed), devices=jax.devices()[:1])
        mine, ref = curve(summary["run_dir"]), curve(alone["run_dir"])
        assert mine.keys() == ref.keys() and len(mine) == 8
        np.testing.assert_allclose([mine[k] for k in ref], [ref[k] for k in ref], atol=1e-5, rtol=0)
        p_mine, p_ref = load_run(summary["run_dir"])[1], load_run(alone["run_dir"])[1]
        for a, b in zip(jax.tree.leaves(p_mine), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
        assert summary["replicas"] == 4 and summary["tokens"] == alone["tokens"] == 6 * 8 * 32
        assert summary["flops"] == alone["flops"] > 0
    # seeds differ: the replicas are not copies of one run
    assert len({round(s["loss"], 6) for s in summaries}) == 4


def test_replica_summaries_and_guards_are_the_ordinary_ones(char_data, tmp_path, monkeypatch):
    """Replicas run through the ordinary loop: a replica's summary.json has every key of a run's (and `replicas`),
    and the numerics guard counts a non-finite step in every replica (the fault hook makes step 3 NaN)."""
    from gpt2jax.runtime.watchdog import NONFINITE_ENV

    monkeypatch.setenv(NONFINITE_ENV, "3:4")
    configs = [config(char_data, tmp_path / "group", s) for s in (0, 1)]
    for c in configs:
        c.train.update(max_steps=4, eval_every=2, skip_nonfinite=True)
    summaries = train_replicas(configs, jax.devices()[:1])
    single = config(char_data, tmp_path / "alone", 0)
    single.train.update(max_steps=4, eval_every=2, skip_nonfinite=True)
    alone = train(single, devices=jax.devices()[:1])
    for summary in summaries:
        assert set(alone) <= set(summary), set(alone) - set(summary)
        assert summary["replicas"] == 2 and summary["nonfinite_steps"] == alone["nonfinite_steps"] == 1
        assert summary["time_s"].keys() == alone["time_s"].keys()
