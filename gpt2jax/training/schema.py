"""The training config schema (an ml_collections ConfigDict) and the checks that run before anything is built.

Config files under `configs/` start from `base_config()` and change what they need; the command line changes
any field with `--config.<section>.<field>=value`. Sections:
    name, run_root   the run directory is <run_root>/<name>
    seed             parameter init, dropout and data order
    model            GPTConfig fields; vocab_size = 0 takes the data tokenizer's vocabulary
    data             dir (a prepared dataset), tokenizer ("" = whatever the data has, or gpt2 / char), seq_len
    optim            optimizer and schedule by name, clipping (see gpt2jax.training.optim)
    train            steps, batch, logging, eval, checkpoints, sampling
    distributed      jax.distributed.initialize arguments for multi-process runs (the CLI calls it)
    logging          Weights & Biases (logging.wandb: project, entity, group, mode disabled | offline | online)
    mesh             device mesh sizes {data, fsdp, tensor}, one may be -1 (see gpt2jax.model.sharding)
    sharding_rules   logical axis -> mesh axes, recorded so that a run dir says how it was sharded
"""
from __future__ import annotations

import math
from pathlib import Path

import ml_collections

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.training.optim import OptimSpec
from gpt2jax.model.sharding import DEFAULT_RULES, check_batch_splits, data_parallel_size, make_mesh, normalize_rules


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.run_root = "runs"
    c.seed = 0
    # weights to start from: a run dir, a Hugging Face GPT-2 dir or hub id (see gpt2jax.weights.load); "" = random
    c.init_from = ""

    c.model = GPTConfig().to_dict()
    c.model.vocab_size = 0  # 0: the tokenizer's vocabulary size, filled in from the data
    c.model.padded_vocab_size = 0

    c.data = ml_collections.ConfigDict(dict(dir="data/prepared/shakespeare", tokenizer="", seq_len=256))

    # nanoGPT train.py defaults (GPT-2 124M on OpenWebText); the section's defaults, checks and resolution live
    # together in gpt2jax.training.optim.OptimSpec
    c.optim = ml_collections.ConfigDict(OptimSpec().section())

    c.train = ml_collections.ConfigDict(dict(
        max_steps=1000,
        stop_at=0,  # > 0: stop after this step with a checkpoint, as if interrupted (schedule still uses max_steps)
        # "<run dir>@<step>": start from that checkpoint's params, optimizer state, step, data position and RNG,
        # in a new run dir with this config's schedule (a cooldown branch; gpt2jax.training.fork)
        fork_from="",
        batch_size=8,  # rows per micro-batch over all devices
        grad_accum=1,  # micro-batches per optimizer step (summed inside the jitted step)
        # sizing by the devices (gpt2jax.training.spec.resolve_batch): > 0 sets batch_size to this many rows per
        # data-parallel device, and tokens_per_step > 0 derives grad_accum from it (e.g. 524288 = 512 x 1024)
        batch_size_per_device=0,
        tokens_per_step=0,
        steps_per_call=0,  # optimizer steps per compiled call (lax.scan over steps); 0: auto (several for tiny models)
        log_every=10,
        eval_every=100,  # also checkpoints, samples and keeps the best checkpoint at these steps
        eval_batches=20,  # fixed validation batches per periodic eval
        eval_batch_size=0,  # 0: batch_size
        eval_at_start=False,
        checkpoint_every=0,  # 0: eval_every
        keep_checkpoints=3,
        keep_best=True,
        async_checkpoint=True,
        resume=True,  # continue from the run dir's latest checkpoint; False refuses to touch a run dir with one
        # resuming with settings that change the training (seed, data, seq_len, batch, model, optim) is refused,
        # naming them; True continues with the new settings (said in one line at start-up)
        allow_config_change=False,
        keep_rejected=1,  # unusable checkpoints moved to rejected_checkpoints/ on resume: keep the newest N
        sample_tokens=100,  # 0: no samples at evals
        sample_prompt="\n",
        sample_temperature=0.8,
        sample_top_k=200,
        final_eval=True,  # score the whole val split with sliding windows at the end
        final_eval_stride=0,  # 0: seq_len // 2
        tensorboard=True,
        progress=True,  # a tqdm bar on a terminal; elsewhere (batch-job logs) plain "step N: loss ..." lines
        plot=True,
        profile_steps="",  # "A:B": a jax.profiler trace of steps A+1..B in <run dir>/profile; "": off
        peak_flops=0.0,  # per device, for MFU; 0: datasheet table / measured on CPU
        compilation_cache_dir="",  # e.g. ~/.cache/gpt2jax/xla: reuse compiled steps across restarts/resumes
        # reliability (docs/reliability.md)
        checkpoint_fallback=True,  # a damaged latest checkpoint is named and the newest good one resumed instead
        skip_nonfinite=False,  # NaN/Inf loss or grad norm: skip that batch (counted) instead of stopping the run
        watchdog_timeout_s=0.0,  # > 0: report a step / eval / checkpoint wait taking longer (stacks of all threads)
        watchdog_step_factor=50.0,  # also report a train step over factor x the median step time (0: off) ...
        watchdog_min_s=120.0,  # ... but never below this many seconds
        watchdog_exit=False,  # after reporting a hang, exit with code 75 so a scheduler restarts (and resumes) it
    ))

    # multi-process (multi-host) runs: the CLI calls jax.distributed.initialize before anything else. Empty / 0 /
    # -1 fields are left to JAX's cluster auto-detection (SLURM, Open MPI, TPU pods, JAX_COORDINATOR_ADDRESS).
    c.distributed = ml_collections.ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0,
                                                   process_id=-1, initialization_timeout=300))

    # experiment tracking beside metrics.jsonl and TensorBoard (gpt2jax.training.metrics): Weights & Biases, mode
    # disabled | offline (no network; `wandb sync` later) | online; needs the wandb extra
    c.logging = ml_collections.ConfigDict(dict(wandb=ml_collections.ConfigDict(dict(
        project="gpt2jax", entity="", group="", mode="disabled"))))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = tuple(tuple(r) for r in DEFAULT_RULES)
    return c


