"""Tokenize a corpus into train/val shard files: `python -m gpt2jax.data.prepare --input CORPUS... --out DIR`.

Inputs (`--input`, files and folders; a folder contributes its files matching `--glob`, recursively, sorted):
  *.txt and other text files  one document per file (UTF-8; \\r\\n and \\r read as \\n)
  *.jsonl / *.ndjson          one document per line: a JSON object whose `--text_field` (default "text") is a string
  *.parquet                   one document per row of column `--text_field` (needs pyarrow: the `data` extra)
`--load_from_disk DIR` reads a `datasets` dataset saved with `save_to_disk` (the `data` extra), `--hf_dataset NAME`
one from the Hugging Face hub (online, needs `datasets`). Documents are separated by `<|endoftext|>` (GPT-2 BPE;
the char tokenizer has no such token, so its documents are simply concatenated).

Output: `train_000000.bin`, `val_000000.bin`, ... (see `gpt2jax.data.shards` for the format) written as the corpus
streams through, and `meta.json`, written last and atomically: a directory without meta.json is unfinished and
readers refuse it. Memory stays bounded whatever the corpus size (a few blocks of text per worker).

Resume: the progress file `prepare.progress.json` records how far the shards are complete. A killed prepare rerun
with the same arguments continues from there and writes exactly the tokens an uninterrupted prepare would have.
`--overwrite` builds the new dataset beside the old one (`.<out>.prepare-new`) and swaps it in at the end, so a
failed or killed rebuild leaves the old dataset whole.

Train/val split (`--split_by`):
  documents  every round(1/val_fraction)-th document is val while val holds fewer than `--val_tokens` tokens
             (counting one separator per document; default 5,000,000, nanoGPT holds out ~4.4M tokens of
             OpenWebText); later documents are all train. A corpus whose val share stays under the cap is split
             exactly as before the cap existed.
  tokens     the last val_fraction of the token stream is val (nanoGPT's shakespeare split), at most --val_tokens;
  auto       tokens for a single text file, documents otherwise.
`--val_tokens 0` removes the cap (val is then val_fraction of the corpus).

Tokenization runs in `--workers` processes; each reads its own block of input (jsonl lines, a parquet row group,
files, or a piece of a large text file cut at a line break between two ASCII non-space characters, where GPT-2's
pre-tokenizer always splits, so the tokens equal those of the uncut text) and sends back uint16 tokens.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from gpt2jax.data.shards import (HEADER_BYTES, META_FILE, PROGRESS_FILE, TOKEN_DTYPE, make_header, shard_names,
                                 write_meta)
from gpt2jax.errors import DataError
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer, sha256_file, tokenizer_from_dict

CHUNK_CHARS = 1 << 20  # input bytes per worker job (a block of jsonl lines, a piece of a large text file)
DEFAULT_VAL_TOKENS = 5_000_000
DISK_ROWS = 1024  # rows per job for a dataset saved to disk
COMMIT_SECONDS = 1.0  # how often the progress file is rewritten
PROGRESS_VERSION = 1
DATA_EXTRA = "pip install 'gpt2jax[data]' (or pip install pyarrow datasets)"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# A "\n" between two non-space characters is its own pre-token in GPT-2's regex (letters, digits and punctuation
# take at most a leading *space*, never a newline), so cutting right after it cannot change the BPE tokens.
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_ASCII_NONSPACE = bytes(range(0x21, 0x7F))


# ---- inputs -------------------------------------------------------------------------------------------------

def input_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"parquet input needs pyarrow: {DATA_EXTRA}") from None
    return pq


def expand_inputs(inputs: Iterable[str], pattern: str, text_field: str = "text") -> list[Path]:
    """The input files, checked (exist, non-empty, not binary, jsonl/parquet hold `text_field`) before anything
    is written."""
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
            raise DataError(f"input {p} does not exist (give text, jsonl or parquet files, or folders of them)")
    for f in files:
        if f.stat().st_size == 0:
            raise DataError(f"input {f} is empty; give files with content")
        kind = input_kind(f)
        with open(f, "rb") as handle:
            head = handle.read(1 << 16)
        if kind == "parquet":
            pq = _pyarrow()
            try:
                names = pq.ParquetFile(f).schema_arrow.names
            except Exception as e:
                raise DataError(f"input {f} is not a readable parquet file ({type(e).__name__}: {e})") from None
            if text_field not in names:
                raise DataError(f"parquet file {f} has no column {text_field!r}; columns: {names} (use --text_field)")
            continue
        if b"\0" in head:
            raise DataError(f"input {f} looks binary (it holds NUL bytes); give UTF-8 text, jsonl or parquet files")
        if kind == "jsonl":
            first = head.split(b"\n", 1)[0]
            if len(first) < len(head) or len(head) == f.stat().st_size:
                _json_text(first, text_field, f, 1)
    return files


def _json_text(line: bytes, field: str, path, line_no: int) -> str:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} line {line_no} is not a JSON object ({e}); jsonl needs one object per line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
        got = type(obj.get(field)).__name__ if isinstance(obj, dict) and field in obj else "no such field"
        raise DataError(f"{path} line {line_no} has no string field {field!r} ({got}); use --text_field")
    return obj[field]


def load_hf_dataset(name: str, config: str | None, split: str, field: str):
    """A Hugging Face dataset split (downloaded once, then cached by `datasets`); errors surface here, before any
    output is written."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"--hf_dataset needs the `datasets` package: {DATA_EXTRA}") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, ...: say which and stop
        raise DataError(f"could not load Hugging Face dataset {name!r} ({type(e).__name__}: {e}). It needs network "
                        "access the first time; offline, pass local files with --input.") from None
    if field not in ds.column_names:
        raise DataError(f"dataset {name!r} has no column {field!r}; columns: {ds.column_names} (use --text_field)")
    return ds


