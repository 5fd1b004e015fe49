"""The training loss alone, forward and backward, side by side in one process: `model.token_nll` recomputing
exp(logits - max) in its backward pass (what accelerators run) against keeping the forward pass's (what the CPU
runs, `keep_exp`), and PyTorch's F.cross_entropy on the same logits for reference. The 124M training shape's
logits, (B*T, padded vocabulary) float32, with the padded columns left out of the softmax; a non-uniform upstream
gradient; alternating rounds, medians, ratios against the recomputing variant. Also checks the variants agree.

    python bench/loss.py [--rows 1024] [--rounds 9] [--out bench/results/loss.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.config import GPT2_PADDED_VOCAB_SIZE, GPT2_VOCAB_SIZE
from gpt2jax.model import token_nll


def jax_variant(keep_exp: bool, weights):
    def loss(logits, targets):
        return (token_nll(logits, targets, GPT2_VOCAB_SIZE, keep_exp=keep_exp) * weights).sum()
    return jax.jit(jax.value_and_grad(loss))


def torch_variant(logits, targets, weights):
    """F.cross_entropy (log_softmax + nll_loss) over the real columns, autograd backward; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(np.array(logits)).requires_grad_()
    t, w = torch.from_numpy(np.array(targets)).long(), torch.from_numpy(np.array(weights))

    def step():
        x.grad = None
        loss = (torch.nn.functional.cross_entropy(x[:, :GPT2_VOCAB_SIZE], t, reduction="none") * w).sum()
        loss.backward()
        return float(loss.detach()), x.grad.numpy()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024, help="B*T tokens (default: the 124m bench part's B4 x T256)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default="", help="also write the medians as JSON here")
    args = ap.parse_args()
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = 3 * jax.random.normal(k1, (args.rows, GPT2_PADDED_VOCAB_SIZE))
    targets = jax.random.randint(k2, (args.rows,), 0, GPT2_VOCAB_SIZE)
    weights = jax.random.uniform(k3, (args.rows,)) / args.rows
    recompute, keep = jax_variant(False, weights), jax_variant(True, weights)
    runs = {"recompute exp (accelerators)": lambda: jax.block_until_ready(recompute(logits, targets)),
            "keep exp (CPU)": lambda: jax.block_until_ready(keep(logits, targets))}
    torch_step = torch_variant(logits, targets, weights)
    if torch_step is not None:
        runs["torch F.cross_entropy"] = torch_step
    results = {name: fn() for name, fn in runs.items()}  # compile, first touch; and the values to compare
    base_loss, base_grad = results["recompute exp (accelerators)"]
    for name, (loss, grad) in results.items():
        np.testing.assert_allclose(float(loss), float(base_loss), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(base_grad), atol=1e-8, err_msg=name)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base, load = medians["recompute exp (accelerators)"], os.getloadavg()[0]
    print(f"NLL forward + backward, ({args.rows}, {GPT2_PADDED_VOCAB_SIZE}) float32 on {jax.devices()[0].platform}, "
          f"load {load:.1f}, median of {args.rounds} (gradients agree to 1e-8):")
    for name, med in medians.items():
        print(f"  {name:30s} {med * 1e3:8.1f} ms  ({med / base:.2f}x recompute's time)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=args.rows, vocab=GPT2_PADDED_VOCAB_SIZE, platform=jax.devices()[0].platform,
                           jax=jax.__version__, load=load, rounds=args.rounds,
                           median_ms={k: 1e3 * v for k, v in medians.items()},
                           ratio_to_recompute={k: v / base for k, v in medians.items()}), f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
