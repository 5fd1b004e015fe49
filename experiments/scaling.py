"""Scaling study: val loss against model size at a fixed token budget, with a power-law fit
L(N) = (N_c / N)^alpha over non-embedding parameters N (Kaplan et al. 2020). Aspect ratio follows GPT-2's
64 channels per head.

    python -m gpt2jax.sweep experiments/scaling.py
"""
from gpt2jax.sweep import Experiment


def get_experiment():
    sizes = [(1, 64), (2, 128), (3, 192), (4, 256)]  # (n_layer, n_embd)
    return Experiment(
        name="scaling",
        base="configs/shakespeare_char.py",
        overrides={"train.max_steps": 500, "train.eval_every": 250, "train.eval_batches": 20},
        grid={"size": [{"model.n_layer": l, "model.n_embd": c, "model.n_head": c // 64}
                       for l, c in sizes]},
        metric="final.val_loss",
        fit="power_law",
    )
