"""Learning-rate transfer across widths, from a sweep's results.csv (experiments/mup_transfer.py): loss against lr,
one line per width, one panel per parametrization, and the best lr per width.

    python -m gpt2jax.studies.lr_transfer runs/mup_transfer [--metric metric]

reads runs/mup_transfer/results.csv (variants named "parametrization=...,n_embd=...,lr=...", an `optim.lr` column,
one row per seed) and writes lr_transfer.png and lr_transfer.md beside it (without a results.csv, e.g. a sweep still
running or stopped, or with --from_runs: the finished runs' summary.json files, final.val_loss): per (parametrization, width) the mean
loss over seeds at each lr, the best lr, and how many grid steps the best lr moves across widths (muP's claim:
at most one). A width whose best is the lowest or highest lr it tried is flagged: its true best lies beyond, so
the spread is only a lower bound until the grid is extended.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np


def _fields(variant: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in variant.split(",") if "=" in part)


def load(results_csv: Path, metric: str = "metric") -> dict:
    """{parametrization: {width: {lr: [loss per seed]}}} from the finished rows (non-finite losses kept as inf)."""
    out: dict = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            fields = _fields(row["variant"])
            if row.get(metric) in (None, "", "None"):
                continue
            lr = float(row.get("optim.lr") or fields["lr"])
            value = float(row[metric])
            out.setdefault(fields.get("parametrization", "sp"), {}).setdefault(int(fields["n_embd"]), {}) \
                .setdefault(lr, []).append(value if math.isfinite(value) else math.inf)
    return out


def load_runs(sweep_dir: Path) -> dict:
    """The same as `load`, from the finished run dirs' summary.json (final.val_loss) instead of results.csv."""
    import json

    out: dict = {}
    for summary_path in sorted(Path(sweep_dir).glob("*/summary.json")):
        fields = _fields(summary_path.parent.name)
        if "n_embd" not in fields or "lr" not in fields:
            continue
        summary = json.loads(summary_path.read_text())
        value = (summary.get("final") or {}).get("val_loss")
        if summary.get("step") != summary.get("max_steps") or value is None:
            continue
        out.setdefault(fields.get("parametrization", "sp"), {}).setdefault(int(fields["n_embd"]), {}) \
            .setdefault(float(fields["lr"]), []).append(value if math.isfinite(value) else math.inf)
    return out


def analyse(data: dict) -> dict:
    """Per parametrization: the lr grid, mean loss per width and lr, the best lr per width, the spread of the best
    lr across widths in grid steps, and per width whether its best is the lowest or highest lr it tried (`edge`:
    "lowest", "highest" or ""): then its true best lies beyond the grid, and the spread is not measured."""
    result = {}
    for param, by_width in data.items():
        grid = sorted({lr for per_lr in by_width.values() for lr in per_lr})
        widths = sorted(by_width)
        mean = {w: {lr: float(np.mean(by_width[w][lr])) if lr in by_width[w] else math.nan for lr in grid}
                for w in widths}
        best = {w: min((lr for lr in grid if math.isfinite(mean[w][lr])), key=lambda lr: mean[w][lr])
                for w in widths}
        edge = {w: "lowest" if best[w] == min(by_width[w]) else "highest" if best[w] == max(by_width[w]) else ""
                for w in widths}
        index = [grid.index(best[w]) for w in widths]
        result[param] = dict(grid=grid, widths=widths, mean=mean, best=best, edge=edge,
                             spread_steps=max(index) - min(index),
                             seeds={w: {lr: len(by_width[w].get(lr, [])) for lr in grid} for w in widths})
    return result


def markdown(result: dict, metric: str) -> str:
    lines = ["# Learning-rate transfer across widths", "",
             f"Mean {metric} over seeds ((n): fewer seeds than the most in the table); **bold**: the best lr of the "
             "width. Spread: how many grid steps the best lr moves across widths.", ""]
    for param, r in result.items():
        best = ", ".join(f"{w}: {r['best'][w]:g}" + (f" ({r['edge'][w]} tried)" if r["edge"][w] else "")
                         for w in r["widths"])
        unbracketed = [str(w) for w in r["widths"] if r["edge"][w]]
        spread = (f"spread {r['spread_steps']} grid step(s)" if not unbracketed else
                  f"spread {r['spread_steps']} grid step(s) or more: the best lr of width(s) "
                  f"{', '.join(unbracketed)} is at the edge of the lrs tried there, extend the grid")
        most = max(n for w in r["widths"] for n in r["seeds"][w].values())
        lines += [f"## {param}: best lr per width {best}; {spread}", "",
                  "| width | " + " | ".join(f"lr {lr:g}" for lr in r["grid"]) + " |",
                  "|---" * (len(r["grid"]) + 1) + "|"]
        for w in r["widths"]:
            cells = []
            for lr in r["grid"]:
                v, n = r["mean"][w][lr], r["seeds"][w][lr]
                text = "-" if math.isnan(v) else f"{v:.4f}" + (f" ({n})" if n < most else "")
                cells.append(f"**{text}**" if lr == r["best"][w] else text)
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(4.6 * len(result), 3.6), squeeze=False, sharey=True)
    for ax, (param, r) in zip(axes[0], result.items()):
        for w in r["widths"]:
            ys = [r["mean"][w][lr] for lr in r["grid"]]
            (line,) = ax.plot(r["grid"], ys, "o-", ms=3, label=f"width {w}")
            ax.plot([r["best"][w]], [r["mean"][w][r["best"][w]]], "*", ms=11, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        more = " or more (a best at the grid's edge)" if any(r["edge"].values()) else ""
        ax.set_title(f"{param}: best lr spread {r['spread_steps']} grid step(s){more}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{metric} (mean over seeds)")
    finite = [v for r in result.values() for w in r["widths"] for v in r["mean"][w].values() if math.isfinite(v)]
    if finite:
        lo = min(finite)
        axes[0][0].set_ylim(lo - 0.05, min(max(finite), lo + 1.0) + 0.05)  # a diverged lr does not squash the rest
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m gpt2jax.studies.lr_transfer", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", help="runs/<experiment name>, holding results.csv")
    ap.add_argument("--metric", default="metric", help="a results.csv column (default: the sweep's metric)")
    ap.add_argument("--from_runs", action="store_true", help="read the run dirs' summary.json, not results.csv")
    a = ap.parse_args(argv)
    out = Path(a.sweep_dir)
    from_runs = a.from_runs or not (out / "results.csv").is_file()
    result = analyse(load_runs(out) if from_runs else load(out / "results.csv", a.metric))
    text = markdown(result, "final val loss" if a.metric == "metric" else a.metric)
    (out / "lr_transfer.md").write_text(text + "\n")
    plot(result, out / "lr_transfer.png", "final val loss" if a.metric == "metric" else a.metric)
    print(text)
    print(f"wrote {out / 'lr_transfer.md'}, {out / 'lr_transfer.png'}")
    return result


if __name__ == "__main__":
    main()
