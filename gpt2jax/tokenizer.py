"""Tokenizers, offline: GPT-2's byte-level BPE (tiktoken, from the ranks file shipped in this package) and a
character-level tokenizer for tiny experiments.

Both expose: name, n_vocab, eot_id (None when there is no end-of-text token), encode, decode and `fingerprint`
(a short hash that data shards record, so a model never reads tokens made by another tokenizer).
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable

import tiktoken
import tiktoken.load

from gpt2jax.config import GPT2_VOCAB_SIZE

GPT2_RANKS_PATH = Path(__file__).parent / "assets" / "gpt2.tiktoken"
# sha256 of the GPT-2 ranks file (equal to OpenAI's r50k_base.tiktoken, pinned in tiktoken_ext/openai_public.py).
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation regex, in tiktoken's faster equivalent form (tiktoken_ext/openai_public.py r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_ID = GPT2_VOCAB_SIZE - 1  # <|endoftext|>, the last id


class TokenizerError(ValueError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class GPT2Tokenizer:
    """GPT-2 BPE. `encode` treats '<|endoftext|>' in text as plain characters unless allow_special=True."""

    name = "gpt2"

    def __init__(self, ranks_path: str | os.PathLike = GPT2_RANKS_PATH):
        ranks_path = Path(ranks_path)
        if not ranks_path.is_file():
            raise TokenizerError(
                f"GPT-2 ranks file not found at {ranks_path}. It ships inside the package "
                "(gpt2jax/assets/gpt2.tiktoken); reinstall with `pip install -e .` from the repository."
            )
        digest = sha256_file(ranks_path)
        if digest != GPT2_RANKS_SHA256:
            raise TokenizerError(
                f"GPT-2 ranks file {ranks_path} is corrupted or not the GPT-2 vocabulary: sha256 {digest}, "
                f"expected {GPT2_RANKS_SHA256}. Restore it with `git checkout -- gpt2jax/assets/gpt2.tiktoken`."
            )
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(ranks_path), expected_hash=GPT2_RANKS_SHA256),
            special_tokens={ENDOFTEXT: GPT2_EOT_ID},
            explicit_n_vocab=GPT2_VOCAB_SIZE,
        )
        self.n_vocab = self._enc.n_vocab
        self.eot_id = GPT2_EOT_ID
        self.fingerprint = f"gpt2-bpe:{digest[:16]}"

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self._enc.encode(text, allowed_special={ENDOFTEXT})
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    def to_dict(self) -> dict:
        return {"kind": "gpt2"}


class CharTokenizer:
    """One id per character of a fixed alphabet (nanoGPT's shakespeare_char). No end-of-text token."""

    name = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or not chars:
            raise TokenizerError("CharTokenizer needs a non-empty string of distinct characters")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        self.n_vocab = len(chars)
        self.eot_id = None
        self.fingerprint = "char:" + hashlib.sha256(chars.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            raise TokenizerError(
                f"character {e.args[0]!r} is not in this char tokenizer's alphabet of {self.n_vocab} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer() -> GPT2Tokenizer:
    """The shared GPT-2 tokenizer (building it parses 50k ranks: do it once per process)."""
    return GPT2Tokenizer()


def tokenizer_from_dict(d: dict) -> GPT2Tokenizer | CharTokenizer:
    """Rebuild a tokenizer from its `to_dict()` (as stored in data meta.json and run directories)."""
    kind = d.get("kind")
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "char":
        return CharTokenizer(d["chars"])
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected 'gpt2' or 'char'")
