"""What a run reports besides metrics.jsonl (issue 38.6, 38.7): Weights & Biases in offline mode (read back from
its .wandb file), plain `step N: loss ...` lines when stdout is not a terminal, a jax.profiler trace of a step
range, and the line that says what a larger max_steps does to a resumed run's schedule."""
import contextlib
import io
import json
import struct
import sys
from pathlib import Path

import pytest

from gpt2jax.config import ConfigError
from gpt2jax.train import main, parse_config
from gpt2jax.training.loop import train
from gpt2jax.training.metrics import read_metrics


def tiny(char_data, run_root, *overrides):
    return parse_config(["train", "--config", "tiny_test", f"--config.data.dir={char_data}",
                         f"--config.run_root={run_root}", *overrides])


def wandb_records(path: Path):
    """The protobuf records of a W&B run file (`run-<id>.wandb`): LevelDB's log format (32 KiB blocks of records
    with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST) after W&B's 7-byte file header. wandb itself
    no longer ships a Python reader (wandb.sdk.internal.datastore left in 0.2x); the records are its protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.fixture(scope="module")
def reported_run(char_data, tmp_path_factory):
    """One tiny run with W&B offline, a profile of steps 5..6 and stdout captured (not a terminal)."""
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("reported")
    c = tiny(char_data, root, "--config.train.max_steps=8", "--config.train.log_every=2",
             "--config.train.eval_every=4", "--config.train.steps_per_call=2", "--config.train.progress=True",
             "--config.train.profile_steps=4:6", "--config.logging.wandb.mode=offline")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        summary = train(c)
    return root / "tiny_test", summary, out.getvalue(), err.getvalue()


def test_wandb_offline_run_holds_every_logged_step(reported_run):
    run_dir, summary, _, _ = reported_run
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, final = {}, None, {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "summary":
            final.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
    records = read_metrics(run_dir)
    train_records = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8] and [r["step"] for r in evals] == [4, 8]
    for r in train_records:
        assert history[r["step"]]["train/loss"] == pytest.approx(r["loss"], rel=1e-12)
        assert history[r["step"]]["train/lr"] == pytest.approx(r["lr"], rel=1e-12)
    for r in evals:
        assert history[r["step"]]["eval/val_loss"] == pytest.approx(r["val_loss"], rel=1e-12)
    # the resolved config and the summary
    config = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in config.items()}
    assert config["train"]["max_steps"] == 8 and config["logging"]["wandb"]["mode"] == "offline"
    assert final["step"] == 8 and final["val_loss"] == pytest.approx(summary["val_loss"])
    assert (run_dir / "wandb_id").read_text().strip() == path.stem.removeprefix("run-")


def wandb_history(run_dir: Path) -> dict:
    """{step: {key: value}} of the one offline W&B run under run_dir."""
    (path,) = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    history = {}
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(row["_step"], {}).update(row)
    return history


def test_wandb_offline_runs_of_vmapped_replicas(char_data, tmp_path):
    """Seeds trained as one program (gpt2jax.training.replicas, what sweeps use) get one W&B run each."""
    pytest.importorskip("wandb")
    import jax

    from gpt2jax.training.replicas import train_replicas

    configs = []
    for seed in (0, 1):
        configs.append(tiny(char_data, tmp_path, "--config.train.max_steps=2", "--config.train.log_every=1",
                            "--config.optim.warmup_steps=0", "--config.logging.wandb.mode=offline",
                            f"--config.seed={seed}", f"--config.name=seed{seed}"))
    summaries = train_replicas(configs, jax.devices()[:1])
    for summary in summaries:
        history = wandb_history(summary["run_dir"])
        for r in read_metrics(summary["run_dir"]):
            if r["kind"] == "train":
                assert history[r["step"]]["train/loss"] == pytest.approx(r["loss"], rel=1e-12)
    assert len({(tmp_path / f"seed{s}" / "wandb_id").read_text() for s in (0, 1)}) == 2


def test_plain_step_lines_when_stdout_is_not_a_terminal(reported_run):
    _, _, out, err = reported_run
    lines = [line for line in out.splitlines() if line.startswith("step ") and ": loss " in line]
    assert [line.split(":")[0] for line in lines] == ["step 2/8", "step 4/8", "step 6/8", "step 8/8"]
    assert all(", lr " in line and "tokens/s" in line for line in lines)
    assert "\r" not in out + err  # no tqdm bar


def test_profile_steps_write_a_trace(reported_run):
    run_dir, _, out, _ = reported_run
    assert f"profile of steps 5..6 written to {run_dir / 'profile'}" in out
    for pattern in ("*.xplane.pb", "perfetto_trace.json.gz"):  # TensorBoard's and Perfetto's
        traces = list((run_dir / "profile").rglob(pattern))
        assert len(traces) == 1 and traces[0].stat().st_size > 0, pattern


@pytest.mark.parametrize("value", ["5", "6:4", "0:99", "a:b"])
def test_a_bad_profile_range_is_one_line(char_data, tmp_path, value):
    with pytest.raises(SystemExit, match=r"^error: train.profile_steps=.*use \"A:B\" with 0 <= A < B <= "
                       r"train.max_steps=20") as e:
        main(["train", "--config", "tiny_test", f"--config.data.dir={char_data}", f"--config.run_root={tmp_path}",
              f"--config.train.profile_steps={value}"])
    assert "\n" not in str(e.value) and not (tmp_path / "tiny_test").exists()


def test_wandb_asked_for_but_not_installed_is_one_line(char_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"^error: logging.wandb.mode=offline needs the wandb package, which is not "
                       r"installed: pip install 'gpt2jax\[wandb\]'") as e:
        main(["train", "--config", "tiny_test", f"--config.data.dir={char_data}", f"--config.run_root={tmp_path}",
              "--config.logging.wandb.mode=offline"])
    assert "\n" not in str(e.value) and not (tmp_path / "tiny_test").exists()
    with pytest.raises(SystemExit, match="logging.wandb.mode='onlin': choose one of disabled, offline, online"):
        main(["train", "--config", "tiny_test", f"--config.data.dir={char_data}", f"--config.run_root={tmp_path}",
              "--config.logging.wandb.mode=onlin"])


# ---- max_steps on resume --------------------------------------------------------------------------------------

def test_a_larger_max_steps_on_resume_says_what_the_schedule_does(char_data, tmp_path):
    from gpt2jax.training.optim import lr_schedule

    common = ["--config.train.log_every=4", "--config.train.eval_every=4", "--config.optim.warmup_steps=1",
              "--config.train.steps_per_call=4"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(tiny(char_data, tmp_path, "--config.train.max_steps=4", *common))
    assert "max_steps 4 ->" not in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = train(tiny(char_data, tmp_path, "--config.train.max_steps=8", *common))
    assert summary["start_step"] == 4 and summary["step"] == 8
    old, new = float(lr_schedule(3e-3, 3e-4, 1, 4)(4)), float(lr_schedule(3e-3, 3e-4, 1, 8)(4))
    expected = (f"max_steps 4 -> 8: the cosine decay now ends at step 8 (was 4); the learning rate at the resume "
                f"step 4 jumps from {old:.3g} to {new:.3g}")
    assert expected in out.getvalue().splitlines(), out.getvalue()
    assert new > 3 * old  # 3e-4 (the end of the old decay) -> halfway down the new one


def test_schedule_change_lines():
    from types import SimpleNamespace

    from gpt2jax.config import GPTConfig
    from gpt2jax.training.schema import base_config
    from gpt2jax.training.optim import OptimSpec
    from gpt2jax.training.schedule_note import schedule_change

    def spec(max_steps, decay_steps=0):
        optim = base_config().optim
        optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=100, decay_steps=decay_steps)
        resolved = OptimSpec.resolve(optim, max_steps)
        optim.decay_steps = resolved.decay_steps
        return SimpleNamespace(train=SimpleNamespace(max_steps=max_steps), optim=resolved,
                               config=SimpleNamespace(optim=optim), model=GPTConfig(n_layer=1, n_head=1, n_embd=8))

    def old(s):
        return {"train": {"max_steps": s.train.max_steps}, "optim": s.config.optim.to_dict()}

    assert schedule_change(old(spec(1000)), spec(1000), 800) is None
    line = schedule_change(old(spec(1000)), spec(2000), 800)
    assert line.startswith("max_steps 1000 -> 2000: the cosine decay now ends at step 2000 (was 1000); the learning "
                           "rate at the resume step 800 jumps from ")
    fixed = schedule_change(old(spec(1000, 1000)), spec(2000, 1000), 800)
    assert fixed.startswith("max_steps 1000 -> 2000: the cosine decay still ends at step 1000 (optim.decay_steps is "
                            "set; 0 follows max_steps), after which steps train at min_lr 6e-05; the learning rate at "
                            "the resume step 800 stays ")
    # an old config.json without the fields a newer schema added: no change from those
    legacy = old(spec(1000))
    legacy["optim"] = {k: v for k, v in legacy["optim"].items() if k in ("lr", "min_lr", "warmup_steps", "decay_steps")}
    assert schedule_change(legacy, spec(1000), 800) is None
