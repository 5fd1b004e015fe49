"""A training config, resolved once: `resolve(config, tokenizer) -> TrainSpec`.

Config fields that mean "the default" when 0 (`train.eval_batch_size`, `checkpoint_every`, `final_eval_stride`,
`steps_per_call`, `optim.decay_steps`, `model.vocab_size`) and the batch sized by the devices
(`train.batch_size_per_device`, `tokens_per_step` -> `batch_size`, `grad_accum`) are decided here and nowhere
else; the result is frozen, and the training loop (`gpt2jax.train`) reads only it. `TrainSpec.config` is the
whole config with those fields filled in: it is what `<run_dir>/config.json` records.

Decided elsewhere, because they need more than the config and the tokenizer: the mesh (`mesh` sizes of -1,
from the devices: `gpt2jax.training.schema.mesh_and_rules`), the MFU peak (`train.peak_flops` 0, from the device
kind: `gpt2jax.training.metrics.peak_flops`) and the model's per-backend "auto" choices (`model.attention`,
`model.scan_unroll`: `gpt2jax.model`, at trace time).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from gpt2jax.training import cadence
from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.generation.generate import Sampling
from gpt2jax.model import flops_per_token
from gpt2jax.training.metrics import check_wandb
from gpt2jax.training.optim import OptimSpec
from gpt2jax.training.profile import parse_profile_steps
from gpt2jax.training.schema import check_train_config, data_parallel_devices, model_config


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    config: ml_collections.FrozenConfigDict  # every field resolved; written to <run_dir>/config.json
    model: GPTConfig  # vocab_size from the tokenizer
    optim: OptimSpec  # decay_steps resolved
    sampling: Sampling | None  # samples at evals; None: train.sample_tokens = 0
    end: int  # the step this invocation stops at: train.stop_at, else train.max_steps

    @property
    def train(self):
        return self.config.train

    @property
    def seq_len(self) -> int:
        return self.config.data.seq_len

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_root) / self.config.name

    @property
    def rows_per_step(self) -> int:
        """Sequences per optimizer step: micro-batches x rows."""
        return self.train.grad_accum * self.train.batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.rows_per_step * self.seq_len

    @property
    def batch_shape(self) -> tuple[int, int, int]:
        """(A, B, T+1): micro-batches, rows, tokens (inputs and targets overlap by all but one)."""
        return self.train.grad_accum, self.train.batch_size, self.seq_len + 1


def resolve_batch(t, seq_len: int, data_parallel: int) -> None:
    """train.batch_size_per_device > 0 (with batch_size 0): batch_size = that x the data-parallel devices;
    train.tokens_per_step > 0 (with grad_accum 1): grad_accum = tokens_per_step / (batch_size x seq_len), which must
    divide exactly. In place on `t`."""
    if t.batch_size_per_device:
        if t.batch_size:  # a batch_size given as well would be ignored without a word
            raise ConfigError(f"train.batch_size={t.batch_size} and train.batch_size_per_device="
                              f"{t.batch_size_per_device} both set the batch: keep one (--config.train.batch_size=0 "
                              "sizes it per device, --config.train.batch_size_per_device=0 uses batch_size)")
        t.batch_size = t.batch_size_per_device * data_parallel
    if not t.tokens_per_step:
        return
    if t.grad_accum != 1:
        raise ConfigError(f"train.tokens_per_step={t.tokens_per_step} and train.grad_accum={t.grad_accum} both set "
                          "the step's size: keep one (--config.train.tokens_per_step=0 uses grad_accum)")
    micro = t.batch_size * seq_len
    if t.tokens_per_step % micro:
        rows = (f"{t.batch_size_per_device} rows x {data_parallel} devices" if t.batch_size_per_device
                else f"batch_size {t.batch_size}")
        fits = [r for r in range(1, t.batch_size_per_device or t.batch_size)
                if t.tokens_per_step % (r * (data_parallel if t.batch_size_per_device else 1) * seq_len) == 0]
        fix = (f"use --config.train.{'batch_size_per_device' if t.batch_size_per_device else 'batch_size'}={fits[-1]}"
               if fits else "change train.tokens_per_step")
        raise ConfigError(f"train.tokens_per_step={t.tokens_per_step:,} is not a multiple of a micro-batch's "
                          f"{micro:,} tokens ({rows} x seq_len {seq_len}): {fix}, or set "
                          "train.tokens_per_step=0 and choose grad_accum")
    t.grad_accum = t.tokens_per_step // micro


def resolve(config, tokenizer, devices=None, checked: bool = False) -> TrainSpec:
    """Check the config and decide every default it leaves open, given the data's tokenizer and the devices the
    run trains on (default: all; only train.batch_size_per_device reads how many ways the mesh splits a batch).
    checked: the caller already ran check_train_config (start_run does, before opening any data), so a run checks
    its config once."""
    if not checked:
        check_train_config(config)
    c = config.copy_and_resolve_references()
    t = c.train
    parse_profile_steps(t.profile_steps, t.max_steps)  # one line for a malformed range, before anything compiles
    check_wandb(c.logging.wandb)  # ... and for W&B asked for but not installed
    resolve_batch(t, c.data.seq_len, data_parallel_devices(c, devices) if t.batch_size_per_device else 1)
    model = model_config(c, tokenizer)
    c.model.vocab_size = model.vocab_size
    t.eval_batch_size = t.eval_batch_size or t.batch_size
    t.checkpoint_every = t.checkpoint_every or t.eval_every
    t.final_eval_stride = t.final_eval_stride or max(1, c.data.seq_len // 2)
    t.steps_per_call = cadence.steps_per_call(t, flops_per_token(model, c.data.seq_len) * t.grad_accum
                                                * t.batch_size * c.data.seq_len)
    optim = OptimSpec.resolve(c.optim, t.max_steps)
    c.optim.decay_steps = optim.decay_steps
    sampling = None
    if t.sample_tokens > 0:  # sample_top_k 0: no top-k filter; the seed is the step of each sample
        sampling = Sampling(temperature=t.sample_temperature, top_k=t.sample_top_k or None)
    return TrainSpec(config=ml_collections.FrozenConfigDict(c), model=model, optim=optim, sampling=sampling,
                     end=t.stop_at or t.max_steps)
