"""Impossible model configs fail with one clear message, in plain Python (before anything is traced)."""
import jax.numpy as jnp
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.model import GPT, init_params


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match=r"n_embd=100 is not divisible by model.n_head=3"):
        GPTConfig(n_embd=100, n_head=3)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['n_embed'\].*spelling"):
        GPTConfig.from_dict({"n_layer": 2, "n_embed": 64})


def test_sequence_longer_than_context():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=50)
    with pytest.raises(ConfigError, match=r"sequence length 17 exceeds the model's context window n_positions=16"):
        cfg.check_tokens(17)
    # The model itself refuses at trace time (shapes are static), before compiling anything.
    params = init_params(cfg, __import__("jax").random.key(0))
    with pytest.raises(ConfigError, match="exceeds the model's context window"):
        GPT(cfg).apply({"params": params}, jnp.zeros((1, 17), jnp.int32))


def test_token_id_out_of_vocab():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=50)
    with pytest.raises(ConfigError, match=r"token id 50 is out of range for vocab_size=50"):
        cfg.check_tokens(4, max_token_id=50)
    cfg.check_tokens(4, max_token_id=49)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(padded_vocab_size=100, vocab_size=200), "padded_vocab_size=100 is smaller than vocab_size=200"),
        (dict(dropout=1.5), "dropout must be in"),
        (dict(dtype="float8"), "dtype='float8' is not one of"),
        (dict(attention="flash"), "attention='flash' is not one of"),
        (dict(remat="some"), "remat='some' is not one of"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
    ],
)
def test_other_bad_fields(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**kwargs)
