"""resolve(config, tokenizer): every 0-means-default decided once, in a frozen spec, without touching the input."""
import dataclasses
from pathlib import Path

import pytest

from gpt2jax.training.spec import resolve
from gpt2jax.tokenizer import CharTokenizer
from gpt2jax.train import parse_config

REPO = Path(__file__).resolve().parents[1]


def test_resolve_fills_every_default_once_and_leaves_the_config_alone():
    config = parse_config(["train", "--config", str(REPO / "configs" / "shakespeare_char.py"),
                           "--config.train.sample_top_k=0"])
    before = config.to_json_best_effort(sort_keys=True)
    spec = resolve(config, CharTokenizer("abcdefgh"))
    assert config.to_json_best_effort(sort_keys=True) == before  # model.vocab_size is not written back
    t = spec.train
    assert spec.model.vocab_size == spec.config.model.vocab_size == 8
    assert t.eval_batch_size == t.batch_size == 12 and t.checkpoint_every == t.eval_every == 250
    assert t.final_eval_stride == 32 and t.steps_per_call == 10  # seq_len 64 // 2; the baby GPT's auto rule
    assert spec.optim.decay_steps == spec.config.optim.decay_steps == 2000  # = max_steps (the config says 0)
    assert spec.end == t.max_steps and spec.sampling.top_k is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.end = 1
    with pytest.raises((AttributeError, TypeError, ValueError)):  # FrozenConfigDict
        spec.config.train.max_steps = 1
    # values given explicitly are kept
    config.train.update(eval_batch_size=24, checkpoint_every=500, stop_at=500, steps_per_call=5)
    spec = resolve(config, CharTokenizer("abcdefgh"))
    assert (spec.train.eval_batch_size, spec.train.checkpoint_every, spec.end, spec.train.steps_per_call) == (
        24, 500, 500, 5)
