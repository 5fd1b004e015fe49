"""Issue 9, finding 8 / acceptances 4 and 6: every CLI answers bad input with one clear line (exit 2) before any
expensive work, never a traceback, a silent acceptance or a hang. Issue 37 adds run names and metrics files.

`test_finding8_tally` runs one concrete case for each kind of bad input the issue lists and prints the tally
(clear / traceback / accepted / hang). `test_fuzz_*` let hypothesis combine flags, values, config files, data files
and prompts for each of the five CLIs, in-process (`run_cli(main, argv)`), each case under a time bound."""
import contextlib
import signal
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gpt2jax.config import GPTConfig
from gpt2jax.data import prepare
from gpt2jax.errors import run_cli
from gpt2jax.eval import zeroshot
from gpt2jax import sample, sweep, train

REPO = Path(__file__).resolve().parents[1]
CASE_SECONDS = 30  # a case running longer counts as a hang
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TALLY: dict[str, int] = {}


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds=CASE_SECONDS):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(main, argv, capsys) -> tuple[str, str]:
    """('clear' | 'accepted' | 'traceback' | 'hang', the last stderr line)."""
    capsys.readouterr()
    try:
        with time_bound():
            code = run_cli(main, argv)
    except Hang:
        return "hang", ""
    except BaseException as e:  # noqa: BLE001 - exactly what the test is looking for
        return "traceback", f"{type(e).__name__}: {e}"
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1] if err else ""
    if code == 0:
        return "accepted", last
    clear = code in (1, 2) and (last.startswith("error:") or ": error: " in last)
    return ("clear" if clear else "traceback"), last


