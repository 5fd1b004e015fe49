"""Compute accounting of a training run: parameters N, tokens D, training FLOPs C, wall time, MFU.

    N            every parameter (the tied LM head counted once, as GPT-2 does)
    N_nonemb     N without the token and position embeddings (Kaplan et al. 2020's N)
    D            tokens seen = steps * grad_accum * batch_size * seq_len (since step 0, across resumes)
    C            training FLOPs = D * flops_per_token, with (`gpt2jax.model.flops_per_token`, PaLM appendix B)
                     flops_per_token = 6 * (N - n_positions * n_embd) + 12 * n_layer * seq_len * n_embd
                 i.e. forward + backward = 3 x forward; 2 FLOPs per multiply-add of every weight matrix including
                 the tied LM head (V x C), and 2 x 2 * T * C per layer for the attention scores QK^T and the
                 weighted sum of values (the full T x T square, as nanoGPT counts it; causal masking would halve
                 that term). Position embeddings are lookups and cost nothing. Chinchilla's C ~= 6 N D is also
                 recorded (`flops_6nd`) for comparison.
    MFU          FLOPs of the steps run in this process / (training-loop seconds * peak FLOP/s of its devices)
"""
from __future__ import annotations

from gpt2jax.config import GPTConfig


def non_embedding_params(cfg: GPTConfig) -> int:
    from gpt2jax.model import param_count

    return param_count(cfg) - (cfg.embedding_rows + cfg.n_positions) * cfg.n_embd


def compute_summary(cfg: GPTConfig, seq_len: int, tokens_per_step: int, step: int, steps_run: int,
                    loop_s: float, wall_s: float, peak: float | None) -> dict:
    """The compute fields of summary.json for a run at `step` of which `steps_run` ran in this process over
    `loop_s` seconds of training loop."""
    from gpt2jax.model import flops_per_token, param_count

    n = param_count(cfg)
    fpt = flops_per_token(cfg, seq_len)
    tokens = step * tokens_per_step
    achieved = fpt * steps_run * tokens_per_step / loop_s if loop_s > 0 and steps_run else None
    return dict(params=n, non_embedding_params=non_embedding_params(cfg), tokens=tokens, flops_per_token=fpt,
                flops=float(fpt) * tokens, flops_6nd=6.0 * n * tokens, wall_s=wall_s, train_loop_s=loop_s,
                achieved_flops_per_s=achieved, peak_flops_per_s=peak,
                mfu=achieved / peak if achieved and peak else None)


def isoflop_grid(budgets, sizes, seq_len: int, tokens_per_step: int, vocab_size: int, head_dim: int = 64,
                 min_steps: int = 20) -> list[dict]:
    """Sweep bundles for IsoFLOP profiles: for each budget C and each (n_layer, n_embd) in its list of sizes, the
    model fields and train.max_steps = round(C / (flops_per_token * tokens_per_step)), so that every run of a
    budget spends C training FLOPs (to the rounding of whole steps); each point is named "<C>_<n_layer>x<n_embd>".
    sizes: one list for all budgets, or a list
    per budget. Points with fewer than min_steps steps are left out."""
    from gpt2jax.model import flops_per_token

    points = []
    for i, budget in enumerate(budgets):
        for n_layer, n_embd in (sizes[i] if isinstance(sizes[0][0], (list, tuple)) else sizes):
            cfg = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // head_dim), n_positions=seq_len,
                            vocab_size=vocab_size)
            steps = round(budget / (flops_per_token(cfg, seq_len) * tokens_per_step))
            if steps >= min_steps:
                points.append({"name": f"{budget:.0e}_{n_layer}x{n_embd}", "model.n_layer": n_layer, "model.n_embd": n_embd, "model.n_head": cfg.n_head,
                               "train.max_steps": steps, "train.eval_every": steps})
    return points


# ---- FLOP conventions of a study's C -----------------------------------------------------------------------

FLOP_CONVENTIONS = {
    # name: (description, C from a results row with params, non_embedding_params, tokens, flops)
    "6N+12LTC": ("C = D (6 (N - n_positions n_embd) + 12 n_layer T n_embd): every weight matrix incl. the tied "
                 "head, and attention over the full T x T square (PaLM appendix B; what every run records)",
                 lambda r: float(r["flops"])),
    "6N_nonemb": ("C = 6 N_non-embedding D (Kaplan et al. 2020: embeddings and the attention term left out)",
                  lambda r: 6.0 * float(r["non_embedding_params"]) * float(r["tokens"])),
    "6ND": ("C = 6 N D with all parameters N (Hoffmann et al. 2022's approximation)",
            lambda r: 6.0 * float(r["params"]) * float(r["tokens"])),
}


def convention_flops(row: dict, convention: str = "6N+12LTC") -> float:
    """A results row's training FLOPs C under a named convention (FLOP_CONVENTIONS)."""
    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"FLOP convention {convention!r} must be one of {list(FLOP_CONVENTIONS)}")
    return FLOP_CONVENTIONS[convention][1](row)
