"""Helpers shared by the benchmarks: launching ranks, statistics, tables, machine facts.

Nothing here imports mpi4py, so the drivers (plain ``python``) never initialise MPI
themselves; only the ranks they launch do.
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One thread per rank for every threaded library a rank may load. Set in the launched
# ranks' environment, so it is in place before numpy, numba or torch is imported.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


def threads_env(n: int) -> dict:
    """``ONE_THREAD`` with ``n`` threads instead: for ranks given ``--threads n``. Numba
    cannot go above the threads it started with (NUMBA_NUM_THREADS), nor BLAS reliably."""
    return {var: str(n) for var in ONE_THREAD if var != "PYTHONUNBUFFERED"}


def mpiexec() -> str:
    """The mpiexec that belongs to this Python's mpi4py (the venv's), else PATH's."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("no mpiexec found next to this python or on PATH (pip install mpich)")
    return found


def worker_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(ONE_THREAD)
    env.update(extra or {})
    return env


def run_ranks(n: int, args, *, timeout: float, launcher: str = "",
              env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n N python ARGS`` with one thread per rank; raises on failure.

    ``launcher`` replaces ``mpiexec -n N``: a command line with ``{n}`` for the rank
    count, such as ``srun --mpi=pmi2 -n {n}`` inside a Slurm allocation. ``env`` adds
    variables to the ranks' environment.
    """
    prefix = ([part.format(n=n) for part in shlex.split(launcher)] if launcher
              else [mpiexec(), "-n", str(n)])
    cmd = [*prefix, sys.executable, *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=worker_env(env), cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {result.returncode}:\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


def last_json_line(text: str) -> str:
    """The last line of ``text`` that looks like a JSON object (rank 0's report)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return line
    raise RuntimeError(f"no JSON report in the worker's output:\n{text}")


def free_port() -> int:
    """A TCP port that is free now on this host (for torch's rendezvous)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def median(values) -> float:
    return float(statistics.median(values))


def interleaved(kinds, repeats: int, run, label: str, headline) -> dict:
    """``run(kind)`` ``repeats`` times per kind, in the order A B C A B C ... so that the
    machine's noise falls on every kind alike; one progress line per run.

    Returns {kind: [result of each repeat]}.
    """
    runs = {kind: [] for kind in kinds}
    for rep in range(repeats):
        for kind in kinds:
            t0 = time.perf_counter()
            runs[kind].append(run(kind))
            print(f"  {label} repeat {rep + 1}/{repeats} {kind:8s} "
                  f"{headline(kind, runs[kind][-1])}  ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    return runs


def write_json(path, results: dict):
    """Write ``results`` to ``path`` when one was asked for (--json)."""
    if path:
        import json

        Path(path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {path}")


def training_summary(out) -> dict:
    """What a worker reports of one mpi_dml run, from its metrics.jsonl (rank 0).

    The first epoch is left out of the medians: it pays for compilation and caches.
    Shares are of the epoch wall time, each the max over ranks (the Engine's timers).
    """
    import json

    records = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    timed = records[1:]
    epoch_s = median([r["epoch_s"] for r in timed])
    return {
        "samples_per_s": median([r["samples_per_s"] for r in timed]),
        "epochs_samples_per_s": [r["samples_per_s"] for r in records],
        "compute_share": median([r["compute_s"] for r in timed]) / epoch_s,
        "comm_share": median([r["comm_s"] for r in timed]) / epoch_s,
        "data_share": median([r["data_s"] for r in timed]) / epoch_s,
        "train_loss": records[-1]["train_loss"],
    }


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine(libraries=("mpi4py", "numba", "torch")) -> dict:
    """Where a figure was measured: CPU model, cores, load, Python and library versions."""
    import numpy

    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "numpy": numpy.__version__}
    for name in libraries:
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        from importlib.metadata import version
        info["mpich_wheel"] = version("mpich")
    except Exception:  # not installed from PyPI: a site MPI
        pass
    return info
