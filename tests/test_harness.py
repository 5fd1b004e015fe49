"""lm-evaluation-harness with our `gpt2jax` backend equals the harness with its own `hf` backend (transformers) on
the same tiny trained GPT-2, exported to Hugging Face format, on four offline local tasks: WikiText-2 articles
(loglikelihood_rolling, the harness's own wikitext task definition), a multiple-choice task, LAMBADA
(lambada_openai's definition) and a greedy generate_until task. Every logged request agrees (log-likelihoods to
1e-4 relative, greedy flags and generated text exactly) and so does every metric (accuracies exactly).
Also (marked slow): `python -m gpt2jax.eval.harness` (the lm_eval CLI with our model registered) writes the
same numbers.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from gpt2jax.eval import protocols  # noqa: E402
from gpt2jax.tokenizer import GPT2_PATTERN, GPT2_RANKS_PATH  # noqa: E402

from .conftest import REPO  # noqa: E402
from .test_eval_e2e import CFG, trained_model_dir  # noqa: E402,F401  (the tiny trained model, exported to HF)

TASKS = ["local_wikitext", "local_choice", "local_lambada", "local_generate"]
RTOL = 1e-4

HEADER = """task: {task}
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
output_type: {output_type}
test_split: test
"""
WIKITEXT_YAML = """doc_to_text: ""
doc_to_target: !function preprocess_wikitext.wikitext_detokenizer
process_results: !function preprocess_wikitext.process_results
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
LAMBADA_YAML = """doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
CHOICE_YAML = """doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GENERATE_YAML = """doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n\\n", "."]
  do_sample: false
  max_gen_toks: 12
metric_list:
  - metric: exact_match
"""
CHOICES = [
    ("First Citizen:\nWe are accounted poor citizens, the", [" patricians", " king", " sea"], 0),
    ("ROMEO:\nBut, soft! what light through yonder window", [" breaks", " sings", " falls"], 0),
    ("KING RICHARD II:\nNow is the winter of our", [" discontent", " joy", " land"], 0),
    ("MENENIUS:\nI tell you, friends, most charitable care\nHave the", [" patricians", " cats", " stars"], 0),
    ("JULIET:\nO Romeo, Romeo! wherefore art thou", [" Romeo", " here", " gone"], 0),
    ("LADY CAPULET:\nWhat say you? can you love the", [" gentleman", " river", " horse"], 0),
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tasks(d: Path) -> Path:
    """Task yamls (the harness's wikitext and lambada_openai definitions, pointed at local json files) + data."""
    import lm_eval

    d.mkdir()
    shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "preprocess_wikitext.py", d)
    raw = (REPO / "data" / "eval" / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    pages = write_jsonl(d / "wikitext.jsonl", [{"page": p} for p in protocols.wikitext_pages(raw)[:2]])
    lambada = (REPO / "data" / "eval" / "lambada" / "lambada_test.jsonl").read_text(encoding="utf-8").splitlines()
    lam = d / "lambada.jsonl"
    lam.write_text("\n".join(lambada[:16]) + "\n", encoding="utf-8")
    choice = write_jsonl(d / "choice.jsonl", [{"question": q, "choices": c, "answer": a} for q, c, a in CHOICES])
    lines = [l for l in (REPO / "data" / "tinyshakespeare.txt").read_text().split("\n\n")[:8]]
    gen = write_jsonl(d / "generate.jsonl", [{"prompt": block[:120], "target": ""} for block in lines])
    for name, output_type, body, data in (
            ("wikitext", "loglikelihood_rolling", WIKITEXT_YAML, pages), ("lambada", "loglikelihood", LAMBADA_YAML, lam),
            ("choice", "multiple_choice", CHOICE_YAML, choice), ("generate", "generate_until", GENERATE_YAML, gen)):
        header = HEADER.format(task=f"local_{name}", data=json.dumps(str(data)), output_type=output_type)
        (d / f"{name}.yaml").write_text(header + body.replace("{{", "{").replace("}}", "}"), encoding="utf-8")
    return d


def write_hf_tokenizer(d: Path) -> Path:
    """transformers' GPT-2 tokenizer rebuilt offline from our tiktoken ranks (STACK-FACTS)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(GPT2_RANKS_PATH), pattern=GPT2_PATTERN,
                            additional_special_tokens=["<|endoftext|>"]).converted()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def harness_runs(trained_model_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("harness")
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "HF_DATASETS_CACHE": str(root / "hf_datasets")}.items():
        os.environ.setdefault(k, v)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import gpt2jax.eval.harness  # noqa: F401  registers "gpt2jax"

    tasks_dir = write_tasks(root / "tasks")
    tokenizer_dir = write_hf_tokenizer(root / "tokenizer")
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)  # indexing lm-eval's own tasks takes ~30 s
    # bootstrap_iters=0: no stderr bootstrapping, which forks a multiprocessing pool from this (JAX) process
    common = dict(tasks=TASKS, task_manager=tm, log_samples=True, bootstrap_iters=0,
                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    ours = simple_evaluate(model="gpt2jax", model_args=f"init_from={trained_model_dir},batch_size=8", **common)
    hf = simple_evaluate(model="hf", model_args=f"pretrained={trained_model_dir},tokenizer={tokenizer_dir},"
                                                f"max_length={CFG.n_positions},dtype=float32",
                         batch_size=8, device="cpu", **common)
    return {"ours": ours, "hf": hf, "tasks_dir": tasks_dir, "model": trained_model_dir}


def responses(run, task):
    return [s["resps"] for s in sorted(run["samples"][task], key=lambda s: s["doc_id"])]


def assert_loglikelihoods_equal(ours, hf):
    assert len(ours) == len(hf) and len(ours) > 0
    for a, b in zip(ours, hf):
        assert len(a) == len(b)
        for (x,), (y,) in zip(a, b):  # each response: [(loglik, is_greedy)] or [loglik]
            x, y = (x if isinstance(x, (list, tuple)) else [x]), (y if isinstance(y, (list, tuple)) else [y])
            np.testing.assert_allclose(float(x[0]), float(y[0]), rtol=RTOL)
            assert [bool(v) for v in x[1:]] == [bool(v) for v in y[1:]]


def metrics(run, task):
    return {k: v for k, v in run["results"][task].items() if k != "alias" and "stderr" not in k}


@pytest.mark.parametrize("task", ["local_wikitext", "local_choice", "local_lambada"])
def test_loglikelihood_tasks_match_hf_backend(harness_runs, task):
    ours, hf = harness_runs["ours"], harness_runs["hf"]
    assert_loglikelihoods_equal(responses(ours, task), responses(hf, task))
    a, b = metrics(ours, task), metrics(hf, task)
    assert a.keys() == b.keys() and a
    for k in a:
        if k.startswith("acc") or not isinstance(a[k], float):
            assert a[k] == b[k], k
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=RTOL, err_msg=k)


def test_rolling_task_really_uses_several_windows(harness_runs):
    # the articles are far longer than the 64-token context: lm-eval's disjoint windows are exercised
    ll = [r[0][0] for r in responses(harness_runs["ours"], "local_wikitext")]
    assert len(ll) == 2 and all(v < -64 * 4 for v in ll)


def test_greedy_generation_matches_hf_backend(harness_runs):
    ours = responses(harness_runs["ours"], "local_generate")
    hf = responses(harness_runs["hf"], "local_generate")
    assert ours == hf and len(ours) == 8
    assert sum(len(r[0]) for r in ours) > 0  # it generated something
    assert metrics(harness_runs["ours"], "local_generate") == metrics(harness_runs["hf"], "local_generate")


@pytest.mark.slow
def test_cli_registers_the_model(harness_runs, tmp_path):
    """`python -m gpt2jax.eval.harness` = lm_eval's CLI with `--model gpt2jax`; same numbers as simple_evaluate.
    Slow (~1 min): lm-eval's CLI always indexes its thousands of built-in task files."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-m", "gpt2jax.eval.harness", "--model", "gpt2jax", "--model_args",
         f"init_from={harness_runs['model']}", "--tasks", "local_choice", "--include_path",
         str(harness_runs["tasks_dir"]), "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    cli = json.loads(results_file.read_text())["results"]["local_choice"]
    ours = harness_runs["ours"]["results"]["local_choice"]
    assert cli["acc,none"] == ours["acc,none"] and cli["acc_norm,none"] == ours["acc_norm,none"]


# ---- the command line as the README writes it; model_args checked; the harness extra missing ----------------------

@pytest.fixture
def cli(harness_runs, monkeypatch, capsys):
    """Run `gpt2jax-lm-eval ARGS` in this process (main(argv)) on the local tasks: lm-eval's TaskManager is told not
    to index its thousands of built-in task files (~30 s; nothing else changes). Returns (rc, stderr, results)."""
    import multiprocessing

    import lm_eval.tasks
    import lm_eval.utils

    from gpt2jax.eval.harness import main

    tm = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **k: tm(*a, **{**k, "include_defaults": False}))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() rewrites it
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # any bootstrapped stderr in this process, not a forked pool
    # lm-eval's handler would keep the first test's captured stderr, closed by the next test (logging errors)
    monkeypatch.setattr(lm_eval.utils, "setup_logging", lambda *a, **k: None)
    start = multiprocessing.get_start_method(allow_none=True)
    out_dir = harness_runs["tasks_dir"].parent / "cli_out"

    def run(*args, tasks="local_choice"):
        shutil.rmtree(out_dir, ignore_errors=True)
        capsys.readouterr()
        rc = main(["--model", "gpt2jax", *args, "--tasks", tasks, "--include_path", str(harness_runs["tasks_dir"]),
                   "--output_path", str(out_dir)])
        files = list(out_dir.rglob("results_*.json"))
        return rc, capsys.readouterr().err, (json.loads(files[0].read_text()) if files else None)

    yield run
    multiprocessing.set_start_method(start, force=True)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_readme_command_batch_size_in_model_args(cli, harness_runs):
    """The README's command: batch_size in --model_args and no --batch_size (lm-eval's CLI used to pass its default
    batch_size=1 beside it: TypeError, multiple values for keyword argument 'batch_size')."""
    rc, err, results = cli("--model_args", f"init_from={harness_runs['model']},batch_size=16")
    assert rc == 0, err[-3000:]
    ours = harness_runs["ours"]["results"]["local_choice"]
    assert results["results"]["local_choice"]["acc,none"] == ours["acc,none"]


