"""Sweep runner for ablations and scaling studies: one training run per grid point, one results table.

    python -m gpt2jax.sweep experiments/heads.py                 # run (or resume) every variant
    python -m gpt2jax.sweep experiments/heads.py --dry_run       # list the variants and check them, train nothing
    python -m gpt2jax.sweep experiments/scaling.py --set train.max_steps=50   # override a base field for all
    python -m gpt2jax.sweep experiments/chinchilla.py --parallel 2             # two runs at once

An experiment file defines `get_experiment()` returning an `Experiment`:
    name        the sweep's directory: runs/<name>/<variant>/ for each run, runs/<name>/results.* for the table
    base        a training config file (configs/*.py), or a shipped config's name ("shakespeare_char"; also found
                as "configs/<name>.py" when the sweep runs outside a checkout)
    overrides   dotted field -> value, applied to every variant
    grid        dotted field -> list of values; the variants are their cartesian product
    metric      a key of the run's summary.json (dotted), e.g. "final.val_loss"
    metrics     more summary keys to summarise per variant (e.g. ("loss", "val_loss"))
    seeds       1 (the base config's seed), a count k (seeds 0..k-1) or a list of seeds: every grid point is
                trained once per seed (run names "<variant>,seed=<s>")
    baseline    a variant name: every other variant gets a Welch t-test p-value of its metric against it
    fit         "" | "power_law": metric = (N_c / N) ** alpha over non-embedding parameters N (Kaplan et al. 2020,
                eq. 1.5) | "scaling": every fit of gpt2jax.scaling the runs allow | a tuple of gpt2jax.scaling.FITS
    replicas    True: the seeds of a variant train as one vmapped program (gpt2jax.training.replicas) when they can;
                "auto" (default): only where that pays, on GPUs (on this CPU a vmapped step is slower than S
                separate ones, bench/bench_replicas.py); False: never
    tuned       config fields tuned by the grid (e.g. ("optim.lr",)): each is a column of the table, and the
                scaling fits take the best run over them per (N, budget) or (N, D), saying which value won and
                flagging a winner at the edge of its grid (gpt2jax.scaling.best_over)
    flops       the FLOP convention of the fits' C: "6N+12LTC" (default, what every run records), "6N_nonemb"
                (Kaplan et al. 2020) or "6ND" (gpt2jax.training.compute.FLOP_CONVENTIONS); stated in every table
    compare     published laws to draw beside the fits: names of gpt2jax.scaling.PUBLISHED ("kaplan2020",
                "hoffmann2022", "besiroglu2024")
    cooldowns   warmup-stable-decay budgets (fractions of train.max_steps, or token counts): per (variant, seed)
                one stable run "<variant>,stable" trained once, with a checkpoint at each branch point, and one
                cooldown "<variant>,cooldown=<tokens>" forked from it per budget (train.fork_from); the table's rows
                are the cooldowns, and its cooldown section counts the shared stable phase once against separate
                runs (gpt2jax.studies.cooldowns)
    cooldown_twins  a schedule (e.g. "cosine"): also a separate run from step 0 to each budget under it,
                "<variant>,<schedule>=<tokens>", compared with its cooldown in the table

A grid bundle may carry a "budget" entry (as `gpt2jax.training.compute.isoflop_grid`'s do): not a config field,
it is the run's compute budget, recorded in the table's `budget` column, by which the IsoFLOP fit groups runs.

Per variant the table gives n, mean, std and the 95% t-interval of the metric over seeds, and with a baseline the
Welch p-value (gpt2jax.studies.stats); every run's compute (params, tokens, FLOPs, wall time, MFU, gpt2jax.training.compute) is in
results.csv. Plots carry the 95% intervals as error bars.

The runs share JAX's persistent compilation cache in runs/<name>/xla_cache (unless the config sets
`train.compilation_cache_dir`): the seeds of a variant run the same programs, which then compile once, and a
resumed sweep compiles nothing it compiled before (3 seeds of configs/tiny_test.py: 37 -> 20 s, compiles 5.5 ->
about 1 s from the second seed on).

Every variant is built and checked (config, data, mesh) before the first one trains, and a finished run
(summary.json at max_steps) is not trained again, so an interrupted sweep resumes where it stopped. A summary that
is missing or incomplete (a run killed after its last checkpoint) is rebuilt from metrics.jsonl and the
checkpoints. A run dir whose config.json differs from what the sweep asks now in a field that changes results
(any --set, a changed grid value, other data; gpt2jax.studies.runs) is never reported as current: the sweep stops
with one line saying what differs, or with --on_change=rename trains the run anew as "<run>~<config hash>".
`--parallel K` trains up to K jobs (a run, or a variant's replica group) at once as child processes, each with its
own share of the CPU cores (or its own GPUs), output in runs/<name>/logs/<job>.log, a progress line here.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import dataclasses

import ml_collections
import numpy as np

from gpt2jax.config import ConfigError
from gpt2jax.errors import STOPPED_EXIT_CODE, SweepStopped


SWEEP_CACHE = "xla_cache"  # under runs/<name>/, beside the runs


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    base: str
    grid: dict[str, list]
    metric: str = "final.val_loss"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    fit: str | tuple = ""  # "", "power_law", "scaling" or a tuple of gpt2jax.scaling.FITS
    run_root: str = "runs"
    seeds: int | list = 1
    baseline: str = ""
    metrics: tuple = ()
    replicas: bool | str = "auto"
    tuned: tuple = ()
    flops: str = "6N+12LTC"
    compare: tuple = ()
    cooldowns: tuple = ()  # budgets: fractions of train.max_steps or tokens (gpt2jax.studies.cooldowns)
    cooldown_twins: str = ""  # a schedule: also a separate run from step 0 to each budget under it, e.g. "cosine"
    slurm: dict = dataclasses.field(default_factory=dict)  # --launcher slurm options (gpt2jax.studies.launch)

    def __post_init__(self):
        from gpt2jax.scaling import FITS, PUBLISHED
        from gpt2jax.training.compute import FLOP_CONVENTIONS

        fits = (self.fit,) if isinstance(self.fit, str) else tuple(self.fit)
        bad = [f for f in fits if f not in ("", "power_law", "scaling", *FITS)]
        if bad:
            raise ConfigError(f"experiment {self.name}: fit={bad[0]!r} must be '', 'power_law', 'scaling' or one of "
                              f"{FITS}")
        if not self.grid:
            raise ConfigError(f"experiment {self.name}: the grid is empty")
        if isinstance(self.seeds, int) and self.seeds < 1 or not isinstance(self.seeds, int) and not self.seeds:
            raise ConfigError(f"experiment {self.name}: seeds={self.seeds!r} must be >= 1 or a non-empty list")
        if self.flops not in FLOP_CONVENTIONS:
            raise ConfigError(f"experiment {self.name}: flops={self.flops!r} must be one of {list(FLOP_CONVENTIONS)}")
        bad = [c for c in self.compare if c not in PUBLISHED]
        if bad:
            raise ConfigError(f"experiment {self.name}: compare={bad[0]!r} must be one of {list(PUBLISHED)}")
        bad = [t for t in self.tuned if "." not in t]
        if bad:
            raise ConfigError(f"experiment {self.name}: tuned={bad[0]!r} must be a config field, e.g. 'optim.lr'")
        if self.cooldown_twins and not self.cooldowns:
            raise ConfigError(f"experiment {self.name}: cooldown_twins={self.cooldown_twins!r} needs cooldowns")
        if self.cooldown_twins:
            from gpt2jax.training.optim import SCHEDULES

            if self.cooldown_twins not in SCHEDULES:
                raise ConfigError(f"experiment {self.name}: cooldown_twins={self.cooldown_twins!r} must be a schedule: "
                                  f"{', '.join(sorted(SCHEDULES))}")
        if self.baseline and self.baseline not in [name for name, _ in variants(self)]:
            raise ConfigError(f"experiment {self.name}: baseline={self.baseline!r} is not a variant; variants: "
                              f"{[name for name, _ in variants(self)]}")

    def seed_list(self) -> list[int] | None:
        """None: one run per variant with the base config's seed."""
        if isinstance(self.seeds, int):
            return None if self.seeds == 1 else list(range(self.seeds))
        return [int(x) for x in self.seeds]

    def scaling_fits(self) -> tuple:
        from gpt2jax.scaling import FITS

        fits = (self.fit,) if isinstance(self.fit, str) else tuple(self.fit)
        return FITS if "scaling" in fits else tuple(f for f in fits if f in FITS)


