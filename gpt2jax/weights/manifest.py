"""The integrity rules of a checkpoint: a manifest of every file's size and CRC-32, written once orbax has committed
a step (the manifest is the commit marker), and the checks a step must pass before it is restored: every file as
the manifest says, every floating-point array finite. Orbax itself keeps no checksums (../shared/notes/STACK-FACTS.md:
bytes overwritten inside a data file restore silently)."""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp

MANIFEST_FILE = "manifest.gpt2jax.json"
CHUNK = 1 << 22  # bytes read at a time when checksumming


def file_digests(step_dir: Path) -> dict[str, list]:
    """{relative path: [size, crc32]} of every file of a step except the manifest."""
    out = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_FILE:
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    crc = zlib.crc32(chunk, crc)
            out[str(path.relative_to(step_dir))] = [path.stat().st_size, crc]
    return out


def write_manifest(step_dir: Path, step: int, val_loss: float | None) -> float:
    """Checksum the step's files and write the manifest atomically; returns the seconds it took."""
    t = time.perf_counter()
    record = dict(step=step, val_loss=val_loss if val_loss is not None and math.isfinite(val_loss) else None,
                  files=file_digests(step_dir))
    tmp = step_dir / (MANIFEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST_FILE)
    return time.perf_counter() - t


def read_manifest(step_dir: Path) -> dict | None:
    try:
        return json.loads((step_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_files(step_dir: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong, naming the file."""
    manifest = read_manifest(step_dir)
    if manifest is None:
        state = "unreadable" if (step_dir / MANIFEST_FILE).exists() else "missing"
        return f"its manifest {MANIFEST_FILE} is {state} (the save did not complete)"
    for rel, (size, crc) in manifest["files"].items():
        path = step_dir / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
        actual = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                actual = zlib.crc32(chunk, actual)
        if actual != crc:
            return f"{rel} fails its checksum (corrupted on disk)"
    return None


def nonfinite_leaf(tree) -> str | None:
    """The path of the first floating-point leaf holding NaN or Inf, or None (one compiled reduction; works on
    sharded and multi-process arrays)."""
    leaves = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
              if jnp.issubdtype(x.dtype, jnp.floating)]
    flags = jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])([x for _, x in leaves])
    for (name, _), ok in zip(leaves, flags):
        if not bool(ok.addressable_data(0)):
            return name
    return None
