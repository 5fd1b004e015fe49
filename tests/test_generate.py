"""KV-cache generation: cached logits = full forward, greedy ids = transformers, seeded sampling, filters."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gpt2jax.config import GPTConfig
from gpt2jax.generation.buckets import bucket_length
from gpt2jax.generation.generate import (
    GREEDY, GenerationError, Sampling, TextStream, continue_text, filter_logits, generate, generate_ids, generate_text,
    left_pad, sample_logits,
)
from gpt2jax.model import GPT, init_layer_caches, init_params, split_layers
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")  # GPU: no TF32-class passes in parity checks

# Tiny random GPT-2: padded vocabulary (100 real tokens, 128 rows) so the -inf rows are exercised too.
CFG = GPTConfig(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=100, padded_vocab_size=128)
PROMPTS = [[5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [77]]  # different lengths -> left padding


# GPT-2's init (std 0.02) makes a tiny random model repeat its last token under greedy decoding; weights 10x
# larger give a varied greedy path, so token-by-token comparisons below test something.
WEIGHT_SCALE = 10.0


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(lambda a: a * WEIGHT_SCALE if a.ndim >= 2 else a, init_params(CFG, jax.random.key(0)))


def full_forward_last(params, seqs, width=32):
    """Reference: the model's own full forward pass (no cache) over each whole sequence so far, logits at its
    last token. Sequences are right-padded to one width so a single compile serves every step; padding after
    the last token cannot change its logits (causal attention)."""
    batch = np.zeros((len(seqs), width), np.int32)
    for i, seq in enumerate(seqs):
        batch[i, :len(seq)] = seq
    logits = _full_forward(params, jnp.asarray(batch))  # (B, width, V)
    return np.stack([np.asarray(logits[i, len(seq) - 1]) for i, seq in enumerate(seqs)])


_full_forward = jax.jit(lambda params, tokens: GPT(CFG).apply({"params": params}, tokens))


# ---- acceptance 1: cached logits == full forward at every step ---------------------------------------------

def test_cached_logits_equal_full_forward_every_step_left_padded_batch():
    """GPT-2-initialised random model; the fed tokens are random (teacher forcing), so every step sees new
    tokens; rows of different lengths are left-padded in one batch."""
    params = init_params(CFG, jax.random.key(1))
    rng = np.random.default_rng(0)
    steps = 12
    P = bucket_length(max(map(len, PROMPTS)))
    S = bucket_length(P + steps)
    tokens, pads = left_pad(PROMPTS, P)
    slots = np.arange(S)
    kv_valid = jnp.asarray(slots[None] >= pads[:, None])
    positions = jnp.asarray(np.maximum(slots[None] - pads[:, None], 0))

    @jax.jit
    def step(caches, tok, pos, index):
        return GPT(CFG).apply({"params": params}, tok, pos, split_layers(params), caches, index, kv_valid,
                              method=GPT.decode)

    logits, caches = step(init_layer_caches(CFG, len(PROMPTS), S), jnp.asarray(tokens), positions[:, :P], 0)
    last = logits[:, -1]
    seqs = [list(p) for p in PROMPTS]
    worst = scale = 0.0
    for k in range(steps + 1):
        ref, got = full_forward_last(params, seqs), np.asarray(last)  # (B, V) each
        assert np.array_equal(np.isinf(ref), np.isinf(got))  # padded vocab rows are -inf on both sides
        worst = max(worst, float(np.abs(got[:, : CFG.vocab_size] - ref[:, : CFG.vocab_size]).max()))
        scale = max(scale, float(np.abs(ref[:, : CFG.vocab_size]).max()))
        if k == steps:
            break
        token = rng.integers(0, CFG.vocab_size, len(seqs)).astype(np.int32)
        for seq, t in zip(seqs, token):
            seq.append(int(t))
        slot = P + k
        logits, caches = step(caches, jnp.asarray(token)[:, None], positions[:, slot:slot + 1], slot)
        last = logits[:, 0]
    print(f"max |cached - full| over {steps} steps: {worst:.2e} (largest |logit| {scale:.2f})")
    assert worst <= 1e-5, f"cached logits differ from the full forward pass by {worst}"


def test_generate_loop_equals_greedy_without_cache(params):
    """The compiled while_loop (prefill + cached steps) picks the argmax of a full no-cache forward each step."""
    steps = 12
    seqs = [list(p) for p in PROMPTS]
    for _ in range(steps):
        for seq, t in zip(seqs, full_forward_last(params, seqs).argmax(-1)):
            seq.append(int(t))
    assert generate_ids(CFG, params, PROMPTS, steps, GREEDY) == [s[len(p):] for s, p in zip(seqs, PROMPTS)]


def test_batch_rows_do_not_see_each_other(params):
    """A row's tokens are the same alone and inside a left-padded batch (padding changes nothing)."""
    batched = generate_ids(CFG, params, PROMPTS, 8, GREEDY)
    alone = [generate_ids(CFG, params, [p], 8, GREEDY)[0] for p in PROMPTS]
    assert batched == alone