def load_py(path: str | Path, function: str):
    """Import a config/experiment file as a module and call its `function()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    if path.suffix != ".py":
        raise ConfigError(f"{path} is not a Python file (.py)")
    spec = importlib.util.spec_from_file_location(f"_gpt2jax_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, function):
            raise ConfigError(f"{path} defines no {function}()")
        return getattr(module, function)()
    except ConfigError:
        raise
    except Exception as e:  # the user's file: one line naming it (SyntaxError gives the line number)
        raise ConfigError(f"{path} cannot be loaded: {type(e).__name__}: {e}") from None


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        if key not in node:
            raise ConfigError(f"unknown config field {dotted!r}: no section {key!r}")
        node = node[key]
    if leaf not in node:
        raise ConfigError(f"unknown config field {dotted!r}; fields of that section: {sorted(node.keys())}")
    try:
        node[leaf] = value  # ConfigDict checks the type
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{dotted}={value!r}: {e}") from None


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def variants(experiment) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for each grid point, e.g. ("n_head=2,n_layer=4", {...}).

    A grid key with a dot is one field ("model.n_head": [1, 2, 4]). A key without a dot names a bundle of fields
    that change together, each value a dict ("context": [{"data.seq_len": 32, "model.n_positions": 32}, ...]);
    the variant is named after the bundle's values ("context=32-32-24"), or its "name" entry when it has one;
    a "budget" entry is the variant's compute budget (`budgets`), not a config field.
    """
    grid = dict(experiment.grid)
    out = []
    for values in itertools.product(*(list(v) for v in grid.values())):
        overrides, parts = dict(experiment.overrides), []
        for key, value in zip(grid, values):
            if "." in key:
                overrides[key] = value
                parts.append(f"{key.split('.')[-1]}={value}")
            else:
                value = dict(value)
                label = value.pop("name", None)  # a bundle may name itself; "name" is not a config field
                value.pop("budget", None)  # nor is its budget (see budgets)
                overrides.update(value)
                parts.append(f"{key}=" + (label or "-".join(str(v) for v in value.values())))
        # values become part of a directory name: a '/' (a path value, a bundle's "name") would leave run_root
        name = (",".join(parts) or "base").translate({ord("/"): "_", ord("\\"): "_", 0: None})
        if name in (n for n, _ in out):
            raise ConfigError(f"two grid points of the sweep get the same run name {name!r} (their values differ only "
                              "in '/' or '\\'); give the bundles a 'name' entry")
        out.append((name, overrides))
    return out


