"""Forking a run: `train.fork_from = "<run dir>@<step>"` (warmup-stable-decay cooldown branches).

A fork is a new run directory that starts from another run's checkpoint at <step>: its params, optimizer state
(moments and update count), step, data position and dropout RNG, so that it continues that run's trajectory
exactly; only what comes after differs, e.g. its own schedule (`optim.schedule = "wsd"` with its own
`train.max_steps`: a cooldown branch of a stable run, Hägele et al. 2024). `init_from`, by contrast, takes only
weights and starts at step 0 with a fresh optimizer.

Before anything compiles the source is checked, and a fork is refused with one line when the step is not a
checkpoint of the source, its files do not match their manifest (`Checkpoints.problem`), or the source's model,
tokenizer, seed or rows per step differ from this config's (the data position is a function of seed and step).
The source is recorded in `<run dir>/fork.json` and in summary.json's `fork` (with the FLOPs of the shared
prefix, which a study that forks several branches from one run counts once: `gpt2jax.training.compute
.shared_prefix_compute`). A fork that was interrupted resumes from its own checkpoints like any run;
fork_from is then not read again.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from gpt2jax.config import ConfigError
from gpt2jax.weights import checkpoint as ckpt_lib

FORK_FILE = "fork.json"


def parse(fork_from: str) -> tuple[Path, int]:
    """"<run dir>@<step>" -> (run dir, step); one line for anything else."""
    where, sep, step = str(fork_from).rpartition("@")
    if not sep or not where or not step.isdigit():
        raise ConfigError(f"train.fork_from={fork_from!r} must be '<run dir>@<step>', e.g. runs/wsd/stable@800")
    return Path(where), int(step)


def check_config(config) -> None:
    """The checks that need neither data nor the source's files."""
    t = config.train
    fork_from = t.get("fork_from", "")
    if not fork_from:
        return
    source, step = parse(fork_from)
    if config.init_from:
        raise ConfigError(f"train.fork_from={fork_from!r} and init_from={config.init_from!r} both say where the run "
                          "starts: keep one (a fork takes params, optimizer state, step and data position; init_from "
                          "only weights)")
    if step >= t.max_steps:
        raise ConfigError(f"train.fork_from={fork_from!r}: the fork starts at step {step}, which must be below "
                          f"train.max_steps={t.max_steps}")
    if source.absolute() == (Path(config.run_root) / config.name).absolute():
        raise ConfigError(f"train.fork_from={fork_from!r} names this run's own directory: a fork needs a run "
                          "directory of its own (--config.name=<new name>)")


class Source:
    """A checked fork source: the checkpoint `step` of `run_dir`, not yet restored."""

    def __init__(self, fork_from: str, run_dir: Path, step: int, ckpts, meta: dict):
        self.fork_from, self.run_dir, self.step, self.ckpts, self.meta = fork_from, run_dir, step, ckpts, meta

    def restore(self, layout) -> dict:
        """The source's state at `step`, restored onto this run's shardings."""
        restored = self.ckpts.restore(self.step, layout.target("params"), layout.train_target())
        return dict(params=restored["params"], **restored["train"])

    def record(self) -> dict:
        return dict(fork_from=self.fork_from, run_dir=str(self.run_dir.resolve()), step=self.step,
                    data_position=self.meta.get("data_position"))


def check_source(spec, tokenizer) -> Source:
    """The fork's source checkpoint, checked against this run (files, model, tokenizer, data position), before
    anything compiles. Raises RunDirError/ConfigError with one line."""
    fork_from = spec.train.fork_from
    source, step = parse(fork_from)
    ckpts = ckpt_lib.Checkpoints(source, read_only=True)
    if not source.is_dir():
        raise ckpt_lib.RunDirError(f"train.fork_from={fork_from!r}: {source} is not a run directory")
    steps = ckpts.steps()
    if step not in steps:
        raise ckpt_lib.RunDirError(f"train.fork_from={fork_from!r}: {source} has no checkpoint at step {step} "
                                   f"(its checkpoints: {steps or 'none'}); nothing was trained")
    bad = ckpts.problem(step)
    meta = None
    if bad is None:
        try:
            meta = ckpts.meta(step)
        except Exception as e:  # noqa: BLE001 - orbax/JSON errors of a damaged step
            bad = f"its meta cannot be read ({type(e).__name__})"
    if bad is None and not (isinstance(meta, dict) and isinstance(meta.get("model"), dict)):
        bad = "its meta names no model"
    if bad is not None:
        raise ckpt_lib.CorruptCheckpointError(f"train.fork_from={fork_from!r}: checkpoint step {step} of {source} is "
                                              f"damaged: {bad}; nothing was trained")
    diffs = [f"model.{k} {meta['model'].get(k)} vs {getattr(spec.model, k)}" for k in ckpt_lib.SHAPE_FIELDS
             if meta["model"].get(k) != getattr(spec.model, k)]
    if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        diffs.append(f"tokenizer {meta.get('tokenizer_fingerprint')} vs {tokenizer.fingerprint}")
    position = meta.get("data_position") or {}
    if position.get("seed") is not None and position["seed"] != spec.config.seed:
        diffs.append(f"seed {position['seed']} vs {spec.config.seed} (the data order)")
    consumed = position.get("windows_consumed")
    if consumed is not None and step and consumed != step * spec.rows_per_step:
        diffs.append(f"rows per step {consumed // step} vs {spec.rows_per_step} (the data position)")
    diffs += _optimizer_differences(source, spec)
    if diffs:
        raise ckpt_lib.RunDirError(f"train.fork_from={fork_from!r}: the source cannot continue as this run: "
                                   + "; ".join(diffs) + "; nothing was trained")
    return Source(fork_from, source, step, ckpts, meta)


def _optimizer_differences(source: Path, spec) -> list[str]:
    """The optimizer's name decides the state's structure: a different one could not restore."""
    try:
        old = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return []
    name = (old.get("optim") or {}).get("name")
    return [f"optim.name {name} vs {spec.optim.name}"] if name and name != spec.optim.name else []


def write_record(run_dir: Path, source: Source) -> None:
    (Path(run_dir) / FORK_FILE).write_text(json.dumps(source.record(), indent=1) + "\n")


def read_record(run_dir) -> dict | None:
    try:
        value = json.loads((Path(run_dir) / FORK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def summary_fields(run_dir, flops_per_token: float, tokens_per_step: int, step: int) -> dict:
    """summary.json's `fork` (the source and the shared prefix's tokens and FLOPs) and `own_flops` (this run's
    FLOPs after the fork point); {} for a run that is not a fork."""
    record = read_record(run_dir)
    if record is None or not isinstance(record.get("step"), int):
        return {}
    prefix_tokens = record["step"] * tokens_per_step
    fork = dict(record, tokens=prefix_tokens, flops=float(flops_per_token) * prefix_tokens)
    own = float(flops_per_token) * max(0, step - record["step"]) * tokens_per_step
    return dict(fork=fork, own_flops=own if math.isfinite(own) else None)
