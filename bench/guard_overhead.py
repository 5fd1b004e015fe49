"""Cost of the numerics guard in the compiled train step: the step of a revision before the guard (default
cf8ac75, this branch's base) against the current one, same model, same batch, alternating, medians and ratio.

    python bench/guard_overhead.py [--shape tiny|small|gpt2] [--base cf8ac75]
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gpt2jax.training import loop as current
from gpt2jax.config import GPTConfig
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import param_shardings
from gpt2jax.training.state import initial_state
from gpt2jax.training.schema import base_config, mesh_and_rules

SHAPES = {"tiny": (dict(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=65), 8, 32),
          "small": (dict(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=65), 12, 64),
          "gpt2": (dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50304), 4, 256)}


def old_module(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:gpt2jax/train.py"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "train_before_guard.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("train_before_guard", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="small")
    ap.add_argument("--base", default="cf8ac75")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    shape, batch, seq = SHAPES[args.shape]
    cfg = GPTConfig(**shape)
    tx, schedule = make_optimizer(base_config().optim, cfg, 10_000)
    mesh, rules = mesh_and_rules(base_config(), jax.devices()[:1])
    p_sh = param_shardings(cfg, mesh, rules)
    tokens = jax.random.randint(jax.random.key(1), (1, batch, seq + 1), 0, cfg.vocab_size)
    fns = {}
    for name, module in (("before", old_module(args.base)), ("guarded", current)):
        step = jax.jit(module.make_train_step(cfg, tx, schedule, p_sh), donate_argnums=0)
        state = initial_state(cfg, tx, 0)  # the same state for both revisions
        state, m = step(state, tokens)
        jax.block_until_ready(m)
        fns[name] = [step, state]
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for name, entry in fns.items():
            step, state = entry
            t = time.perf_counter()
            for _ in range(args.steps):
                state, m = step(state, tokens)
            jax.block_until_ready((state, m))
            times[name].append((time.perf_counter() - t) / args.steps)
            entry[1] = state
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"shape {args.shape} (B={batch}, T={seq}) on {jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}: "
          f"before {med['before'] * 1e3:.2f} ms/step, guarded {med['guarded'] * 1e3:.2f} ms/step, "
          f"ratio {med['guarded'] / med['before']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
