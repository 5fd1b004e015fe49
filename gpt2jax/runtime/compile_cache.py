"""JAX's persistent compilation cache for a run (`train.compilation_cache_dir`; a sweep's shared `xla_cache`).

JAX writes a cache entry in place (jax 0.10-0.11 `jax._src.lru_cache.LRUCache.put`: `Path.write_bytes`, no
temporary file and rename) and never rewrites a key whose file exists. A process stopped while writing one
(kill -9, a preempted node, a sweep stopped mid-compile) leaves a truncated entry that every later run of the same
program reads, warns about ("Error reading persistent compilation cache entry") and compiles again, for good.
`use` drops such entries before a run uses the directory. Entries younger than SETTLE_S are left alone: another
process of a sweep may be writing one right now, and the next run looks again.
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path

import jax

CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # jax._src.lru_cache's file names: <key>-cache, <key>-atime
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # JAX compresses with zstandard when it is installed, else with zlib
SETTLE_S = 60.0
CHUNK = 1 << 24  # decompress 16 MB at a time: a check, not a copy of the executable


def complete(data: bytes) -> bool | None:
    """Whether a cache entry's bytes are one whole compressed stream; None when that cannot be told here (a zstd
    entry without the zstandard module)."""
    if data[:4] == ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError:
            return None
        reader = zstandard.ZstdDecompressor().decompressobj()
        try:
            reader.decompress(data)
        except zstandard.ZstdError:
            return False
        return reader.eof
    reader, rest = zlib.decompressobj(), data
    try:
        while rest and not reader.eof:
            reader.decompress(rest, CHUNK)
            rest = reader.unconsumed_tail
    except zlib.error:
        return False
    return reader.eof


def drop_truncated(directory: Path, now: float | None = None) -> list[str]:
    """Remove the entries of `directory` (and their access-time files) that are not whole, among those older
    than SETTLE_S. Returns the removed entries' names."""
    now = time.time() if now is None else now
    dropped = []
    for path in sorted(Path(directory).glob(f"*{CACHE_SUFFIX}")):
        try:
            if now - path.stat().st_mtime < SETTLE_S or complete(path.read_bytes()) is not False:
                continue
            path.unlink(missing_ok=True)
            path.with_name(path.name[:-len(CACHE_SUFFIX)] + ATIME_SUFFIX).unlink(missing_ok=True)
            dropped.append(path.name)
        except OSError:  # another process removed or replaced it meanwhile
            continue
    return dropped


def use(directory: str, say=print) -> None:
    """Point JAX's persistent cache at `directory` (nothing when empty), first dropping truncated entries, so a
    resumed run (or another seed) skips XLA compilation. JAX opens the cache at the process's first compile and
    keeps that directory: a later run in the same process with another directory still uses the first."""
    if not directory:
        return
    path = Path(directory).expanduser()
    if path.is_dir() and (dropped := drop_truncated(path)):
        say(f"compilation cache {path}: removed {len(dropped)} truncated entr{'y' if len(dropped) == 1 else 'ies'} "
            "(a process stopped while writing), compiled and written again by this run")
    jax.config.update("jax_compilation_cache_dir", str(path))
