"""The fast path is the default and changes nothing it should not: several steps per compiled call give the
same run as one step per call, batches for several steps are the single-step batches stacked, `attention=auto`
resolves to blocked causal attention on CPU, bf16 compute trains like fp32 with fp32 state, and an impossible
memory fit stops before anything is allocated with the figures and a fix."""
import resource
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2jax.training import metrics as metrics_lib
from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.data.loader import Loader
from gpt2jax.data.shards import open_split
from gpt2jax.training.memory import MemoryFitError
from gpt2jax.model import GPT, attention_impl, cudnn_flash_takes, init_params
from gpt2jax.training.cadence import call_length, steps_per_call
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import make_mesh, param_shardings
from gpt2jax.training.state import initial_state
from gpt2jax.train import parse_config, train
from gpt2jax.training.loop import make_train_step

REPO = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "mfu", "elapsed_s"}


def tiny(data_dir, run_root, name, **train_kw):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(data_dir), str(run_root), name
    c.train.update(max_steps=12, log_every=1, eval_every=5, eval_batches=2, **train_kw)
    return c


def test_several_steps_per_call_give_the_same_run(char_data, tmp_path):
    """5 steps per call (calls at 0 and 5, the tail 10..12 one step at a time) vs 1: every step logged, the same
    losses, val losses at the same steps."""
    one = train(tiny(char_data, tmp_path, "one", steps_per_call=1), devices=jax.devices()[:1])
    five = train(tiny(char_data, tmp_path, "five", steps_per_call=5), devices=jax.devices()[:1])
    assert one["step"] == five["step"] == 12
    ra = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_lib.read_metrics(tmp_path / "one")]
    rb = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_lib.read_metrics(tmp_path / "five")]
    assert [(r["kind"], r["step"]) for r in ra] == [(r["kind"], r["step"]) for r in rb]
    assert [r["step"] for r in rb if r["kind"] == "eval"] == [5, 10, 12]
    for a, b in zip(ra, rb):
        for k in a:
            if k not in ("kind", "step"):
                np.testing.assert_allclose(b[k], a[k], rtol=2e-5, err_msg=f"{a['kind']} {k} at step {a['step']}")


def test_steps_per_call_auto_and_errors():
    c = parse_config(["train", "--config", str(REPO / "configs" / "shakespeare_char.py")]).train
    assert steps_per_call(c, 4e9) == 10  # the char baby GPT: eval every 250 -> 10 steps per call
    assert steps_per_call(c, 1e12) == 1  # a 124M step: dispatch is negligible
    c.stop_at = 125
    assert steps_per_call(c, 4e9) == 5  # calls must end at stop_at too
    c.steps_per_call = 4
    with pytest.raises(ConfigError, match=r"steps_per_call=4 must divide .* gcd is 125.*steps_per_call=1"):
        steps_per_call(c, 4e9)
    assert [call_length(s, 12, 5) for s in (0, 5, 10, 11)] == [5, 5, 1, 1]
    assert call_length(3, 100, 5) == 1  # not on a multiple of 5 (after a Ctrl-C between calls): one step


def test_batches_of_several_steps_are_the_single_batches_stacked(char_data):
    loader = Loader(open_split(char_data, "train"), 16, 4, grad_accum=2, seed=3)
    stacked = loader.rows(7, 1, 3, n_steps=3)
    assert stacked.shape == (3, 2, 2, 17)
    for i in range(3):
        np.testing.assert_array_equal(stacked[i], loader.rows(7 + i, 1, 3))


def test_attention_auto_is_blocked_on_cpu_and_xla_with_a_mask(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # the CPU's rule, on any machine
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=11)
    assert cfg.attention == "auto"
    for dtype in ("float32", "bfloat16"):
        assert attention_impl(cfg.replace(dtype=dtype), jnp.dtype(dtype)) == "blocked"
        assert attention_impl(cfg.replace(dtype=dtype), jnp.dtype(dtype), has_mask=True) == "xla"  # KV-cache decoder
    assert attention_impl(cfg.replace(attention="blocked"), jnp.float32, has_mask=True) == "xla"
    assert attention_impl(cfg.replace(attention="reference"), jnp.float32) == "reference"
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.arange(8)[None] % 11
    auto = GPT(cfg).apply({"params": params}, tokens)
    blocked = GPT(cfg.replace(attention="blocked")).apply({"params": params}, tokens)
    xla = GPT(cfg.replace(attention="xla")).apply({"params": params}, tokens)
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(blocked))
    np.testing.assert_allclose(np.asarray(auto), np.asarray(xla), atol=1e-5)


