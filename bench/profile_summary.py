"""Where a training step's time goes, as small tables: gpt2jax (a `jax.profiler` trace) and the PyTorch reference
(`torch.profiler`), side by side by kernel category, for bench/bench_train.py --profile_dir.

A jax trace is written with `create_perfetto_trace=True`, i.e. as Chrome-trace JSON (`perfetto_trace.json.gz`), so
it is read here with the standard library: complete events ("ph": "X") are grouped by their process (on a GPU the
device stream tracks; on a CPU the host threads) and summed by name. The summary is what comes back from a device
call (a trace can be tens of MB); the raw trace is kept next to it when it is small.

Categories (by kernel name; cuBLAS/cuDNN/XLA/Triton names): gemm, attention, loss/softmax, optimizer, other
fusions, copies. They are heuristics for reading, not accounting. On a CPU, XLA's kernels are named by fusion kind
(`ynn_fusion.123` holds a matmul, a reduction or both), so when the compiled step's HLO text is given, each op is
put under the part of the model it computes, read from its `op_name` metadata (MODEL_PARTS), and only the ops on
XLA's worker threads are counted (their sum is thread time: up to the thread count x the wall time).
"""
from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

CATEGORIES = (  # first match wins; lower-case substrings of kernel names
    ("attention", ("flash", "fmha", "cudnn", "sdpa", "attention", "custom-call")),
    ("gemm", ("gemm", "nvjet", "cublas", "cutlass", "sm90_xmma", "matmul", "dot", "triton_gemm", "mm_", "xmma",
              "aten::mm", "addmm", "bmm")),
    ("loss/softmax", ("softmax", "logsumexp", "log_softmax", "nll", "cross_entropy", "reduce")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")),
    ("copy/transpose", ("copy", "memcpy", "memset", "transpose", "dynamic-update-slice", "dynamic_update_slice",
                        "slice")),
    ("fusion/elementwise", ("fusion", "loop", "elementwise", "triton", "vectorized", "kernel")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


MODEL_PARTS = (  # (part, regex on "<instruction name> <op_name>"); first match wins
    ("matmuls: LM head", r"^(ynn_fusion|dot|custom).*wte\.attend"),
    ("matmuls: layers", r"^(ynn_fusion|dot|custom).*(c_attn|c_proj|c_fc)/"),
    # jax.nn's attention (dot_product_attention, vmap/reshape) or blocked_causal_attention: everything under attn/
    # that is not one of its two projections
    ("attention core (scores, softmax, values, head layouts)", r"/attn/(?!c_attn/|c_proj/)|dot_product_attention"),
    ("layer weights sliced out of the stacked parameters", r"^slice\S* .*/slice$"),
    ("layer norms", r"/ln_(1|2|f)/"),
    ("MLP elementwise (GELU)", r"/mlp/"),
    ("optimizer, clipping, norms (outside the micro-batch loop)", r"^\S+ jit\(step\)/(?!.*while/body)"),
    ("loss, embeddings, residual adds", r"jvp\(GPT\)"),
)


def hlo_op_names(hlo_text: str) -> dict:
    """Instruction name -> op_name metadata, from a compiled module's as_text()."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', hlo_text, re.M)}


def model_part(name: str, op_names: dict) -> str:
    key = f"{name} {op_names.get(name, '?')}"
    return next((part for part, pattern in MODEL_PARTS if re.search(pattern, key)), "other")


def _trace_file(trace_dir: Path) -> Path | None:
    found = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz")) or sorted(Path(trace_dir).rglob("*.trace.json.gz"))
    return found[-1] if found else None


def _read_trace(path: Path):
    """(events, process names by pid, device pids, thread names by (pid, tid)) of a Chrome-trace JSON file."""
    events = json.loads(gzip.open(path, "rt").read())
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    proc_names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
                  if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, n in proc_names.items() if "gpu" in n.lower() or "stream" in n.lower()
                   or "/device:" in n.lower() and "cpu" not in n.lower()}
    thread_names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
                    if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return events, proc_names, device_pids, thread_names


GAP_BINS_US = (2, 10, 50, 200)  # a launch gap inside a stream of queued kernels is ~1-2 us
RUN_MARK = "bench.run"  # the host span bench_train.profile_sides puts around each profiled run (both profilers)


def _host_spans(events, device_pids) -> list:
    """(start us, end us, name) of the host-side complete events of a jax trace (Python frames, dispatch, waits)."""
    return [(float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]) for e in events
            if e.get("ph") == "X" and "dur" in e and e.get("pid") not in device_pids]


def device_timeline(trace_dir: Path, steps: int) -> dict:
    """_timeline of the device's stream tracks in the newest jax trace under trace_dir."""
    path = _trace_file(trace_dir)
    if path is None:
        return dict(error=f"no perfetto_trace.json.gz under {trace_dir}")
    events, proc_names, device_pids, thread_names = _read_trace(path)
    if not device_pids:
        return dict(error="no device tracks in the trace (a CPU run)")
    tracks = {key for key, n in thread_names.items() if key[0] in device_pids and "stream" in n.lower()}
    spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]) for e in events
             if e.get("ph") == "X" and "dur" in e and e.get("pid") in device_pids
             and (not tracks or (e.get("pid"), e.get("tid")) in tracks)]
    return _timeline(spans, steps, f"{path.name}; tracks: {sorted(thread_names[k] for k in tracks)[:6] or 'all'}",
                     host=_host_spans(events, device_pids))


