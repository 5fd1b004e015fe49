"""GPT-2 in Flax (linen), functional: `logits = GPT(cfg).apply({"params": params}, tokens)`.

The math is GPT-2's (Radford et al. 2019; openai/gpt-2 `src/model.py`): pre-LayerNorm blocks, GELU with the tanh
approximation, learned position embeddings, causal self-attention, a final LayerNorm and an LM head tied to the
token embedding. Module names are GPT-2's own (wte, wpe, h, ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/c_fc,
mlp/c_proj, ln_f) so official weights map onto this tree by name (see `gpt2jax.weights.hf`).

The layers are one `nn.scan` over a stacked `h` (leading axis "layers"); `layer_unroll` unrolls it fully for models
up to 24 layers (faster steps, see its docstring) and keeps it rolled deeper, where compile time then does not
grow with depth.
Generation uses `GPT.decode`, the cached forward pass over the same modules (layers unrolled, one key/value cache
per layer; see its docstring); `gpt2jax.generation.generate` runs the decode loop around it. Every parameter carries logical axis names; `gpt2jax.model.sharding` maps them to mesh axes. Without a mesh the
annotations are no-ops and the same code runs on one device.

Shapes in comments: B batch, T query length, S key length, C n_embd, N n_head, H head_dim, V vocabulary rows,
L n_layer.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2jax.config import GPTConfig
from gpt2jax.model.layernorm import LayerNorm

INIT_STD = 0.02  # GPT-2: weights ~ N(0, 0.02) (openai/gpt-2 model.py, nanoGPT, HF GPT2 _init_weights)

REMAT_POLICY_FNS = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _partitioned(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _dense(cfg: GPTConfig, features: int, axes: tuple[str, str], std: float, name: str) -> nn.Dense:
    # Flax kernels are (in, out) like GPT-2's Conv1D weights.
    return nn.Dense(
        features,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.float32,
        kernel_init=_partitioned(nn.initializers.normal(std), axes),
        bias_init=_partitioned(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def hidden_init_std(cfg: GPTConfig, std: float) -> float:
    """Init std of a hidden matrix (c_attn, c_proj, c_fc: both fan-in and fan-out grow with width): GPT-2's `std`
    under SP; under muP `std * sqrt(base_width / width)`, i.e. variance 1/fan_in relative to the base model, as
    mup.init.normal_ does for matrix-like parameters (Yang et al. 2022, Table 3; Cerebras-GPT's muP recipe).
    Embeddings, biases and LayerNorms keep their SP init."""
    return std * math.sqrt(cfg.mup_ratio) if cfg.mup else std


def attention_scale(cfg: GPTConfig) -> float:
    """What the attention scores q.k are multiplied by: 1/sqrt(head_dim) under SP, 1/head_dim under muP
    (Yang et al. 2022, sec. 4 / appendix J; mutransformers' GPT-2 with attn_mult=1)."""
    return 1 / cfg.head_dim if cfg.mup else 1 / math.sqrt(cfg.head_dim)


def layer_norm_impl(cfg: GPTConfig) -> str:
    """model.layer_norm resolved for this backend: "auto" is the hand-written backward pass on the CPU (faster
    there, see gpt2jax.model.layernorm), flax's nn.LayerNorm under autodiff elsewhere."""
    if cfg.layer_norm != "auto":
        return cfg.layer_norm
    return "manual" if jax.default_backend() == "cpu" else "autodiff"


def layer_norm(cfg: GPTConfig, name: str | None = None) -> nn.Module:
    """A LayerNorm with parameters `scale` and `bias` (float32, logical axis "norm"); either form, same math."""
    dtype = jnp.dtype(cfg.dtype)
    scale_init = _partitioned(nn.initializers.ones_init(), ("norm",))
    bias_init = _partitioned(nn.initializers.zeros_init(), ("norm",))
    if layer_norm_impl(cfg) == "manual":
        return LayerNorm(cfg.layer_norm_epsilon, dtype, scale_init, bias_init, name=name)
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=jnp.float32,
                        scale_init=scale_init, bias_init=bias_init, name=name)


def causal_mask(q_offset, q_len: int, kv_len: int, kv_valid=None):
    """Boolean (B or 1, 1, T, S) mask: query i (at slot q_offset + i) sees key slot j iff j <= q_offset + i.

    kv_valid: optional (B, S) bool marking key slots that hold real tokens (False for left padding).
    """
    q_slot = q_offset + jnp.arange(q_len)[:, None]  # (T, 1)
    k_slot = jnp.arange(kv_len)[None, :]  # (1, S)
    mask = (k_slot <= q_slot)[None, None]  # (1, 1, T, S)
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, None, :]
    return mask


