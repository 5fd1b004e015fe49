"""Ablation: depth at fixed width (character-level Tiny Shakespeare, 128 channels, 4 heads).

    python -m gpt2jax.sweep experiments/depth.py
"""
from gpt2jax.sweep import Experiment


def get_experiment():
    return Experiment(
        name="depth",
        base="configs/shakespeare_char.py",
        overrides={"train.max_steps": 500, "train.eval_every": 250, "train.eval_batches": 20},
        grid={"model.n_layer": [1, 2, 4, 6]},
        metric="final.val_loss",
    )
