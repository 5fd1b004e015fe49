"""Data preparation speed: `gpt2jax.data.prepare` vs a tiktoken `encode_ordinary_batch` multiprocessing Pool.

    python bench/bench_prepare.py                       # 100 MB of generated jsonl, workers = cores, 2 repeats
    python bench/bench_prepare.py --mb 20 --workers 2 --repeats 3

The baseline is what one writes by hand (karpathy/llm.c dev/data/fineweb.py, with tiktoken's batch call): the
main process reads the jsonl and parses every line, sends batches of documents to a `multiprocessing.Pool` whose
workers call `encode_ordinary_batch` and send back one uint16 array per batch (end-of-text before each document),
and the main process writes them to a file. gpt2jax's side is `prepare_files` on the same file with the same number
of worker processes (train/val shards, meta.json, input checksum included). Both run in this process, alternately,
on the same cores; the best time of each is compared (ratio = baseline seconds / prepare seconds, so >= 1.0 means
prepare is at least as fast). CPU seconds (user + system, main process and workers) are printed too: on a shared
machine they vary less than wall time. The tokens are checked to be identical: the baseline's documents, assigned to
train/val by prepare's documented rule, must give exactly prepare's two token streams.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt2jax.data import prepare as prep  # noqa: E402
from gpt2jax.data.shards import open_split  # noqa: E402
from gpt2jax.tokenizer import GPT2_EOT_ID, gpt2_tokenizer  # noqa: E402


def make_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """A jsonl corpus of ~mb MB: documents of 200 B to ~30 kB (log-normal, web-page like) made of Tiny
    Shakespeare's words and lines, plus some digits, URLs and non-ASCII text. Returns the number of documents."""
    rng = np.random.default_rng(seed)
    lines = (REPO / "data" / "tinyshakespeare.txt").read_text().split("\n")
    extras = ["https://example.org/page?id=", "naïve café — über", "東京 2024年", "3.14159", "e-mail: a@b.c",
              "    indented code()", "\t\ttabs", "<|endoftext|> in the text is ordinary text"]
    target, written, n = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            size = int(min(30_000, max(200, rng.lognormal(7.6, 1.0))))
            start = int(rng.integers(len(lines)))
            parts, length, i = [], 0, start
            while length < size:
                line = lines[i % len(lines)]
                if rng.random() < 0.05:
                    line += " " + extras[int(rng.integers(len(extras)))] + str(int(rng.integers(10_000)))
                parts.append(line)
                length += len(line) + 1
                i += 1
            row = json.dumps({"id": n, "text": "\n".join(parts)}) + "\n"
            f.write(row)
            written += len(row.encode("utf-8"))
            n += 1
    return n


# ---- the baseline -----------------------------------------------------------------------------------------------

_ENC = None


def _base_init():
    global _ENC
    _ENC = gpt2_tokenizer()._enc


