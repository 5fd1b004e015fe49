"""Checkpoints of a training run (orbax-checkpoint) and loading a run's weights for evaluation and sampling.

A run directory `runs/<name>/` holds:
    config.json       the resolved training config (model.vocab_size filled in from the data)
    tokenizer.json    the data's tokenizer (`tokenizer.to_dict()`)
    metrics.jsonl     one JSON record per log / eval step (see gpt2jax.metrics)
    checkpoints/<step>/{params, train, meta}
                      params: the model parameters; train: optimizer state, step counter, RNG key;
                      meta (JSON): step, data position, model shape and tokenizer fingerprint.

Saves are asynchronous (the copy off the devices blocks, the write does not). Kept: the newest `keep`
checkpoints plus the one with the lowest validation loss. Nothing here deletes a checkpoint except orbax's
retention of older steps during a run's own saves.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.tokenizer import tokenizer_from_dict

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# Fields that fix parameter shapes: a checkpoint made with other values cannot be loaded into this model.
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "padded_vocab_size")


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked. The message names the problem and the fix."""


# orbax splits the writing of a replicated array across its replicas, slicing it with one small jit per shape;
# below this size per slice that costs more (a compile per parameter shape) than it saves.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def configure_orbax() -> None:
    """Quiet orbax's per-save absl logging and keep small arrays out of replica-parallel writes."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
        override=True)


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep: int = 3, keep_best: bool = True, async_save: bool = True,
                 read_only: bool = False):
        configure_orbax()
        self.directory = Path(run_dir).absolute() / CHECKPOINT_DIR
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        else:
            policies = [ocp.checkpoint_managers.LatestN(n=keep)]
            if keep_best:  # reverse=True sorts by descending loss, so BestN keeps the lowest one
                policies.append(ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False))
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                best_fn=lambda m: m["val_loss"], best_mode="min", enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params, train_state, meta: dict, val_loss: float | None = None) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train_state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics=None if val_loss is None else {"val_loss": float(val_loss)},
            force=True,
        )

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params, abstract_train=None) -> dict[str, Any]:
        """Restore onto the shardings of the abstract trees (jax.ShapeDtypeStruct leaves with .sharding)."""
        items = dict(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
        if abstract_train is not None:
            items["train"] = ocp.args.StandardRestore(abstract_train)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {k: restored[k] for k in items}

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_meta(step: int, cfg: GPTConfig, tokenizer, seed: int, windows_per_step: int) -> dict:
    """What a checkpoint records besides arrays. The loader is a pure function of (seed, step), so the data
    position is the step; windows_consumed says how far into the (permuted, epoch-wise) window order that is."""
    return {
        "step": step,
        "data_position": {"step": step, "seed": seed, "windows_consumed": step * windows_per_step},
        "model": cfg.to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
    }


def check_compatible(run_dir: Path, saved: dict, cfg: GPTConfig, tokenizer) -> None:
    """Raise before training when the run's latest checkpoint cannot continue with this model and tokenizer."""
    diffs = [f"model.{k}: checkpoint {saved['model'].get(k)} vs config {getattr(cfg, k)}"
             for k in SHAPE_FIELDS if saved["model"].get(k) != getattr(cfg, k)]
    if saved.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        diffs.append(f"tokenizer: checkpoint {saved.get('tokenizer_fingerprint')} vs data {tokenizer.fingerprint}")
    if diffs:
        raise RunDirError(
            f"run directory {run_dir} holds a checkpoint (step {saved['step']}) from an incompatible config: "
            + "; ".join(diffs)
            + ". Nothing was changed. Train this config under a new name (--config.name=<new name>), or restore the "
            "original settings to resume."
        )


def load_run(run_dir: str | Path, which: str = "latest") -> tuple[GPTConfig, Any, Any]:
    """(GPTConfig, params, tokenizer) of a training run: the latest (or best) checkpoint's parameters, restored
    on the default device, and the tokenizer its data used."""
    run_dir = Path(run_dir)
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        raise RunDirError(f"{run_dir} is not a training run directory (no {CHECKPOINT_DIR}/ inside)")
    ckpts = Checkpoints(run_dir, read_only=True)
    step = ckpts.latest_step() if which == "latest" else ckpts.best_step()
    if step is None:
        raise RunDirError(f"{run_dir / CHECKPOINT_DIR} holds no complete checkpoint; train first "
                          "(an interrupted first save leaves only a *.orbax-checkpoint-tmp directory)")
    meta = ckpts.meta(step)
    cfg = GPTConfig.from_dict(meta["model"])
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise RunDirError(f"{tokenizer_path} is missing; it is written at the start of every training run")
    tokenizer = tokenizer_from_dict(json.loads(tokenizer_path.read_text()))
    if tokenizer.fingerprint != meta["tokenizer_fingerprint"]:
        raise RunDirError(f"{tokenizer_path} ({tokenizer.fingerprint}) does not match the checkpoint's tokenizer "
                          f"({meta['tokenizer_fingerprint']})")
    from gpt2jax.model import abstract_params

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params(cfg))
    params = ckpts.restore(step, target)["params"]
    ckpts.close()
    return cfg, params, tokenizer
