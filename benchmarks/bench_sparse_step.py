"""Sparse rows: a step with the dense gradient exchange and update against the compact
ones, and the engine's step on dense rows (to check it did not slow down).

    $ mpiexec -n 2 python benchmarks/bench_sparse.py                 # 2**20 features
    $ mpiexec -n 2 python benchmarks/bench_sparse.py --features 24 --steps 100
    $ mpiexec -n 2 python benchmarks/bench_sparse.py --parts         # exchange, update alone
    $ mpiexec -n 2 python benchmarks/bench_sparse.py --dense-engine  # dense rows, Engine

Sparse: every rank makes the same synthetic CSR rows (``--nnz`` nonzeros a row over
2**``--features`` features, long-tailed as text is) and a logistic model; each global
batch of ``--batch`` rows is split over the ranks. One step is, as the engine runs it:

* dense:   loss_grad into a gradient over every feature, Allreduce of the whole buffer,
           the fused update over every parameter;
* compact: this rank's touched features, their union over the ranks (Allgather), the
           compact gradient, its Allreduce, the update of what it names.

Validate first: after ``--steps`` steps both give the same parameters (1e-9, float64
state is not needed: float32 within 1e-5). Then each optimizer is timed ``--repeats``
times, interleaved; the median milliseconds per step are printed, slowest rank's.

Dense (``--dense-engine``): the Engine on dense rows (logistic, 784 features, batch 256,
SGD), milliseconds per step from its epoch times after the first epoch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse

from mpi_dml.algorithms import Batch, make_algorithm
from mpi_dml.config import TrainConfig
from mpi_dml.devices import CpuDevice
from mpi_dml.models import build_model
from mpi_dml.parallel.comm import Comm, install_abort_hook
from mpi_dml.parallel.threads import apply_threads

OPTIMIZERS = {"sgd": {}, "sgd+l2+l1": {"weight_decay": 1e-4, "l1": 1e-5},
              "momentum": {"momentum": 0.9}, "adam": {"optimizer": "adam", "lr": 1e-3}}


def rows(n, n_features, nnz, seed=0):
    rng = np.random.default_rng(seed)
    cols = np.minimum(rng.zipf(1.2, size=(n, nnz)) - 1, n_features - 1)
    cols = (cols * 2654435761 % n_features).astype(np.int32)  # spread the common ones
    cols.sort(axis=1)
    keep = np.concatenate([np.ones((n, 1), bool), cols[:, 1:] != cols[:, :-1]], axis=1)
    counts = keep.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    x = scipy.sparse.csr_matrix((rng.normal(size=int(counts.sum())).astype(np.float32),
                                 cols[keep], indptr), shape=(n, n_features))
    return x, (rng.random(n) < 0.5).astype(np.float32)


def step(algo, comm, buffer, xb, yb, request, compact):
    from mpi_dml.kernels.sparse import sorted_unique  # here: --dense-engine runs on older trees

    if compact:
        keys = algo.touched(request, (xb, yb))
        union = keys if comm.size == 1 else sorted_unique(np.concatenate(
            comm.allgather(keys, what="touched")))
        n = algo.round_size(request, union)
    else:
        n = algo.buffer_size()
    reduced = buffer[:n + 2]
    algo.contribute(request, (xb, yb), reduced[:n])
    reduced[n:] = 0
    comm.allreduce_(reduced)
    algo.apply(request, reduced[:n], request.batch_size)


def run(comm, args, name, settings, compact, steps):
    cfg = TrainConfig(**{"model": "logistic", "dtype": "float32", "batch_size": args.batch,
                         "lr": 0.1, "epochs": 1, **settings})
    model = build_model("logistic", "classification", 1 << args.features, 2)
    dev = CpuDevice(comm, np.float32)
    algo = make_algorithm(cfg, model, dev, np.zeros(model.size, np.float32),
                          n_train=args.batch * steps)
    buffer = np.zeros(model.size + 2, np.float32)
    x, y = rows(args.batch * steps, 1 << args.features, args.nnz)
    share = args.batch // comm.size
    lo = comm.rank * share
    batches = [(x[s * args.batch + lo:s * args.batch + lo + share],
                y[s * args.batch + lo:s * args.batch + lo + share]) for s in range(steps)]
    comm.barrier()
    t0 = time.perf_counter()
    for s, (xb, yb) in enumerate(batches):
        step(algo, comm, buffer, xb, yb, Batch(0, s, steps, args.batch, 0), compact)
    seconds = comm.allreduce_(np.array([time.perf_counter() - t0]), op="max")[0]
    return seconds / steps * 1e3, algo.arrays()["params"].copy()


def parts(comm, args):
    """The exchange and the update alone, dense against compact, on one step's rows."""
    from mpi_dml.algorithms.sparse_update import SparseUpdate
    from mpi_dml.kernels import get, sparse

    n_features = 1 << args.features
    x, _ = rows(args.batch, n_features, args.nnz)
    share = args.batch // comm.size
    mine = x[comm.rank * share:(comm.rank + 1) * share]
    keys = sparse.touched(mine).astype(np.int64)
    union = sparse.sorted_unique(np.concatenate(comm.allgather(keys)))
    cfg = TrainConfig(model="logistic", dtype="float32", weight_decay=1e-4, l1=1e-5)
    model = build_model("logistic", "classification", n_features, 2)
    params = np.zeros(model.size, np.float32)
    algo = make_algorithm(cfg, model, CpuDevice(comm, np.float32), params, n_train=1)
    k, opt = get("cpu"), algo.opt
    full, compact = np.zeros(model.size + 2, np.float32), np.zeros(len(union) + 3, np.float32)
    update = SparseUpdate(model, opt, algo.params, cfg.solver, np)

    def timed(fn, n=50):
        fn()
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return comm.allreduce_(np.array([(time.perf_counter() - t0) / n * 1e3]), op="max")[0]
    figures = {
        "dense Allreduce (all features)": timed(lambda: comm.allreduce_(full)),
        "dense SGD update (all features)": timed(lambda: k.sgd_update(
            algo.params, full[:-2], opt.state["velocity"], 0.1, 0.0, False, 1e-4, 1e-5,
            opt.mask, 0.5)),
        "union of touched features (Allgather + sort)": timed(lambda: sparse.sorted_unique(
            np.concatenate(comm.allgather(keys)))),
        "compact Allreduce (touched rows)": timed(lambda: comm.allreduce_(compact)),
        "lazy SGD update (touched rows)": timed(lambda: (update.catch_up_rows(union), update.step(
            compact[:-2], union, 0.1, 0.5))),
    }
    if comm.is_root:
        print(f"{comm.size} ranks, 2**{args.features} features, {len(union)} touched by a batch "
              f"of {args.batch} x {args.nnz}: ms (slowest rank, mean of 50)")
        for name, ms in figures.items():
            print(f"  {name:<46}{ms:>8.3f}")


