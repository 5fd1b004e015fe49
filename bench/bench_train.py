"""Training and scoring throughput: gpt2jax vs a PyTorch reference (bench/torch_gpt2.py), side by side.

    python bench/bench_train.py                          # CPU: char, full, 124m, score, gemm (9-17 min, 2 cores)
    python bench/bench_train.py --only char,124m         # pick parts
    python bench/bench_train.py --only gpu               # GPU: 124M T=1024 bf16 at batch 16 and 32, 355M

Parts (ours = gpt2jax's own training step as `gpt2jax.train` compiles it, several steps per call where its
auto rule picks that; reference = bench/torch_gpt2.py, nanoGPT's model and loop):
  char   the char baby GPT (4L/4H/128, B12 x T64, fp32): step time; torch at each --torch_threads count
  124m   GPT-2 124M at B4 x T256, fp32: step time
  score  the zero-shot suite's forward (gpt2jax.eval.scoring.Scorer: NLL + greedy flags) at 124M, T=1024, vs
         transformers' GPT2LMHeadModel forward + log_softmax + gather + argmax, what lm-eval's `hf` backend runs
  full   configs/shakespeare_char.py end to end (2000 steps, evals of 200 val batches every 250 steps, samples,
         checkpoints, the final sliding-window eval): wall time of `gpt2jax.train` vs the reference doing the
         same schedule with nanoGPT's loop
  gemm   the 124m step's float32 matmuls alone (every layer's forward, input and weight gradients; the head),
         XLA's vs torch's (MKL): how much of the 124m gap is matmul kernel speed
  gpu    (CUDA only) 124M T=1024 bf16 at batch 16 and 32 and 355M at batch 16: ours with model.attention=auto
         vs torch.compile + bf16 autocast + flash SDPA + fused AdamW

Both sides train the same shapes from the same initial weights (gpt2jax's init copied into torch) on the same
random batches with the same AdamW hyper-parameters. After a warm-up call each and one untimed round, the two
alternate, --repeats times, each timed run with its page faults; the statistic is the median. On a CPU the parts
run in two processes, char and full in one, 124m, score and gemm in the other, each with the host memory policy
that `gpt2jax.train` picks for its shapes (`gpt2jax.runtime.hostmem`: freed memory kept for the large ones); torch shares
the process and its policy. MFU = (6 N + 12 L T C) tokens/s / peak (N: parameters without position
embeddings; forward-only scoring uses a third of that); the peak is the measured float32 matmul FLOP/s of this
CPU (`gpt2jax.training.metrics.measure_cpu_flops`, again before every part) or the bf16 datasheet number of the GPU. Memory: ours is what the
compiled step needs (`compiled.memory_analysis()`), torch's is its allocator peak on GPU and the growth of the
process's peak RSS on CPU. Writes <out_dir>/train.json and train.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpt2jax.runtime import hostmem  # noqa: E402
from gpt2jax.training import metrics as metrics_lib  # noqa: E402
from gpt2jax.training import cadence  # noqa: E402
from gpt2jax.config import GPT2_PADDED_VOCAB_SIZE, GPTConfig  # noqa: E402
from gpt2jax.training.memory import StepMemory  # noqa: E402
from gpt2jax.model import flops_per_token, param_count  # noqa: E402
from gpt2jax.training.optim import make_optimizer  # noqa: E402
from gpt2jax.model.sharding import DEFAULT_RULES, activation_context, make_mesh  # noqa: E402
from gpt2jax.training.state import StateLayout  # noqa: E402
from gpt2jax.train import parse_config  # noqa: E402
from gpt2jax.training.loop import compile_steps

PARTS = ("char", "124m", "score", "full", "gemm", "gpu")
ENV_THAT_MATTERS = ("XLA_FLAGS", hostmem.ENV)  # written into the results' command line


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated parts of {PARTS}; default: char,124m,score,full on "
                                              "CPU, gpu on a GPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating; median (default 3)")
    p.add_argument("--char_steps", type=int, default=60, help="steps per timed char run (default 60)")
    p.add_argument("--big_steps", type=int, default=1, help="steps per timed 124m run (default 1)")
    p.add_argument("--gpu_steps", type=int, default=50,
                   help="steps per timed gpu run (default 50). Each run starts from an idle GPU and ends by reading "
                        "the loss: on an H200 at 124M B16 gpt2jax's 10-step runs took 8-14 ms more than ten steps of "
                        "its device timeline (torch's ~1.5 ms; bench/results/gpu_h200/call5_*), over 1 ms a step. "
                        "A training run reads its metrics a call late and never drains, so longer runs measure what "
                        "it sees")
    p.add_argument("--full_steps", type=int, default=0, help="override max_steps of the full run (0: the config's)")
    p.add_argument("--full_repeats", type=int, default=2,
                   help="full runs per side, alternating reference, gpt2jax, gpt2jax, reference, ... (default 2: "
                        "this machine's speed drifts over minutes, and ABBA cancels a steady drift); median")
    p.add_argument("--torch_threads", type=int, nargs="+", default=sorted({1, os.cpu_count()}),
                   help="torch intra-op threads for the CPU parts; each is measured, the fastest is the reference "
                        "(on a shared machine one thread can beat two)")
    p.add_argument("--toy", action="store_true", help="tiny shapes everywhere (to try the script, not to measure)")
    p.add_argument("--out_dir", default=str(REPO / "bench" / "results"), help="where train.{json,md} go")
    p.add_argument("--gpu_shapes", default="124m:16,124m:32,355m:16",
                   help="gpu part: comma-separated <124m|355m>:<batch> at T=1024 (default 124m:16,124m:32,355m:16)")
    p.add_argument("--ours_variants", nargs="*", default=[], metavar="KEY=VALUE[;KEY=VALUE]",
                   help="extra gpt2jax sides with model overrides (and train.steps_per_call), timed in the same "
                        "alternation, e.g. 'scan_unroll=12' 'remat=dots' 'steps_per_call=10' (reported under all_ms)")
    p.add_argument("--gemm_call_by_call", action="store_true",
                   help="gemm part: also time every product the old way, single calls alternating, right after its "
                        "blocks in the same process (printed and in the json as call_by_call_ratio; the row stays "
                        "the blocks' figures)")
    p.add_argument("--no_ref", action="store_true", help="time gpt2jax only (e.g. to compare XLA_FLAGS across runs)")
    p.add_argument("--profile_dir", default="",
                   help="also profile a few steps of each side of the first shape of every part (jax.profiler / "
                        "torch.profiler) and write kernel-time tables (bench/profile_summary.py) here")
    p.add_argument("--profile_steps", type=int, default=3,
                   help="steps per profiled run (default 3; rounded up to whole calls). On a GPU the timeline also "
                        "gives the run's lead and tail, its wall time beyond its kernels: profile as many steps as a "
                        "timed run has to read them against that run")
    return p


# ---- measurement helpers -----------------------------------------------------------------------------------

def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Growth of the process's peak resident memory while a block runs (the peak is reset first)."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.before = rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = max(0, rss_bytes("VmHWM") - self.before)


def median_ms(times, n_steps) -> float:
    return 1e3 * statistics.median(times) / n_steps


def alternate_blocks(sides: dict, rounds: int, calls: int = 3, lead: bool = True) -> dict:
    """Short calls (a single matmul, one attention layer): sides name -> fn() (runs and blocks). Every round each
    side runs an untimed call and then `calls` timed calls back to back, sides in turn (order flipped every
    round); returns name -> every timed call's seconds. Alternating single calls would time each call right after
    the other side's: torch's OpenMP workers (libgomp) spin on after a parallel region and take a core from the
    XLA call that follows (2026-12-05, AMD EPYC, 2 cores: XLA's 124M matmuls at 0.70-0.93x torch's when
    alternating call by call, 0.86-1.06x in blocks). The untimed call absorbs that; long calls (a training step)
    barely notice it, so `alternate` times those one at a time. lead=False, calls=1 is that call-by-call timing
    (gemm --gemm_call_by_call shows the difference)."""
    times = {n: [] for n in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if lead:
                sides[name]()
            for _ in range(calls):
                t = time.perf_counter()
                sides[name]()
                times[name].append(time.perf_counter() - t)
    return times


def alternate(sides: dict, repeats: int, label: str) -> tuple[dict, list, dict]:
    """sides: name -> fn() (runs and blocks). One untimed round, then alternates them `repeats` times (order flipped
    every repeat). The untimed round lets the shared heap settle: each side's first run after the other has run
    can page-fault memory the other side left fragmented. Returns name -> seconds of every timed run, the loads,
    and name -> page faults of every timed run (also printed)."""
    runs, loads, faults = {n: [] for n in sides}, [], {n: [] for n in sides}
    names = list(sides)
    for fn in sides.values():
        fn()
    for r in range(repeats):
        loads.append(load())
        for name in (names if r % 2 == 0 else names[::-1]):
            f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            sides[name]()
            runs[name].append(time.perf_counter() - t)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        print(f"  {label} run {r + 1}/{repeats} (load {loads[-1]}): "
              + ", ".join(f"{n} {v[-1]:.3f}s ({faults[n][-1]} page faults)" for n, v in runs.items()), flush=True)
    return runs, loads, faults


# ---- the two trainers on random batches --------------------------------------------------------------------

def optim_config(**kw):
    c = parse_config(["bench", "--config", str(REPO / "configs" / "shakespeare_char.py")]).optim
    c.update(**kw)
    return c


class OursTrainer:
    """gpt2jax's compiled step(s) on one device, exactly as gpt2jax.train builds them (compile_steps)."""

    def __init__(self, cfg: GPTConfig, optim, batch: int, seq_len: int, max_steps: int, steps_per_call: int = 0):
        self.cfg, self.B, self.T = cfg, batch, seq_len
        mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        self.mesh = mesh
        tx, schedule = make_optimizer(optim, cfg, max_steps)
        layout = StateLayout.build(cfg, tx, mesh, DEFAULT_RULES)  # the state as gpt2jax.train lays it out
        t = parse_config(["bench", "--config", str(REPO / "configs" / "shakespeare_char.py")]).train
        t.steps_per_call = steps_per_call  # the auto rule as a run with eval_every 250 resolves it
        self.k = cadence.steps_per_call(t, flops_per_token(cfg, seq_len) * batch * seq_len)
        t0 = time.perf_counter()
        self.fns = compile_steps(layout, schedule, self.k, (1, batch, seq_len + 1),
                                 lambda: activation_context(mesh, ()))
        self.compile_s = time.perf_counter() - t0
        self.memory = StepMemory.of(self.fns.get("multi") or self.fns["step"])
        self.layout, self.state = layout, layout.create(0)
        self.rng = np.random.default_rng(0)

    def params(self):
        return jax.tree.map(np.asarray, self.state["params"])

    def run(self, n_steps: int):
        """n_steps steps (rounded up to whole calls) on fresh random batches; blocks at the end only."""
        done, m = 0, None
        while done < n_steps:
            k = self.k if n_steps - done >= self.k else 1
            shape = (k, 1, self.B, self.T + 1) if k > 1 else (1, self.B, self.T + 1)
            tokens = self.rng.integers(0, self.cfg.vocab_size, shape, dtype=np.int32)
            fn, sharding = ((self.fns["multi"], self.layout.stacked_batch) if k > 1
                            else (self.fns["step"], self.layout.batch))
            # a device array made as gpt2jax.train makes it (data.loader.global_batch), not a numpy argument
            self.state, m = fn(self.state, jax.make_array_from_process_local_data(sharding, tokens, shape))
            done += k
        jax.block_until_ready(m)
        return np.asarray(m["loss"])