def budgets(experiment) -> dict[str, float]:
    """{variant: its bundle's "budget"} for the variants that have one."""
    out = {}
    for (name, _), values in zip(variants(experiment), itertools.product(*(list(v) for v in experiment.grid.values()))):
        found = [v["budget"] for k, v in zip(experiment.grid, values) if "." not in k and "budget" in dict(v)]
        if found:
            out[name] = float(found[0])
    return out


def base_config_file(experiment) -> Path:
    """The experiment's base config: a file, else a shipped config of that name ("gpt2", or "configs/gpt2.py"
    from an experiment written in a checkout and run elsewhere: gpt2jax.shipped)."""
    from gpt2jax import shipped

    path = Path(experiment.base)
    if path.is_file():
        return path
    found = shipped.shipped_config(path.name) if path.parent in (Path("."), Path("configs")) else None
    if found is None:
        raise ConfigError(f"experiment {experiment.name}: base={experiment.base!r} is no file (from {Path.cwd()}) "
                          f"and no shipped config; pass a config file or one of "
                          f"{', '.join(shipped.shipped_configs())}")
    return found


def build_configs(experiment, extra: dict[str, Any]) -> list[tuple[str, ml_collections.ConfigDict]]:
    from gpt2jax.training.schema import check_train_config

    configs = []
    seeds = experiment.seed_list()
    base = base_config_file(experiment)
    for name, overrides in variants(experiment):
        for seed in seeds or [None]:
            config = load_py(base, "get_config")
            for field, value in {**overrides, **extra}.items():
                set_field(config, field, value)
            config.name = name if seed is None else f"{name},seed={seed}"
            if seed is not None:
                config.seed = seed
            config.run_root = str(Path(experiment.run_root) / experiment.name)
            if not config.train.compilation_cache_dir:  # seeds share every program: compiled once per variant
                config.train.compilation_cache_dir = str(Path(config.run_root) / SWEEP_CACHE)
            planned = [(name, config)]
            if experiment.cooldowns:  # a stable run, a cooldown per budget (and twins): gpt2jax.studies.cooldowns
                from gpt2jax.studies.cooldowns import plan

                planned = plan(experiment, name, config, experiment.cooldown_twins)
            for variant, c in planned:
                check_train_config(c)
                configs.append((variant, c))
    return configs


