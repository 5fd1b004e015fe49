"""Issue 37 ("nothing silent, nothing lost, round two"): findings 3-10 around the run (the data findings live in
tests/test_data.py). In-process where the fault allows it; real processes for signals and kills.

Every child resets SIGINT to its default: background shell jobs start with it ignored (STACK-FACTS)."""
import errno
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax import sample, sweep, train as train_cli
from gpt2jax.config import ConfigError
from gpt2jax.errors import STOPPED_EXIT_CODE, SaveError, run_cli
from gpt2jax.runtime import lock as lock_lib
from gpt2jax.runtime.signals import SIGNALS, StopSignals
from gpt2jax.training import drift, metrics as metrics_lib
from gpt2jax.training.schema import check_train_config
from gpt2jax.weights import checkpoint as ckpt_lib
from gpt2jax.weights.checkpoint import Checkpoints, load_run
from tests.conftest import copy_run, tiny_run_config as tiny, train_on_one_device as run1
from tests.procs import TINY, finish, start, train_steps, trainer_argv, wait_for

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Sharding info not provided")




def params_of(run_dir, step):
    return [np.asarray(x) for x in jax.tree.leaves(
        ocp.PyTreeCheckpointer().restore(Path(run_dir) / "checkpoints" / str(step) / "params"))]


# ---- finding 3: a damaged newest checkpoint is not taken for an incompatible config ------------------------------

def flip_meta(step_dir: Path, rng: random.Random | None = None) -> None:
    """Flip one character of "n_embd" in meta/metadata (or, given rng, one random bit anywhere in it)."""
    path = step_dir / "meta" / "metadata"
    raw = bytearray(path.read_bytes())
    if rng is None:
        i = raw.index(b"n_embd") + 2
        raw[i] ^= 0x01
    else:
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))


def test_finding3_damaged_newest_meta_resumes_from_the_previous_step(good_run, char_data, tmp_path, capsys):
    """A flipped "n_embd" in step 20's meta: resume names step 20 as unusable and goes on from step 10 (before:
    "incompatible config", exit 2)."""
    run = copy_run(good_run, tmp_path)
    flip_meta(run / "checkpoints" / "20")
    summary = run1(tiny(char_data, tmp_path, max_steps=30))
    err = capsys.readouterr()
    assert summary["start_step"] == 10 and summary["step"] == 30
    assert "checkpoint step 20" in err.out + err.err and "incompatible" not in err.out + err.err


def test_finding3_corrupt_loop_random_bits_of_the_newest_meta(good_run, char_data, tmp_path):
    """Five random bit flips in the newest step's meta/metadata: each time the resume check passes and the restore
    picks step 10, the damaged step 20 named."""
    from gpt2jax.data.shards import open_split
    from gpt2jax.model import abstract_params
    from gpt2jax.training import loop
    from gpt2jax.training.spec import resolve

    tokenizer = open_split(char_data, "train", "char").tokenizer
    rng = random.Random(37)
    for i in range(5):
        run = tmp_path / f"try{i}" / "run"
        shutil.copytree(good_run, run)
        flip_meta(run / "checkpoints" / "20", rng)
        spec = resolve(tiny(char_data, run.parent, max_steps=30), tokenizer)
        ckpts = Checkpoints(run, log=lambda m: None)
        loop.check_run_dir(spec, tokenizer, ckpts)  # raised "incompatible config" before
        step, _, rejected = ckpts.restore_good(abstract_params(spec.model))
        assert step == 10 and [s for s, _ in rejected] == [20], (i, rejected)


# ---- finding 4 + 6: SIGUSR1 / SIGHUP stop with a checkpoint and exit 3 -------------------------------------------

def test_finding4_sigusr1_and_sighup_are_stop_signals():
    assert signal.SIGUSR1 in SIGNALS and signal.SIGHUP in SIGNALS
    said = []
    stop = StopSignals(say=said.append).install()
    try:
        assert signal.getsignal(signal.SIGUSR1) == stop._handle and signal.getsignal(signal.SIGHUP) == stop._handle
        stop.in_loop = True
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        assert stop.requested == "SIGUSR1" and "checkpoint follows" in said[0]
    finally:
        stop.restore()


