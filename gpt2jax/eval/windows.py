"""Sliding-window bookkeeping for perplexity: which tokens each model call sees and which targets it scores.

A stream of n tokens has n - 1 targets: target i is tokens[i + 1], predicted from tokens[:i + 1]. A model with a
context of n_ctx tokens cannot see the whole stream, so it is scored in windows of n_ctx inputs. The first window
scores all of its targets; each later window moves forward by `stride` and scores only its last `stride` targets,
so every target is scored exactly once and (after the first window) with at least n_ctx - stride tokens of
context. stride = n_ctx gives disjoint windows (fast, little context); stride = 1 gives every target the full
context (n_ctx times slower). The last window is aligned to the end of the stream, so it may score fewer than
`stride` targets with more context.

This is the scheme of the Hugging Face "Perplexity of fixed-length models" guide and Megatron-LM's overlapping
evaluation (`tasks/zeroshot_gpt`), used by both the zero-shot suite (`gpt2jax.eval`) and training's validation.

`score_requests` is the general engine: any list of (input tokens, target tokens, how many of the last targets
count) is packed into fixed-shape padded batches for one jitted scoring function.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from gpt2jax.generation.buckets import bucket_length
from gpt2jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Window:
    """Inputs tokens[begin:end], targets tokens[begin + 1:end + 1]; targets with index >= score_from count."""

    begin: int
    end: int
    score_from: int

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def n_scored(self) -> int:
        return self.end - self.score_from


def plan_windows(n_tokens: int, n_ctx: int, stride: int) -> list[Window]:
    """The windows that score each of the n_tokens - 1 targets exactly once (see the module docstring)."""
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to have a target, got {n_tokens}")
    if n_ctx < 1:
        raise ConfigError(f"window length n_ctx must be >= 1, got {n_ctx}")
    if not 1 <= stride <= n_ctx:
        raise ConfigError(f"stride must be in [1, n_ctx={n_ctx}], got {stride}; use stride = n_ctx // 2 for example")
    n_targets = n_tokens - 1
    windows = []
    scored = 0  # targets [0, scored) are done
    start = 0
    while scored < n_targets:
        end = min(start + n_ctx, n_targets)
        begin = max(0, end - n_ctx)  # the last window is aligned to the end: as much context as fits
        windows.append(Window(begin, end, scored))
        scored = end
        start += stride
    return windows


@dataclasses.dataclass(frozen=True)
class Request:
    """One model call's worth of work: inputs (T,), targets (T,) and how many of the LAST targets are scored."""

    inputs: np.ndarray
    targets: np.ndarray
    n_scored: int


def score_requests(
    score_fn: Callable[[np.ndarray, np.ndarray], dict],
    requests: Sequence[Request],
    max_len: int,
    batch_size: int,
    progress: bool | str = False,
    bucket: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Run `score_fn(inputs (B, T) int32, targets (B, T) int32) -> {name: (B, T) array}` over all requests.

    Batches have a static shape: B = batch_size (the last batch is padded with empty rows) and T = max_len, or
    with bucket=True `bucket_length` of the longest request in the batch (requests are sorted by length so
    batches are homogeneous; a few shapes get compiled). Padding sits to the right of the real
    tokens, which a causal model never attends to from a real position.

    Returns, in request order, {name: (n_scored,) array} for the scored targets of each request.
    """
    for r in requests:
        if len(r.inputs) != len(r.targets) or not 0 <= r.n_scored <= len(r.inputs) or len(r.inputs) > max_len:
            raise ValueError(f"bad request: {len(r.inputs)} inputs, {len(r.targets)} targets, {r.n_scored} scored, "
                             f"max_len {max_len}")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].inputs))
    results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
    bar = _progress_bar(progress, sum(len(r.inputs) for r in requests))
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        longest = len(requests[idx[0]].inputs)
        width = bucket_length(longest, max_len) if bucket else max_len
        inputs = np.zeros((batch_size, width), np.int32)  # (B, T) pad id 0: any valid id works, it is masked
        targets = np.zeros((batch_size, width), np.int32)
        for row, i in enumerate(idx):
            r = requests[i]
            inputs[row, :len(r.inputs)] = r.inputs
            targets[row, :len(r.targets)] = r.targets
        out = {k: np.asarray(v) for k, v in score_fn(inputs, targets).items()}  # each (B, T)
        for row, i in enumerate(idx):
            r = requests[i]
            n = len(r.inputs)
            results[i] = {k: v[row, n - r.n_scored:n] for k, v in out.items()}
        if bar is not None:
            bar.update(sum(len(requests[i].inputs) for i in idx))
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def _progress_bar(progress: bool | str, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    desc = progress if isinstance(progress, str) else "scoring"
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True)


def window_requests(tokens: np.ndarray, windows: Sequence[Window]) -> Iterator[Request]:
    for w in windows:
        yield Request(tokens[w.begin:w.end], tokens[w.begin + 1:w.end + 1], w.n_scored)


def sliding_window_nll(
    nll_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokens: np.ndarray,
    n_ctx: int,
    stride: int,
    batch_size: int,
    progress: bool | str = False,
) -> np.ndarray:
    """Per-target negative log-likelihood of a token stream, scored with `plan_windows(len(tokens), n_ctx, stride)`.

    nll_fn: jitted (inputs (B, T) int32, targets (B, T) int32) -> (B, T) float32 NLL; it is called with
    B = batch_size and T = n_ctx always (one compile). Returns a float64 array of length len(tokens) - 1 whose
    entry i is -log p(tokens[i + 1] | context).
    """
    tokens = np.asarray(tokens)
    windows = plan_windows(len(tokens), n_ctx, stride)
    per_window = score_requests(
        lambda x, y: {"nll": nll_fn(x, y)}, list(window_requests(tokens, windows)), n_ctx, batch_size,
        progress=progress, bucket=False,
    )
    nll = np.empty(len(tokens) - 1, np.float64)
    for w, r in zip(windows, per_window):
        nll[w.score_from:w.end] = r["nll"]
    return nll
