"""Results table of the zero-shot suite: console text, markdown, JSON, CSV and a bar chart (ours vs the paper).

A row is one (task, protocol, metric); rows for absent data carry the "data not available: ..." message.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("task", "protocol", "metric", "ours", "paper", "lm-eval", "count", "convention", "note")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cells(row: dict) -> list[str]:
    return [_fmt(row.get(k if k != "ours" else "value")) for k in COLUMNS]


def console_table(rows: Sequence[dict], meta: dict) -> str:
    header = list(COLUMNS[:7])
    lines = [_cells(r)[:7] for r in rows]
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [f"zero-shot results: {meta['model']}  (reference columns: {meta['reference']})", fmt.format(*header),
           fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*l) for l in lines]
    for r in rows:
        if r.get("value") is None and r.get("note"):
            out.append(f"  {r['task']}: {r['note']}")
    return "\n".join(out)


def markdown_table(rows: Sequence[dict], meta: dict) -> str:
    head = (f"# Zero-shot evaluation: `{meta['model']}`\n\n"
            f"Reference columns: GPT-2 paper Table 3 and lm-evaluation-harness values for **{meta['reference']}**. "
            f"Window n_ctx={meta['n_ctx']}, stride={meta['stride']}, batch {meta['batch_size']} on "
            f"{meta['devices']} device(s)."
            + (f" **Limited run: at most {meta['limit']} lines / documents / examples per task** "
               "(numbers are not comparable to the references)." if meta.get("limit") else "") + "\n\n")
    cols = ["task", "protocol", "metric", "ours", "paper", "lm-eval", "count", "counting convention", "notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n\nProtocols are described in docs/eval.md.\n"


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(k if k != "ours" else "value") is None else r.get(k if k != "ours" else "value")
                        for k in COLUMNS])


def bar_chart(rows: Sequence[dict], meta: dict, path: Path) -> bool:
    """One small panel per row that has a paper value: ours vs paper (and lm-eval when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in rows if r.get("value") is not None and r.get("paper") is not None]
    if not panels:
        panels = [r for r in rows if r.get("value") is not None]
    if not panels:
        return False
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, panels):
        labels, values, colors = ["ours"], [r["value"]], ["tab:blue"]
        if r.get("paper") is not None:
            labels.append("paper"); values.append(r["paper"]); colors.append("tab:gray")  # noqa: E702
        if r.get("lm-eval") is not None:
            labels.append("lm-eval"); values.append(r["lm-eval"]); colors.append("tab:orange")  # noqa: E702
        ax.bar(labels, values, color=colors)
        if "ppl" in r["metric"] and max(values) > 10 * max(min(values), 1e-9):
            ax.set_yscale("log")  # a weak model's perplexity would flatten the reference bars
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{r['task']} · {r['protocol']} · {r['metric']}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{meta['model']} vs GPT-2 paper ({meta['reference']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(out_dir: Path, rows: Sequence[dict], meta: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "csv": out_dir / "results.csv",
             "chart": out_dir / "results.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(rows, meta))
    write_csv(rows, paths["csv"])
    if not bar_chart(rows, meta, paths["chart"]):
        paths.pop("chart")
    return paths
