"""Model structure and equivalences: parameter counts, scan/unroll, remat, attention paths, padding, KV cache.

Tests that run a model several times run it under jax.jit, as training and evaluation do: op-by-op (eager) dispatch
of a forward and backward pass cost tens of seconds per test on a 2-core CPU, one compiled program a few."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2jax.config import GPT2_PRESETS, GPTConfig
from gpt2jax.model.layernorm import LayerNorm
from gpt2jax.model import (GPT, blocked_causal_attention, init_layer_caches, init_params, logical_axes, mean_loss,
                           param_count, split_layers, token_nll)

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")  # GPU: no TF32-class passes in parity checks

OFFICIAL_PARAM_COUNTS = {  # the released checkpoints' sizes (tied head, 50257-token vocabulary)
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}

TINY = GPTConfig(n_layer=3, n_head=4, n_embd=32, n_positions=32, vocab_size=97)


@pytest.mark.parametrize("name", sorted(GPT2_PRESETS))
def test_official_parameter_counts(name):
    # Counted from the shapes jax.eval_shape gives for the config: nothing is allocated or hard-coded.
    assert param_count(GPTConfig.preset(name)) == OFFICIAL_PARAM_COUNTS[name]


def test_parameter_names_and_logical_axes():
    axes = logical_axes(TINY)
    assert set(axes) == {"wte", "wpe", "h", "ln_f"}
    assert set(axes["h"]) == {"ln_1", "attn", "ln_2", "mlp"}
    assert tuple(axes["h"]["attn"]["c_attn"]["kernel"]) == ("layers", "embed", "qkv")
    assert tuple(axes["h"]["mlp"]["c_proj"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(axes["wte"]["embedding"]) == ("vocab", "embed")
    for spec in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        assert all(name is not None for name in spec), "every parameter axis has a logical name"


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, tokens):
    return GPT(cfg).apply({"params": params}, tokens)


@functools.partial(jax.jit, static_argnums=0)
def _logits_loss_and_grads(cfg, params, tokens):
    """Logits for all of tokens (B, T); loss and grads of predicting tokens[:, 1:] from tokens[:, :-1]."""
    def loss_fn(p):
        return mean_loss(GPT(cfg).apply({"params": p}, tokens[:, :-1]), tokens[:, 1:])

    return (GPT(cfg).apply({"params": params}, tokens), *jax.value_and_grad(loss_fn)(params))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def baseline():
    """Params, tokens and the default model's logits, loss and grads (computed once for all the variants)."""
    params = init_params(TINY, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, TINY.vocab_size)
    with jax.default_matmul_precision("highest"):  # as full_precision_matmuls (function-scoped) gives the tests
        return params, tokens, _logits_loss_and_grads(TINY, params, tokens)


