"""An IsoFLOP study with a tuned learning rate on this CPU: experiments/chinchilla.py's design one budget lower
(3e10, 1e11, 3e11 FLOPs, four sizes each) over eight learning rates (1e-3 to 1.28e-1, grown from three until every
best was inside the grid). The fits take, per (model size, budget), the
lr with the lowest loss (the envelope, `tuned=("optim.lr",)`); the table names the winner and flags a winner at
the edge of the lr grid ("extend the lr grid"). Hoffmann et al. 2022's and Besiroglu et al. 2024's laws are drawn
beside the fits for their shape (their losses are nats per token of other data and tokenizers).

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.sweep experiments/chinchilla_lr.py --parallel 2

See docs/studies.md for its table and plots.
"""
from gpt2jax.sweep import Experiment
from gpt2jax.training.compute import isoflop_grid

SEQ_LEN, BATCH = 64, 16
BUDGETS = [3e10, 1e11, 3e11]  # training FLOPs per run (6N+12LTC)
SIZES = [(1, 8), (1, 12), (1, 16), (1, 24), (1, 32), (2, 32)]  # (n_layer, n_embd), 16-wide heads
LRS = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2, 1.28e-1]  # grown three times: bests were at the top of the grid


def get_experiment():
    per_budget = [SIZES[i:i + 4] for i in range(len(BUDGETS))]  # the larger the budget, the larger the models
    return Experiment(
        name="chinchilla_lr_cpu",
        base="configs/shakespeare_char.py",
        overrides={"data.seq_len": SEQ_LEN, "model.n_positions": SEQ_LEN, "train.batch_size": BATCH,
                   "optim.min_lr": 2e-4, "optim.warmup_steps": 10, "optim.decay_steps": 0,
                   "train.eval_batches": 10, "train.final_eval_stride": SEQ_LEN, "train.sample_tokens": 0,
                   "train.log_every": 50, "train.tensorboard": False},
        grid={"point": isoflop_grid(BUDGETS, per_budget, SEQ_LEN, SEQ_LEN * BATCH, vocab_size=65, head_dim=16),
              "optim.lr": LRS},
        tuned=("optim.lr",),
        metric="final.val_loss",
        fit=("isoflop", "L(C)", "parametric", "L(N)"),
        compare=("hoffmann2022", "besiroglu2024"),
    )