@pytest.mark.parametrize("model_args_batch, flag, rows", [
    (16, None, 16),      # README: --model_args only
    (None, "32", 32),    # --batch_size only
    (32, "32", 32),      # both, equal
    (32, "auto", 32),    # a number wins over 'auto'
    (None, None, "8 per device"),  # neither
    (16, "4", None),     # both, different: refused
])
def test_batch_size_from_model_args_or_flag(harness_runs, model_args_batch, flag, rows):
    import jax

    from gpt2jax.config import ConfigError
    from gpt2jax.eval.harness import GPT2JaxLM

    n = jax.local_device_count()  # rows are rounded up to a multiple of it (8 simulated CPU devices here)
    rows = 8 * n if rows == "8 per device" else rows and n * -(-rows // n)
    args = f"init_from={harness_runs['model']}" + (f",batch_size={model_args_batch}" if model_args_batch else "")
    extra = {"batch_size": flag, "max_batch_size": None, "device": None}  # what simple_evaluate passes
    if rows is None:
        with pytest.raises(ConfigError, match=r"batch_size=16 in --model_args and --batch_size 4 disagree"):
            GPT2JaxLM.create_from_arg_string(args, extra)
    else:
        assert GPT2JaxLM.create_from_arg_string(args, extra).batch_size == rows
        assert GPT2JaxLM.create_from_arg_obj(dict(simple_args(args)), extra).batch_size == rows


def simple_args(text: str) -> dict:
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text)


