#!/usr/bin/env bash
# Check that the base install and every extra of gpt2jax resolve against the package index for each supported
# Python, without installing anything: `pip install --dry-run --ignore-installed --prefer-binary --target ...` of
# `-r requirements.txt` and of each `.[extra]`, one line per (Python, target). Needs the package index (network or
# a mirror) and an interpreter of each Python version checked.
#
#   bash scripts/check_extras.sh                  base + cuda cuda13 tpu hub harness test, on Python 3.11 and 3.12
#   bash scripts/check_extras.sh base cuda        only these
#   PYTHONS="3.12" bash scripts/check_extras.sh   only this Python
#   PYTHON3_12=/path/to/python3.12 ...            the interpreter to use (else python3.12 on PATH, pyenv's, uv's)
#
# Why a real interpreter per version and not `pip --python-version 3.12 --only-binary=:all:` from one Python: pip
# evaluates environment markers (`; python_version >= "3.12"`, the lines that pick jax 0.10.2 or 0.11.2) against the
# interpreter it runs in, whatever --python-version says (pypa/pip#10050), so a 3.11 pip "resolves for 3.12" the
# 3.11 stack; and --only-binary=:all: refuses lm-eval's sdist-only dependencies (sqlitedict, ...), which a real
# install builds. So: the right interpreter, wheels preferred, and each line lists the key packages and the sdists
# a real install would build (from pip's --report). The script also checks that the jax each dry-run would install is
# the one requirements.txt's markers pick.
# Writes pip's output and JSON report to ${OUT:-out/extras}/py<python>-<target>.{txt,json}, these lines to summary.txt.
# Exit status: 0 all resolved, 1 a target failed, 3 an interpreter is missing (nothing else wrong).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/extras}
mkdir -p "$out"
exec > >(tee "$out/summary.txt") 2>&1  # the lines below, also kept with the reports
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(base cuda cuda13 tpu hub harness test)
read -r -a pythons <<<"${PYTHONS:-3.11 3.12}"

find_python() {  # an interpreter of Python $1 that runs, or nothing
  local v=$1 var="PYTHON${1//./_}" c
  local candidates=("${!var:-}" "python$v")
  if command -v pyenv >/dev/null; then
    for c in "$(pyenv root)/versions/$v"*/bin/python"$v"; do candidates+=("$c"); done
  fi
  command -v uv >/dev/null && candidates+=("$(uv python find "$v" 2>/dev/null)")
  for c in "${candidates[@]}"; do
    [ -n "$c" ] && "$c" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$v'.split('.')))" \
      >/dev/null 2>&1 && { echo "$c"; return 0; }
  done
  return 1
}

status=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in "${pythons[@]}"; do
  py=$(find_python "$v") || { echo "[extras] no Python $v interpreter: set PYTHON${v//./_}=/path/to/python$v"; \
                              [ $status -eq 0 ] && status=3; continue; }
  "$py" -m venv "$tmp/venv$v" || { echo "[extras] $py -m venv failed"; status=1; continue; }
  vpy="$tmp/venv$v/bin/python"
  # the jax version requirements.txt's markers pick for this interpreter
  want=$("$vpy" -c "
from pip._vendor.packaging.requirements import Requirement
for line in open('requirements.txt'):
    line = line.split('#')[0].strip()
    if not line: continue
    r = Requirement(line)
    if r.name == 'jax' and (r.marker is None or r.marker.evaluate()): print(str(r.specifier).lstrip('='))")
  echo "[extras] Python $v ($("$vpy" -c 'import platform; print(platform.python_version())'), $("$vpy" -m pip --version | cut -d' ' -f1-2)): requirements.txt picks jax $want"
  for target in "${targets[@]}"; do
    if [ "$target" = base ]; then spec=(-r requirements.txt); else spec=(".[$target]"); fi
    report="$out/py$v-$target.txt"
    start=$(date +%s)
    if "$vpy" -m pip install --disable-pip-version-check --dry-run --ignore-installed --prefer-binary \
         --target "$tmp/target" --report "$out/py$v-$target.json" "${spec[@]}" >"$report" 2>&1; then
      # pip's JSON report: what would be installed, and from where (a cached wheel built from an sdist still
      # reports the sdist's URL: a fresh machine builds it)
      summary=$("$vpy" - "$out/py$v-$target.json" "$want" <<'PY'
import json, re, sys
items = json.load(open(sys.argv[1]))["install"]
pkgs = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in items}
key = [f"{n} {v}" for n, v in sorted(pkgs.items()) if re.match(
    r"(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|libtpu|jax-cuda\d+-(plugin|pjrt)|nvidia-cudnn.*|nvidia-nccl.*|"
    r"huggingface-hub|lm-eval|torch|transformers|datasets|accelerate)$", n)]
sdists = sorted(f"{i['metadata']['name']} {i['metadata']['version']}" for i in items
                if not i.get("is_direct") and not i["download_info"]["url"].endswith(".whl"))
nvidia = sum(n.startswith("nvidia-") for n in pkgs)
print(f"{len(pkgs)} packages; {', '.join(key)}" + (f" ({nvidia} nvidia-* packages in all)" if nvidia else "")
      + f"; from sdists: {', '.join(sdists) or 'none'}")
sys.exit(0 if pkgs.get("jax") == sys.argv[2] else 1)
PY
)
      if [ $? -eq 0 ]; then
        echo "[extras] py$v $target resolves ($(( $(date +%s) - start )) s): $summary"
      else
        echo "[extras] py$v $target resolves but not to jax $want: $summary"
        status=1
      fi
    else
      echo "[extras] py$v $target FAILED to resolve; see $report:"; grep -E "ERROR|error" "$report" | head -5
      status=1
    fi
  done
done
exit $status
