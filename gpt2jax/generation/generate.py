"""Text generation with a key/value cache: prefill the prompt once, then one token per step in a compiled loop.

    ids = generate_ids(cfg, params, [[464, 2068, 7586, 21831]], 50, GREEDY)
    texts = generate_text(cfg, params, tokenizer, ["The quick brown fox"], 50, Sampling(top_k=40, seed=1))

The model owns the forward pass (`GPT.decode`, the cached one); this module owns the loop around it, sampling,
stopping and shape bucketing. Sampling settings are one validated `Sampling` value.

How it runs (everything after the host-side checks is one XLA program per bucket):
- Prompts of different lengths are LEFT-padded to a common prompt length P, so every row's last prompt token
  sits in the same slot and the decode loop writes one slot per step for the whole batch. A row with pad
  slots `pad` gets position ids `slot - pad` (0 at its first real token, as if it were alone) and a
  `kv_valid` mask that hides its pad slots from attention. This is what Hugging Face does with
  `attention_mask` (position_ids = cumsum(mask) - 1 in `GenerationMixin.prepare_inputs_for_generation`).
- Prefill: one forward pass over the (B, P) prompt block writes cache slots [0, P) and gives the first token.
- Decode: a `lax.while_loop` feeds the last token at slot P + k - 1, samples token k, and stops when
  `max_new_tokens` are done or every row has emitted `eot_id`. The cache lives in the loop carry, so XLA
  updates it in place instead of copying it per step.
- Shapes are static: P and the cache length S are rounded up to buckets (`gpt2jax.generation.buckets`), so a new prompt
  length or a new `max_new_tokens` reuses a compiled program unless it crosses a bucket. Compiled programs are
  kept in a process-wide cache keyed by (config, batch, P, S, sampling mode, parameter shapes).

Sampling follows Hugging Face's order: logits / temperature, then top-k, then top-p (nucleus: keep the smallest
set of most likely tokens whose probability mass reaches top_p). temperature=0 means greedy (argmax).
Randomness comes from `seed` only, so the same seed and inputs give the same samples.

`continue_text` samples past the context window with a sliding window (training's periodic samples use it).
"""
from __future__ import annotations

import codecs
import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from gpt2jax.generation.buckets import bucket_length
from gpt2jax.config import GPTConfig
from gpt2jax.model import GPT, init_layer_caches, split_layers

# A callback sees each step's tokens (B,) as numpy and may return True (stop all rows) or a (B,) bool array
# (stop those rows). It runs on the host, between two compiled steps.
StepCallback = Callable[[np.ndarray, int], Any]


class GenerationError(ValueError):
    """Inputs that cannot be generated from. The message names the problem and the fix."""


