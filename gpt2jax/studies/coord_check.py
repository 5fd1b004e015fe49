"""Coordinate check for muP (Yang et al. 2022, "Tensor Programs V", sec. 5 and appendix D.1; the mup package's
`mup.coord_check`): train the same small GPT at several widths for a few Adam steps and record, at every step, the
RMS of each layer's activations. Under a correct muP every curve is flat in width (or falls); under SP they grow.

    python -m gpt2jax.studies.coord_check --widths 64,128,256,512 --steps 5 --out runs/coord_check

writes DIR/coord_check.json (per parametrization, width, step and layer: the RMS, averaged over seeds),
DIR/coord_check.md (the last step's RMS per width, its max/min ratio and the slope of log RMS against log width)
and DIR/coord_check.png (RMS against width, one panel per parametrization and step, a line per layer).

Recorded layers: `embedding` (token + position embeddings), `h<i>.attn` and `h<i>.mlp` (block i's attention and
MLP outputs, the residual branches before the add), `h<i>.out` (the residual stream after block i) and `logits`
(the LM head's output, its real vocabulary columns). Step t is the forward pass after t Adam updates, on the batch
of update t + 1; t = 0 is the initialisation. Every width sees the same batches.

The activations come from flax's `capture_intermediates` on the model's own modules (GPT.embed, each Block as
`GPT.decode` runs them, GPT.raw_logits): nothing is added to the model, so the training program is unchanged.
The optimizer is `gpt2jax.training.optim.make_optimizer`'s AdamW at a constant lr, without clipping or weight
decay, so that only the parametrization differs between the curves.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt2jax.config import GPTConfig
from gpt2jax.model import GPT, Block, init_params, split_layers
from gpt2jax.training.optim import make_optimizer

TEXT = Path(__file__).resolve().parents[1] / "shipped" / "tinyshakespeare.txt"


def char_tokens() -> tuple[np.ndarray, int]:
    """Tiny Shakespeare as character ids (the char tokenizer's sorted alphabet) and the vocabulary size."""
    text = TEXT.read_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return np.array([index[c] for c in text], np.int32), len(chars)


def batches(data: np.ndarray, steps: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """(steps + 1, batch, seq_len + 1) random windows, fixed by the seed: the same for every width."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - seq_len - 1, size=(steps + 1, batch))
    return data[starts[..., None] + np.arange(seq_len + 1)]


def _rms(x) -> jax.Array:
    x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(x * x))


@functools.partial(jax.jit, static_argnums=0)
def activation_rms(cfg: GPTConfig, params, tokens) -> dict[str, jax.Array]:
    """{layer: RMS} of one forward pass over tokens (B, T), run module by module with capture_intermediates."""
    model = GPT(cfg)
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    x = model.apply({"params": params}, tokens, positions, method=GPT.embed)
    out = {"embedding": _rms(x)}
    for i, layer in enumerate(split_layers(params)):
        (x, _), state = Block(cfg, parent=None).apply({"params": layer}, x, capture_intermediates=True,
                                                      mutable=["intermediates"])
        captured = state["intermediates"]
        out[f"h{i}.attn"] = _rms(captured["attn"]["__call__"][0][0])  # CausalSelfAttention returns (y, cache)
        out[f"h{i}.mlp"] = _rms(captured["mlp"]["__call__"][0])
        out[f"h{i}.out"] = _rms(x)
    logits = model.apply({"params": params}, x, method=GPT.raw_logits)
    out["logits"] = _rms(logits[..., :cfg.vocab_size])
    return out


def model_config(width: int, parametrization: str, base_width: int, n_layer: int, n_head: int, seq_len: int,
                 vocab_size: int) -> GPTConfig:
    return GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=width, n_positions=seq_len, vocab_size=vocab_size,
                     parametrization=parametrization, mup_base_width=base_width)


def train_and_record(cfg: GPTConfig, lr: float, data: np.ndarray, seed: int) -> list[dict[str, float]]:
    """RMS per layer at steps 0..len(data)-1 (step t after t AdamW updates), data (steps + 1, B, T + 1)."""
    optim = dict(name="adamw", schedule="constant", lr=lr, min_lr=0.0, warmup_steps=0, weight_decay=0.0,
                 grad_clip=0.0)
    tx, _ = make_optimizer(optim, cfg, len(data))
    model = GPT(cfg)

    @jax.jit
    def step(params, opt_state, tokens):
        grads = jax.grad(lambda p: model.apply({"params": p}, tokens[:, :-1], targets=tokens[:, 1:]).mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = init_params(cfg, jax.random.key(seed))
    opt_state = tx.init(params)
    records = []
    for t, tokens in enumerate(data):
        tokens = jnp.asarray(tokens)
        records.append({k: float(v) for k, v in activation_rms(cfg, params, tokens[:, :-1]).items()})
        if t + 1 < len(data):
            params, opt_state = step(params, opt_state, tokens)
    return records


def run(widths, steps: int = 5, parametrizations=("sp", "mup"), base_width: int | None = None, n_layer: int = 2,
        n_head: int = 4, seq_len: int = 64, batch: int = 8, lr: float = 1e-2, seeds: int = 1,
        log=print) -> dict:
    """The coordinate check's results: {"config": ..., "rms": {parametrization: {width: [{layer: RMS}] per step}}},
    RMS averaged over seeds. base_width defaults to the smallest width (muP then equals SP there, but for the
    attention scale)."""
    widths = sorted(int(w) for w in widths)
    base_width = base_width or widths[0]
    data, vocab = char_tokens()
    result = dict(config=dict(widths=widths, steps=steps, parametrizations=list(parametrizations),
                              base_width=base_width, n_layer=n_layer, n_head=n_head, seq_len=seq_len, batch=batch,
                              lr=lr, seeds=seeds, optimizer="adamw, constant lr, no clipping, no weight decay"),
                  rms={})
    for param in parametrizations:
        result["rms"][param] = {}
        for width in widths:
            cfg = model_config(width, param, base_width, n_layer, n_head, seq_len, vocab)
            per_seed = [train_and_record(cfg, lr, batches(data, steps, batch, seq_len, seed), seed)
                        for seed in range(seeds)]
            mean = [{k: float(np.mean([r[t][k] for r in per_seed])) for k in per_seed[0][t]}
                    for t in range(steps + 1)]
            result["rms"][param][str(width)] = mean
            log(f"{param} width {width}: " + ", ".join(f"{k} {v:.3g}" for k, v in mean[-1].items()))
    return result


def summary(result: dict, step: int = -1) -> dict:
    """{parametrization: {layer: {"rms": [per width], "ratio": max/min, "slope": d log RMS / d log width}}} at
    one step (default the last)."""
    widths = result["config"]["widths"]
    out = {}
    for param, by_width in result["rms"].items():
        layers = list(by_width[str(widths[0])][step])
        out[param] = {}
        for layer in layers:
            values = np.array([by_width[str(w)][step][layer] for w in widths], float)
            slope = float(np.polyfit(np.log(widths), np.log(values), 1)[0]) if len(widths) > 1 else 0.0
            out[param][layer] = dict(rms=values.tolist(), ratio=float(values.max() / values.min()), slope=slope)
    return out


def markdown(result: dict) -> str:
    cfg = result["config"]
    widths = cfg["widths"]
    lines = [f"# Coordinate check: activation RMS against width", "",
             f"{cfg['n_layer']} layers, {cfg['n_head']} heads, T={cfg['seq_len']}, B={cfg['batch']}, AdamW lr "
             f"{cfg['lr']} (constant, no clipping or weight decay), muP base width {cfg['base_width']}, "
             f"{cfg['seeds']} seed(s). max/min: the largest over the smallest RMS across widths; slope: of log RMS "
             "against log width (0 flat, 0.5 ~ sqrt(width), 1 ~ width).", ""]
    for step, title in ((0, "initialisation (t = 0)"), (-1, f"after {cfg['steps']} updates (t = {cfg['steps']})")):
        for param, layers in summary(result, step).items():
            lines += [f"## {param}, {title}", "",
                      "| layer | " + " | ".join(f"width {w}" for w in widths) + " | max/min | slope |",
                      "|---" * (len(widths) + 3) + "|"]
            for layer, s in layers.items():
                lines.append(f"| {layer} | " + " | ".join(f"{v:.3g}" for v in s["rms"])
                             + f" | {s['ratio']:.2f} | {s['slope']:+.2f} |")
            lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    widths = cfg["widths"]
    params = list(result["rms"])
    steps = list(range(cfg["steps"] + 1))
    if len(steps) > 4:  # at most four panels a row: the first, two between, the last
        steps = sorted({0, cfg["steps"] // 3, 2 * cfg["steps"] // 3, cfg["steps"]})
    fig, axes = plt.subplots(len(params), len(steps), figsize=(3.2 * len(steps), 3.0 * len(params)),
                             squeeze=False, sharey="row")
    for row, param in enumerate(params):
        by_width = result["rms"][param]
        layers = list(by_width[str(widths[0])][0])
        for col, t in enumerate(steps):
            ax = axes[row][col]
            for layer in layers:
                ax.plot(widths, [by_width[str(w)][t][layer] for w in widths], "o-", ms=3, label=layer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{param}, t={t}", fontsize=9)
            ax.set_xlabel("width (n_embd)")
            if col == 0:
                ax.set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"coordinate check: AdamW lr {cfg['lr']}, muP base width {cfg['base_width']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m gpt2jax.studies.coord_check", description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="64,128,256,512", help="comma-separated n_embd values")
    ap.add_argument("--steps", type=int, default=5, help="AdamW updates (RMS recorded at steps 0..steps)")
    ap.add_argument("--parametrizations", default="sp,mup")
    ap.add_argument("--base_width", type=int, default=0, help="model.mup_base_width (0: the smallest width)")
    ap.add_argument("--n_layer", type=int, default=2)
    ap.add_argument("--n_head", type=int, default=4, help="fixed: head_dim grows with width")
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args(argv)
    result = run([int(w) for w in a.widths.split(",")], a.steps, tuple(a.parametrizations.split(",")),
                 a.base_width or None, a.n_layer, a.n_head, a.seq_len, a.batch, a.lr, a.seeds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result["summary"] = summary(result)
    (out / "coord_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "coord_check.md").write_text(markdown(result) + "\n")
    plot(result, out / "coord_check.png")
    print(markdown(result))
    print(f"wrote {out / 'coord_check.json'}, {out / 'coord_check.md'}, {out / 'coord_check.png'}")
    return result


if __name__ == "__main__":
    main()
