"""The batch for a training step is a pure function of (seed, step, process index): nothing to save but the step.

A split of N tokens is cut into W = (N - T) // T windows of T + 1 tokens (T inputs, their T next-token targets)
per shard. Each epoch visits every window once, in the order of a permutation drawn from (seed, epoch), shifted
by a phase in [0, T) drawn from the same generator so that window boundaries move between epochs. Window number
g = (step * grad_accum + micro) * batch_size + row: a global batch is batch_size consecutive window numbers, and
the rows of different processes are disjoint windows. Resuming at step s therefore reproduces exactly the batches
a run that never stopped would have read.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from gpt2jax.data.shards import TokenSplit
from gpt2jax.errors import DataError


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n_windows: int, seq_len: int) -> tuple[np.ndarray, int]:
    """(permutation of range(n_windows), phase in [0, seq_len)) for one epoch."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n_windows), int(rng.integers(seq_len))


class Loader:
    """Windows of `seq_len + 1` tokens from one split; `batch(step, ...)` returns (grad_accum, rows, seq_len + 1)."""

    def __init__(self, split: TokenSplit, seq_len: int, batch_size: int, grad_accum: int = 1, seed: int = 0):
        self.split, self.seq_len, self.batch_size, self.grad_accum, self.seed = split, seq_len, batch_size, grad_accum, seed
        # A window starting at phase + T*i needs T + 1 tokens: i <= (n - T - 1 - phase) / T for every phase < T.
        per_shard = np.array([max(0, (len(s) - seq_len) // seq_len) for s in split.shards], np.int64)
        self.first_window = np.concatenate([[0], np.cumsum(per_shard)])  # (n_shards + 1,)
        self.n_windows = int(self.first_window[-1])
        needed = batch_size * grad_accum
        if self.n_windows < needed:
            raise DataError(
                f"the {split.name} split has {split.n_tokens:,} tokens = {self.n_windows} windows of seq_len+1="
                f"{seq_len + 1} tokens, fewer than one batch needs ({batch_size} rows x {grad_accum} micro-steps = "
                f"{needed}). Use more data, or a smaller batch_size / seq_len / grad_accum."
            )

    def locate(self, g: int) -> tuple[int, int]:
        """Window number g -> (shard index, start offset in that shard)."""
        epoch, i = divmod(int(g), self.n_windows)
        order, phase = epoch_order(self.seed, epoch, self.n_windows, self.seq_len)
        w = int(order[i])
        shard = int(np.searchsorted(self.first_window, w, side="right")) - 1
        return shard, phase + (w - int(self.first_window[shard])) * self.seq_len

    def windows(self, ids: np.ndarray) -> np.ndarray:
        """Window numbers (any shape) -> tokens (*ids.shape, seq_len + 1) int32 (vectorized `locate`)."""
        flat = np.asarray(ids, np.int64).reshape(-1)
        epochs, i = np.divmod(flat, self.n_windows)
        w, phase = np.empty_like(flat), np.empty_like(flat)
        for e in np.unique(epochs):
            order, phase_e = epoch_order(self.seed, int(e), self.n_windows, self.seq_len)
            sel = epochs == e
            w[sel], phase[sel] = order[i[sel]], phase_e
        shard = np.searchsorted(self.first_window, w, side="right") - 1
        start = phase + (w - self.first_window[shard]) * self.seq_len  # (n,)
        out = np.empty((flat.size, self.seq_len + 1), np.int32)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.split.shards[s][start[sel][:, None] + np.arange(self.seq_len + 1)]
        return out.reshape(*np.shape(ids), self.seq_len + 1)

    def rows(self, step: int, lo: int, hi: int, n_steps: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of every micro-batch of `step`: (grad_accum, hi - lo, seq_len + 1) int32; with
        n_steps, of steps step .. step + n_steps - 1: (n_steps, grad_accum, hi - lo, seq_len + 1)."""
        steps = step + np.arange(n_steps or 1)[:, None, None]  # (K, 1, 1)
        micro = steps * self.grad_accum + np.arange(self.grad_accum)[None, :, None]  # (K, A, 1)
        out = self.windows(micro * self.batch_size + np.arange(lo, hi)[None, None, :])
        return out if n_steps else out[0]

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """This process's equal, contiguous share of the global batch of `step`."""
        return self.rows(step, *process_rows(process_index, process_count, self.batch_size))


def process_rows(process_index: int, process_count: int, batch_size: int) -> tuple[int, int]:
    if batch_size % process_count:
        raise DataError(f"batch_size={batch_size} is not divisible by the {process_count} processes")
    per = batch_size // process_count
    return process_index * per, (process_index + 1) * per


def local_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...], axis: int = 1) -> tuple[int, int]:
    """The contiguous range of batch rows that this process's devices hold under `sharding`."""
    spans = sorted({(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop)
                    for s in sharding.addressable_devices_indices_map(global_shape).values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise DataError(f"this process's devices hold non-contiguous batch rows {spans}; order the mesh by process")
    return lo, hi


def global_batch(loader: Loader, step: int, sharding: jax.sharding.Sharding, n_steps: int | None = None) -> jax.Array:
    """The (grad_accum, batch_size, seq_len + 1) global batch of `step` (with n_steps: the batches of n_steps
    consecutive steps, (n_steps, grad_accum, batch_size, seq_len + 1)); each process reads only its own rows."""
    shape = (loader.grad_accum, loader.batch_size, loader.seq_len + 1)
    if n_steps:
        shape = (n_steps, *shape)
    lo, hi = local_rows(sharding, shape, axis=len(shape) - 2)
    return jax.make_array_from_process_local_data(sharding, loader.rows(step, lo, hi, n_steps), shape)