# ---- host-side input checks and padding --------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick tokens and when to stop; validated once, at construction.

    temperature: 0 = greedy (argmax); otherwise logits are divided by it before top-k / top-p.
    top_k: keep only the k most likely tokens (None: no top-k filter).
    top_p: keep the smallest most-likely set with mass >= top_p (None: no nucleus filter).
    seed: the only source of randomness (same seed, same inputs -> same tokens).
    stop: text that ends a row (cut off, not returned); needs a tokenizer, so only the text functions take it.
    eot_id: a row ends at this token id (not returned). None: the id functions never stop early; the text
    functions stop at the tokenizer's end-of-text token (unless stop_at_eot=False).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop: tuple[str, ...] = ()
    eot_id: int | None = None

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        if not (isinstance(t, (int, float)) and np.isfinite(t) and t >= 0):
            raise GenerationError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if k is not None and not (_is_int(k) and k >= 1):
            raise GenerationError(f"top_k must be a positive integer or None (no top-k filter), got {k!r}")
        if p is not None and not (isinstance(p, (int, float)) and 0.0 < p <= 1.0):
            raise GenerationError(f"top_p must be in (0, 1] or None (no nucleus filter), got {p!r}")
        if not _is_int(self.seed):
            raise GenerationError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.stop, str) or not all(isinstance(x, str) for x in self.stop):
            raise GenerationError(f"stop must be a sequence of strings, e.g. ['\\n\\n'], got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.eot_id is not None and not (_is_int(self.eot_id) and self.eot_id >= 0):
            raise GenerationError(f"eot_id must be a token id >= 0 or None, got {self.eot_id!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "Sampling":
        return dataclasses.replace(self, **changes)


GREEDY = Sampling(temperature=0.0)


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a text prompt; an empty prompt starts from the end-of-text token (an unconditional sample)."""
    return nonempty_prompt(tokenizer.encode(text), tokenizer)


def nonempty_prompt(ids: Sequence[int], tokenizer) -> list[int]:
    """The one rule for empty prompts: no tokens -> [<|endoftext|>], the start of an unconditional sample."""
    if len(ids):
        return list(ids)
    if tokenizer.eot_id is None:
        raise GenerationError(f"the prompt is empty and the {tokenizer.name!r} tokenizer has no <|endoftext|> "
                              "token to start an unconditional sample from; give a non-empty prompt")
    return [tokenizer.eot_id]


def prepare_prompts(cfg: GPTConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    truncate_prompt: bool = False) -> list[list[int]]:
    """Check prompts against the model; with truncate_prompt, keep only the last tokens that fit.

    Every row needs len(prompt) + max_new_tokens <= n_positions (position ids beyond the context window do
    not exist in GPT-2's learned position table).
    """
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if max_new_tokens >= cfg.n_positions:
        raise GenerationError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the context window of "
            f"n_positions={cfg.n_positions}; use max_new_tokens <= {cfg.n_positions - 1}."
        )
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise GenerationError("prompts must be a non-empty list of token-id lists, e.g. [[464, 2068]]")
    room = cfg.n_positions - max_new_tokens
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            raise GenerationError(
                f"prompt {i} is empty: generation needs at least one token to condition on "
                "(for an unconditional sample start from the end-of-text token)."
            )
        bad = [t for t in p if not 0 <= t < cfg.vocab_size]
        if bad:
            raise GenerationError(
                f"prompt {i} has token id {bad[0]} outside the model's vocabulary [0, {cfg.vocab_size}); "
                "it was encoded with a different tokenizer than the model's."
            )
        if len(p) > room:
            if not truncate_prompt:
                raise GenerationError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} the context window "
                    f"n_positions={cfg.n_positions} leaves room for {room}. Shorten the prompt, lower "
                    "max_new_tokens, or ask for left truncation (truncate_prompt=True / --truncate_prompt)."
                )
            p = p[-room:]
        out.append(p)
    return out


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B, length) int32 tokens with each prompt right-aligned, and the number of pad slots per row (B,)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    pads = np.empty(len(prompts), np.int32)
    for i, p in enumerate(prompts):
        pads[i] = length - len(p)
        tokens[i, pads[i]:] = p
    return tokens, pads


# ---- sampling ----------------------------------------------------------------------------------------------

def nucleus_threshold(probs, top_p):
    """Per row, the largest probability tau with sum(probs[probs >= tau]) >= top_p. probs (B, K) -> (B,).

    Keeping probs >= tau is nucleus (top-p) sampling: the most likely tokens whose mass reaches top_p, with
    tied tokens kept or dropped together. Found by binary search over the bit patterns of float32 (ordered like
    the values for non-negative floats), so it is exact after 32 halvings and needs no sort of the vocabulary
    (a full sort costs more than a 124M decode step on CPU).
    """
    as_bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)
    as_float = lambda b: jax.lax.bitcast_convert_type(b, jnp.float32)
    lo = jnp.zeros(probs.shape[:1], jnp.int32)  # tau = 0 keeps everything: mass >= top_p (or nothing can)
    hi = as_bits(probs.max(axis=-1)) + 1  # tau above the largest probability keeps nothing: mass 0 < top_p

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        tau = as_float(mid)[:, None]
        ok = jnp.sum(jnp.where(probs >= tau, probs, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return as_float(lo)


def filter_logits(logits, temperature, top_k: int | None, top_p):
    """Scale and filter (B, V) logits. Returns (candidate logits (B, K), candidate token ids (B, K)).

    Rejected candidates get -inf. K = top_k when top_k is set (lax.top_k, no full-vocabulary sort), else V.
    `top_k` must be static; temperature and top_p are traced (top_p None = no nucleus filter).
    """
    logits = logits.astype(jnp.float32) / temperature
    B, V = logits.shape
    if top_k is not None and top_k < V:
        values, ids = jax.lax.top_k(logits, top_k)  # (B, K)
    else:
        values, ids = logits, jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), (B, V))
    if top_p is not None:
        probs = jax.nn.softmax(values, axis=-1)
        values = jnp.where(probs >= nucleus_threshold(probs, top_p)[:, None], values, -jnp.inf)
    return values, ids.astype(jnp.int32)


def categorical(key, logits):
    """One index per row of (B, K) logits, drawn with probability softmax(logits), by inverting the CDF.

    Needs one uniform number per row (jax.random.categorical draws K Gumbel variables, K = 50257 per row). A token of probability 0 (-inf logit) is never chosen: the chosen index is the first
    where the cumulative sum exceeds u * total, and the cumulative sum only grows at positive probabilities.
    """
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # (B, K)
    total = cdf[:, -1]
    u = jax.random.uniform(key, total.shape)
    target = jnp.minimum(u * total, jnp.nextafter(total, 0.0))  # < total even when u * total rounds up
    return jnp.argmax(cdf > target[:, None], axis=-1)


def sample_logits(logits, key, *, greedy: bool, temperature=1.0, top_k: int | None = None, top_p=None):
    """One token per row from (B, V) logits. greedy ignores key/temperature/top_k/top_p."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    values, ids = filter_logits(logits, temperature, top_k, top_p)
    choice = categorical(key, values)  # (B,) index into the candidates
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


# ---- the compiled program ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything that fixes the shapes or the structure of the compiled program."""

    cfg: GPTConfig
    batch: int
    prompt_len: int  # P, bucketed
    cache_len: int  # S, bucketed; P + max_new_tokens <= S
    greedy: bool
    top_k: int | None
    use_top_p: bool
    streaming: bool

    @property
    def max_steps(self) -> int:
        return self.cache_len - self.prompt_len


def _host_step(callback_box: list, tokens, step) -> np.ndarray:
    """Runs on the host inside the loop: forward tokens to the user callback, return per-row stop flags."""
    tokens = np.asarray(tokens)
    stop = callback_box[0](tokens, int(step)) if callback_box[0] is not None else None
    if stop is None or stop is False:
        return np.zeros(tokens.shape, np.bool_)
    return np.broadcast_to(np.asarray(stop, np.bool_), tokens.shape).copy()


def _build(plan: _Plan, callback_box: list):
    cfg, B, P, S = plan.cfg, plan.batch, plan.prompt_len, plan.cache_len

    def stream(tokens, step, done):
        if not plan.streaming:
            return done
        stop = io_callback(
            lambda t, s: _host_step(callback_box, t, s), jax.ShapeDtypeStruct((B,), jnp.bool_), tokens, step,
            ordered=True,
        )
        return done | stop

    def run(params, tokens, pads, max_new, temperature, top_p, key, eot_id):
        # tokens (B, P) left-padded, pads (B,) pad slots per row, max_new () <= S - P, eot_id () (-1 = never)
        slots = jnp.arange(S)
        kv_valid = slots[None, :] >= pads[:, None]  # (B, S): pad slots are never attended to
        positions = jnp.maximum(slots[None, :] - pads[:, None], 0)  # (B, S) position id of each slot
        sample = lambda logits, k: sample_logits(
            logits, k, greedy=plan.greedy, temperature=temperature, top_k=plan.top_k,
            top_p=top_p if plan.use_top_p else None,
        )
        layers = split_layers(params)  # sliced once, outside the loop (see GPT.decode)
        forward = lambda caches, tok, pos, index: GPT(cfg).apply(
            {"params": params}, tok, pos, layers, caches, index, kv_valid, method=GPT.decode)

        logits, caches = forward(init_layer_caches(cfg, B, S), tokens, positions[:, :P], 0)  # prefill (B, P, V)
        def advance(step, token, out, done, lengths):
            """Record this step's tokens; a row ends at eot_id (not counted) or when the callback stops it."""
            # Finished rows repeat eot (or token 0 when there is none): a valid id to feed, never returned.
            token = jnp.where(done, jnp.maximum(eot_id, 0), token)
            out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, axis=1)
            is_eot = ~done & (token == eot_id)
            lengths = jnp.where(done, lengths, step + 1 - is_eot)  # (B,) tokens each row returns
            return out, stream(token, step, done | is_eot), lengths

        key, sub = jax.random.split(key)
        no = jnp.zeros((B,), jnp.bool_)
        out, done, lengths = advance(0, sample(logits[:, -1], sub), jnp.zeros((B, plan.max_steps), jnp.int32), no,
                                     jnp.zeros((B,), jnp.int32))

        def cond(carry):
            step, _, _, _, done, _, _ = carry
            return (step < max_new) & ~jnp.all(done)

        def body(carry):
            step, caches, out, last, done, lengths, key = carry
            slot = P + step - 1  # where the previous token goes
            pos = jax.lax.dynamic_slice_in_dim(positions, slot, 1, axis=1)  # (B, 1)
            logits, caches = forward(caches, last[:, None], pos, slot)  # (B, 1, V)
            key, sub = jax.random.split(key)
            out, done, lengths = advance(step, sample(logits[:, 0], sub), out, done, lengths)
            token = jax.lax.dynamic_index_in_dim(out, step, axis=1, keepdims=False)
            return step + 1, caches, out, token, done, lengths, key

        carry = (jnp.int32(1), caches, out, out[:, 0], done, lengths, key)
        steps, _, out, _, done, lengths, _ = jax.lax.while_loop(cond, body, carry)
        return out, steps, lengths, done

    return jax.jit(run)


@dataclasses.dataclass
class _Compiled:
    fn: Any
    callback_box: list
    compile_s: float


_COMPILED: dict[tuple, _Compiled] = {}


def _compiled(plan: _Plan, args: tuple) -> tuple[_Compiled, bool]:
    """The compiled program for this plan and these argument shapes; compiled (and timed) on first use."""
    shapes = tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None)) for x in jax.tree.leaves(args))
    key = (plan, jax.tree.structure(args), shapes)
    hit = key in _COMPILED
    if not hit:
        box: list = [None]
        t0 = time.perf_counter()
        fn = _build(plan, box).lower(*args).compile()
        _COMPILED[key] = _Compiled(fn, box, time.perf_counter() - t0)
    return _COMPILED[key], hit


