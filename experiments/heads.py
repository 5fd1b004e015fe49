"""Ablation: attention heads at fixed width (4 layers x 128 channels, character-level Tiny Shakespeare), three
seeds per variant: results.md gives mean +- std, the 95% interval and the Welch p-value of each variant against
4 heads (nanoGPT's baby GPT), results.png the intervals as error bars.

    python -m gpt2jax.sweep experiments/heads.py --parallel 2
"""
from gpt2jax.sweep import Experiment


def get_experiment():
    return Experiment(
        name="heads",
        base="configs/shakespeare_char.py",
        overrides={"train.max_steps": 500, "train.eval_every": 250, "train.eval_batches": 20},
        grid={"model.n_head": [1, 2, 4, 8]},
        metric="final.val_loss",
        seeds=3,
        baseline="n_head=4",
    )
