"""The training loss alone, forward and backward, side by side in one process: `model.token_nll` recomputing
exp(logits - max) in its backward pass (what accelerators run) against keeping the forward pass's (what the CPU
runs, `keep_exp`), and PyTorch's F.cross_entropy on the same logits for reference. The 124M training shape's
logits, (B*T, padded vocabulary), with the padded columns left out of the softmax; a non-uniform upstream
gradient; alternating rounds, medians, ratios against the recomputing variant. Also checks the variants agree.

    python bench/loss.py [--rows 1024] [--dtype float32] [--rounds 9] [--out bench/results/loss.json]
    python bench/loss.py --rows 16384 --dtype bfloat16     # a GPU's 124M B16 x T1024 bf16 logits
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
    """F.cross_entropy (log_softmax + nll_loss) over the real columns, autograd backward, on the GPU when there is
    one; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, str(logits.dtype))
    x = torch.from_numpy(np.array(logits, np.float32)).to(device, dtype).requires_grad_()
    t = torch.from_numpy(np.array(targets)).long().to(device)
    w = torch.from_numpy(np.array(weights)).to(device)

    def step():  # timed: the gradient stays on the device, as jax's does
        x.grad = None
        loss = (torch.nn.functional.cross_entropy(x[:, :GPT2_VOCAB_SIZE], t, reduction="none") * w).sum()
        loss.backward()
        return float(loss.detach()), x.grad  # float() waits for the GPU's queue, the backward pass included
    return step


def as_float32_numpy(grad):
    """A variant's gradient on the host, for the agreement check only (never inside the timed calls)."""
    return grad.float().cpu().numpy() if hasattr(grad, "cpu") else np.asarray(grad, np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024, help="B*T tokens (default: the 124m bench part's B4 x T256)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the logits' dtype")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default="", help="also write the medians as JSON here")
    args = ap.parse_args()
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = (3 * jax.random.normal(k1, (args.rows, GPT2_PADDED_VOCAB_SIZE))).astype(args.dtype)
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
    base_grad = as_float32_numpy(base_grad)
    # relative to the largest gradient element (it scales as 1/rows); bf16: the gradient's rounding, and torch's
    # log-softmax runs in bf16 (ours in float32)
    atol = (1e-5 if args.dtype == "float32" else 1e-2) * np.abs(base_grad).max()
    for name, (loss, grad) in results.items():
        np.testing.assert_allclose(float(loss), float(base_loss), rtol=1e-5 if args.dtype == "float32" else 1e-2,
                                   err_msg=name)
        np.testing.assert_allclose(as_float32_numpy(grad), base_grad, atol=atol, err_msg=name)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base, load = medians["recompute exp (accelerators)"], os.getloadavg()[0]
    print(f"NLL forward + backward, ({args.rows}, {GPT2_PADDED_VOCAB_SIZE}) {args.dtype} on "
          f"{jax.devices()[0].platform}, load {load:.1f}, median of {args.rounds} (gradients agree to {atol:.1g}):")
    for name, med in medians.items():
        print(f"  {name:30s} {med * 1e3:8.1f} ms  ({med / base:.2f}x recompute's time)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=args.rows, vocab=GPT2_PADDED_VOCAB_SIZE, dtype=args.dtype,
                           platform=jax.devices()[0].platform, device=str(jax.devices()[0].device_kind),
                           jax=jax.__version__, load=load, rounds=args.rounds,
                           median_ms={k: 1e3 * v for k, v in medians.items()},
                           ratio_to_recompute={k: v / base for k, v in medians.items()}), f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
