"""Generation speed: gpt2jax's compiled KV-cache loop vs transformers' PyTorch `generate` (KV cache), side by side.

    python bench/bench_generate.py                          # 124M shape, batch 1 and 8, 128 new tokens, greedy
    python bench/bench_generate.py --batch_sizes 1 --repeats 5 --prompt_len 64

Both sides decode the same random GPT-2 weights (gpt2jax's init, exported with gpt2jax.weights.hf.export_hf) greedily from
the same random prompts, never stopping early. The two run alternately in one process, so machine load affects
both alike; the load average is recorded with every measurement. gpt2jax's compile time is measured separately
and excluded from its tokens/s (transformers' first call is a warm-up too). Also reported: whether both sides
produced the same tokens (random weights give nearly tied logits, so a rare difference in a late token is
float rounding, not a bug; tests/test_generate.py checks exact parity on well-separated logits).

Writes <out_dir>/generate.json and generate.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt2jax.config import GPTConfig  # noqa: E402
from gpt2jax.generation.generate import GREEDY, generate  # noqa: E402
from gpt2jax.weights.hf import export_hf  # noqa: E402
from gpt2jax.model import init_params, param_count  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="GPT-2 size whose shape to use, random weights (default: gpt2)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="default: 1 8")
    p.add_argument("--new_tokens", type=int, default=128, help="tokens generated per row (default: 128)")
    p.add_argument("--prompt_len", type=int, default=16, help="prompt tokens per row (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side and batch size; median (default: 3)")
    p.add_argument("--torch_threads", type=int, nargs="+", default=sorted({1, os.cpu_count()}),
                   help="torch intra-op thread counts to measure; the fastest is the baseline (default: 1 and all "
                        "cores: on a shared machine one thread can beat two)")
    p.add_argument("--out_dir", default=str(REPO / "bench" / "results"), help="where generate.{json,md} go")
    return p


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.new_tokens < 1 or args.prompt_len < 1 or args.repeats < 1 or min(args.batch_sizes) < 1:
        raise SystemExit("error: --new_tokens, --prompt_len, --repeats and --batch_sizes must be >= 1")
    cfg = GPTConfig.preset(args.model)
    if args.prompt_len + args.new_tokens > cfg.n_positions:
        raise SystemExit(f"error: --prompt_len + --new_tokens must be <= n_positions={cfg.n_positions}")

    import torch
    import transformers

    print(f"{args.model} shape ({param_count(cfg) / 1e6:.0f}M params), random weights, greedy, "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} (threads {args.torch_threads}), transformers "
          f"{transformers.__version__}; load average (1/5/15 min) {load()}", flush=True)
    params = jax.device_put(init_params(cfg, jax.random.key(0)))
    with tempfile.TemporaryDirectory() as tmp:
        hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(cfg, params, tmp)).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides make exactly new_tokens tokens
    hf.generation_config.pad_token_id = cfg.vocab_size - 1

    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batch_sizes:
        prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
        ids = torch.tensor(prompts)
        mask = torch.ones_like(ids)
        tokens = {}

        def run_jax():
            res = generate(cfg, params, prompts, args.new_tokens, GREEDY)
            tokens["gpt2jax"] = res.tokens
            return res

        def run_torch(threads):
            def run():
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                      do_sample=False)
                tokens["transformers"] = out[:, args.prompt_len:].tolist()
            return run

        sides = {"gpt2jax": run_jax, **{f"transformers_{t}t": run_torch(t) for t in args.torch_threads}}
        first = {name: timed(fn) for name, fn in sides.items()}  # warm-up; gpt2jax compiles here
        compile_s = first["gpt2jax"][1].compile_s
        runs = {name: [] for name in sides}
        loads = []
        for r in range(args.repeats):  # alternate, so every side sees the same machine load
            loads.append(load())
            for name, fn in sides.items():
                runs[name].append(timed(fn)[0])
            print(f"  batch {batch} run {r + 1}/{args.repeats} (load {loads[-1]}): " + ", ".join(
                f"{name} {batch * args.new_tokens / s[-1]:.1f} tok/s" for name, s in runs.items()), flush=True)
        tps = {name: batch * args.new_tokens / statistics.median(s) for name, s in runs.items()}
        best_torch = max((n for n in tps if n != "gpt2jax"), key=tps.get)
        same = sum(a == b for ra, rb in zip(tokens["gpt2jax"], tokens["transformers"]) for a, b in zip(ra, rb))
        rows.append({
            "batch": batch, "new_tokens": args.new_tokens, "prompt_len": args.prompt_len,
            **{f"{name}_tok_s": round(v, 1) for name, v in tps.items()},
            "best_transformers": best_torch,
            "ratio_vs_best_transformers": round(tps["gpt2jax"] / tps[best_torch], 2),
            **{f"ratio_vs_{name}": round(tps["gpt2jax"] / v, 2) for name, v in tps.items() if name != "gpt2jax"},
            "gpt2jax_compile_s": round(compile_s, 2),
            "first_call_s": {name: round(v[0], 2) for name, v in first.items()},
            "runs_s": {name: [round(x, 3) for x in v] for name, v in runs.items()},
            "same_tokens": f"{same}/{batch * args.new_tokens}", "load_avg": loads,
            "buckets": {"prompt_len": first["gpt2jax"][1].prompt_len, "cache_len": first["gpt2jax"][1].cache_len},
        })

    names = [f"transformers_{t}t" for t in args.torch_threads]
    header = ("| batch | gpt2jax tok/s | " + " | ".join(f"{n} tok/s" for n in names)
              + " | gpt2jax / best transformers | gpt2jax compile s (excluded) | same greedy tokens | load avg |")
    lines = [header, "|" + "---|" * (6 + len(names))]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['gpt2jax_tok_s']} | " + " | ".join(str(r[f"{n}_tok_s"]) for n in names)
                     + f" | {r['ratio_vs_best_transformers']}x | {r['gpt2jax_compile_s']} | {r['same_tokens']} | "
                     + ", ".join(r["load_avg"]) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    meta = {"model": args.model, "params": param_count(cfg), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": args.torch_threads, "cpu_count": os.cpu_count(),
            "platform": jax.devices()[0].platform, "repeats": args.repeats, "statistic": "median"}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "generate.md").write_text(
        f"# Generation speed ({args.model} shape, random weights, greedy, {args.new_tokens} new tokens)\n\n"
        f"`python bench/bench_generate.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"{json.dumps(meta)}\n\n{table}\n")
    print(f"wrote {out / 'generate.json'}, {out / 'generate.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
