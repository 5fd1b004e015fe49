"""Fingerprints of the optimised HLO of a short char run's programs (train step(s), eval, decoding, scoring).

A refactor that only moves code must leave every compiled program as it was. This script trains
configs/shakespeare_char.py for a few steps with XLA's dump switched on, normalises each module's optimised HLO
(module and computation names, metadata and source locations removed: they name Python files and functions) and
prints one hash per program. Run it before and after a change and compare:

    python bench/hlo_fingerprint.py --out /tmp/before.json
    ... change ...
    python bench/hlo_fingerprint.py --out /tmp/after.json --compare /tmp/before.json

The exit code is 1 when the two sets of programs differ (the differing programs are listed by name).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import sys
from gpt2jax.train import main
main(["train", "--config", "configs/shakespeare_char.py", "--config.run_root={root}", "--config.name=hlo",
      "--config.train.max_steps=20", "--config.train.eval_every=10", "--config.train.eval_batches=2",
      "--config.train.sample_tokens=8", "--config.train.final_eval=True", "--config.train.progress=False",
      "--config.train.tensorboard=False", "--config.train.plot=False", "--config.optim.warmup_steps=5",
      "--config.optim.decay_steps=0"])
"""


def normalise(text: str) -> str:
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    # the source-location tables (file and function names of the Python that traced each op)
    text = re.sub(r"^(FileNames|FunctionNames|FileLocations|StackFrames)\n(.+\n)*\n", "", text, flags=re.M)
    text = re.sub(r"^HloModule \S+", "HloModule m", text, flags=re.M)
    text = re.sub(r"frontend_attributes=\{[^}]*\}", "", text)
    return text


def fingerprints(dump: Path) -> dict[str, str]:
    out = {}
    for f in sorted(dump.glob("*after_optimizations.txt")):
        name = re.sub(r"^module_\d+\.", "", f.name).replace(".cpu_after_optimizations.txt", "").replace(".after_optimizations.txt", "")
        name = re.sub(r"\.\d+$", "", name)
        digest = hashlib.sha256(normalise(f.read_text()).encode()).hexdigest()[:16]
        out.setdefault(name, [])
        out[name].append(digest)
    return {k: sorted(v) for k, v in sorted(out.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the fingerprints (json)")
    ap.add_argument("--compare", help="fingerprints of an earlier run to compare with")
    ap.add_argument("--keep", help="copy the normalised optimised HLO of every program into this folder (to diff)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump, root = Path(tmp) / "dump", Path(tmp) / "runs"
        data = ROOT / "data/prepared/shakespeare_char"
        if not (data / "meta.json").is_file():
            subprocess.run([sys.executable, "-m", "gpt2jax.data.prepare", "--input", "data/tinyshakespeare.txt",
                            "--out", str(data), "--tokenizer", "char"], cwd=ROOT, check=True)
        env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text "
                                         + os.environ.get("XLA_FLAGS", ""))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        subprocess.run([sys.executable, "-c", RUN.format(root=root)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        prints = fingerprints(dump)
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for f in dump.glob("*after_optimizations.txt"):
                (Path(args.keep) / f.name).write_text(normalise(f.read_text()))
    # program contents, whatever a refactor renames: compare the multiset of hashes, name them for the reader
    Path(args.out).write_text(json.dumps(prints, indent=1))
    print(f"{len(prints)} programs, {sum(map(len, prints.values()))} modules -> {args.out}")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    flat = lambda d: sorted(h for v in d.values() for h in v)  # noqa: E731
    if flat(before) == flat(prints):
        print("optimised HLO unchanged: every program has the same fingerprint")
        return 0
    gone = {k: v for k, v in before.items() if prints.get(k) != v}
    new = {k: v for k, v in prints.items() if before.get(k) != v}
    print("optimised HLO CHANGED\n  before only: " + json.dumps(gone) + "\n  after only: " + json.dumps(new))
    return 1


if __name__ == "__main__":
    sys.exit(main())
