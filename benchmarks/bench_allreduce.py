"""Gradient exchange: the engine's ``Comm.allreduce_`` against a raw mpi4py Allreduce.

    $ mpiexec -n 2 python benchmarks/bench_allreduce.py
    $ mpiexec -n 4 python benchmarks/bench_allreduce.py --repeats 21 --json allreduce.json
    $ srun --mpi=pmi2 -N 2 --ntasks-per-node 1 python benchmarks/bench_allreduce.py --max-mb 256

Both sides reduce the same float32 buffer in place with MPI.SUM:

* engine: ``Comm.world().allreduce_(buf)``, the call the engine makes every step;
* raw:    ``MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)``.

First it validates (every rank fills rank + 1; both must give size (size + 1) / 2
everywhere), then, for buffers from 4 KiB to 64 MiB in powers of 4, it times a batch of
calls after a barrier (the time of a batch is the slowest rank's; a batch is ~32 MiB of
data, so 2000 calls of 4 KiB and one call of 64 MiB), alternating raw and engine
batches (raw, engine, engine, raw, ...) ``--repeats`` times. Reported per size: median
time per call, algorithm bandwidth (bytes / time), bus bandwidth (algorithm bandwidth
x 2 (n - 1) / n, the bytes each rank's link carries in a ring or reduce-scatter +
allgather algorithm) and raw_time / engine_time, the median over the adjacent
raw/engine pairs (so drifting background load cancels). The target is a ratio of at
least 0.95 at every size (PASS/MISS; the exit status is 0 either way, 1 only when
validation fails).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mpi_dml.parallel.comm import Comm, install_abort_hook  # noqa: E402

TARGET = 0.95
KIB = 1024


def sizes(min_kb: int, max_mb: int, factor: int) -> list[int]:
    out, n = [], min_kb * KIB
    while n <= max_mb * KIB * KIB:
        out.append(n)
        n *= factor
    return out


def iterations(nbytes: int, budget_bytes: int) -> int:
    """Calls per timed batch: enough to dwarf timer resolution for small buffers, few
    for large ones so the whole run stays short."""
    return int(min(2000, max(1, budget_bytes // nbytes)))


def validate(world, engine, nbytes) -> list[str]:
    n = world.Get_size()
    expected = n * (n + 1) / 2
    failures = []
    for name, op in (("raw", _raw(world)), ("engine", engine.allreduce_)):
        buf = np.full(nbytes // 4, world.Get_rank() + 1, dtype=np.float32)
        op(buf)
        ok = bool(np.all(buf == expected))
        if not all(world.allgather(ok)):
            failures.append(f"{name} Allreduce of {nbytes} bytes did not give {expected:g} everywhere")
    return failures


def _raw(world):
    def op(buf):
        world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf
    return op


def timed_batch(world, op, buf, iters) -> float:
    """Seconds per call of the slowest rank over ``iters`` back-to-back calls."""
    world.Barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        op(buf)
    elapsed = time.perf_counter() - t0
    return world.allreduce(elapsed, op=MPI.MAX) / iters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--min-kb", type=int, default=4, help="smallest buffer in KiB (default 4)")
    ap.add_argument("--max-mb", type=int, default=64, help="largest buffer in MiB (default 64)")
    ap.add_argument("--factor", type=int, default=4, help="size step (default 4)")
    ap.add_argument("--repeats", type=int, default=31, help="timed batches per side and size")
    ap.add_argument("--budget-mb", type=int, default=32,
                    help="bytes reduced per timed batch, in MiB (sets the call count)")
    ap.add_argument("--json", default="", help="rank 0 writes every figure to this file")
    args = ap.parse_args(argv)

    install_abort_hook()
    world = MPI.COMM_WORLD
    engine = Comm.world()
    root = world.Get_rank() == 0
    n = world.Get_size()
    say = print if root else (lambda *a, **k: None)
    start = time.perf_counter()

    say(f"bench_allreduce: {n} ranks, float32 SUM in place, {args.repeats} interleaved "
        f"repeats, median; {MPI.Get_library_version().splitlines()[0].strip()}")
    if root:
        say(f"  machine: {common.machine(('mpi4py',))}")
    failures = []
    for nbytes in sizes(args.min_kb, args.max_mb, args.factor):
        failures += validate(world, engine, nbytes)
    if failures:
        say("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
        return 1
    say(f"validation: PASS (every rank filled rank+1; both gave {n * (n + 1) // 2} everywhere)")
    if n == 1:
        say("note: on 1 rank Comm.allreduce_ returns without calling MPI; run under "
            "mpiexec -n 2 or more for a meaningful comparison")
    say()

    sides = {"raw": _raw(world), "engine": engine.allreduce_}
    rows, records, all_ok = [], [], True
    for nbytes in sizes(args.min_kb, args.max_mb, args.factor):
        buf = np.zeros(nbytes // 4, dtype=np.float32)  # zeros stay zeros: no overflow, no denormals
        iters = iterations(nbytes, args.budget_mb * KIB * KIB)
        for op in sides.values():  # warm-up: first-touch pages, MPI's internal buffers
            timed_batch(world, op, buf, max(2, iters // 10))
        times = {name: [] for name in sides}
        for rep in range(args.repeats):
            order = ("raw", "engine") if rep % 2 == 0 else ("engine", "raw")
            for name in order:
                times[name].append(timed_batch(world, sides[name], buf, iters))
        raw_t, eng_t = common.median(times["raw"]), common.median(times["engine"])
        ratio = common.median([r / e for r, e in zip(times["raw"], times["engine"])])
        ok = ratio >= TARGET
        all_ok &= ok
        algbw = nbytes / eng_t / 1e9
        busbw = algbw * 2 * (n - 1) / n
        records.append({"bytes": nbytes, "iters": iters, "raw_s": raw_t, "engine_s": eng_t,
                        "ratio": ratio, "engine_algbw_GBps": algbw, "engine_busbw_GBps": busbw,
                        "raw_algbw_GBps": nbytes / raw_t / 1e9,
                        "raw_times": times["raw"], "engine_times": times["engine"]})
        rows.append([_human(nbytes), iters, f"{raw_t * 1e6:.1f}", f"{eng_t * 1e6:.1f}",
                     f"{nbytes / raw_t / 1e9:.2f}", f"{algbw:.2f}", f"{busbw:.2f}",
                     f"{ratio:.3f}", common.verdict(ok)])
        say(f"  {_human(nbytes):>7s} done", flush=True)

    say()
    say(common.table(["size", "calls", "raw us", "engine us", "raw GB/s", "engine GB/s",
                      "engine busbw GB/s", "raw/engine", f">= {TARGET}"], rows))
    ratios = [r["ratio"] for r in records]
    geo = float(np.exp(np.mean(np.log(ratios))))
    say(f"\ntarget: engine >= {TARGET} x raw mpi4py at every size: "
        f"worst {min(ratios):.3f}, geometric mean {geo:.3f}  {common.verdict(all_ok)}")
    say(f"total time {time.perf_counter() - start:.1f} s")
    if root and args.json:
        Path(args.json).write_text(json.dumps({"ranks": n, "machine": common.machine(("mpi4py",)),
                                               "args": vars(args), "sizes": records,
                                               "pass": all_ok}, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


def _human(nbytes: int) -> str:
    if nbytes >= KIB * KIB:
        return f"{nbytes // (KIB * KIB)} MiB"
    return f"{nbytes // KIB} KiB"


if __name__ == "__main__":
    sys.exit(main())
