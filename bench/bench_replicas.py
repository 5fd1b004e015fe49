"""Speed of S seeds as one vmapped program (gpt2jax.training.replicas) against S separate runs of the same step.

    python bench/bench_replicas.py [--seeds 4] [--steps 30] [--rounds 3]

Both sides use gpt2jax.train.make_train_step on one device with random tokens; "separate" runs S compiled
single-seed steps one after another (what S sequential runs do per step), "vmapped" runs the vmapped step once.
The two alternate within each round; the median time per step of all S seeds is compared (compile excluded,
reported apart). Prints the host load (os.getloadavg) since the machine may be shared.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.config import GPTConfig
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import activation_context, make_mesh, param_shardings
from gpt2jax.training.state import initial_state
from gpt2jax.training.loop import make_train_step
from gpt2jax.training.schema import base_config

SHAPES = {  # name: (n_layer, n_embd, n_head, batch, seq_len)
    "tiny 2x64 B8 T32": (2, 64, 4, 8, 32),
    "char 4x128 B12 T64 (nanoGPT baby GPT)": (4, 128, 4, 12, 64),
}


def bench(shape, S: int, steps: int, rounds: int) -> dict:
    n_layer, n_embd, n_head, B, T = shape
    cfg = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=T, vocab_size=65)
    o = base_config().optim
    o.warmup_steps = 1
    tx, schedule = make_optimizer(o, cfg, 1000)
    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    rules = tuple(tuple(r) for r in base_config().sharding_rules)
    p_sh = param_shardings(cfg, mesh, rules)
    step = make_train_step(cfg, tx, schedule, p_sh)
    batches = np.random.default_rng(0).integers(0, 65, (steps, S, 1, B, T + 1)).astype(np.int32)
    init = functools.partial(initial_state, cfg, tx)
    with activation_context(mesh, rules):
        t = time.perf_counter()
        single = jax.jit(step, donate_argnums=0).lower(jax.eval_shape(init, 0), batches[0, 0]).compile()
        compile_single = time.perf_counter() - t
        t = time.perf_counter()
        seeds = jnp.arange(S)
        vmapped = jax.jit(jax.vmap(step), donate_argnums=0).lower(
            jax.eval_shape(jax.vmap(init), seeds), batches[0]).compile()
        compile_vmapped = time.perf_counter() - t

        def run_separate():
            for s in range(S):
                state = jax.jit(init, static_argnums=0)(s)
                for i in range(steps):
                    state, m = single(state, batches[i, s])
                jax.block_until_ready(m)

        def run_vmapped():
            state = jax.jit(jax.vmap(init))(seeds)
            for i in range(steps):
                state, m = vmapped(state, batches[i])
            jax.block_until_ready(m)

        run_separate(), run_vmapped()  # warm up
        times = {"separate": [], "vmapped": []}
        for _ in range(rounds):
            for name, fn in (("separate", run_separate), ("vmapped", run_vmapped)):
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) / steps)
    sep, vm = statistics.median(times["separate"]), statistics.median(times["vmapped"])
    return dict(seeds=S, steps=steps, separate_ms_per_step_all_seeds=1e3 * sep, vmapped_ms_per_step=1e3 * vm,
                speedup=sep / vm, compile_single_s=compile_single, compile_vmapped_s=compile_vmapped)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"device {jax.devices()[0].device_kind}, load before {os.getloadavg()}")
    results = {}
    for name, shape in SHAPES.items():
        r = results[name] = bench(shape, args.seeds, args.steps, args.rounds)
        print(f"{name}: {args.seeds} separate runs {r['separate_ms_per_step_all_seeds']:.1f} ms per step of all seeds, "
              f"vmapped {r['vmapped_ms_per_step']:.1f} ms -> speed-up x{r['speedup']:.2f} "
              f"(compile {r['compile_single_s']:.1f}s single, {r['compile_vmapped_s']:.1f}s vmapped; "
              f"a sequential sweep compiles once per run)")
    print(f"load after {os.getloadavg()}")
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/replicas_cpu.json", "w") as f:
        json.dump(dict(load=os.getloadavg(), results=results), f, indent=1)


if __name__ == "__main__":
    main()