def dense_engine(comm, args):
    from mpi_dml.data.labels import Split
    from mpi_dml.data.training import TrainingData
    from mpi_dml.engine import Engine

    n = 256 * args.steps
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 784)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float64)
    shards = 256
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    s0, s1 = comm.rank * shards // comm.size, (comm.rank + 1) * shards // comm.size
    data = TrainingData(Split(x[bounds[s0]:bounds[s1]].copy(), y[bounds[s0]:bounds[s1]]), None,
                        [str(i) for i in range(784)], 2, np.diff(bounds), np.arange(s0, s1), n, 0)
    cfg = TrainConfig(model="logistic", dtype="float32", batch_size=256, lr=0.01,
                      epochs=args.repeats + 1, shards=shards, progress="none",
                      label_column="y", check_every=0)
    engine = Engine(cfg, comm=comm, data=data, process=False)
    engine.fit()
    per_step = [h["epoch_s"] / args.steps * 1e3 for h in engine.history[1:]]
    if comm.is_root:
        print(f"dense rows, Engine: {statistics.median(per_step):.3f} ms/step (median of "
              f"{len(per_step)} epochs, fastest {min(per_step):.3f}; {comm.size} ranks)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=20, help="log2 of the feature count")
    ap.add_argument("--batch", type=int, default=256, help="global batch rows")
    ap.add_argument("--nnz", type=int, default=40, help="nonzeros a row")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-engine", action="store_true")
    ap.add_argument("--parts", action="store_true", help="time the exchange and update alone")
    args = ap.parse_args()
    install_abort_hook()
    comm = Comm.world()
    apply_threads(1)
    if args.dense_engine:
        return dense_engine(comm, args)
    if args.parts:
        return parts(comm, args)
    for name, settings in OPTIMIZERS.items():  # validate: the same model either way
        _, a = run(comm, args, name, settings, False, 8)
        _, b = run(comm, args, name, settings, True, 8)
        gap = float(np.max(np.abs(a - b)))
        if gap > 1e-5:
            raise SystemExit(f"bench_sparse: {name}: compact and dense steps differ by {gap}")
    if comm.is_root:
        print("validation: PASS (compact and dense steps give the same parameters)")
    times = {(name, mode): [] for name in OPTIMIZERS for mode in ("dense", "compact")}
    for _ in range(args.repeats):
        for name, settings in OPTIMIZERS.items():
            for mode in ("dense", "compact"):
                ms, _ = run(comm, args, name, settings, mode == "compact", args.steps)
                times[name, mode].append(ms)
    if comm.is_root:
        print(f"{comm.size} ranks, 2**{args.features} features, batch {args.batch} x "
              f"{args.nnz} nonzeros, float32, ms/step (median of {args.repeats})")
        print(f"{'optimizer':<12}{'dense':>10}{'compact':>10}{'speed-up':>10}"
              f"{'fastest: dense':>16}{'compact':>10}")
        for name in OPTIMIZERS:
            d, c = (statistics.median(times[name, m]) for m in ("dense", "compact"))
            fd, fc = (min(times[name, m]) for m in ("dense", "compact"))
            print(f"{name:<12}{d:>10.3f}{c:>10.3f}{d / c:>9.1f}x{fd:>16.3f}{fc:>10.3f}")


if __name__ == "__main__":
    main()
