"""bench/profile_summary.py's device timeline, which runs only on a GPU call (scarce): checked here on a trace
written in the Chrome-trace JSON that jax.profiler writes, with known kernel and host spans."""
import gzip
import json
import sys

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import profile_summary  # noqa: E402


def _trace(tmp_path, kernels, host):
    """A perfetto_trace.json.gz with one GPU stream (pid 2) and one host thread (pid 1); spans in us."""
    meta = [dict(ph="M", name="process_name", pid=1, args=dict(name="/host:CPU")),
            dict(ph="M", name="process_name", pid=2, args=dict(name="/device:GPU:0")),
            dict(ph="M", name="thread_name", pid=2, tid=7, args=dict(name="Stream #13(Compute)")),
            dict(ph="M", name="thread_name", pid=1, tid=3, args=dict(name="python"))]
    spans = ([dict(ph="X", pid=2, tid=7, ts=s, dur=e - s, name=n) for s, e, n in kernels]
             + [dict(ph="X", pid=1, tid=3, ts=s, dur=e - s, name=n) for s, e, n in host])
    path = tmp_path / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump(dict(traceEvents=meta + spans), f)
    return tmp_path


def test_timeline_splits_a_run_into_kernels_gaps_lead_and_tail(tmp_path):
    # two steps of two kernels: a 5 us launch gap inside each step, a 300 us gap between the steps
    kernels = [(1000, 1100, "gemm_a"), (1105, 1200, "fusion_b"), (1500, 1600, "gemm_a"), (1605, 1700, "fusion_b")]
    host = [(400, 2000, profile_summary.RUN_MARK), (420, 900, "PjitFunction(step)"), (1750, 1990, "Buffer::Await")]
    t = profile_summary.device_timeline(_trace(tmp_path, kernels, host), steps=2)
    assert t["kernels_per_step"] == 2
    assert t["span_ms_per_step"] == pytest.approx(0.35)  # (1700 - 1000) us / 2
    assert t["busy_ms_per_step"] == pytest.approx(0.195)  # 390 us of kernels / 2
    assert t["idle_ms_per_step"] == pytest.approx(0.155)  # 5 + 300 + 5 us / 2
    assert t["gaps"]["2-10 us"]["count_per_step"] == 1 and t["gaps"][">=200 us"]["count_per_step"] == 0.5
    assert t["longest"][0] == dict(us=300, before="fusion_b", after="gemm_a")
    edges = t["run_edges"]
    assert edges["run_ms"] == pytest.approx(1.6) and edges["lead_ms"] == pytest.approx(0.6)
    assert edges["tail_ms"] == pytest.approx(0.3)
    assert edges["lead_host"][0] == dict(ms=pytest.approx(0.48), name="PjitFunction(step)")
    assert edges["tail_host"] == [dict(ms=pytest.approx(0.24), name="Buffer::Await")]  # the run mark is not listed
    md = profile_summary.timeline_markdown("124M", {"gpt2jax": t})
    assert "| run start to first kernel, whole run | 0.60 |" in md and "`PjitFunction(step)`" in md


def test_timeline_without_a_run_mark_or_kernels(tmp_path):
    t = profile_summary.device_timeline(_trace(tmp_path, [(0, 10, "k")], []), steps=1)
    assert t["run_edges"] is None and "marked run" not in profile_summary.timeline_markdown("x", {"a": t})
    assert "error" in profile_summary._timeline([], 1, "nothing")
