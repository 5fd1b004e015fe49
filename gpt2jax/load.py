"""`--init_from` for every entry point: a training run directory, a Hugging Face directory, or a hub id."""
from __future__ import annotations

from pathlib import Path

from gpt2jax.config import GPTConfig
from gpt2jax.errors import CheckpointError
from gpt2jax.hf import is_hub_id, load_hf
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
    if path.is_dir() and (path / "checkpoints").is_dir():
        from gpt2jax.checkpoint import load_run

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


__all__ = ["load_model", "CheckpointError", "GPTConfig"]