def torch_timeline(prof, steps: int) -> dict:
    """_timeline of the CUDA kernels and copies of a finished torch.profiler.profile."""
    try:
        spans, host = [], []
        for e in prof.events():
            span = (float(e.time_range.start), float(e.time_range.end), e.name)
            (spans if "cuda" in str(getattr(e, "device_type", "")).lower() else host).append(span)
    except (AttributeError, TypeError) as e:  # an API change must not cost the bench row printed after it
        return dict(error=f"torch.profiler events unreadable: {e!r}")
    return _timeline(spans, steps, "torch.profiler events on the CUDA device", host=host)


def _timeline(spans: list, steps: int, source: str, top: int = 12, host: list | None = None) -> dict:
    """How busy the device was over the profiled steps, from (start us, end us, kernel name) spans: from the first
    kernel's start to the last one's end, the union of the spans (busy) and what is left (idle), per step, in ms;
    the idle gaps binned by length, and the longest ones with the kernels on either side. Idle time is what a
    step's wall time has beyond its kernels: many short gaps point at launch overhead (kernels too small or not
    queued ahead), a few long ones at the host (a synchronisation, dispatch between calls). With the host spans
    of a trace holding a RUN_MARK span, also what the marked run took beyond its kernels (`run_edges`)."""
    if not spans:
        return dict(error=f"no kernels ({source})")
    spans = sorted(spans)
    busy, gaps = 0.0, []
    start, end, last = spans[0]
    for s, e, name in spans[1:]:
        if s > end:
            busy += end - start
            gaps.append((s - end, last, name))
            start = s
        if e > end:
            end, last = e, name
    busy += end - start
    wall = end - spans[0][0]
    edges = (0,) + GAP_BINS_US + (float("inf"),)
    bins = {}
    for lo, hi in zip(edges, edges[1:]):
        inside = [g for g, _, _ in gaps if lo <= g < hi]
        bins[f"{lo}-{hi} us" if hi != float("inf") else f">={lo} us"] = dict(
            count_per_step=len(inside) / steps, ms_per_step=sum(inside) / 1e3 / steps)
    return dict(source=source, steps=steps, kernels_per_step=len(spans) / steps, span_ms_per_step=wall / 1e3 / steps,
                busy_ms_per_step=busy / 1e3 / steps, idle_ms_per_step=(wall - busy) / 1e3 / steps, gaps=bins,
                longest=[dict(us=g, before=b[:120], after=a[:120]) for g, b, a in sorted(gaps)[::-1][:top]],
                run_edges=run_edges(spans[0][0], end, host or []))


