"""Test setup: 8 simulated CPU devices (must happen before any JAX op), one persistent XLA cache for the session,
shared fixtures and markers."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)
# Many tests train the same tiny configs in separate train() calls: each builds new jitted functions, which jit's
# in-memory cache cannot share, so the same programs were compiled again and again (most of a tiny run's seconds).
# JAX's persistent cache keys on the compiled program itself: each program compiles once per session. A fresh
# directory per session: nothing carries over between runs. (Child processes the tests start do not inherit it;
# each pytest-xdist worker has its own: one shared by both workers ran a 4-file subset no faster, 235 vs 242 s.)
XLA_CACHE = tempfile.mkdtemp(prefix="gpt2jax-tests-xla-")
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
atexit.register(shutil.rmtree, XLA_CACHE, ignore_errors=True)

# The test suite's models are tiny; gpt2jax.runtime.hostmem's "auto" would not apply to them anyway, and one malloc arena
# (its policy) slows XLA's compiles for the rest of a process. tests/test_hostmem.py sets it per subprocess.
os.environ.setdefault("GPT2JAX_HOST_MALLOC", "system")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Evaluation data that the repo does not ship lives beside the checkout (see README "Data").
SHARED_DATA = Path(os.environ.get("GPT2JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large shapes or long runs; run with `pytest -m slow`")


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips (saying so) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA} is absent (set GPT2JAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """The bundled Tiny Shakespeare, character-tokenized once per test session (read-only for tests)."""
    from gpt2jax.data import prepare as prep

    out = tmp_path_factory.mktemp("char_data")
    prep.prepare_files([REPO / "data" / "tinyshakespeare.txt"], out, tokenizer="char")
    return out


@pytest.fixture
def full_precision_matmuls():
    """Parity tests compare float32 against float64 or PyTorch: GPU float32 matmuls default to reduced-precision
    (TF32-class) passes, so these tests pin full precision (a no-op on CPU)."""
    with jax.default_matmul_precision("highest"):
        yield


def tiny_run_config(data_dir, run_root, name="run", **train_fields):
    """configs/tiny_test.py as run_root/name: 20 steps, checkpoints at 10 and 20 (keep 3); train_fields override."""
    from gpt2jax.train import parse_config

    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(data_dir), str(run_root), name
    c.train.update(**{**dict(max_steps=20, log_every=5, eval_every=10, keep_checkpoints=3), **train_fields})
    return c


def train_on_one_device(config):
    """Train on one device (the 8 simulated ones only slow a tiny model down)."""
    from gpt2jax.train import train

    return train(config, devices=jax.devices()[:1])


@pytest.fixture(scope="session")
def good_run(char_data, tmp_path_factory):
    """A tiny run with verified checkpoints at steps 10 and 20: read-only for the tests, which copy it
    (copy_run)."""
    root = tmp_path_factory.mktemp("good_run")
    train_on_one_device(tiny_run_config(char_data, root))
    return root / "run"


def copy_run(good_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    return run