def reference_attention(q, k, v, mask, dropout_fn=None):
    """Hand-written softmax attention. q (B, T, N, H), k/v (B, S, N, H), mask broadcastable to (B, N, T, S)."""
    scores = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])  # (B, N, T, S)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout_fn is not None:
        probs = dropout_fn(probs)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)  # (B, T, N, H)


def attention_impl(cfg: GPTConfig, dtype, has_mask: bool = False) -> str:
    """model.attention resolved for this backend and dtype. "auto" picks, without an explicit mask (training and
    full forwards): cuDNN's fused flash attention on a GPU for bf16/fp16 (measured on an H200 at 124M, T=1024: a
    2x faster step than xla and 17 vs 31 GB of temporaries), `blocked_causal_attention` on the CPU (see its
    docstring), XLA's attention elsewhere (GPU fp32). The masked KV-cache decoder always takes XLA's."""
    if has_mask and cfg.attention in ("auto", "blocked"):
        return "xla"  # blocked attention is plain causal self-attention only
    if cfg.attention != "auto":
        return cfg.attention
    backend = jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and backend == "gpu" else "blocked" if backend == "cpu" else "xla"


# Query rows per block of `blocked_causal_attention`, from bench/attention.py on the CPU (32, 64, 128, 256 tried):
# 64 and 128 alike at T=256 forward and backward (each ahead in one of two runs; 26.3 vs 28.5 ms on an AVX2 EPYC),
# 128 fastest at T=1024 forward; contexts up to 128 are one block (32-row blocks are faster alone at T=64, 1.35
# vs 2.04 ms, but the char training step was the same with them, 43.2 vs 43.1 ms: bench/results/HISTORY.md).
ATTENTION_BLOCK = 128


def blocked_causal_attention(q, k, v, block: int = ATTENTION_BLOCK):
    """Causal softmax attention, one block of `block` query rows at a time, each against the keys up to its own
    last row only: the masked upper triangle beyond the diagonal blocks is never computed (at T=1024, 9/16 of
    the full score matrix is). Heads move next to the batch first, so every product is a plain batched matmul
    over (B, N). Scores and softmax in float32, as in jax.nn.dot_product_attention. q, k, v (B, T, N, H) ->
    (B, T, N, H). On the CPU, per layer, than jax.nn.dot_product_attention's XLA implementation: 2.5-2.6x faster at
    the 124M training shape (forward and autodiff's backward), 2.6-3.5x at the T=1024 scoring forward
    (bench/attention.py on an AVX-512 and an AVX2 CPU)."""
    T, H = q.shape[1], q.shape[-1]
    qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, N, T, H)
    qt = qt * jnp.asarray(1 / math.sqrt(H), qt.dtype)  # scaling the (B, N, T, H) queries is cheaper than the scores
    outs = []
    for start in range(0, T, block):
        end = min(start + block, T)  # this block's queries [start, end) see keys [0, end)
        scores = jnp.einsum("bnqh,bnkh->bnqk", qt[:, :, start:end], kt[:, :, :end],
                            preferred_element_type=jnp.float32)  # (B, N, end - start, end)
        above_diagonal = jnp.arange(start, end)[:, None] < jnp.arange(end)[None, :]
        probs = jax.nn.softmax(scores + jnp.where(above_diagonal, -jnp.inf, 0.0), axis=-1)
        outs.append(jnp.einsum("bnqk,bnkh->bnqh", probs.astype(v.dtype), vt[:, :, :end]))  # (B, N, end - start, H)
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)  # (B, T, N, H)


# Deepest model that model.scan_unroll=0 unrolls: unrolled code compiles in time and size linear in depth; the
# GPT-2 sizes up to 355M (24 layers) stay unrolled, gpt2-large/xl keep the rolled scan (not measured unrolled).
MAX_AUTO_UNROLL = 24