class TorchSide:
    def __init__(self, cfg: GPTConfig, params, optim, batch, seq_len, max_steps, device="cpu", gpu=False):
        import torch

        import torch_gpt2

        self.torch, self.B, self.T, self.V, self.device = torch, batch, seq_len, cfg.vocab_size, device
        model = torch_gpt2.from_gpt2jax_config(cfg)
        if params is not None:
            torch_gpt2.load_gpt2jax_params(model, params)
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.trainer = torch_gpt2.Trainer(model, optim, max_steps, device=device, compile=gpu, bf16=gpu)
        self.rng = np.random.default_rng(0)

    def run(self, n_steps: int):
        loss = None
        for _ in range(n_steps):
            tokens = self.rng.integers(0, self.V, (1, self.B, self.T + 1))
            loss = self.trainer.step(self.torch.from_numpy(tokens).to(self.device, non_blocking=True))
        return float(loss)


def parse_overrides(spec: str) -> dict:
    """'scan_unroll=12;remat=dots' -> {'scan_unroll': 12, 'remat': 'dots'} (ints where they parse)."""
    out = {}
    for item in filter(None, spec.split(";")):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def profile_sides(name, ours, variants, refs, args, cuda):
    """A few steps of every side under its profiler; kernel-time tables to --profile_dir (profile_summary)."""
    import torch

    import profile_summary

    out, steps = Path(args.profile_dir), args.profile_steps
    tables, timelines = {}, {}  # kernel time by category; device busy/idle (GPU only)
    for label, trainer in {"gpt2jax": ours, **variants}.items():
        trace_dir = out / "traces" / "".join(ch if ch.isalnum() else "_" for ch in f"{name}_{label}")
        n = -(-steps // trainer.k) * trainer.k
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            with jax.profiler.TraceAnnotation(profile_summary.RUN_MARK):  # a timed run: lead and tail are its edges
                trainer.run(n)
        hlo = None if cuda else (trainer.fns.get("multi") or trainer.fns["step"]).as_text()  # CPU: ops by model part
        tables[label] = profile_summary.jax_kernel_table(trace_dir, n, hlo)
        if cuda:
            timelines[label] = profile_summary.device_timeline(trace_dir, n)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    for label, ref in refs.items():
        with torch.profiler.profile(activities=acts) as prof:
            with torch.profiler.record_function(profile_summary.RUN_MARK):
                ref.run(steps)
                if cuda:
                    torch.cuda.synchronize()
        tables[label] = profile_summary.torch_kernel_table(prof, steps, cuda)
        if cuda:
            timelines[label] = profile_summary.torch_timeline(prof, steps)
    profile_summary.write(out, name, tables, timelines)
    print(profile_summary.markdown(name, {k: dict(v, top=v.get("top", [])[:8]) for k, v in tables.items()})
          + profile_summary.timeline_markdown(name, timelines), flush=True)


# ---- parts ---------------------------------------------------------------------------------------------------

def step_part(name, cfg, batch, seq_len, n_steps, args, peak, threads, gpu=False, optim=None):
    """Step time of ours vs torch (at each thread count on CPU) for one shape; returns a result row."""
    import torch

    optim = optim or optim_config()
    print(f"[{name}] {cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd} B{batch}xT{seq_len} {cfg.dtype} "
          f"({param_count(cfg) / 1e6:.1f}M params); load {load()}", flush=True)
    with PeakRSS() as ours_mem:
        ours = OursTrainer(cfg, optim, batch, seq_len, max_steps=10_000)
        ours.run(max(n_steps, ours.k))  # warm-up
    print(f"  ours: compile {ours.compile_s:.1f}s, {ours.k} step(s)/call", flush=True)
    cuda = gpu and torch.cuda.is_available()  # gpu without CUDA: --toy on a CPU, to try the script
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    n_steps = -(-n_steps // ours.k) * ours.k  # whole calls
    sides, first_s, torch_mem = {"gpt2jax": lambda: ours.run(n_steps)}, {}, {}
    variants = {}
    for spec in args.ours_variants:
        overrides = parse_overrides(spec)
        k = overrides.pop("steps_per_call", 0)  # train.steps_per_call, the one non-model key
        v = OursTrainer(cfg.replace(**overrides), optim, batch, seq_len, max_steps=10_000, steps_per_call=k)
        v.run(max(n_steps, v.k))
        variants[f"gpt2jax[{spec}]"] = v
        sides[f"gpt2jax[{spec}]"] = lambda v=v: v.run(n_steps)
        print(f"  ours[{spec}]: compile {v.compile_s:.1f}s", flush=True)
    refs = {}
    for th in ([] if args.no_ref else threads):
        torch.set_num_threads(th)
        with PeakRSS() as mem:
            ref = TorchSide(cfg, ours.params(), optim, batch, seq_len, 10_000, "cuda" if cuda else "cpu", cuda)
            t = time.perf_counter()
            ref.run(1)  # warm-up (torch.compile on GPU)
            first_s[th] = time.perf_counter() - t
            ref.run(1)
        torch_mem[th] = torch.cuda.max_memory_allocated() if cuda else mem.growth

        def run_ref(ref=ref, th=th):
            torch.set_num_threads(th)
            ref.run(n_steps)
            if cuda:
                torch.cuda.synchronize()
        sides[f"torch_{th}t"] = run_ref
        refs[f"torch_{th}t"] = ref
    runs, loads, faults = alternate(sides, args.repeats, name)
    if args.profile_dir and not args.profiled.get(name.split()[0]):
        args.profiled[name.split()[0]] = True
        profile_sides(name, ours, variants, refs, args, cuda)
    ms = {n: median_ms(v, n_steps) for n, v in runs.items()}
    if args.no_ref:  # ours alone: a nan reference keeps the row's shape; sides_table has every side
        ms.setdefault("torch_0t", float("nan"))
        first_s[0], torch_mem[0] = float("nan"), 0
    best = min((n for n in ms if n.startswith("torch")), key=ms.get)
    tokens = batch * seq_len
    fpt = flops_per_token(cfg, seq_len)
    ours_peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use") if cuda else ours_mem.growth
    row = dict(part=name, shape=f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd} B{batch}xT{seq_len} {cfg.dtype}",
               ours_step_ms=ms["gpt2jax"], ref_step_ms=ms[best], ref=best,
               ours_tok_s=tokens / ms["gpt2jax"] * 1e3, ref_tok_s=tokens / ms[best] * 1e3,
               ratio=ms[best] / ms["gpt2jax"],
               ours_mfu=fpt * tokens / ms["gpt2jax"] * 1e3 / peak, ref_mfu=fpt * tokens / ms[best] * 1e3 / peak,
               ours_compile_s=ours.compile_s, ref_first_step_s=first_s[int(best.split("_")[1][:-1])],
               ours_step_memory_gib=ours.memory.total / 2**30 if ours.memory else None,
               ours_peak_gib=(ours_peak or 0) / 2**30, ref_peak_gib=torch_mem[int(best.split("_")[1][:-1])] / 2**30,
               steps_per_call=ours.k, all_ms=ms, loads=loads, run_s=runs, run_faults=faults)
    del ours
    return row


def score_part(args, peak, threads):
    """Scorer (gpt2jax.eval.scoring) vs transformers' forward at 124M, T=1024, batch 1 (lm-eval's default)."""
    import torch
    import transformers

    from gpt2jax.eval.scoring import Scorer
    from gpt2jax.weights.hf import export_hf
    from gpt2jax.model import init_params

    cfg = GPTConfig.preset("gpt2") if not args.toy else GPTConfig(n_layer=2, n_head=2, n_embd=64, n_positions=128)
    T = cfg.n_positions
    print(f"[score] {cfg.n_layer}L/{cfg.n_embd} forward, B1xT{T}; load {load()}", flush=True)
    params = jax.device_get(init_params(cfg, jax.random.key(0)))
    scorer = Scorer(cfg, params, batch_size=1, mesh=make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
    with tempfile.TemporaryDirectory() as tmp:
        hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(cfg, params, tmp)).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (1, T + 1)).astype(np.int32)
    inputs, targets = x[:, :-1], x[:, 1:]
    t = time.perf_counter()
    ours_out = scorer(inputs, targets)
    compile_s = time.perf_counter() - t

    def run_hf(th):
        def run():
            torch.set_num_threads(th)
            with torch.inference_mode():
                logits = hf(torch.from_numpy(inputs.astype(np.int64))).logits  # (1, T, V)
                logp = torch.nn.functional.log_softmax(logits.float(), dim=-1)
                tgt = torch.from_numpy(targets.astype(np.int64))
                nll = -logp.gather(-1, tgt[..., None])[..., 0]
                greedy = logits.argmax(-1) == tgt
            return nll.numpy(), greedy.numpy()
        return run

    sides = {"gpt2jax": lambda: scorer(inputs, targets), **{f"transformers_{th}t": run_hf(th) for th in threads}}
    ref_nll = run_hf(threads[-1])()[0]
    runs, loads, faults = alternate(sides, args.repeats, "score")
    ms = {n: median_ms(v, 1) for n, v in runs.items()}
    best = min((n for n in ms if n != "gpt2jax"), key=ms.get)
    fwd = flops_per_token(cfg, T) / 3
    return dict(part="score", shape=f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd} B1xT{T} float32 forward",
                ours_step_ms=ms["gpt2jax"], ref_step_ms=ms[best], ref=best, ours_tok_s=T / ms["gpt2jax"] * 1e3,
                ref_tok_s=T / ms[best] * 1e3, ratio=ms[best] / ms["gpt2jax"],
                ours_mfu=fwd * T / ms["gpt2jax"] * 1e3 / peak, ref_mfu=fwd * T / ms[best] * 1e3 / peak,
                ours_compile_s=compile_s, max_abs_nll_diff=float(np.abs(ours_out["nll"] - ref_nll).max()),
                all_ms=ms, loads=loads, run_s=runs, run_faults=faults)


