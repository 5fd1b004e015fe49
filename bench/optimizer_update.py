"""The AdamW update alone, three ways, side by side in one process: optax.adamw without a guard, optax.adamw with
the non-finite guard as a `where` over its outputs (the train step before `optim.adamw_or_skip`), and
`optim.adamw_or_skip` (the train step now). Clipping included, same gradients, each jitted with the state donated;
alternating rounds, medians, ratios against the unguarded update.

    python bench/optimizer_update.py [--shape gpt2|small] [--rounds 7] [--out bench/results/optimizer_update.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

from gpt2jax.runtime.hostmem import keep_freed_memory

keep_freed_memory()  # as gpt2jax.train does for GPT-2 sizes on a CPU, before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from gpt2jax.config import GPT2_PADDED_VOCAB_SIZE, GPTConfig  # noqa: E402
from gpt2jax.model import init_params  # noqa: E402
from gpt2jax.training.optim import decay_mask, lr_schedule, make_optimizer  # noqa: E402
from gpt2jax.training.schema import base_config  # noqa: E402

SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=GPT2_PADDED_VOCAB_SIZE),
          "small": dict(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=65)}


def variants(cfg):
    o = base_config().optim
    schedule = lr_schedule(o.lr, o.min_lr, o.warmup_steps, 10_000)
    plain = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                                    mask=decay_mask(cfg)))
    ours, _ = make_optimizer(o, cfg, 10_000)

    def unguarded(state, grads):
        params, opt = state
        updates, opt = plain.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    def where_guard(state, grads):
        params, opt = state
        finite = jnp.isfinite(optax.global_norm(grads))
        updates, new_opt = plain.update(grads, opt, params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return keep(optax.apply_updates(params, updates), params), keep(new_opt, opt)

    def adamw_or_skip(state, grads):
        params, opt = state
        finite = jnp.isfinite(optax.global_norm(grads))
        updates, opt = ours.update(grads, opt, params, apply=finite)
        return optax.apply_updates(params, updates), opt

    return {"optax.adamw, no guard": (unguarded, plain), "optax.adamw + where guard": (where_guard, plain),
            "optim.adamw_or_skip": (adamw_or_skip, ours)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, default="gpt2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="", help="also write the medians as JSON here")
    args = ap.parse_args()
    cfg = GPTConfig(**SHAPES[args.shape])
    params = init_params(cfg, jax.random.key(0))
    grads = jax.tree.map(lambda p: p * 1e-3, params)
    runs = {}
    for name, (fn, tx) in variants(cfg).items():
        step = jax.jit(fn, donate_argnums=0)
        state = (jax.tree.map(jnp.array, params), tx.init(params))
        state = jax.block_until_ready(step(state, grads))  # compile and first touch
        runs[name] = [step, state, []]
    for _ in range(args.rounds):
        for run in runs.values():
            t = time.perf_counter()
            run[1] = jax.block_until_ready(run[0](run[1], grads))
            run[2].append(time.perf_counter() - t)
    base = statistics.median(runs["optax.adamw, no guard"][2])
    n_params, load = sum(p.size for p in jax.tree.leaves(params)), os.getloadavg()[0]
    print(f"AdamW update with clipping, {args.shape} ({n_params:,} params) on {jax.devices()[0].platform}, "
          f"load {load:.1f}, median of {args.rounds}:")
    medians = {}
    for name, (_, _, times) in runs.items():
        medians[name] = med = statistics.median(times)
        print(f"  {name:28s} {med * 1e3:8.1f} ms  ({med / base:.2f}x the unguarded update's time)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(shape=args.shape, params=n_params, platform=jax.devices()[0].platform, jax=jax.__version__,
                           load=load, rounds=args.rounds, median_ms={k: 1e3 * v for k, v in medians.items()},
                           ratio_to_unguarded={k: v / base for k, v in medians.items()}), f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