def layer_unroll(cfg: GPTConfig) -> int:
    """model.scan_unroll resolved: 0 (auto) unrolls the layer scan fully up to MAX_AUTO_UNROLL layers. A rolled
    scan slices every layer's weights out of the stacked parameters and stacks activations and gradients back at
    each iteration; unrolled code does not. Measured (bench/bench_train.py --ours_variants, same run): H200, 124M,
    B16 x T1024 bf16: 46.6 -> 32.7 ms per step (180 device copies, 9.6 ms, gone); this 2-core CPU, the char baby
    GPT (4 layers, 10 steps per call): 789 -> 638 ms per call."""
    if cfg.scan_unroll:
        return cfg.scan_unroll
    return cfg.n_layer if cfg.n_layer <= MAX_AUTO_UNROLL else 1


def cudnn_flash_takes(q_len: int, kv_len: int, head_dim: int) -> bool:
    """Whether cuDNN's fused flash attention (jax 0.10-0.11) takes these shapes in training as well as forward.
    Its backward pass is checked only when autodiff transforms the forward, outside any try at the call site, so
    auto must decide before: head dim a multiple of 8 and at most 128 (256 from Hopper on; 128 is the bound for
    every GPU) and, for the training kernels, even sequence lengths (on an H200 with jax 0.11.2 a bf16 training
    step at T=11 raised "Unsupported sequence length Q 11, KV 11" while differentiating). An explicit
    model.attention=cudnn at an odd data.seq_len is refused before training by train_config.check_train_config."""
    return head_dim % 8 == 0 and head_dim <= 128 and q_len % 2 == 0 and kv_len % 2 == 0


def dot_product_attention(cfg: GPTConfig, q, k, v, mask, is_causal: bool):
    """Attention with the implementation of `attention_impl`: `blocked_causal_attention` or
    jax.nn.dot_product_attention; when auto picked cuDNN and cuDNN does not take these shapes (`cudnn_flash_takes`,
    or a refusal at trace time), XLA's."""
    impl = attention_impl(cfg, q.dtype, mask is not None)
    if impl == "blocked":
        return blocked_causal_attention(q, k, v)
    if impl == "cudnn" and cfg.attention == "auto":
        if cudnn_flash_takes(q.shape[1], k.shape[1], q.shape[-1]):
            try:
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="cudnn")
            except (ValueError, NotImplementedError, RuntimeError, TypeError):
                pass
        impl = "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=impl)


class CausalSelfAttention(nn.Module):
    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, layer_cache=None, cache_index=None, kv_valid=None):
        cfg = self.cfg
        B, T, C = x.shape
        N, H = cfg.n_head, cfg.head_dim
        qkv = _dense(cfg, 3 * C, ("embed", "qkv"), hidden_init_std(cfg, INIT_STD), "c_attn")(x)  # (B, T, 3C)
        q, k, v = (part.reshape(B, T, N, H) for part in jnp.split(qkv, 3, axis=-1))
        if cfg.mup:  # scores / H (attention_scale): every implementation below divides them by sqrt(H) itself
            q = q * jnp.asarray(1 / math.sqrt(H), q.dtype)

        new_cache = None
        if layer_cache is None:  # training / full forward: keys are the queries' own positions
            mask, is_causal = None, True
        else:  # incremental decoding: write this chunk's keys/values at cache_index, attend to the whole cache
            k = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, cache_index, 0, 0))
            new_cache = {"k": k, "v": v}  # (B, S, N, H) each
            mask, is_causal = causal_mask(cache_index, T, k.shape[1], kv_valid), False

        attn_dropout = cfg.dropout > 0 and not self.deterministic
        if cfg.attention == "reference" or attn_dropout:
            # jax.nn.dot_product_attention has no dropout, so training with attention dropout takes this path.
            dropout = nn.Dropout(cfg.dropout, deterministic=self.deterministic) if attn_dropout else None
            full_mask = mask if mask is not None else causal_mask(0, T, k.shape[1])
            y = reference_attention(q, k, v, full_mask, dropout)
        else:
            y = dot_product_attention(cfg, q, k.astype(q.dtype), v.astype(q.dtype), mask, is_causal)  # (B, T, N, H)
        y = y.reshape(B, T, C)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) (two residual adds per block).
        y = _dense(cfg, C, ("heads", "embed"), hidden_init_std(cfg, INIT_STD / math.sqrt(2 * cfg.n_layer)),
                   "c_proj")(y)
        y = nn.Dropout(cfg.dropout, deterministic=self.deterministic)(y)
        return y, new_cache


