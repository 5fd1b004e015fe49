"""Compute-optimal scaling on this CPU: IsoFLOP profiles (Hoffmann et al. 2022, approach 2) on Tiny Shakespeare
characters. Three training budgets C, five model sizes each; every run trains for C / (FLOPs per step) steps with
the cosine schedule ending at its own last step (Chinchilla's point about matching the schedule to the run).
The sweep fits the IsoFLOP parabolas, N_opt(C) and D_opt(C) with bootstrap intervals, the frontier L(C) and the
parametric L(N, D) (see gpt2jax/scaling.py); plots in runs/chinchilla_cpu/scaling_*.png.

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.sweep experiments/chinchilla.py --parallel 2

At GPU sizes: experiments/chinchilla_gpu.py.
"""
from gpt2jax.training.compute import isoflop_grid
from gpt2jax.sweep import Experiment

SEQ_LEN, BATCH = 64, 16
BUDGETS = [1e11, 3e11, 9e11]  # training FLOPs per run
# (n_layer, n_embd), 16-wide heads (one head below 16). Two earlier grids, on sizes (1, 32) ... (4, 128) and then
# (1, 16) ... (3, 64), both found the loss still falling towards the smallest model at every budget (no IsoFLOP
# minimum inside the grid): at 1e11-9e11 FLOPs the larger models get only a few hundred steps. Hence these.
SIZES = [(1, 8), (1, 12), (1, 16), (1, 24), (1, 32), (2, 32), (2, 48)]


def get_experiment():
    per_budget = [SIZES[i:i + 5] for i in range(len(BUDGETS))]  # the larger the budget, the larger the models
    return Experiment(
        name="chinchilla_cpu",
        base="configs/shakespeare_char.py",
        overrides={"data.seq_len": SEQ_LEN, "model.n_positions": SEQ_LEN, "train.batch_size": BATCH,
                   "optim.lr": 2e-3, "optim.min_lr": 2e-4, "optim.warmup_steps": 10, "optim.decay_steps": 0,
                   "train.eval_batches": 10, "train.final_eval_stride": SEQ_LEN, "train.sample_tokens": 0,
                   "train.log_every": 50, "train.tensorboard": False},
        grid={"point": isoflop_grid(BUDGETS, per_budget, SEQ_LEN, SEQ_LEN * BATCH, vocab_size=65, head_dim=16)},
        metric="final.val_loss",
        fit="scaling",
    )
