"""GPT-2 124M from scratch on a prepared corpus, with nanoGPT's recipe (config/train_gpt2.py + train.py defaults):
0.5M tokens per step (524,288 = 512 sequences of 1024, llm.c's; nanoGPT's is 491,520), lr 6e-4 -> 6e-5 cosine over
600k steps, warmup 2000, AdamW betas (0.9, 0.95), weight decay 0.1, clip 1.0, bf16 compute.
The walk-through from corpus to zero-shot table is docs/recipes/gpt2-124m.md.

    python -m gpt2jax.data.prepare --hf_dataset openwebtext --out data/prepared/openwebtext   # online, once
    python -m gpt2jax.train --config configs/gpt2.py                  # 124M
    python -m gpt2jax.train --config configs/gpt2.py:gpt2-medium      # or gpt2-large, gpt2-xl (GPT-2 presets)
    python -m gpt2jax.train --config configs/gpt2.py --config.mesh.data=1 --config.mesh.fsdp=-1   # FSDP

The batch is sized per device: 16 rows of 1024 on each data-parallel device (data x fsdp), and the gradient
accumulation is derived from the device count so that a step stays 524,288 tokens (train.tokens_per_step): 32
micro-batches on 1 GPU, 4 on 8, 1 on 32. On 64 devices 16 rows are already 1M tokens: the run stops with the fix
(--config.train.batch_size_per_device=8). Fewer rows per device (less memory): --config.train.batch_size_per_device=8;
a fixed global batch instead: --config.train.batch_size_per_device=0 --config.train.tokens_per_step=0 with
train.batch_size (all devices together) and train.grad_accum (either alone is refused: it would be ignored).
"""
from gpt2jax.config import GPT2_PRESETS
from gpt2jax.training.schema import base_config


def get_config(preset: str = "gpt2"):
    if preset not in GPT2_PRESETS:
        raise ValueError(f"unknown GPT-2 preset {preset!r}; use one of {sorted(GPT2_PRESETS)}")
    c = base_config()
    c.name = preset
    c.data.update(dir="data/prepared/openwebtext", tokenizer="gpt2", seq_len=1024)
    c.model.update(**GPT2_PRESETS[preset], n_positions=1024, vocab_size=0, padded_vocab_size=50304, dropout=0.0,
                   dtype="bfloat16")
    if preset in ("gpt2-large", "gpt2-xl"):
        c.model.remat = "dots_no_batch"  # recompute activations to fit the larger models' memory
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=2000, decay_steps=600_000, b1=0.9, b2=0.95,
                   weight_decay=0.1, grad_clip=1.0)
    # rows per device: 16 for 124M; fewer for the larger presets (4 for large/xl, as the old global batch of 32
    # gave on 8 GPUs); the step stays 524,288 tokens through the gradient accumulation
    per_device = {"gpt2": 16, "gpt2-medium": 8}.get(preset, 4)
    c.train.update(max_steps=600_000, batch_size=0, batch_size_per_device=per_device, tokens_per_step=524_288,
                   log_every=10, eval_every=1000, eval_batches=200, keep_checkpoints=3, sample_tokens=64, sample_prompt="",
                   compilation_cache_dir="~/.cache/gpt2jax/xla")
    return c