class MLP(nn.Module):
    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = _dense(cfg, 4 * cfg.n_embd, ("embed", "mlp"), hidden_init_std(cfg, INIT_STD), "c_fc")(x)  # (B, T, 4C)
        h = jax.nn.gelu(h, approximate=True)  # GPT-2's gelu is the tanh approximation
        h = _dense(cfg, cfg.n_embd, ("mlp", "embed"), hidden_init_std(cfg, INIT_STD / math.sqrt(2 * cfg.n_layer)),
                   "c_proj")(h)
        return nn.Dropout(cfg.dropout, deterministic=self.deterministic)(h)


class Block(nn.Module):
    """One pre-LN transformer block, shaped for nn.scan: x -> (x, None); with a layer cache (decoding)
    -> (x, the updated layer cache)."""

    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, layer_cache=None, cache_index=None, kv_valid=None):
        cfg, det = self.cfg, self.deterministic
        y, new_cache = CausalSelfAttention(cfg, det, name="attn")(
            layer_norm(cfg, "ln_1")(x), layer_cache, cache_index, kv_valid
        )
        x = x + y
        x = x + MLP(cfg, det, name="mlp")(layer_norm(cfg, "ln_2")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_seq", "activation_embed"))
        return x, new_cache


class GPT(nn.Module):
    """The model. `__call__` is the full forward pass (training, scoring); `decode` is the cached forward pass
    (generation). Both share the embeddings and the head defined in `setup`."""

    cfg: GPTConfig

    def setup(self):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        self.wte = nn.Embed(cfg.embedding_rows, cfg.n_embd, dtype=dtype, param_dtype=jnp.float32,
                            embedding_init=_partitioned(nn.initializers.normal(INIT_STD), ("vocab", "embed")))
        self.wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=dtype, param_dtype=jnp.float32,
                            embedding_init=_partitioned(nn.initializers.normal(INIT_STD), ("positions", "embed")))
        self.ln_f = layer_norm(cfg)

    @nn.compact
    def __call__(self, tokens, positions=None, *, deterministic: bool = True, targets=None):
        """tokens (B, T) int -> logits (B, T, V) float32. positions: (B, T) position ids, default arange(T).
        With targets (B, T) int: -> per-token NLL (B, T) float32 instead, from the head's raw output in the compute
        dtype (`token_nll`): no float32 or masked copies of the logits, beyond what token_nll keeps for its backward
        pass (the logits in their dtype; on the CPU their float32 exp instead)."""
        cfg = self.cfg
        B, T = tokens.shape
        cfg.check_tokens(T)  # static shape: fails at trace time, before any compile
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T), (B, T))
        x = nn.Dropout(cfg.dropout, deterministic=deterministic)(self.embed(tokens, positions))  # (B, T, C)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_seq", "activation_embed"))

        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICY_FNS[cfg.remat], prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=cfg.n_layer,
            unroll=layer_unroll(cfg),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(cfg, deterministic, name="h")(x)
        if targets is not None:
            return token_nll(self.raw_logits(x), targets, cfg.vocab_size)  # (B, T)
        return self.head(x)

    def embed(self, tokens, positions):
        """Token + position embeddings: (B, T) ids and (B, T) positions -> (B, T, C)."""
        return self.wte(tokens) + self.wpe(positions)

    def head(self, x):
        """Logits for scoring and sampling: (B, T, C) -> (B, T, V) float32, padded rows -inf."""
        return mask_padded_vocab(self.cfg, self.raw_logits(x).astype(jnp.float32))  # (B, T, V)

    def raw_logits(self, x):
        """Final LayerNorm and the LM head tied to wte: (B, T, C) -> (B, T, V) in the compute dtype, padded rows
        as they come. Under muP the head's input is multiplied by base_width / width first: the mup package's
        MuSharedReadout (output_mult * x / width_mult, the readout tied to wte), cheaper on x than on the logits."""
        x = self.ln_f(x)
        if self.cfg.mup:
            x = x * jnp.asarray(self.cfg.mup_ratio, x.dtype)
        if x.shape[1] == 1:
            # One position (a decode step): written as (V, C) x (B, 1, C), XLA (CPU) runs a plain matrix-vector
            # product over contiguous embedding rows instead of fusing ln_f into a slower loop (bench/results).
            return jnp.einsum("vc,btc->btv", self.wte.embedding.astype(x.dtype), x)
        return self.wte.attend(x)

    def decode(self, tokens, positions, layers: list, caches: list, cache_index, kv_valid):
        """The cached forward pass: the same math as `__call__`, for generation.

        tokens/positions (B, T): this chunk (the prompt at prefill, one token per decode step), written at cache
        slot `cache_index`; kv_valid (B, S) marks the cache slots that hold real tokens (False: left padding).
        layers: `split_layers(params)`; caches: `init_layer_caches` or a previous call's. Returns (logits
        (B, T, V) float32, new caches).

        The layers run as a Python loop over per-layer weights and per-layer caches rather than `__call__`'s
        lax.scan over stacked ones: inside a decode loop, XLA (CPU) copies every layer's weight slice and the whole
        stacked cache at every step of a scan (seen in the optimised HLO), more memory traffic than the matmuls.
        Sliced once outside the loop, each layer's cache is its own loop-carried buffer updated in place.
        """
        x = self.embed(tokens, positions)  # (B, T, C)
        new_caches = []
        for layer_params, cache in zip(layers, caches):
            x, cache = Block(self.cfg, parent=None).apply({"params": layer_params}, x, cache, cache_index, kv_valid)
            new_caches.append(cache)
        return self.head(x), new_caches


