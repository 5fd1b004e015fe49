"""gpt2jax.runtime.compile_cache: a cache entry left truncated by a process stopped mid-write is dropped before a run uses
the directory, instead of being read, warned about and recompiled by every later run (JAX never rewrites it)."""
import os
import subprocess
import sys
import time
import zlib

from gpt2jax.runtime import compile_cache

from .conftest import REPO

WARNING = "Error reading persistent compilation cache entry"
# A child process compiles one small program into the cache at `argv[1]`, through compile_cache.use or, with
# argv[2] == "plain", straight through JAX's config (what a run did before).
CHILD = """
import sys, jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
if sys.argv[2] == "plain":
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
else:
    from gpt2jax.runtime import compile_cache
    compile_cache.use(sys.argv[1])
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).sum()))
"""


def compile_into(cache, how="use") -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache), how], capture_output=True, text=True, cwd=REPO,
                         timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    return out


def entries(cache):
    return sorted(cache.glob(f"*{compile_cache.CACHE_SUFFIX}"))


def truncate_and_age(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    old = time.time() - 2 * compile_cache.SETTLE_S
    os.utime(path, (old, old))


def test_complete_tells_whole_streams_from_cut_ones():
    whole = zlib.compress(os.urandom(1 << 16) * 64)
    assert compile_cache.complete(whole) is True
    assert compile_cache.complete(whole[:-1]) is False and compile_cache.complete(whole[: len(whole) // 3]) is False
    assert compile_cache.complete(b"not a stream") is False


def test_drop_truncated_leaves_whole_and_young_entries(tmp_path):
    now = time.time()
    stream = zlib.compress(b"executable" * 1000)
    for name, data, age in (("whole", stream, 3600), ("cut", stream[:20], 3600), ("young", stream[:20], 1)):
        for suffix, content in ((compile_cache.CACHE_SUFFIX, data), (compile_cache.ATIME_SUFFIX, b"\0" * 8)):
            path = tmp_path / f"{name}{suffix}"
            path.write_bytes(content)
            os.utime(path, (now - age, now - age))
    assert compile_cache.drop_truncated(tmp_path, now) == ["cut-cache"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole-atime", "whole-cache", "young-atime", "young-cache"]


def test_a_truncated_entry_is_compiled_and_written_again(tmp_path):
    """JAX alone keeps a truncated entry for good: each run warns and compiles again. Through compile_cache.use
    the entry is dropped, compiled once more and written whole."""
    cache = tmp_path / "xla_cache"
    first = compile_into(cache)
    assert WARNING not in first.stderr
    written = entries(cache)
    entry = next(p for p in written if p.name.startswith("jit__lambda"))  # the program; the rest are jnp helpers

    truncate_and_age(entry)
    for _ in range(2):  # the failure this module exists for: nothing repairs the entry
        assert WARNING in compile_into(cache, "plain").stderr
    assert compile_cache.complete(entry.read_bytes()) is False

    again = compile_into(cache)
    assert WARNING not in again.stderr and again.stdout.split()[-1] == first.stdout.split()[-1]
    assert "removed 1 truncated entry" in again.stdout
    assert entries(cache) == written and compile_cache.complete(entry.read_bytes()) is True
