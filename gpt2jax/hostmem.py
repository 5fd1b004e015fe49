"""Host memory policy for CPU runs: keep freed memory in the process instead of handing it back to the kernel.

XLA:CPU allocates every call's temporaries afresh (one 3 GB block per GPT-2 124M training step at B4 x T256) and
frees them when the call ends. glibc serves blocks that large from a fresh `mmap` (worker threads' arenas always
do, whatever M_MMAP_MAX says) and unmaps them at `free`, so every step faults all of it back in, page by page,
and the kernel zeroes each page: measured on this project's 2-core CPU, 740k page faults and ~7 s of system time
per 124M step (the step itself ~9.5 s wall instead of ~7.7 s). A caching allocator (PyTorch's on GPU, XLA's BFC
allocator on GPU) avoids this by keeping what it freed; glibc does the same when told to:

  M_ARENA_MAX = 1        every thread allocates from the main heap (thread arenas fall back to mmap for big blocks)
  M_MMAP_MAX = 0         big blocks come from the heap, not from their own mmap
  M_TRIM_THRESHOLD = -1  (i.e. SIZE_MAX) freed memory at the top of the heap is never returned to the kernel

After the first step the next one reuses the same pages: 0 page faults (bench/bench_train.py, `hostmem` in its
header). The cost: the process's resident memory stays at its peak until it exits, as with any caching allocator.

Call `keep_freed_memory()` before JAX starts its CPU client (its thread pool), i.e. before the first computation:
the command-line entry points do it through `gpt2jax.errors.run_cli`. Arenas that threads already own keep
their own policy. GPT2JAX_HOST_MALLOC=system leaves glibc's defaults alone. Only glibc (Linux) is touched; other
C libraries and platforms are left as they are, and so is a machine with an accelerator plugin installed (its
host allocations are small, and one arena for its many host threads would serialise their mallocs).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform

from gpt2jax.errors import UsageError

# glibc <malloc.h> parameter numbers for mallopt
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

ENV = "GPT2JAX_HOST_MALLOC"  # "keep" (default) or "system"

ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")

_applied: dict | None = None


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def keep_freed_memory() -> dict:
    """Apply the policy once per process (glibc only); returns what was done: {"policy": ..., "reason": ...}."""
    global _applied
    if _applied is not None:
        return _applied
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise UsageError(f"{ENV}={choice!r}: use 'keep' (the default: freed host memory is reused) or 'system' "
                         "(glibc's own malloc policy)")
    if choice == "system":
        _applied = dict(policy="system", reason=f"{ENV}=system")
    elif not _cpu_only():
        _applied = dict(policy="system", reason="an accelerator platform is installed or selected")
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _applied = dict(policy="system", reason=f"not glibc ({platform.system()} {platform.libc_ver()[0] or '?'})")
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(param, value) == 1
                 for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
        _applied = dict(policy="keep" if ok else "system", reason="glibc mallopt" + ("" if ok else " refused"))
    return _applied
