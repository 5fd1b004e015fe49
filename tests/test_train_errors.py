"""Acceptance 6: bad inputs end in one clear error before training starts, and never touch a saved checkpoint."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt2jax.weights.checkpoint import RunDirError
from gpt2jax.config import ConfigError
from gpt2jax.data import prepare as prep
from gpt2jax.data.shards import DataError, write_shard
from gpt2jax.train import main, parse_config, train

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"


def tiny(data_dir, run_root, *overrides):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py"), *overrides])
    c.data.dir, c.run_root = str(data_dir), str(run_root)
    return c


def snapshot(directory: Path) -> dict:
    """Every file under a directory with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_missing_data_directory_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nope does not exist\. Prepare it with "
                                        r"`python -m gpt2jax.data.prepare --input"):
        train(tiny(tmp_path / "nope", tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()  # failed before creating anything


def test_missing_data_directory_from_the_command_line(tmp_path):
    with pytest.raises(SystemExit, match="^error: data directory"):
        main(["train", "--config", str(REPO / "configs" / "tiny_test.py"), f"--config.data.dir={tmp_path}/nope",
              f"--config.run_root={tmp_path}/runs"])


def test_dataset_shorter_than_one_batch(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text(CORPUS.read_text()[:200])
    prep.prepare_files([small], tmp_path / "data", tokenizer="char")
    with pytest.raises(DataError, match=r"the train split has 180 tokens = 4 windows .* fewer than one batch needs "
                                        r"\(8 rows x 1 micro-steps = 8\)"):
        train(tiny(tmp_path / "data", tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_shard_with_a_bad_header(char_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    raw = bytearray((data / "train_000000.bin").read_bytes())
    raw[:4] = np.int32(7).tobytes()
    (data / "train_000000.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train_000000.bin has an unknown header \(magic 7\)"):
        train(tiny(data, tmp_path / "runs"))


def test_shard_with_another_tokenizer_hash(char_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    write_shard(data / "val_000000.bin", np.zeros(111_540, np.uint16), "char:0000000000000000")
    with pytest.raises(DataError, match=r"val_000000.bin was tokenized with 'char:0000000000000000' but "
                                        r"'char:[0-9a-f]{16}' was expected"):
        train(tiny(data, tmp_path / "runs"))


def test_config_tokenizer_differs_from_the_data(char_data, tmp_path):
    with pytest.raises(DataError, match="tokenized with the 'char' tokenizer but the config asks for 'gpt2'"):
        train(tiny(char_data, tmp_path / "runs", "--config.data.tokenizer=gpt2"))


def test_vocabulary_smaller_than_the_data(char_data, tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size=50 is smaller than the data tokenizer's 65 tokens"):
        train(tiny(char_data, tmp_path / "runs", "--config.model.vocab_size=50"))


def test_batch_not_divisible_by_data_parallel_devices(char_data, tmp_path):
    # conftest.py gives this process 8 CPU devices; the default mesh puts all of them on the data axis
    with pytest.raises(ConfigError, match=r"train.batch_size=12 is not divisible by the 8 data-parallel devices .*"
                                          r"Use a multiple of 8, e.g. --config.train.batch_size=8"):
        train(tiny(char_data, tmp_path / "runs", "--config.train.batch_size=12"))
    assert not (tmp_path / "runs").exists()


def test_incompatible_checkpoint_is_refused_and_kept(char_data, tmp_path):
    runs = tmp_path / "runs"
    train(tiny(char_data, runs, "--config.train.stop_at=2"))
    run_dir = runs / "tiny_test"
    before = snapshot(run_dir)
    assert any(k.startswith("checkpoints/2/") for k in before)

    with pytest.raises(RunDirError, match=r"holds a checkpoint \(step 2\) from an incompatible config: "
                                          r"model.n_embd: checkpoint 32 vs config 64.*Nothing was changed.*"
                                          r"--config.name=<new name>"):
        train(tiny(char_data, runs, "--config.model.n_embd=64"))
    assert snapshot(run_dir) == before

    with pytest.raises(RunDirError, match=r"already holds checkpoints \(latest step 2\) and train.resume=False"):
        train(tiny(char_data, runs, "--config.train.resume=False"))
    assert snapshot(run_dir) == before