def run_edges(first_kernel: float, last_kernel_end: float, host: list, top: int = 8) -> dict | None:
    """What the marked run's wall time holds beyond its kernels: the lead (run start to the first kernel) and the
    tail (the last kernel's end to the run's end), in ms, each with the longest host spans inside it (clipped to
    it; nested spans such as a dispatch and its parts are listed each). A timed run's wall time is its kernels'
    span plus these two, so a lead or tail far above a step's launch gaps is host work before or after the GPU's,
    which a run of n steps pays once, not n times."""
    runs = sorted((s, e) for s, e, name in host if name == RUN_MARK)
    if not runs:
        return None
    start, end = runs[0]

    def inside(lo, hi):
        clipped = [(min(e, hi) - max(s, lo), name) for s, e, name in host
                   if name != RUN_MARK and s < hi and e > lo and min(e, hi) > max(s, lo)]
        return [dict(ms=ms / 1e3, name=name[:120]) for ms, name in sorted(clipped, reverse=True)[:top]]
    return dict(run_ms=(end - start) / 1e3, lead_ms=(first_kernel - start) / 1e3, tail_ms=(end - last_kernel_end) / 1e3,
                lead_host=inside(start, first_kernel), tail_host=inside(last_kernel_end, end))


def timeline_markdown(label: str, timelines: dict) -> str:
    """timelines: side name -> device_timeline dict."""
    sides = [s for s in timelines if "error" not in timelines[s]]
    if not sides:
        return ""
    lines = [f"## {label}: device busy and idle per step (ms)", "", "| | " + " | ".join(sides) + " |",
             "|---|" + "---|" * len(sides)]
    for key, title in (("span_ms_per_step", "first kernel start to last kernel end"),
                       ("busy_ms_per_step", "busy (union of kernels)"), ("idle_ms_per_step", "idle"),
                       ("kernels_per_step", "kernels")):
        lines.append(f"| {title} | " + " | ".join(f"{timelines[s][key]:.2f}" for s in sides) + " |")
    for b in timelines[sides[0]]["gaps"]:
        lines.append(f"| gaps {b}: count, ms | " + " | ".join(
            f"{timelines[s]['gaps'][b]['count_per_step']:.1f}, {timelines[s]['gaps'][b]['ms_per_step']:.2f}"
            for s in sides) + " |")
    edges = {s: timelines[s].get("run_edges") for s in sides}
    if any(edges.values()):
        lines.append("| marked run: wall, whole run | " + " | ".join(
            f"{edges[s]['run_ms']:.2f}" if edges[s] else "" for s in sides) + " |")
        for key, title in (("lead_ms", "run start to first kernel, whole run"),
                           ("tail_ms", "last kernel end to run end, whole run")):
            lines.append(f"| {title} | " + " | ".join(f"{edges[s][key]:.2f}" if edges[s] else "" for s in sides) + " |")
    for s in sides:
        lines += ["", f"### {s}: longest gaps", "", "| us | kernel before | kernel after |", "|---|---|---|"]
        lines += [f"| {g['us']:.0f} | `{g['before']}` | `{g['after']}` |" for g in timelines[s]["longest"]]
        for key, title in (("lead_host", "before the first kernel"), ("tail_host", "after the last kernel")):
            if edges[s] and edges[s][key]:
                lines += ["", f"### {s}: longest host spans {title}", "", "| ms | host span |", "|---|---|"]
                lines += [f"| {h['ms']:.3f} | `{h['name']}` |" for h in edges[s][key]]
    return "\n".join(lines) + "\n"