def test_conflicting_batch_sizes_are_one_error_line(cli, harness_runs):
    rc, err, _ = cli("--model_args", f"init_from={harness_runs['model']},batch_size=16", "--batch_size", "4")
    assert rc == 2
    assert error_lines(err) == ["error: batch_size=16 in --model_args and --batch_size 4 disagree; give one of them"]


@pytest.mark.parametrize("bad", ["max_lenght=64", "device=cuda:3"])
def test_unknown_model_args_are_refused(cli, harness_runs, bad):
    rc, err, results = cli("--model_args", f"init_from={harness_runs['model']},{bad}")
    assert rc == 2 and results is None
    (line,) = error_lines(err)
    assert line.startswith(f"error: unknown --model_args {bad} for --model gpt2jax; it accepts init_from, "
                           "batch_size, max_length, max_gen_toks, dtype"), line
    assert ("CUDA_VISIBLE_DEVICES" in line and "JAX_PLATFORMS" in line) == bad.startswith("device")


def test_unknown_model_args_are_refused_from_python(harness_runs):
    from lm_eval import simple_evaluate

    from gpt2jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown --model_args device=cuda:3 .*CUDA_VISIBLE_DEVICES"):
        simple_evaluate(model="gpt2jax", model_args=f"init_from={harness_runs['model']},device=cuda:3",
                        tasks=["local_choice"], bootstrap_iters=0)


