"""Sliding-window bookkeeping (acceptance 1): every target scored exactly once with >= n_ctx - stride tokens of
context, and the strided NLL equal to a float64 numpy recomputation of a tiny GPT-2."""
import math

import jax
import numpy as np
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.eval.windows import Request, plan_windows, score_requests, sliding_window_nll
from gpt2jax.model import init_params


def expected_begin(i: int, n_targets: int, n_ctx: int, stride: int) -> int:
    """Closed form of where target i's window starts (written independently of plan_windows' loop)."""
    if i < n_ctx:
        return 0
    k = math.ceil((i + 1 - n_ctx) / stride)  # the k-th window (k >= 1) is the first whose end passes i
    end = min(k * stride + n_ctx, n_targets)
    return end - n_ctx


def test_every_target_scored_once_with_enough_context():
    checked = 0
    for n_tokens in list(range(2, 40)) + [97, 256, 1000, 1025]:
        for n_ctx in (1, 2, 3, 5, 8, 16, 64):
            for stride in sorted({s for s in (1, 2, n_ctx // 2, n_ctx - 1, n_ctx) if 1 <= s <= n_ctx}):
                windows = plan_windows(n_tokens, n_ctx, stride)
                n_targets = n_tokens - 1
                times = np.zeros(n_targets, int)
                for w in windows:
                    assert 0 <= w.begin <= w.score_from < w.end <= n_targets and w.length <= n_ctx
                    for i in range(w.score_from, w.end):
                        times[i] += 1
                        context = i + 1 - w.begin  # tokens[w.begin .. i] precede target tokens[i + 1]
                        assert context >= min(i + 1, n_ctx - stride), (n_tokens, n_ctx, stride, i)
                        assert w.begin == expected_begin(i, n_targets, n_ctx, stride)
                assert (times == 1).all(), (n_tokens, n_ctx, stride)
                checked += 1
    assert checked > 1000


def test_bad_window_options_are_refused():
    with pytest.raises(ConfigError, match="stride"):
        plan_windows(100, 16, 17)
    with pytest.raises(ConfigError, match="stride"):
        plan_windows(100, 16, 0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        plan_windows(1, 16, 8)


@pytest.mark.parametrize("n_tokens,n_ctx,stride,batch", [(200, 16, 5, 4), (9, 16, 8, 4), (64, 8, 8, 3)])
def test_batches_have_static_shape_and_map_back_to_targets(n_tokens, n_ctx, stride, batch):
    tokens = np.random.default_rng(n_tokens).integers(0, 1000, n_tokens)
    shapes = []

    def fake_nll(inputs, targets):  # echo the target id and the context length at each position
        shapes.append(inputs.shape)
        t = np.arange(inputs.shape[1])[None]
        return targets * 1000.0 + (t + 1)

    out = sliding_window_nll(fake_nll, tokens, n_ctx, stride, batch)
    assert set(shapes) == {(batch, n_ctx)}
    assert out.shape == (n_tokens - 1,)
    np.testing.assert_array_equal(out // 1000, tokens[1:])  # target i is tokens[i + 1]
    context = out % 1000
    i = np.arange(n_tokens - 1)
    assert (context >= np.minimum(i + 1, n_ctx - stride)).all()
    assert (context <= n_ctx).all()


# ---- float64 recomputation ----------------------------------------------------------------------------------

def _np_forward(cfg: GPTConfig, p, tokens: np.ndarray) -> np.ndarray:
    """GPT-2 forward in float64 numpy, one sequence (T,) -> log-probabilities (T, V)."""
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    T, C, N = len(tokens), cfg.n_embd, cfg.n_head
    H = C // N

    def ln(x, q):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_epsilon) * f(q["scale"]) + f(q["bias"])

    def layer(tree, i):
        return jax.tree.map(lambda a: f(a)[i], tree)

    x = f(p["wte"]["embedding"])[tokens] + f(p["wpe"]["embedding"])[:T]
    mask = np.tril(np.ones((T, T), bool))
    for i in range(cfg.n_layer):
        b = layer(p["h"], i)
        qkv = ln(x, b["ln_1"]) @ b["attn"]["c_attn"]["kernel"] + b["attn"]["c_attn"]["bias"]
        q, k, v = (a.reshape(T, N, H).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        s = np.where(mask, q @ k.transpose(0, 2, 1) / math.sqrt(H), -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ b["attn"]["c_proj"]["kernel"] + b["attn"]["c_proj"]["bias"]
        h = ln(x, b["ln_2"]) @ b["mlp"]["c_fc"]["kernel"] + b["mlp"]["c_fc"]["bias"]
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ b["mlp"]["c_proj"]["kernel"] + b["mlp"]["c_proj"]["bias"]
    logits = ln(x, p["ln_f"]) @ f(p["wte"]["embedding"]).T
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_strided_nll_equals_float64_recomputation():
    from gpt2jax.eval.scoring import Scorer

    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=53)
    params = init_params(cfg, jax.random.key(1))
    params = jax.tree.map(lambda a: a * 8.0 if a.ndim >= 2 else a, params)  # sharper, less uniform predictions
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 75)
    n_ctx, stride = 16, 6
    scorer = Scorer(cfg, params, batch_size=8)  # 8 devices: data parallel, one row each
    got = sliding_window_nll(scorer.nll_fn, tokens, n_ctx, stride, scorer.batch_size)

    np_params = jax.device_get(params)
    want = np.empty(len(tokens) - 1)
    for i in range(len(tokens) - 1):
        b = expected_begin(i, len(tokens) - 1, n_ctx, stride)
        logp = _np_forward(cfg, np_params, tokens[b:i + 1])
        want[i] = -logp[-1, tokens[i + 1]]
    assert np.std(want) > 0.1  # the check is not trivially satisfied by a uniform model
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_score_requests_buckets_and_keeps_order():
    rng = np.random.default_rng(3)
    reqs = []
    for n in (3, 40, 17, 1, 64, 9):
        x = rng.integers(0, 100, n)
        reqs.append(Request(x, x + 1, min(n, 2)))
    widths = []

    def fn(inputs, targets):
        widths.append(inputs.shape[1])
        return {"echo": targets}

    out = score_requests(fn, reqs, max_len=64, batch_size=2)
    assert set(widths) <= {16, 32, 64} and len(widths) == 3
    for r, o in zip(reqs, out):
        np.testing.assert_array_equal(o["echo"], r.targets[len(r.targets) - r.n_scored:])