def mask_padded_vocab(cfg: GPTConfig, logits):
    """Padded embedding rows are not tokens: their logits become -inf, so they never win (loss or sampling)."""
    if cfg.embedding_rows > cfg.vocab_size:
        logits = jnp.where(jnp.arange(cfg.embedding_rows) < cfg.vocab_size, logits, -jnp.inf)
    return logits


# ---- helpers around the module -----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: GPTConfig, key: jax.Array) -> dict[str, Any]:
    """Random GPT-2-initialised parameters (plain arrays, float32).

    Initialised through the rolled layer scan whatever cfg.scan_unroll says: the unroll factor changes how the
    scan is compiled, not the per-layer RNG splits, so the values are the same (tests/test_model.py), and the
    jitted init of a run compiles in a fraction of the time (this CPU, jax 0.10.2: 124M 9.6 -> 3.5 s,
    the char baby GPT 5.9 -> 4.0 s). Always jitted: op by op it took 4.7 s at the test suite's tiny size (2.1 s
    compiled, then cached), and its values differed from a training run's (jitted) initial params in the last
    bits; now `init_params(cfg, key(seed))` is bitwise the params a run with that seed starts from."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return nn.meta.unbox(GPT(cfg.replace(scan_unroll=1)).init(key, tokens)["params"])


# Shapes and axis names depend on the config alone, and each call traces the whole model (0.2 s at the test suite's
# tiny sizes, more for deep ones): a run asked for them about ten times before it started. Computed once per config;
# callers get a fresh tree (the leaves, ShapeDtypeStruct and PartitionSpec, are immutable).
@functools.lru_cache(maxsize=64)
def _shape_trees(cfg: GPTConfig):
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    return params, nn.get_partition_spec(boxed)


def abstract_params(cfg: GPTConfig) -> dict[str, Any]:
    """Parameter shapes without allocating them: a tree of jax.ShapeDtypeStruct."""
    return jax.tree.map(lambda leaf: leaf, _shape_trees(cfg)[0])


def logical_axes(cfg: GPTConfig):
    """The logical axis names of every parameter, as a tree of PartitionSpec (e.g. P('layers', 'embed', 'mlp'))."""
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    return jax.tree.map(lambda leaf: leaf, _shape_trees(cfg)[1], is_leaf=is_spec)


def param_count(cfg: GPTConfig) -> int:
    """Parameters of a config, from shapes alone (the tied head is counted once, as in GPT-2)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))


def split_layers(params) -> list:
    """The stacked layer parameters params["h"] (leading axis n_layer) as one tree per layer, for `GPT.decode`.
    Slice once, outside a decode loop."""
    n_layer = jax.tree.leaves(params["h"])[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], params["h"]) for i in range(n_layer)]