# ---- public API --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Generation:
    """What `generate` returns: the new tokens and how the call ran."""

    tokens: list[list[int]]  # new tokens per prompt, cut before the first eot_id
    stopped: list[bool]  # per row: ended by eot_id or by the callback (False: it used all max_new_tokens)
    steps: int  # decode steps run (<= max_new_tokens; fewer when every row stopped early)
    compile_s: float  # seconds spent compiling for this call (0.0 when the bucket was already compiled)
    run_s: float  # seconds of prefill + decode, excluding compilation
    prompt_len: int  # bucketed prompt length P
    cache_len: int  # bucketed cache length S


def generate(cfg: GPTConfig, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: Sampling = Sampling(), *, callback: StepCallback | None = None,
             truncate_prompt: bool = False, buckets: tuple[int, int] | None = None) -> Generation:
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens -> Generation (tokens, timings).

    sampling: temperature, top-k/top-p, seed and eot_id (see `Sampling`; stop strings need `generate_text`).
    callback(tokens (B,), step) is called on the host after every step (streaming); returning True or a (B,)
    bool array stops all / those rows. Rows that stopped early are shorter.
    truncate_prompt: drop the oldest prompt tokens when prompt + max_new_tokens exceed the context window
    (otherwise that is an error).
    buckets: (prompt length P, cache length S) to compile for instead of the buckets of these prompts, so calls
    of different lengths share one program (`continue_text`); needs P >= every prompt and S >= P + max_new_tokens.
    """
    if sampling.stop:
        raise GenerationError("stop strings need a tokenizer: use generate_text / generate_text_ids")
    prompts = prepare_prompts(cfg, prompts, max_new_tokens, truncate_prompt)
    eot_id = sampling.eot_id
    if eot_id is not None and eot_id >= cfg.vocab_size:
        raise GenerationError(f"eot_id={eot_id} is outside the vocabulary [0, {cfg.vocab_size})")
    greedy = sampling.greedy
    longest = max(len(p) for p in prompts)
    P = bucket_length(longest)
    S = bucket_length(P + max_new_tokens)
    if buckets is not None:
        if buckets[0] < longest or buckets[1] < buckets[0] + max_new_tokens:
            raise GenerationError(f"buckets={buckets} cannot hold prompts of up to {longest} tokens and "
                                  f"{max_new_tokens} new ones; leave buckets unset")
        P, S = buckets
    plan = _Plan(cfg, len(prompts), P, S, greedy, None if greedy else sampling.top_k,
                 use_top_p=not greedy and sampling.top_p is not None and sampling.top_p < 1.0,
                 streaming=callback is not None)

    tokens, pads = left_pad(prompts, P)
    args = (params, tokens, pads, np.int32(max_new_tokens), np.float32(1.0 if greedy else sampling.temperature),
            np.float32(1.0 if sampling.top_p is None else sampling.top_p), jax.random.key(sampling.seed),
            np.int32(-1 if eot_id is None else eot_id))
    compiled, hit = _compiled(plan, args)
    compiled.callback_box[0] = callback
    t0 = time.perf_counter()
    try:
        out, steps, lengths, done = (np.asarray(x) for x in compiled.fn(*args))
    finally:
        compiled.callback_box[0] = None
    run_s = time.perf_counter() - t0
    rows = [row[:n].tolist() for row, n in zip(out, lengths)]
    return Generation(rows, done.tolist(), int(steps), 0.0 if hit else compiled.compile_s, run_s, P, S)


def generate_ids(cfg: GPTConfig, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: Sampling = Sampling(), **options) -> list[list[int]]:
    """`generate` returning only the new token ids per prompt. options: callback, truncate_prompt, buckets."""
    return generate(cfg, params, prompts, max_new_tokens, sampling, **options).tokens


# ---- text level --------------------------------------------------------------------------------------------

class TextStream:
    """Turns token ids into printable text pieces as they arrive.

    Holds back the bytes of an unfinished UTF-8 character (a GPT-2 BPE token can end inside one; invalid
    bytes become U+FFFD) and any tail that could still grow into a stop string. Stops at the first stop string,
    which is not part of the text.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far (cut at the stop string once one appears)
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the new text that is safe to print ('' while undecided or after a stop)."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self.tokenizer.decode_bytes([int(token)]))
        return self._check_stop(final=False)

    def finish(self) -> str:
        """The rest of the text once generation is over."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._check_stop(final=True)

    def _check_stop(self, final: bool) -> str:
        if self.stopped:
            return self._emit(len(self.text))
        # A stop string may straddle the last emitted position, so search a little before it.
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        cuts = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if cuts:
            self.stopped, self.text = True, self.text[:min(cuts)]
            return self._emit(len(self.text))
        hold = 0 if final else max(
            (k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._emit(len(self.text) - hold)

    def _emit(self, upto: int) -> str:
        piece = self.text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece


def generate_text_ids(cfg: GPTConfig, params, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      sampling: Sampling = Sampling(), *, on_text: Callable[[int, str], None] | None = None,
                      stop_at_eot: bool = True, truncate_prompt: bool = False) -> tuple[list[str], Generation]:
    """Token-id prompts in, text out: -> (generated text per prompt, the Generation with ids and timings).

    A row ends at sampling.eot_id, else at the tokenizer's end-of-text token (when it has one and stop_at_eot),
    or at the first of sampling.stop (cut off). on_text(row, piece) receives text as it is produced (streaming).
    """
    eot = sampling.eot_id if sampling.eot_id is not None else (tokenizer.eot_id if stop_at_eot else None)
    streams = [TextStream(tokenizer, sampling.stop) for _ in prompts]

    def callback(tokens, step):
        for row, (s, t) in enumerate(zip(streams, tokens)):
            if s.stopped or t == eot:
                continue
            piece = s.push(t)
            if piece and on_text is not None:
                on_text(row, piece)
        return np.array([s.stopped for s in streams])

    streaming = on_text is not None or bool(sampling.stop)  # stop strings end rows early only when checked per step
    result = generate(cfg, params, prompts, max_new_tokens, sampling.replace(stop=(), eot_id=eot),
                      callback=callback if streaming else None, truncate_prompt=truncate_prompt)
    for row, (s, new) in enumerate(zip(streams, result.tokens)):
        if not streaming:
            for t in new:
                s.push(t)
        piece = s.finish()
        if piece and on_text is not None:
            on_text(row, piece)
    return [s.text for s in streams], result


def generate_text(cfg: GPTConfig, params, tokenizer, prompts: str | Sequence[str], max_new_tokens: int,
                  sampling: Sampling = Sampling(), **options) -> str | list[str]:
    """Continue text prompt(s); returns the generated text (prompt not included), a str for a str prompt.

    An empty prompt starts from the end-of-text token (`prompt_ids`). options: on_text, stop_at_eot,
    truncate_prompt (see generate_text_ids).
    """
    single = isinstance(prompts, str)
    ids = [prompt_ids(tokenizer, t) for t in ([prompts] if single else prompts)]
    texts, _ = generate_text_ids(cfg, params, tokenizer, ids, max_new_tokens, sampling, **options)
    return texts[0] if single else texts


def continue_text(cfg: GPTConfig, params, tokenizer, prompt: str, n_tokens: int, sampling: Sampling) -> str:
    """The prompt and n_tokens sampled after it, past the context window if need be (stops early at the
    tokenizer's end-of-text token).

    Longer than the context window, it continues in chunks: each chunk is prompted with the last half-window of
    tokens so far (a sliding window, as nanoGPT's generate crops its input to block_size); chunk i uses seed
    sampling.seed * 1000 + i. params may be sharded over several devices of one process: the compiled loop runs
    on their shardings (nothing is gathered onto one device).
    """
    prompt_tokens = tokenizer.encode(prompt)
    ids = prompt_ids(tokenizer, prompt)
    keep = max(1, cfg.n_positions // 2)
    buckets = None
    if n_tokens > cfg.n_positions - len(ids[-keep:]):
        # Several chunks: one compiled program for all of them (a prompt of up to `keep` tokens, continued to the
        # end of the window) instead of one per chunk shape; compiling dominates short samples (char model: 3.5 s
        # per program, 0.03 s to run it).
        P = bucket_length(keep)
        buckets = (P, bucket_length(P + cfg.n_positions - 1))
    produced, chunk = 0, 0
    while produced < n_tokens:
        window = ids[-keep:]
        n = min(n_tokens - produced, cfg.n_positions - len(window))
        chunk_sampling = sampling.replace(seed=sampling.seed * 1000 + chunk, eot_id=tokenizer.eot_id)
        new = generate_ids(cfg, params, [window], n, chunk_sampling, buckets=buckets)[0]
        ids += new
        produced, chunk = produced + len(new), chunk + 1
        if len(new) < n:  # stopped at <|endoftext|>
            break
    return tokenizer.decode(ids[len(ids) - produced - len(prompt_tokens):])
