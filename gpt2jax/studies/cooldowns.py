"""Cooldown branches of a warmup-stable-decay study (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
Beyond Fixed Training Durations"; Hu et al. 2024, MiniCPM): `Experiment(cooldowns=...)`.

For each (variant, seed) the sweep plans, instead of one run:
  stable        "<variant>,stable": optim.schedule = wsd with decay_steps = the longest budget's steps, trained
                to the longest budget's branch point (its learning rate never leaves the stable phase), with a
                checkpoint at every branch point (checkpoint_every = their gcd, all of them kept);
  cooldowns     "<variant>,cooldown=<budget>" per budget S steps: optim.schedule = wsd, train.max_steps = S,
                decay_steps = S (its last decay_fraction decays), forked (`train.fork_from`) from the stable run
                at its branch point b = floor(S - decay_fraction (S - warmup_steps)), the step where its own
                decay starts: up to b its learning rates are bitwise the stable run's (the wsd formula's stable
                phase does not depend on decay_steps; tests/test_wsd.py checks it step by step);
  twins         with `Experiment(cooldown_twins="cosine")`: "<variant>,cosine=<budget>", a separate run from
                step 0 to the same S under that schedule, to compare each cooldown with.

Budgets (`cooldowns`): a float in (0, 1] is a fraction of the variant's train.max_steps (the longest budget); a
number > 1 is a token budget (steps = tokens / tokens per step, rounded). The stable runs are not rows of the
results table; the table's cooldown section counts their compute once (`gpt2jax.training.compute
.shared_prefix_compute`) and says what separate full runs to each budget would have cost.
"""
from __future__ import annotations

import math
from pathlib import Path

from gpt2jax.config import ConfigError

STABLE = "stable"
COOLDOWN = "cooldown"


def tokens_per_step(config) -> int:
    t = config.train
    if t.batch_size_per_device:
        raise ConfigError("cooldowns need the tokens per step from the config: set train.batch_size (not "
                          "train.batch_size_per_device) or train.tokens_per_step")
    return int(t.tokens_per_step or t.batch_size * t.grad_accum * config.data.seq_len)


def budget_steps(cooldowns, config) -> list[tuple[str, int]]:
    """[(label, steps)] per budget, shortest first; the label is the budget in tokens ("76.8k")."""
    per_step = tokens_per_step(config)
    out = []
    for b in cooldowns:
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or b <= 0:
            raise ConfigError(f"cooldowns: {b!r} must be a fraction in (0, 1] of train.max_steps or a token budget > 1")
        steps = round(b * config.train.max_steps) if b <= 1 else round(b / per_step)
        if steps < 1:
            raise ConfigError(f"cooldowns: {b!r} is less than one step ({per_step} tokens)")
        out.append((token_label(steps * per_step), steps))
    labels = [label for label, _ in out]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"cooldowns {tuple(cooldowns)}: two budgets round to the same number of steps")
    return sorted(out, key=lambda x: x[1])


def token_label(tokens: int) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens >= scale:
            return f"{tokens / scale:.4g}{unit}"
    return str(tokens)


def branch_step(optim, steps: int) -> int:
    """The step where a wsd run of `steps` steps starts to decay (optim.py's decay_start), rounded down: a fork
    there continues the stable phase exactly until its own decay."""
    decay_start = steps - optim.decay_fraction * (steps - optim.warmup_steps)
    return int(math.floor(decay_start + 1e-9))