def model_config(config, tokenizer) -> GPTConfig:
    """The GPTConfig of a training config once the data's tokenizer is known."""
    d = dict(config.model.to_dict())
    if d.get("vocab_size", 0) == 0:
        d["vocab_size"] = tokenizer.n_vocab
    elif d["vocab_size"] < tokenizer.n_vocab:
        raise ConfigError(f"model.vocab_size={d['vocab_size']} is smaller than the data tokenizer's "
                          f"{tokenizer.n_vocab} tokens; use 0 to take the tokenizer's size")
    return GPTConfig.from_dict(d)


MAX_SEED = 2**31 - 2  # seed and seed + 1 (the dropout key) fit an int32, as `StateLayout.create` traces them


def check_train_config(config) -> None:
    """Checks that need neither data nor devices."""
    t, o = config.train, config.optim
    for name in ("max_steps", "grad_accum", "log_every", "eval_every", "eval_batches", "keep_checkpoints"):
        if int(t[name]) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {t[name]}")
    if int(t.batch_size) < (0 if t.get("batch_size_per_device") else 1):  # 0: sized per device (spec.resolve_batch)
        raise ConfigError(f"train.batch_size must be >= 1, got {t.batch_size}")
    for name in ("eval_batch_size", "checkpoint_every", "sample_tokens", "final_eval_stride", "sample_top_k",
                 "batch_size_per_device", "tokens_per_step"):
        if int(t[name]) < 0:
            raise ConfigError(f"train.{name} must be >= 0 (0: the default), got {t[name]}")
    for name in ("watchdog_timeout_s", "watchdog_step_factor", "watchdog_min_s", "peak_flops"):
        if not math.isfinite(t[name]) or t[name] < 0:
            raise ConfigError(f"train.{name} must be a finite number >= 0, got {t[name]}")
    if not isinstance(config.seed, int) or not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed={config.seed!r} must be an integer in [0, {MAX_SEED}] (the initial state traces it "
                          "as an int32, with seed + 1 for the dropout key)")
    if config.data.seq_len < 1:
        raise ConfigError(f"data.seq_len must be >= 1, got {config.data.seq_len}")
    if config.model.attention == "cudnn" and config.data.seq_len % 2:  # see model.cudnn_flash_takes
        raise ConfigError(
            f"model.attention=cudnn cannot train at data.seq_len={config.data.seq_len}: cuDNN's flash attention "
            "trains only at even sequence lengths. Use an even data.seq_len, or model.attention=auto, which takes "
            "XLA's attention where cuDNN's does not fit")
    if not 0 <= t.stop_at <= t.max_steps:
        raise ConfigError(f"train.stop_at={t.stop_at} must be in [0, train.max_steps={t.max_steps}]")
    OptimSpec.check(o)
    from gpt2jax.training.fork import check_config as check_fork

    check_fork(config)
    if int(t.keep_rejected) < 0:
        raise ConfigError(f"train.keep_rejected must be >= 0, got {t.keep_rejected}")
    if not isinstance(t.allow_config_change, bool):
        raise ConfigError(f"train.allow_config_change must be True or False, got {t.allow_config_change!r}")
    check_run_name(config.name, config.run_root)
    run_dir = Path(config.run_root) / config.name
    for path in (Path(config.run_root), run_dir):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {run_dir}: {path} exists and is not a directory; pick another "
                              "--config.run_root or --config.name")
    for file in RUN_FILES:  # what the run writes: a directory (or a device) there would fail mid-run
        if (path := run_dir / file).exists() and not path.is_file():
            raise ConfigError(f"{path} is {'a directory' if path.is_dir() else 'not a regular file'}; the run writes "
                              "that file: move it aside, or train under another --config.name")


RUN_FILES = ("metrics.jsonl", "metrics.rewound.jsonl", "config.json", "tokenizer.json", "summary.json", "train.lock",
             "init_from.json", "fork.json")


def check_run_name(name, run_root) -> None:
    """The run directory is <run_root>/<name>: the name must be one directory name, so the run stays inside
    run_root (no '/', no '..', no absolute path)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
            or len(name.encode()) > 255):
        raise ConfigError(f"name={name!r} must be one directory name inside run_root={run_root!r}: not empty, not "
                          "'.' or '..', without '/' or '\\' (so no absolute path), at most 255 bytes")


def data_parallel_devices(config, devices=None) -> int:
    """How many ways the config's mesh splits a batch over `devices` (default: all)."""
    return data_parallel_size(make_mesh(dict(config.mesh), devices), normalize_rules(config.sharding_rules))


def mesh_and_rules(config, devices=None):
    """The device mesh and the sharding rules of a config, after checking that the batch splits evenly."""
    mesh = make_mesh(dict(config.mesh), devices)
    rules = normalize_rules(config.sharding_rules)
    dp = data_parallel_size(mesh, rules)
    where = f" (mesh {dict(mesh.shape)}; the batch is split over {_batch_axes(rules)})"
    for field in ("batch_size", "eval_batch_size"):  # eval_batch_size 0 (not yet resolved): batch_size's check
        if config.train[field]:
            check_batch_splits(config.train[field], dp, f"--config.train.{field}", where, ", or change --config.mesh.*")
    return mesh, rules


def _batch_axes(rules) -> str:
    return " x ".join(str(a) for a in dict(rules).get("activation_batch") or ("nothing",))