# ---- acceptance 2: greedy ids == transformers --------------------------------------------------------------

def test_greedy_ids_equal_transformers_generate(params, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gpt2jax.weights.hf import export_hf

    hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(CFG, params, tmp_path / "hf")).eval()
    eos = hf.config.eos_token_id  # vocab_size - 1; never emitted by this random model within 20 tokens
    n_new = 20

    def hf_greedy(prompts):
        width = max(map(len, prompts))  # left padding; HF derives position ids from the attention mask
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                              pad_token_id=eos, eos_token_id=None)
        return out[:, width:].tolist()

    for prompt in PROMPTS:  # one by one
        assert generate_ids(CFG, params, [prompt], n_new, GREEDY) == hf_greedy([prompt])
    # and as one batch of different lengths
    assert generate_ids(CFG, params, PROMPTS, n_new, GREEDY) == hf_greedy(PROMPTS)


# ---- acceptance 3: seeds and filters -----------------------------------------------------------------------

def test_same_seed_same_samples_other_seed_other_samples(params):
    kw = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=3)
    a = generate_ids(CFG, params, PROMPTS, 16, kw)
    assert a == generate_ids(CFG, params, PROMPTS, 16, kw)
    assert a != generate_ids(CFG, params, PROMPTS, 16, kw.replace(seed=4))
    assert all(0 <= t < CFG.vocab_size for row in a for t in row)


def allowed_set(logits: np.ndarray, temperature: float, top_k, top_p, sure: bool = False) -> set[int]:
    """Tokens a correct top-k / top-p filter may keep (sure=False) or must keep (sure=True), in float64 numpy.

    top-k: token i may stay if fewer than k tokens beat it, and must stay if at most k tie or beat it. top-p
    (HF's definition, tied tokens together): a token stays when the tokens strictly more likely than it have
    mass < top_p; a 1e-6 slack either way absorbs float32 rounding.
    """
    z = logits.astype(np.float64) / temperature
    cand = np.flatnonzero(np.isfinite(z))
    if top_k is not None:
        rank = np.array([(z[cand] >= z[i]).sum() if sure else (z[cand] > z[i]).sum() + 1 for i in cand])
        cand = cand[rank <= top_k]
    if top_p is not None and len(cand):
        probs = np.exp(z[cand] - z[cand].max())
        probs /= probs.sum()
        more_likely = np.array([probs[probs > q].sum() for q in probs])
        cand = cand[more_likely < top_p + (-1e-6 if sure else 1e-6)]
    return set(cand.tolist())