def jax_kernel_table(trace_dir: Path, steps: int, hlo_text: str | None = None) -> dict:
    """Sum of complete-event durations per (track, name) from the newest perfetto trace under trace_dir.
    Device tracks (names with 'GPU' or 'stream') win over host tracks when present. Per step, in ms. Without
    device tracks and with hlo_text (the profiled step's compiled HLO), only XLA's worker threads count and the
    categories are model parts."""
    path = _trace_file(trace_dir)
    if path is None:
        return dict(error=f"no perfetto_trace.json.gz under {trace_dir}")
    events, proc_names, device_pids, thread_names = _read_trace(path)
    by_part = hlo_text is not None and not device_pids
    op_names = hlo_op_names(hlo_text) if by_part else {}
    by_name: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if device_pids and e.get("pid") not in device_pids:
            continue
        if by_part and ("XLAEigen" not in thread_names.get((e.get("pid"), e.get("tid")), "")
                        or e["name"] not in op_names):  # executor spans, Python frames, thread-pool waits
            continue
        by_name[e["name"]] += float(e["dur"])  # microseconds
        counts[e["name"]] += 1
    if by_part:
        return _table(by_name, counts, steps, source=f"{path.name} (XLA worker threads, ops by model part)",
                      categorize=lambda name: model_part(name, op_names))
    return _table(by_name, counts, steps, source=f"{path.name} ({'device' if device_pids else 'host'} tracks: "
                  f"{sorted(proc_names[p] for p in device_pids)[:4] if device_pids else 'all'})")


def torch_kernel_table(prof, steps: int, cuda: bool) -> dict:
    """The same table from a finished torch.profiler.profile (device time on CUDA, self CPU time otherwise)."""
    by_name: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for evt in prof.key_averages():
        if cuda and "cuda" not in str(getattr(evt, "device_type", "")).lower():
            continue  # aten ops carry their kernels' device time too: count the kernels only (no double count)
        us = (getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)) if cuda \
            else evt.self_cpu_time_total
        if us:
            by_name[evt.key] += float(us)
            counts[evt.key] += int(evt.count)
    return _table(by_name, counts, steps, source="torch.profiler key_averages, self " + ("device" if cuda else "CPU")
                  + " time")


def _table(by_name, counts, steps: int, source: str, top: int = 25, categorize=category) -> dict:
    total = sum(by_name.values())
    cats: dict[str, float] = collections.Counter()
    for name, us in by_name.items():
        cats[categorize(name)] += us
    return dict(source=source, steps=steps, total_ms_per_step=total / 1e3 / steps,
                categories={c: us / 1e3 / steps for c, us in sorted(cats.items(), key=lambda kv: -kv[1])},
                top=[dict(name=n[:160], ms_per_step=us / 1e3 / steps, calls_per_step=counts[n] / steps,
                          category=categorize(n)) for n, us in by_name.most_common(top)])


def markdown(label: str, tables: dict) -> str:
    """tables: side name -> table dict. One category table across sides, then each side's top kernels."""
    sides = [s for s in tables if "error" not in tables[s]]
    lines = [f"## {label}: kernel time per step by category (ms)", "",
             "| category | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]
    cats = sorted({c for s in sides for c in tables[s]["categories"]})
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(f"{tables[s]['categories'].get(c, 0):.2f}" for s in sides) + " |")
    lines.append("| **sum of kernel time** | " + " | ".join(f"{tables[s]['total_ms_per_step']:.2f}" for s in sides)
                 + " |")
    for s, t in tables.items():
        lines += ["", f"### {s}: top kernels ({t.get('source', t.get('error'))})", ""]
        if "error" in t:
            continue
        lines += ["| ms/step | calls/step | category | kernel |", "|---|---|---|---|"]
        lines += [f"| {r['ms_per_step']:.3f} | {r['calls_per_step']:.0f} | {r['category']} | `{r['name']}` |"
                  for r in t["top"]]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, label: str, tables: dict, timelines: dict | None = None) -> None:
    """The kernel tables (and, from a GPU, the device timelines under "timeline") as JSON and markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "profile_" + "".join(ch if ch.isalnum() else "_" for ch in label)
    data = dict(tables, timeline=timelines) if timelines else tables
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(label, tables) + timeline_markdown(label, timelines or {}))
