"""One clear message for each way a zero-shot run can be asked for the impossible (acceptance 5)."""
import json
import subprocess
import sys

import jax
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.eval import zeroshot
from gpt2jax.eval.tasks import TASKS, DataError
from gpt2jax.weights.hf import export_hf
from gpt2jax.model import init_params

from .conftest import REPO


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    return export_hf(cfg, init_params(cfg, jax.random.key(0)), tmp_path_factory.mktemp("tiny_hf"))


def test_unknown_task_lists_the_valid_ones_before_loading_anything():
    # --init_from does not exist: the task name is checked first
    with pytest.raises(DataError) as e:
        zeroshot.main(["--init_from", "/nonexistent/model", "--tasks", "wikitext2,wikitext4"])
    msg = str(e.value)
    assert "wikitext4" in msg and all(name in msg for name in TASKS)


def test_explicit_path_that_does_not_exist_is_an_error(tmp_path):
    missing = tmp_path / "ptb.test.txt"
    with pytest.raises(DataError, match="no such file") as e:
        zeroshot.main(["--init_from", "/nonexistent/model", "--tasks", "ptb", "--path", f"ptb={missing}"])
    assert str(missing) in str(e.value)
    with pytest.raises(DataError, match="expected KEY=FILE with KEY one of"):
        zeroshot.main(["--init_from", "/nonexistent/model", "--tasks", "ptb", "--path", f"pbt={missing}"])


def test_window_longer_than_the_model_context(model_dir):
    with pytest.raises(ConfigError) as e:
        zeroshot.main(["--init_from", str(model_dir), "--tasks", "lambada", "--n_ctx", "1024"])
    msg = str(e.value)
    assert "--n_ctx 1024" in msg and "n_positions=64" in msg and "--n_ctx 64 or less" in msg


def test_batch_size_must_split_over_devices(model_dir):
    with pytest.raises(ConfigError, match=f"not a multiple of the {jax.device_count()} devices"):
        zeroshot.main(["--init_from", str(model_dir), "--tasks", "lambada", "--batch_size", "3"])


def test_missing_dataset_is_a_row_not_a_crash(model_dir, tmp_path):
    out = tmp_path / "out"
    code = zeroshot.main(["--init_from", str(model_dir), "--tasks", "enwik8,cbt_cn,wikitext103",
                          "--data_dir", str(tmp_path / "empty"), "--cache_dir", str(tmp_path / "cache"),
                          "--out_dir", str(out), "--no_progress"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["protocol"]) for r in rows] == [("enwik8", "paper"), ("cbt_cn", "paper"),
                                                          ("wikitext103", "paper"), ("wikitext103", "lm-eval")]
    for r in rows:
        assert r["value"] is None and r["note"].startswith("data not available (not found locally)")
        assert "--path" in r["note"] and "official source: http" in r["note"]
    assert "mattmahoney.net/dc/enwik8.zip" in rows[0]["note"]
    assert "data not available" in (out / "results.md").read_text()


def test_cli_prints_one_error_line_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "gpt2jax.eval.zeroshot", "--init_from", "gpt2", "--tasks", "nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown task(s) ['nope']; valid tasks: wikitext2")
    assert "Traceback" not in proc.stderr
