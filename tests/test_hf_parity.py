"""Parity with transformers' GPT2LMHeadModel (PyTorch, CPU, fp32): weights in, weights out.

The large shapes run under the `slow` marker:  pytest -m slow tests/test_hf_parity.py
"""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gpt2jax.config import GPT2_PRESETS, GPTConfig  # noqa: E402
from gpt2jax.weights.hf import CheckpointError, export_hf, load_hf  # noqa: E402
from gpt2jax.model import GPT, init_params, mean_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")  # GPU: no TF32-class passes in parity checks

TINY_HF = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=50257)
SIZES = ["tiny", "gpt2"] + [pytest.param(name, marks=pytest.mark.slow) for name in
                            ("gpt2-medium", "gpt2-large", "gpt2-xl")]


def _hf_config(size):
    shape = TINY_HF if size == "tiny" else {**GPT2_PRESETS[size], "n_positions": 1024, "vocab_size": 50257}
    return transformers.GPT2Config(**shape, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)


@pytest.fixture(scope="module", params=SIZES)
def saved_hf_model(request, tmp_path_factory):
    """A random-weight transformers GPT-2 saved with save_pretrained (safetensors)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config(request.param)).eval()
    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(directory, safe_serialization=True)
    tokens = np.random.default_rng(0).integers(0, 50257, size=(2, 64))
    with torch.no_grad():
        out = model(torch.tensor(tokens), labels=torch.tensor(tokens))
    yield directory, tokens, out.logits.numpy(), float(out.loss)
    del model


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_logits_and_loss_match_transformers(saved_hf_model, padded):
    directory, tokens, ref_logits, ref_loss = saved_hf_model
    cfg, params = load_hf(str(directory), padded_vocab_size=50304 if padded else 0)
    logits = np.asarray(jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t))(params, tokens))
    assert logits.shape[-1] == (50304 if padded else 50257)
    real = logits[..., :50257]
    assert np.max(np.abs(real - ref_logits)) <= 1e-4
    np.testing.assert_array_equal(logits.argmax(-1), ref_logits.argmax(-1))
    loss = float(mean_loss(logits[:, :-1], tokens[:, 1:]))
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_export_round_trip(tmp_path, padded):
    cfg = GPTConfig(**TINY_HF, padded_vocab_size=50304 if padded else 0)
    params = init_params(cfg, jax.random.key(0))
    export_hf(cfg, params, tmp_path)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    tokens = np.random.default_rng(1).integers(0, 50257, size=(2, 33))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(GPT(cfg).apply({"params": params}, tokens))[..., :50257]
    assert np.max(np.abs(ours - ref)) <= 1e-4
    # ...and back in: the same tree, bit for bit (the padded rows come back as zeros).
    cfg2, params2 = load_hf(str(tmp_path), padded_vocab_size=cfg.padded_vocab_size)
    assert cfg2 == cfg
    back = jax.tree.map(np.asarray, params)
    back["wte"]["embedding"] = back["wte"]["embedding"][:50257]
    params2["wte"]["embedding"] = params2["wte"]["embedding"][:50257]
    jax.tree.map(np.testing.assert_array_equal, params2, back)


def test_bad_directories_have_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**TINY_HF, "activation_function": "gelu_new"}))
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_hf(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_hf(str(tmp_path))
    with pytest.raises(CheckpointError, match="not a directory .* nor a hub id"):
        load_hf(str(tmp_path / "nope"))


def test_hub_id_offline_says_how_to_pass_a_local_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing downloaded before
    with pytest.raises(CheckpointError) as err:
        load_hf("gpt2-medium")
    message = str(err.value)
    assert "huggingface-cli download gpt2-medium config.json model.safetensors" in message
    assert "--init_from ./gpt2-medium" in message


def test_wrong_shapes_are_named(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config("tiny"))
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 32  # the config no longer describes the tensors
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor 'wte.weight' has shape \(50257, 64\), expected \(50257, 32\)"):
        load_hf(str(tmp_path))


def test_sharded_safetensors_checkpoint(tmp_path):
    """save_pretrained splits big models (gpt2-xl at the default 5 GB) into shards + an index: both load."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config("tiny")).eval()
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="2MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    cfg, params = load_hf(str(tmp_path))
    tokens = np.random.default_rng(2).integers(0, 50257, size=(1, 20))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    assert np.max(np.abs(np.asarray(GPT(cfg).apply({"params": params}, tokens)) - ref)) <= 1e-4