def init_layer_caches(cfg: GPTConfig, batch: int, length: int) -> list[dict[str, jax.Array]]:
    """Empty key/value caches for `GPT.decode`: one {"k", "v"} per layer, each (B, S, N, H) in the compute dtype."""
    shape = (batch, length, cfg.n_head, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)]


def token_nll(logits, targets, n_valid: int | None = None, keep_exp: bool | None = None):
    """Per-token negative log-likelihood in float32: logits (..., V) of any float dtype, targets (...) int -> (...).

    Only the first n_valid columns are the vocabulary (default: all V); padded embedding rows beyond them are left
    out of the softmax here, so callers can pass the LM head's raw output. The math is float32 whatever the logits'
    dtype, and the gradient is written by hand, softmax - onehot(target), one elementwise pass over the logits in
    their own dtype. Autodiff of logsumexp and take_along_axis instead materialises float32 copies of the
    (B, T, V) logits, a scattered one-hot and their sum: on a GPU the biggest non-matmul cost of a 124M step
    (bench/results/gpu_h200/call3_profile_124M_B16.md).

    keep_exp (default: on the CPU only): the backward pass reuses the forward pass's float32 exp(logits - max),
    saved instead of the logits (the same bytes for float32 logits), rather than computing exp again. XLA:CPU's exp
    costs ~3 ns an element, so the second one was half the loss's time: (1024, 50304) float32, forward and
    backward, 424 -> 201 ms (bench/loss.py). On an accelerator exp is nearly free: on an H200, (16384, 50304)
    bf16, 2.6 ms recomputing against 2.5 keeping, for a float32 (B, T, V) array stored in place of the bf16 logits
    (3.3 instead of 1.6 GB).
    """
    if keep_exp is None:
        keep_exp = jax.default_backend() == "cpu"
    n_valid = logits.shape[-1] if n_valid is None else n_valid
    return _token_nll(logits, targets, n_valid, keep_exp, logits.dtype)


def _masked_f32(logits, n_valid: int):
    """logits as float32 with the padded columns (index >= n_valid) at -inf; fused into its consumers by XLA."""
    x = logits.astype(jnp.float32)
    if n_valid < logits.shape[-1]:
        x = jnp.where(jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) < n_valid, x, -jnp.inf)
    return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _token_nll(logits, targets, n_valid: int, keep_exp: bool, dtype):
    return _token_nll_fwd(logits, targets, n_valid, keep_exp, dtype)[0]


def _token_nll_fwd(logits, targets, n_valid: int, keep_exp: bool, dtype):
    x = _masked_f32(logits, n_valid)
    peak = jax.lax.stop_gradient(x.max(axis=-1, keepdims=True))  # (..., 1): exp never overflows
    exp = jnp.exp(x - peak)  # (..., V) float32, 0 in padded columns
    total = exp.sum(axis=-1)  # (...)
    lse = peak[..., 0] + jnp.log(total)  # (...)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(jnp.float32)
    if keep_exp:
        return lse - target_logit, (exp, 1.0 / total, targets)
    return lse - target_logit, (logits, lse, targets)


def _token_nll_bwd(n_valid: int, keep_exp: bool, dtype, residuals, g):
    saved, norm, targets = residuals  # saved (..., V): float32 exp(logits - max), norm 1 / its sum; or logits, lse
    if keep_exp:
        probs = saved * norm[..., None]
    else:
        probs = jnp.exp(_masked_f32(saved, n_valid) - norm[..., None])
    column = jax.lax.broadcasted_iota(jnp.int32, probs.shape, probs.ndim - 1)
    grad = (probs - (column == targets[..., None])) * g[..., None]  # (..., V) float32
    return grad.astype(dtype), None  # the logits' dtype


_token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


def mean_loss(logits, targets, n_valid: int | None = None):
    """Mean next-token cross-entropy. logits (..., V), targets (...) int -> ()."""
    return token_nll(logits, targets, n_valid).mean()


def flops_per_token(cfg: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token, forward + backward = 3x forward (PaLM appendix B / nanoGPT estimate_mfu):
    6 * N_params_non_embedding + 12 * L * T * C (attention scores and values)."""
    n = param_count(cfg) - cfg.n_positions * cfg.n_embd  # position embeddings are lookups, not matmuls
    return 6 * n + 12 * cfg.n_layer * seq_len * cfg.n_embd
