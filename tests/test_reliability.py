"""Issue 9: training never loses good work. Verified checkpoints with fallback (findings 2-3), the numerics guard
(finding 1), save errors (finding 6), the run-dir lock (finding 4), append-safe metrics (findings 3, 7)."""
import errno
import json
import math
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax.weights import checkpoint as ckpt_lib
from gpt2jax.training import metrics as metrics_lib
from gpt2jax.weights.checkpoint import Checkpoints, CorruptCheckpointError, load_run
from gpt2jax.errors import SaveError, TrainingStopped
from gpt2jax.runtime.lock import RunDirLock, RunDirLocked
from tests.conftest import copy_run, tiny_run_config as tiny, train_on_one_device as run1

REPO = Path(__file__).resolve().parents[1]
# the tests read checkpoints as plain numpy with orbax, without shardings
pytestmark = pytest.mark.filterwarnings("ignore:Sharding info not provided")


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def saved_params(run_dir, step):
    """The params of a step as numpy, read with plain orbax (no verification)."""
    return leaves(ocp.PyTreeCheckpointer().restore(Path(run_dir) / "checkpoints" / str(step) / "params"))


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip(path: Path, n: int = 16) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + n] = bytes(0xFF ^ b for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {  # name -> (function of the step dir, the file the message must name)
    "flip params data": (lambda d: flip(largest_file(d / "params")), "params/"),
    "flip optimizer data": (lambda d: flip(largest_file(d / "train")), "train/"),
    "truncate params data": (lambda d: cut(largest_file(d / "params")), "params/"),
    "delete params data": (lambda d: largest_file(d / "params").unlink(), "params/"),
    "cut _CHECKPOINT_METADATA": (lambda d: cut(d / "_CHECKPOINT_METADATA"), "_CHECKPOINT_METADATA"),
    "cut params/_METADATA": (lambda d: cut(d / "params" / "_METADATA"), "params/_METADATA"),
    "cut train/_METADATA": (lambda d: cut(d / "train" / "_METADATA"), "train/_METADATA"),
    "cut meta/metadata": (lambda d: cut(d / "meta" / "metadata"), "meta/metadata"),
    "cut params/manifest.ocdbt": (lambda d: cut(d / "params" / "manifest.ocdbt"), "params/manifest.ocdbt"),
    "cut the manifest": (lambda d: cut(d / ckpt_lib.MANIFEST_FILE), ckpt_lib.MANIFEST_FILE),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_the_previous_one_loaded(good_run, tmp_path, damage, capsys):
    """Acceptance 2 (corruption suite) for sampling/eval (load_run) and for resuming (restore_good)."""
    run = copy_run(good_run, tmp_path)
    fn, named = DAMAGE[damage]
    fn(run / "checkpoints" / "20")
    expected = saved_params(good_run, 10)

    cfg, params, _ = load_run(run)
    err = capsys.readouterr().err
    assert "checkpoint step 20" in err and named in err, err
    got = leaves(params)
    assert all(np.isfinite(x).all() for x in got)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))  # step 10, bitwise

    with pytest.raises(CorruptCheckpointError, match=r"checkpoint step 20 .*unusable"):
        load_run(run, fallback=False)

    ckpts = Checkpoints(run, read_only=True, log=lambda m: None)
    from gpt2jax.model import abstract_params

    step, restored, rejected = ckpts.restore_good(abstract_params(cfg))
    assert step == 10 and [s for s, _ in rejected] == [20] and named in rejected[0][1]


def test_training_resumes_from_the_newest_good_checkpoint(good_run, char_data, tmp_path):
    """Finding 3 end to end: a flipped optimizer file in step 20, a cut metrics.jsonl and an old-style cut
    `metrics/metrics` file: the run resumes from step 10, moves step 20 aside (kept, not deleted) and finishes."""
    run = copy_run(good_run, tmp_path)
    flip(largest_file(run / "checkpoints" / "20" / "train"))
    for step in ("10", "20"):  # orbax's CheckpointManager failed to even list steps with this file cut
        (run / "checkpoints" / step / "metrics").mkdir()
        (run / "checkpoints" / step / "metrics" / "metrics").write_text('{"val_loss": 3.')
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + text.splitlines()[-1][:17])  # a torn last line
    summary = run1(tiny(char_data, tmp_path, max_steps=30))
    assert summary["start_step"] == 10 and summary["step"] == 30
    rejected = list((run / ckpt_lib.REJECTED_DIR).iterdir())
    assert len(rejected) == 1 and rejected[0].name.startswith("20.")
    steps = [r["step"] for r in metrics_lib.read_metrics(run) if r["kind"] == "train"]
    assert steps == sorted(set(steps)) == list(range(5, 31, 5))  # no step twice, torn line gone


