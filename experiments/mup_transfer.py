"""muP learning-rate transfer on this CPU (Yang et al. 2022, "Tensor Programs V", Fig. 1): the same AdamW
learning-rate grid at five widths, under SP and under muP (model.parametrization), two seeds each. Under muP the
best lr should stay put as the width grows (within one grid step); under SP it moves (down, as width grows).

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.sweep experiments/mup_transfer.py
    python -m gpt2jax.studies.lr_transfer runs/mup_transfer        # loss against lr per width: lr_transfer.png/.md

Character-level Tiny Shakespeare, 2 layers, 4 heads (head_dim grows with width, so muP's 1/head_dim attention
scale is exercised), widths 32 to 512 (a factor 16) with muP's base width 32 (muP equals SP there but for the
attention scale), T=64, B=16, 300 steps, cosine to lr/10 after 30 warmup steps,
final validation loss. Learning rates a factor 2 apart from 5e-4 to 1.28e-1: SP's best falls from 8e-3 at widths
32-128 to 1e-3 and below at 512, muP's stays at 1.6e-2. The whole grid is 180 runs (about 2.5 h on this 2-core
CPU, most of it the width-512 runs far from either optimum); docs/studies.md ("muP transfer") says which subset
was run for its table and plot, and the sweep trains the rest when run whole.
"""
from gpt2jax.sweep import Experiment

WIDTHS = [32, 64, 128, 256, 512]
LRS = [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2, 1.28e-1]
STEPS = 300


def get_experiment():
    return Experiment(
        name="mup_transfer",
        base="configs/shakespeare_char.py",
        overrides={"model.n_layer": 2, "model.n_head": 4, "model.mup_base_width": WIDTHS[0],
                   "train.max_steps": STEPS, "train.batch_size": 16, "train.eval_every": STEPS,
                   "train.eval_batches": 10, "train.final_eval_stride": 64, "train.sample_tokens": 0,
                   "train.log_every": 50, "train.tensorboard": False,
                   "optim.warmup_steps": 30, "optim.decay_steps": 0},
        grid={"model.parametrization": ["sp", "mup"],
              "model.n_embd": WIDTHS,
              "lr": [{"optim.lr": lr, "optim.min_lr": lr / 10, "name": f"{lr:g}"} for lr in LRS]},
        tuned=("optim.lr",),
        metric="final.val_loss",
        seeds=2,
    )
