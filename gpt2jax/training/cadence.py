"""When things happen in the training loop: its periodic actions, and several optimizer steps per compiled call.

Periodic actions (evaluate, checkpoint, and any new one) are declared once, as a list in
`gpt2jax.training.loop.periodic_actions`: a name, a handler, and a period that is the train section's
`<name>_every` field. Everything that must line up with them reads the same fields from here: `cadence` (the
step counts every multi-step call must end on), `Action.due` (whether a step runs an action, which also makes it
a boundary where the loop reads its metrics at once), so a new action needs one line in `periodic_actions` and its
`<name>_every` default in `base_config` (docs/training.md, "Adding a periodic action").

Several steps per call, for models whose steps are too short to hide per-call overhead: a small model's step (the
char baby GPT: ~4 GFLOP) finishes in tens of milliseconds on a CPU, so the fixed cost of each call (Python
dispatch, argument handling, a fresh batch put on the device) is a large share of it. `make_multi_step` runs
`train.steps_per_call` = K steps in one call with `lax.scan` over the steps, each step exactly the single-step
function on its own batch: K batches go in as one (K, A, B, T+1) array and the metrics come back stacked (K,), so
every step is still logged.

Cadence stays exact: K divides every action's period and stop_at (`steps_per_call` picks or checks that), so
evaluations, checkpoints and samples land on the same steps as with K = 1. Calls start at multiples of K; steps
that do not fill a whole call (the tail before max_steps, or after a Ctrl-C between calls) run one at a time. A
resumed run therefore makes exactly the calls the uninterrupted run made, and resumes bitwise.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

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


# Logging needs no alignment: a call returns every step's metrics stacked, and each is logged on its own step.
UNALIGNED = ("log_every",)


def periods(t) -> dict[str, int]:
    """{action name: period} of every `<name>_every` field of the train section (0: never)."""
    return {name[: -len("_every")]: int(t[name]) for name in t.keys() if name.endswith("_every")}


def cadence(t) -> int:
    """The step count every call must line up with: gcd of the actions' periods (logging aside) and stop_at. An
    unset 0 adds no constraint (gcd(n, 0) = n), so checkpoint_every gives the same cadence before and after
    `gpt2jax.training.spec.resolve` sets it to eval_every."""
    aligned = [every for name, every in periods(t).items() if f"{name}_every" not in UNALIGNED]
    return math.gcd(*aligned, t.stop_at)


@dataclasses.dataclass(frozen=True)
class Action:
    """A periodic action of the loop: `run(run, watchdog, done)` after the call that ends on a due step. `done`
    collects what earlier actions of the same step returned (the checkpoint keeps the eval's val_loss)."""
    name: str
    every: int  # 0: only at also_at
    run: Callable
    also_at: tuple[int, ...] = ()  # e.g. the run's last step
    on_stop: bool = False  # also when the run stops early (a signal): the checkpoint

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self.also_at


def steps_per_call(t, flops_per_step: float) -> int:
    """train.steps_per_call resolved: > 0 is checked against the cadence, 0 (auto) scans up to 10 steps per call
    when a step costs under SMALL_STEP_FLOPS, else 1."""
    g = cadence(t)
    if t.steps_per_call > 0:
        if g % t.steps_per_call:
            raise ConfigError(
                f"train.steps_per_call={t.steps_per_call} must divide train.stop_at and every action's period ("
                + ", ".join(f"train.{n}_every" for n in periods(t) if f"{n}_every" not in UNALIGNED)
                + f"; their gcd is {g}), so evaluations and checkpoints land on the same steps; use a "
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