def argv(data_dir, run_root, *extra, cache=""):
    return trainer_argv(data_dir, run_root, "--config.train.eval_every=100000", *extra, cache=cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla37"))


STEPS, EVERY = 40, 4  # the subprocess runs below: 40 steps, a checkpoint every 4


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory, cache):
    """The params of an uninterrupted 40-step run, for the bitwise checks."""
    root = tmp_path_factory.mktemp("reference37")
    finish(start(argv(char_data, root, f"--config.train.max_steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
                      cache=cache)))
    return params_of(root / "run", STEPS)


def test_finding4_6_sigusr1_in_training_and_sighup_in_a_save_checkpoint_exit_3_and_resume_bitwise(
        char_data, tmp_path, cache, reference):
    """SIGUSR1 during the steps, then SIGHUP while a save is held open (between orbax's commit and the manifest):
    each stops after a step with a verified checkpoint, says so, exits 3 (not 0, not -10/-1); the third start
    finishes with params bitwise equal to an uninterrupted run."""
    extra = [f"--config.train.max_steps={STEPS}", f"--config.train.checkpoint_every={EVERY}"]
    run, stopped = tmp_path / "run", 0
    for sig in (signal.SIGUSR1, signal.SIGHUP):
        held = EVERY * (stopped // EVERY + 2)  # SIGHUP: while the save of step `held` is held open
        proc = start(argv(char_data, tmp_path, *extra, cache=cache),
                     {"GPT2JAX_FAULT_SLEEP": f"commit:{held}:3"} if sig == signal.SIGHUP else {})
        target = held + 1 if sig == signal.SIGHUP else 3
        assert wait_for(lambda: max(train_steps(run), default=0) >= target, proc), finish(proc)
        proc.send_signal(sig)
        out = finish(proc)
        assert proc.returncode == STOPPED_EXIT_CODE, (sig, out[-3000:])
        assert "Traceback" not in out and f"{sig.name}: stopping after this step" in out
        assert f"stopped early by {sig.name}" in out and f"exit {STOPPED_EXIT_CODE}" in out
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stopped_early"] and summary["stopped_by"] == sig.name
        ckpts = Checkpoints(run, read_only=True)
        assert ckpts.latest_step() == summary["step"] and ckpts.problem(summary["step"]) is None
        stopped = summary["step"]
    out = finish(start(argv(char_data, tmp_path, *extra, cache=cache)))
    assert json.loads((run / "summary.json").read_text())["step"] == STEPS, out[-3000:]
    assert all(np.array_equal(x, y) for x, y in zip(reference, params_of(run, STEPS)))
    assert train_steps(run) == list(range(1, STEPS + 1))


def test_finding10_a_signal_during_the_imports_says_so_and_exits_3(tmp_path):
    proc = start([sys.executable, "-m", "gpt2jax.train", "--config", TINY, f"--config.run_root={tmp_path}"])
    time.sleep(0.8)  # the imports (jax, flax, orbax) take seconds
    proc.send_signal(signal.SIGUSR1)
    out = finish(proc, timeout=60)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-2000:]
    assert "SIGUSR1 during start-up" in out and "Traceback" not in out


def test_finding6_a_signal_during_start_up_exits_3(char_data, tmp_path, monkeypatch, capsys):
    """In-process: a stop signal before training (StartupInterrupted) exits 3, not 0."""
    from gpt2jax.errors import StartupInterrupted

    def main(argv):
        raise StartupInterrupted("SIGTERM during start-up: stopped before training; nothing needed saving")

    assert run_cli(main, []) == STOPPED_EXIT_CODE
    assert "during start-up" in capsys.readouterr().err


def test_finding6_cli_exit_code_of_a_stopped_run(monkeypatch, capsys):
    monkeypatch.setattr(train_cli, "main", lambda argv: dict(stopped_by="SIGTERM", stopped_early=True, step=7,
                                                              max_steps=20))
    assert run_cli(train_cli.cli, []) == STOPPED_EXIT_CODE
    assert "stopped early by SIGTERM at step 7" in capsys.readouterr().err
    monkeypatch.setattr(train_cli, "main", lambda argv: dict(stopped_by=None, stopped_early=True, step=7,
                                                              max_steps=20))  # train.stop_at: asked for
    assert run_cli(train_cli.cli, []) == 0


