"""Ablation: context length. The training window and the position table change together (a bundle), and the
batch shrinks so that every variant sees the same number of tokens per step (12 x 64 = 768).

    python -m gpt2jax.sweep experiments/context.py
"""
from gpt2jax.sweep import Experiment


def get_experiment():
    contexts = [(32, 24), (64, 12), (128, 6), (256, 3)]  # (context, batch): batch * context = 768 tokens
    return Experiment(
        name="context",
        base="configs/shakespeare_char.py",
        overrides={"train.max_steps": 500, "train.eval_every": 250, "train.eval_batches": 20},
        grid={"context": [{"data.seq_len": t, "model.n_positions": t, "train.batch_size": b} for t, b in contexts]},
        metric="final.val_loss",
    )
