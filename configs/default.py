"""The embedded default (README command one, `scripts/demo.sh`): a small GPT-2 trained from scratch on the bundled
Tiny Shakespeare in a few minutes on a laptop CPU, then the whole val split's perplexity and a sample.

    python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out data/prepared/shakespeare_char --tokenizer char
    python -m gpt2jax.train --config configs/default.py

It is GPT-2's architecture at nanoGPT's "baby GPT" size (4 layers, 4 heads, 128 wide) on characters, trained for
half of `configs/shakespeare_char.py`'s 2000 steps. Characters, not BPE, because with GPT-2's 50,257-token vocabulary
the output layer alone is ~6.4M of a small model's parameters and dominates its compute (about 10x slower per
token here); the BPE variant is `--config configs/default.py:bpe` (data: `--out data/prepared/shakespeare`, no
`--tokenizer`), which needs ~20-30 minutes on a 2-core CPU to produce recognisable words.
"""
from gpt2jax.training.schema import base_config


def get_config(variant: str = "char"):
    c = base_config()
    c.model.update(n_layer=4, n_head=4, n_embd=128, dropout=0.0, vocab_size=0)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=50, decay_steps=0, b2=0.99, weight_decay=0.1)
    if variant == "char":
        c.name = "default"
        c.data.update(dir="data/prepared/shakespeare_char", tokenizer="char", seq_len=64)
        c.model.n_positions = 64
        c.train.update(max_steps=1000, batch_size=12, log_every=10, eval_every=250, eval_batches=20,
                       sample_tokens=200, sample_prompt="\n")
    elif variant == "bpe":
        c.name = "default_bpe"
        c.data.update(dir="data/prepared/shakespeare", tokenizer="gpt2", seq_len=128)
        # nanoGPT pads GPT-2's 50257 tokens to 50304 (a multiple of 64) for matmul tiling
        c.model.update(n_positions=128, padded_vocab_size=50304)
        c.train.update(max_steps=600, batch_size=16, log_every=10, eval_every=100, eval_batches=10,
                       sample_tokens=60, sample_prompt="ROMEO:")
    else:
        raise ValueError(f"configs/default.py variants are 'char' (default) and 'bpe', got {variant!r}")
    return c
