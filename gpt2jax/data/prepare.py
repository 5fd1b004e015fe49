"""Tokenize text into train/val shard files: `python -m gpt2jax.data.prepare --input TEXT... --out DIR`.

Inputs are text files, folders of text files (one document per file), or a Hugging Face dataset (one document
per row; needs `pip install datasets` and network access). Documents are separated by `<|endoftext|>` (GPT-2 BPE;
the char tokenizer has no such token, so its documents are simply concatenated). The output directory gets
`train_000000.bin`, `val_000000.bin`, ... (see `gpt2jax.data.shards` for the format) and `meta.json`.

Train/val split (`--split_by`):
  tokens     the last `--val_fraction` of the token stream is val (nanoGPT's shakespeare split; holds all tokens
             in memory, meant for small corpora);
  documents  every round(1/val_fraction)-th document is val (streams, for large corpora);
  auto       tokens for a single document, documents otherwise.

Tokenization runs in `--workers` processes; large documents are cut at line breaks where GPT-2's pre-tokenizer
always splits anyway, so the tokens equal those of the uncut text.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from gpt2jax.data.shards import META_FILE, TOKEN_DTYPE, write_meta, write_shard
from gpt2jax.errors import DataError
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer, sha256_file, tokenizer_from_dict

CHUNK_CHARS = 1 << 20  # cut documents into ~1 MiB pieces for the worker pool
# A "\n" between two non-space characters is its own pre-token in GPT-2's regex (letters, digits and punctuation
# take at most a leading *space*, never a newline), so cutting right after it cannot change the BPE tokens.
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


# ---- documents ----------------------------------------------------------------------------------------------

def expand_inputs(inputs: Iterable[str], pattern: str) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(q for q in p.rglob(pattern) if q.is_file())
            if not found:
                raise DataError(f"folder {p} holds no files matching --glob {pattern!r}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input {p} does not exist (give text files or folders of them)")
    for f in files:
        if f.stat().st_size == 0:
            raise DataError(f"input {f} is empty; give text files with content")
        with open(f, "rb") as handle:
            if b"\0" in handle.read(1 << 16):
                raise DataError(f"input {f} looks binary (it holds NUL bytes); give UTF-8 text files")
    return files


def file_documents(files: list[Path]) -> Iterator[str]:
    for f in files:
        try:
            yield f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"input {f} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8 "
                            "or leave it out") from None


def load_hf_dataset(name: str, config: str | None, split: str, field: str):
    """A Hugging Face dataset split (downloaded once, then cached by `datasets`); errors surface here, before any
    output is written."""
    try:
        import datasets
    except ImportError:
        raise DataError("--hf_dataset needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, ...: say which and stop
        raise DataError(f"could not load Hugging Face dataset {name!r} ({type(e).__name__}: {e}). It needs network "
                        "access the first time; offline, pass local text files with --input.") from None
    if field not in ds.column_names:
        raise DataError(f"dataset {name!r} has no column {field!r}; columns: {ds.column_names} (use --text_field)")
    return ds


def cut(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut a document into pieces of about max_chars at BPE-safe line breaks (see SAFE_CUT)."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        m = SAFE_CUT.search(text, start + max_chars)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


# ---- tokenization in worker processes ------------------------------------------------------------------------

_TOKENIZER = None


def _init_worker(tok_dict: dict) -> None:
    global _TOKENIZER
    _TOKENIZER = tokenizer_from_dict(tok_dict)


def _encode(job: tuple[int, int, str]) -> tuple[int, int, np.ndarray, int]:
    doc_index, piece_index, text = job
    return doc_index, piece_index, np.asarray(_TOKENIZER.encode(text), TOKEN_DTYPE), len(text)


def _jobs(documents: Iterable[str], max_chars: int) -> Iterator[tuple[int, int, str]]:
    for i, doc in enumerate(documents):
        for j, piece in enumerate(cut(doc, max_chars)):
            yield i, j, piece


def tokenize_documents(documents: Iterable[str], tokenizer, workers: int, total_chars: int | None,
                       max_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (doc_index, tokens) for every document, in order, tokenizing pieces in parallel processes."""
    bar = tqdm(total=total_chars, unit="char", unit_scale=True, desc="tokenize", file=sys.stderr)
    jobs = _jobs(documents, max_chars)
    if workers > 1:
        pool = mp.get_context("fork").Pool(workers, _init_worker, (tokenizer.to_dict(),))
        results = pool.imap(_encode, jobs, chunksize=4)
    else:
        pool = None
        _init_worker(tokenizer.to_dict())
        results = map(_encode, jobs)
    try:
        current, parts = None, []
        for doc_index, _, tokens, n_chars in results:
            bar.update(n_chars)
            if doc_index != current and current is not None:
                yield current, np.concatenate(parts)
                parts = []
            current = doc_index
            parts.append(tokens)
        if current is not None:
            yield current, np.concatenate(parts)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