def plan(experiment, variant: str, config, twins: str = "") -> list[tuple[str, object]]:
    """(variant, config) of the stable run, the cooldowns and their twins, for one (variant, seed) `config`."""
    budgets = budget_steps(experiment.cooldowns, config)
    o = config.optim
    if o.warmup_steps >= budgets[0][1]:
        raise ConfigError(f"cooldowns: the shortest budget ({budgets[0][1]} steps) must exceed optim.warmup_steps="
                          f"{o.warmup_steps}")
    branches = [branch_step(o, steps) for _, steps in budgets]
    if branches[0] < 1:
        raise ConfigError(f"cooldowns: the shortest budget ({budgets[0][1]} steps) decays from step 0")
    suffix = config.name[len(variant):]  # ",seed=<s>" or ""
    out = []
    stable = config.copy_and_resolve_references()
    stable.name = f"{variant},{STABLE}{suffix}"
    stable.optim.schedule, stable.optim.decay_steps = "wsd", budgets[-1][1]
    every = math.gcd(*branches)
    if branches[-1] // every > 64:
        raise ConfigError(f"cooldowns: the branch points {branches} share only the divisor {every}: the stable run "
                          f"would keep {branches[-1] // every} checkpoints; choose budgets whose branch points "
                          "(S - decay_fraction (S - warmup_steps)) are multiples of a larger step count")
    stable.train.update(max_steps=branches[-1], checkpoint_every=every, stop_at=0, final_eval=False,
                        keep_checkpoints=branches[-1] // every + 1)
    if stable.train.eval_every > branches[-1]:
        stable.train.eval_every = branches[-1]
    out.append((f"{variant},{STABLE}", stable))
    source = Path(stable.run_root) / stable.name
    for (label, steps), branch in zip(budgets, branches):
        c = config.copy_and_resolve_references()
        c.name = f"{variant},{COOLDOWN}={label}{suffix}"
        c.optim.schedule, c.optim.decay_steps = "wsd", 0
        c.train.update(max_steps=steps, stop_at=0, fork_from=f"{source}@{branch}")
        c.train.eval_every = min(c.train.eval_every, steps)
        out.append((f"{variant},{COOLDOWN}={label}", c))
        if twins:
            c = config.copy_and_resolve_references()
            c.name = f"{variant},{twins}={label}{suffix}"
            c.optim.schedule, c.optim.decay_steps = twins, 0
            c.train.update(max_steps=steps, stop_at=0)
            c.train.eval_every = min(c.train.eval_every, steps)
            out.append((f"{variant},{twins}={label}", c))
    return out


def is_stable(config) -> bool:
    return f",{STABLE}" in config.name and not config.train.get("fork_from")


def phases(jobs: list[list]) -> list[list[list]]:
    """The sweep's jobs in two phases: everything that forks from nothing, then the forks (their sources must
    have finished first)."""
    first = [j for j in jobs if not any(c.train.get("fork_from") for _, c in j)]
    second = [j for j in jobs if j not in first]
    return [p for p in (first, second) if p]


def report(experiment, configs, summaries: dict, twins: str, metric) -> tuple[list[str], dict]:
    """The results table's cooldown section: each cooldown's metric against its twin's, and the compute of the
    study (shared stable prefixes counted once) against separate full runs to each budget."""
    from gpt2jax.training.compute import shared_prefix_compute

    def value(config):
        return metric(summaries.get(config.name) or {})

    stable = [summaries.get(c.name) or {} for _, c in configs if is_stable(c)]
    forks = [(c, summaries.get(c.name) or {}) for _, c in configs if c.train.get("fork_from")]
    compute = shared_prefix_compute([s.get("flops") for s in stable],
                                    [(s.get("flops"), (s.get("fork") or {}).get("flops")) for _, s in forks])
    by_name = {c.name: c for _, c in configs}
    rows = []
    lines = ["## Cooldowns (warmup-stable-decay: one stable run per variant and seed, a cooldown forked per budget)",
             "", f"| cooldown run | steps | fork step | {experiment.metric} |"
             + (f" {twins} run | {experiment.metric} | difference |" if twins else ""),
             "|---|---|---|---|" + ("---|---|---|" if twins else "")]
    for c, s in forks:
        mine = value(c)
        row = dict(run=c.name, steps=c.train.max_steps, fork_step=int(c.train.fork_from.rpartition("@")[2]),
                   metric=mine)
        line = f"| {c.name} | {c.train.max_steps} | {row['fork_step']} | {_f(mine)} |"
        if twins:
            twin = by_name.get(c.name.replace(f",{COOLDOWN}=", f",{twins}=", 1))
            other = value(twin) if twin is not None else None
            diff = (mine - other) / other if isinstance(mine, (int, float)) and isinstance(other, (int, float)) \
                and other else None
            row.update(twin=twin.name if twin else None, twin_metric=other, relative_difference=diff,
                       within_1pct=None if diff is None else diff <= 0.01)
            line += f" {row['twin']} | {_f(other)} | {'-' if diff is None else f'{diff:+.2%}'} |"
        rows.append(row)
        lines.append(line)
    wsd_wall = sum(w for w in [s.get("wall_s") for s in stable] + [s.get("wall_s") for _, s in forks]
                   if isinstance(w, (int, float)))
    compute["wsd_wall_s"] = wsd_wall
    lines += ["", "Compute (training FLOPs as every run records them, gpt2jax.training.compute):",
              f"- this study's WSD way: {_g(compute['study_flops'])} FLOPs ({wsd_wall:.0f} s wall) = the stable runs "
              f"{_g(compute['stable_flops'])} (each shared prefix counted once) + the cooldowns after their fork "
              f"points {_g(compute['cooldown_flops'])}",
              f"- separate full runs to each budget: {_g(compute['separate_flops'])} FLOPs",
              f"- saved: {_g(compute['saved_flops'])} FLOPs"
              + (f" ({compute['saved_fraction']:.1%} of the separate runs)"
                 if compute["saved_fraction"] is not None else "")]
    if twins:
        twin_flops = [summaries.get(c.name, {}).get("flops") for _, c in configs
                      if f",{twins}=" in c.name and not c.train.get("fork_from")]
        total = sum(f for f in twin_flops if isinstance(f, (int, float)))
        wall = sum(w for w in (summaries.get(c.name, {}).get("wall_s") for _, c in configs
                               if f",{twins}=" in c.name and not c.train.get("fork_from"))
                   if isinstance(w, (int, float)))
        lines.append(f"- the {twins} twins this experiment also trained for comparison: {_g(total)} FLOPs, "
                     f"{wall:.0f} s wall")
        compute.update(twin_flops=total, twin_wall_s=wall)
    return lines + [""], dict(rows=rows, compute=compute)


def _f(x) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.4f}"