# ---- finding 5: run names stay inside run_root ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/tmp/elsewhere", "../x", "..\\x", "x" * 300])
def test_finding5_run_names_that_leave_run_root_are_refused(tmp_path, name):
    c = tiny(tmp_path / "data", tmp_path / "runs", name=name)
    with pytest.raises(ConfigError, match="must be one directory name inside run_root"):
        check_train_config(c)


def test_finding5_sweep_variant_names_from_values_stay_inside_run_root():
    exp = sweep.Experiment(name="e", base=TINY, grid={"data.dir": ["/data/a", "../b"],
                                                      "ctx": [{"name": "../../up", "data.seq_len": 16}]})
    names = [n for n, _ in sweep.variants(exp)]
    assert len(names) == 2 and not any("/" in n for n in names), names
    for n in names:
        check_train_config(tiny("d", "runs", name=n))


# ---- finding 7: config drift on resume -----------------------------------------------------------------------

@pytest.mark.parametrize("field,value,named", [("data.seq_len", 16, "data.seq_len 32 -> 16"),
                                               ("seed", 1, "seed 0 -> 1"),
                                               ("train.batch_size", 4, "train.batch_size 8 -> 4"),
                                               ("model.dropout", 0.1, "model.dropout 0.0 -> 0.1")])
def test_finding7_resuming_with_changed_settings_is_refused_naming_them(good_run, char_data, tmp_path, field, value,
                                                                        named):
    run = copy_run(good_run, tmp_path)
    c = tiny(char_data, tmp_path, max_steps=30)
    section, _, key = field.rpartition(".")
    (c[section] if section else c)[key] = value
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(drift.ConfigDriftError, match=named.replace(".", r"\.")) as e:
        run1(c)
    assert "allow_config_change" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing changed


