"""muP (model.parametrization = "mup"): init, per-parameter Adam learning rates, attention scale and logit multiplier
against hand-computed values on a tiny model; SP untouched; the coordinate check flat under muP, growing under SP.

That SP's compiled programs are bitwise unchanged is shown by bench/hlo_fingerprint.py (docs/studies.md); here
SP is held to not taking the muP path at all."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.model import GPT, attention_scale, hidden_init_std, init_params
from gpt2jax.training.optim import MUP_SCALES, OPTIMIZERS, make_optimizer, mup_lr_multipliers

# width 64 over base 16: lr and logit multiplier 1/4, init std x 1/2; head_dim 16: 1/sqrt(H) = 1/4. All powers of
# two, so the hand-computed values below are exact in float32.
TINY = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_positions=16, vocab_size=65)
MUP = TINY.replace(parametrization="mup", mup_base_width=16)
HIDDEN = [("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")]


def test_config_checks():
    assert TINY.parametrization == "sp" and TINY.mup_ratio == 1.0 and MUP.mup_ratio == 0.25
    with pytest.raises(ConfigError, match="parametrization"):
        TINY.replace(parametrization="ntk")
    with pytest.raises(ConfigError, match="mup_base_width"):
        TINY.replace(parametrization="mup", mup_base_width=0)


def test_mup_init_std_hand_computed():
    sp, mup = init_params(TINY, jax.random.key(0)), init_params(MUP, jax.random.key(0))
    # hidden matrices: GPT-2's std (0.02, residual projections 0.02 / sqrt(2 * n_layer)) x sqrt(16 / 64)
    expected_std = {("attn", "c_attn"): 0.01, ("attn", "c_proj"): 0.005, ("mlp", "c_fc"): 0.01,
                    ("mlp", "c_proj"): 0.005}
    for (block, name), std in expected_std.items():
        kernel = np.asarray(mup["h"][block][name]["kernel"])
        assert kernel.std() == pytest.approx(std, rel=0.03), (block, name)
        # the same draws as SP (same key, same module tree), times exactly 1/2
        np.testing.assert_array_equal(kernel, np.asarray(sp["h"][block][name]["kernel"]) * 0.5)
    # embeddings (also the tied readout), biases and LayerNorms keep SP's init
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), sp, mup)
    for block, name in HIDDEN:
        same["h"][block][name]["kernel"] = True
    assert all(jax.tree.leaves(same))
    assert hidden_init_std(MUP, 0.02) == 0.01 and hidden_init_std(TINY, 0.02) == 0.02


def test_mup_lr_multipliers_hand_computed():
    mult = mup_lr_multipliers(MUP)
    for block, name in HIDDEN:
        assert mult["h"][block][name]["kernel"] == 0.25
        assert mult["h"][block][name]["bias"] == 1.0
    assert mult["wte"]["embedding"] == mult["wpe"]["embedding"] == 1.0
    assert mult["ln_f"]["scale"] == mult["h"]["ln_1"]["scale"] == 1.0

    # One AdamW step from zero moments is lr * g / (|g| + eps) (bias correction makes m_hat = g, v_hat = g^2):
    # hidden kernels move lr/4, everything else lr.
    lr, eps = 1e-2, 1e-8
    params = init_params(MUP, jax.random.key(0))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
    optim = dict(name="adamw", schedule="constant", lr=lr, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, eps=eps)
    tx, _ = make_optimizer(optim, MUP, 10)
    updates, state = tx.update(grads, tx.init(params), params)
    adam = jax.tree.map(lambda g: -lr * np.asarray(g) / (np.abs(np.asarray(g)) + eps), grads)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        m = 0.25 if path[-1].key == "kernel" else 1.0
        expected = _at(adam, path) * m
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-12, err_msg=str(path))
    # a skipped step (the numerics guard) stays a no-op under muP: zero updates, the same state
    skipped, same_state = tx.update(grads, state, params, apply=False)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(skipped))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), same_state, state)))


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


@pytest.mark.parametrize("name", sorted(MUP_SCALES))
def test_every_adam_like_optimizer_takes_the_multipliers(name):
    """muP's update is SP's update times the multiplier, for every optimizer registered as Adam-like."""
    params = init_params(TINY, jax.random.key(0))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size + 1), p.shape), params)
    optim = dict(name=name, schedule="constant", lr=1e-2, warmup_steps=0)
    tx_sp, _ = make_optimizer(optim, TINY, 10)
    tx_mup, _ = make_optimizer(optim, MUP, 10)
    u_sp, _ = tx_sp.update(grads, tx_sp.init(params), params)
    u_mup, _ = tx_mup.update(grads, tx_mup.init(params), params)
    expected = jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.float32(m), u_sp, mup_lr_multipliers(MUP))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), u_mup, expected)))


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - MUP_SCALES))
def test_mup_refuses_optimizers_it_has_no_rule_for(name):
    with pytest.raises(ConfigError, match="mup"):
        make_optimizer(dict(name=name, schedule="constant", warmup_steps=0), MUP, 10)


def test_attention_scale_and_logit_multiplier():
    """muP's forward with params P is SP's forward with the queries' columns of c_attn scaled by 1/sqrt(H)
    (scores / H instead of / sqrt(H)) and ln_f's scale and bias by base/width (the logit multiplier): both derived
    by hand, both exact powers of two here."""
    assert attention_scale(MUP) == 1 / 16 and attention_scale(TINY) == 1 / 4
    params = init_params(MUP, jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(7), p.shape), params)  # no zero bias
    C = MUP.n_embd
    folded = jax.tree.map(lambda p: p, params)
    c_attn = folded["h"]["attn"]["c_attn"]
    q_scale = jnp.concatenate([jnp.full((C,), 0.25), jnp.ones((2 * C,))])
    c_attn["kernel"] = c_attn["kernel"] * q_scale
    c_attn["bias"] = c_attn["bias"] * q_scale
    folded["ln_f"] = {k: v * 0.25 for k, v in folded["ln_f"].items()}
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, MUP.vocab_size)
    for attention in ("auto", "reference"):
        mup_logits = GPT(MUP.replace(attention=attention)).apply({"params": params}, tokens)
        sp_logits = GPT(TINY.replace(attention=attention)).apply({"params": folded}, tokens)
        np.testing.assert_allclose(np.asarray(mup_logits), np.asarray(sp_logits), rtol=1e-5, atol=1e-6)
        assert float(jnp.abs(mup_logits - GPT(TINY).apply({"params": params}, tokens)).max()) > 1e-3  # it differs


def test_sp_does_not_take_the_mup_path():
    """SP's init, forward and optimizer chain do not depend on model.mup_base_width: the muP branches are not
    traced (bench/hlo_fingerprint.py shows the SP programs bitwise as before)."""
    other = TINY.replace(mup_base_width=7)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = init_params(TINY, jax.random.key(0))

    def forward(cfg):
        return str(jax.make_jaxpr(lambda p: GPT(cfg).apply({"params": p}, tokens, targets=tokens))(params))

    def init(cfg):
        return str(jax.make_jaxpr(lambda k: GPT(cfg.replace(scan_unroll=1)).init(k, tokens))(jax.random.key(0)))

    assert forward(TINY) == forward(other)
    assert init(TINY) == init(other)
    at_base = TINY.replace(parametrization="mup", mup_base_width=TINY.n_embd)  # muP with every multiplier 1
    assert forward(TINY) != forward(at_base)  # its branches would show, even at ratio 1
    assert hidden_init_std(TINY, 0.02) == 0.02
    assert attention_scale(TINY) == 1 / math.sqrt(TINY.head_dim)
    tx, _ = make_optimizer(dict(name="adamw", warmup_steps=0, schedule="constant"), TINY, 10)
    assert len(tx.init(params)) == 2  # (clipping, adamw): no multiplier stage


def test_coordinate_check_flat_under_mup_growing_under_sp():
    from gpt2jax.studies.coord_check import run, summary

    result = run([32, 128], steps=2, n_layer=1, n_head=2, seq_len=16, batch=4, lr=1e-2, log=lambda s: None)
    last = summary(result)
    for layer, s in last["mup"].items():
        assert s["ratio"] < 1.6, (layer, s)
    for layer in ("h0.attn", "h0.mlp", "h0.out"):
        assert last["sp"][layer]["ratio"] > 2.5, (layer, last["sp"][layer])