def test_top_k_top_p_never_leave_the_allowed_set():
    rng = np.random.default_rng(0)
    V, draws = 128, 64
    sampler = jax.jit(jax.vmap(
        lambda logits, key, t, p, k: sample_logits(logits[None], key, greedy=False, temperature=t, top_k=k,
                                                   top_p=p)[0],
        in_axes=(None, 0, None, None, None)), static_argnums=4)
    kept_by_filter = jax.jit(lambda logits, t, p, k: filter_logits(logits[None], t, k, p), static_argnums=(2, 3))
    for case in range(120):
        logits = rng.normal(0, rng.choice([0.5, 2.0, 8.0]), V).astype(np.float32)
        logits[100:] = -np.inf  # padded vocabulary rows, as the model emits them
        if case % 4 == 0:  # some exact ties
            logits[rng.integers(0, 100, 10)] = logits[:100].max()
        top_k = [None, 1, 3, 10, 50][case % 5]
        top_p = [None, 0.05, 0.5, 0.9, 1.0][(case // 5) % 5]
        temperature = float(rng.choice([0.3, 1.0, 2.5]))
        p = 1.0 if top_p is None else top_p
        values, ids = (np.asarray(a[0]) for a in kept_by_filter(jnp.asarray(logits), temperature, top_p, top_k))
        kept = set(ids[np.isfinite(values)].tolist())
        may, must = (allowed_set(logits, temperature, top_k, top_p, sure) for sure in (False, True))
        assert must <= kept <= may, (case, top_k, top_p, sorted(kept ^ may))
        keys = jax.random.split(jax.random.key(case), draws)
        got = set(np.asarray(sampler(jnp.asarray(logits), keys, temperature, p, top_k)).tolist())
        assert got <= kept, (case, top_k, top_p, sorted(got - kept))


def test_sampler_follows_the_softmax_distribution():
    logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.1, 0.0]))  # the last token has probability 0 (-inf)
    keys = jax.random.split(jax.random.key(0), 40_000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_logits(logits[None], k, greedy=False)[0]))(keys))
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert freq[4] == 0
    np.testing.assert_allclose(freq[:4], [0.5, 0.25, 0.15, 0.1], atol=0.012)  # > 5 standard errors


def test_top_k_1_and_tiny_top_p_are_greedy(params):
    greedy = generate_ids(CFG, params, PROMPTS, 10, GREEDY)
    assert generate_ids(CFG, params, PROMPTS, 10, Sampling(top_k=1, seed=5)) == greedy
    assert generate_ids(CFG, params, PROMPTS, 10, Sampling(top_p=1e-6, seed=5)) == greedy


# ---- stopping, streaming, buckets, bad input ---------------------------------------------------------------

def test_stops_at_eot_per_row(params):
    greedy = generate_ids(CFG, params, PROMPTS, 10, GREEDY)
    eot = greedy[0][3]  # pretend row 0's 4th token ends the text
    res = generate(CFG, params, PROMPTS, 10, GREEDY.replace(eot_id=eot))
    for row, full in zip(res.tokens, greedy):
        expect = full[: full.index(eot)] if eot in full else full
        assert row == expect
    assert res.stopped[0]


def test_callback_streams_every_step_in_order_and_can_stop(params):
    seen = []

    def callback(tokens, step):
        seen.append((step, tokens.tolist()))
        return step >= 4  # stop everything after the 5th token

    res = generate(CFG, params, PROMPTS, 10, GREEDY, callback=callback)
    assert [s for s, _ in seen] == list(range(5)) and res.steps == 5
    assert [list(col) for col in zip(*[t for _, t in seen])] == res.tokens
    assert res.tokens == [row[:5] for row in generate_ids(CFG, params, PROMPTS, 10, GREEDY)]


def test_callback_stops_single_rows(params):
    full = generate_ids(CFG, params, PROMPTS, 8, GREEDY)
    res = generate(CFG, params, PROMPTS, 8, GREEDY,
                   callback=lambda tokens, step: np.array([step >= 2, False, step >= 5]))
    assert res.tokens == [full[0][:3], full[1], full[2][:6]]
    assert res.stopped == [True, False, True] and res.steps == 8


def test_one_compile_per_bucket(params):
    first = generate(CFG, params, [[1, 2, 3]], 5, GREEDY)
    again = generate(CFG, params, [[4, 5, 6, 7, 8]], 7, GREEDY)  # same (P, S) bucket
    assert (first.prompt_len, first.cache_len) == (again.prompt_len, again.cache_len)
    assert again.compile_s == 0.0