@pytest.fixture(scope="module")
def files(tmp_path_factory, char_data):
    """Good and bad inputs of every kind, made once."""
    from gpt2jax.weights.hf import export_hf
    from gpt2jax.model import init_params

    d = tmp_path_factory.mktemp("fuzz_inputs")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (d / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (d / "empty.txt").write_text("")
    (d / "text.txt").write_text((REPO / "data" / "tinyshakespeare.txt").read_text()[:3000])
    (d / "a_file").write_text("not a directory")
    (d / "a_dir").mkdir()
    (d / "syntax.py").write_text("def get_experiment(:\n")
    (d / "no_function.py").write_text("x = 1\n")
    (d / "exp.py").write_text(
        "from gpt2jax.sweep import Experiment\n"
        f"def get_experiment():\n    return Experiment(name='e', base={str(REPO / 'configs' / 'tiny_test.py')!r}, "
        f"grid={{'model.n_layer': [1, 2]}}, overrides={{'data.dir': {str(char_data)!r}}}, run_root={str(d / 'sw')!r})\n")
    (d / "lambada.jsonl").write_text("not json\n")
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    hf = export_hf(cfg, init_params(cfg, jax.random.key(0)), d / "hf")
    return dict(dir=d, hf=str(hf), char_data=str(char_data))


def finding8_cases(f) -> dict[str, tuple]:
    d, tiny = f["dir"], str(REPO / "configs" / "tiny_test.py")
    good = [f"--config.data.dir={f['char_data']}", f"--config.run_root={d / 'runs'}"]
    zs = ["--init_from", f["hf"], "--tasks", "wikitext2", "--no_progress", "--out_dir", str(d / "zs")]
    return {
        "train: unknown config key": (train.main, ["train", "--config", tiny, "--config.train.nope=1", *good]),
        "train: unknown config section": (train.main, ["train", "--config", tiny, "--config.nope.x=1", *good]),
        "train: wrong value type": (train.main, ["train", "--config", tiny, "--config.train.max_steps=abc", *good]),
        "train: missing config file": (train.main, ["train", "--config", str(d / "missing.py"), *good]),
        "train: config file is a directory": (train.main, ["train", "--config", str(d / "a_dir"), *good]),
        "train: run dir is a file": (train.main, ["train", "--config", tiny, *good, f"--config.run_root={d}",
                                                  "--config.name=a_file"]),
        "train: lr=nan": (train.main, ["train", "--config", tiny, "--config.optim.lr=nan", *good]),
        "train: negative eval_batch_size": (train.main, ["train", "--config", tiny,
                                                         "--config.train.eval_batch_size=-8", *good]),
        "train: checkpoint_every=-1": (train.main, ["train", "--config", tiny, "--config.train.checkpoint_every=-1",
                                                    *good]),
        "prepare: binary input": (prepare.main, ["--input", str(d / "binary.txt"), "--out", str(d / "p1")]),
        "prepare: non-UTF-8 input": (prepare.main, ["--input", str(d / "latin1.txt"), "--out", str(d / "p2")]),
        "prepare: empty input": (prepare.main, ["--input", str(d / "empty.txt"), "--out", str(d / "p3"),
                                                "--tokenizer", "char"]),
        "prepare: --out is a file": (prepare.main, ["--input", str(d / "text.txt"), "--out", str(d / "a_file")]),
        "prepare: --shard_tokens 0": (prepare.main, ["--input", str(d / "text.txt"), "--out", str(d / "p4"),
                                                     "--shard_tokens", "0", "--tokenizer", "char"]),
        "prepare: --shard_tokens -3": (prepare.main, ["--input", str(d / "text.txt"), "--out", str(d / "p5"),
                                                      "--shard_tokens", "-3", "--tokenizer", "char"]),
        "eval: binary input": (zeroshot.main, [*zs, "--path", f"wikitext2={d / 'binary.txt'}"]),
        "eval: empty input": (zeroshot.main, [*zs, "--path", f"wikitext2={d / 'empty.txt'}"]),
        "eval: lambada file not JSON": (zeroshot.main, ["--init_from", f["hf"], "--tasks", "lambada", "--path",
                                                        f"lambada={d / 'lambada.jsonl'}", "--no_progress",
                                                        "--out_dir", str(d / "zs")]),
        "eval: --out_dir is a file": (zeroshot.main, [*zs[:-1], str(d / "a_file")]),
        "eval: --n_ctx 0": (zeroshot.main, [*zs, "--n_ctx", "0"]),
        "eval: --stride 0": (zeroshot.main, [*zs, "--stride", "0"]),
        "eval: --batch_size 0": (zeroshot.main, [*zs, "--batch_size", "0"]),
        "sample: --out inside a file": (sample.main, ["--init_from", f["hf"], "--out", str(d / "a_file" / "x.json")]),
        "sample: binary --prompt_file": (sample.main, ["--init_from", f["hf"], "--prompt_file",
                                                       str(d / "latin1.txt")]),
        "sweep: syntax error": (sweep.main, [str(d / "syntax.py"), "--dry_run"]),
        "sweep: --set key=abc": (sweep.main, [str(d / "exp.py"), "--set", "train.max_steps=abc", "--dry_run"]),
        "sweep: --set unknown key": (sweep.main, [str(d / "exp.py"), "--set", "train.nope=1", "--dry_run"]),
    }


def test_finding8_tally(files, capsys):
    """Acceptance 6: every listed kind of bad input ends in one clear line."""
    results = {name: outcome(main, argv, capsys) for name, (main, argv) in finding8_cases(files).items()}
    tally = {k: sum(1 for o, _ in results.values() if o == k) for k in ("clear", "traceback", "accepted", "hang")}
    with capsys.disabled():
        print(f"\nfinding-8 tally over {len(results)} kinds of bad input: {tally}")
        for name, (o, line) in results.items():
            print(f"  {o:9s} {name}: {line[:150]}")
    assert tally["clear"] == len(results), {k: v for k, v in results.items() if v[0] != "clear"}


def check(main, argv, capsys):
    kind, line = outcome(main, argv, capsys)
    TALLY[kind] = TALLY.get(kind, 0) + 1
    assert kind in ("clear", "accepted"), (argv, kind, line)


@FUZZ
@given(data=st.data())
def test_fuzz_train(files, capsys, data):
    d = files["dir"]
    config = data.draw(st.sampled_from([str(REPO / "configs" / "tiny_test.py"), str(d / "missing.py"),
                                        str(d / "a_dir"), str(d / "binary.txt"), str(d / "syntax.py"),
                                        str(d / "no_function.py")]))
    keys = ["train.max_steps", "train.batch_size", "train.eval_batch_size", "train.checkpoint_every", "optim.lr",
            "optim.min_lr", "model.n_head", "model.dropout", "data.seq_len", "train.nope", "nope.x", "train.resume",
            "train.watchdog_timeout_s", "mesh.data", "name"]
    values = ["0", "-1", "abc", "nan", "inf", "1e6", "3", "True", "", "a/b", "8"]
    overrides = data.draw(st.lists(st.tuples(st.sampled_from(keys), st.sampled_from(values)), max_size=4))
    data_dir = data.draw(st.sampled_from([d / "missing", d / "a_dir", d / "a_file"]))  # never trains: no compiles
    argv = ["train", "--config", config, f"--config.data.dir={data_dir}", f"--config.run_root={d / 'fuzz_runs'}",
            *[f"--config.{k}={v}" for k, v in overrides]]
    check(train.main, argv, capsys)


@FUZZ
@given(data=st.data())
def test_fuzz_prepare(files, capsys, data):
    d = files["dir"]
    inputs = data.draw(st.lists(st.sampled_from(["text.txt", "binary.txt", "latin1.txt", "empty.txt", "missing",
                                                 "a_dir", "a_file"]), min_size=1, max_size=2))
    argv = ["--input", *[str(d / i) for i in inputs],
            "--out", str(data.draw(st.sampled_from([d / "prep_out", d / "a_file", d / "a_file" / "x"]))),
            "--overwrite", "--workers", "1"]
    for flag, choices in (("--shard_tokens", ["0", "-3", "100", "x"]), ("--val_fraction", ["0", "1", "nan", "0.3"]),
                          ("--tokenizer", ["char", "gpt2", "bpe"]), ("--split_by", ["tokens", "documents", "x"])):
        if data.draw(st.booleans()):
            argv += [flag, data.draw(st.sampled_from(choices))]
    check(prepare.main, argv, capsys)


@FUZZ
@given(data=st.data())
def test_fuzz_sample(files, capsys, data):
    d = files["dir"]
    argv = ["--init_from", data.draw(st.sampled_from([files["hf"], str(d / "missing"), str(d / "a_file"),
                                                      str(d / "a_dir")])), "--quiet"]
    prompt = data.draw(st.one_of(st.text(max_size=20), st.sampled_from([str(d / "binary.txt"),
                                                                          str(d / "empty.txt"), str(d / "missing")])))
    argv += ["--prompt_file", prompt] if prompt.startswith(str(d)) else ["--prompt", prompt]
    for flag, choices in (("--max_new_tokens", ["0", "-1", "2"]), ("--temperature", ["nan", "-1", "0", "1"]),
                          ("--top_k", ["0", "-1", "5"]), ("--top_p", ["0", "1.5", "nan", "0.9"]),
                          ("--num_samples", ["0", "1"]), ("--out", [str(d / "a_dir"), str(d / "a_file" / "x")])):
        if data.draw(st.booleans()):
            argv += [flag, data.draw(st.sampled_from(choices))]
    if "--max_new_tokens" not in argv:
        argv += ["--max_new_tokens", "2"]
    check(sample.main, argv, capsys)


@FUZZ
@given(data=st.data())
def test_fuzz_zeroshot(files, capsys, data):
    d = files["dir"]
    argv = ["--init_from", data.draw(st.sampled_from([files["hf"], str(d / "missing")])), "--no_progress",
            "--tasks", data.draw(st.sampled_from(["wikitext2", "lambada", "bogus", "ptb,wikitext2"])),
            "--out_dir", str(data.draw(st.sampled_from([d / "zs", d / "a_file"])))]
    for flag, choices in (("--n_ctx", ["0", "-4", "16", "4096"]), ("--stride", ["0", "-1", "8"]),
                          ("--batch_size", ["0", "3", "8"]), ("--limit", ["0", "2"])):
        if data.draw(st.booleans()):
            argv += [flag, data.draw(st.sampled_from(choices))]
    path = data.draw(st.sampled_from(["binary.txt", "empty.txt", "latin1.txt", "lambada.jsonl", "missing"]))
    key = data.draw(st.sampled_from(["wikitext2", "lambada", "ptb", "nope"]))
    argv += ["--path", f"{key}={d / path}", "--limit", "2"]
    check(zeroshot.main, argv, capsys)


@FUZZ
@given(data=st.data())
def test_fuzz_sweep(files, capsys, data):
    d = files["dir"]
    argv = [str(d / data.draw(st.sampled_from(["exp.py", "syntax.py", "no_function.py", "missing.py",
                                               "text.txt"]))), "--dry_run"]
    for _ in range(data.draw(st.integers(0, 2))):
        argv += ["--set", data.draw(st.sampled_from(["train.max_steps=abc", "train.max_steps=5", "nope=1",
                                                     "model.n_head=3", "optim.lr=nan", "train.batch_size=-1",
                                                     "noequals", "train.checkpoint_every=-1"]))]
    check(sweep.main, argv, capsys)


NAMES = ["..", ".", "", "a/b", "../escape", "..\\x", "x" * 300, "ok", "run 2", "-dash", "café", "a\x00b"]
GOOD_NAMES = ("ok", "run 2", "-dash", "café")
METRICS = {"binary": bytes(range(256)), "torn": b'{"kind": "train", "step": 1, "loss": 3.0}\n{"kind": "tr',
           "wrong types": b'{"kind": "train", "step": "x"}\n{"kind": 3, "step": null}\n[1, 2]\n"text"\n'}


@settings(FUZZ, max_examples=16)
@given(data=st.data())
def test_fuzz_run_names_and_metrics_files(files, capsys, data):
    """Issue 37 (findings 5, 9): run names that would leave run_root, and metrics.jsonl in odd states (a directory,
    binary, torn, wrong types), end in one clear line, never a traceback or a hang, and nothing is written outside
    run_root (an absolute name included). A good name reaches the run dir (lock taken, then refused by
    resume=False over an existing checkpoint, so no case compiles); the metrics reader and the restart rewind
    then read the file as a run would."""
    d = files["dir"]
    root = d / f"names{len(list(d.glob('names*')))}"
    run_root = root / "runs"
    run_root.mkdir(parents=True)
    name = data.draw(st.sampled_from(NAMES + [str(root / "absolute")]))
    metrics = data.draw(st.sampled_from(["missing", "directory", *METRICS]))
    run = run_root / name if name in GOOD_NAMES else None
    if run is not None:
        (run / "checkpoints" / "10").mkdir(parents=True)
        if metrics == "directory":
            (run / "metrics.jsonl").mkdir()
        elif metrics in METRICS:
            (run / "metrics.jsonl").write_bytes(METRICS[metrics])
    before = set(root.rglob("*"))
    argv = ["train", "--config", str(REPO / "configs" / "tiny_test.py"), f"--config.data.dir={files['char_data']}",
            f"--config.run_root={run_root}", f"--config.name={name}", "--config.train.resume=False"]
    kind, line = outcome(train.main, argv, capsys)
    TALLY[kind] = TALLY.get(kind, 0) + 1
    assert kind == "clear", (name, metrics, kind, line)
    outside = [p for p in set(root.rglob("*")) - before if run_root not in p.parents]
    assert not outside, (name, outside)
    if run is not None and metrics in METRICS:
        from gpt2jax.training import metrics as metrics_lib

        with time_bound():
            metrics_lib.read_metrics(run)
            metrics_lib.rewind_metrics(run, 0)
        assert metrics_lib.read_metrics(run) == []


def test_fuzz_tally_report():
    """Prints how many fuzz cases ran (after the fuzz tests above, in file order) and how they ended."""
    print(f"\nfuzz cases: {sum(TALLY.values())} {TALLY}")
    assert not set(TALLY) - {"clear", "accepted"}