@pytest.mark.parametrize(
    "variant",
    # The baseline is the default: TINY's 3 layers fully unrolled (model.layer_unroll), so the scan variants are
    # the rolled scan and a partial unroll (2 layers per iteration plus a remainder).
    [dict(scan_unroll=2), dict(scan_unroll=1), dict(remat="full"), dict(remat="dots"), dict(attention="reference"),
     dict(attention="xla"), dict(attention="blocked"), dict(scan_unroll=1, remat="full", attention="reference"),
     dict(layer_norm="autodiff"), dict(layer_norm="manual")],
    ids=["partly_unrolled", "rolled", "remat_full", "remat_dots", "reference_attention", "xla_attention",
         "blocked_attention", "all_three", "autodiff_layer_norm", "manual_layer_norm"],
)
def test_variants_match_baseline(variant, baseline):
    """Scan vs unrolled layers, remat on vs off, dot_product_attention vs reference: same outputs and grads."""
    params, tokens, (base_logits, base_loss, base_grads) = baseline
    logits, loss, grads = _logits_loss_and_grads(TINY.replace(**variant), params, tokens)
    assert _rel(logits, base_logits) <= 1e-5
    assert _rel(loss, base_loss) <= 1e-5
    for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
        assert _rel(g, g0) <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_manual_layer_norm_matches_float64_jacobian_and_flax(dtype):
    """gpt2jax.model.layernorm against float64 numpy (the output, and the gradients from each row's explicit Jacobian
    dy_i/dx_j = scale_i / sigma * (delta_ij - 1/C - x_hat_i x_hat_j / C)) and against flax's nn.LayerNorm under
    autodiff (same parameters, same output dtype)."""
    rng = np.random.default_rng(0)
    C = 24
    x = jnp.asarray(rng.standard_normal((2, 5, C)) * 3 + 1.5, dtype)  # a mean far from 0 tests the fast variance
    scale = jnp.asarray(1 + 0.3 * rng.standard_normal(C), jnp.float32)
    bias = jnp.asarray(0.3 * rng.standard_normal(C), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((2, 5, C)), dtype)
    params = {"params": {"scale": scale, "bias": bias}}
    init = nn.initializers.ones_init()
    ours = LayerNorm(1e-5, jnp.dtype(dtype), init, init)
    flax_ln = nn.LayerNorm(epsilon=1e-5, dtype=jnp.dtype(dtype), param_dtype=jnp.float32)

    def value_and_vjp(module):
        y, vjp = jax.vjp(lambda p, x: module.apply(p, x), params, x)
        return y, vjp(dy)

    y, (dp, dx) = value_and_vjp(ours)
    y_flax, (dp_flax, dx_flax) = value_and_vjp(flax_ln)
    assert y.dtype == dx.dtype == jnp.dtype(dtype) and dp["params"]["scale"].dtype == jnp.float32

    x64, s64, b64, dy64 = (np.asarray(a, np.float64) for a in (x, scale, bias, dy))
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    x_hat = (x64 - mean) / np.sqrt(var + 1e-5)
    jac = (np.eye(C) - 1 / C - x_hat[..., :, None] * x_hat[..., None, :] / C) / np.sqrt(var + 1e-5)[..., None]
    ref_dx = np.einsum("...i,i,...ij->...j", dy64, s64, jac)  # dy @ diag(scale) @ J
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == "float32" else dict(atol=0.05, rtol=0.02)  # bf16 output/dx
    np.testing.assert_allclose(np.asarray(y, np.float64), x_hat * s64 + b64, **tol)
    np.testing.assert_allclose(np.asarray(dx, np.float64), ref_dx, **tol)
    np.testing.assert_allclose(np.asarray(dp["params"]["scale"]), (dy64 * x_hat).sum((0, 1)), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dp["params"]["bias"]), dy64.sum((0, 1)), atol=1e-4, rtol=1e-5)
    for got, want in ((y, y_flax), (dx, dx_flax), *zip(jax.tree.leaves(dp), jax.tree.leaves(dp_flax))):
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), **tol)


@pytest.mark.parametrize("block", [4, 9, 16])
def test_blocked_attention_matches_float64_and_xla_gradients(block):
    """blocked_causal_attention with query blocks of 4 (3 blocks, the last one short), 9 (one) and 16 (one, longer
    than T): outputs against float64 numpy softmax attention, gradients against jax.nn.dot_product_attention's."""
    B, T, N, H = 2, 9, 3, 8
    q, k, v, dy = (np.random.default_rng(i).standard_normal((B, T, N, H)).astype(np.float32) for i in range(4))
    qt, kt, vt = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, N, T, H)
    scores = np.where(np.tril(np.ones((T, T), bool)), qt @ kt.transpose(0, 1, 3, 2) / np.sqrt(H), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    ref = ((probs / probs.sum(-1, keepdims=True)) @ vt).transpose(0, 2, 1, 3)  # (B, T, N, H)

    @jax.jit
    def grads(q, k, v):
        blocked = jax.vjp(functools.partial(blocked_causal_attention, block=block), q, k, v)
        xla = jax.vjp(functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla"), q, k, v)
        return blocked[0], blocked[1](dy), xla[1](dy)

    out, got, want = grads(q, k, v)
    assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-5
    for g, g0 in zip(got, want):
        assert _rel(g, g0) <= 1e-5


def test_attention_matches_float64_recomputation():
    """The whole forward pass against an independent float64 numpy GPT-2."""
    params = init_params(TINY, jax.random.key(2))
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (2, 9), 0, TINY.vocab_size))
    ours = np.asarray(GPT(TINY).apply({"params": params}, tokens), np.float64)  # one forward: eager is cheaper
    ref = _numpy_gpt2(jax.tree.map(lambda x: np.asarray(x, np.float64), params), tokens, TINY)
    assert np.max(np.abs(ours - ref)) <= 1e-4


