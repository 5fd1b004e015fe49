"""Training from weights (issue 11, acceptance 4): a model exported to Hugging Face format and trained with
--config.init_from starts at the loss that those weights give; the position table is cropped or extended;
mismatched shapes and offline hub ids give one clear message."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from gpt2jax.training import metrics as metrics_lib
from gpt2jax.weights.checkpoint import load_run
from gpt2jax.config import ConfigError
from gpt2jax.data.loader import Loader
from gpt2jax.data.shards import open_split
from gpt2jax.weights.hf import export_hf
from gpt2jax.weights.load import fit_params
from gpt2jax.weights.load import load_model
from gpt2jax.model import GPT, mean_loss
from gpt2jax.train import parse_config, train
from tests.conftest import REPO


def tiny(data, root, name, **train_kw):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(data), str(root), name
    c.optim.warmup_steps = 1
    c.train.update(async_checkpoint=False, **train_kw)
    return c


@pytest.fixture(scope="module")
def exported(char_data, tmp_path_factory):
    """A tiny model trained 10 steps, exported as a Hugging Face GPT-2 directory."""
    root = tmp_path_factory.mktemp("init_from")
    summary = train(tiny(char_data, root, "source", max_steps=10, eval_every=10), devices=jax.devices()[:1])
    cfg, params, _ = load_run(summary["run_dir"])
    return export_hf(cfg, params, root / "hf"), root


def test_fine_tune_starts_at_the_loss_of_the_exported_weights(char_data, exported):
    hf_dir, root = exported
    c = tiny(char_data, root, "finetune", max_steps=2, log_every=1, eval_every=2)
    c.init_from = str(hf_dir)
    summary = train(c, devices=jax.devices()[:1])
    first = next(r for r in metrics_lib.read_metrics(summary["run_dir"]) if r["kind"] == "train")
    assert first["step"] == 1  # the loss logged at step 1 is the loss of the step-0 params on batch 0
    cfg, params, _ = load_model(str(hf_dir))
    batch = Loader(open_split(char_data, "train"), c.data.seq_len, c.train.batch_size, 1, c.seed).batch(0)[0]
    expected = float(mean_loss(GPT(cfg).apply({"params": params}, batch[:, :-1]), batch[:, 1:]))
    assert abs(first["loss"] - expected) < 1e-5, (first["loss"], expected)
    record = json.loads((Path(summary["run_dir"]) / "init_from.json").read_text())
    assert record["resolved"] == str(Path(hf_dir).resolve()) and record["kind"] == "hf"
    assert record["optimizer"] == "fresh" and record["position_surgery"] == "none"
    # A resumed run ignores init_from: it continues from its own checkpoint.
    c.train.max_steps = 3
    again = train(c, devices=jax.devices()[:1])
    assert again["start_step"] == 2 and again["step"] == 3


def test_cropping_keeps_the_logits_of_the_first_positions(exported):
    cfg, params, _ = load_model(str(exported[0]))
    short = cfg.replace(n_positions=16)
    cropped, surgery = fit_params(cfg, params, short, seed=0, source="src")
    assert surgery == "cropped wpe 32 -> 16 rows"
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
    full = GPT(cfg).apply({"params": params}, tokens)
    mine = GPT(short).apply({"params": cropped}, tokens)
    np.testing.assert_allclose(np.asarray(mine), np.asarray(full), atol=1e-6, rtol=0)


def test_extending_the_context_trains(char_data, exported):
    hf_dir, root = exported
    c = tiny(char_data, root, "extended", max_steps=3, eval_every=3)
    c.init_from = str(hf_dir)
    c.data.seq_len = c.model.n_positions = 64
    summary = train(c, devices=jax.devices()[:1])
    assert summary["step"] == 3 and np.isfinite(summary["val_loss"])
    record = json.loads((Path(summary["run_dir"]) / "init_from.json").read_text())
    assert record["position_surgery"].startswith("extended wpe 32 -> 64 rows")
    _, params, _ = load_run(summary["run_dir"])
    assert params["wpe"]["embedding"].shape == (64, 32)


def test_mismatched_shapes_and_offline_hub_ids_give_one_clear_message(char_data, exported, monkeypatch, tmp_path):
    hf_dir, root = exported
    c = tiny(char_data, tmp_path, "wide", max_steps=2)
    c.init_from = str(hf_dir)
    c.model.update(n_embd=64, n_layer=3)
    with pytest.raises(ConfigError, match=r"n_layer: source 2 vs model 3; n_embd: source 32 vs model 64\. Only"):
        train(c, devices=jax.devices()[:1])
    assert not (tmp_path / "wide" / "config.json").exists()  # refused before the run dir was written
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    c = tiny(char_data, tmp_path, "hub", max_steps=2)
    c.init_from = "gpt2-medium"
    with pytest.raises(ConfigError, match=r"(?s)init_from='gpt2-medium': .*huggingface-cli download gpt2-medium"):
        train(c, devices=jax.devices()[:1])
