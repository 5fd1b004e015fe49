"""Cost of verified checkpoints: the manifest (CRC-32 of every file, written in a background thread after orbax's
commit) and the verification on restore, against the orbax save itself, side by side for one model shape.

    python bench/checkpoint_manifest.py --shape tiny      # configs/tiny_test.py's model, params + AdamW state
    python bench/checkpoint_manifest.py --shape gpt2      # 124M, params + AdamW state (1.4 GiB on disk)
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from gpt2jax.weights.checkpoint import Checkpoints
from gpt2jax.weights.manifest import check_files, file_digests
from gpt2jax.config import GPTConfig
from gpt2jax.model import init_params

SHAPES = {"tiny": dict(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=65),
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50304)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = GPTConfig(**SHAPES[args.shape])
    params = init_params(cfg, jax.random.key(0))
    train_state = dict(opt_state=optax.adamw(1e-3).init(params), step=jnp.int32(0))
    root = Path(tempfile.mkdtemp(prefix="ckbench"))
    ckpts = Checkpoints(root, keep=2, log=lambda m: None)
    rows = []
    for i in range(1, args.repeats + 1):
        t = time.perf_counter()
        ckpts.save(i, params, train_state, {"step": i})
        blocking = time.perf_counter() - t
        ckpts.wait()
        total = time.perf_counter() - t
        manifest = ckpts.manifest_seconds[-1]
        step_dir = root / "checkpoints" / str(i)
        t = time.perf_counter()
        assert check_files(step_dir) is None
        verify = time.perf_counter() - t
        size = sum(v[0] for v in file_digests(step_dir).values())
        rows.append((blocking, total, manifest, verify, size))
    ckpts.close()
    shutil.rmtree(root)
    print(f"shape {args.shape}: {rows[0][4] / 2**20:.1f} MiB per checkpoint, load {os.getloadavg()[0]:.1f}")
    print("save blocking s | save until committed+manifest s | manifest (in background) s | verify on restore s")
    for r in rows:
        print(f"{r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} ({r[2] / r[1]:.0%} of the save) | {r[3]:.3f}")


if __name__ == "__main__":
    main()
