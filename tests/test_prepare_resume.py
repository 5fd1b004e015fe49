"""`python -m gpt2jax.data.prepare` at scale (issues 37.1, 37.2, 37.9, 38.5): a killed prepare is refused by every
reader with one line and resumes to the tokens of an uninterrupted one; --overwrite keeps the old dataset until the
new one is whole; a damaged meta.json is one error line; jsonl / parquet / text-folder / saved-dataset inputs; the
val split holds at most --val_tokens tokens."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2jax.data import prepare as prep
from gpt2jax.data import shards
from gpt2jax.data.shards import META_FILE, DataError, open_split, write_shard
from gpt2jax.errors import run_cli
from gpt2jax.tokenizer import gpt2_tokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"
EOT = gpt2_tokenizer().eot_id
PROGRESS_FILE = getattr(shards, "PROGRESS_FILE", "prepare.progress.json")  # (a name only this version knows)


def tokens(d):
    return [np.asarray(open_split(d, s).tokens()) for s in ("train", "val")]


def same_tokens(a, b):
    return all(np.array_equal(x, y) for x, y in zip(tokens(a), tokens(b)))


def write_jsonl(path, n_docs, seed=0, field="text"):
    rng = random.Random(seed)
    text = CORPUS.read_text()
    docs = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            a = rng.randrange(len(text) - 3000)
            docs.append(text[a:a + rng.randint(1, 3000)])
            f.write(json.dumps({"id": i, field: docs[-1]}) + "\n")
    return docs


def prepare_cli(*args):
    return [sys.executable, "-m", "gpt2jax.data.prepare", *map(str, args)]


def one_error_line(fn, argv, capsys):
    rc = run_cli(fn, argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("tokenize")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


# ---- kill -9 at random points -------------------------------------------------------------------------------------

def kill_at_random_point(cmd, out: Path, rng: random.Random, n_shards: int, seconds: float) -> bool:
    """Start cmd, SIGKILL it once `out` holds a random number of shard files (or at a random time up to an
    uninterrupted run's `seconds`, one time in four); True when it was killed before finishing."""
    target = rng.randint(1, n_shards)
    deadline = rng.uniform(0.5, 1.0) * seconds if rng.random() < 0.25 else 3 * seconds
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None:
        if len(list(out.glob("*_0*.bin"))) >= target or time.monotonic() - t0 > deadline:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["jsonl", "text"])
def test_killed_prepare_is_refused_then_resumes_to_the_same_tokens(tmp_path, kind, capsys):
    """SIGKILL at random points (shard counts or times): the unfinished folder is refused by the reader (and the
    trainer) with one line naming the rerun, and rerunning resumes to exactly the tokens of an uninterrupted run
    (jsonl: GPT-2 BPE, documents split; one text file: characters, the token split, whose tail is moved into val
    at the end)."""
    rng = random.Random(1234 if kind == "jsonl" else 99)
    if kind == "jsonl":
        corpus = tmp_path / "corpus.jsonl"
        write_jsonl(corpus, 700)
        opts = ["--shard_tokens", 3000, "--block_bytes", 8192, "--workers", 2, "--val_tokens", 20000]
    else:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(CORPUS.read_text()[:500_000])
        opts = ["--shard_tokens", 12000, "--block_bytes", 4096, "--workers", 1, "--val_tokens", 20000,
                "--tokenizer", "char"]  # (a resume reuses the alphabet of the first pass)
    ref = tmp_path / "reference"
    t0 = time.monotonic()
    subprocess.run(prepare_cli("--input", corpus, "--out", ref, *opts), cwd=REPO, check=True, capture_output=True)
    seconds = time.monotonic() - t0
    n_shards = len(list(ref.glob("*.bin")))
    assert n_shards > 20 and len(list(ref.glob("val_*.bin"))) > 1
    killed = 0
    for trial in range(4 if kind == "jsonl" else 3):
        out = tmp_path / f"killed{trial}"
        cmd = prepare_cli("--input", corpus, "--out", out, *opts)
        for _ in range(2 if trial == 0 else 1):  # the first trial is killed twice: once more while resuming
            if kill_at_random_point(cmd, out, rng, n_shards, seconds) and not (out / META_FILE).exists():
                with pytest.raises(DataError) as e:
                    open_split(out, "train")
                msg = str(e.value)
                assert "\n" not in msg
                if (out / PROGRESS_FILE).exists():  # (else killed while starting up: nothing of it to read)
                    killed += 1
                    assert "unfinished prepare" in msg and "rerun `python -m gpt2jax.data.prepare" in msg
        if not (out / META_FILE).exists():  # (else it finished before the kill landed)
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)  # resumes
        assert same_tokens(out, ref), f"trial {trial}: resumed tokens differ"
        meta, ref_meta = (json.loads((x / META_FILE).read_text()) for x in (out, ref))
        assert meta["splits"] == ref_meta["splits"]
        assert not (out / PROGRESS_FILE).exists()
    assert killed >= 3, f"only {killed} kills landed inside the prepare"


