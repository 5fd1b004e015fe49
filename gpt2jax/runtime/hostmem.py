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

After a few steps the next one reuses the same pages: 0 page faults (bench/bench_train.py prints them). The costs:
the process's resident memory stays at its peak until it exits, as with any caching allocator (plus what
fragmentation leaves: up to ~2x one call's working set in tests/test_hostmem.py's probe); and with one arena the
threads of XLA's compiler contend for malloc, so compiling takes longer (the char baby GPT's train call: 6.7-8.8
vs 5.7-6.0 s). Hence "auto", the default of GPT2JAX_HOST_MALLOC: the policy applies only to runs whose largest
temporary (the float32 logits of a micro-batch) reaches LARGE_BLOCK_BYTES, where the faults cost seconds per
step; small models keep glibc's defaults. "keep" applies it always, "system" never.

`gpt2jax.train` decides once its config is resolved, before JAX starts its CPU client (its thread pool): arenas
that threads already own keep their own policy. Only glibc (Linux) is touched; other C libraries and platforms are
left as they are, and so is a machine with an accelerator plugin installed (its host allocations are small, and
one arena for its many host threads would serialise their mallocs).
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

ENV = "GPT2JAX_HOST_MALLOC"  # "auto" (default), "keep" or "system"
CHOICES = ("auto", "keep", "system")
# Twice glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 32 MB on 64-bit): blocks this big are always
# mmapped and unmapped again by default.
LARGE_BLOCK_BYTES = 64 * 2**20

ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")

_applied: dict | None = None  # set once the policy is in force (it cannot be undone in a process)


def cpu_only() -> bool:
    """No accelerator platform selected (JAX_PLATFORMS) or installed (a PJRT plugin), judged without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in CHOICES:
        raise UsageError(f"{ENV}={value!r}: use 'auto' (the default: keep freed host memory when a step's largest "
                         f"temporary reaches {LARGE_BLOCK_BYTES >> 20} MB), 'keep' (always) or 'system' (glibc's own "
                         "malloc policy)")
    return value


def keep_freed_memory(largest_block_bytes: int | None = None) -> dict:
    """Apply the policy once per process (glibc only) if GPT2JAX_HOST_MALLOC asks for it: "keep", or "auto" with
    largest_block_bytes >= LARGE_BLOCK_BYTES (None: as large). Returns {"policy": "keep" | "system", "reason"}."""
    global _applied
    if _applied is not None:
        return _applied
    want = choice()
    if want == "system":
        return dict(policy="system", reason=f"{ENV}=system")
    if want == "auto" and largest_block_bytes is not None and largest_block_bytes < LARGE_BLOCK_BYTES:
        return dict(policy="system", reason=f"auto: largest temporary {largest_block_bytes / 2**20:.1f} MB < "
                                            f"{LARGE_BLOCK_BYTES >> 20} MB")
    if not cpu_only():
        return dict(policy="system", reason="an accelerator platform is installed or selected")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return dict(policy="system", reason=f"not glibc ({platform.system()} {platform.libc_ver()[0] or '?'})")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not all(libc.mallopt(param, value) == 1
               for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))):
        return dict(policy="system", reason="glibc refused mallopt")
    _applied = dict(policy="keep", reason="glibc mallopt")
    return _applied
