"""Compute-optimal scaling at GPU sizes: IsoFLOP profiles with GPT-2 BPE (data prepared with the gpt2 tokenizer,
e.g. OpenWebText into data/prepared/openwebtext), 4 budgets from 1e17 to 1e19 FLOPs, models from ~3M to ~700M
non-embedding parameters (64-wide heads, GPT-2's aspect ratios), T=1024, 0.5M tokens per step (nanoGPT's).

    python -m gpt2jax.sweep experiments/chinchilla_gpu.py --parallel <number of GPUs> --dry_run   # list it
    python -m gpt2jax.sweep experiments/chinchilla_gpu.py --parallel <number of GPUs>

The largest budget, 1e19 FLOPs per run, is ~7 GPU-hours per run on one H100 at 40% of its bf16 peak.
"""
from gpt2jax.training.compute import isoflop_grid
from gpt2jax.sweep import Experiment

SEQ_LEN, BATCH, ACCUM = 1024, 32, 16  # 32 x 16 x 1024 = 524,288 tokens per step
BUDGETS = [1e17, 3e17, 1e18, 3e18, 1e19]
SIZES = [(4, 256), (6, 384), (8, 512), (10, 640), (12, 768), (16, 1024), (24, 1024), (24, 1280), (36, 1280)]


def get_experiment():
    per_budget = [SIZES[i:i + 5] for i in range(len(BUDGETS))]
    return Experiment(
        name="chinchilla_gpu",
        base="configs/gpt2.py",
        overrides={"data.dir": "data/prepared/openwebtext", "data.seq_len": SEQ_LEN, "train.batch_size": BATCH,
                   "train.grad_accum": ACCUM, "train.batch_size_per_device": 0, "train.tokens_per_step": 0,
                   "optim.warmup_steps": 20, "optim.decay_steps": 0,
                   "train.eval_batches": 20, "train.final_eval": False, "train.sample_tokens": 0},
        grid={"point": isoflop_grid(BUDGETS, per_budget, SEQ_LEN, SEQ_LEN * BATCH * ACCUM, vocab_size=50257)},
        metric="val_loss",
        fit="scaling",
    )