# ---- shard writing ----------------------------------------------------------------------------------------------

class ShardWriter:
    """Buffers one split's tokens and writes them as `<split>_NNNNNN.bin` files of `shard_tokens` tokens."""

    def __init__(self, out_dir: Path, split: str, fingerprint: str, shard_tokens: int):
        self.out_dir, self.split, self.fingerprint, self.shard_tokens = out_dir, split, fingerprint, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray) -> None:
        self.buffer.append(tokens)
        self.buffered += len(tokens)
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.zeros(0, TOKEN_DTYPE)
        head, rest = data[:n], data[n:]
        name = f"{self.split}_{len(self.shards):06d}.bin"
        write_shard(self.out_dir / name, head, self.fingerprint)
        self.shards.append({"file": name, "tokens": int(len(head)),
                            "max_token_id": int(head.max()) if len(head) else -1})
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)

    def close(self) -> list[dict]:
        if self.buffered or not self.shards:
            self._flush(self.buffered)
        return self.shards


def is_val_document(i: int, val_fraction: float) -> bool:
    """Spread val documents evenly: document i is val when floor((i+1)f) > floor(i f)."""
    return int((i + 1) * val_fraction) > int(i * val_fraction)


def prepare(documents_fn, out_dir: Path, tokenizer, val_fraction: float, split_by: str, shard_tokens: int,
            workers: int, total_chars: int | None, n_documents: int | None, source: dict,
            max_chars: int = CHUNK_CHARS) -> dict:
    """Tokenize `documents_fn()` (an iterable of strings) into out_dir; returns the meta.json dict."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"--shard_tokens must be >= 1, got {shard_tokens}")
    if split_by == "auto":
        split_by = "tokens" if n_documents == 1 else "documents"
    out_dir.mkdir(parents=True, exist_ok=True)
    sep = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    writers = {s: ShardWriter(out_dir, s, tokenizer.fingerprint, shard_tokens) for s in ("train", "val")}
    stream = tokenize_documents(documents_fn(), tokenizer, workers, total_chars, max_chars)
    if split_by == "tokens":
        parts = []
        for i, tokens in stream:
            if i and sep:
                parts.append(np.asarray(sep, TOKEN_DTYPE))
            parts.append(tokens)
        everything = np.concatenate(parts) if parts else np.zeros(0, TOKEN_DTYPE)
        n_train = int(len(everything) * (1 - val_fraction))  # nanoGPT: data[:int(n * 0.9)]
        writers["train"].add(everything[:n_train])
        writers["val"].add(everything[n_train:])
    elif split_by == "documents":
        seen = {"train": False, "val": False}
        for i, tokens in stream:
            split = "val" if is_val_document(i, val_fraction) else "train"
            if seen[split] and sep:
                writers[split].add(np.asarray(sep, TOKEN_DTYPE))
            writers[split].add(tokens)
            seen[split] = True
    else:
        raise DataError(f"--split_by must be auto, tokens or documents, got {split_by!r}")
    splits = {s: w.close() for s, w in writers.items()}
    for s, shards in splits.items():
        if sum(x["tokens"] for x in shards) == 0:
            raise DataError(f"the {s} split is empty: give more text or documents, or use --split_by tokens")
    return write_meta(out_dir, tokenizer, splits, {**source, "val_fraction": val_fraction, "split_by": split_by})


def make_tokenizer(kind: str, documents_fn):
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "char":  # the alphabet is every character of the corpus (nanoGPT shakespeare_char): a first pass
        return CharTokenizer("".join(sorted(set().union(*(set(d) for d in documents_fn())))))
    raise DataError(f"unknown tokenizer {kind!r}; use gpt2 or char")


def prepare_files(files: list[Path], out: Path, tokenizer: str = "gpt2", val_fraction: float = 0.1,
                  split_by: str = "auto", shard_tokens: int = 100_000_000, workers: int = 1,
                  max_chars: int = CHUNK_CHARS) -> dict:
    """Tokenize text files (one document each) into `out`; returns meta.json's content."""
    files = [Path(f) for f in files]
    documents_fn = lambda: file_documents(files)  # noqa: E731
    source = {"inputs": [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]}
    total_chars = sum(len(d) for d in documents_fn()) if len(files) <= 1000 else None
    return prepare(documents_fn, Path(out), make_tokenizer(tokenizer, documents_fn), val_fraction, split_by,
                   shard_tokens, workers, total_chars, len(files), source, max_chars)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m gpt2jax.data.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="text files and/or folders (one document per file)")
    src.add_argument("--hf_dataset", help="Hugging Face dataset name (online only), one document per row")
    ap.add_argument("--hf_config", default=None, help="dataset configuration name, e.g. wikitext-103-raw-v1")
    ap.add_argument("--hf_split", default="train", help="which split of the HF dataset to read")
    ap.add_argument("--text_field", default="text", help="column that holds the text")
    ap.add_argument("--glob", default="*.txt", help="file pattern inside folders (default *.txt)")
    ap.add_argument("--out", required=True, help="output directory (e.g. data/prepared/shakespeare)")
    ap.add_argument("--tokenizer", choices=("gpt2", "char"), default="gpt2")
    ap.add_argument("--val_fraction", type=float, default=0.1)
    ap.add_argument("--split_by", choices=("auto", "tokens", "documents"), default="auto")
    ap.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard file (200 MB)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset in --out")
    args = ap.parse_args(argv)

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a directory for the prepared dataset")
    if args.workers < 0:
        raise SystemExit(f"error: --workers must be >= 0, got {args.workers}")
    if (out / META_FILE).exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already holds a prepared dataset ({META_FILE}); "
                         "pass --overwrite to replace it or choose another --out")
    if out.exists() and args.overwrite:
        for old in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")):
            old.unlink()

    if args.input:
        meta = prepare_files(expand_inputs(args.input, args.glob), out, args.tokenizer, args.val_fraction,
                             args.split_by, args.shard_tokens, args.workers)
    else:
        ds = load_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.text_field)
        documents_fn = lambda: (row[args.text_field] for row in ds)  # noqa: E731
        source = {"hf_dataset": args.hf_dataset, "hf_config": args.hf_config, "hf_split": args.hf_split}
        meta = prepare(documents_fn, out, make_tokenizer(args.tokenizer, documents_fn), args.val_fraction,
                       args.split_by, args.shard_tokens, args.workers, None, len(ds), source)
    for name, s in meta["splits"].items():
        print(f"{name}: {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
    print(f"wrote {out / META_FILE} (tokenizer {meta['fingerprint']})")
    return meta


if __name__ == "__main__":
    from gpt2jax.errors import run_cli

    sys.exit(run_cli(main))