def test_fallback_off_refuses_to_resume(good_run, char_data, tmp_path):
    run = copy_run(good_run, tmp_path)
    flip(largest_file(run / "checkpoints" / "20" / "params"))
    with pytest.raises(CorruptCheckpointError, match=r"step 20 .*params/.*checksum.*Fallback .* is off"):
        run1(tiny(char_data, tmp_path, max_steps=30, checkpoint_fallback=False))
    assert (run / "checkpoints" / "20").is_dir()  # nothing moved


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(char_data, tmp_path, capsys):
    """Finding 1 / acceptance 3: lr=1e6 stops with the step number, nothing non-finite is saved, the last good
    checkpoint stays and is best, and it is what sampling loads."""
    run1(tiny(char_data, tmp_path, max_steps=10, eval_every=5))  # good checkpoints at steps 5 and 10
    c = tiny(char_data, tmp_path, max_steps=60, eval_every=5, checkpoint_every=5, log_every=5)
    c.optim.update(lr=1e6, min_lr=0.0, warmup_steps=0)  # the same run goes on with a diverging lr
    c.train.allow_config_change = True  # (a resume with other optim settings is refused without it: issue 37)
    with pytest.raises(TrainingStopped, match=r"NaN/Inf at step (\d+) .*the last checkpoint, step (\d+), holds the "
                                              r"last good state") as e:
        run1(c)
    bad, last = (int(x) for x in __import__("re").search(r"at step (\d+).*step (\d+), holds", str(e.value)).groups())
    assert last == 10 < bad
    run = tmp_path / "run"
    ckpts = Checkpoints(run, read_only=True)
    assert ckpts.latest_step() == last == ckpts.best_step() and ckpts.steps() == [5, 10]
    for step in ckpts.steps():
        assert ckpts.problem(step) is None
        assert all(np.isfinite(x).all() for x in saved_params(run, step))
    _, params, _ = load_run(run)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(params), saved_params(run, last)))
    evals = [r for r in metrics_lib.read_metrics(run) if r["kind"] == "eval"]
    assert all(r["val_ppl"] == math.inf or math.isfinite(r["val_ppl"]) for r in evals if math.isfinite(r["val_loss"]))

    from gpt2jax.sample import main as sample_main  # and the sampling CLI loads that step and prints text

    assert sample_main(["--init_from", str(run), "--prompt", "RO", "--max_new_tokens", "4", "--quiet"]) == 0


def test_skip_nonfinite_counts_bad_batches_and_continues(char_data, tmp_path):
    c = tiny(char_data, tmp_path, max_steps=20, skip_nonfinite=True)
    c.optim.update(lr=1e6, min_lr=0.0, warmup_steps=2)
    summary = run1(c)
    assert summary["step"] == 20 and summary["nonfinite_steps"] > 0
    records = [r for r in metrics_lib.read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert records[-1]["nonfinite_steps"] == summary["nonfinite_steps"]
    for step in Checkpoints(tmp_path / "run", read_only=True).steps():
        assert all(np.isfinite(x).all() for x in saved_params(tmp_path / "run", step))


def test_perplexity_of_a_huge_loss_is_inf():
    assert metrics_lib.perplexity(800.0) == math.inf and metrics_lib.perplexity(1.0) == pytest.approx(math.e)
    assert math.isnan(metrics_lib.perplexity(float("nan")))


def test_a_second_trainer_is_refused_naming_the_holder(char_data, tmp_path):
    """Finding 4: the run dir is locked; the refusal names the holder and changes nothing."""
    run = tmp_path / "run"
    with RunDirLock(run):
        with pytest.raises(RunDirLocked, match=r"is in use by pid \d+ on .*Nothing was changed"):
            run1(tiny(char_data, tmp_path))
        assert sorted(p.name for p in run.iterdir()) == ["train.lock"]
    assert not run.joinpath("train.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    with RunDirLock(run) as lock:
        assert lock.stale["pid"] == 999999
        assert json.loads((run / "train.lock").read_text())["pid"] != 999999


@pytest.mark.parametrize("where", ["at the call", "in the background"])
def test_a_failed_save_is_one_error_naming_the_intact_checkpoint(char_data, tmp_path, monkeypatch, where):
    """Finding 6: disk full (injected ENOSPC) surfaces at the save that failed, once, naming the previous
    checkpoint, which stays intact and loadable."""
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "at the call":
        real = ocp.AsyncCheckpointer.save

        def save(self, directory, *a, **k):
            if Path(directory).name == "20":
                raise full
            return real(self, directory, *a, **k)

        monkeypatch.setattr(ocp.AsyncCheckpointer, "save", save)
    else:
        real = ocp.AsyncCheckpointer.check_for_errors
        calls = {"n": 0}

        def check_for_errors(self):
            calls["n"] += 1
            if calls["n"] == 2:  # the second save's commit
                raise full
            return real(self)

        monkeypatch.setattr(ocp.AsyncCheckpointer, "check_for_errors", check_for_errors)
    with pytest.raises(SaveError, match=r"saving the checkpoint of step 20 .*No space left on device; the previous "
                                        r"checkpoint, step 10, is intact") as e:
        run1(tiny(char_data, tmp_path, max_steps=30))
    assert "\n" not in str(e.value)
    ckpts = Checkpoints(tmp_path / "run", read_only=True)
    assert ckpts.verified_steps() == [10] and ckpts.problem(10) is None


def test_restarts_before_the_first_checkpoint_do_not_duplicate_metrics(char_data, tmp_path):
    """Finding 7: records left by a run that died before its first checkpoint are moved out, not repeated."""
    run = tmp_path / "run"
    run.mkdir()
    old = [dict(kind="train", step=s, loss=4.0) for s in (5, 10)] + [dict(kind="eval", step=0, val_loss=4.2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old) + '{"kind": "tr')
    run1(tiny(char_data, tmp_path, max_steps=10, eval_at_start=True))
    records = metrics_lib.read_metrics(run)
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and ("train", 10) in keys and ("eval", 0) in keys
    assert all(r.get("loss") != 4.0 for r in records)
    assert len(metrics_lib.read_metrics(run) ) == len((run / "metrics.jsonl").read_text().splitlines())
