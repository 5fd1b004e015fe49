"""gpt2jax.runtime.hostmem: CPU runs keep the host memory XLA frees, so a compiled call's temporaries are not page-faulted
back in at every call. Each case runs in a fresh process: the policy must be set before JAX starts its CPU client."""
import json
import os
import platform
import subprocess
import sys

import pytest

from gpt2jax.errors import UsageError
from gpt2jax.runtime.hostmem import ENV

# A jitted call whose output and temporaries are ~64 MB each (above glibc's mmap threshold): the page faults of its
# later calls tell whether the memory of the earlier ones was kept (none) or unmapped and faulted in again (~16k
# pages of 4 KiB per 64 MB). With the policy the heap settles after a few calls (blocks freed in one order are asked
# for in another), so the last eight calls are the ones compared.
PROBE = r"""
import json, resource, sys
from gpt2jax.runtime.hostmem import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(x.reshape(4096, 4096).T, axis=1) * 2.0)
x = jnp.arange(16 * 2**20, dtype=jnp.float32)  # 64 MB
jax.block_until_ready(f(x))
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(x); jax.block_until_ready(y); del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(applied=applied, faults=faults)))
"""


def probe(policy: str, block_bytes: int = 64 * 2**20) -> dict:
    env = dict(os.environ, **{ENV: policy}, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(block_bytes)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc-only policy")
def test_kept_memory_is_not_faulted_in_again_at_the_next_call():
    keep, system = probe("auto"), probe("system")  # auto: the probe's 64 MB blocks are large enough
    assert keep["applied"]["policy"] == "keep" and system["applied"]["policy"] == "system"
    # glibc's default unmaps the 64 MB blocks at free: every call faults them in again (measured: ~34k pages per
    # call); with the policy the same pages are reused (measured: mostly 0 after 4-10 calls, while resident memory
    # grew from 0.4 to 0.9 GB and stayed there).
    assert min(system["faults"][-8:]) > 4000, system
    # Kept: most later calls fault nothing (now and then the heap still grows by one block while it settles).
    assert sum(f == 0 for f in keep["faults"][-8:]) >= 4, keep


def test_auto_leaves_small_runs_alone(monkeypatch):
    import gpt2jax.runtime.hostmem as hostmem

    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setenv(ENV, "auto")
    applied = hostmem.keep_freed_memory(hostmem.LARGE_BLOCK_BYTES - 1)  # e.g. the char baby GPT: 0.2 MB of logits
    assert applied["policy"] == "system" and applied["reason"].startswith("auto:")
    assert hostmem._applied is None  # nothing was changed in this process


def test_a_bad_policy_value_is_a_usage_error(monkeypatch):
    import gpt2jax.runtime.hostmem as hostmem

    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(UsageError, match=f"{ENV}='sometimes'.*'auto'.*'keep'.*'system'"):
        hostmem.keep_freed_memory()


def test_the_train_cli_reports_a_bad_policy_before_anything_starts(tmp_path):
    env = dict(os.environ, **{ENV: "sometimes"})
    out = subprocess.run([sys.executable, "-m", "gpt2jax.train", "--config", "configs/shakespeare_char.py",
                          f"--config.run_root={tmp_path}"], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 2 and f"error: {ENV}='sometimes'" in out.stderr, out.stderr[-2000:]
    assert not any(tmp_path.iterdir())


def test_eval_clis_size_the_policy_from_config_json_alone(tmp_path):
    """zeroshot and the harness backend decide before JAX starts, from the source's config.json (load.logits_bytes):
    an HF directory, a training run directory (padded vocabulary rows count), a GPT-2 hub id; None otherwise."""
    from gpt2jax.weights.load import logits_bytes

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(dict(n_positions=1024, vocab_size=50257, n_layer=12)))
    assert logits_bytes(str(hf), 8) == 8 * 1024 * 50257 * 4
    assert logits_bytes(str(hf), 2, n_ctx=256) == 2 * 256 * 50257 * 4
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dict(model=dict(n_positions=64, vocab_size=65,
                                                                padded_vocab_size=128))))
    assert logits_bytes(str(run), 8) == 8 * 64 * 128 * 4
    assert logits_bytes("gpt2-medium", 1) == 1024 * 50257 * 4
    assert logits_bytes("someone/some-model", 8) is None  # not read from the hub here: treated as large
    assert logits_bytes(str(tmp_path / "missing"), 8) is None