def test_device_flag_is_refused(cli, harness_runs):
    rc, err, results = cli("--model_args", f"init_from={harness_runs['model']}", "--device", "cuda:3")
    assert rc == 2 and results is None
    (line,) = error_lines(err)
    assert line.startswith("error: --device cuda:3: --model gpt2jax takes no device. JAX chooses the devices"), line


HARNESS_MISSING_LINE = ('error: gpt2jax-lm-eval needs lm-evaluation-harness, the `harness` extra '
                        '(No module named \'lm_eval\'); install it with: pip install "gpt2jax[harness]"')


@pytest.mark.parametrize("how", ["console_script", "python_m", "python_m_run"])
def test_without_the_harness_extra_one_error_line(tmp_path, how):
    """lm_eval made unimportable (a directory first on PYTHONPATH whose `lm_eval` raises as a missing module does):
    `gpt2jax-lm-eval --help` and a run print one error line naming the extra, exit 2, no traceback."""
    shadow = tmp_path / "no_lm_eval" / "lm_eval"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'lm_eval'\", name='lm_eval')\n")
    script = Path(sys.executable).parent / "gpt2jax-lm-eval"
    if how == "console_script" and not script.exists():
        pytest.skip("gpt2jax-lm-eval is not installed in this environment")
    cmd = {"console_script": [str(script), "--help"],
           "python_m": [sys.executable, "-m", "gpt2jax.eval.harness", "--help"],
           "python_m_run": [sys.executable, "-m", "gpt2jax.eval.harness", "--model", "gpt2jax", "--model_args",
                            "init_from=gpt2", "--tasks", "lambada_openai"]}[how]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)])}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [HARNESS_MISSING_LINE], out.stderr[-3000:]
    assert out.stdout == ""


def test_without_the_harness_extra_from_main():
    """The same with sys.modules['lm_eval'] = None before main() is imported and called."""
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from gpt2jax.eval.harness import main\n"
            "sys.exit(main(['--help']))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: gpt2jax-lm-eval needs lm-evaluation-harness")
    assert line.endswith('install it with: pip install "gpt2jax[harness]"')