def _g(x) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.4g}"


def plot(path: Path, configs, twins: str) -> Path | None:
    """Val loss (the periodic evals) against tokens: each stable run, its cooldowns branching off it, and the
    twins dashed. -> the file, or None when no run has evals yet."""
    from gpt2jax.training.metrics import read_metrics

    curves = []
    for _, c in configs:
        per_step = tokens_per_step(c)
        evals = [(r["step"] * per_step, r["val_loss"]) for r in read_metrics(Path(c.run_root) / c.name)
                 if r["kind"] == "eval" and isinstance(r.get("val_loss"), (int, float))]
        if evals and c.train.get("fork_from"):  # the branch starts where the stable curve is at the fork step
            source, _, step = c.train.fork_from.rpartition("@")
            evals += [(r["step"] * per_step, r["val_loss"]) for r in read_metrics(Path(source))
                      if r["kind"] == "eval" and r["step"] == int(step) and isinstance(r.get("val_loss"), (int, float))]
        if evals:
            style = "-" if c.train.get("fork_from") else ("k-" if is_stable(c) else "--")
            curves.append((c.name, style, sorted(evals)))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style, points in curves:
        x, y = zip(*points)
        ax.plot(x, y, style, marker=".", label=name, linewidth=2.5 if style == "k-" else 1.2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("val loss (periodic evals)")
    ax.set_title("stable run, cooldown branches" + (f" and {twins} runs (dashed)" if twins else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