def test_finding7_allow_config_change_says_it_and_harmless_changes_are_noted(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    old = json.loads((run / "config.json").read_text())
    new = json.loads(json.dumps(old))
    new["data"]["seq_len"], new["train"]["log_every"] = 16, 1
    new["train"]["max_steps"] = new["optim"]["decay_steps"] = 40  # extending the run: decay follows max_steps
    said = []
    drift.check_config_drift(run, new, allow=True, say=said.append)
    assert len(said) == 2 and "data.seq_len 32 -> 16" in said[0] and "allow_config_change" in said[0]
    assert "train.log_every 5 -> 1" in said[1] and "max_steps" not in said[1]  # its own line elsewhere
    said.clear()
    new["data"]["seq_len"] = 32
    new["data"]["field_of_a_newer_schema"] = 1  # a field the old file does not know is skipped
    drift.check_config_drift(run, new, allow=False, say=said.append)  # only harmless changes: no error
    assert len(said) == 1


def test_finding7_a_batch_derived_from_the_device_count_may_follow_it():
    """batch_size_per_device / tokens_per_step (the recipe's sizing) derive batch_size and grad_accum from the device
    count: a resume on another count (docs/cluster.md) re-splits the same step, noted and not refused; changing
    the per-device size itself is refused."""
    old = {"seed": 0, "train": dict(batch_size=16, grad_accum=4, batch_size_per_device=8, tokens_per_step=4096)}
    new = json.loads(json.dumps(old))
    new["train"].update(batch_size=32, grad_accum=2)
    assert drift.diff(old, new) == ([], ["train.batch_size 16 -> 32", "train.grad_accum 4 -> 2"])
    new["train"]["batch_size_per_device"] = 16
    assert "train.batch_size_per_device 8 -> 16" in drift.diff(old, new)[0]


# ---- finding 8: rejected_checkpoints/ is bounded -------------------------------------------------------------

def test_finding8_rejected_checkpoints_keep_the_newest_and_say_what_was_dropped(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    said = []
    ckpts = Checkpoints(run, log=said.append, keep_rejected=1)
    for step in (30, 40, 50):
        shutil.copytree(run / "checkpoints" / "20", run / "checkpoints" / str(step))
        ckpts.reject([step])
    kept = sorted(p.name.split(".")[0] for p in (run / "rejected_checkpoints").iterdir())
    assert kept == ["50"], kept
    assert any("deleted 1 older rejected checkpoint" in m and "30." in m for m in said), said
    ckpts.keep_rejected = 0
    ckpts.prune_rejected()
    assert not any((run / "rejected_checkpoints").iterdir())


def test_finding3_8_kill_and_corrupt_loop(char_data, tmp_path, cache, reference):
    """Five rounds at random points: kill -9 while a save is held between orbax's commit and the manifest (the
    kill that fills rejected_checkpoints/: the next start rejects that step), or flip a random bit in the meta of
    the newest verified checkpoint (the next start must name it and fall back, never say "incompatible config").
    rejected_checkpoints/ never holds more than keep_rejected=1 and says what it deleted, and the run ends
    bitwise equal to an uninterrupted one."""
    steps, every = STEPS, EVERY
    extra = [f"--config.train.max_steps={steps}", f"--config.train.checkpoint_every={every}"]  # keep_rejected=1
    run, rng, outputs = tmp_path / "run", random.Random(3708), []
    for what in ["kill", "kill", "corrupt", "kill", "corrupt"]:
        if what == "corrupt":
            flip_meta(run / "checkpoints" / str(Checkpoints(run, read_only=True).verified_steps()[-1]), rng)
            continue
        # hold the second save from here (the first one verifies, so the next start rejects the held one), and kill
        # 1-4 steps after it (the save after it waits for the held one)
        held = every * (max(train_steps(run), default=0) // every + 2)
        past = held + rng.randint(1, every)
        proc = start(argv(char_data, tmp_path, *extra, cache=cache), {"GPT2JAX_FAULT_SLEEP": f"commit:{held}:60"})
        ok = wait_for(lambda: (run / "checkpoints" / str(held)).is_dir() and max(train_steps(run), default=0) >= past,
                      proc)
        time.sleep(rng.uniform(0, 0.2))
        proc.kill()
        out = proc.communicate()[0]
        outputs.append(out)
        assert ok and "incompatible" not in out, out[-3000:]
        rejected = run / "rejected_checkpoints"
        assert not rejected.is_dir() or len(list(rejected.iterdir())) <= 1
    out = finish(start(argv(char_data, tmp_path, *extra, cache=cache)))
    outputs.append(out)
    assert "incompatible" not in out and json.loads((run / "summary.json").read_text())["step"] == steps, out[-3000:]
    assert len(list((run / "rejected_checkpoints").iterdir())) == 1
    text = "".join(outputs)
    assert text.count("moved unusable checkpoint") >= 3 and "older rejected checkpoint(s)" in text, text[-3000:]
    assert text.count("fails its checksum") >= 2  # the two corrupted metas, named
    assert all(np.array_equal(x, y) for x, y in zip(reference, params_of(run, steps)))


# ---- finding 9: the last tracebacks --------------------------------------------------------------------------

def test_finding9_sample_a_run_that_never_saved_is_one_line(good_run, tmp_path, capsys):
    run = tmp_path / "early"
    run.mkdir()
    for f in ("config.json", "tokenizer.json", "metrics.jsonl"):
        shutil.copy(good_run / f, run / f)
    code = run_cli(sample.main, ["--init_from", str(run), "--max_new_tokens", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no checkpoint yet" in err[0], err


def test_finding9_metrics_file_that_is_a_directory_is_one_line(char_data, tmp_path, capsys):
    (tmp_path / "run" / "metrics.jsonl").mkdir(parents=True)
    code = run_cli(train_cli.main, ["train", "--config", TINY, f"--config.data.dir={char_data}",
                                    f"--config.run_root={tmp_path}", "--config.name=run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "metrics.jsonl is a directory" in err[0], err


def test_finding9_metrics_on_a_full_device_is_one_line(char_data, tmp_path, monkeypatch, capsys):
    """The first metrics write of a run hits a full device (ENOSPC): one `error:` line naming the file, exit 1."""
    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(metrics_lib.MetricsLogger, "write", full)
    code = run_cli(lambda argv: run1(tiny(char_data, tmp_path, max_steps=10)), [])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: No space left on device") and "metrics.jsonl" in err[-1], err


@pytest.mark.parametrize("failure", [PermissionError(errno.EACCES, "Permission denied"),
                                     OSError(errno.EROFS, "Read-only file system"),
                                     OSError(errno.ENOSPC, "No space left on device")])
def test_finding9_an_unwritable_run_dir_at_start_is_one_line(tmp_path, monkeypatch, failure):
    real_open = os.open

    def refuse(path, *a, **k):
        if str(path).endswith(lock_lib.LOCK_FILE):
            raise type(failure)(failure.errno, failure.strerror, str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(lock_lib.os, "open", refuse)
    with pytest.raises(lock_lib.RunDirUnwritable, match=f"cannot be written: {failure.strerror}") as e:
        lock_lib.RunDirLock(tmp_path / "run").acquire()
    assert "\n" not in str(e.value) and "Nothing was changed" in str(e.value)
    assert not (tmp_path / "run").exists()  # not even the empty run dir


def test_finding9_an_unwritable_lock_write_gives_the_lock_back(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_lib.os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(lock_lib.RunDirUnwritable):
        lock_lib.RunDirLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    lock_lib.RunDirLock(tmp_path / "run").acquire().release()  # not held by a leaked descriptor
    assert not (tmp_path / "run" / lock_lib.LOCK_FILE).exists()


def test_finding9_closed_event_loop_tracebacks_are_silenced(monkeypatch):
    """After a failed async write (a full disk) tensorstore delivers callbacks to orbax's closed asyncio loop and
    reports each RuntimeError with PyErr_WriteUnraisable: ~95 traceback lines before the one-line error (seen on a
    600 KiB tmpfs; with the hook: the error line only). Other unraisable errors still reach Python's own hook."""
    import asyncio
    import types

    seen = []
    record = seen.append
    monkeypatch.setattr(sys, "__unraisablehook__", record)  # stands for Python's own hook (pytest has its own)
    monkeypatch.setattr(sys, "unraisablehook", record)
    ckpt_lib.configure_orbax()
    assert getattr(sys.unraisablehook, "quiet_closed_loop", False)
    loop = asyncio.new_event_loop()
    loop.close()
    for raise_it in (lambda: loop.call_soon_threadsafe(print), lambda: (_ for _ in ()).throw(RuntimeError("other"))):
        try:
            raise_it()
        except RuntimeError as e:
            sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=e,
                                                     exc_traceback=e.__traceback__, err_msg=None, object=None))
    assert [str(u.exc_value) for u in seen] == ["other"]


# ---- finding 10: misleading messages -------------------------------------------------------------------------

def test_finding10_a_save_timeout_does_not_blame_the_disk(tmp_path):
    ckpts = Checkpoints(tmp_path / "run", log=lambda m: None)
    clock = ckpts._save_failed(20, TimeoutError("Timed out after 612.3 seconds."))
    assert "Free disk space" not in str(clock) and "clock" in str(clock)
    full = ckpts._save_failed(20, OSError(errno.ENOSPC, "No space left on device"))
    assert "Free disk space" in str(full) and isinstance(full, SaveError)


def test_finding10_sampling_a_live_run_while_it_rotates_waits_for_the_new_step(good_run, tmp_path, monkeypatch):
    """keep_checkpoints=1: the reader lists step 10, the trainer then verifies step 20 and deletes step 10."""
    run = copy_run(good_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "20")
    real = Checkpoints.candidates
    calls = []

    def racing(self):
        listed = real(self)
        if not calls:  # the trainer moves on between our listing and our reading
            shutil.copytree(good_run / "checkpoints" / "20", run / "checkpoints" / "20")
            shutil.rmtree(run / "checkpoints" / "10")
        calls.append(listed)
        return listed

    monkeypatch.setattr(Checkpoints, "candidates", racing)
    said = []
    cfg, params, _ = load_run(run, log=said.append)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(params), params_of(good_run, 20)))
    assert not said, said  # a step rotated away is no "unusable checkpoint" warning


def test_finding10_no_config_is_exit_2_with_one_line(capsys):
    for argv in (["train"], ["train", "--config.train.max_steps=10"]):
        assert run_cli(train_cli.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--config is missing" in err[0], err


@pytest.mark.parametrize("flag,expected", [
    ("--config.train.Max_steps=1", "unknown config field --config.train.Max_steps (did you mean "
                                   "--config.train.max_steps?)"),
    ("--config.name.x=1", "--config.name.x: name is a field, not a section"),
    ("--config.data.dir.x=1", "--config.data.dir.x: data.dir is a field, not a section"),
])
def test_finding10_unknown_key_message_is_plain(flag, expected, capsys):
    assert run_cli(train_cli.main, ["train", "--config", TINY, flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "\\" not in err[0], err
