"""The whole zero-shot suite end to end (acceptance 4): a tiny GPT-2-BPE model trained for a few steps here,
exported as a Hugging Face directory, evaluated by the CLI on every task with --limit; the table files are checked.
Tasks whose data is not on this machine run on tiny synthetic files in their official formats (--path)."""
import io
import json
import math
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2jax.config import GPTConfig
from gpt2jax.eval import tasks as tasks_lib
from gpt2jax.eval import zeroshot
from gpt2jax.weights.hf import export_hf
from gpt2jax.model import GPT, init_params, mean_loss
from gpt2jax.tokenizer import gpt2_tokenizer

from .conftest import REPO, SHARED_DATA

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory):
    """15 AdamW steps on Tiny Shakespeare (GPT-2 BPE), exported as an HF directory."""
    text = (REPO / "data" / "tinyshakespeare.txt").read_text()[:200_000]
    tokens = np.asarray(gpt2_tokenizer().encode(text), np.int32)
    params = init_params(CFG, jax.random.key(0))
    tx = optax.adamw(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        loss, grads = jax.value_and_grad(lambda p: mean_loss(GPT(CFG).apply({"params": p}, batch[:, :-1]),
                                                             batch[:, 1:]))(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(15):
        starts = rng.integers(0, len(tokens) - 65, 8)
        params, opt, loss = step(params, opt, jnp.asarray(np.stack([tokens[s:s + 65] for s in starts])))
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 2.0, losses  # it learned something (unigram statistics at least)
    return export_hf(CFG, params, tmp_path_factory.mktemp("tiny_trained"))


def synthetic_files(d):
    """Tiny files in the official formats of the sets this machine does not have."""
    wt = (REPO / "data" / "eval" / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")
    raw = (REPO / "data" / "eval" / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    (d / "wt103.tokens").write_text("".join(wt.splitlines(keepends=True)[:6]), encoding="utf-8")
    (d / "wt103.raw").write_text("".join(raw.splitlines(keepends=True)[:6]), encoding="utf-8")
    xml = ("<page><title>Anarchism</title><text>'''Anarchism''' is a [[political philosophy]] "
           "that holds [[stateless society|stateless societies]] \u2014 caf\u00e9 &amp; na\u00efve.</text></page>\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("enwik8", (xml * 20).encode("utf-8"))
    (d / "enwik8.zip").write_bytes(buf.getvalue())
    (d / "text8").write_text("anarchism originated as a term of abuse first used against early working class "
                             "radicals including the diggers of the english revolution " * 10)
    story = [f"{i} The boy saw the dog near the old mill , and he said `` hello '' to it ." for i in range(1, 21)]
    cbt = "\n".join(story + ["21 Then the XXXXX ran away .\tdog\t\tboy|dog|mill|hello|it|he|old|near|saw|ran",
                             ""] + story + ["21 The XXXXX said hello .\tboy\t\tboy|dog|mill", "", ""])
    (d / "cbt_cn.txt").write_text(cbt)
    (d / "cbt_ne.txt").write_text(cbt)
    (d / "1bw.txt").write_text("The company said it would n't comment .\nShares rose 5 % to $ 12 on Monday .\n"
                               "`` We are pleased , '' he said .\n")
    return {"wikitext103": d / "wt103.tokens", "wikitext103_raw": d / "wt103.raw", "enwik8": d / "enwik8.zip",
            "text8": d / "text8", "cbt_cn": d / "cbt_cn.txt", "cbt_ne": d / "cbt_ne.txt", "1bw": d / "1bw.txt"}


def test_whole_suite_writes_the_table_files(trained_model_dir, tmp_path, capsys):
    paths = synthetic_files(tmp_path)
    out = tmp_path / "out"
    argv = ["--init_from", str(trained_model_dir), "--tasks", "all", "--limit", "2", "--out_dir", str(out),
            "--data_dir", str(SHARED_DATA), "--no_progress", "--stride", "16"]
    for key, p in paths.items():
        argv += ["--path", f"{key}={p}"]
    assert zeroshot.main(argv) == 0
    console = capsys.readouterr().out

    result = json.loads((out / "results.json").read_text())
    meta, rows = result["meta"], result["rows"]
    assert meta["n_ctx"] == 64 and meta["stride"] == 16 and meta["limit"] == 2 and meta["reference"] == "gpt2"
    expected = {
        "wikitext2": {("paper", "ppl"), ("paper", "ppl_bpe"), ("lm-eval", "word_ppl"), ("lm-eval", "byte_ppl"),
                      ("lm-eval", "bits_per_byte")},
        "wikitext103": {("paper", "ppl"), ("paper", "ppl_bpe"), ("lm-eval", "word_ppl"), ("lm-eval", "byte_ppl"),
                        ("lm-eval", "bits_per_byte")},
        "ptb": {("paper", "ppl"), ("paper", "ppl_bpe")},
        "lambada": {("last-token", "acc"), ("strict", "acc"), ("stopword-filter", "acc"), ("lm-eval", "acc"),
                    ("lm-eval", "ppl")},
        "enwik8": {("paper", "bpb")}, "text8": {("paper", "bpc")}, "cbt_cn": {("paper", "acc")},
        "cbt_ne": {("paper", "acc")}, "1bw": {("paper", "ppl"), ("paper", "ppl_bpe")},
    }
    if not (SHARED_DATA / "ptb" / "ptb.test.txt").is_file():
        expected["ptb"] = {("paper", "—")}
    got = {}
    for r in rows:
        got.setdefault(r["task"], set()).add((r["protocol"], r["metric"]))
    assert got == expected
    for r in rows:
        if r["metric"] == "—":
            assert r["value"] is None and r["note"].startswith("data not available")
            continue
        assert math.isfinite(r["value"]) and r["count"] > 0, r
        assert r["note"].startswith("LIMITED to 2")
        if r["metric"] == "acc":
            assert 0 <= r["value"] <= 100
        elif r["metric"].startswith("bp"):
            assert 0 < r["value"] < 40  # bits per byte: a trained 50k-way model is far below log2(50257) = 15.6
        else:
            assert r["value"] > 1
    by_key = {(r["task"], r["protocol"], r["metric"]): r for r in rows}
    assert by_key[("wikitext2", "paper", "ppl")]["paper"] == 29.41
    assert by_key[("wikitext2", "lm-eval", "word_ppl")]["lm-eval"] == 37.37
    assert by_key[("lambada", "lm-eval", "acc")]["lm-eval"] == 32.56
    assert by_key[("enwik8", "paper", "bpb")]["count"] == 2000  # --limit 2 -> 2,000 bytes
    assert by_key[("cbt_cn", "paper", "acc")]["count"] == 2
    assert "original tokens" in by_key[("1bw", "paper", "ppl")]["convention"]

    md = (out / "results.md").read_text()
    assert md.count("\n| wikitext2 | ") == 5 and "| lambada | stopword-filter | acc |" in md
    assert "Limited run" in md
    assert (out / "results.png").stat().st_size > 10_000
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    assert "zero-shot results" in console and "lambada" in console


def test_download_fetches_and_extracts_into_the_cache(tmp_path):
    """--download: the official archive is fetched (here from a file:// URL) and the member extracted."""
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("text8", "a b c d")
    f = tasks_lib.DataFile("text8", "text8/text8", archive.as_uri(), "text8")
    cache = tmp_path / "cache"
    got = tasks_lib.resolve(f, tmp_path / "nodata", cache, {}, download=True)
    assert got.path == cache / "text8" / "text8" and got.path.read_text() == "a b c d"
    bad = tasks_lib.DataFile("x", "x/x", (tmp_path / "missing.zip").as_uri(), "x")
    got = tasks_lib.resolve(bad, tmp_path / "nodata", cache, {}, download=True)
    assert got.path is None and got.missing.startswith("data not available (download failed")


class FakeScorer:
    """NLL 0 for one chosen token id, 1 for every other target: makes protocol arithmetic checkable by hand."""

    batch_size = 4

    def __init__(self, good_id):
        self.good_id = good_id

    def __call__(self, inputs, targets):
        return {"nll": np.where(targets == self.good_id, 0.0, 1.0), "greedy": targets == self.good_id}

    def nll_fn(self, inputs, targets):
        return self(inputs, targets)["nll"]


def test_cbt_parsing_and_choice(tmp_path):
    from gpt2jax.eval import protocols

    paths = synthetic_files(tmp_path)
    examples = protocols.parse_cbt(paths["cbt_cn"].read_text())
    assert len(examples) == 2 and len(examples[0].context) == 20 and len(examples[0].candidates) == 10
    assert examples[0].query == "Then the XXXXX ran away ." and examples[0].answer == "dog"
    assert examples[1].candidates == ["boy", "dog", "mill"]
    tok = gpt2_tokenizer()
    # the scorer likes " dog": it wins both examples, so accuracy is 1/2 (answers: dog, boy)
    (r,) = protocols.cbt(FakeScorer(tok.encode(" dog")[0]), tok, examples, n_ctx=64)
    assert r.value == 50.0 and r.count == 2
    with pytest.raises(ValueError, match="not a CBT line"):
        protocols.parse_cbt("hello world\n")


def test_bits_per_byte_arithmetic():
    from gpt2jax.eval import protocols

    tok = gpt2_tokenizer()
    data = "caf\u00e9 au lait, s'il vous pla\u00eet ".encode("utf-8") * 5
    (r,) = protocols.bits_per_byte(FakeScorer(-1), tok, data, n_ctx=16, stride=8)
    n_tokens = len(tok.encode(data.decode("utf-8")))  # every BPE token costs 1 nat (the <|endoftext|> is context)
    assert r.metric == "bpb" and r.count == len(data)
    assert r.value == pytest.approx(n_tokens / (len(data) * math.log(2)))
