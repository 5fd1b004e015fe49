"""Sample text from a GPT-2: a training run, a Hugging Face directory, or the official weights.

    python -m gpt2jax.sample --init_from gpt2 --prompt "The quick brown fox" --max_new_tokens 50
    python -m gpt2jax.sample --init_from runs/shakespeare_char --prompt "ROMEO:" --num_samples 3 --top_k 200
    python -m gpt2jax.sample --init_from hf_dir/ --prompt_file story.txt --truncate_prompt --top_p 0.9 --seed 7

Tokens are printed as they are produced. Sample i uses seed + i, so every sample can be reproduced alone.
A sample ends after --max_new_tokens, at <|endoftext|> (GPT-2 BPE), or at the first --stop string.
The prompt plus --max_new_tokens must fit in the model's context window (1024 for GPT-2); --truncate_prompt
drops the oldest prompt tokens instead of failing. Details: docs/sampling.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gpt2jax.generation.generate import GenerationError, Sampling, generate_text_ids, prepare_prompts, prompt_ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpt2jax.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_from", required=True,
                   help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl (hub id, needs the local HF cache or network), a "
                        "Hugging Face GPT-2 directory (config.json + model.safetensors), or a gpt2jax run directory")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="",
                        help="text to continue (default: empty = start from <|endoftext|>, an unconditional sample)")
    prompt.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--max_new_tokens", type=int, default=50, help="tokens to generate per sample (default: 50)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divide the logits by this; 0 = greedy, < 1 = safer, > 1 = more random (default: 1.0)")
    p.add_argument("--top_k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None,
                   help="nucleus sampling: only the most likely tokens whose probabilities sum to p, in (0, 1]")
    p.add_argument("--num_samples", type=int, default=1, help="how many samples (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; sample i uses seed + i (default: 0)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample at this text (not printed); repeatable, e.g. --stop $'\\n\\n'")
    p.add_argument("--truncate_prompt", action="store_true",
                   help="keep only the last prompt tokens that fit in the context window instead of failing")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="compute dtype override (default: the model's)")
    p.add_argument("--out", default=None, help="also write the samples and settings to this JSON file")
    p.add_argument("--quiet", action="store_true", help="print only the generated text (no prompt, no stats)")
    return p


def read_prompt(args) -> str:
    if args.prompt_file is None:
        return args.prompt
    path = Path(args.prompt_file).expanduser()
    if not path.is_file():
        raise GenerationError(f"--prompt_file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"--prompt_file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def check_args(args) -> Sampling:
    """Everything that can be wrong with the options, before the model loads; -> the sampling settings."""
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                        stop=tuple(args.stop))
    if args.max_new_tokens < 1:
        raise GenerationError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise GenerationError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.out and (Path(args.out).is_dir() or any(p.exists() and not p.is_dir() for p in Path(args.out).parents)):
        raise GenerationError(f"--out {args.out} cannot be written (it is a directory, or a parent is a file); "
                              "give a JSON file path")
    return sampling


def encode_prompt(text: str, tokenizer, cfg, max_new_tokens: int, truncate: bool) -> tuple[list[int], int]:
    """-> (prompt ids that fit, number of tokens dropped from the left)."""
    ids = prompt_ids(tokenizer, text)
    kept = prepare_prompts(cfg, [ids], max_new_tokens, truncate)[0]
    return kept, len(ids) - len(kept)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sampling = check_args(args)
    text = read_prompt(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    import jax

    from gpt2jax.weights.load import load_model  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)

    t0 = time.perf_counter()
    cfg, params, tokenizer = load_model(args.init_from, **({"dtype": args.dtype} if args.dtype else {}))
    params = jax.device_put(params)  # once: numpy weights would be copied to the device on every call
    log(f"loaded {args.init_from} ({cfg.n_layer} layers, {cfg.n_embd} wide, context {cfg.n_positions}) "
        f"in {time.perf_counter() - t0:.1f}s")
    prompt, dropped = encode_prompt(text, tokenizer, cfg, args.max_new_tokens, args.truncate_prompt)
    if dropped:
        log(f"note: the prompt was {len(prompt) + dropped} tokens; dropped the first {dropped} to fit "
            f"{args.max_new_tokens} new tokens into the context window of {cfg.n_positions}")

    def write(row, piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    samples = []
    for i in range(args.num_samples):
        if not args.quiet:
            if args.num_samples > 1:
                print(f"---------- sample {i + 1}/{args.num_samples} (seed {args.seed + i})", flush=True)
            sys.stdout.write(tokenizer.decode(prompt) if prompt != [tokenizer.eot_id] else "")
        texts, result = generate_text_ids(cfg, params, tokenizer, [prompt], args.max_new_tokens,
                                          sampling.replace(seed=args.seed + i), on_text=write)
        samples.append({"seed": args.seed + i, "text": texts[0], "new_tokens": len(result.tokens[0])})
        print(flush=True)
        compile_note = f", compile {result.compile_s:.1f}s" if result.compile_s else ""
        log(f"[{len(result.tokens[0])} tokens in {result.run_s:.2f}s, "
            f"{len(result.tokens[0]) / max(result.run_s, 1e-9):.1f} tok/s{compile_note}]")
    if not args.quiet:
        print("----------", flush=True)

    if args.out:
        record = {"init_from": args.init_from, "prompt": tokenizer.decode(prompt), "prompt_tokens": len(prompt),
                  "dropped_prompt_tokens": dropped, "samples": samples,
                  "settings": {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p",
                                                             "seed", "stop", "dtype")}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from gpt2jax.errors import run_cli

    sys.exit(run_cli(main))
