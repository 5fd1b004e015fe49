"""Every config file under configs/ loads and resolves into a valid GPTConfig, mesh and optimizer."""
from pathlib import Path

import jax
import ml_collections
import pytest

from gpt2jax.config import GPT2_PRESETS, ConfigError, GPTConfig
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import DEFAULT_RULES, param_shardings
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer
from gpt2jax.train import parse_config
from gpt2jax.training.schema import check_train_config, mesh_and_rules, model_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))
VARIANTS = {"default.py": ["char", "bpe"], "gpt2.py": sorted(GPT2_PRESETS)}


def config_specs():
    for path in CONFIG_FILES:
        yield str(path)
        for v in VARIANTS.get(path.name, []):
            yield f"{path}:{v}"


def tokenizer_for(config):
    if config.data.tokenizer == "char":
        return CharTokenizer.from_text((REPO / "data" / "tinyshakespeare.txt").read_text())
    assert config.data.tokenizer == "gpt2", "configs must name their tokenizer so they resolve without data"
    return gpt2_tokenizer()


def test_every_config_file_is_covered():
    assert {p.name for p in CONFIG_FILES} >= {"default.py", "shakespeare_char.py", "gpt2.py", "tiny_test.py"}


@pytest.mark.parametrize("spec", list(config_specs()), ids=lambda s: Path(s).name)
def test_config_resolves(spec):
    config = parse_config(["train", "--config", spec])
    assert isinstance(config, ml_collections.ConfigDict)
    check_train_config(config)
    cfg = model_config(config, tokenizer_for(config))
    assert isinstance(cfg, GPTConfig) and cfg.vocab_size == tokenizer_for(config).n_vocab
    cfg.check_tokens(config.data.seq_len)
    assert tuple(map(tuple, config.sharding_rules)) == tuple(tuple(r) for r in DEFAULT_RULES)
    # the largest device count (<= 8) that the batch splits over must give a valid mesh and shardings
    n = max(d for d in (1, 2, 4, 8) if config.train.batch_size % d == 0)
    mesh, rules = mesh_and_rules(config, jax.devices()[:n])
    param_shardings(cfg, mesh, rules)
    make_optimizer(config.optim, cfg, config.train.max_steps)


@pytest.mark.parametrize("preset", sorted(GPT2_PRESETS))
def test_gpt2_presets_have_the_released_shapes(preset):
    cfg = model_config(parse_config(["train", "--config", f"{REPO}/configs/gpt2.py:{preset}"]), gpt2_tokenizer())
    assert {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd")} == GPT2_PRESETS[preset]
    assert (cfg.n_positions, cfg.vocab_size, cfg.padded_vocab_size) == (1024, 50257, 50304)


def test_baby_gpt_is_nanogpts():
    c = parse_config(["train", "--config", f"{REPO}/configs/shakespeare_char.py"])
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.data.seq_len, c.train.batch_size) == (4, 4, 128, 64, 12)
    assert (c.train.max_steps, c.optim.lr, c.optim.min_lr, c.optim.warmup_steps, c.optim.b2) == (2000, 1e-3, 1e-4, 100,
                                                                                                 0.99)
    assert c.model.dropout == 0.0 and c.optim.decay_steps == 2000


def test_command_line_overrides():
    c = parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", "--config.model.n_layer=6",
                      "--config.train.batch_size=16", "--config.name=other"])
    assert (c.model.n_layer, c.train.batch_size, c.name) == (6, 16, "other")
    with pytest.raises(Exception, match="n_layr"):
        parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", "--config.model.n_layr=6"])


def test_bad_values_are_named():
    c = parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", "--config.model.n_head=3"])
    with pytest.raises(ConfigError, match="n_embd=32 is not divisible by model.n_head=3"):
        model_config(c, CharTokenizer("abc"))
    c = parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", "--config.train.stop_at=99"])
    with pytest.raises(ConfigError, match="train.stop_at=99"):
        check_train_config(c)
    c = parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", "--config.model.attention=cudnn",
                      "--config.data.seq_len=11"])
    with pytest.raises(ConfigError, match="model.attention=cudnn cannot train at data.seq_len=11"):
        check_train_config(c)  # cuDNN's backward refuses odd lengths, raising only deep inside the first step
    for seed in (-1, 2**31 - 1):  # the initial state traces seed and seed + 1 as int32
        c = parse_config(["train", "--config", f"{REPO}/configs/tiny_test.py", f"--config.seed={seed}"])
        with pytest.raises(ConfigError, match=rf"seed={seed} must be an integer in \[0, 2147483646\]"):
            check_train_config(c)
