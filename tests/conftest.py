"""Test setup: 8 simulated CPU devices (must happen before any JAX op), shared fixtures and markers."""
import os
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

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
