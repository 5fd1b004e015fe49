"""Training from weights: `--config.init_from` = a run directory, a Hugging Face GPT-2 directory, or a hub id.

The weights are loaded by `gpt2jax.weights.load.load_model` (the loader of sample and eval) and fitted to the model being
trained before anything compiles. The optimizer starts fresh (AdamW moments zero, step 0); a run that resumes
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

from gpt2jax.config import ConfigError, GPTConfig

INIT_FILE = "init_from.json"
MATCHING_FIELDS = ("n_layer", "n_embd", "n_head", "vocab_size")


def resolve_source(source: str) -> tuple[str, str]:
    """(kind, resolved path): "run" for a gpt2jax run directory, "hf" for a Hugging Face directory (a hub id is
    resolved to its local snapshot, or fails offline with the loader's message)."""
    from gpt2jax.errors import CheckpointError
    from gpt2jax.weights.hf import resolve_hf_dir
    from gpt2jax.weights.load import is_run_dir

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
        from gpt2jax.model import INIT_STD

        new = INIT_STD * np.asarray(jax.random.normal(jax.random.key(seed), (n - n_src, cfg.n_embd)), np.float32)
        params["wpe"]["embedding"] = np.concatenate([wpe, new])
        surgery = f"extended wpe {n_src} -> {n} rows (new rows N(0, {INIT_STD}) from seed {seed})"
    return params, surgery


def load_init_params(source: str, cfg: GPTConfig, tokenizer, seed: int) -> tuple[dict, dict]:
    """-> (numpy params for cfg, record for init_from.json). Errors are ConfigErrors with one clear line."""
    from gpt2jax.errors import CheckpointError
    from gpt2jax.weights.load import load_model

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