def test_prompt_longer_than_context_is_an_error_or_left_truncated(params):
    long = list(range(1, 61))  # 60 tokens + 10 new > n_positions = 64
    with pytest.raises(GenerationError, match="truncate_prompt"):
        generate_ids(CFG, params, [long], 10)
    got = generate_ids(CFG, params, [long], 10, GREEDY, truncate_prompt=True)
    assert got == generate_ids(CFG, params, [long[-54:]], 10, GREEDY)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[[]]), "empty"),
    (dict(prompts=[[100]]), "outside the model's vocabulary"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_input_is_one_clear_error(params, kwargs, match):
    args = dict(prompts=[[1, 2]], max_new_tokens=4) | kwargs
    with pytest.raises(GenerationError, match=match):
        prompts, max_new_tokens = args.pop("prompts"), args.pop("max_new_tokens")
        generate(CFG, params, prompts, max_new_tokens, Sampling(**args))


# ---- text level --------------------------------------------------------------------------------------------

def test_text_stream_holds_partial_utf8_and_cuts_at_stop_string():
    tok = gpt2_tokenizer()
    text = "Crème brûlée 😀 and 日本語 then STOP here"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens really end inside a character
    stream = TextStream(tok, stop=["STOP"])
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == "Crème brûlée 😀 and 日本語 then "
    assert all("\ufffd" not in p for p in pieces)


def test_generate_text_with_char_tokenizer_and_stop_string(params):
    tok = CharTokenizer("".join(chr(c) for c in range(32, 132)))  # 100 characters = CFG.vocab_size
    full = generate_text(CFG, params, tok, "hello", 12, GREEDY, stop_at_eot=False)
    assert len(full) == 12
    stop = full[5:7]
    streamed = []
    cut = generate_text(CFG, params, tok, ["hello"], 12, GREEDY.replace(stop=(stop,)),
                        on_text=lambda row, piece: streamed.append(piece))
    assert cut == [full[: full.index(stop)]] and "".join(streamed) == cut[0]


def test_continue_text_slides_past_the_context_window(params):
    """Training's samples: longer than n_positions = 64, the continuation goes on from the last half-window."""
    tok = CharTokenizer("".join(chr(c) for c in range(32, 132)))
    first = generate_text(CFG, params, tok, "hello", 59, GREEDY, stop_at_eot=False)  # 5 + 59 = 64 positions
    text = continue_text(CFG, params, tok, "hello", 100, GREEDY)
    assert text.startswith("hello" + first) and len(text) == 5 + 100
    window = tok.encode("hello" + first)[-CFG.n_positions // 2:]
    assert text[5 + 59:] == tok.decode(generate_ids(CFG, params, [window], 32, GREEDY)[0]) + text[5 + 59 + 32:]


def test_continue_text_compiles_one_program_for_all_its_chunks(params):
    """Three chunks of different prompt/continuation lengths share one compiled program (compiling is most of
    a short sample's time), with the tokens of separately bucketed calls."""
    from gpt2jax.generation import generate as generate_lib

    tok = CharTokenizer("".join(chr(c) for c in range(32, 132)))
    sampling = Sampling(top_k=5, seed=3)
    before = set(generate_lib._COMPILED)
    text = continue_text(CFG, params, tok, "hi", 150, sampling)  # chunks of 62, 32, 32 and 24 tokens
    assert len(set(generate_lib._COMPILED) - before) == 1
    ids, produced = tok.encode("hi"), []
    for chunk, n in enumerate((62, 32, 32, 24)):  # the same chunks, each compiled for its own buckets
        new = generate_ids(CFG, params, [(ids + produced)[-32:]], n, sampling.replace(seed=3000 + chunk))[0]
        produced += new
    assert text == "hi" + tok.decode(produced)
    with pytest.raises(GenerationError, match="buckets"):
        generate(CFG, params, [[1, 2, 3]], 10, GREEDY, buckets=(2, 64))


def test_generation_runs_on_sharded_params(params):
    """Training samples from its FSDP + tensor-parallel params as they are (nothing gathered onto one device)."""
    from gpt2jax.model.sharding import make_mesh, param_shardings

    # The 8 simulated CPU devices (conftest) also on a one-GPU machine, and the unsharded reference on the CPU too,
    # so that both runs use the same backend's numerics.
    cpus = jax.devices("cpu")
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, cpus[:8])
    sharded = jax.device_put(params, param_shardings(CFG, mesh))
    unsharded = jax.device_put(params, cpus[0])
    assert generate_ids(CFG, sharded, PROMPTS, 6, GREEDY) == generate_ids(CFG, unsharded, PROMPTS, 6, GREEDY)