def lookup(summary: dict, dotted: str):
    value: Any = summary
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """Least squares in log-log space: log L = alpha * (log N_c - log N)."""
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    alpha = -slope
    return dict(alpha=float(alpha), n_c=float(math.exp(intercept / alpha)) if alpha else float("nan"))


def non_embedding_params(config) -> int:
    """Parameters outside the token and position embeddings (independent of the vocabulary)."""
    from gpt2jax.training.compute import non_embedding_params as count
    from gpt2jax.config import GPTConfig

    return count(GPTConfig.from_dict({**config.model.to_dict(), "vocab_size": 1, "padded_vocab_size": 0}))


COMPUTE_COLUMNS = ("params", "tokens", "flops", "wall_s", "mfu")  # + "budget" and the tuned axes when there are  # from gpt2jax.training.compute, per run
STAT_COLUMNS = ("metric_n", "metric_mean", "metric_std", "metric_ci_lo", "metric_ci_hi", "p_vs_baseline")


def variant_stats(experiment, rows: list[dict]) -> dict[str, dict]:
    """Per variant and metric: n, mean, std, 95% interval over seeds, and the Welch p-value against the baseline."""
    from gpt2jax.studies.stats import summarize, welch_p

    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    keys = ["metric", *experiment.metrics]
    values = {v: {k: [r[k] for r in rs if isinstance(r.get(k), (int, float))] for k in keys}
              for v, rs in by_variant.items()}
    stats = {}
    for v in by_variant:
        stats[v] = {}
        for k in keys:
            stats[v][k] = summarize(values[v][k])
            if experiment.baseline and v != experiment.baseline:
                stats[v][k]["p_vs_baseline"] = welch_p(values[v][k], values[experiment.baseline][k])
    return stats


