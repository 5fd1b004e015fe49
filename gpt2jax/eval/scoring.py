"""The jitted scorer: one forward pass per (B, T) batch -> per-target NLL and greedy-match flags, data parallel.

Parameters are placed with `gpt2jax.model.sharding.param_shardings` and batches with `batch_sharding` (the batch axis
split over the mesh's data-parallel axes), so the same code runs on one CPU, one GPU or a pod slice, in one
process or several (every process passes the same numpy batch; each contributes its rows of the global array and
reads the replicated result). The batch size must be a multiple of the data-parallel size; this is checked
before anything compiles. Used by the zero-shot suite and by training's final evaluation.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.config import GPTConfig
from gpt2jax.data.loader import local_rows
from gpt2jax.model import GPT
from gpt2jax.model.sharding import (DEFAULT_RULES, activation_context, batch_sharding, check_batch_splits,
                              data_parallel_size, make_mesh, param_shardings, replicated)


def nll_and_greedy(logits, targets) -> dict:
    """NLL (the math of `model.token_nll`) and greedy flags sharing one max over the vocabulary: fewer passes over
    the (B, T, V) logits than token_nll + argmax (those passes dominate a small model's evaluation).

    greedy = the target's logit is the maximum. Unlike argmax == target this also counts an exact tie for the
    maximum as greedy; float32 logits of a trained model essentially never tie.
    """
    logits = logits.astype(jnp.float32)
    top = logits.max(-1)  # (B, T)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # (B, T)
    lse = jnp.log(jnp.exp(logits - top[..., None]).sum(-1)) + top
    return {"nll": lse - target_logit, "greedy": target_logit >= top, "target_logit": target_logit}


class Scorer:
    """score(inputs (B, T) int32, targets (B, T) int32) -> {"nll": (B, T) float32, "greedy": (B, T) bool}.

    greedy[b, t] is True when targets[b, t] is the argmax of the model's prediction at t. With `banned_ids`
    the result also has "greedy_filtered": the same test with those ids removed from the argmax (LAMBADA's
    stop-word filter).
    """

    def __init__(self, cfg: GPTConfig, params, batch_size: int, mesh=None, rules=DEFAULT_RULES,
                 banned_ids: Sequence[int] | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        self.rules = rules
        check_batch_splits(batch_size, data_parallel_size(self.mesh, rules), "--batch_size")
        self.batch_size = batch_size
        self.positions_scored = 0
        p_sh = param_shardings(cfg, self.mesh, rules)
        self.params = jax.device_put(params, p_sh)
        self._x_sh = x_sh = batch_sharding(self.mesh, rules)
        banned = np.zeros(cfg.embedding_rows, bool)
        if banned_ids is not None:
            banned[np.asarray(list(banned_ids), dtype=np.int64)] = True
        self._banned = jax.device_put(banned, replicated(self.mesh))
        self._with_filter = banned_ids is not None
        model = GPT(cfg)
        with_filter = self._with_filter

        def score(params, inputs, targets, banned):
            logits = model.apply({"params": params}, inputs)  # (B, T, V) float32
            out = nll_and_greedy(logits, targets)
            if with_filter:
                filtered = jnp.where(banned, -jnp.inf, logits)  # (B, T, V)
                # a banned target can never be the filtered prediction
                out["greedy_filtered"] = (out["target_logit"] >= filtered.max(-1)) & ~banned[targets]
            del out["target_logit"]
            return out

        rep = replicated(self.mesh)
        self._fn = jax.jit(score, in_shardings=(p_sh, x_sh, x_sh, rep), out_shardings=rep)

    def check_batch(self, inputs: np.ndarray) -> None:
        B, T = inputs.shape
        if B != self.batch_size:
            raise ValueError(f"batch of {B} rows, scorer built for {self.batch_size}")
        self.cfg.check_tokens(T, int(inputs.max()) if inputs.size else None)

    def __call__(self, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        inputs = np.asarray(inputs, np.int32)
        targets = np.asarray(targets, np.int32)
        self.check_batch(inputs)
        self.positions_scored += inputs.size  # padded batch positions, for throughput reports
        with activation_context(self.mesh, self.rules):
            out = self._fn(self.params, self._global(inputs), self._global(targets), self._banned)
        return {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}  # replicated: any local copy

    def _global(self, x: np.ndarray) -> jax.Array:
        """The same (B, T) numpy batch on every process -> one global array (each process gives its rows)."""
        lo, hi = local_rows(self._x_sh, x.shape, axis=0)
        return jax.make_array_from_process_local_data(self._x_sh, x[lo:hi], x.shape)

    def nll_fn(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The (inputs, targets) -> (B, T) NLL function `windows.sliding_window_nll` expects."""
        return self(inputs, targets)["nll"]
