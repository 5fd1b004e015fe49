"""Causal self-attention alone, one layer, side by side in one process: jax.nn.dot_product_attention's XLA
implementation (`model.attention=xla`), `model.blocked_causal_attention` at several query block sizes
(`model.attention=blocked`, what `auto` picks on a CPU) and torch's scaled_dot_product_attention (the PyTorch
reference's attention, flash attention on a CPU). Same inputs; forward and backward (autodiff) for the training
shapes, forward only for scoring; alternating blocks of calls (bench_train.alternate_blocks), medians, ratios
against torch.

    python bench/attention.py [--rounds 5] [--out bench/results/attention.json]

Shapes (B, T, N, H), as in bench/bench_train.py: char (12, 64, 4, 32) and 124m (4, 256, 12, 64) forward and
backward, score (1, 1024, 12, 64) forward.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpt2jax.training.metrics import cpu_description  # noqa: E402
from bench_train import alternate_blocks, command_line  # noqa: E402  (bench/ is on sys.path when run as a script)
from gpt2jax.model import ATTENTION_BLOCK, blocked_causal_attention  # noqa: E402

SHAPES = {"char": ((12, 64, 4, 32), True), "124m": ((4, 256, 12, 64), True), "score": ((1, 1024, 12, 64), False)}
BLOCKS = (32, 64, 128, 256)


def jax_sides(train: bool, T: int) -> dict:
    impls = {"xla": functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla")}
    for block in BLOCKS:
        if block <= T:
            impls[f"blocked_{block}"] = functools.partial(blocked_causal_attention, block=block)
    if not train:
        return {name: jax.jit(f) for name, f in impls.items()}

    def forward_backward(f, q, k, v, dy):
        out, pull = jax.vjp(f, q, k, v)
        return out, pull(dy)
    return {name: jax.jit(functools.partial(forward_backward, f)) for name, f in impls.items()}


def torch_side(train: bool, arrays):
    import torch

    q, k, v, dy = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in arrays)  # (B, N, T, H)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if not train:
        return lambda: torch.no_grad()(sdpa)(q, k, v, is_causal=True)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    return lambda: torch.autograd.grad(sdpa(q, k, v, is_causal=True), (q, k, v), dy)


def measure(shape, train: bool, rounds: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]  # q, k, v, output cotangent
    args = [jnp.asarray(a) for a in (arrays if train else arrays[:3])]
    fns = jax_sides(train, shape[1])
    reference = jax.tree.leaves(fns["xla"](*args))
    for name, f in fns.items():  # every side computes the same thing before any is timed
        err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(f(*args)), reference))
        assert err < 1e-4, f"{name} differs from jax.nn.dot_product_attention by {err}"
    sides = {name: (lambda f=f: jax.block_until_ready(f(*args))) for name, f in fns.items()}
    sides[f"torch_sdpa_{torch.get_num_threads()}t"] = torch_side(train, arrays)
    for run in sides.values():
        run()
    times = alternate_blocks(sides, rounds)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of alternating blocks, 3 timed calls per side each; median (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all)")
    p.add_argument("--out", default="", help="also write the results as JSON here (and a .md beside it)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    results, lines = {}, ["| shape (B, T, N, H) | pass | side | ms per layer | torch / side |", "|---|---|---|---|---|"]
    for label, (shape, train) in SHAPES.items():
        ms = measure(shape, train, args.rounds)
        ref = next(v for k, v in ms.items() if k.startswith("torch"))
        results[label] = dict(shape=shape, forward_and_backward=train, ms=ms)
        for name, v in ms.items():
            auto = name == f"blocked_{min(ATTENTION_BLOCK, shape[1])}"  # contexts up to the block: one block
            default = "  (model.attention=auto on a CPU)" if auto else ""
            line = f"| {label} {shape} | {'fwd+bwd' if train else 'fwd'} | {name}{default} | {v:.2f} | {ref / v:.2f}x |"
            lines.append(line)
            print(line, flush=True)
    command = command_line(argv or sys.argv[1:], "bench/attention.py")
    meta = dict(jax=jax.__version__, torch=torch.__version__, cpu=cpu_description(), cpu_count=os.cpu_count(),
                rounds=args.rounds, statistic="median", load=os.getloadavg(), command=command)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(meta=meta, results=results), indent=1) + "\n")
        out.with_suffix(".md").write_text("# Causal attention alone, one layer\n\n`" + meta["command"] + "`\n\n"
                                          + json.dumps(meta) + "\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
