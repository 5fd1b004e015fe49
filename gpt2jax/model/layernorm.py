"""GPT-2's LayerNorm with its backward pass written by hand (`model.layer_norm=manual`, what `auto` picks on the CPU).

The same parameters as flax's `nn.LayerNorm` (`scale`, `bias`, float32) and the same forward math: statistics and
normalisation in float32, variance as E[x^2] - E[x]^2 clamped at 0 (flax's `use_fast_variance`), the output in the
compute dtype. The backward pass, from the saved normalised input x_hat and 1/sigma, per row of C features:

    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma,   g = dy * scale
    dscale = sum over rows of dy * x_hat,   dbias = sum over rows of dy

Autodiff of flax's LayerNorm compiles on XLA:CPU to 13 ops for one LayerNorm's forward and backward, among them
two (rows, C) broadcasts of the scale and of 1/sigma; this is 9. On this 2-core CPU the char baby GPT's training
step is 4% faster with it (36.1 against 37.6 ms, faster in 7 of 7 alternating pairs: `python bench/bench_train.py
--only char,124m --no_ref --ours_variants layer_norm=autodiff`, bench/results/HISTORY.md), the 124M B4xT256 step 0-3%
(within noise). On a GPU XLA fuses either form into a few kernels; `auto` keeps flax's there until a GPU run of
bench/bench_train.py (`--ours_variants layer_norm=manual`) says otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float):
    """(..., C) float32, (C,), (C,) -> (..., C) float32: (x - mean) / sqrt(var + epsilon) * scale + bias."""
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon: float):
    mean = jnp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)  # (..., 1)
    inv_sigma = jax.lax.rsqrt(var + epsilon)  # (..., 1)
    x_hat = (x - mean) * inv_sigma  # (..., C)
    return x_hat * scale + bias, (x_hat, inv_sigma, scale)


def _backward(epsilon: float, residuals, dy):
    x_hat, inv_sigma, scale = residuals
    g = dy * scale  # (..., C)
    dx = inv_sigma * (g - jnp.mean(g, axis=-1, keepdims=True) - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    rows = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * x_hat, axis=rows), jnp.sum(dy, axis=rows)


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters and forward pass over the last axis, differentiated by `layer_norm`'s backward."""

    epsilon: float
    dtype: Any  # the output's; the math is float32
    scale_init: Callable
    bias_init: Callable

    @nn.compact
    def __call__(self, x):  # (..., C) -> (..., C)
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", self.bias_init, (features,), jnp.float32)
        return layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon).astype(self.dtype)
