"""The 124M recipe's plumbing (issue 38.4): configs shipped in the package and found by name, the batch sized per
device with the gradient accumulation derived from the device count, and the schedule note when a resumed run
changes max_steps."""
from pathlib import Path

import pytest

from gpt2jax import shipped
from gpt2jax.config import ConfigError
from gpt2jax.train import main, parse_config

REPO = Path(__file__).resolve().parents[1]


# ---- configs by name ------------------------------------------------------------------------------------------

def test_shipped_configs_are_the_checkouts_configs():
    names = shipped.shipped_configs()
    assert set(names) == {p.stem for p in (REPO / "configs").glob("*.py")} >= {"default", "gpt2", "tiny_test"}
    assert all(p.resolve() == (REPO / "configs" / p.name).resolve() for p in names.values())


@pytest.mark.parametrize("form", [["--config", "{}"], ["--config={}"]])
def test_config_by_name_with_variant_and_overrides(form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names resolve wherever the command runs
    argv = ["train"] + [f.format("gpt2:gpt2-medium") for f in form] + ["--config.train.max_steps=7"]
    c = parse_config(argv)
    assert (c.name, c.model.n_layer, c.train.max_steps) == ("gpt2-medium", 24, 7)
    assert parse_config(["train", "--config", "tiny_test.py"]).name == "tiny_test"


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").write_text((REPO / "configs" / "tiny_test.py").read_text().replace('"tiny_test"', '"mine"'))
    assert parse_config(["train", "--config", "gpt2"]).name == "mine"


def test_unknown_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no shipped config of that name; .*gpt2, shakespeare_char, tiny_test"):
        parse_config(["train", "--config", "gtp2"])


def test_no_config_names_the_shipped_configs_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: --config is missing: .*; shipped configs: default, gpt2, "
                       r"shakespeare_char, tiny_test \(--help describes them") as e:
        main(["train", "--config.train.max_steps=10"])
    assert "\n" not in str(e.value)


def test_help_lists_the_shipped_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["train", "--help"])
    text = capsys.readouterr().out
    assert "Shipped configs" in text and all(f"  {name} " in text for name in ("default", "gpt2", "tiny_test"))


# ---- the batch sized per device -------------------------------------------------------------------------------

def _spec(argv, n_devices):
    import jax

    from gpt2jax.tokenizer import gpt2_tokenizer
    from gpt2jax.training.spec import resolve

    return resolve(parse_config(["train", "--config", "gpt2"] + argv), gpt2_tokenizer(), jax.devices()[:n_devices])


@pytest.mark.parametrize("n, accum", [(1, 32), (2, 16), (4, 8), (8, 4)])
def test_gpt2_keeps_half_a_million_tokens_per_step_on_any_device_count(n, accum):
    spec = _spec([], n)
    assert (spec.train.batch_size, spec.train.grad_accum) == (16 * n, accum)
    assert spec.tokens_per_step == 524_288 == spec.rows_per_step * 1024
    assert spec.config.train.batch_size == 16 * n  # config.json records what ran


def test_data_parallel_devices_only_count_the_batch_axes():
    # FSDP splits the batch too; tensor parallelism does not
    assert _spec(["--config.mesh.data=1", "--config.mesh.fsdp=-1"], 8).train.batch_size == 128
    assert _spec(["--config.mesh.data=-1", "--config.mesh.tensor=2"], 8).train.batch_size == 64


def test_a_step_that_cannot_divide_is_refused_with_the_fix():
    from types import SimpleNamespace

    from gpt2jax.training.spec import resolve_batch

    t = SimpleNamespace(batch_size=0, grad_accum=1, batch_size_per_device=16, tokens_per_step=524_288)
    with pytest.raises(ConfigError, match=r"^train.tokens_per_step=524,288 is not a multiple of a micro-batch's "
                       r"1,048,576 tokens \(16 rows x 64 devices x seq_len 1024\): use "
                       r"--config.train.batch_size_per_device=8, or set train.tokens_per_step=0") as e:
        resolve_batch(t, 1024, 64)
    assert "\n" not in str(e.value)
    t.batch_size, t.batch_size_per_device = 0, 8
    resolve_batch(t, 1024, 64)
    assert (t.batch_size, t.grad_accum) == (512, 1)
    with pytest.raises(ConfigError, match=r"^train.batch_size=64 and train.batch_size_per_device=16 both set the "
                       r"batch: keep one \(--config.train.batch_size=0 sizes it per device"):
        resolve_batch(SimpleNamespace(batch_size=64, grad_accum=1, batch_size_per_device=16, tokens_per_step=0),
                      1024, 8)
    with pytest.raises(ConfigError, match="tokens_per_step=524288 and train.grad_accum=3 both set"):
        resolve_batch(SimpleNamespace(batch_size=8, grad_accum=3, batch_size_per_device=0, tokens_per_step=524288),
                      1024, 1)
    with pytest.raises(ConfigError, match=r"of a micro-batch's 3,072 tokens \(batch_size 3 x seq_len 1024\): use "
                       "--config.train.batch_size=2"):
        resolve_batch(SimpleNamespace(batch_size=3, grad_accum=1, batch_size_per_device=0, tokens_per_step=4096),
                      1024, 1)


def test_a_per_device_batch_trains(char_data, tmp_path):
    """Through the loop: 4 rows on each of 2 devices, 2 micro-batches to reach 16 rows x 32 tokens per step."""
    import jax

    from gpt2jax.training.loop import train

    c = parse_config(["train", "--config", "tiny_test", f"--config.data.dir={char_data}",
                      f"--config.run_root={tmp_path}", "--config.train.max_steps=2", "--config.train.log_every=1",
                      "--config.optim.warmup_steps=0",
                      "--config.train.batch_size=0", "--config.train.batch_size_per_device=4",
                      "--config.train.tokens_per_step=512"])
    summary = train(c, jax.devices()[:2])
    assert summary["step"] == 2
    import json

    recorded = json.loads((tmp_path / "tiny_test" / "config.json").read_text())["train"]
    assert (recorded["batch_size"], recorded["grad_accum"]) == (8, 2)
