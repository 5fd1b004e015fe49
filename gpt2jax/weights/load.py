"""`--init_from` for every entry point: a training run directory, a Hugging Face directory, or a hub id."""
from __future__ import annotations

import json
from pathlib import Path

from gpt2jax.config import GPT2_PRESETS, GPTConfig
from gpt2jax.errors import CheckpointError
from gpt2jax.weights.hf import is_hub_id, load_hf
from gpt2jax.tokenizer import gpt2_tokenizer


def load_model(init_from: str, **config_overrides):
    """-> (GPTConfig, params, tokenizer).

    - a run directory of `gpt2jax.train` (has checkpoints/): its latest checkpoint and its data's tokenizer;
    - a Hugging Face GPT-2 directory (config.json + model.safetensors): official or exported weights, GPT-2 BPE;
    - a hub id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, owner/name): from the local HF cache, else the network
      (offline: one clear message that says how to pass a local directory).
    config_overrides (dtype, attention, ...) apply to the model config, not to the weights.
    """
    path = Path(init_from).expanduser()
    if path.is_dir() and is_run_dir(path):  # also a run without a checkpoint yet: load_run says so
        from gpt2jax.weights.checkpoint import load_run

        cfg, params, tokenizer = load_run(path)
        return (cfg.replace(**config_overrides) if config_overrides else cfg), params, tokenizer
    if path.is_dir() or is_hub_id(init_from):
        cfg, params = load_hf(init_from, **config_overrides)
        return cfg, params, gpt2_tokenizer()
    raise CheckpointError(
        f"--init_from {init_from!r}: no such directory, and not a hub id. Pass a run directory (runs/<name>), "
        "a Hugging Face GPT-2 directory (config.json + model.safetensors), or one of gpt2, gpt2-medium, "
        "gpt2-large, gpt2-xl."
    )


def is_run_dir(path: str | Path) -> bool:
    """A gpt2jax training run directory (checkpoints/, or a config.json with model and train sections: a run that
    stopped before its first save), as opposed to a Hugging Face directory (whose config.json is flat)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict)


def logits_bytes(init_from: str, rows: int, n_ctx: int | None = None) -> int | None:
    """Bytes of the float32 logits of `rows` windows of n_ctx tokens (default: the model's n_positions) for the
    model at init_from, from its config.json alone: no JAX, no weights, no network, so a CLI can size its host
    memory policy (`gpt2jax.runtime.hostmem`) before JAX starts. None when there is no config to read (a hub id other
    than the GPT-2 sizes, an unreadable file): the caller then treats the model as large."""
    path = Path(init_from).expanduser()
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
            model = config["model"] if (path / "checkpoints").is_dir() else config  # a run's or an HF config
            positions = model.get("n_positions", model.get("n_ctx"))
            vocab = max(model["vocab_size"], model.get("padded_vocab_size") or 0)
        elif init_from in GPT2_PRESETS:
            positions, vocab = 1024, 50257  # the released GPT-2 checkpoints (openai/gpt-2 hparams.json)
        else:
            return None
        return rows * (n_ctx or int(positions)) * int(vocab) * 4
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["load_model", "logits_bytes", "is_run_dir", "CheckpointError", "GPTConfig"]