def full_part(args, threads):
    """The whole configs/shakespeare_char.py run (steps, evals, samples, checkpoints, final eval) with gpt2jax.train
    and with torch_gpt2.full_reference_run; --full_repeats runs per side in ABBA order, each in a fresh run dir and
    paying its own compiles; median wall time per side."""
    import torch

    from torch_gpt2 import full_reference_run
    from gpt2jax.data import prepare as prep
    from gpt2jax.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prep.prepare_files([REPO / "data" / "tinyshakespeare.txt"], data, tokenizer="char")

        def config_for(run: str):
            config = parse_config(["bench", "--config", str(REPO / "configs" / "shakespeare_char.py")])
            config.data.dir, config.run_root = str(data), str(Path(tmp) / run)
            config.train.progress = False
            if args.full_steps:
                config.train.update(max_steps=args.full_steps, eval_every=max(1, args.full_steps // 4))
                config.optim.update(decay_steps=args.full_steps, warmup_steps=min(100, args.full_steps // 2))
            if args.toy:
                config.train.eval_batches = 10
            return config

        config = config_for("runs")
        th = threads[0]
        torch.set_num_threads(th)
        print(f"[full] {config.name}: {config.train.max_steps} steps, eval every {config.train.eval_every} "
              f"({config.train.eval_batches} batches), torch {th} thread(s), {args.full_repeats} run(s) per side; "
              f"load {load()}", flush=True)
        results, loads = {"ref": [], "ours": []}, []
        for r in range(args.full_repeats):
            for side in (("ref", "ours") if r % 2 == 0 else ("ours", "ref")):
                loads.append(load())
                if side == "ref":
                    res = full_reference_run(config_for(f"ref{r}"), data, Path(tmp) / f"ref_run{r}")
                    results[side].append(dict(wall_s=res["wall_s"], val_loss=res["val_loss"],
                                              final_val_loss=res["final_val_loss"], time_s=res["time_s"]))
                else:
                    t = time.perf_counter()
                    res = train(config_for(f"ours{r}"), devices=jax.devices()[:1])
                    results[side].append(dict(wall_s=time.perf_counter() - t, val_loss=res["val_loss"],
                                              final_val_loss=(res["final"] or {}).get("val_loss"),
                                              compile_s=res["compile_s"], time_s=res["time_s"]))
                last = results[side][-1]
                print(f"  {'reference' if side == 'ref' else 'gpt2jax'} run {r + 1}/{args.full_repeats}: "
                      f"{last['wall_s']:.1f}s, val loss {last['val_loss']:.4f} (load {loads[-1]})", flush=True)
    ref_s = float(np.median([x["wall_s"] for x in results["ref"]]))
    ours_s = float(np.median([x["wall_s"] for x in results["ours"]]))
    ours, ref = results["ours"][0], results["ref"][0]  # losses: every run of a side is the same seeded run
    return dict(part="full", shape=f"configs/shakespeare_char.py, {config.train.max_steps} steps incl. evals",
                ours_wall_s=ours_s, ref_wall_s=ref_s, ratio=ref_s / ours_s,
                ours_val_loss=ours["val_loss"], ref_val_loss=ref["val_loss"],
                ours_final_val_loss=ours["final_val_loss"], ref_final_val_loss=ref["final_val_loss"],
                ours_compile_s=ours["compile_s"], ref=f"torch_{th}t", loads=loads,
                all_wall_s={side: [x["wall_s"] for x in runs] for side, runs in results.items()},
                time_s={side: {k: float(np.median([x["time_s"].get(k, 0.0) for x in runs])) for k in PHASES}
                        for side, runs in results.items()})


def gemm_part(cfg, rows, args, peak, threads):
    """The float32 matrix products of one training step at the 124m shape, alone: XLA's (jitted jnp.matmul) vs
    torch's (MKL), each product timed in alternating blocks (`alternate_blocks`), median of the calls, summed over
    the step's count of it. Every
    layer: forward x @ W, input gradient dY @ W.T, weight gradient X.T @ dY for c_attn, attn.c_proj, mlp.c_fc and
    mlp.c_proj; the tied head once (x @ wte.T, dlogits @ wte, dlogits.T @ x). Attention's batched score/value
    products are left out (3% of the step's FLOPs)."""
    import torch

    torch.set_num_threads(threads[0])
    C, V, rng = cfg.n_embd, cfg.embedding_rows, np.random.default_rng(0)
    mats = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    products = []  # (label, count, lhs, rhs, transpose lhs, transpose rhs)
    for name, k, n in (("c_attn", C, 3 * C), ("attn.c_proj", C, C), ("mlp.c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)):
        x, w, dy = mats(rows, k), mats(k, n), mats(rows, n)
        products += [(f"{name} fwd", cfg.n_layer, x, w, False, False), (f"{name} dx", cfg.n_layer, dy, w, False, True),
                     (f"{name} dW", cfg.n_layer, x, dy, True, False)]
    x, wte, dlogits = mats(rows, C), mats(V, C), mats(rows, V)
    products += [("head fwd", 1, x, wte, False, True), ("head dx", 1, dlogits, wte, False, False),
                 ("head dW", 1, dlogits, x, True, False)]
    print(f"[gemm] {len(products)} float32 products of a {cfg.n_layer}L/{C} step at {rows} rows; load {load()}",
          flush=True)
    ours_s = ref_s = flops = 0.0
    per = {}
    for label, count, a, b, ta, tb in products:
        fn = jax.jit(lambda a, b, ta=ta, tb=tb: (a.T if ta else a) @ (b.T if tb else b))
        ja, jb, tta, ttb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        sides = {"ours": lambda: jax.block_until_ready(fn(ja, jb)),
                 "torch": lambda: (tta.T if ta else tta) @ (ttb.T if tb else ttb)}
        times = alternate_blocks(sides, max(3, args.repeats))
        m, k = (a.shape[1], a.shape[0]) if ta else a.shape
        n = b.shape[0] if tb else b.shape[1]
        ours, ref = statistics.median(times["ours"]), statistics.median(times["torch"])
        per[label] = dict(ours_gflops=2 * m * k * n / ours / 1e9, ref_gflops=2 * m * k * n / ref / 1e9,
                          ratio=ref / ours)
        also = ""
        if args.gemm_call_by_call:
            calls = alternate_blocks(sides, 3 * max(3, args.repeats), calls=1, lead=False)
            c_ours, c_ref = statistics.median(calls["ours"]), statistics.median(calls["torch"])
            per[label].update(call_by_call_ours_gflops=2 * m * k * n / c_ours / 1e9, call_by_call_ratio=c_ref / c_ours)
            also = f"; call by call: ours {per[label]['call_by_call_ours_gflops']:6.1f} GFLOP/s ({c_ref / c_ours:.2f}x)"
        print(f"  {label:16s} ({m}x{k} @ {k}x{n}) x{count}: ours {per[label]['ours_gflops']:6.1f} GFLOP/s, "
              f"torch {per[label]['ref_gflops']:6.1f} GFLOP/s ({ref / ours:.2f}x){also}", flush=True)
        ours_s, ref_s, flops = ours_s + count * ours, ref_s + count * ref, flops + count * 2 * m * k * n
    return dict(part="gemm", shape=f"{cfg.n_layer}L/{cfg.n_head}H/{C} {rows} rows float32, the step's matmuls alone",
                ours_step_ms=1e3 * ours_s, ref_step_ms=1e3 * ref_s, ref=f"torch_{threads[0]}t", ours_tok_s=rows / ours_s,
                ref_tok_s=rows / ref_s, ratio=ref_s / ours_s, ours_mfu=flops / ours_s / peak, ref_mfu=flops / ref_s / peak,
                ours_compile_s=float("nan"), products=per, loads=[load()])


# ---- main ----------------------------------------------------------------------------------------------------

def shapes(args):
    if args.toy:
        return dict(char=(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=65), 4, 32),
                    big=(GPTConfig(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=512), 2, 64),
                    gpu=[(GPTConfig(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=512,
                                    dtype="bfloat16", attention="auto"), b, 64) for b in (2, 4)])
    gpt2 = dict(n_positions=1024, padded_vocab_size=GPT2_PADDED_VOCAB_SIZE)
    return dict(char=(GPTConfig(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=65), 12, 64),
                big=(GPTConfig.preset("gpt2", **gpt2), 4, 256),
                gpu=[(GPTConfig.preset({"124m": "gpt2", "355m": "gpt2-medium"}[size], **gpt2, dtype="bfloat16",
                                       attention="auto"), int(b), 1024)
                     for size, b in (item.split(":") for item in args.gpu_shapes.split(",") if item)])


def table(rows) -> str:
    lines = ["| part | shape | gpt2jax | reference | ratio (ours/ref speed) | MFU ours / ref | compile s ours | "
             "memory ours / ref | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"] == "full":
            runs = {side: " / ".join(f"{x:.1f}" for x in walls) for side, walls in r.get("all_wall_s", {}).items()}
            lines.append(f"| full | {r['shape']} | {r['ours_wall_s']:.1f} s (runs {runs.get('ours', '-')} s; val "
                         f"{r['ours_val_loss']:.3f}) | {r['ref_wall_s']:.1f} s (runs {runs.get('ref', '-')} s; val "
                         f"{r['ref_val_loss']:.3f}, {r['ref']}) | {r['ratio']:.2f}x | | "
                         f"{r['ours_compile_s']:.1f} | | {', '.join(r['loads'])} |")
            continue
        mem = ""
        if r.get("ours_step_memory_gib") is not None:
            mem = (f"{r['ours_step_memory_gib']:.2f} GiB compiled need, {r['ours_peak_gib']:.2f} GiB peak / "
                   f"{r['ref_peak_gib']:.2f} GiB peak")
        unit = "ms/call" if r["part"] == "score" else "ms/step"
        if not math.isnan(r["ref_step_ms"]):
            ref, ratio, ref_mfu = (f"{r['ref_step_ms']:.1f} {unit}, {r['ref_tok_s']:,.0f} tok/s ({r['ref']})",
                                   f"{r['ratio']:.2f}x", f"{100 * r['ref_mfu']:.1f}%")
        else:  # --no_ref
            ref, ratio, ref_mfu = "not run (--no_ref)", "-", "-"
        lines.append(f"| {r['part']} | {r['shape']} | {r['ours_step_ms']:.1f} {unit}, {r['ours_tok_s']:,.0f} tok/s | "
                     f"{ref} | {ratio} | {100 * r['ours_mfu']:.1f}% / {ref_mfu} | {r['ours_compile_s']:.1f} | {mem} | "
                     f"{', '.join(r['loads'])} |")
    return "\n".join(lines)


def md_table(headers: list[str], body: list[str]) -> str:
    """A markdown table of the given header cells and body lines; empty when there is no body line."""
    if not body:
        return ""
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *body])


def sides_table(rows) -> str:
    """Every timed side of each part (gpt2jax, its --ours_variants, each torch thread count), median per step,
    and its speed relative to gpt2jax's default; empty when no part timed a side beyond the main table's two."""
    lines = []
    for r in rows:
        sides = {name: ms for name, ms in r.get("all_ms", {}).items() if not math.isnan(ms)}  # nan: not run
        if not set(sides) - {"gpt2jax", r.get("ref")}:
            continue
        unit = "ms/call" if r["part"] == "score" else "ms/step"
        for name, ms in sides.items():
            lines.append(f"| {r['part']} | {name} | {ms:.1f} {unit} | {sides['gpt2jax'] / ms:.3f}x |")
    return md_table(["part", "side", "median", "speed vs gpt2jax"], lines)


def products_table(rows) -> str:
    """The gemm part's products one by one (timed in blocks; with --gemm_call_by_call also call by call, the
    order that let torch's spinning OpenMP workers slow the XLA call after each of torch's); empty without it."""
    gemm = next((r for r in rows if r["part"] == "gemm" and r.get("products")), {})
    lines = []
    for label, p in gemm.get("products", {}).items():
        by_call = (f"{p['call_by_call_ours_gflops']:.1f} | {p['call_by_call_ratio']:.2f}x"
                   if "call_by_call_ratio" in p else "- | -")
        lines.append(f"| {label} | {p['ours_gflops']:.1f} | {p['ref_gflops']:.1f} | {p['ratio']:.2f}x | {by_call} |")
    return md_table(["product", "ours GFLOP/s", "torch GFLOP/s", "ours/torch speed, in blocks",
                     "ours GFLOP/s, call by call", "ours/torch speed, call by call"], lines)


PHASES = (*metrics_lib.RunClock.PHASES, "wall", "xla_compile")  # summary.json's time_s


def phases_table(rows) -> str:
    """Where the full part's wall time went, each side's median per phase (gpt2jax's summary.json time_s, the
    reference's own clock over the same phases); XLA's compile time lies inside ours' phases. Empty without it."""
    full = next((r for r in rows if r["part"] == "full" and r.get("time_s")), {})
    if not full:
        return ""
    ours, ref = full["time_s"]["ours"], full["time_s"]["ref"]
    names = dict(startup="start-up", steps="steps", evals="evals", samples="samples", checkpoints="checkpoint saves",
                 final="final eval and sample", wall="wall", xla_compile="of which XLA compiling (ours)")
    lines = [f"| {names[k]} | {ours[k]:.1f} | {ref[k]:.1f} | {ours[k] - ref[k]:+.1f} |" for k in PHASES]
    return md_table(["phase of the full run", "gpt2jax s", "reference s", "difference s"], lines)


def runs_table(rows) -> str:
    """Every timed run of the step and scoring parts in order, with the page faults it took: on a CPU one side's
    run can fault in fresh heap when the other side's allocations fragmented the process's shared heap (a 124M run
    of ours that grew the heap by ~2 GB took 3-5 s longer), which moves a median of five. Empty when no part
    recorded runs."""
    lines = []
    for r in rows:
        for name, secs in r.get("run_s", {}).items():
            runs = ", ".join(f"{s:.3f}" + (f" ({f})" if f else "") for s, f in zip(secs, r["run_faults"][name]))
            lines.append(f"| {r['part']} | {name} | {runs} |")
    return md_table(["part", "side", "seconds of each timed run (page faults, where any)"], lines)


def results_text(rows) -> str:
    """The main table, then every side's median where a part timed more than one of ours or of torch, every timed
    run with its page faults, the gemm part's products, and the full run's phases."""
    sections = (("Every side", sides_table(rows)), ("Every timed run", runs_table(rows)),
                ("The gemm part's products", products_table(rows)),
                ("Where the full run's time went (median of each side's runs)", phases_table(rows)))
    return table(rows) + "".join(f"\n\n{title}:\n\n{text}" for title, text in sections if text)


def write_results(out: Path, stem: str, meta: dict, rows: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(f"# Training throughput: gpt2jax vs the PyTorch reference\n\n`{meta['command']}`"
                                    f"\n\n{json.dumps(meta)}\n\n{results_text(rows)}\n")


# gpt2jax.train decides its host memory policy per run (gpt2jax.runtime.hostmem: "auto" keeps freed memory for large
# shapes only) before JAX starts; a process can only do it once, before its first computation. So on a CPU the
# parts run in two processes, each with the policy gpt2jax.train would pick for its shapes; torch shares it.
SMALL_PARTS, LARGE_PARTS = ("char", "full"), ("124m", "score", "gemm")


def run_part_groups(argv: list[str], parts: list[str], out_dir: Path) -> int:
    """One child process per group of parts (SMALL_PARTS, LARGE_PARTS); their rows merged into out_dir."""
    import subprocess

    keep = [a for i, a in enumerate(argv) if not (a.startswith(("--only", "--out_dir")) or
                                                    (i > 0 and argv[i - 1] in ("--only", "--out_dir")))]
    meta, rows = None, []
    with tempfile.TemporaryDirectory() as tmp:
        for n, group in enumerate((SMALL_PARTS, LARGE_PARTS)):
            chosen = [p for p in parts if p in group]
            if not chosen:
                continue
            child_out = Path(tmp) / str(n)
            code = subprocess.run([sys.executable, __file__, *keep, "--only", ",".join(chosen),
                                   "--out_dir", str(child_out)]).returncode
            if code:
                return code
            result = json.loads((child_out / "train.json").read_text())
            meta = meta or result["meta"]
            rows += [dict(row, host_malloc=result["meta"]["host_malloc"]) for row in result["rows"]]
    meta["command"] = command_line(argv)
    meta["host_malloc"] = "per part (rows' host_malloc): " + ", ".join(f"{r['part']} {r['host_malloc']['policy']}"
                                                                      for r in rows)
    write_results(out_dir, "train", meta, rows)
    print("\n" + results_text(rows))
    print(f"wrote {out_dir / 'train.json'}, {out_dir / 'train.md'}")
    return 0


def command_line(argv, script: str = "bench/bench_train.py") -> str:
    """The command as one could rerun it, with the environment settings that change what is timed (XLA's flags
    pick the matmul library on a CPU; the host memory policy changes page faults), so a results file from
    `XLA_FLAGS=... python bench/bench_train.py` says so."""
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_THAT_MATTERS if os.environ.get(k))
    return (env + " " if env else "") + f"python {script} " + " ".join(map(shlex.quote, argv))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.profiled = {}  # part -> profiled already (only the first shape of each part is profiled)
    cpu = hostmem.cpu_only()  # without starting JAX
    parts = [p for p in (args.only.split(",") if args.only else (PARTS[:5] if cpu else ["gpu"])) if p]
    if cpu and any(p in SMALL_PARTS for p in parts) and any(p in LARGE_PARTS for p in parts):
        return run_part_groups(argv, parts, Path(args.out_dir))
    if cpu and any(p in LARGE_PARTS for p in parts):
        cfg, b, t = shapes(args)["big"]
        host_malloc = hostmem.keep_freed_memory(b * t * cfg.embedding_rows * 4)
    else:
        host_malloc = dict(policy="system", reason="small shapes (as gpt2jax.train's auto rule decides)")
    gpu = jax.devices()[0].platform == "gpu"
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise SystemExit(f"error: unknown part(s) {bad}: choose from {PARTS}")
    if args.repeats < 1 or args.full_repeats < 1:
        raise SystemExit(f"error: --repeats {args.repeats} / --full_repeats {args.full_repeats}: each needs at least 1")
    if "gpu" in parts and not gpu and not args.toy:
        raise SystemExit("error: --only gpu needs a CUDA device (or --toy to try it); jax sees "
                         + jax.devices()[0].platform)
    import torch

    devices = list(jax.devices()[:1])
    cpu_peak = devices[0].platform == "cpu"

    def part_peak():
        """The peak a part's MFU is read against. CPU: measured again before every part, the best of 30 products
        (train's 5 are enough for a log line): this machine's matmul speed drifts by 15% over minutes (145 and 177
        GFLOP/s at the starts of the two processes of one run, 2026-12-05), and a part timed minutes after a low
        reading showed 111-114% MFU. GPU: the datasheet number."""
        return metrics_lib.measure_cpu_flops(repeats=30) if cpu_peak else metrics_lib.peak_flops(devices)

    peak = part_peak()
    meta = dict(device=devices[0].device_kind, platform=devices[0].platform, cpu_count=os.cpu_count(),
                machine=platform.processor() or platform.machine(), cpu=metrics_lib.cpu_description(),
                jax=jax.__version__, torch=torch.__version__,
                peak_flops=peak,
                peak_source="measured fp32 matmul (gpt2jax.training.metrics.measure_cpu_flops), again before every part "
                "(its row's peak_flops)" if not gpu else "bf16 datasheet (gpt2jax.training.metrics.PEAK_FLOPS_BY_KIND)",
                mfu_formula="(6 N + 12 L T C) tokens/s / peak; forward-only: a third", repeats=args.repeats,
                statistic="median", torch_threads=args.torch_threads, load_start=load(), toy=args.toy,
                host_malloc=host_malloc, command=command_line(argv))
    print(json.dumps(meta), flush=True)
    sh, rows = shapes(args), []
    out, stem = Path(args.out_dir), "train_gpu" if "gpu" in parts else "train"

    def done(row):  # results are written after every part, so a cut-short run keeps what it measured
        rows.append(row)
        write_results(out, stem, meta, rows)

    def timed(part_fn, *part_args, **kw):  # a part whose MFU needs a peak: this part's own
        p = part_peak() if cpu_peak else peak
        row = part_fn(*part_args, peak=p, **kw)
        row["peak_flops"] = p
        done(row)

    threads = args.torch_threads
    threads_full = [max(threads)]
    if "char" in parts:
        cfg, b, t = sh["char"]
        timed(step_part, "char", cfg, b, t, args.char_steps, args, threads=threads)
        threads_full = [int(rows[-1]["ref"].split("_")[1][:-1])]  # the full run uses the faster thread count
    if "full" in parts:
        done(full_part(args, threads_full))
    if "124m" in parts:
        cfg, b, t = sh["big"]
        timed(step_part, "124m", cfg, b, t, args.big_steps, args, threads=[max(threads)])
    if "score" in parts:
        timed(score_part, args, threads=threads)
    if "gemm" in parts:
        cfg, b, t = sh["big"]
        timed(gemm_part, cfg, b * t, args, threads=[max(threads)])
    if "gpu" in parts:
        for cfg, b, t in sh["gpu"]:
            timed(step_part, f"gpu {param_count(cfg) / 1e6:.0f}M B{b}", cfg, b, t, args.gpu_steps, args, threads=[1],
                  gpu=True, optim=optim_config(lr=6e-4, min_lr=6e-5, warmup_steps=10, b2=0.95))
    print("\n" + results_text(rows))
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