def test_trainer_refuses_an_unfinished_prepare_with_one_line(tmp_path):
    """A prepare killed before meta.json: the trainer stops with one error line (it trained on the fragment)."""
    from gpt2jax.train import main

    out = tmp_path / "data"
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, 300)
    prep.main(["--input", str(corpus), "--out", str(out), "--shard_tokens", "2000", "--workers", "1"])
    (out / META_FILE).unlink()  # as a kill before the last step leaves it
    (out / PROGRESS_FILE).write_text(json.dumps({"version": 1, "command": ["python", "-m", "gpt2jax.data.prepare",
                                                                           "--input", "c.jsonl", "--out", "d"]}))
    with pytest.raises(SystemExit, match=r"^error: data directory .* holds an unfinished prepare .*; rerun "
                                         r"`python -m gpt2jax.data.prepare --input c.jsonl --out d` to resume it$"):
        main(["train", "--config", str(REPO / "configs" / "tiny_test.py"), f"--config.data.dir={out}",
              f"--config.run_root={tmp_path}/runs"])
    # an older prepare killed before it had a progress file: our shards without meta.json are refused too
    (out / PROGRESS_FILE).unlink()
    with pytest.raises(DataError, match="holds an unfinished prepare"):
        open_split(out, "train")


# ---- --overwrite -------------------------------------------------------------------------------------------------

def test_overwrite_with_a_bad_input_keeps_the_old_dataset(tmp_path, capsys):
    d = tmp_path / "d"
    good = tmp_path / "good.jsonl"
    write_jsonl(good, 200)
    prep.main(["--input", str(good), "--out", str(d), "--workers", "1"])
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    # a mistyped input: refused before anything in d is touched
    one_error_line(prep.main, ["--input", str(tmp_path / "typo.jsonl"), "--out", str(d), "--overwrite"], capsys)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    # an input that fails half-way (line 150 is not JSON): the old dataset is still whole
    bad = tmp_path / "bad.jsonl"
    lines = good.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:149] + ["{not json\n"] + lines[150:]))
    err = one_error_line(prep.main, ["--input", str(bad), "--out", str(d), "--overwrite", "--workers", "1",
                                     "--block_bytes", "4096"], capsys)
    assert "bad.jsonl line 150 is not a JSON object" in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    # a rebuild killed half-way: the old dataset is whole; the rerun resumes beside it, then swaps it in (other
    # files in d are kept) and leaves nothing beside it
    (d / "notes.txt").write_text("mine")
    before["notes.txt"] = b"mine"
    other = tmp_path / "other.jsonl"
    write_jsonl(other, 300, seed=5)
    opts = ["--input", other, "--out", d, "--overwrite", "--workers", 1, "--shard_tokens", 2000, "--block_bytes", 4096]
    proc = subprocess.Popen(prepare_cli(*opts), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".d.prepare-new"
    while proc.poll() is None and len(list(staging.glob("train_*.bin"))) < 3:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and (staging / PROGRESS_FILE).exists()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and len(tokens(d)[0]) > 0
    subprocess.run(prepare_cli(*opts), cwd=REPO, check=True, capture_output=True)
    fresh = tmp_path / "fresh"
    prep.main(["--input", str(other), "--out", str(fresh), "--workers", "1", "--shard_tokens", "2000"])
    assert same_tokens(d, fresh) and (d / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- a damaged meta.json ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["half", "binary", "not_a_dict", "no_splits", "bad_tokenizer"])
def test_damaged_meta_json_is_one_error_line(tmp_path, damage, capsys):
    d = tmp_path / "d"
    write_shard(tmp_path / "unused.bin", np.arange(3), "x")
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS.read_text()[:5000])
    prep.prepare_files([corpus], d, "char")
    meta = (d / META_FILE).read_bytes()
    damaged = {"half": meta[:len(meta) // 2], "binary": bytes(range(256)) * 4, "not_a_dict": b"[1, 2]",
               "no_splits": json.dumps({**json.loads(meta), "splits": 3}).encode(),
               "bad_tokenizer": json.dumps({**json.loads(meta), "tokenizer": {"kind": "bpe9"}}).encode()}[damage]
    (d / META_FILE).write_bytes(damaged)
    with pytest.raises(DataError, match=r"meta.json .*--overwrite"):
        open_split(d, "train")
    # and through a command line: one `error:` line, no traceback
    from gpt2jax.train import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(REPO / "configs" / "tiny_test.py"), f"--config.data.dir={d}",
              f"--config.run_root={tmp_path}/runs"])
    line = str(e.value.code)
    assert line.startswith("error: ") and "\n" not in line and "meta.json" in line


# ---- inputs -------------------------------------------------------------------------------------------------------

