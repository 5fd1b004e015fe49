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

import math

from gpt2jax.config import GPTConfig
from gpt2jax.model import flops_per_token, param_count
from gpt2jax.training.metrics import read_metrics


def non_embedding_params(cfg: GPTConfig) -> int:

    return param_count(cfg) - (cfg.embedding_rows + cfg.n_positions) * cfg.n_embd


def compute_summary(cfg: GPTConfig, seq_len: int, tokens_per_step: int, step: int, steps_run: int,
                    loop_s: float, wall_s: float, peak: float | None) -> dict:
    """The compute fields of summary.json for a run at `step` of which `steps_run` ran in this process over
    `loop_s` seconds of training loop."""
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
    budget spends C training FLOPs (to the rounding of whole steps); each point is named "<C>_<n_layer>x<n_embd>"
    and carries its "budget" C (the sweep's `budget` column, by which the IsoFLOP fit groups its runs).
    sizes: one list for all budgets, or a list
    per budget. Points with fewer than min_steps steps are left out."""
    points = []
    for i, budget in enumerate(budgets):
        for n_layer, n_embd in (sizes[i] if isinstance(sizes[0][0], (list, tuple)) else sizes):
            cfg = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // head_dim), n_positions=seq_len,
                            vocab_size=vocab_size)
            steps = round(budget / (flops_per_token(cfg, seq_len) * tokens_per_step))
            if steps >= min_steps:
                points.append({"name": f"{budget:.0e}_{n_layer}x{n_embd}", "budget": float(budget),
                               "model.n_layer": n_layer, "model.n_embd": n_embd, "model.n_head": cfg.n_head,
                               "train.max_steps": steps, "train.eval_every": steps})
    return points


# ---- a run across its processes (resumes) -------------------------------------------------------------------

PROCESSES_FILE = "processes.jsonl"  # one line per process of a run that reached its summary


def record_process(run_dir, start_step: int, step: int, wall_s: float, stopped_by=None) -> None:
    """Append this process's line to run_dir/processes.jsonl (never rewound: every process's time counts)."""
    import json
    import time
    from pathlib import Path

    with open(Path(run_dir) / PROCESSES_FILE, "a") as f:
        f.write(json.dumps(dict(start_step=start_step, step=step, wall_s=wall_s, ended=time.time(),
                                stopped_by=stopped_by)) + "\n")


def run_wall_time(run_dir, start_step: int | None = None, this_wall_s: float = 0.0) -> dict:
    """The wall time of a whole run: every process's seconds, this one (started at `start_step`, `this_wall_s`
    so far) included. -> dict(wall_s, processes, wall_s_estimated).

    Processes that wrote a summary left a line in processes.jsonl. A process killed before its summary left none:
    its steps are a gap between one line's `step` and the next process's `start_step`, and it counts with the
    last `elapsed_s` of its train records in metrics.jsonl (a lower bound: its time after that record is lost;
    a record whose elapsed_s falls below its predecessor's starts another killed process). A run dir from before
    processes.jsonl counts its summary.json's wall_s."""
    import json
    from pathlib import Path


    run_dir = Path(run_dir)
    lines = []
    path = run_dir / PROCESSES_FILE
    if path.is_file():
        for text in path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue
    lines.sort(key=lambda r: r.get("ended", 0))
    total, processes, estimated = sum(float(r.get("wall_s") or 0) for r in lines), len(lines), False
    covered = [(int(r["start_step"]), int(r["step"])) for r in lines]
    if not lines and (run_dir / "summary.json").is_file():  # an older run dir: its last summary's process
        try:
            old = json.loads((run_dir / "summary.json").read_text())
            if start_step is None or old.get("step") == start_step:
                total += float(old.get("wall_s") or 0)
                processes += 1
                covered.append((int(old.get("start_step") or 0), int(old["step"])))
        except (ValueError, KeyError, TypeError):
            pass
    # gaps: steps no line accounts for, run by processes that were killed
    ends = sorted({0} | {b for _, b in covered})
    starts = {a for a, _ in covered} | ({start_step} if start_step is not None else set())
    records = sorted((r for r in read_metrics(run_dir) if r["kind"] == "train" and "elapsed_s" in r),
                     key=lambda r: r["step"])
    for lo in ends:
        if lo in starts:
            continue  # a process started where the last one stopped: no gap
        # up to the next start; with no process running now, a killed last process ran to the end
        hi = min([s for s in starts if s > lo], default=math.inf if start_step is None else None)
        if hi is None:
            continue
        last = None
        for r in records:
            if lo < r["step"] <= hi:
                if last is not None and r["elapsed_s"] < last:  # another killed process begins
                    total, processes = total + last, processes + 1
                last = r["elapsed_s"]
        if last is not None:
            total, processes, estimated = total + last, processes + 1, True
    if start_step is not None:
        total, processes = total + this_wall_s, processes + 1
    return dict(wall_s=total, processes=processes, wall_s_estimated=estimated)


def logged_losses(run_dir, step: int) -> dict:
    """loss and val_loss at `step` as metrics.jsonl has them (the last train and eval records at or before
    `step`), and the final record at `step` (or None): for a summary whose process ran no steps (a run resumed
    at its end) or one rebuilt without training."""
    out = dict(loss=None, val_loss=None, final=None)
    for r in read_metrics(run_dir):
        if r["step"] > step:
            continue
        if r["kind"] == "train" and "loss" in r:
            out["loss"] = r["loss"]
        elif r["kind"] == "eval" and "val_loss" in r:
            out["val_loss"] = r["val_loss"]
        elif r["kind"] == "final" and r["step"] == step:
            out["final"] = {k: v for k, v in r.items() if k not in ("kind", "step")}
    return out


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


# ---- studies that share a prefix (cooldown branches, gpt2jax.studies.cooldowns) ------------------------------

def shared_prefix_compute(stable_flops, forks) -> dict:
    """Training FLOPs of a warmup-stable-decay study, each shared prefix counted once, against separate runs.

    stable_flops: the FLOPs of each stable run (trained once, to its last branch point); forks: (flops, prefix
    flops) of each cooldown run, its `flops` counting from step 0 (as if trained alone: D and C of its budget) and
    its summary's `fork.flops` the part it shares with its source. -> study_flops = sum(stable) + sum(fork flops -
    prefix flops), separate_flops = sum(fork flops) (a full run to every budget), saved_flops and saved_fraction
    (None where a number is missing)."""
    nums = lambda xs: [float(x) for x in xs if isinstance(x, (int, float))]  # noqa: E731
    stable = sum(nums(stable_flops))
    full = [f for f, _ in forks]
    own = [f - p for f, p in forks if isinstance(f, (int, float)) and isinstance(p, (int, float))]
    complete = len(nums(full)) == len(forks) and len(own) == len(forks) and len(nums(stable_flops)) == len(
        list(stable_flops))
    study, separate = stable + sum(own), sum(nums(full))
    saved = separate - study if complete else None
    return dict(stable_flops=stable, cooldown_flops=sum(own), study_flops=study, separate_flops=separate,
                saved_flops=saved, saved_fraction=saved / separate if saved is not None and separate else None)
