"""A model small enough for unit tests (seconds per run on a 2-core CPU). Tests set data.dir and run_root."""
from gpt2jax.training.schema import base_config


def get_config():
    c = base_config()
    c.name = "tiny_test"
    c.data.dir = "data/prepared/shakespeare_char"
    c.data.tokenizer = "char"
    c.data.seq_len = 32
    c.model.update(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=0)
    c.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=5, decay_steps=0, b2=0.99)
    c.train.update(max_steps=20, batch_size=8, log_every=5, eval_every=10, eval_batches=2, keep_checkpoints=2,
                   sample_tokens=0, final_eval=False, tensorboard=False, progress=False, plot=False)
    return c
