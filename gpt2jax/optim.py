"""The optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, weight decay on matrices only.

Everything follows nanoGPT's train.py (`get_lr`, `configure_optimizers`), so its well-known runs can be
reproduced: the learning rate at step `it` is
    lr * (it + 1) / (warmup + 1)                                  for it < warmup
    min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * ratio))           for warmup <= it <= decay_steps,
                                                                   ratio = (it - warmup) / (decay_steps - warmup)
    min_lr                                                         after decay_steps.
Weight decay applies to every parameter with >= 2 dimensions besides the stacked-layers axis (all matmul
weights and both embeddings, as nanoGPT); biases and LayerNorm parameters are not decayed.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from gpt2jax.config import ConfigError, GPTConfig


def lr_schedule(lr: float, min_lr: float, warmup_steps: int, decay_steps: int):
    """nanoGPT's get_lr as an optax schedule (a function of the update count, 0-based)."""
    if decay_steps <= warmup_steps:
        raise ConfigError(
            f"optim.decay_steps={decay_steps} must exceed optim.warmup_steps={warmup_steps} "
            "(0 means: decay until train.max_steps)"
        )

    def schedule(it):
        it = jnp.asarray(it, jnp.float32)
        warm = lr * (it + 1) / (warmup_steps + 1)
        ratio = jnp.clip((it - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
        cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)
        return jnp.where(it < warmup_steps, warm, cosine)

    return schedule


def decay_mask(cfg: GPTConfig):
    """True for matrices (weights, embeddings), False for vectors (biases, LayerNorm), per parameter.

    Decided from the logical axes, not ndim: the scanned layers stack every per-layer vector into (L, C).
    """
    from gpt2jax.model import logical_axes

    specs = logical_axes(cfg)
    return jax.tree.map(lambda spec: sum(a != "layers" for a in spec) >= 2, specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """The config's `optim` section, resolved: decay_steps is a real step count."""
    lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float

    @classmethod
    def resolve(cls, optim_cfg, max_steps: int) -> "OptimSpec":
        """decay_steps = 0 means: decay until train.max_steps (decided here only)."""
        fields = {f.name: optim_cfg[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**fields, "decay_steps": fields["decay_steps"] or max_steps})


def make_optimizer(optim, cfg: GPTConfig, max_steps: int | None = None) -> tuple[optax.GradientTransformation,
                                                                                   callable]:
    """(optax transform, lr schedule) from an OptimSpec, or from a config's `optim` section and train.max_steps."""
    o = optim if isinstance(optim, OptimSpec) else OptimSpec.resolve(optim, max_steps)
    schedule = lr_schedule(o.lr, o.min_lr, o.warmup_steps, o.decay_steps)
    parts = []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=decay_mask(cfg)))
    return optax.chain(*parts), schedule
