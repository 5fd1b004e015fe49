"""Several optimizer steps per compiled call, for models whose steps are too short to hide per-call overhead.

A small model's step (the char baby GPT: ~4 GFLOP) finishes in tens of milliseconds on a CPU, so the fixed cost
of each call (Python dispatch, argument handling, a fresh batch put on the device) is a large share of it.
`make_multi_step` runs `train.steps_per_call` = K steps in one call with `lax.scan` over the steps, each step
exactly the single-step function on its own batch: K batches go in as one (K, A, B, T+1) array and the metrics
come back stacked (K,), so every step is still logged.

Cadence stays exact: K divides eval_every, checkpoint_every and stop_at (`steps_per_call` picks or checks that),
so evaluations, checkpoints and samples land on the same steps as with K = 1. Calls start at multiples of K;
steps that do not fill a whole call (the tail before max_steps, or after a Ctrl-C between calls) run one at a
time. A resumed run therefore makes exactly the calls the uninterrupted run made, and resumes bitwise.
"""
from __future__ import annotations

import math

import jax

from gpt2jax.config import ConfigError

# Below this many training FLOPs per step, `steps_per_call = 0` (auto) scans several steps per call.
SMALL_STEP_FLOPS = 2e10
AUTO_MAX_STEPS_PER_CALL = 10


def make_multi_step(step_fn):
    """step_fn (state, batch (A, B, T+1)) -> (state, metrics) becomes
    (state, batches (K, A, B, T+1)) -> (state, metrics with a leading (K,) axis): K steps, K from the shape."""

    def multi_step(state, batches):
        return jax.lax.scan(step_fn, state, batches)

    return multi_step


def compile_on_first_call(jitted, context, *abstract_args):
    """A compiled function for these abstract arguments, traced inside context() and compiled when first called
    (never, if never called)."""
    compiled = []

    def call(*args):
        if not compiled:
            with context():
                compiled.append(jitted.lower(*abstract_args).compile())
        return compiled[0](*args)

    return call


def cadence(t) -> int:
    """The step counts every call must line up with: gcd of eval_every, checkpoint_every and stop_at. An unset 0
    adds no constraint (gcd(n, 0) = n), so checkpoint_every gives the same cadence before and after
    `gpt2jax.training.spec.resolve` sets it to eval_every."""
    return math.gcd(t.eval_every, t.checkpoint_every, t.stop_at)


def steps_per_call(t, flops_per_step: float) -> int:
    """train.steps_per_call resolved: > 0 is checked against the cadence, 0 (auto) scans up to 10 steps per call
    when a step costs under SMALL_STEP_FLOPS, else 1."""
    g = cadence(t)
    if t.steps_per_call > 0:
        if g % t.steps_per_call:
            raise ConfigError(
                f"train.steps_per_call={t.steps_per_call} must divide train.eval_every, train.checkpoint_every and "
                f"train.stop_at (their gcd is {g}), so evaluations and checkpoints land on the same steps; use a "
                f"divisor of {g}, e.g. --config.train.steps_per_call={_largest_divisor(g, t.steps_per_call)}"
            )
        return t.steps_per_call
    if t.steps_per_call < 0:
        raise ConfigError(f"train.steps_per_call must be >= 0 (0 = auto), got {t.steps_per_call}")
    if flops_per_step >= SMALL_STEP_FLOPS:
        return 1
    return _largest_divisor(g, AUTO_MAX_STEPS_PER_CALL)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def call_length(step: int, end: int, k: int) -> int:
    """How many steps the call starting at `step` runs: k when it starts on a multiple of k and fits before
    `end`, else 1."""
    return k if k > 1 and step % k == 0 and step + k <= end else 1
