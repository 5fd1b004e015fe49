"""GPT-2 BPE facts, offline, from the ranks file shipped in the package."""
import shutil

import pytest

from gpt2jax.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError, gpt2_tokenizer, tokenizer_from_dict
from tests.conftest import REPO


def test_gpt2_vocabulary_facts():
    tok = gpt2_tokenizer()
    assert tok.n_vocab == 50257
    assert tok.eot_id == 50256
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("hello <|endoftext|>", allow_special=True) == [31373, 220, 50256]
    # Raw data may contain the marker as text: by default it is not the special token.
    assert 50256 not in tok.encode("hello <|endoftext|>")
    assert tok.decode(tok.encode("Héllo, wörld!  \n")) == "Héllo, wörld!  \n"


def test_tiny_shakespeare_split_counts():
    # karpathy/nanoGPT data/shakespeare/prepare.py prints 301,966 / 36,059 for this 90%/10% split.
    text = (REPO / "data" / "tinyshakespeare.txt").read_text()
    n = len(text)
    tok = gpt2_tokenizer()
    assert len(tok.encode(text[: int(n * 0.9)])) == 301_966
    assert len(tok.encode(text[int(n * 0.9):])) == 36_059


def test_corrupted_ranks_file_is_refused(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    shutil.copy(REPO / "gpt2jax" / "assets" / "gpt2.tiktoken", bad)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0x01  # one flipped bit
    bad.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match=r"corrupted or not the GPT-2 vocabulary: sha256 .* expected 306cd27f"):
        GPT2Tokenizer(bad)
    with pytest.raises(TokenizerError, match="not found"):
        GPT2Tokenizer(tmp_path / "missing.tiktoken")


def test_char_tokenizer_round_trip():
    tok = CharTokenizer.from_text("hello world")
    assert tok.n_vocab == 8 and tok.eot_id is None
    assert tok.decode(tok.encode("world hello")) == "world hello"
    assert tokenizer_from_dict(tok.to_dict()).fingerprint == tok.fingerprint
    with pytest.raises(TokenizerError, match="'z' is not in this char tokenizer's alphabet"):
        tok.encode("z")
