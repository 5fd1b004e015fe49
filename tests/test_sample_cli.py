"""`python -m gpt2jax.sample`: streams what the library generates, checks options first, handles long prompts."""
import json
import subprocess
import sys

import jax
import pytest

from gpt2jax.config import GPTConfig
from gpt2jax.generation.generate import GREEDY, GenerationError, Sampling, generate_text
from gpt2jax.weights.hf import export_hf
from gpt2jax.weights.load import load_model
from gpt2jax.sample import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
# Tiny random GPT-2 with the real BPE vocabulary (so the GPT-2 tokenizer applies), weights 10x GPT-2's init
# so that greedy decoding does not just repeat the prompt's last token.
CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64)
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from gpt2jax.model import init_params

    params = jax.tree.map(lambda a: a * 10 if a.ndim >= 2 else a, init_params(CFG, jax.random.key(0)))
    return str(export_hf(CFG, params, tmp_path_factory.mktemp("tiny") / "hf"))


@pytest.fixture(scope="module")
def model(hf_dir):
    cfg, params, tok = load_model(hf_dir)
    return cfg, jax.device_put(params), tok


class Recorder:
    """stdout stand-in that keeps every write, to see that text arrives in pieces (streaming)."""

    def __init__(self):
        self.writes = []

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        pass

    @property
    def text(self):
        return "".join(self.writes)


def run_cli(monkeypatch, *argv) -> Recorder:
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(list(argv)) == 0
    return out


def test_streams_the_same_text_as_the_library(monkeypatch, hf_dir, model, tmp_path):
    cfg, params, tok = model
    out_json = tmp_path / "samples.json"
    out = run_cli(monkeypatch, "--init_from", hf_dir, "--prompt", PROMPT, "--max_new_tokens", "12", "--top_k", "40",
                  "--seed", "5", "--num_samples", "2", "--out", str(out_json))
    expected = [generate_text(cfg, params, tok, PROMPT, 12, Sampling(top_k=40, seed=5 + i)) for i in range(2)]
    assert all(e for e in expected)
    for i, text in enumerate(expected):
        assert f"sample {i + 1}/2 (seed {5 + i})\n{PROMPT}{text}\n" in out.text
    assert len([w for w in out.writes if w.strip()]) >= 8  # pieces arrive one by one, not as one block
    record = json.loads(out_json.read_text())
    assert [s["text"] for s in record["samples"]] == expected and record["settings"]["top_k"] == 40


def test_greedy_stop_string_and_quiet(monkeypatch, hf_dir, model):
    cfg, params, tok = model
    full = generate_text(cfg, params, tok, PROMPT, 12, GREEDY)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    out = run_cli(monkeypatch, "--init_from", hf_dir, "--prompt", PROMPT, "--max_new_tokens", "12",
                  "--temperature", "0", "--stop", stop, "--quiet")
    assert out.text == full[: full.index(stop)] + "\n"


def test_long_prompt_is_an_error_unless_truncated(monkeypatch, hf_dir, model, capsys):
    cfg, params, tok = model
    long = " ".join(["fox"] * 80)  # 80 tokens > n_positions = 64
    with pytest.raises(GenerationError, match="--truncate_prompt"):
        main(["--init_from", hf_dir, "--prompt", long, "--max_new_tokens", "8"])
    out = run_cli(monkeypatch, "--init_from", hf_dir, "--prompt", long, "--max_new_tokens", "8", "--temperature", "0",
                  "--truncate_prompt")
    kept = tok.encode(long)[-(64 - 8):]
    assert "dropped the first 24" in capsys.readouterr().err
    assert out.text.endswith(generate_text(cfg, params, tok, tok.decode(kept), 8, GREEDY) + "\n----------\n")


def test_bad_options_fail_before_loading_the_model():
    for argv, match in [(["--top_p", "1.5"], "top_p"), (["--temperature", "-1"], "temperature"),
                        (["--top_k", "0"], "top_k"), (["--num_samples", "0"], "num_samples")]:
        with pytest.raises(GenerationError, match=match):  # a model that does not exist is never opened
            main(["--init_from", "/nonexistent/model", *argv])


def test_command_line_exit_code_and_help(hf_dir):
    run = lambda *a: subprocess.run([sys.executable, "-m", "gpt2jax.sample", *a], cwd=REPO, capture_output=True,
                                    text=True, timeout=120)
    help_ = run("--help")
    assert help_.returncode == 0 and "--truncate_prompt" in help_.stdout and "--top_p" in help_.stdout
    bad = run("--init_from", hf_dir, "--prompt", " ".join(["fox"] * 80), "--max_new_tokens", "8")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: prompt 0 has 80 tokens")