def test_jsonl_input_one_document_per_line(tmp_path, capsys):
    tok = gpt2_tokenizer()
    docs = ["First doc.\r\nkeeps its \\r", "", "<|endoftext|> is ordinary text here", "naïve café 東京 \ud800 end"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"content": t}) + "\n" + ("\n" if i == 1 else "") for i, t in enumerate(docs)))
    meta = prep.main(["--input", str(corpus), "--out", str(tmp_path / "o"), "--text_field", "content",
                      "--val_fraction", "0.5", "--workers", "1"])
    assert meta["source"]["split_by"] == "documents" and meta["source"]["text_field"] == "content"
    train, val = tokens(tmp_path / "o")
    enc = tok._enc
    # documents 1 and 3 are val (every 2nd); the blank line between documents is skipped
    assert list(train) == enc.encode_ordinary(docs[0]) + [EOT] + enc.encode_ordinary(docs[2])
    assert list(val) == enc.encode_ordinary(docs[1]) + [EOT] + enc.encode_ordinary(docs[3])
    err = one_error_line(prep.main, ["--input", str(corpus), "--out", str(tmp_path / "o2")], capsys)
    assert "line 1 has no string field 'text'" in err and "--text_field" in err


def test_text_folder_and_jsonl_together_equal_their_documents(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [CORPUS.read_text()[i * 7000:i * 7000 + 3000 + 900 * i] for i in range(6)]
    for i, t in enumerate(texts[:4]):
        (folder / f"{i}.txt").write_text(t)
    (folder / "x.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[4:]))
    meta = prep.main(["--input", str(folder), "--glob", "*.*", "--out", str(tmp_path / "o"), "--workers", "2",
                      "--val_fraction", "0.2", "--block_bytes", "5000"])
    enc = gpt2_tokenizer()._enc
    want = [enc.encode_ordinary(t) for t in texts[:4]] + [enc.encode_ordinary(t) for t in texts[4:]]
    train, val = tokens(tmp_path / "o")
    # documents 4 and 9 would be val at 0.2; of these six only document 4 (the first jsonl row)
    assert list(val) == want[4]
    assert list(train) == sum((w + [EOT] for w in want[:4]), []) + want[5]
    assert meta["splits"]["val"]["tokens"] == len(want[4])


def test_parquet_and_saved_dataset_inputs(tmp_path, capsys, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [CORPUS.read_text()[i * 500:i * 500 + 400] for i in range(30)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet", row_group_size=7)
    prep.main(["--input", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "pq"), "--workers", "2"])
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prep.main(["--input", str(jsonl), "--out", str(tmp_path / "js"), "--workers", "1"])
    assert same_tokens(tmp_path / "pq", tmp_path / "js")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    prep.main(["--load_from_disk", str(tmp_path / "saved"), "--out", str(tmp_path / "ds"), "--workers", "1"])
    assert same_tokens(tmp_path / "ds", tmp_path / "js")
    # without pyarrow: one line naming the extra
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    err = one_error_line(prep.main, ["--input", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "x")], capsys)
    assert "parquet input needs pyarrow" in err and "gpt2jax[data]" in err


# ---- the val hold-out -----------------------------------------------------------------------------------------------

def test_val_holds_at_most_val_tokens(tmp_path):
    # one text file (token split): the last min(10%, val_tokens) tokens
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS.read_text()[:200_000])
    prep.prepare_files([corpus], tmp_path / "capped", "char", val_tokens=5000, shard_tokens=3000, max_chars=7000)
    prep.prepare_files([corpus], tmp_path / "uncapped", "char", val_tokens=0)
    train, val = tokens(tmp_path / "capped")
    whole = np.concatenate(tokens(tmp_path / "uncapped"))
    assert len(val) == 5000 and np.array_equal(np.concatenate([train, val]), whole)
    assert len(tokens(tmp_path / "uncapped")[1]) == 20_000  # 10% when the cap does not bite (the char demo)
    meta = json.loads((tmp_path / "capped" / META_FILE).read_text())
    assert meta["source"]["val_tokens"] == 5000 and meta["splits"]["train"]["tokens"] == 195_000
    # documents: every 10th document while val is under the cap, then train only
    docs = write_jsonl(tmp_path / "c.jsonl", 400, seed=3)
    prep.prepare_files([tmp_path / "c.jsonl"], tmp_path / "docs", val_tokens=3000, max_chars=9000)
    enc = gpt2_tokenizer()._enc
    lens = [len(enc.encode_ordinary(t)) + 1 for t in docs]
    counted, want_val = 0, []
    for i in range(9, 400, 10):
        if counted < 3000:
            want_val.append(i)
            counted += lens[i]
    assert 3000 <= counted < 3000 + max(lens) and want_val[-1] < 390
    val = tokens(tmp_path / "docs")[1]
    assert len(val) == sum(lens[i] for i in want_val) - 1
    assert prep.DEFAULT_VAL_TOKENS == 5_000_000
