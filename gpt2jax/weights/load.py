"""Weights in, from anywhere: a training run directory, a Hugging Face GPT-2 directory, or a hub id.

`load_model` is the loader of every entry point (`--init_from` of sample, eval, the harness backend); training
from weights (`--config.init_from`) loads through it and fits the result to the model being trained
(`load_init_params`). The formats themselves live beside this module: a run's checkpoints in `checkpoint.py`, Hugging
Face's safetensors (in and out: `export_hf`) in `hf.py`. Every failure is a `gpt2jax.errors.CheckpointError` (or a
subclass: RunDirError, CorruptCheckpointError), named with the fix.

Training from weights: the weights are loaded by `load_model` and fitted to the model being trained before
anything compiles. The optimizer starts fresh (AdamW moments zero, step 0); a run that resumes
from its own checkpoint ignores init_from. The resolved source is written to <run dir>/init_from.json.

Context surgery on the position table wpe (n_positions rows):
    target n_positions <  source   rows [0, n) are kept (cropping): logits of the first n positions are unchanged
    target n_positions >  source   rows [0, n_src) are copied, rows [n_src, n) are drawn N(0, 0.02) from the run's
                                   seed, GPT-2's own initialisation of wpe (the new positions are learned from
                                   scratch; no position the source knew changes)
Width, depth, head count and vocabulary must match the source; otherwise one error names every difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from gpt2jax.config import GPT2_PRESETS, ConfigError, GPTConfig
from gpt2jax.errors import CheckpointError
from gpt2jax.model import INIT_STD
from gpt2jax.weights.hf import is_hub_id, load_hf, resolve_hf_dir
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
        from gpt2jax.weights.checkpoint import load_run  # here, not at the top: checkpoint.py imports this module

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


# ---- training from weights (--config.init_from) ------------------------------------------------------------





INIT_FILE = "init_from.json"
MATCHING_FIELDS = ("n_layer", "n_embd", "n_head", "vocab_size")


def resolve_source(source: str) -> tuple[str, str]:
    """(kind, resolved path): "run" for a gpt2jax run directory, "hf" for a Hugging Face directory (a hub id is
    resolved to its local snapshot, or fails offline with the loader's message)."""
    path = Path(source).expanduser()
    if path.is_dir() and is_run_dir(path):  # also a run without a checkpoint yet: loading it says so
        return "run", str(path.resolve())
    try:
        return "hf", str(resolve_hf_dir(source).resolve())
    except CheckpointError as e:
        raise ConfigError(f"init_from={source!r}: {e}") from None


def fit_params(src_cfg: GPTConfig, src_params, cfg: GPTConfig, seed: int, source: str) -> tuple[dict, str]:
    """Source params (any arrays) -> numpy params shaped for cfg, and a line saying what was done to wpe."""
    diffs = [f"{k}: source {getattr(src_cfg, k)} vs model {getattr(cfg, k)}" for k in MATCHING_FIELDS
             if getattr(src_cfg, k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(
            f"init_from={source!r} cannot initialise this model: " + "; ".join(diffs) + ". Only model.n_positions "
            "may differ (the position table is cropped or extended); set the other model fields to the source's.")
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), src_params)
    wte = params["wte"]["embedding"][: cfg.vocab_size]  # (V, C): drop the source's padding rows
    pad = np.zeros((cfg.embedding_rows - cfg.vocab_size, cfg.n_embd), np.float32)  # masked rows, as hf.py pads
    params["wte"]["embedding"] = np.concatenate([wte, pad])
    wpe, n_src, n = params["wpe"]["embedding"], src_cfg.n_positions, cfg.n_positions  # wpe (n_src, C)
    if n <= n_src:
        params["wpe"]["embedding"] = wpe[:n]
        surgery = "none" if n == n_src else f"cropped wpe {n_src} -> {n} rows"
    else:
        new = INIT_STD * np.asarray(jax.random.normal(jax.random.key(seed), (n - n_src, cfg.n_embd)), np.float32)
        params["wpe"]["embedding"] = np.concatenate([wpe, new])
        surgery = f"extended wpe {n_src} -> {n} rows (new rows N(0, {INIT_STD}) from seed {seed})"
    return params, surgery


def load_init_params(source: str, cfg: GPTConfig, tokenizer, seed: int) -> tuple[dict, dict]:
    """-> (numpy params for cfg, record for init_from.json). Errors are ConfigErrors with one clear line."""
    kind, resolved = resolve_source(source)
    try:
        src_cfg, src_params, src_tokenizer = load_model(resolved)
    except CheckpointError as e:
        raise ConfigError(f"init_from={source!r}: {e}") from None
    if kind == "run" and src_tokenizer.fingerprint != tokenizer.fingerprint:
        raise ConfigError(f"init_from={source!r} was trained with tokenizer {src_tokenizer.fingerprint}, the data "
                          f"uses {tokenizer.fingerprint}; fine-tune on data prepared with the source's tokenizer")
    params, surgery = fit_params(src_cfg, src_params, cfg, seed, source)
    record = dict(init_from=source, kind=kind, resolved=resolved, source_model=src_cfg.to_dict(),
                  position_surgery=surgery, optimizer="fresh")
    return params, record


def write_record(run_dir: Path, record: dict) -> None:
    (Path(run_dir) / INIT_FILE).write_text(json.dumps(record, indent=1) + "\n")