def _base_encode(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tokens = _ENC.encode_ordinary_batch(docs, num_threads=BASELINE_THREADS)
    lens = np.array([len(t) + 1 for t in tokens], np.int64)
    flat = np.empty(int(lens.sum()), np.uint16)
    pos = 0
    for t in tokens:
        flat[pos] = GPT2_EOT_ID
        flat[pos + 1:pos + 1 + len(t)] = t
        pos += len(t) + 1
    return flat, lens


BASELINE_THREADS = 1


def _batches(path: Path, docs_per_batch: int):
    batch = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == docs_per_batch:
                yield batch
                batch = []
    if batch:
        yield batch


def baseline(path: Path, out: Path, workers: int, docs_per_batch: int) -> np.ndarray:
    """Tokens to out (EOT before every document); returns the per-document token counts (with the EOT)."""
    lens = []
    with mp.get_context("fork").Pool(workers, _base_init) as pool, open(out, "wb") as f:
        for flat, n in pool.imap(_base_encode, _batches(path, docs_per_batch), chunksize=1):
            f.write(flat.tobytes())
            lens.append(n)
    return np.concatenate(lens)


def expected_splits(stream: np.ndarray, lens: np.ndarray, val_fraction: float, val_tokens: int):
    """The baseline's documents assigned as prepare documents it (see gpt2jax.data.prepare, --split_by documents)."""
    is_val = prep.is_val_document(np.arange(len(lens)), val_fraction)
    val_total = 0
    for i in np.flatnonzero(is_val):
        if val_tokens and val_total >= val_tokens:
            is_val[i] = False
        else:
            val_total += lens[i]
    mask = np.repeat(is_val, lens)
    return stream[~mask][1:], stream[mask][1:]  # no end-of-text before a split's first document


def main(argv=None) -> dict:
    global BASELINE_THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for both sides")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--docs_per_batch", type=int, default=256, help="baseline documents per Pool task")
    ap.add_argument("--baseline_threads", type=int, default=1,
                    help="encode_ordinary_batch threads per baseline process (tiktoken's default is 8)")
    ap.add_argument("--tmp", default=None, help="where to write the corpus and outputs (default: a temp dir)")
    args = ap.parse_args(argv)
    BASELINE_THREADS = args.baseline_threads
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.tmp))
    try:
        corpus = tmp / "corpus.jsonl"
        t = time.perf_counter()
        n_docs = make_corpus(corpus, args.mb)
        size = corpus.stat().st_size
        print(f"corpus: {size / 1e6:.1f} MB, {n_docs:,} documents ({time.perf_counter() - t:.1f} s to generate); "
              f"{args.workers} worker processes on {os.cpu_count()} cores", flush=True)
        gpt2_tokenizer()  # both sides fork after the tokenizer is built
        times = {"baseline": [], "prepare": []}
        cpus = {"baseline": [], "prepare": []}
        for r in range(args.repeats):
            for side in (("baseline", "prepare") if r % 2 == 0 else ("prepare", "baseline")):
                out = tmp / side
                shutil.rmtree(out, ignore_errors=True)
                load = os.getloadavg()[0]
                c0 = os.times()
                t = time.perf_counter()
                if side == "baseline":
                    out.mkdir()
                    lens = baseline(corpus, out / "tokens.bin", args.workers, args.docs_per_batch)
                else:
                    meta = prep.prepare_files([corpus], out, "gpt2", workers=args.workers)
                dt = time.perf_counter() - t
                c1 = os.times()
                cpu = sum(c1[i] - c0[i] for i in range(4))  # user + system, this process and its (joined) workers
                times[side].append(dt)
                cpus[side].append(cpu)
                print(f"  {side:8s} run {r + 1}: {dt:6.2f} s  ({size / 1e6 / dt:5.1f} MB/s), {cpu:6.2f} CPU-s; "
                      f"load average {load:.1f}", flush=True)
        stream = np.fromfile(tmp / "baseline" / "tokens.bin", np.uint16)
        want_train, want_val = expected_splits(stream, lens, meta["source"]["val_fraction"],
                                               meta["source"]["val_tokens"])
        got_train = np.asarray(open_split(tmp / "prepare", "train").tokens())
        got_val = np.asarray(open_split(tmp / "prepare", "val").tokens())
        identical = bool(np.array_equal(got_train, want_train) and np.array_equal(got_val, want_val))
        best = {k: min(v) for k, v in times.items()}
        ratio = best["baseline"] / best["prepare"]
        cpu_ratio = min(cpus["baseline"]) / min(cpus["prepare"])
        result = {"mb": size / 1e6, "documents": n_docs, "tokens": int(len(stream)), "workers": args.workers,
                  "cores": os.cpu_count(), "baseline_threads": args.baseline_threads, "times_s": times,
                  "cpu_s": cpus, "cpu_ratio": cpu_ratio, "identical_tokens": identical, "ratio": ratio}
        print(f"tokens: {len(stream):,} (train {len(got_train):,}, val {len(got_val):,}); identical: {identical}")
        print(f"best: baseline {best['baseline']:.2f} s, prepare {best['prepare']:.2f} s; "
              f"prepare runs at {ratio:.2f}x the tiktoken Pool baseline (wall clock); "
              f"it uses {1 / cpu_ratio:.2f}x the baseline's CPU time")
        if not identical:
            print("error: the token streams differ", file=sys.stderr)
            sys.exit(1)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
