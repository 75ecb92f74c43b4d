"""The cpu kernels on one thread against several: where threads start to pay.

    $ python benchmarks/bench_kernels.py                       # 2 threads, 2^10..2^21 elements
    $ NUMBA_NUM_THREADS=8 python benchmarks/bench_kernels.py --threads 2,4,8 --json k.json

For every kernel in ``kernels/cpu.py`` and every size (elements: rows x columns, or
parameters for the optimisers), in this one process:

1. Validate: the threaded path at each thread count gives the serial path's bits, and
   both agree with ``kernels/reference.py`` within float32 tolerance; nothing is timed
   otherwise.
2. Time the serial path (``MIN_PARALLEL_WORK`` set out of reach) and the threaded path
   (set to 0) at each thread count, interleaved three times. As in training, each call
   follows a GEMM on the rank's BLAS threads (as many as the most threads timed), and
   the median of ``--repeats`` calls counts: BLAS's idle threads (OpenBLAS's wait
   spinning for a while) are then on the cores the kernel's threads need.
   ``--isolated`` times the kernels alone, calls in a row, fastest of the timings.
3. Print microseconds per call, the speed-up, and for each kernel the smallest size from
   which the threaded path wins at every larger size at the first thread count: what
   ``MIN_PARALLEL_WORK`` should be on this machine.

Shapes: layer kernels 128 columns (ReLU), softmax 10 classes, the binary losses and the
squared loss 1 column, float32 as training uses by default.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# Columns of each kernel's (rows, columns) input; the optimisers take flat arrays.
COLUMNS = {"bias_act_forward": 128, "act_backward": 128, "softmax_xent": 10,
           "logistic_loss_grad": 1, "hinge_loss_grad": 1, "squared_hinge_loss_grad": 1,
           "squared_loss_grad": 1}
NAMES = ("bias_act_forward", "act_backward", "softmax_xent", "logistic_loss_grad",
         "hinge_loss_grad", "squared_hinge_loss_grad", "squared_loss_grad", "sgd_update",
         "adam_update")


def make_call(name: str, work: int, module, seed: int = 0):
    """A function that runs kernel ``name`` of ``module`` once on fixed inputs of about
    ``work`` elements, and one that returns everything that call writes (copies)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if name in ("sgd_update", "adam_update"):
        p, g = rng.standard_normal(work, dtype=f32), rng.standard_normal(work, dtype=f32)
        m, v = np.zeros(work, f32), np.zeros(work, f32)
        mask = (rng.random(work) < 0.9).astype(np.uint8)
        if name == "sgd_update":
            def call():
                module.sgd_update(p, g, m, 0.01, 0.9, True, 1e-4, 1e-5, mask, 0.5)
        else:
            def call():
                module.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 3, 1e-2, True, 1e-5,
                                   mask, 0.5)
        return call, lambda: (p.copy(), m.copy(), v.copy())
    k = COLUMNS[name]
    n = max(1, work // k)
    z = rng.standard_normal((n, k), dtype=f32)
    bias = np.empty(k, f32)
    if name == "bias_act_forward":
        b = rng.standard_normal(k, dtype=f32)
        return (lambda: module.bias_act_forward(z, b, "relu")), lambda: (z.copy(),)
    if name == "act_backward":
        out = np.maximum(rng.standard_normal((n, k), dtype=f32), 0)
        return (lambda: module.act_backward(z, out, "relu", bias)), lambda: (z.copy(), bias.copy())
    if name == "softmax_xent":
        y = rng.integers(0, k, n)
    elif name == "squared_loss_grad":
        y = rng.standard_normal((n, k), dtype=f32)
    else:
        y = rng.integers(0, 2, n).astype(f32)
    result = []

    def call():
        result[:] = [getattr(module, name)(z, y, bias)]
    return call, lambda: (z.copy(), bias.copy(), np.array(result[0], dtype=np.float64))


def validate(sizes, thread_counts) -> list[str]:
    """Threaded bits equal serial bits at every thread count; both near the reference."""
    import numba

    from mpi_dml import kernels

    cpu, ref = kernels.get("cpu"), kernels.get("reference")
    failures = []
    for name in NAMES:
        for work in sizes:
            call, written = make_call(name, work, ref)
            call()
            expected = written()
            outputs = {}
            for threads, limit in [(1, None)] + [(t, 0) for t in thread_counts]:
                with cpu.threads_from(limit):
                    numba.set_num_threads(threads)
                    call, written = make_call(name, work, cpu)
                    call()
                    outputs[(threads, limit)] = written()
            serial = outputs[(1, None)]
            for key, got in outputs.items():
                if not all(np.array_equal(a, b) for a, b in zip(got, serial)):
                    failures.append(f"{name} at {work}: {key[0]} threads differ from serial")
            for a, b in zip(serial, expected):
                if not np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1, work) ** 0.5):
                    failures.append(f"{name} at {work}: differs from the reference")
    numba.set_num_threads(max(thread_counts))
    return failures


