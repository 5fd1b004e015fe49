"""Zero-shot evaluation on the GPT-2 paper's Table 3 benchmarks, every number labelled with its protocol and shown
beside the paper's value and lm-evaluation-harness's.

    python -m gpt2jax.eval.zeroshot --init_from gpt2 --tasks wikitext2,ptb,lambada
    python -m gpt2jax.eval.zeroshot --init_from runs/my_run --tasks all --out_dir out/eval/my_run

Writes results.{json,md,csv,png} into --out_dir and prints the table. Protocols: docs/eval.md.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import jax

from gpt2jax.runtime import hostmem
from gpt2jax.config import GPT2_VOCAB_SIZE, ConfigError
from gpt2jax.eval import protocols, report
from gpt2jax.eval.tasks import (DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, GPT2_SIZES, TASKS, Task, all_data_files,
                                parse_path_overrides, parse_task_list, read_bytes, read_text, reference_size, resolve)
from gpt2jax.errors import DataError
from gpt2jax.model.sharding import check_batch_splits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt2jax.eval.zeroshot", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_from", required=True,
                   help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl (hub id), a Hugging Face GPT-2 directory, or a "
                        "gpt2jax run directory")
    p.add_argument("--tasks", default="wikitext2,ptb,lambada",
                   help=f"comma-separated, or 'all'. Valid: {', '.join(TASKS)} (default: %(default)s)")
    p.add_argument("--out_dir", default=None, help="where results.* go (default: out/eval/<model name>)")
    p.add_argument("--n_ctx", type=int, default=None, help="window length (default: the model's n_positions)")
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window stride of the paper protocol: each target keeps >= n_ctx - stride tokens "
                        "of context (default: n_ctx // 2)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="windows per forward pass, a multiple of the device count (default: 8 rounded up to it)")
    p.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR),
                   help="directory with data not shipped in data/eval (ptb/ptb.test.txt, enwik8/enwik8, ...); "
                        "env GPT2JAX_EVAL_DATA (default: %(default)s)")
    p.add_argument("--path", action="append", metavar="KEY=FILE",
                   help="explicit file for one data key (repeatable), e.g. --path ptb=/data/ptb.test.txt; keys: "
                        + ", ".join(all_data_files()))
    p.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="downloads go here (default: %(default)s)")
    p.add_argument("--download", action="store_true", help="fetch missing data from its official source")
    p.add_argument("--limit", type=int, default=None,
                   help="quick run: at most N lines / documents / examples per task (N*1000 bytes for enwik8/text8);"
                        " the output says so")
    p.add_argument("--reference", choices=GPT2_SIZES, default=None,
                   help="which GPT-2 size's published numbers to show (default: the model's own size if it is one, "
                        "else gpt2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="compute dtype override (default: the model's)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def check_args(args) -> None:
    """What can be checked before the model loads: explicit sizes must be positive, --out_dir a directory."""
    for name in ("n_ctx", "stride", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value} (omit it for the default)")
    if args.out_dir and any(p.exists() and not p.is_dir() for p in (Path(args.out_dir), *Path(args.out_dir).parents)):
        raise ConfigError(f"--out_dir {args.out_dir} is (or is inside) a file; give a directory for results.*")


def check_options(args, cfg, tokenizer, n_devices: int) -> tuple[int, int, int]:
    """n_ctx, stride, batch size, validated against the model. Raises ConfigError with the fix."""
    n_ctx = args.n_ctx or cfg.n_positions
    if n_ctx > cfg.n_positions:
        raise ConfigError(
            f"--n_ctx {n_ctx} is longer than the model's context window (n_positions={cfg.n_positions}); pass "
            f"--n_ctx {cfg.n_positions} or less, or omit --n_ctx to use the model's full window.")
    if n_ctx < 2:
        raise ConfigError(f"--n_ctx must be at least 2, got {n_ctx}")
    stride = args.stride or max(1, n_ctx // 2)
    if not 1 <= stride <= n_ctx:
        raise ConfigError(f"--stride {stride} must be between 1 and n_ctx={n_ctx} (n_ctx // 2 is a good default)")
    batch_size = args.batch_size or n_devices * -(-8 // n_devices)  # default: 8, rounded up to split evenly
    check_batch_splits(batch_size, n_devices, "--batch_size")  # the Scorer's default mesh: all devices data-parallel
    if getattr(tokenizer, "name", None) != "gpt2" or tokenizer.n_vocab > cfg.vocab_size:
        raise ConfigError(
            f"the zero-shot tasks need a GPT-2 BPE model (tokenizer 'gpt2', vocab_size >= {GPT2_VOCAB_SIZE}); this "
            f"model uses the {getattr(tokenizer, 'name', '?')!r} tokenizer with vocab_size={cfg.vocab_size}.")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    return n_ctx, stride, batch_size


def _first_lines(text: str, limit: int | None) -> str:
    if limit is None:
        return text
    return "".join(text.splitlines(keepends=True)[:limit])


def run_task(task: Task, files: dict, scorer, tokenizer, n_ctx: int, stride: int, limit: int | None,
             progress: bool) -> list[protocols.Result]:
    """All protocols of one task -> Results (a missing file gives a Result with value None and the reason)."""
    bar = f"{task.name}" if progress else False
    main = files[task.data.key]
    results: list[protocols.Result] = []
    if main.path is None:
        results.append(protocols.Result("paper" if task.kind != "lambada" else "all", "—", None, note=main.missing))
    elif task.kind == "paper_stream":
        text = _first_lines(read_text(main.path), limit)
        results += protocols.paper_perplexity(scorer, tokenizer, text, detokenizer=task.detokenizer, n_ctx=n_ctx,
                                              stride=stride, convention=task.convention, progress=bar)
    elif task.kind == "bytes":
        data = read_bytes(main.path)
        note = "" if len(data) >= task.tail else f"file has only {len(data):,} bytes: all of it scored"
        data = data[-task.tail:]
        if limit is not None:
            data = data[:limit * 1000]
        results += protocols.bits_per_byte(scorer, tokenizer, data, n_ctx=n_ctx, stride=stride,
                                           unit=task.convention, progress=bar)
        results[-1].note += ("; " + note) if note else ""
    elif task.kind == "lambada":
        lines = [l for l in read_text(main.path).splitlines() if l.strip()][:limit]
        try:
            texts = [json.loads(l)["text"] for l in lines]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{main.path}: expected JSON lines with a \"text\" field ({type(e).__name__}: {e})") \
                from None
        results += protocols.lambada(scorer, tokenizer, texts, n_ctx=n_ctx, progress=bar)
    elif task.kind == "cbt":
        try:
            examples = protocols.parse_cbt(read_text(main.path))[:limit]
        except DataError:
            raise
        except ValueError as e:
            raise DataError(f"{main.path}: {e}") from None
        results += protocols.cbt(scorer, tokenizer, examples, n_ctx=n_ctx, progress=bar)
    else:  # pragma: no cover - the registry only holds the kinds above
        raise ValueError(task.kind)
    if task.raw is not None:
        raw = files[task.raw.key]
        if raw.path is None:
            results.append(protocols.Result("lm-eval", "—", None, note=raw.missing))
        else:
            pages = protocols.wikitext_pages(read_text(raw.path))[:limit]
            results += protocols.lm_eval_rolling(scorer, tokenizer, pages, detokenizer=task.detokenizer,
                                                 n_ctx=n_ctx, progress=bar)
    return results


def to_rows(task: Task, results, reference: str, seconds: float, limit: int | None) -> list[dict]:
    rows = []
    for r in results:
        key = (r.protocol, r.metric)
        note = r.note
        if limit is not None and r.value is not None:
            note = f"LIMITED to {limit}; " + note
        rows.append({
            "task": task.name, "title": task.title, "protocol": r.protocol, "metric": r.metric, "value": r.value,
            "paper": task.paper.get(key, {}).get(reference), "lm-eval": task.lm_eval.get(key, {}).get(reference),
            "count": r.count, "convention": r.convention, "note": note, "seconds": round(seconds, 2),
        })
    return rows


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Everything that can be wrong with the options is checked before the model loads or anything compiles.
    check_args(args)
    tasks = parse_task_list(args.tasks)
    overrides = parse_path_overrides(args.path)
    data_dir, cache_dir = Path(args.data_dir).expanduser(), Path(args.cache_dir).expanduser()

    from gpt2jax.weights.load import load_model, logits_bytes  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)

    # CPU: keep freed host memory when the scored logits are large (gpt2jax.runtime.hostmem), before JAX starts
    hostmem.keep_freed_memory(logits_bytes(args.init_from, args.batch_size or 8, args.n_ctx))
    overrides_cfg = {"dtype": args.dtype} if args.dtype else {}
    cfg, params, tokenizer = load_model(args.init_from, **overrides_cfg)
    n_devices = jax.device_count()
    n_ctx, stride, batch_size = check_options(args, cfg, tokenizer, n_devices)
    reference = args.reference or reference_size(cfg) or "gpt2"

    files = {}
    for t in tasks:
        for f in (t.data, t.raw):
            if f is not None:
                files[f.key] = resolve(f, data_dir, cache_dir, overrides, download=args.download)

    from gpt2jax.eval.scoring import Scorer  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)

    banned = protocols.stop_word_ids(tokenizer) if any(t.kind == "lambada" for t in tasks) else None
    scorer = Scorer(cfg, params, batch_size, banned_ids=banned)
    meta = {
        "model": args.init_from, "config": cfg.to_dict(), "reference": reference, "n_ctx": n_ctx, "stride": stride,
        "batch_size": batch_size, "devices": n_devices, "platform": jax.devices()[0].platform, "limit": args.limit,
        "tasks": [t.name for t in tasks], "data": {k: str(v.path) if v.path else None for k, v in files.items()},
    }
    rows = []
    for t in tasks:
        start, positions = time.perf_counter(), scorer.positions_scored
        results = run_task(t, files, scorer, tokenizer, n_ctx, stride, args.limit, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        task_rows = to_rows(t, results, reference, seconds, args.limit)
        for r in task_rows:
            r["positions_per_s"] = round((scorer.positions_scored - positions) / max(seconds, 1e-9), 1)
        rows += task_rows

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.init_from).name or args.init_from)
    out_dir = Path(args.out_dir) if args.out_dir else Path("out") / "eval" / name
    paths = report.write_all(out_dir, rows, meta)
    print(report.console_table(rows, meta))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    from gpt2jax.errors import run_cli

    sys.exit(run_cli(main))
