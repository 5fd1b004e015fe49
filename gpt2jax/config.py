"""Model configuration: the shape of a GPT-2 and the checks that reject impossible ones.

`GPTConfig` is a frozen dataclass (hashable, so it can be a static argument of jitted functions).
Training configs (ml_collections, see `configs/`) carry a `model` sub-dict that becomes a GPTConfig through
`GPTConfig.from_dict`, which refuses unknown keys by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# GPT-2's BPE vocabulary: 50,000 merges + 256 byte tokens + <|endoftext|> (Radford et al. 2019, Sec. 2.2).
GPT2_VOCAB_SIZE = 50257
# nanoGPT's padding: the next multiple of 64 above 50257, friendlier to matmul tiling.
GPT2_PADDED_VOCAB_SIZE = 50304

# The four released sizes (Radford et al. 2019, Table 2; n_head from the released hparams.json).
GPT2_PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

ATTENTION_IMPLS = ("auto", "xla", "blocked", "cudnn", "reference")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
LAYER_NORM_IMPLS = ("auto", "autodiff", "manual")
DTYPES = ("float32", "bfloat16", "float16")
PARAMETRIZATIONS = ("sp", "mup")


class ConfigError(ValueError):
    """A configuration that cannot work. The message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024  # context length (nanoGPT's block_size, HF's n_positions)
    vocab_size: int = GPT2_VOCAB_SIZE  # real tokens; ids >= this are invalid
    padded_vocab_size: int = 0  # 0 = no padding; else the embedding has this many rows, extra logits are masked
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches (train only)
    layer_norm_epsilon: float = 1e-5
    dtype: str = "float32"  # compute dtype; parameters are always float32
    # auto: cuDNN flash attention on a GPU for bf16/fp16 when it accepts the shapes, blocked on the CPU, else
    # xla (see model.attention_impl) | xla (jax.nn.dot_product_attention's) | blocked (causal by query blocks,
    # model.blocked_causal_attention) | cudnn (GPU) | reference (hand-written softmax, for tests)
    attention: str = "auto"
    remat: str = "none"  # rematerialisation policy for each block, see REMAT_POLICIES
    # auto: manual on the CPU, autodiff elsewhere (model.layer_norm_impl) | autodiff (flax's nn.LayerNorm) |
    # manual (gpt2jax.model.layernorm: the same math with a hand-written backward pass)
    layer_norm: str = "auto"
    # lax.scan unroll factor over layers; n_layer = fully unrolled straight-line code, 1 = rolled; 0 = auto
    # (model.layer_unroll: fully unrolled up to 24 layers)
    scan_unroll: int = 0
    # sp: GPT-2's standard parametrization | mup: maximal update parametrization for Adam (Yang et al. 2022,
    # "Tensor Programs V"): hidden matrices' init std and Adam lr x sqrt(base/width) and base/width, attention
    # scores / head_dim, logits x base/width (gpt2jax.model.gpt, gpt2jax.training.optim.mup_lr_multipliers)
    parametrization: str = "sp"
    mup_base_width: int = 256  # mup: the n_embd at which muP equals SP's init and learning rates (ignored by sp)

    def __post_init__(self):
        self.validate()

    # ---- derived -----------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def embedding_rows(self) -> int:
        return self.padded_vocab_size or self.vocab_size

    @property
    def mup(self) -> bool:
        return self.parametrization == "mup"

    @property
    def mup_ratio(self) -> float:
        """muP's base_width / width (mup_base_width / n_embd): the hidden matrices' Adam lr multiplier and the
        logit multiplier; its square root scales their init std. 1.0 under SP."""
        return self.mup_base_width / self.n_embd if self.mup else 1.0

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {unknown}; valid keys are {sorted(known)}. "
                "Check the spelling of --config.model.<key>."
            )
        return cls(**dict(d))

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in GPT2_PRESETS:
            raise ConfigError(f"unknown GPT-2 size {name!r}; choose one of {sorted(GPT2_PRESETS)}")
        return cls(**{**GPT2_PRESETS[name], **overrides})

    def replace(self, **kw) -> "GPTConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.scan_unroll, int) or self.scan_unroll < 0:
            raise ConfigError(f"model.scan_unroll must be 0 (auto) or a positive integer, got {self.scan_unroll!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: each head gets "
                f"n_embd/n_head channels. Pick n_head among the divisors of {self.n_embd}, "
                f"e.g. {[h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0][-4:]}."
            )
        if self.padded_vocab_size and self.padded_vocab_size < self.vocab_size:
            raise ConfigError(
                f"model.padded_vocab_size={self.padded_vocab_size} is smaller than vocab_size={self.vocab_size}; "
                "use 0 (no padding) or a value >= vocab_size (GPT-2: 50304)."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is not one of {DTYPES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention={self.attention!r} is not one of {ATTENTION_IMPLS}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if self.layer_norm not in LAYER_NORM_IMPLS:
            raise ConfigError(f"model.layer_norm={self.layer_norm!r} is not one of {LAYER_NORM_IMPLS}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ConfigError(f"model.parametrization={self.parametrization!r} is not one of {PARAMETRIZATIONS}")
        if isinstance(self.mup_base_width, bool) or not isinstance(self.mup_base_width, int) \
                or self.mup_base_width <= 0:
            raise ConfigError(f"model.mup_base_width must be a positive integer (the n_embd of the base model whose "
                              f"hyperparameters muP transfers), got {self.mup_base_width!r}")

    def check_tokens(self, seq_len: int, max_token_id: int | None = None) -> None:
        """Reject inputs the model cannot embed. Call before tracing; both checks are host-side."""
        if seq_len > self.n_positions:
            raise ConfigError(
                f"sequence length {seq_len} exceeds the model's context window n_positions={self.n_positions}; "
                f"use a sequence length <= {self.n_positions} (e.g. --config.data.seq_len={self.n_positions}) "
                "or a model with more positions."
            )
        if max_token_id is not None and max_token_id >= self.vocab_size:
            raise ConfigError(
                f"token id {max_token_id} is out of range for vocab_size={self.vocab_size}; "
                "the data was tokenized with a different tokenizer than the model expects."
            )
