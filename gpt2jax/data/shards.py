"""Token shard files: writing ours, reading ours plus nanoGPT's and llm.c's.

Three on-disk formats, all little-endian uint16 tokens (GPT-2's 50,257 ids fit in 16 bits):

  gpt2jax  a 1024-byte header of 256 int32 words, then the tokens:
             [0] magic 20241105  [1] version 1  [2:4] token count (int64)
             [4:20] tokenizer fingerprint (64 ASCII bytes, NUL padded)  [20:] zero.
  llm.c    a 1024-byte header of 256 int32: [0] magic 20240520, [1] version 1 (uint16 GPT-2 tokens), [2] token
           count; then the tokens (karpathy/llm.c `dev/data/data_common.py::write_datafile`).
  nanoGPT  `train.bin` / `val.bin`: raw uint16 tokens, no header (karpathy/nanoGPT `data/*/prepare.py`).

Readers memory-map the file, so opening a shard costs nothing and only the rows a host reads are paged in.
A dataset directory is opened with `open_split(dir, split)`:
  - ours: `meta.json` (written last, atomically, by `gpt2jax.data.prepare`) lists the shards of each split and the
    tokenizer. A directory with our shards but no meta.json (a prepare that was killed or is still running; its
    progress file `prepare.progress.json` says so) is refused: rerunning the prepare resumes it;
  - nanoGPT: `<split>.bin` (+ optional `meta.pkl` with a char vocabulary, else GPT-2 BPE);
  - llm.c: `*_<split>*.bin` files with the llm.c magic (GPT-2 BPE).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from gpt2jax.errors import DataError
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer, tokenizer_from_dict

HEADER_INTS = 256  # 1024-byte header, the same size as llm.c's
HEADER_BYTES = HEADER_INTS * 4
MAGIC = 20241105  # gpt2jax shards (any number distinct from llm.c's; the date this format was fixed)
VERSION = 1
LLMC_MAGIC = 20240520  # karpathy/llm.c dev/data/data_common.py
LLMC_VERSION = 1  # version 1 = GPT-2 tokens as uint16 (version 2 = LLaMA-3 uint32, not supported)
FINGERPRINT_SLICE = slice(4, 20)  # 16 int32 words = 64 bytes
NANOGPT_NAMES = ("train.bin", "val.bin")
META_FILE = "meta.json"
META_FORMAT = "gpt2jax-shards"
PROGRESS_FILE = "prepare.progress.json"  # present while a prepare is unfinished (see gpt2jax.data.prepare)
SHARD_NAME = re.compile(r"^(train|val)_\d{6}\.bin$")
TOKEN_DTYPE = np.dtype("<u2")


# ---- writing ----------------------------------------------------------------------------------------------

def make_header(n_tokens: int, fingerprint: str) -> np.ndarray:
    fp = fingerprint.encode("ascii")
    if len(fp) > 4 * (FINGERPRINT_SLICE.stop - FINGERPRINT_SLICE.start):
        raise DataError(f"tokenizer fingerprint {fingerprint!r} is longer than the 64 bytes the header holds")
    header = np.zeros(HEADER_INTS, "<i4")
    header[0], header[1] = MAGIC, VERSION
    header[2:4] = np.array([n_tokens], "<i8").view("<i4")
    header[FINGERPRINT_SLICE] = np.frombuffer(fp.ljust(64, b"\0"), "<i4")
    return header


def write_shard(path: str | Path, tokens: np.ndarray, fingerprint: str) -> None:
    """Write tokens (1-D, every id < 65536) as a gpt2jax shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max):
        raise DataError(f"token ids must be in [0, 65535] to fit a uint16 shard; got {tokens.min()}..{tokens.max()}")
    with open(path, "wb") as f:
        f.write(make_header(tokens.size, fingerprint).tobytes())
        f.write(tokens.astype(TOKEN_DTYPE).tobytes())


