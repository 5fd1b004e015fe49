"""Fake `sbatch` and `srun` for tests/test_slurm_templates.py: they start a job's tasks as local processes with the
variables SLURM gives them, so the scripts in scripts/slurm/ run as written on one machine.

    fake_slurm.py sbatch [options] script [args]   run the batch script (its #SBATCH lines, then the command line's
                                                   options over them) on "node 0" and wait for it, as `sbatch --wait`
    fake_slurm.py srun [options] command [args]    inside a job: start the step's tasks, wait, exit with the worst code
    fake_slurm.py python [python args]             a python that reports, at exit, what JAX bound (see below)

Simulated nodes are named 127.0.0.1, 127.0.0.2, ...: JAX takes the coordinator's host from the first name of
SLURM_STEP_NODELIST, so it is the loopback interface. What these shims reproduce, because the templates depend on it:
- sbatch exports the submitter's environment, sets SLURM_JOB_ID, the job's node list and sizes, SLURM_GPUS_ON_NODE
  and CUDA_VISIBLE_DEVICES=0,...,G-1 (the node's GPUs), and writes the script's output to --output (%j, %x).
- srun starts ntasks processes, block-distributed over the nodes (task t on node t // tasks-per-node), each with
  SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURMD_NODENAME, SLURM_STEP_NODELIST, SLURM_NTASKS, ...;
  --export is split at commas as SLURM does (so `--export=ALL,X=0,1` sets X=0); --gpus-per-task / --gpu-bind
  (or the job's --gpus-per-task) narrow each task's CUDA_VISIBLE_DEVICES to its own GPUs.
- The "python" shim has no GPUs to give, so it plays the CUDA runtime: after jax.distributed.initialize has chosen
  the local devices (jax_cuda_visible_devices: SLURM_LOCALID by default, or JAX_LOCAL_DEVICE_IDS), it maps those
  ordinals through CUDA_VISIBLE_DEVICES to the node's GPU ids, fails as CUDA would on an ordinal the process cannot
  see, and gives the process one CPU device per GPU it got. At exit it prints one line
  `SLURM_PROBE {"node": ..., "gpus": [...], "process_index": ..., "process_count": ..., "devices": ..., ...}`.
FAKE_SLURM_TIMEOUT (seconds, default 120) bounds every srun step; FAKE_SLURM_JOB_ID picks the job id.
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

# option name -> takes a value (long names; the short forms the templates might use are mapped below)
OPTIONS = {"nodes": True, "ntasks": True, "ntasks-per-node": True, "gpus-per-node": True, "gpus-per-task": True,
           "gpu-bind": True, "gpus": True, "cpus-per-task": True, "time": True, "job-name": True, "output": True,
           "error": True, "export": True, "partition": True, "account": True, "signal": True, "mem": True,
           "array": True, "cpu-bind": True, "mpi": True, "kill-on-bad-exit": None, "requeue": False,
           "label": False, "wait": False, "exclusive": False, "unbuffered": False}
SHORT = {"-N": "nodes", "-n": "ntasks", "-J": "job-name", "-o": "output", "-e": "error", "-t": "time",
         "-c": "cpus-per-task", "-p": "partition", "-A": "account", "-G": "gpus", "-K": "kill-on-bad-exit",
         "-l": "label", "-a": "array"}


def parse_options(args: list[str]) -> tuple[dict, list[str]]:
    """SLURM-style options up to the first non-option argument; returns (options, the rest)."""
    opts, i = {}, 0
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        name, value = (a[2:].split("=", 1) + [None])[:2] if a.startswith("--") else (SHORT.get(a[:2], a), None)
        if not a.startswith("--") and len(a) > 2:
            value = a[2:]
        if name not in OPTIONS:
            sys.exit(f"fake slurm: unknown option {a}")
        if value is None and OPTIONS[name] is True:
            i += 1
            value = args[i]
        opts[name] = True if value is None else value
        i += 1
    return opts, args[i:]


def node_names(n: int) -> list[str]:
    return [f"127.0.0.{k + 1}" for k in range(n)]


def gpus_of(value: str) -> int:
    return int(str(value).split(":")[-1])  # "4" or "h100:4"


def sbatch(args: list[str]) -> int:
    cli, rest = parse_options(args)
    if not rest:
        sys.exit("fake sbatch: no batch script")
    script, script_args = rest[0], rest[1:]
    directives = []
    for line in open(script).read().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            directives += line.split()[1:]
        elif line.strip() and not line.startswith("#"):
            break  # SLURM reads #SBATCH lines only before the first command
    opts, _ = parse_options(directives)
    opts.update(cli)  # the command line wins over the script
    if "array" in opts:
        sys.exit("fake sbatch: job arrays are not simulated")
    nodes = int(opts.get("nodes", 1))
    per_node = int(opts.get("ntasks-per-node", 0)) or -(-int(opts.get("ntasks", 1)) // nodes)
    gpus = gpus_of(opts["gpus-per-node"]) if "gpus-per-node" in opts else \
        gpus_of(opts.get("gpus-per-task", 0)) * per_node
    job_id = os.environ.get("FAKE_SLURM_JOB_ID") or str(random.randrange(100_000, 10_000_000))
    name = opts.get("job-name", os.path.basename(script))
    hosts = node_names(nodes)
    env = dict(os.environ)
    env.update({"SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": name,
                "SLURM_SUBMIT_DIR": os.getcwd(), "SLURM_JOB_NODELIST": ",".join(hosts), "SLURM_NODELIST": ",".join(hosts),
                "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes), "SLURM_NTASKS": str(nodes * per_node),
                "SLURM_NPROCS": str(nodes * per_node), "SLURM_NTASKS_PER_NODE": str(per_node),
                "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_NODEID": "0", "SLURMD_NODENAME": hosts[0],
                "SLURM_CPUS_PER_TASK": str(opts.get("cpus-per-task", 1))})
    if gpus:
        env.update({"SLURM_GPUS_ON_NODE": str(gpus), "SLURM_GPUS_PER_NODE": str(gpus),
                    "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))})
    if "gpus-per-task" in opts:
        env["SLURM_GPUS_PER_TASK"] = str(gpus_of(opts["gpus-per-task"]))
    output = opts.get("output", "slurm-%j.out").replace("%j", job_id).replace("%x", name)
    print(f"Submitted batch job {job_id}", flush=True)
    with open(output, "w") as out:
        return subprocess.run(["bash", script, *script_args], env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def split_export(value: str, env: dict) -> dict:
    """srun --export as SLURM reads it: comma-separated ALL | NONE | NAME | NAME=value (a value cannot hold a comma)."""
    items = value.split(",")
    out = dict(env) if "ALL" in items else {k: v for k, v in env.items() if k.startswith("SLURM")}
    for item in items:
        if item in ("ALL", "NONE"):
            continue
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
        elif item in env:
            out[item] = env[item]
    return out


def srun(args: list[str]) -> int:
    if "SLURM_JOB_ID" not in os.environ:
        sys.exit("fake srun: not inside a job (no SLURM_JOB_ID)")
    opts, command = parse_options(args)
    job_nodes = int(os.environ["SLURM_NNODES"])
    nodes = int(opts.get("nodes", job_nodes))
    per_node = int(opts.get("ntasks-per-node", 0)) or (
        -(-int(opts["ntasks"]) // nodes) if "ntasks" in opts else int(os.environ["SLURM_NTASKS_PER_NODE"]))
    ntasks = int(opts.get("ntasks", nodes * per_node))
    node_gpus = gpus_of(os.environ.get("SLURM_GPUS_ON_NODE", 0))
    per_task = gpus_of(opts.get("gpus-per-task", os.environ.get("SLURM_GPUS_PER_TASK", 0)))
    if "gpu-bind" in opts and opts["gpu-bind"] != "none" and not per_task:
        per_task = max(node_gpus // per_node, 1)
    hosts = node_names(job_nodes)[:nodes]
    base = split_export(opts["export"], dict(os.environ)) if "export" in opts else dict(os.environ)
    procs = []
    for t in range(ntasks):
        node, local = divmod(t, per_node)
        env = dict(base)
        env.update({"SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NODELIST": ",".join(hosts),
                    "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_NUM_TASKS": str(ntasks),
                    "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_NTASKS": str(ntasks),
                    "SLURM_NPROCS": str(ntasks), "SLURM_PROCID": str(t), "SLURM_LOCALID": str(local),
                    "SLURM_NODEID": str(node), "SLURMD_NODENAME": hosts[node]})
        if per_task:  # per-task GPU binding: this task's GPUs only
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(local * per_task + g) for g in range(per_task))
        elif node_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(node_gpus)))
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))

    def forward(t, p):
        for line in p.stdout:
            sys.stdout.write(f"{t}: {line}" if opts.get("label") else line)
            sys.stdout.flush()

    threads = [threading.Thread(target=forward, args=(t, p), daemon=True) for t, p in enumerate(procs)]
    for th in threads:
        th.start()
    kill_on_bad_exit = str(opts.get("kill-on-bad-exit", "0")) in ("1", "True")
    timeout = float(os.environ.get("FAKE_SLURM_TIMEOUT", 120))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if time.monotonic() > deadline or (kill_on_bad_exit and failed):
            why = f"step timed out after {timeout:.0f} s" if not failed else "a task failed (--kill-on-bad-exit)"
            print(f"fake srun: {why}: killing the step", flush=True)
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=5)
    codes = [128 - c if c < 0 else c for c in (p.returncode for p in procs)]  # killed by signal N: 128 + N
    return next((c for c in codes if c), 0)


def python(args: list[str]) -> int:
    """`python -m module args` whose jax.distributed.initialize maps the chosen GPUs onto CPU devices (module doc)."""
    import runpy

    import jax

    report = {"node": os.environ.get("SLURMD_NODENAME"), "procid": os.environ.get("SLURM_PROCID"),
              "localid": os.environ.get("SLURM_LOCALID")}
    real_initialize = jax.distributed.initialize

    def initialize(*a, **k):
        real_initialize(*a, **k)
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        chosen = jax.config.values["jax_cuda_visible_devices"]  # what initialize set from local_device_ids
        ordinals = range(len(visible)) if chosen == "all" else [int(x) for x in chosen.split(",")]
        for o in ordinals:
            if o >= len(visible):
                raise RuntimeError(f"CUDA_ERROR_INVALID_DEVICE (simulated): JAX asked for GPU ordinal {o} "
                                   f"(jax_cuda_visible_devices={chosen}) but CUDA_VISIBLE_DEVICES={','.join(visible)}")
        report["gpus"] = [int(visible[o]) for o in ordinals]
        jax.config.update("jax_num_cpu_devices", len(report["gpus"]))

    jax.distributed.initialize = initialize
    if args[:1] != ["-m"] or len(args) < 2:
        sys.exit("fake python: only `python -m module ...` is simulated")
    sys.argv = [args[1], *args[2:]]
    code = 0
    try:
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    if "gpus" in report:
        report.update(process_index=jax.process_index(), process_count=jax.process_count(),
                      devices=len(jax.devices()), local_devices=len(jax.local_devices()))
    print("SLURM_PROBE " + json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    sys.exit({"sbatch": sbatch, "srun": srun, "python": python}[sys.argv[1]](sys.argv[2:]))