def load_disk_dataset(path: str, split: str, field: str):
    """A `datasets` Dataset (or one split of a DatasetDict) saved with `save_to_disk`."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"--load_from_disk needs the `datasets` package: {DATA_EXTRA}") from None
    if not Path(path).is_dir():
        raise DataError(f"--load_from_disk {path} is not a directory (give what Dataset.save_to_disk wrote)")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(f"could not load the dataset saved in {path} ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path} holds splits {sorted(ds)}, not {split!r} (use --hf_split)")
        ds = ds[split]
    if field not in ds.column_names:
        raise DataError(f"dataset in {path} has no column {field!r}; columns: {ds.column_names} (use --text_field)")
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


def _text_cuts(path: Path, block: int) -> Iterator[tuple[int, int]]:
    """Byte ranges of a large text file, each ending right after a "\\n" that sits between two ASCII non-space
    bytes (a BPE-safe cut, as SAFE_CUT; also never inside a \\r\\n pair or a UTF-8 sequence)."""
    size = path.stat().st_size
    start = 0
    with open(path, "rb") as f:
        while size - start > block:
            pos, found = start + block, None
            while found is None and pos < size:
                f.seek(pos - 1)
                window = f.read(1 << 16)
                for m in re.finditer(rb"(?<=[\x21-\x7e])\n(?=[\x21-\x7e])", window):
                    found = pos - 1 + m.end()
                    break
                pos += len(window) - 2
                if len(window) < 3:
                    break
            if found is None:
                break
            yield start, found
            start = found
    yield start, size


# ---- jobs: what one worker reads and tokenizes -----------------------------------------------------------------
# Each job yields "units": documents, or pieces of a large text file where only the first piece starts a document.
# The job list is a pure function of the inputs and the block size, so a resumed prepare skips whole jobs.

def make_jobs(files: list[Path], text_field: str, block: int) -> Iterator[tuple[tuple, int]]:
    """(job, input bytes it covers) for every input file, in order."""
    group, group_bytes = [], 0
    for f in files:
        kind, size = input_kind(f), f.stat().st_size
        if kind != "text" or size > block:
            if group:
                yield ("texts", group), group_bytes
                group, group_bytes = [], 0
        if kind == "text":
            if size > block:
                for i, (a, b) in enumerate(_text_cuts(f, block)):
                    yield ("piece", str(f), a, b, i == 0), b - a
            else:
                group.append(str(f))
                group_bytes += size
                if group_bytes >= block:
                    yield ("texts", group), group_bytes
                    group, group_bytes = [], 0
        elif kind == "jsonl":
            with open(f, "rb") as handle:
                start = 0
                while start < size:
                    handle.seek(min(start + block, size))
                    handle.readline()
                    end = min(handle.tell(), size)
                    yield ("jsonl", str(f), start, end, text_field), end - start
                    start = end
        else:
            meta = _pyarrow().ParquetFile(f).metadata
            for rg in range(meta.num_row_groups):
                yield ("parquet", str(f), rg, text_field), meta.row_group(rg).total_byte_size
    if group:
        yield ("texts", group), group_bytes


def row_jobs(n_rows: int, source: tuple) -> Iterator[tuple[tuple, int]]:
    for start in range(0, n_rows, DISK_ROWS):
        end = min(start + DISK_ROWS, n_rows)
        yield (*source, start, end), end - start


def text_jobs(texts: Iterable[str], block: int) -> Iterator[tuple[tuple, int]]:
    """Jobs that carry their text (rows of an online dataset)."""
    group, size = [], 0
    for t in texts:
        group.append(t)
        size += len(t)
        if size >= block:
            yield ("strs", group), size
            group, size = [], 0
    if group:
        yield ("strs", group), size


_TOKENIZER = None
_DATASETS: dict = {}  # datasets opened in this process (a fork inherits the parent's)


def _init_worker(tok_dict: dict | None) -> None:
    global _TOKENIZER
    _TOKENIZER = None if tok_dict is None else tokenizer_from_dict(tok_dict)


def _read_text(path: str, start: int = 0, end: int | None = None) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read() if end is None else f.read(end - start)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"input {path} is not UTF-8 text (byte {start + e.start}: {e.reason}); convert it to UTF-8 "
                        "or leave it out") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # what Path.read_text (universal newlines) reads


def job_texts(job: tuple) -> tuple[list[str], bool]:
    """The units of a job and whether its first unit starts a document."""
    kind = job[0]
    if kind == "texts":
        return [_read_text(p) for p in job[1]], True
    if kind == "piece":
        _, path, start, end, first = job
        return [_read_text(path, start, end)], first
    if kind == "jsonl":
        _, path, start, end, field = job
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read(end - start).split(b"\n")
        texts = []
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    texts.append(_json_text(line, field, path, i))
                except DataError as e:  # the line number is relative to the block: the parent adds the offset
                    raise _LineError(i, str(e)) from None
        return texts, True
    if kind == "parquet":
        _, path, rg, field = job
        column = _pyarrow().ParquetFile(path).read_row_group(rg, columns=[field]).column(0).to_pylist()
        for i, t in enumerate(column):
            if not isinstance(t, str):
                raise DataError(f"parquet file {path} row group {rg} row {i}: {field!r} is {type(t).__name__}, "
                                "not a string")
        return column, True
    if kind == "disk":
        _, path, split, field, start, end = job
        if path not in _DATASETS:
            _DATASETS[path] = load_disk_dataset(path, split, field)
        texts = _DATASETS[path][start:end][field]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"dataset {path} row {start + i}: {field!r} is {type(t).__name__}, not a string")
        return texts, True
    if kind == "strs":
        return job[1], True
    raise ValueError(f"unknown job {kind!r}")


class _LineError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(line, message)
        self.line, self.message = line, message


def _encode_ordinary(enc, text: str) -> np.ndarray:
    """tiktoken's encode_ordinary as a uint32 array (no list of Python ints)."""
    try:
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates (possible in JSON): what encode_ordinary does with them
        return np.asarray(enc.encode_ordinary(text), np.uint32)


