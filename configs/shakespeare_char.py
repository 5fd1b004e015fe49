"""nanoGPT's CPU "baby GPT" on Tiny Shakespeare characters (karpathy/nanoGPT README, "I only have a macbook"):

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

which reaches val loss ~1.88. The remaining settings come from config/train_shakespeare_char.py (lr 1e-3 cosine to
1e-4, warmup 100, beta2 0.99, eval every 250 steps) and train.py's defaults (weight decay 0.1, clip 1.0).

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.train --config configs/shakespeare_char.py
"""
from gpt2jax.training.schema import base_config


def get_config():
    c = base_config()
    c.name = "shakespeare_char"
    c.data.dir = "data/prepared/shakespeare_char"
    c.data.tokenizer = "char"
    c.data.seq_len = 64
    c.model.update(n_layer=4, n_head=4, n_embd=128, n_positions=64, dropout=0.0, vocab_size=0)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000, b1=0.9, b2=0.99, weight_decay=0.1,
                   grad_clip=1.0)
    c.train.update(max_steps=2000, batch_size=12, log_every=10, eval_every=250, eval_batches=200)
    c.train.sample_prompt = "\n"
    return c
