"""Peak memory of `python -m gpt2jax.data.prepare` does not grow with the corpus (issue 38, acceptance 4).

    python bench/prepare_rss.py                      # 100 MB and 400 MB of generated jsonl, workers = cores
    python bench/prepare_rss.py --mb 50 200 --workers 4

Generates a jsonl corpus of the first size (bench/bench_prepare.py's generator) and repeats it for the larger ones,
runs prepare on each in a subprocess, and samples the resident memory (RSS) of the prepare process and its worker
processes every 20 ms. Prints, per corpus, the peak of their summed RSS and the largest single process's peak
(getrusage, over this and the earlier runs), and whether the peaks lie within --tolerance_mb of each other.
A script, not a CI test: it takes minutes on a laptop.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_prepare import make_corpus  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(corpus: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "gpt2jax.data.prepare", "--input", str(corpus), "--out", str(out),
           "--workers", str(workers)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.Error:
            pass
        time.sleep(0.02)
    stdout = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"prepare failed (rc {proc.returncode}): {' '.join(cmd)}")
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB: the largest process of all runs so far
    return {"seconds": time.perf_counter() - t, "peak_tree_mb": peak / 2**20, "largest_process_mb": single / 1024,
            "summary": stdout.strip()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, nargs="+", default=[100.0, 400.0], help="corpus sizes (multiples of the first)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--tolerance_mb", type=float, default=100.0)
    ap.add_argument("--tmp", default=None, help="where to write corpora and outputs (default: a temp dir)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="prepare_rss_", dir=args.tmp))
    try:
        base = tmp / "base.jsonl"
        make_corpus(base, args.mb[0])
        rows = []
        for mb in args.mb:
            corpus = tmp / f"corpus_{mb:g}MB.jsonl"
            copies = max(1, round(mb / args.mb[0]))
            with open(corpus, "wb") as f:
                for _ in range(copies):
                    with open(base, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 24)
            r = run(corpus, tmp / f"out_{mb:g}", args.workers)
            r["corpus_mb"] = corpus.stat().st_size / 1e6
            rows.append(r)
            print(f"{r['corpus_mb']:7.1f} MB jsonl: peak RSS {r['peak_tree_mb']:6.0f} MB (prepare + {args.workers} "
                  f"workers, sampled; largest single process so far {r['largest_process_mb']:.0f} MB), "
                  f"{r['seconds']:.0f} s; "
                  + r["summary"].replace("\n", "; "), flush=True)
            corpus.unlink()
            shutil.rmtree(tmp / f"out_{mb:g}")
        peaks = [r["peak_tree_mb"] for r in rows]
        spread = max(peaks) - min(peaks)
        ok = spread <= args.tolerance_mb
        print(f"peak RSS spread {spread:.0f} MB ({'within' if ok else 'NOT within'} {args.tolerance_mb:g} MB); "
              f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