def test_auto_keeps_cudnn_off_shapes_its_training_kernels_refuse(monkeypatch):
    """On a GPU, auto's cuDNN pick falls back to XLA's attention for odd sequence lengths and head dims cuDNN's
    flash kernels refuse: its backward pass refuses them only while autodiff transforms the forward, too late for
    the call site's fallback (found on an H200: a bf16 training step at T=11 raised). Here the GPU backend is
    faked, so the bf16 loss and gradients at T=11 must be XLA's exactly."""
    assert cudnn_flash_takes(1024, 1024, 64) and cudnn_flash_takes(12, 12, 128)
    assert not cudnn_flash_takes(11, 11, 64) and not cudnn_flash_takes(12, 11, 64)
    assert not cudnn_flash_takes(12, 12, 12) and not cudnn_flash_takes(12, 12, 256)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=11, dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.arange(12)[None] % 11  # T = 11 inputs after the shift

    def loss_and_grads(c):
        return jax.value_and_grad(lambda p: GPT(c).apply({"params": p}, tokens[:, :-1], targets=tokens[:, 1:]).mean())(
            params)

    asked, real_attention = [], jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kwargs):  # the implementations the model asks jax for
        asked.append(implementation)
        return real_attention(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    assert attention_impl(cfg, jnp.bfloat16) == "cudnn"
    (auto_loss, auto_grads), (xla_loss, xla_grads) = loss_and_grads(cfg), loss_and_grads(cfg.replace(attention="xla"))
    assert asked and set(asked) == {"xla"}  # auto never tried cuDNN at T=11
    assert auto_loss == xla_loss
    jax.tree.map(np.testing.assert_array_equal, auto_grads, xla_grads)


def test_bf16_training_tracks_fp32_with_fp32_state():
    """6 AdamW steps on the same batches in bf16 and fp32 compute: finite, close losses; params and optimizer
    moments stay float32 in both."""
    cfg32 = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=65)
    optim = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")]).optim
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    batches = np.random.default_rng(0).integers(0, 65, (6, 1, 8, 17)).astype(np.int32)
    curves, states = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = cfg32.replace(dtype=dtype)
        tx, schedule = make_optimizer(optim, cfg, 6)
        step = jax.jit(make_train_step(cfg, tx, schedule, param_shardings(cfg, mesh)))
        state, losses = initial_state(cfg, tx, 0), []
        for b in batches:
            state, m = step(state, b)
            losses.append(float(m["loss"]))
        curves[dtype], states[dtype] = np.array(losses), state
    assert np.all(np.isfinite(curves["bfloat16"]))
    np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.01)
    for state in states.values():
        assert {x.dtype for x in jax.tree.leaves((state["params"], state["opt_state"])) if x.ndim} == {np.dtype("float32")}


@pytest.mark.parametrize("per_device,tokens_per_step,advice", [
    (0, 0, "Lower --config.train.batch_size (raise --config.train.grad_accum to keep the tokens per step)"),
    (16, 0, "Lower --config.train.batch_size_per_device (raise --config.train.grad_accum to keep"),
    (16, 524288, "Lower --config.train.batch_size_per_device (grad_accum follows, keeping train.tokens_per_step)"),
    (0, 524288, "Lower --config.train.batch_size (grad_accum follows, keeping train.tokens_per_step)")])
def test_the_fit_advice_names_the_batch_field_the_config_uses(per_device, tokens_per_step, advice):
    """configs/gpt2.py sizes its batch per device: 'lower train.batch_size' would have been refused there (both
    set the batch) and 'raise grad_accum' too (tokens_per_step derives it)."""
    from gpt2jax.training.memory import smaller_batch_advice

    c = parse_config(["train", "--config", str(REPO / "configs" / "gpt2.py")])
    c.train.update(batch_size_per_device=per_device, tokens_per_step=tokens_per_step)
    assert smaller_batch_advice(c.train).startswith(advice)


def test_impossible_fit_stops_before_allocating(char_data, tmp_path):
    """GPT-2 1558M at batch 64 x 1024 on one device: the compiled step's figures exceed the host's RAM; the run
    stops with them and a suggestion, having allocated nothing (no 18 GB of parameters + AdamW state)."""
    c = parse_config(["train", "--config", str(REPO / "configs" / "gpt2.py") + ":gpt2-xl"])
    c.data.update(dir=str(char_data), tokenizer="char")
    c.run_root, c.name = str(tmp_path), "xl"
    c.train.update(batch_size=64, batch_size_per_device=0, tokens_per_step=0, grad_accum=1, eval_batch_size=8, eval_batches=1, compilation_cache_dir="",
                   tensorboard=False, progress=False, plot=False, sample_tokens=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(MemoryFitError) as e:
        train(c, devices=jax.devices()[:1])
    msg = str(e.value)
    for part in ("cannot fit", "GiB", "temporaries", "host RAM", "batch_size", "grad_accum", "remat", "fsdp"):
        assert part in msg, part
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert grown < 4 * 2**30, f"peak RSS grew by {grown / 2**30:.1f} GiB: something was allocated"
    assert not (tmp_path / "xl" / "checkpoints").exists() or not any((tmp_path / "xl" / "checkpoints").iterdir())