def write_results(out_dir: Path, experiment, rows: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = variant_stats(experiment, rows)
    for r in rows:  # every run carries its variant's statistics of the metric
        st = stats[r["variant"]]["metric"]
        r.update({f"metric_{k}": st[k] for k in ("n", "mean", "std", "ci_lo", "ci_hi")},
                 p_vs_baseline=st.get("p_vs_baseline"))
    fields = list(rows[0])
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    result: dict[str, Any] = dict(experiment=experiment.name, metric=experiment.metric, rows=rows, stats=stats,
                                  baseline=experiment.baseline)
    done = [r for r in rows if isinstance(r["metric"], (int, float))]
    means = [dict(r, metric=stats[r["variant"]]["metric"]["mean"]) for r in done if r is _first(done, r["variant"])]
    fits = (experiment.fit,) if isinstance(experiment.fit, str) else tuple(experiment.fit)
    if "power_law" in fits and len(means) >= 2:
        result["fit"] = fit_power_law(np.array([r["non_embedding_params"] for r in means], float),
                                      np.array([r["metric"] for r in means], float))
    lines = [f"# {experiment.name}: {experiment.metric}", "", "| " + " | ".join(fields) + " |",
             "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_fmt(r[f]) for f in fields) + " |" for r in rows]
    lines += ["", *stats_lines(experiment, stats)]
    if "fit" in result:
        lines += ["", f"Power-law fit {experiment.metric} = (N_c / N)^alpha over non-embedding parameters N: "
                      f"alpha = {result['fit']['alpha']:.4f}, N_c = {result['fit']['n_c']:.3g}"]
    if experiment.scaling_fits():
        from gpt2jax import scaling

        result["scaling"] = scaling.fit_all(done, "metric", "params", experiment.scaling_fits(), experiment.tuned,
                                            experiment.flops)
        (out_dir / "scaling.json").write_text(json.dumps(result["scaling"], indent=1) + "\n")
        plots = scaling.plot_fits(result["scaling"], done, out_dir, "metric", "params", experiment.name,
                                  experiment.metric, experiment.flops, experiment.compare)
        lines += ["", "Scaling fits (gpt2jax.scaling; N = all parameters, D = tokens, C = training FLOPs):",
                  *scaling.describe(result["scaling"], "params", experiment.flops),
                  *[f"![{p.stem}]({p.name})" for p in plots]]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(out_dir / "results.png", experiment, means, stats, result.get("fit"))
    return result


def _first(rows, variant):
    return next(r for r in rows if r["variant"] == variant)


def stats_lines(experiment, stats) -> list[str]:
    """A markdown table per summarised metric: mean +- std, the 95% interval, and the p-value vs the baseline."""
    lines = []
    for key in ["metric", *experiment.metrics]:
        name = experiment.metric if key == "metric" else key
        lines += [f"## {name} over seeds" + (f" (Welch t-test against {experiment.baseline})"
                                             if experiment.baseline else ""), "",
                  "| variant | n | mean +- std | 95% interval | p vs baseline |", "|---|---|---|---|---|"]
        for v, st in stats.items():
            s = st[key]
            p = s.get("p_vs_baseline")
            f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
            lines.append(f"| {v} | {s['n']} | {f(s['mean'])} +- {f(s['std'])} | [{f(s['ci_lo'])}, {f(s['ci_hi'])}] "
                         f"| {'baseline' if v == experiment.baseline else ('-' if p is None else f'{p:.3g}')} |")
        lines.append("")
    return lines


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) and (abs(v) >= 1e5 or 0 < abs(v) < 1e-3) else (
        f"{v:.4f}" if isinstance(v, float) else str(v))


def _plot(path: Path, experiment, rows: list[dict], stats: dict, fit) -> None:
    """One point/bar per variant at its mean; error bars: the 95% interval over seeds."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = np.array([r["metric"] for r in rows], float)
    st = [stats[r["variant"]]["metric"] for r in rows]
    err = np.array([[s["mean"] - s["ci_lo"], s["ci_hi"] - s["mean"]] if s["ci_lo"] is not None else [0.0, 0.0]
                    for s in st], float).T  # (2, n); no bar for a single seed
    fig, ax = plt.subplots(figsize=(6, 4))
    if fit is not None:
        n = np.array([r["non_embedding_params"] for r in rows], float)
        ax.errorbar(n, mean, yerr=err, fmt="o", capsize=3, label="runs (mean, 95% interval)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        grid = np.geomspace(n.min(), n.max(), 50)
        ax.plot(grid, (fit["n_c"] / grid) ** fit["alpha"], "-", label=f"fit, alpha={fit['alpha']:.3f}")
        ax.set_xlabel("non-embedding parameters")
        ax.legend()
    else:
        ax.bar(range(len(rows)), mean, yerr=err, capsize=4)
        ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right")
        lo = np.nanmin(mean - err[0])
        ax.set_ylim(lo - 0.1 * (np.nanmax(mean + err[1]) - lo + 1e-9), None)
    ax.set_ylabel(experiment.metric + (" (mean, 95% interval)" if any(s["n"] > 1 for s in st) else ""))
    ax.set_title(experiment.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_of(config) -> dict:
    """The run's summary; a missing or incomplete one of a run that reached max_steps is rebuilt (and said)."""
    from gpt2jax.studies.runs import run_state

    state, summary = run_state(config)
    if state == "rebuilt":
        print(f"{config.name}: summary.json was missing or incomplete: rebuilt from metrics.jsonl and the checkpoints")
    return summary


def is_finished(config) -> bool:
    from gpt2jax.studies.runs import complete

    return complete(summary_of(config), config)


ON_CHANGE = ("stop", "rename")


def name_runs(experiment, configs, on_change: str = "stop") -> None:
    """Make sure no run dir holds a run trained with another config than the one asked for now (in the fields that
    change results, gpt2jax.studies.runs.config_differences): "stop" raises one line saying what differs;
    "rename" gives such a run the name "<run>~<hash of its config>" (found again by the same sweep later)."""
    from gpt2jax.studies.runs import config_differences, config_tag

    if on_change not in ON_CHANGE:
        raise ConfigError(f"--on_change must be one of {ON_CHANGE}, got {on_change!r}")
    stale = []
    for _, config in configs:
        diffs = config_differences(config)
        if diffs and on_change == "rename":
            config.name = f"{config.name}~{config_tag(config)}"
            diffs = config_differences(config)
        if diffs:
            stale.append((config.name, diffs))
    if stale:
        name, diffs = stale[0]
        more = f"; and {len(stale) - 1} more run(s)" if len(stale) > 1 else ""
        raise ConfigError(
            f"{len(stale)} of {len(configs)} runs in {Path(experiment.run_root) / experiment.name} were trained with "
            f"another config than this sweep asks for ({name}: {', '.join(diffs)}{more}); nothing was trained or "
            f"reported: rerun with --on_change=rename to train them anew under names of their own, or move them aside")


def jobs_of(experiment, configs) -> list[list]:
    """Runs that train together: the unfinished seeds of one variant as one replica group (when they may),
    every other run alone. Each job is a list of (variant, config)."""
    from gpt2jax.studies.parallel import gpu_count
    from gpt2jax.training.replicas import replica_key

    # a decision from nvidia-smi, not JAX: the parent of --parallel must not take the GPUs, and must group as its
    # children do
    use_replicas = experiment.replicas is True or (experiment.replicas == "auto" and gpu_count() > 0)
    jobs, groups = [], {}
    for variant, config in configs:
        if is_finished(config):
            continue
        # forks continue a checkpoint; stable runs need theirs at every branch point (replicas save only the last)
        fresh = (not (Path(config.run_root) / config.name / "checkpoints").exists() and not config.init_from
                 and not config.train.fork_from and not (experiment.cooldowns and is_stable(config)))
        if use_replicas and fresh and experiment.seed_list():
            groups.setdefault((variant, replica_key(config)), []).append((variant, config))
        else:
            jobs.append([(variant, config)])
    return [g for g in groups.values()] + jobs


def run_job(job) -> None:
    """Train one job (a run, or the seeds of a variant as replicas). A stop signal during it (the run checkpoints
    and stops, `gpt2jax.runtime.signals`) stops the sweep too: raises errors.SweepStopped (exit 3), so no further
    run starts under a scheduler's notice or after Ctrl-C."""
    from gpt2jax.train import train

    if len(job) > 1:
        from gpt2jax.training.replicas import train_replicas

        print(f"training {len(job)} seeds of {job[0][0]} as one vmapped program: " + ", ".join(c.name for _, c in job))
        summaries = train_replicas([c for _, c in job])
    else:
        print(f"training {job[0][1].name}")
        summaries = [train(job[0][1])]
    stopped = [s for s in summaries if s.get("stopped_early") and s.get("stopped_by")]
    if stopped:
        raise SweepStopped(f"sweep stopped by {stopped[0]['stopped_by']}: {job_name(job)} saved a checkpoint at step "
                           f"{stopped[0]['step']}; no further run was started, finished runs are kept; rerun the "
                           f"same command to resume (exit {STOPPED_EXIT_CODE})")


def job_name(job) -> str:
    return job[0][1].name if len(job) == 1 else f"{job[0][0]},seeds=" + "-".join(str(c.seed) for _, c in job)


def run_sweep(experiment_file: str, extra: dict[str, Any] | None = None, dry_run: bool = False, parallel: int = 1,
              only: list[str] | None = None, on_change: str = "stop", launcher: str = "local",
              launch_options: dict | None = None) -> dict:
    experiment = load_py(experiment_file, "get_experiment")
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"{experiment_file}: get_experiment() must return a gpt2jax.sweep.Experiment")
    configs = build_configs(experiment, extra or {})
    name_runs(experiment, configs, on_change)
    out_dir = Path(experiment.run_root) / experiment.name
    if only is not None:  # a child of --parallel: train these jobs, leave the table to the parent
        for job in jobs_of(experiment, configs):
            if job_name(job) in only:
                run_job(job)
        return {}
    print(f"sweep {experiment.name}: {len(configs)} runs -> {out_dir}")
    for name, config in configs:
        fork = f", forked from {config.train.fork_from}" if config.train.fork_from else ""
        print(f"  {config.name}: {non_embedding_params(config):,} non-embedding params, {config.train.max_steps} steps"
              f" ({config.optim.schedule}{fork})")
    if dry_run:
        return {}
    jobs = jobs_of(experiment, configs)
    done = len(configs) - sum(len(j) for j in jobs)
    if done:
        print(f"{done} of {len(configs)} runs already finished")
    from gpt2jax.studies.cooldowns import phases

    started = 0
    if launcher != "local" and jobs:  # through submitit: one job array per sweep (gpt2jax.studies.launch)
        from gpt2jax.studies.launch import launch

        if not launch(experiment_file, experiment, extra or {}, phases(jobs), launcher, launch_options, on_change):
            return {}  # submitted without waiting: rerun (or --status) once the jobs are done
        jobs = []
    for phase in phases(jobs):  # cooldown forks after the stable runs they fork from
        if parallel > 1 and len(phase) > 1:
            from gpt2jax.studies.parallel import run_parallel

            run_parallel(experiment_file, extra or {}, [job_name(j) for j in phase], parallel, out_dir / "logs",
                         flags=["--on_change", on_change])
        else:
            for job in phase:
                started += 1
                print(f"[job {started}/{len(jobs)}] ", end="")
                run_job(job)
    from gpt2jax.studies.runs import complete

    rows = []
    budget_of = budgets(experiment)
    summaries = {}
    for name, config in configs:
        summary = summaries[config.name] = summary_of(config)
        if experiment.cooldowns and is_stable(config):
            continue  # the stable phase is counted in the cooldown section, not a row
        finished = complete(summary, config)  # a stopped or broken run's numbers are not results
        row = dict(variant=name, non_embedding_params=non_embedding_params(config), steps=summary.get("step"),
                   metric=lookup(summary, experiment.metric) if finished else None)
        row.update({k: lookup(summary, k) for k in experiment.metrics})
        row.update(seed=config.seed, run=config.name)
        if budget_of:
            row["budget"] = budget_of.get(name)
        row.update({axis: lookup(config.to_dict(), axis) for axis in experiment.tuned})
        row.update({k: summary.get(k) for k in COMPUTE_COLUMNS})
        if experiment.cooldowns:
            row.update(fork_step=(summary.get("fork") or {}).get("step"), own_flops=summary.get("own_flops",
                                                                                                 row["flops"]))
        rows.append(row)
    result = write_results(out_dir, experiment, rows)
    if experiment.cooldowns:
        add_cooldown_report(out_dir, experiment, configs, summaries, result)
    print((out_dir / "results.md").read_text())
    return result


