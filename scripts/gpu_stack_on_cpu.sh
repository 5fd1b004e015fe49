#!/usr/bin/env bash
# Run tests on this CPU under the library versions of the lent GPU machine (../shared/notes/GPU.md: jax 0.11.2,
# flax 0.12.10, optax 0.2.8, orbax-checkpoint 0.12.4), before spending scarce device time on them. The code must
# run on both the pinned jax 0.10.2 and 0.11.2, and jax 0.11 needs Python >= 3.12, which this machine (3.11) lacks:
# the script builds a Debian trixie chroot (Python 3.13; the GPU machine has 3.12), downloads the wheels with this
# machine's pip (the chroot's Python rejects the proxy's certificate), installs them there offline, and runs pytest
# on a clone of the committed HEAD next to a copy of ../shared. No torch or transformers in it (PyPI's Linux torch
# is a multi-GB CUDA build): tests that need them skip.
#
#   sudo bash scripts/gpu_stack_on_cpu.sh                         the three files gpu_check.sh runs on the GPU
#   sudo bash scripts/gpu_stack_on_cpu.sh -n 2 --dist loadfile tests/   the whole suite (~12 min here)
# Measured 2026-11-29 at 9525685 (whole suite): 251 passed, 4 skipped (torch, lm_eval), 13m46 with the set-up.
#
# Needs root (debootstrap, chroot, mounts), deb.debian.org and PyPI. The chroot stays in $ROOT (default
# /tmp/gpt2jax-gpu-stack, ~1 GB) for the next run; delete it with `umount $ROOT/proc $ROOT/dev; rm -rf $ROOT`.
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/gpt2jax-gpu-stack}
HOST_PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PINS=(jax==0.11.2 jaxlib==0.11.2 flax==0.12.10 optax==0.2.8 orbax-checkpoint==0.12.4 tiktoken==0.14.0
      ml-collections==1.1.0 numpy safetensors tqdm tensorboardX matplotlib pytest pytest-xdist hypothesis scipy
      setuptools wheel)  # the last two: tests/test_packaging.py builds a wheel without build isolation
[ "$(id -u)" = 0 ] || { echo "[gpu-stack] needs root (debootstrap, chroot); run it with sudo" >&2; exit 2; }
if [ ! -x "$ROOT/venv/bin/python" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  echo "[gpu-stack] building a Debian trixie chroot in $ROOT (a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates trixie "$ROOT" \
    http://deb.debian.org/debian >"$ROOT.debootstrap.log" 2>&1 \
    || { echo "[gpu-stack] debootstrap failed: see $ROOT.debootstrap.log" >&2; exit 1; }
  mkdir -p "$ROOT/wheels"
  "$HOST_PY" -m pip download -q --only-binary=:all: --python-version 3.13 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$ROOT/wheels" "${PINS[@]}" \
    2> >(grep -v "is ignored" >&2)  # this machine's pip config names index folders that may be absent
  chroot "$ROOT" python3 -m venv /venv
  chroot "$ROOT" env -i PATH=/usr/bin:/bin /venv/bin/pip install -q --no-index --find-links /wheels "${PINS[@]}"
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
cp /etc/hosts "$ROOT/etc/hosts"  # gloo (jax.distributed on the CPU) resolves this machine's host name
rm -rf "$ROOT/w" && mkdir -p "$ROOT/w"
git clone -q . "$ROOT/w/main"
[ -d ../shared ] && cp -r ../shared "$ROOT/w/shared"
chroot "$ROOT" /venv/bin/python -c "import jax, flax, optax, orbax.checkpoint as o, sys; \
print('[gpu-stack] python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'orbax-checkpoint', o.__version__)"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/test_model.py tests/test_hf_parity.py tests/test_generate.py)
# The packaging test installs the wheel and runs `pip check`, which rightly reports that these versions are not
# the package's pins (jax==0.10.2, ...): it cannot pass on this stack.
exec chroot "$ROOT" env -i HOME=/root PATH=/venv/bin:/usr/bin:/bin PYTHONPATH=/w/main \
  bash -c 'cd /w/main && exec python -m pytest -q -p no:cacheprovider -rfs "$@"' pytest \
  --deselect tests/test_packaging.py::test_wheel_installs_and_runs_outside_the_repo "${args[@]}"
