"""Warmup-stable-decay with cooldown branches against separate cosine runs (Hägele et al. 2024; MiniCPM).

One stable run (a 2 x 64 character model on the bundled Tiny Shakespeare, 12 x 64 = 768 tokens per step, lr 2e-3
after a 100-step warmup) is trained once to step 900, with checkpoints at 500, 700 and 900; three cooldowns fork
from them and decay to min_lr over the last 20% of their budgets (1-sqrt shape) at 600, 850 and 1100 steps
(460.8k, 652.8k and 844.8k tokens). The same experiment also trains a separate cosine run to each budget, so the
table compares each cooldown's final val loss with its cosine twin and prints the compute of both ways.

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.sweep experiments/wsd.py

Branch points: a wsd run of S steps decays from S - decay_fraction (S - warmup_steps) = 0.8 S + 20 here, so the
budgets were chosen to put them on multiples of 100 (the stable run checkpoints at their gcd).
"""
from gpt2jax.sweep import Experiment

TOKENS_PER_STEP = 12 * 64


def get_experiment():
    return Experiment(
        name="wsd",
        base="configs/shakespeare_char.py",
        overrides={
            "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 4,
            "optim.lr": 2e-3, "optim.min_lr": 2e-4, "optim.warmup_steps": 100, "optim.decay_steps": 0,
            "optim.decay_fraction": 0.2, "optim.decay_shape": "1-sqrt",
            "train.max_steps": 1100, "train.eval_every": 100, "train.eval_batches": 20, "train.sample_tokens": 0,
        },
        grid={"model.n_layer": [2]},
        metric="final.val_loss",
        cooldowns=tuple(steps * TOKENS_PER_STEP for steps in (600, 850, 1100)),
        cooldown_twins="cosine",
    )