def is_stable(config) -> bool:
    from gpt2jax.studies.cooldowns import is_stable as stable

    return stable(config)


def add_cooldown_report(out_dir: Path, experiment, configs, summaries: dict, result: dict) -> None:
    """results.md/json gain the cooldown section: each cooldown against its twin, the study's compute (shared
    prefixes once) against separate runs (gpt2jax.studies.cooldowns.report)."""
    from gpt2jax.studies.cooldowns import report
    from gpt2jax.studies.runs import complete

    finished = {c.name: summaries[c.name] for _, c in configs if complete(summaries[c.name], c)}
    lines, section = report(experiment, configs, finished, experiment.cooldown_twins,
                            lambda s: lookup(s, experiment.metric) if s else None)
    result["cooldowns"] = section
    from gpt2jax.studies.cooldowns import plot

    if plot(out_dir / "cooldowns.png", configs, experiment.cooldown_twins) is not None:
        lines += ["![cooldowns](cooldowns.png)", ""]
    with open(out_dir / "results.md", "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m gpt2jax.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="an experiment file (experiments/*.py)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a training-config field for every variant (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="list and check the variants, train nothing")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="train up to K jobs at once as child processes, each on its own share of the CPU cores "
                             "(or its own GPUs); logs in runs/<experiment>/logs/")
    parser.add_argument("--on_change", choices=ON_CHANGE, default="stop",
                        help="a run dir trained with another config than asked for now: stop (default) and say what "
                             "differs, or rename: train it anew as <run>~<config hash>")
    parser.add_argument("--only", action="append", default=None, help=argparse.SUPPRESS)  # --parallel's children
    from gpt2jax.studies import launch

    launch.add_arguments(parser)  # --launcher, its SLURM options, --status
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    extra = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        field, value = item.split("=", 1)
        extra[field] = parse_value(value)
    try:
        if args.status:
            return launch.status(args.experiment, extra, args.on_change)
        return run_sweep(args.experiment, extra, args.dry_run, args.parallel, args.only, args.on_change,
                         args.launcher, launch.options_from(args))
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    # Re-enter through the package so experiment files and this runner share one `Experiment` class.
    from gpt2jax.errors import run_cli
    from gpt2jax.sweep import main as package_main

    sys.exit(run_cli(package_main))