def write_llmc_shard(path: str | Path, tokens: np.ndarray) -> None:
    """llm.c's layout (used by tests and for exporting to llm.c)."""
    header = np.zeros(HEADER_INTS, "<i4")
    header[0], header[1], header[2] = LLMC_MAGIC, LLMC_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens).astype(TOKEN_DTYPE).tobytes())


def shard_names(data_dir: Path, split: str) -> list[Path]:
    """The `<split>_NNNNNN.bin` files `gpt2jax.data.prepare` writes, sorted."""
    return sorted(p for p in Path(data_dir).glob(f"{split}_*.bin") if SHARD_NAME.match(p.name))


# ---- reading ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: Path
    format: str  # "gpt2jax" | "llm.c" | "nanogpt"
    n_tokens: int
    fingerprint: str | None  # only gpt2jax shards record their tokenizer


def _memmap(path: Path, offset: int, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:
        return np.zeros(0, TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=offset, shape=(n_tokens,))


def read_shard(path: str | Path, expected_fingerprint: str | None = None) -> tuple[np.ndarray, ShardInfo]:
    """Memory-map one shard. Returns (tokens uint16 (N,), info). Files named train.bin / val.bin without a known
    magic are read as nanoGPT's raw format; any other file must carry a gpt2jax or llm.c header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path} does not exist")
    size = path.stat().st_size
    head = np.fromfile(path, dtype="<i4", count=min(HEADER_INTS, size // 4))
    magic = int(head[0]) if head.size else None

    if magic in (MAGIC, LLMC_MAGIC):
        if head.size < HEADER_INTS:
            raise DataError(f"shard {path} is {size} bytes, shorter than its {HEADER_BYTES}-byte header (truncated?)")
        version = int(head[1])
        if magic == MAGIC:
            fmt, want_version = "gpt2jax", VERSION
            n_tokens = int(head[2:4].view("<i8")[0])
            fingerprint = head[FINGERPRINT_SLICE].tobytes().rstrip(b"\0").decode("ascii", errors="replace")
        else:
            fmt, want_version = "llm.c", LLMC_VERSION
            n_tokens, fingerprint = int(head[2]), None
        if version != want_version:
            raise DataError(
                f"shard {path} is a {fmt} shard of version {version}; this reader knows version {want_version} only"
                + (" (llm.c version 2 holds LLaMA-3 uint32 tokens)" if fmt == "llm.c" else "")
            )
        expected_size = HEADER_BYTES + 2 * n_tokens
        if size != expected_size:
            raise DataError(
                f"shard {path}: header says {n_tokens} tokens ({expected_size} bytes) but the file has {size} bytes; "
                "the file is truncated or was not written by a matching writer. Re-run the data preparation."
            )
        if expected_fingerprint is not None and fingerprint is not None and fingerprint != expected_fingerprint:
            raise DataError(
                f"shard {path} was tokenized with {fingerprint!r} but {expected_fingerprint!r} was expected; "
                "the shard belongs to another dataset or tokenizer. Re-run `python -m gpt2jax.data.prepare` "
                "into a fresh --out directory."
            )
        info = ShardInfo(path, fmt, n_tokens, fingerprint)
        return _memmap(path, HEADER_BYTES, n_tokens), info

    if path.name in NANOGPT_NAMES:
        if size % 2:
            raise DataError(f"nanoGPT shard {path} has an odd size ({size} bytes); uint16 tokens need an even size")
        return _memmap(path, 0, size // 2), ShardInfo(path, "nanogpt", size // 2, None)
    raise DataError(
        f"shard {path} has an unknown header (magic {magic}); expected a gpt2jax shard (magic {MAGIC}) or an llm.c "
        f"shard (magic {LLMC_MAGIC}). Raw nanoGPT token files must be named {' or '.join(NANOGPT_NAMES)}."
    )


# ---- datasets (a directory with train/val splits) -----------------------------------------------------------

@dataclasses.dataclass
class TokenSplit:
    """One split of a dataset: memory-mapped shards, in order, and the tokenizer that made them."""

    name: str
    shards: list[np.ndarray]
    infos: list[ShardInfo]
    tokenizer: object
    max_token_id: int | None = None  # from meta.json when recorded; else computed on demand

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.shards)

    def tokens(self) -> np.ndarray:
        """The whole split as one array (copies when there are several shards)."""
        return self.shards[0] if len(self.shards) == 1 else np.concatenate(self.shards)

    def max_id(self) -> int:
        if self.max_token_id is None:
            self.max_token_id = max((int(s.max()) for s in self.shards if len(s)), default=-1)
        return self.max_token_id


def prepare_hint(data_dir: Path) -> str:
    return (
        f"Prepare it with `python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out {data_dir}` "
        "(add --tokenizer char for a character-level dataset), or point --config.data.dir at a prepared directory."
    )


class _PlainUnpickler(pickle.Unpickler):
    """nanoGPT's meta.pkl is a dict of str/int; refuse anything that would import code."""

    def find_class(self, module, name):
        raise DataError(f"meta.pkl refers to {module}.{name}; only plain dicts of strings and ints are accepted")


def _nanogpt_tokenizer(data_dir: Path):
    meta = data_dir / "meta.pkl"
    if not meta.is_file():
        return gpt2_tokenizer()  # nanoGPT's openwebtext / shakespeare (BPE) prepare scripts use GPT-2 BPE
    with open(meta, "rb") as f:
        d = _PlainUnpickler(f).load()
    itos = d["itos"]
    return CharTokenizer("".join(itos[i] for i in range(len(itos))))


def open_split(data_dir: str | Path, split: str, expected_tokenizer: str = "") -> TokenSplit:
    """Open split `split` ("train" / "val") of a gpt2jax, nanoGPT or llm.c dataset directory.

    expected_tokenizer: "" (accept the data's), "gpt2" or "char": a different tokenizer in the data is an error.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist. {prepare_hint(data_dir)}")
    meta_path = data_dir / META_FILE
    if meta_path.is_file():
        meta = read_meta(meta_path)
        try:
            tokenizer = tokenizer_from_dict(meta["tokenizer"])
        except (ValueError, KeyError, TypeError) as e:  # TokenizerError is a ValueError
            raise DataError(f"{meta_path} records an unusable tokenizer ({e}); rebuild the dataset with "
                            f"`python -m gpt2jax.data.prepare ... --out {data_dir} --overwrite`") from None
        if tokenizer.fingerprint != meta["fingerprint"]:
            raise DataError(
                f"{meta_path} records tokenizer fingerprint {meta['fingerprint']!r} but its tokenizer now has "
                f"{tokenizer.fingerprint!r} (a different vocabulary file?). Re-run the data preparation."
            )
        if split not in meta["splits"]:
            raise DataError(f"{data_dir} has no {split!r} split (it has {sorted(meta['splits'])}). {prepare_hint(data_dir)}")
        entry = meta["splits"][split]
        shards, infos = [], []
        for s in entry["shards"]:
            tokens, info = read_shard(data_dir / s["file"], expected_fingerprint=meta["fingerprint"])
            if info.format != "gpt2jax" or info.n_tokens != s["tokens"]:
                raise DataError(
                    f"shard {info.path} does not match {meta_path} ({info.format}, {info.n_tokens} tokens; "
                    f"meta.json says gpt2jax, {s['tokens']} tokens). Re-run the data preparation."
                )
            shards.append(tokens)
            infos.append(info)
        result = TokenSplit(split, shards, infos, tokenizer, entry.get("max_token_id"))
    elif (data_dir / PROGRESS_FILE).is_file() or _has_our_shards(data_dir):
        raise DataError(unfinished_message(data_dir))
    elif (data_dir / f"{split}.bin").is_file():
        tokens, info = read_shard(data_dir / f"{split}.bin")
        result = TokenSplit(split, [tokens], [info], _nanogpt_tokenizer(data_dir))
    else:
        paths = sorted(p for p in data_dir.glob(f"*{split}*.bin"))
        if not paths:
            raise DataError(
                f"data directory {data_dir} has no {META_FILE}, no nanoGPT {split}.bin and no llm.c *{split}*.bin "
                f"shards. {prepare_hint(data_dir)}"
            )
        pairs = [read_shard(p) for p in paths]
        result = TokenSplit(split, [t for t, _ in pairs], [i for _, i in pairs], gpt2_tokenizer())
    if expected_tokenizer and result.tokenizer.name != expected_tokenizer:
        raise DataError(
            f"data in {data_dir} was tokenized with the {result.tokenizer.name!r} tokenizer but the config asks for "
            f"{expected_tokenizer!r} (--config.data.tokenizer). Prepare the data with --tokenizer {expected_tokenizer} "
            "or set --config.data.tokenizer to match."
        )
    return result


def _has_our_shards(data_dir: Path) -> bool:
    """Any *.bin with the gpt2jax magic: only `prepare` writes those, and it writes meta.json last."""
    for p in data_dir.glob("*.bin"):
        try:
            with open(p, "rb") as f:
                if np.frombuffer(f.read(4).ljust(4, b"\0"), "<i4")[0] == MAGIC:
                    return True
        except OSError:
            continue
    return False


def unfinished_message(data_dir: Path) -> str:
    command = "the same `python -m gpt2jax.data.prepare ...` command"
    try:
        recorded = json.loads((data_dir / PROGRESS_FILE).read_text(encoding="utf-8")).get("command")
        if isinstance(recorded, list) and recorded and all(isinstance(a, str) for a in recorded):
            command = "`" + " ".join(recorded) + "`"
    except (OSError, ValueError, AttributeError):
        pass
    return (f"data directory {data_dir} holds an unfinished prepare (its shards are incomplete and it has no "
            f"{META_FILE}: killed, or still running); rerun {command} to resume it")


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    if meta.get("format") != META_FORMAT:
        return f"format {meta.get('format')!r}, not {META_FORMAT!r}"
    if not isinstance(meta.get("tokenizer"), dict) or not isinstance(meta.get("fingerprint"), str):
        return "no tokenizer"
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        return "no splits"
    for name, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str) and "/" not in s["file"]
                and isinstance(s.get("tokens"), int) for s in shards):
            return f"split {name!r} has no valid shard list"
    return None


def read_meta(meta_path: Path) -> dict:
    """meta.json, checked: a half-written, binary or hand-broken file is one DataError naming the fix."""
    fix = (f"rebuild the dataset with `python -m gpt2jax.data.prepare ... --out {meta_path.parent} --overwrite`")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{meta_path} is not UTF-8 text (byte {e.start}; damaged?); {fix}") from None
    except ValueError as e:
        raise DataError(f"{meta_path} is not valid JSON ({e}; cut short or damaged?); {fix}") from None
    except OSError as e:
        raise DataError(f"cannot read {meta_path} ({e.strerror or e}); {fix}") from None
    problem = _meta_problem(meta)
    if problem is not None:
        raise DataError(f"{meta_path} is not a gpt2jax dataset description ({problem}); {fix}")
    return meta


def write_meta(out_dir: Path, tokenizer, splits: dict[str, Sequence[dict]], source: dict) -> dict:
    """Write meta.json atomically (a temporary file, synced, then renamed): its presence marks a finished dataset.
    splits: name -> list of {"file", "tokens", "max_token_id"} in order."""
    meta = {
        "format": META_FORMAT,
        "version": VERSION,
        "tokenizer": tokenizer.to_dict(),
        "fingerprint": tokenizer.fingerprint,
        "dtype": "uint16",
        "splits": {
            name: {
                "tokens": sum(s["tokens"] for s in shards),
                "max_token_id": max((s["max_token_id"] for s in shards), default=-1),
                "shards": [{"file": s["file"], "tokens": s["tokens"]} for s in shards],
            }
            for name, shards in splits.items()
        },
        "source": source,
    }
    tmp = Path(out_dir) / (META_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(out_dir) / META_FILE)
    return meta