def _numpy_gpt2(p, tokens, cfg):
    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_epsilon) * g + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    B, T = tokens.shape
    N, H = cfg.n_head, cfg.head_dim
    x = p["wte"]["embedding"][tokens] + p["wpe"]["embedding"][np.arange(T)]
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg.n_layer):
        h = jax.tree.map(lambda a: a[i], p["h"])
        a = ln(x, h["ln_1"]["scale"], h["ln_1"]["bias"])
        qkv = a @ h["attn"]["c_attn"]["kernel"] + h["attn"]["c_attn"]["bias"]
        q, k, v = (t.reshape(B, T, N, H).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, -1))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H)
        s = np.where(causal, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = (w @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
        x = x + y @ h["attn"]["c_proj"]["kernel"] + h["attn"]["c_proj"]["bias"]
        m = ln(x, h["ln_2"]["scale"], h["ln_2"]["bias"])
        m = gelu(m @ h["mlp"]["c_fc"]["kernel"] + h["mlp"]["c_fc"]["bias"])
        x = x + m @ h["mlp"]["c_proj"]["kernel"] + h["mlp"]["c_proj"]["bias"]
    x = ln(x, p["ln_f"]["scale"], p["ln_f"]["bias"])
    return x @ p["wte"]["embedding"].T


def test_padded_vocab_never_wins_and_matches_unpadded():
    padded = TINY.replace(padded_vocab_size=128)
    params = init_params(padded, jax.random.key(4))
    # Make the padded rows as attractive as possible: they must still never be chosen.
    params["wte"]["embedding"] = params["wte"]["embedding"].at[TINY.vocab_size:].set(10.0)
    tokens = jax.random.randint(jax.random.key(5), (2, 12), 0, TINY.vocab_size)
    logits = _logits(padded, params, tokens)
    assert logits.shape[-1] == 128
    assert bool(jnp.all(jnp.argmax(logits, -1) < TINY.vocab_size))
    assert bool(jnp.all(jax.nn.softmax(logits)[..., TINY.vocab_size:] == 0))
    # Same loss as the unpadded model holding the real rows.
    real = dict(params, wte={"embedding": params["wte"]["embedding"][: TINY.vocab_size]})
    loss_padded = mean_loss(logits[:, :-1], tokens[:, 1:])
    loss_real = mean_loss(_logits(TINY, real, tokens)[:, :-1], tokens[:, 1:])
    np.testing.assert_allclose(loss_padded, loss_real, rtol=1e-6)
    grads = _logits_loss_and_grads(padded, params, tokens)[2]
    assert bool(jnp.all(jnp.isfinite(grads["wte"]["embedding"])))


def _autodiff_nll(logits, targets):
    """The textbook NLL, differentiated by JAX: the reference for token_nll's hand-written gradient."""
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("keep_exp", [False, True])  # the accelerators' backward pass and the CPU's
def test_token_nll_and_its_gradient_match_float64_numpy(dtype, keep_exp):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 7, 20)) * 4  # (B, T, V): 16 real columns, 4 padded ones
    logits[..., 16:] = 30.0  # padded columns that would dominate the softmax if they were counted
    targets = rng.integers(0, 16, (3, 7))
    weights = rng.standard_normal((3, 7))  # a non-uniform upstream gradient
    x = jnp.asarray(logits, dtype)
    value, grad = jax.value_and_grad(
        lambda x: (token_nll(x, jnp.asarray(targets), 16, keep_exp=keep_exp) * weights).sum())(x)
    # float64 numpy on the exact inputs token_nll saw (real columns only): NLL = logsumexp - target logit, and
    # d(sum w * NLL)/dlogits = w * (softmax - onehot(target))
    real = np.asarray(x, np.float64)[..., :16]
    shifted = real - real.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ref_value = -(np.take_along_axis(log_probs, targets[..., None], -1)[..., 0] * weights).sum()
    ref_grad = (np.exp(log_probs) - np.eye(16)[targets]) * weights[..., None]
    assert grad.dtype == x.dtype, "the gradient stays in the logits' dtype"
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-6)
    grad = np.asarray(grad, np.float64)
    np.testing.assert_array_equal(grad[..., 16:], 0.0)
    np.testing.assert_allclose(grad[..., :16], ref_grad, atol=1e-6 if dtype == "float32" else 4e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_nll_path_matches_autodiff_through_the_logits(dtype):
    """GPT(targets=...) (raw head output, fused NLL) against autodiff of the textbook NLL on GPT's float32 logits,
    with padded vocabulary rows made attractive: same loss and parameter gradients."""
    cfg = TINY.replace(padded_vocab_size=128, dtype=dtype)
    params = init_params(cfg, jax.random.key(8))
    params["wte"]["embedding"] = params["wte"]["embedding"].at[TINY.vocab_size:].set(0.5)
    tokens = jax.random.randint(jax.random.key(9), (2, 12), 0, TINY.vocab_size)

    @jax.jit
    def both(params):
        fused = lambda p: GPT(cfg).apply({"params": p}, tokens[:, :-1], targets=tokens[:, 1:]).mean()  # noqa: E731
        plain = lambda p: _autodiff_nll(GPT(cfg).apply({"params": p}, tokens[:, :-1]), tokens[:, 1:]).mean()  # noqa: E731
        return jax.value_and_grad(fused)(params), jax.value_and_grad(plain)(params)

    (loss, grads), (ref_loss, ref_grads) = both(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        ref = _get(ref_grads, path)
        assert _rel(g, ref) < (1e-5 if dtype == "float32" else 1e-2), jax.tree_util.keystr(path)


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_kv_cache_chunks_match_full_forward():
    params = init_params(TINY, jax.random.key(6))
    tokens = jax.random.randint(jax.random.key(7), (2, 10), 0, TINY.vocab_size)
    full = _logits(TINY, params, tokens)
    cache = init_layer_caches(TINY, 2, 16)
    decode = jax.jit(functools.partial(GPT(TINY).apply, method=GPT.decode))  # one compile per chunk size
    valid = jnp.ones((2, 16), bool)
    pieces, start = [], 0
    for size in (4, 1, 1, 3, 1):
        pos = jnp.broadcast_to(jnp.arange(start, start + size), (2, size))
        logits, cache = decode({"params": params}, tokens[:, start:start + size], pos, split_layers(params), cache,
                               start, valid)
        pieces.append(logits)
        start += size
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)


def test_dropout_only_in_training_and_seeded():
    cfg = TINY.replace(dropout=0.2)
    params = init_params(cfg, jax.random.key(8))
    tokens = jax.random.randint(jax.random.key(9), (2, 8), 0, cfg.vocab_size)
    evals = [_logits(cfg, params, tokens) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    np.testing.assert_array_equal(evals[0], _logits(TINY, params, tokens))
    train_fwd = jax.jit(lambda p, t, key: GPT(cfg).apply({"params": p}, t, deterministic=False,
                                                         rngs={"dropout": key}))
    train = lambda seed: train_fwd(params, tokens, jax.random.key(seed))  # noqa: E731
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))


