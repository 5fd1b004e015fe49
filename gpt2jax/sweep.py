"""Sweep runner for ablations and scaling studies: one training run per grid point, one results table.

    python -m gpt2jax.sweep experiments/heads.py                 # run (or resume) every variant
    python -m gpt2jax.sweep experiments/heads.py --dry_run       # list the variants and check them, train nothing
    python -m gpt2jax.sweep experiments/scaling.py --set train.max_steps=50   # override a base field for all

An experiment file defines `get_experiment()` returning an `Experiment`:
    name        the sweep's directory: runs/<name>/<variant>/ for each run, runs/<name>/results.* for the table
    base        a training config file (configs/*.py)
    overrides   dotted field -> value, applied to every variant
    grid        dotted field -> list of values; the variants are their cartesian product
    metric      a key of the run's summary.json (dotted), e.g. "final.val_loss"
    fit         "" or "power_law": fit metric = (N_c / N) ** alpha over the non-embedding parameter count N
                (Kaplan et al. 2020, eq. 1.5), reported with the table and drawn on the plot.

Every variant is built and checked (config, data, mesh) before the first one trains, and a finished run
(summary.json at max_steps) is not trained again, so an interrupted sweep resumes where it stopped.
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


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    base: str
    grid: dict[str, list]
    metric: str = "final.val_loss"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    fit: str = ""  # "" or "power_law"
    run_root: str = "runs"

    def __post_init__(self):
        if self.fit not in ("", "power_law"):
            raise ConfigError(f"experiment {self.name}: fit={self.fit!r} must be '' or 'power_law'")
        if not self.grid:
            raise ConfigError(f"experiment {self.name}: the grid is empty")


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
    the variant is named after the bundle's values ("context=32-32-24").
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
                overrides.update(value)
                parts.append(f"{key}=" + "-".join(str(v) for v in value.values()))
        out.append((",".join(parts) or "base", overrides))
    return out


def build_configs(experiment, extra: dict[str, Any]) -> list[tuple[str, ml_collections.ConfigDict]]:
    from gpt2jax.train_config import check_train_config

    configs = []
    for name, overrides in variants(experiment):
        config = load_py(experiment.base, "get_config")
        for field, value in {**overrides, **extra}.items():
            set_field(config, field, value)
        config.name = name
        config.run_root = str(Path(experiment.run_root) / experiment.name)
        check_train_config(config)
        configs.append((name, config))
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
    from gpt2jax.config import GPTConfig
    from gpt2jax.model import param_count

    cfg = GPTConfig.from_dict({**config.model.to_dict(), "vocab_size": 1, "padded_vocab_size": 0})
    return param_count(cfg) - (cfg.vocab_size + cfg.n_positions) * cfg.n_embd


def write_results(out_dir: Path, experiment, rows: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    result: dict[str, Any] = dict(experiment=experiment.name, metric=experiment.metric, rows=rows)
    done = [r for r in rows if isinstance(r["metric"], (int, float))]
    if experiment.fit == "power_law" and len(done) >= 2:
        result["fit"] = fit_power_law(np.array([r["non_embedding_params"] for r in done], float),
                                      np.array([r["metric"] for r in done], float))
    lines = [f"# {experiment.name}: {experiment.metric}", "", "| " + " | ".join(fields) + " |",
             "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_fmt(r[f]) for f in fields) + " |" for r in rows]
    if "fit" in result:
        lines += ["", f"Power-law fit {experiment.metric} = (N_c / N)^alpha over non-embedding parameters N: "
                      f"alpha = {result['fit']['alpha']:.4f}, N_c = {result['fit']['n_c']:.3g}"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(out_dir / "results.png", experiment, done, result.get("fit"))
    return result


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _plot(path: Path, experiment, rows: list[dict], fit) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if fit is not None:
        n = np.array([r["non_embedding_params"] for r in rows], float)
        ax.loglog(n, [r["metric"] for r in rows], "o", label="runs")
        grid = np.geomspace(n.min(), n.max(), 50)
        ax.loglog(grid, (fit["n_c"] / grid) ** fit["alpha"], "-", label=f"fit, alpha={fit['alpha']:.3f}")
        ax.set_xlabel("non-embedding parameters")
        ax.legend()
    else:
        ax.bar(range(len(rows)), [r["metric"] for r in rows])
        ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel(experiment.metric)
    ax.set_title(experiment.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sweep(experiment_file: str, extra: dict[str, Any] | None = None, dry_run: bool = False) -> dict:
    from gpt2jax.train import train

    experiment = load_py(experiment_file, "get_experiment")
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"{experiment_file}: get_experiment() must return a gpt2jax.sweep.Experiment")
    configs = build_configs(experiment, extra or {})
    out_dir = Path(experiment.run_root) / experiment.name
    print(f"sweep {experiment.name}: {len(configs)} variants -> {out_dir}")
    for name, config in configs:
        print(f"  {name}: {non_embedding_params(config):,} non-embedding params, {config.train.max_steps} steps")
    if dry_run:
        return {}
    rows = []
    for i, (name, config) in enumerate(configs):
        summary_path = Path(config.run_root) / name / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if summary.get("step") != config.train.max_steps:
            print(f"[{i + 1}/{len(configs)}] training {name}")
            summary = train(config)
        else:
            print(f"[{i + 1}/{len(configs)}] {name} already finished")
        rows.append(dict(variant=name, non_embedding_params=non_embedding_params(config),
                         steps=summary.get("step"), metric=lookup(summary, experiment.metric)))
    result = write_results(out_dir, experiment, rows)
    print((out_dir / "results.md").read_text())
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m gpt2jax.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="an experiment file (experiments/*.py)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a training-config field for every variant (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="list and check the variants, train nothing")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        field, value = item.split("=", 1)
        extra[field] = parse_value(value)
    try:
        return run_sweep(args.experiment, extra, args.dry_run)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    # Re-enter through the package so experiment files and this runner share one `Experiment` class.
    from gpt2jax.errors import run_cli
    from gpt2jax.sweep import main as package_main

    sys.exit(run_cli(package_main))
