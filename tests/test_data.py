"""Shard formats (ours, nanoGPT's, llm.c's), data preparation, and the step-indexed loader (acceptance 4)."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from gpt2jax.data import prepare as prep
from gpt2jax.data.loader import Loader, global_batch, process_rows
from gpt2jax.data.shards import (LLMC_MAGIC, MAGIC, DataError, open_split, read_shard, write_llmc_shard,
                                 write_shard)
from gpt2jax.tokenizer import CharTokenizer, gpt2_tokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"


# ---- shard files ------------------------------------------------------------------------------------------

def test_shard_roundtrip_and_header(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000)
    write_shard(tmp_path / "a.bin", tokens, "gpt2-bpe:0123456789abcdef")
    header = np.fromfile(tmp_path / "a.bin", "<i4", count=256)
    assert header[0] == MAGIC and header[1] == 1 and header[2:4].view("<i8")[0] == 1000
    got, info = read_shard(tmp_path / "a.bin", expected_fingerprint="gpt2-bpe:0123456789abcdef")
    assert isinstance(got, np.memmap) and info.format == "gpt2jax" and info.fingerprint == "gpt2-bpe:0123456789abcdef"
    np.testing.assert_array_equal(got, tokens)


def test_reads_nanogpt_bin_with_char_meta(tmp_path):
    # nanoGPT data/shakespeare_char/prepare.py: raw uint16 train.bin / val.bin and meta.pkl {vocab_size, itos, stoi}
    chars = "\n !abc"
    text = "abc cab!\nba c"
    ids = np.array([chars.index(c) for c in text], np.uint16)
    ids.tofile(tmp_path / "train.bin")
    ids[:5].tofile(tmp_path / "val.bin")
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    split = open_split(tmp_path, "train")
    assert split.infos[0].format == "nanogpt" and split.n_tokens == len(text)
    assert split.tokenizer.decode(split.tokens()) == text
    assert open_split(tmp_path, "val").tokenizer.decode(open_split(tmp_path, "val").tokens()) == text[:5]


def test_reads_nanogpt_bin_bpe_without_meta(tmp_path):
    tok = gpt2_tokenizer()
    ids = np.array(tok.encode("To be, or not to be: that is the question."), np.uint16)
    ids.tofile(tmp_path / "val.bin")
    split = open_split(tmp_path, "val")
    assert split.tokenizer.name == "gpt2" and split.tokenizer.decode(split.tokens()) == tok.decode(ids)


def test_reads_llmc_shards(tmp_path):
    # llm.c dev/data/data_common.py: header int32[256] = magic 20240520, version 1, count; then uint16 tokens
    tok = gpt2_tokenizer()
    a = tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")
    b = tok.encode("All:\nSpeak, speak.")
    write_llmc_shard(tmp_path / "shakes_train_000001.bin", a)
    write_llmc_shard(tmp_path / "shakes_train_000002.bin", b)
    write_llmc_shard(tmp_path / "shakes_val_000000.bin", b)
    raw = np.fromfile(tmp_path / "shakes_train_000001.bin", "<i4", count=3)
    assert list(raw) == [LLMC_MAGIC, 1, len(a)]
    split = open_split(tmp_path, "train")
    assert [i.format for i in split.infos] == ["llm.c", "llm.c"]
    np.testing.assert_array_equal(split.tokens(), a + b)
    np.testing.assert_array_equal(open_split(tmp_path, "val").tokens(), b)


def test_bad_shards_are_named(tmp_path):
    write_shard(tmp_path / "x.bin", np.arange(10), "char:abc")
    data = bytearray((tmp_path / "x.bin").read_bytes())
    (tmp_path / "truncated.bin").write_bytes(bytes(data[:-4]))
    with pytest.raises(DataError, match="header says 10 tokens.*truncated"):
        read_shard(tmp_path / "truncated.bin")
    data[0:4] = np.int32(12345).tobytes()
    (tmp_path / "garbled.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="unknown header \\(magic 12345\\)"):
        read_shard(tmp_path / "garbled.bin")
    with pytest.raises(DataError, match="tokenized with 'char:abc' but 'gpt2-bpe:x' was expected"):
        read_shard(tmp_path / "x.bin", expected_fingerprint="gpt2-bpe:x")
    llmc = tmp_path / "v2.bin"
    write_llmc_shard(llmc, np.arange(4))
    raw = bytearray(llmc.read_bytes())
    raw[4:8] = np.int32(2).tobytes()
    llmc.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="version 2.*LLaMA-3"):
        read_shard(llmc)


# ---- preparation ---------------------------------------------------------------------------------------------

def test_prepare_char_matches_nanogpt_split(char_data):
    text = CORPUS.read_text()
    meta = json.loads((char_data / "meta.json").read_text())
    # nanoGPT data/shakespeare_char/prepare.py: 65 characters, train = data[:int(n * 0.9)]
    assert meta["tokenizer"]["kind"] == "char" and len(meta["tokenizer"]["chars"]) == 65
    assert meta["splits"]["train"]["tokens"] == 1_003_854 and meta["splits"]["val"]["tokens"] == 111_540
    train, val = open_split(char_data, "train"), open_split(char_data, "val")
    assert train.tokenizer.decode(train.tokens()) + val.tokenizer.decode(val.tokens()) == text


def test_prepare_gpt2_cli_chunked_equals_whole(tmp_path, capsys):
    """BPE in parallel pieces (cut at safe line breaks) gives exactly the tokens of the uncut text."""
    tok = gpt2_tokenizer()
    text = CORPUS.read_text()
    pieces = prep.cut(text, 50_000)
    assert len(pieces) > 10 and "".join(pieces) == text
    prep.prepare_files([CORPUS], tmp_path / "bpe", "gpt2", max_chars=50_000)
    both = np.concatenate([open_split(tmp_path / "bpe", s).tokens() for s in ("train", "val")])
    np.testing.assert_array_equal(both, tok.encode(text))
    # the CLI refuses to overwrite a prepared directory
    with pytest.raises(SystemExit, match="already holds a prepared dataset"):
        prep.main(["--input", str(CORPUS), "--out", str(tmp_path / "bpe")])


def test_prepare_folder_splits_by_documents(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i:02d}.txt").write_text(f"document number {i}.")
    meta = prep.main(["--input", str(docs), "--out", str(tmp_path / "out"), "--val_fraction", "0.2",
                      "--shard_tokens", "12", "--workers", "1"])
    tok = gpt2_tokenizer()
    assert meta["source"]["split_by"] == "documents" and len(meta["splits"]["train"]["shards"]) > 1
    val = open_split(tmp_path / "out", "val")
    # documents 4 and 9 (every 5th) are val, separated by <|endoftext|>
    assert tok.decode(val.tokens()) == "document number 4.<|endoftext|>document number 9."


# ---- the loader ---------------------------------------------------------------------------------------------

def test_loader_is_a_pure_function_of_seed_step_process(char_data):
    split = open_split(char_data, "train")
    a, b = Loader(split, 64, 8, 2, seed=1), Loader(split, 64, 8, 2, seed=1)
    np.testing.assert_array_equal(a.batch(7, 1, 2), b.batch(7, 1, 2))  # fresh object, same batch
    assert a.batch(7, 0, 2).shape == (2, 4, 65)
    assert not np.array_equal(a.batch(7, 0, 1), a.batch(8, 0, 1))
    assert not np.array_equal(a.batch(7, 0, 1), Loader(split, 64, 8, 2, seed=2).batch(7, 0, 1))
    # the processes' rows are the global batch's rows, in order
    whole = a.batch(7, 0, 1)
    np.testing.assert_array_equal(np.concatenate([a.batch(7, p, 4) for p in range(4)], axis=1), whole)
    # rows are next-token windows of the corpus
    text = split.tokenizer.decode(whole[0, 3])
    assert text in CORPUS.read_text()


def test_loader_processes_read_disjoint_windows_and_cover_an_epoch(char_data):
    split = open_split(char_data, "val")
    T, B, P = 64, 16, 4
    loader = Loader(split, T, B, 1, seed=0)
    tokens = np.asarray(split.tokens())
    steps = loader.n_windows // B  # one epoch
    targets = {p: set() for p in range(P)}  # token offsets each process is trained to predict
    for step in range(steps):
        for p in range(P):
            lo, hi = process_rows(p, P, B)
            rows = loader.batch(step, p, P)[0]
            for r, g in enumerate(range(step * B + lo, step * B + hi)):
                shard, start = loader.locate(g)
                np.testing.assert_array_equal(rows[r], tokens[start:start + T + 1])
                new = set(range(start + 1, start + T + 1))
                assert all(not (new & targets[q]) for q in range(P)), "two windows share a target"
                targets[p] |= new
    assert sum(len(t) for t in targets.values()) == steps * B * T
    assert steps * B > 0.95 * len(tokens) / T  # an epoch covers (nearly) the whole split


def test_global_batch_on_a_mesh(char_data):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from gpt2jax.model.sharding import make_mesh

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    split = open_split(char_data, "train")
    loader = Loader(split, 16, 8, 2, seed=3)
    arr = global_batch(loader, 5, NamedSharding(mesh, P(None, ("data", "fsdp"), None)))
    assert arr.shape == (2, 8, 17) and len(arr.addressable_shards) == len(jax.devices())
    np.testing.assert_array_equal(np.asarray(arr), loader.batch(5))


def test_dataset_shorter_than_one_batch(tmp_path):
    write_shard(tmp_path / "train_000000.bin", np.arange(100) % 3, CharTokenizer("abc").fingerprint)
    with pytest.raises(DataError, match="fewer than one batch needs"):
        Loader(open_split_from_single(tmp_path), seq_len=32, batch_size=4)


def open_split_from_single(d):
    from gpt2jax.data.shards import write_meta

    write_meta(d, CharTokenizer("abc"), {"train": [{"file": "train_000000.bin", "tokens": 100, "max_token_id": 2}]},
               {})
    return open_split(d, "train")


def test_missing_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="does not exist.*python -m gpt2jax.data.prepare"):
        open_split(tmp_path / "nope", "train")