def time_call(call, repeats: int, gemm=None) -> float:
    """Microseconds per call of ``call``.

    With ``gemm`` (training's pattern): the median of ``repeats`` calls, each timed alone
    right after a GEMM on the rank's BLAS threads, whose idle threads are then still
    waiting for work on the cores the kernel's threads need. Without (``--isolated``):
    the fastest of ``repeats`` timings of about 1 ms of calls in a row, the kernel's
    cost with the cores to itself.
    """
    call()
    if gemm is not None:
        timings = []
        for _ in range(repeats):
            gemm()
            t0 = time.perf_counter()
            call()
            timings.append(time.perf_counter() - t0)
        return 1e6 * common.median(timings)
    t0 = time.perf_counter()
    call()
    per = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(10000, int(1e-3 / per)))
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            call()
        timings.append((time.perf_counter() - t0) / inner)
    return 1e6 * min(timings)


def training_gemm():
    """The first layer's forward GEMM of bench_train's MLP, 256 rows: what runs between
    two kernel calls in a training step."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 784), dtype=np.float32)
    w = rng.standard_normal((784, 512), dtype=np.float32)
    out = np.empty((256, 512), dtype=np.float32)
    return lambda: np.matmul(x, w, out=out)


def measure(sizes, thread_counts, repeats: int, isolated: bool) -> dict:
    import numba

    from mpi_dml import kernels

    cpu = kernels.get("cpu")
    kernels.warm_up("cpu", np.float32)
    gemm = None if isolated else training_gemm()
    results = {}
    for name in NAMES:
        rows = results[name] = []
        for work in sizes:
            call, _ = make_call(name, work, cpu)
            row = {"work": work, "serial_us": [], **{f"threads_{t}_us": [] for t in thread_counts}}
            for _ in range(3):  # interleaved, so load changes hit every variant alike
                with cpu.threads_from(None):
                    numba.set_num_threads(1)
                    row["serial_us"].append(time_call(call, repeats, gemm))
                with cpu.threads_from(0):
                    for t in thread_counts:
                        numba.set_num_threads(t)
                        row[f"threads_{t}_us"].append(time_call(call, repeats, gemm))
            for key in list(row):
                if key != "work":
                    row[key] = min(row[key])
            rows.append(row)
        print(f"  {name} timed", flush=True)
    return results


def crossover(rows, threads: int):
    """The smallest size from which the threaded path is faster at every larger size."""
    best = None
    for row in reversed(rows):
        if row[f"threads_{threads}_us"] < row["serial_us"]:
            best = row["work"]
        else:
            break
    return best


def report(results, thread_counts) -> str:
    from mpi_dml.kernels import cpu

    lines = []
    first = thread_counts[0]
    for name, rows in results.items():
        table = [[f"{r['work']:,}", f"{r['serial_us']:.2f}"]
                 + [f"{r[f'threads_{t}_us']:.2f} ({r['serial_us'] / r[f'threads_{t}_us']:.2f}x)"
                    for t in thread_counts] for r in rows]
        lines.append(f"\n{name} (us per call; speed-up over serial):")
        lines.append(common.table(["elements", "serial"] + [f"{t} threads" for t in thread_counts],
                                  table))
        at = crossover(rows, first)
        lines.append(f"  threads pay from {at:,} elements at {first} threads"
                     if at else f"  threads never pay at {first} threads in this range")
        lines.append(f"  MIN_PARALLEL_WORK[{name!r}] is {cpu.MIN_PARALLEL_WORK[name]:,}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="2", help="thread counts to time (default 2)")
    ap.add_argument("--min-log2", type=int, default=10, help="smallest size, log2 (default 10)")
    ap.add_argument("--max-log2", type=int, default=21, help="largest size, log2 (default 21)")
    ap.add_argument("--repeats", type=int, default=21,
                    help="timed calls (--isolated: timings) per variant and round (default 21)")
    ap.add_argument("--isolated", action="store_true",
                    help="time calls in a row, no GEMM between them: the kernels alone")
    ap.add_argument("--json", default="", help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    import numba

    from mpi_dml.parallel.threads import apply_threads

    thread_counts = [int(t) for t in args.threads.split(",")]
    if max(thread_counts) > numba.config.NUMBA_NUM_THREADS:
        sys.exit(f"--threads {args.threads}: Numba started {numba.config.NUMBA_NUM_THREADS} "
                 f"threads; set NUMBA_NUM_THREADS={max(thread_counts)} before running.")
    apply_threads(max(thread_counts))  # OpenMP's threads then wait as in training
    sizes = [1 << e for e in range(args.min_log2, args.max_log2 + 1)]
    info = common.machine(("numba",))
    print(f"bench_kernels: {info}")
    failures = validate([1000, 70000], thread_counts)
    if failures:
        print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
        return 1
    print(f"validation: PASS (threading layer {numba.threading_layer()})")
    results = measure(sizes, thread_counts, args.repeats, args.isolated)
    print(report(results, thread_counts))
    print(f"\n1-minute load average: {info['load_avg_1min']} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    common.write_json(args.json, {"machine": info, "threading_layer": numba.threading_layer(),
                                  "threads": thread_counts, "kernels": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
