"""Will the compiled train step fit? `compiled.memory_analysis()` against the device's memory, before any state
is allocated, so an impossible run stops with figures and a fix instead of an out-of-memory crash minutes later.

The step's need per device is arguments + outputs - aliased (donated state is reused for the new state) +
temporaries (activations kept for the backward pass, gradients, optimizer scratch). The device's memory is
`memory_stats()["bytes_limit"]` on accelerators; CPU devices share host RAM, so there the need of all local
devices together is compared with the physical memory.
"""
from __future__ import annotations

import dataclasses
import os

from gpt2jax.config import ConfigError

GiB = 2**30


class MemoryFitError(ConfigError):
    """The compiled step needs more memory than the device has."""


@dataclasses.dataclass(frozen=True)
class StepMemory:
    argument: int
    output: int
    alias: int
    temp: int

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp

    @classmethod
    def of(cls, compiled) -> "StepMemory | None":
        m = compiled.memory_analysis()
        if m is None:  # some backends do not report
            return None
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes)

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB (arguments {self.argument / GiB:.2f} + outputs {self.output / GiB:.2f} "
                f"- donated {self.alias / GiB:.2f} + temporaries {self.temp / GiB:.2f})")


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory(devices) -> tuple[int | None, int, str]:
    """(bytes available to the step, how many devices share it, a name for messages) for the local devices."""
    local = [d for d in devices if d.process_index == devices[0].process_index]
    d = local[0]
    if d.platform == "cpu":
        return host_memory_bytes(), len(local), f"host RAM shared by {len(local)} CPU device(s)"
    stats = d.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (int(limit) if limit else None), 1, f"{d.device_kind} memory"


def smaller_batch_advice(train) -> str:
    """How to take fewer rows per step, in the terms the config sizes its batch in (train.batch_size or
    train.batch_size_per_device; with train.tokens_per_step, grad_accum follows by itself)."""
    field = "batch_size_per_device" if train.batch_size_per_device else "batch_size"
    keep = ("grad_accum follows, keeping train.tokens_per_step" if train.tokens_per_step
            else "raise --config.train.grad_accum to keep the tokens per step")
    return f"Lower --config.train.{field} ({keep})"


def check_step_fits(compiled, devices, train) -> str:
    """One line with the step's memory and the device's; raises MemoryFitError with a suggestion if it can't fit.
    train: the run's train section, for the suggestion's batch field."""
    need = StepMemory.of(compiled)
    if need is None:
        return "train step memory: not reported by this backend"
    capacity, sharing, where = device_memory(list(devices))
    line = f"train step memory per device: {need.describe()}"
    if capacity is None:
        return line + "; device memory unknown"
    total = need.total * sharing
    line += f"; {where}: {capacity / GiB:.1f} GiB"
    if total > capacity:
        raise MemoryFitError(
            f"the compiled train step cannot fit: it needs {total / GiB:.1f} GiB ({sharing} x {need.describe()}) "
            f"but the {where} is {capacity / GiB:.1f} GiB. Nothing was allocated. {smaller_batch_advice(train)}, "
            "recompute activations with "
            "--config.model.remat=dots_no_batch (or full), use --config.model.dtype=bfloat16, or shard parameters "
            "and optimizer state over more devices with FSDP (--config.mesh.data=1 --config.mesh.fsdp=-1)."
        )
    return line