def test_bfloat16_compute_keeps_float32_params():
    cfg = TINY.replace(dtype="bfloat16")
    params = init_params(cfg, jax.random.key(10))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jax.random.randint(jax.random.key(11), (2, 8), 0, cfg.vocab_size)
    logits = GPT(cfg).apply({"params": params}, tokens)  # one forward each: eager is cheaper than a compile
    assert logits.dtype == jnp.float32
    ref = GPT(TINY).apply({"params": params}, tokens)
    assert float(jnp.max(jnp.abs(logits - ref))) < 0.05  # bf16 has ~3 significant digits


def test_init_through_the_rolled_scan_equals_the_unrolled_modules_own_init():
    # init_params always initialises through the rolled scan (faster to compile); the unroll factor must not
    # change the values, or a run's initial weights would depend on model.scan_unroll. Both sides compiled, as in
    # a run (op-by-op execution rounds some initial values differently in the last bit). And init_params(key(seed))
    # is bitwise what a run with that seed starts from.
    import flax.linen as nn
    import optax

    from gpt2jax.training.state import initial_state

    key, tokens = jax.random.key(3), jnp.zeros((1, 1), jnp.int32)
    for unroll in (0, 3):
        cfg = TINY.replace(scan_unroll=unroll)
        own = jax.jit(lambda k, cfg=cfg: nn.meta.unbox(GPT(cfg).init(k, tokens)["params"]))(key)
        ours = init_params(cfg, key)
        run_start = jax.jit(functools.partial(initial_state, cfg, optax.adamw(1e-3)))(3)["params"]
        for other in (own, run_start):
            assert jax.tree.structure(other) == jax.tree.structure(ours)
            for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(ours)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