def _encode_texts(tokenizer, texts: list[str], first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint16 tokens, per-text counts), with the end-of-text id before every text that starts a document."""
    eot, enc = tokenizer.eot_id, getattr(tokenizer, "_enc", None)
    if enc is None:  # char
        token_lists = [np.asarray(tokenizer.encode(t), TOKEN_DTYPE) for t in texts]
    else:
        # One document at a time through a thread, as tiktoken's encode_ordinary_batch does: same tokens and CPU
        # time as a plain loop, but on a loaded machine the scheduler runs a worker that hands each document to a
        # thread ~1.5x sooner than one long compute loop (measured on a shared 2-core VM, bench/bench_prepare.py).
        with ThreadPoolExecutor(1) as pool:
            token_lists = list(pool.map(functools.partial(_encode_ordinary, enc), texts))
    lens = np.fromiter((len(t) for t in token_lists), np.int64, count=len(token_lists))
    parts = token_lists
    if eot is not None and len(token_lists):
        sep = np.array([eot], TOKEN_DTYPE)
        parts = [x for i, t in enumerate(token_lists) for x in ((sep, t) if first or i else (t,))]
        lens += 1
        if not first:
            lens[0] -= 1
    flat = np.concatenate(parts).astype(TOKEN_DTYPE, copy=False) if parts else np.zeros(0, TOKEN_DTYPE)
    return flat, lens


def encode_job(job: tuple):
    """Tokens of a job: (flat uint16 tokens, per-unit token counts, whether the first unit starts a document) where
    every unit that starts a document is preceded by the end-of-text id (when the tokenizer has one); or
    ("error", message, line) for bad input."""
    try:
        texts, first = job_texts(job)
        flat, lens = _encode_texts(_TOKENIZER, texts, first)
        return flat, lens, first
    except _LineError as e:
        return "error", e.message, e.line
    except DataError as e:
        return "error", str(e), None
    except Exception as e:  # the tokenizer's own errors (a char outside the alphabet)
        return "error", f"{type(e).__name__}: {e}", None


def chars_job(job: tuple):
    try:
        chars = set()
        for t in job_texts(job)[0]:
            chars.update(t)
        return chars
    except _LineError as e:
        return "error", e.message, e.line
    except DataError as e:
        return "error", str(e), None


def run_jobs(fn, jobs: Iterable[tuple[tuple, int]], workers: int, tok_dict: dict | None, bar=None,
             max_in_flight: int | None = None) -> Iterator:
    """fn(job) for every job, in order, in `workers` processes with at most 4 jobs per worker in flight, and at most
    `max_in_flight` units of input (the jobs' sizes: bytes, rows) unless a single job is larger. Memory stays
    bounded: jobs are read lazily. Yields (job, result)."""
    if workers <= 1:
        _init_worker(tok_dict)
        for job, n in jobs:
            result = fn(job)
            if bar is not None:
                bar.update(n)
            yield job, result
        return
    # fork is fastest, but not from a process that imported JAX (its threads make fork unsafe): then a forkserver
    context = mp.get_context("forkserver" if "jax" in sys.modules else "fork")
    pool = context.Pool(workers, _init_worker, (tok_dict,))
    try:
        pending: collections.deque = collections.deque()
        in_flight = 0
        for job, n in jobs:
            pending.append((job, n, pool.apply_async(fn, (job,))))
            in_flight += n
            # room for a slow worker (the others run on), but not for unbounded input (a few large parquet row groups)
            while len(pending) >= 4 * workers or (max_in_flight and len(pending) > 1 and in_flight > max_in_flight):
                j, m, r = pending.popleft()
                in_flight -= m
                result = r.get()
                if bar is not None:
                    bar.update(m)
                yield j, result
        while pending:
            j, m, r = pending.popleft()
            result = r.get()
            if bar is not None:
                bar.update(m)
            yield j, result
    finally:
        pool.terminate()
        pool.join()


# ---- shard writing ----------------------------------------------------------------------------------------------

class ShardStream:
    """Appends one split's tokens to `<split>_NNNNNN.bin` files of `shard_tokens` tokens as they come. A shard is
    written in place: a placeholder header, the tokens, then the real header when it is full or at close. `state()`
    (stored in the progress file) is enough to continue after a kill: `resume` cuts the open shard back to it."""

    def __init__(self, out_dir: Path, split: str, fingerprint: str, shard_tokens: int, state: dict | None = None):
        self.out_dir, self.split, self.fingerprint, self.shard_tokens = out_dir, split, fingerprint, shard_tokens
        state = state or {"shards": [], "open": None}
        self.shards: list[dict] = [dict(s) for s in state["shards"]]
        self.open: dict | None = dict(state["open"]) if state["open"] else None
        self.file = None
        keep = {s["file"] for s in self.shards} | ({self.open["file"]} if self.open else set())
        for p in shard_names(out_dir, split):
            if p.name not in keep:  # written after the last recorded progress
                p.unlink()
        for s in self.shards:
            path = out_dir / s["file"]
            if not path.is_file() or path.stat().st_size != HEADER_BYTES + 2 * s["tokens"]:
                raise DataError(f"{path} is missing or changed since it was written; the unfinished prepare in "
                                f"{out_dir} cannot resume: rerun with --overwrite")
        if self.open:
            path = out_dir / self.open["file"]
            if not path.is_file() or path.stat().st_size < HEADER_BYTES + 2 * self.open["tokens"]:
                raise DataError(f"{path} is shorter than the progress file records; the unfinished prepare in "
                                f"{out_dir} cannot resume: rerun with --overwrite")
            self.file = open(path, "r+b")
            self.file.truncate(HEADER_BYTES + 2 * self.open["tokens"])
            self.file.seek(0, os.SEEK_END)

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + (self.open["tokens"] if self.open else 0)

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.open is None:
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self.file = open(self.out_dir / name, "w+b")
                self.file.write(make_header(0, self.fingerprint).tobytes())
                self.open = {"file": name, "tokens": 0, "max_token_id": -1}
            room = self.shard_tokens - self.open["tokens"]
            head, tokens = tokens[:room], tokens[room:]
            self.file.write(np.ascontiguousarray(head, TOKEN_DTYPE).tobytes())
            self.open["tokens"] += len(head)
            self.open["max_token_id"] = max(self.open["max_token_id"], int(head.max()))
            if self.open["tokens"] == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        if self.open is None:  # an empty split still gets one (empty) shard
            name = f"{self.split}_{len(self.shards):06d}.bin"
            self.file = open(self.out_dir / name, "w+b")
            self.open = {"file": name, "tokens": 0, "max_token_id": -1}
        self.file.seek(0)
        self.file.write(make_header(self.open["tokens"], self.fingerprint).tobytes())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.shards.append(self.open)
        self.open, self.file = None, None

    def sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def state(self) -> dict:
        return {"shards": [dict(s) for s in self.shards], "open": dict(self.open) if self.open else None}

    def close(self) -> list[dict]:
        if self.open is not None or not self.shards:
            self._finish()
        return self.shards

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def is_val_document(i, val_fraction: float):
    """Spread val documents evenly: document i is val when floor((i+1)f) > floor(i f) (works on arrays too)."""
    i = np.asarray(i, np.int64)
    return np.floor((i + 1) * val_fraction).astype(np.int64) > np.floor(i * val_fraction).astype(np.int64)


def split_counts(n_tokens: int, val_fraction: float, val_tokens: int) -> tuple[int, int]:
    """(train, val) token counts of the `tokens` split: nanoGPT's data[:int(n * 0.9)], val at most val_tokens."""
    n_train = int(n_tokens * (1 - val_fraction))
    if val_tokens and n_tokens - n_train > val_tokens:
        n_train = n_tokens - val_tokens
    return n_train, n_tokens - n_train


# ---- the progress file -------------------------------------------------------------------------------------------

def _write_json_atomic(path: Path, obj: dict, sync: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_progress(out: Path) -> dict | None:
    try:
        progress = json.loads((out / PROGRESS_FILE).read_text(encoding="utf-8"))
        return progress if isinstance(progress, dict) and progress.get("version") == PROGRESS_VERSION else None
    except (OSError, ValueError):
        return None


class Prepare:
    """One prepare into `out` (the final directory, or the staging one of --overwrite), resuming its progress file
    when the settings match."""

    def __init__(self, out: Path, settings: dict, tokenizer, command: list[str]):
        self.out, self.settings, self.tokenizer = out, settings, tokenizer
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the output directory {out} ({e.strerror or e}); choose another --out") \
                from None
        progress = _read_progress(out)
        if progress is not None and progress.get("settings") != settings:
            print(f"{out} holds an unfinished prepare with other inputs or settings: starting over", file=sys.stderr)
            progress = None
        if progress is None:
            for p in shard_names(out, "train") + shard_names(out, "val"):
                p.unlink()
            progress = {"version": PROGRESS_VERSION, "settings": settings, "command": command, "phase": "stream",
                        "jobs_done": 0, "docs": 0, "val_counted": 0, "last_split": None,
                        "seen": {"train": False, "val": False},
                        "streams": {"train": None, "val": None}}
            (out / META_FILE).unlink(missing_ok=True)
            _write_json_atomic(out / PROGRESS_FILE, progress)
        elif progress["jobs_done"]:
            print(f"resuming the unfinished prepare in {out} after {progress['jobs_done']} blocks of input",
                  file=sys.stderr)
        self.progress = progress
        self.last_commit = time.monotonic()
        self.committed_shards = -1

    def commit(self, streams: dict, force: bool = False) -> None:
        """Record the progress: about once a second, and whenever a shard was completed."""
        n_shards = sum(len(s.shards) for s in streams.values())
        if not force and time.monotonic() - self.last_commit < COMMIT_SECONDS and n_shards == self.committed_shards:
            return
        self.committed_shards = n_shards
        for s in streams.values():
            s.sync()
        self.progress["streams"] = {k: s.state() for k, s in streams.items()}
        _write_json_atomic(self.out / PROGRESS_FILE, self.progress)
        self.last_commit = time.monotonic()


def prepare_stream(prep: Prepare, jobs_fn, workers: int, total: int | None, unit: str) -> dict:
    """Tokenize every job into out's shards; returns the per-split shard lists (before meta.json)."""
    st, p, tok = prep.settings, prep.progress, prep.tokenizer
    if p["phase"] == "stream":
        streams = {s: ShardStream(prep.out, s, tok.fingerprint, st["shard_tokens"], p["streams"][s])
                   for s in ("train", "val")}
        try:
            _stream(prep, streams, jobs_fn, workers, total, unit)
        finally:
            for s in streams.values():
                s.sync()
        if st["split_by"] == "tokens":  # everything went to train so far; the tail becomes val below
            p["phase"], p["n_tokens"] = "split", streams["train"].n_tokens
        else:
            p["phase"] = "close"
        prep.commit(streams, force=True)
        for s in streams.values():
            s.abandon()
    if p["phase"] == "split":
        streams = _split_tail(prep)
    else:
        streams = {s: ShardStream(prep.out, s, tok.fingerprint, st["shard_tokens"], p["streams"][s])
                   for s in ("train", "val")}
    splits = {s: w.close() for s, w in streams.items()}
    for s, shards in splits.items():
        if sum(x["tokens"] for x in shards) == 0:
            raise DataError(f"the {s} split is empty: give more text or documents, or use --split_by tokens")
    return splits


def _stream(prep: Prepare, streams: dict, jobs_fn, workers: int, total: int | None, unit: str) -> None:
    st, p, tok = prep.settings, prep.progress, prep.tokenizer
    by_docs = st["split_by"] == "documents"
    f, cap = st["val_fraction"], st["val_tokens"]
    bar = tqdm(total=total, unit=unit, unit_scale=True, desc="tokenize", file=sys.stderr)
    jobs = jobs_fn()
    try:
        for _ in range(p["jobs_done"]):  # done before a kill: skip (the job list is deterministic)
            job, n = next(jobs)
            bar.update(n)
        limit = 4 * max(workers, 1) * st["block"] if unit == "B" else None
        for job, result in run_jobs(encode_job, jobs, workers, tok.to_dict(), bar, limit):
            if isinstance(result[0], str):
                _, message, line = result
                if line is not None:  # a jsonl line: make its number absolute
                    message = re.sub(r" line \d+ ", f" line {_line_number(job, line)} ", message, count=1)
                raise DataError(message)
            flat, lens, first = result
            starts = np.ones(len(lens), bool)
            if not first and len(lens):
                starts[0] = False
            n_docs = int(starts.sum())
            doc_ids = p["docs"] + np.cumsum(starts) - 1
            if by_docs:
                is_val = is_val_document(doc_ids, f) & starts
                if cap and is_val.any():  # the val candidates that fit under the cap: a prefix of them
                    val_lens = np.where(is_val, lens, 0)
                    is_val &= p["val_counted"] + np.cumsum(val_lens) - val_lens < cap
                if not first and len(lens):
                    is_val[0] = p["last_split"] == "val"
                p["val_counted"] += int(lens[is_val].sum())
            else:
                is_val = np.zeros(len(lens), bool)
            for split, mask in (("train", ~is_val), ("val", is_val)):
                if not mask.any():
                    continue
                tokens = flat if mask.all() else flat[np.repeat(mask, lens)]
                if not p["seen"][split]:  # its first unit starts a document: no separator before it
                    tokens = tokens[1:] if tok.eot_id is not None else tokens
                    p["seen"][split] = True
                streams[split].write(tokens)
            if len(lens):
                p["last_split"] = "val" if is_val[-1] else "train"
            p["docs"] += n_docs
            p["jobs_done"] += 1
            prep.commit(streams)
    finally:
        bar.close()


def _line_number(job: tuple, line_in_block: int) -> int:
    """1-based line number in the file of line `line_in_block` (0-based) of a jsonl job."""
    _, path, start, _, _ = job
    with open(path, "rb") as f:
        n = 0
        left = start
        while left:
            chunk = f.read(min(left, 1 << 20))
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n + line_in_block + 1


def _read_tokens(path: Path, offset: int, count: int) -> np.ndarray:
    return np.fromfile(path, TOKEN_DTYPE, count=count, offset=HEADER_BYTES + 2 * offset)


def _split_tail(prep: Prepare) -> dict:
    """`tokens` split: move the last val tokens of the train stream into val shards, then cut train back. Each
    step can be redone after a kill (the train shards are cut only once val is written in full)."""
    p, st, out, tok = prep.progress, prep.settings, prep.out, prep.tokenizer
    train_state = p["streams"]["train"]
    shards = train_state["shards"] + ([train_state["open"]] if train_state["open"] else [])
    n_train, n_val = split_counts(p["n_tokens"], st["val_fraction"], st["val_tokens"])
    if "train_cut" not in p:
        val = ShardStream(out, "val", tok.fingerprint, st["shard_tokens"])
        begin = 0
        for s in shards:  # copy tokens [n_train, n) in bounded pieces
            lo, hi = max(n_train, begin), begin + s["tokens"]
            for a in range(lo, hi, 1 << 22):
                val.write(_read_tokens(out / s["file"], a - begin, min(hi, a + (1 << 22)) - a))
            begin += s["tokens"]
        val.close()
        p["streams"]["val"] = val.state()
        kept, begin = [], 0
        for s in shards:
            if begin < n_train:
                kept.append({"file": s["file"], "tokens": min(s["tokens"], n_train - begin)})
            begin += s["tokens"]
        p["train_cut"] = kept
        _write_json_atomic(out / PROGRESS_FILE, p)
    kept = {s["file"]: s["tokens"] for s in p["train_cut"]}
    for path in shard_names(out, "train"):
        if path.name not in kept:
            path.unlink()
    train_shards = []
    for name, n in kept.items():  # cut in place: header count, length, max id (all idempotent)
        path = out / name
        with open(path, "r+b") as f:
            f.truncate(HEADER_BYTES + 2 * n)
            f.write(make_header(n, tok.fingerprint).tobytes())
            f.flush()
            os.fsync(f.fileno())
        top = -1
        for a in range(0, n, 1 << 22):
            top = max(top, int(_read_tokens(path, a, min(n - a, 1 << 22)).max()))
        train_shards.append({"file": name, "tokens": n, "max_token_id": top})
    train = ShardStream(out, "train", tok.fingerprint, st["shard_tokens"], {"shards": train_shards, "open": None})
    val = ShardStream(out, "val", tok.fingerprint, st["shard_tokens"], p["streams"]["val"])
    return {"train": train, "val": val}


# ---- the whole prepare ---------------------------------------------------------------------------------------

def _staging(out: Path) -> Path:
    out = out.resolve()  # (`--out .` has no name of its own)
    return out.parent / f".{out.name}.prepare-new"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the dataset in `out` by the finished one in `staging`, keeping any other files `out` holds."""
    ours = re.compile(r"^(meta\.json|(train|val)_\d{6}\.bin|" + re.escape(PROGRESS_FILE) + r")$")
    for entry in out.iterdir():
        if not ours.match(entry.name):
            os.rename(entry, staging / entry.name)
    if _exchange(staging, out):
        shutil.rmtree(staging)
        return
    old = out.parent / f".{out.name}.prepare-old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)


def run_prepare(out: Path, settings: dict, tokenizer_fn, jobs_fn, workers: int, total: int | None, unit: str,
                source: dict, overwrite: bool, command: list[str]) -> dict:
    """Prepare into `out` (resuming an unfinished prepare there; with overwrite, building beside a finished one and
    swapping it in at the end). Returns meta.json's content."""
    if not 0.0 < settings["val_fraction"] < 1.0:
        raise DataError(f"--val_fraction must be in (0, 1), got {settings['val_fraction']}")
    if settings["val_tokens"] < 0:
        raise DataError(f"--val_tokens must be >= 0 (0: no cap), got {settings['val_tokens']}")
    if settings["shard_tokens"] < 1:
        raise DataError(f"--shard_tokens must be >= 1, got {settings['shard_tokens']}")
    if settings["split_by"] not in ("tokens", "documents"):
        raise DataError(f"--split_by must be auto, tokens or documents, got {settings['split_by']!r}")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory for the prepared dataset")
    finished = (out / META_FILE).exists() and not (out / PROGRESS_FILE).exists()
    if (out / META_FILE).exists() and (out / PROGRESS_FILE).exists():  # killed just after finishing
        (out / PROGRESS_FILE).unlink()
        finished = True
    if finished and not overwrite:
        raise DataError(f"{out} already holds a prepared dataset ({META_FILE}); "
                        "pass --overwrite to replace it or choose another --out")
    target = _staging(out) if finished else out
    progress = _read_progress(target)
    recorded = dict((progress or {}).get("settings") or {})
    recorded.pop("fingerprint", None)
    if recorded == settings and "tokenizer_dict" in progress:
        tokenizer = tokenizer_from_dict(progress["tokenizer_dict"])  # e.g. the char alphabet: no second pass
    else:
        tokenizer = tokenizer_fn()
    prep = Prepare(target, {**settings, "fingerprint": tokenizer.fingerprint}, tokenizer, command)
    prep.progress["tokenizer_dict"] = tokenizer.to_dict()
    splits = prepare_stream(prep, jobs_fn, workers, total, unit)
    meta = write_meta(target, tokenizer, splits, source)
    (target / PROGRESS_FILE).unlink()
    if target != out:
        _swap_in(target, out.resolve())
    return meta


def _char_tokenizer(jobs_fn, workers: int) -> CharTokenizer:
    """nanoGPT shakespeare_char: the alphabet is every character of the corpus (a first pass, in the workers)."""
    chars: set = set()
    for job, result in run_jobs(chars_job, jobs_fn(), workers, None):
        if isinstance(result, tuple):
            _, message, line = result
            if line is not None:
                message = re.sub(r" line \d+ ", f" line {_line_number(job, line)} ", message, count=1)
            raise DataError(message)
        chars |= result
    if not chars:
        raise DataError("the corpus holds no characters")
    return CharTokenizer("".join(sorted(chars)))


def make_tokenizer_fn(kind: str, jobs_fn, workers: int):
    if kind == "gpt2":
        return gpt2_tokenizer
    if kind == "char":
        return lambda: _char_tokenizer(jobs_fn, workers)
    raise DataError(f"unknown tokenizer {kind!r}; use gpt2 or char")


def _settings(tokenizer: str, val_fraction: float, val_tokens: int, split_by: str, shard_tokens: int,
              block: int, inputs: dict) -> dict:
    return {"tokenizer": tokenizer, "val_fraction": val_fraction, "val_tokens": val_tokens, "split_by": split_by,
            "shard_tokens": shard_tokens, "block": block, "inputs": inputs}


def prepare_files(files: list[Path], out: Path, tokenizer: str = "gpt2", val_fraction: float = 0.1,
                  split_by: str = "auto", shard_tokens: int = 100_000_000, workers: int = 1,
                  max_chars: int = CHUNK_CHARS, val_tokens: int = DEFAULT_VAL_TOKENS, text_field: str = "text",
                  overwrite: bool = False, command: list[str] | None = None) -> dict:
    """Tokenize input files (text: one document each; jsonl: one per line; parquet: one per row) into `out`;
    returns meta.json's content."""
    files = [Path(f) for f in files]
    if split_by == "auto":
        split_by = "tokens" if len(files) == 1 and input_kind(files[0]) == "text" else "documents"
    stats = [(f, f.stat()) for f in files]
    inputs = {"files": [[str(f), s.st_size, s.st_mtime_ns] for f, s in stats], "text_field": text_field}
    jobs_fn = lambda: make_jobs(files, text_field, max_chars)  # noqa: E731
    settings = _settings(tokenizer, val_fraction, val_tokens, split_by, shard_tokens, max_chars, inputs)
    source = {"inputs": [{"path": str(f), "bytes": s.st_size, "sha256": sha256_file(f)} for f, s in stats],
              "val_fraction": val_fraction, "val_tokens": val_tokens, "split_by": split_by}
    if any(input_kind(f) != "text" for f in files):
        source["text_field"] = text_field
    return run_prepare(Path(out), settings, make_tokenizer_fn(tokenizer, jobs_fn, workers), jobs_fn, workers,
                       sum(s.st_size for _, s in stats), "B", source, overwrite, command or [])


def prepare_dataset(ds, out: Path, description: dict, jobs_fn, tokenizer: str, val_fraction: float,
                    split_by: str, shard_tokens: int, workers: int, val_tokens: int, overwrite: bool,
                    command: list[str], block: int = DISK_ROWS) -> dict:
    if split_by == "auto":
        split_by = "tokens" if len(ds) == 1 else "documents"
    settings = _settings(tokenizer, val_fraction, val_tokens, split_by, shard_tokens, block,
                         {**description, "rows": len(ds)})
    source = {**description, "val_fraction": val_fraction, "val_tokens": val_tokens, "split_by": split_by}
    return run_prepare(Path(out), settings, make_tokenizer_fn(tokenizer, jobs_fn, workers), jobs_fn, workers,
                       len(ds), "row", source, overwrite, command)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m gpt2jax.data.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="text/jsonl/parquet files and/or folders of them")
    src.add_argument("--load_from_disk", help="a `datasets` dataset saved with save_to_disk (one document per row)")
    src.add_argument("--hf_dataset", help="Hugging Face dataset name (online only), one document per row")
    ap.add_argument("--hf_config", default=None, help="dataset configuration name, e.g. wikitext-103-raw-v1")
    ap.add_argument("--hf_split", default="train", help="which split of the HF / saved dataset to read")
    ap.add_argument("--text_field", default="text", help="jsonl field / parquet or dataset column with the text")
    ap.add_argument("--glob", default="*.txt", help="file pattern inside folders (default *.txt; e.g. '*.jsonl')")
    ap.add_argument("--out", required=True, help="output directory (e.g. data/prepared/shakespeare)")
    ap.add_argument("--tokenizer", choices=("gpt2", "char"), default="gpt2")
    ap.add_argument("--val_fraction", type=float, default=0.1)
    ap.add_argument("--val_tokens", type=int, default=DEFAULT_VAL_TOKENS,
                    help=f"at most this many val tokens (default {DEFAULT_VAL_TOKENS:,}; 0: no cap)")
    ap.add_argument("--split_by", choices=("auto", "tokens", "documents"), default="auto")
    ap.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard file (200 MB)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--block_bytes", type=int, default=CHUNK_CHARS,
                    help="input bytes per worker job (default 1 MiB; part of what a resume must match)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing prepared dataset in --out (built beside it, swapped in at the end)")
    args = ap.parse_args(argv)
    command = ["python", "-m", "gpt2jax.data.prepare", *(sys.argv[1:] if argv is None else argv)]

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a directory for the prepared dataset")
    if args.workers < 0:
        raise SystemExit(f"error: --workers must be >= 0, got {args.workers}")
    if args.block_bytes < 1:
        raise SystemExit(f"error: --block_bytes must be >= 1, got {args.block_bytes}")
    if (out / META_FILE).exists() and not (out / PROGRESS_FILE).exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already holds a prepared dataset ({META_FILE}); "
                         "pass --overwrite to replace it or choose another --out")
    common = dict(tokenizer=args.tokenizer, val_fraction=args.val_fraction, split_by=args.split_by,
                  shard_tokens=args.shard_tokens, workers=args.workers, val_tokens=args.val_tokens,
                  overwrite=args.overwrite, command=command)
    if args.input:  # every input is checked before anything in --out is touched
        meta = prepare_files(expand_inputs(args.input, args.glob, args.text_field), out,
                             text_field=args.text_field, max_chars=args.block_bytes, **common)
    elif args.load_from_disk:
        ds = load_disk_dataset(args.load_from_disk, args.hf_split, args.text_field)
        path = str(Path(args.load_from_disk).resolve())
        _DATASETS[path] = ds
        jobs_fn = lambda: row_jobs(len(ds), ("disk", path, args.hf_split, args.text_field))  # noqa: E731
        description = {"load_from_disk": path, "hf_split": args.hf_split, "text_field": args.text_field,
                       "fingerprint": getattr(ds, "_fingerprint", None)}
        meta = prepare_dataset(ds, out, description, jobs_fn, **common)
    else:
        ds = load_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.text_field)
        jobs_fn = lambda: text_jobs((row[args.text_field] for row in ds), args.block_bytes)  # noqa: E731
        description = {"hf_dataset": args.hf_dataset, "hf_config": args.hf_config, "hf_split": args.hf_split,
                       "text_field": args.text_field}
        meta = prepare_dataset(ds, out, description, jobs_fn, block=args.block_bytes, **common)
    for name, s in meta["splits"].items():
        print(f"{name}: {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
    print(f"wrote {out / META_FILE} (tokenizer {meta['fingerprint']})")
    return meta


if __name__ == "__main__":
    from gpt2jax.errors import run_cli

    sys.exit(run_cli(main))
