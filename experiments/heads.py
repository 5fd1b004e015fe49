"""Ablation: attention heads at fixed width (4 layers x 128 channels, character-level Tiny Shakespeare).

    python -m gpt2jax.sweep experiments/heads.py
"""
from gpt2jax.sweep import Experiment


def get_experiment():
    return Experiment(
        name="heads",
        base="configs/shakespeare_char.py",
        overrides={"train.max_steps": 500, "train.eval_every": 250, "train.eval_batches": 20},
        grid={"model.n_head": [1, 2, 4, 8]},
        metric="final.val_loss",
    )
