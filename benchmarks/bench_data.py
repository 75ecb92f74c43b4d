"""Reading training data: mpi_dml's readers against the tools users would otherwise use.

    $ python benchmarks/bench_data.py                        # 500k x 50, 1 and 2 ranks
    $ python benchmarks/bench_data.py --rows 100000 --ranks 1,2,4 --repeats 5 --json out.json
    $ python benchmarks/bench_data.py --formats libsvm       # LIBSVM alone: 250k rows

The driver (plain ``python``, no MPI of its own) does, in order:

1. Write one table of ``--rows`` x ``--cols`` float32 features and an integer label, the
   same values in three files: CSV (``%.6f``, as exporters write), Parquet (float32
   columns, row groups of 64k rows) and HDF5 (a 2-D ``X`` and a 1-D ``label``). And a
   LIBSVM file of ``--svm-rows`` rows over ``--svm-features`` features, about
   ``--svm-nnz`` nonzeros a row (values of four significant digits, a 0/1 label).
2. Validate: each mpi_dml reader, on every rank count, must give each rank exactly its
   rows of the table as pandas, pyarrow and h5py read it (LIBSVM: the same CSR arrays,
   bit for bit, and labels as scikit-learn's ``load_svmlight_file``), or nothing is
   timed.
3. Time, interleaved ``--repeats`` times so machine noise hits every kind alike:
     * ``mpiexec -n P ... --worker mpi_dml``: what ``train`` does before its first step,
       ``load_training`` (open, read this rank's rows into float32, check them, split
       the label off); the time is the slowest rank's;
     * ``--worker pandas``: ``pandas.read_csv`` (C parser) of the whole CSV file, to a
       DataFrame (the array a model needs would cost one more copy);
     * ``--worker pyarrow``: ``pyarrow.parquet.read_table`` of the whole Parquet file;
     * ``--worker h5py``: ``X[:]`` and ``label[:]`` of the whole HDF5 file;
     * ``mpiexec -n P ... --worker libsvm``: ``open_table`` and ``read_csr`` of this
       rank's rows into float32 CSR, as the training path reads LIBSVM; the slowest
       rank's time; against ``--worker sklearn``: ``load_svmlight_file`` (float32) of
       the whole file.
   Every process has one thread (pyarrow's pool too): these are per-rank figures.
4. Report, per format and rank count, per-rank throughput (the bytes of the rank's
   share of the file over its time) over the reference tool's throughput on the whole
   file in one process, and each rank's peak memory above its baseline (RSS after
   imports and compilation) over its rows' bytes in float32 (features) and float64
   (labels); for LIBSVM, over its CSR arrays and labels. Then ``predict`` on the CSV,
   end to end, at each rank count.

Targets (PASS/MISS; the exit status is 0 either way, 1 only if validation or a run
fails): CSV >= 1.0x pandas, Parquet >= 0.8x pyarrow, LIBSVM >= 3.0x scikit-learn per
rank, peak memory <= 1.5x. HDF5 against h5py is reported without a target.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_data_libsvm import (validate_libsvm, worker_libsvm, worker_sklearn,  # noqa: E402
                               write_libsvm)

TARGETS = {"csv": 1.0, "parquet": 0.8, "libsvm": 3.0}
TARGET_MEMORY = 1.5
REFERENCE = {"csv": "pandas", "parquet": "pyarrow", "hdf5": "h5py", "libsvm": "sklearn"}
SUFFIX = {"csv": ".csv", "parquet": ".parquet", "hdf5": ".h5"}
FORMATS = (*SUFFIX, "libsvm")


# --- data -----------------------------------------------------------------------------
def write_data(folder: Path, rows: int, cols: int, seed: int = 0) -> dict:
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((rows, cols)), 6).astype(np.float32)
    y = rng.integers(0, 10, rows)
    names = [f"f{j}" for j in range(cols)]
    paths = {fmt: folder / f"table{suffix}" for fmt, suffix in SUFFIX.items()}
    with open(paths["csv"], "w") as fh:
        fh.write(",".join(names + ["label"]) + "\n")
        for a in range(0, rows, 50_000):
            block = np.column_stack([x[a:a + 50_000].astype(np.float64), y[a:a + 50_000]])
            np.savetxt(fh, block, fmt=["%.6f"] * cols + ["%d"], delimiter=",")
    columns = {name: x[:, j] for j, name in enumerate(names)}
    columns["label"] = y
    pq.write_table(pa.table(columns), paths["parquet"], row_group_size=1 << 16)
    with h5py.File(paths["hdf5"], "w") as f:
        f["X"] = x
        f["X"].attrs["feature_names"] = names
        f["label"] = y
    return {fmt: str(p) for fmt, p in paths.items()}


# --- workers (one process each, or one mpiexec job) -------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker_mpi_dml(args):
    from mpi_dml.config import TrainConfig
    from mpi_dml.data.training import load_training
    from mpi_dml.parallel.comm import Comm

    comm = Comm.world()
    cfg = TrainConfig(data=args.data, label_column="label", out="unused", model="softmax",
                      dtype="float32", num_classes=10)
    if args.warm:  # compile the parsers on a small file, outside the clock
        load_training(TrainConfig(data=args.warm, label_column="label", out="unused",
                                  model="softmax", dtype="float32", num_classes=10), comm)
    base = rss_bytes()
    comm.barrier()
    t0 = time.perf_counter()
    data = load_training(cfg, comm)
    seconds = time.perf_counter() - t0
    rows = data.train.x.shape[0]
    if args.check:
        np.save(f"{args.check}.{comm.rank}.npy", np.column_stack([data.train.x, data.train.y]))
    report = {"seconds": seconds, "rows": rows,
              "memory": (peak_rss_bytes() - base) / max(rows * (data.train.x.shape[1] * 4 + 8), 1)}
    everyone = comm.allgather(report)
    if comm.is_root:
        print(json.dumps({"seconds": max(r["seconds"] for r in everyone),
                          "rows": [r["rows"] for r in everyone],
                          "memory": max(r["memory"] for r in everyone)}))


def worker_reference(args):
    import h5py
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    t0 = time.perf_counter()
    if args.worker == "pandas":
        values = pd.read_csv(args.data, engine="c")
    elif args.worker == "pyarrow":
        values = pq.read_table(args.data, use_threads=False)
    else:
        with h5py.File(args.data, "r") as f:
            values = (f["X"][:], f["label"][:])
    seconds = time.perf_counter() - t0
    del values
    print(json.dumps({"seconds": seconds}))


def worker_predict(args):
    """``predict`` end to end, as a user runs it: the process's wall time."""
    t0 = time.perf_counter()
    from mpi_dml.cli import main

    main(["predict", "--model", args.model, "--data", args.data, "--output", args.output])
    from mpi_dml.parallel.comm import Comm

    comm = Comm.world()
    seconds = comm.allgather(time.perf_counter() - t0)
    if comm.is_root:
        print(json.dumps({"seconds": max(seconds)}))


# --- the driver -----------------------------------------------------------------------
def validate(paths: dict, ranks: list[int], tmp: Path, args, formats=None) -> list[str]:
    """Every format (of ``formats``; default all in ``paths``) at every rank count gives
    each rank its rows of the reference, pandas' reading of the CSV."""
    import pandas as pd

    want = pd.read_csv(paths["csv"]).to_numpy()
    want = np.column_stack([want[:, :-1].astype(np.float32), want[:, -1]])
    failures = []
    for fmt in formats or list(paths):
        path = paths[fmt]
        for p in ranks:
            check = tmp / f"check-{fmt}-{p}"
            common.run_ranks(p, [Path(__file__).resolve(), "--worker", "mpi_dml", "--data", path,
                                 "--check", check], timeout=args.timeout)
            got = np.concatenate([np.load(f"{check}.{r}.npy") for r in range(p)])
            for r in range(p):
                os.unlink(f"{check}.{r}.npy")
            if got.shape != want.shape or not np.array_equal(got, want):
                failures.append(f"{fmt} at {p} ranks: rows differ from pandas' reading")
    return failures


def launch(kind: str, fmt: str, p: int, paths: dict, args) -> dict:
    worker = "libsvm" if kind == "mpi_dml" and fmt == "libsvm" else kind
    cmd = [Path(__file__).resolve(), "--worker", worker, "--data", paths[fmt]]
    if kind == "mpi_dml":
        cmd += ["--warm", paths["warm-" + fmt]]
        result = common.run_ranks(p, cmd, timeout=args.timeout)
    else:
        result = common.run_ranks(1, cmd, timeout=args.timeout)
    return json.loads(common.last_json_line(result.stdout))


def drive(args) -> int:
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        sys.exit(f"--formats takes some of {', '.join(FORMATS)}; got {args.formats!r}")
    dense = [f for f in formats if f in SUFFIX]
    info = common.machine()
    tables = ([f"{args.rows} x {args.cols} float32 features + label"] if dense else []) + (
        [f"{args.svm_rows} LIBSVM rows over {args.svm_features} features, ~{args.svm_nnz} "
         f"nonzeros a row"] if "libsvm" in formats else [])
    print(f"bench_data: {'; '.join(tables)}; formats {', '.join(formats)}; ranks {ranks}; "
          f"{args.repeats} interleaved repeats, median reported; 1 thread per process")
    print(f"  machine: {info}")
    results = {"machine": info, "args": vars(args), "formats": {}}
    with tempfile.TemporaryDirectory(prefix="bench_data-", dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        paths = write_data(tmp, args.rows, args.cols) if dense else {}
        (tmp / "warm").mkdir()
        if dense:
            for fmt, path in write_data(tmp / "warm", 2000, args.cols, seed=1).items():
                paths["warm-" + fmt] = path
        if "libsvm" in formats:
            paths["libsvm"] = write_libsvm(tmp / "table.svm", args.svm_rows, args.svm_features,
                                           args.svm_nnz)
            paths["warm-libsvm"] = write_libsvm(tmp / "warm" / "table.svm", 2000,
                                                args.svm_features, args.svm_nnz, seed=1)
        sizes = {fmt: os.path.getsize(paths[fmt]) for fmt in formats}
        print("  files: " + ", ".join(f"{fmt} {sizes[fmt] / 1e6:.0f} MB" for fmt in formats))
        failures = (validate({f: paths[f] for f in SUFFIX}, ranks, tmp, args, dense)
                    if dense else [])
        if "libsvm" in formats:
            failures += validate_libsvm(paths["libsvm"], ranks, tmp, args)
        if failures:
            print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
            return 1
        print("validation: PASS\n")
        for fmt in formats:
            ref = REFERENCE[fmt]
            kinds = [ref] + [f"mpi_dml x{p}" for p in ranks]
            runs = common.interleaved(
                kinds, args.repeats,
                lambda kind: launch("mpi_dml" if kind.startswith("mpi_dml") else kind, fmt,
                                    int(kind.split("x")[-1]) if kind.startswith("mpi_dml") else 1,
                                    paths, args),
                fmt, lambda kind, r: f"{r['seconds']:.2f} s")
            results["formats"][fmt] = summarize(runs, ref, ranks, sizes[fmt],
                                                args.svm_rows if fmt == "libsvm" else args.rows)
        if "csv" in formats:
            results["predict"] = time_predict(paths, ranks, tmp, args)
    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(report(results, ranks))
    common.write_json(args.json, results)
    return 0


def summarize(runs, ref, ranks, file_bytes, n_rows) -> dict:
    ref_s = common.median([r["seconds"] for r in runs[ref]])
    out = {"reference": ref, "reference_s": ref_s, "ranks": {}}
    for p in ranks:
        mine = runs[f"mpi_dml x{p}"]
        seconds = common.median([r["seconds"] for r in mine])
        largest = max(mine[0]["rows"])
        share = file_bytes * largest / n_rows  # the slowest rank reads about this much
        out["ranks"][p] = {"seconds": seconds, "memory": max(r["memory"] for r in mine),
                           "ratio": (share / seconds) / (file_bytes / ref_s)}
    return out


def time_predict(paths, ranks, tmp, args) -> dict:
    """Train a small model on the CSV, then time ``predict`` over the whole file."""
    model = tmp / "model"
    common.run_ranks(1, ["-m", "mpi_dml", "train", "--data", paths["warm-csv"],
                         "--label-column", "label", "--model", "softmax", "--epochs", "1",
                         "--out", model], timeout=args.timeout)
    out = {}
    for p in ranks:
        seconds = [json.loads(common.last_json_line(common.run_ranks(p, [
            Path(__file__).resolve(), "--worker", "predict", "--model", model, "--data",
            paths["csv"], "--output", tmp / f"pred{p}.csv"], timeout=args.timeout).stdout))["seconds"]
                   for _ in range(args.repeats)]
        out[p] = common.median(seconds)
        print(f"  predict x{p}: {out[p]:.2f} s", flush=True)
    return out


def report(results, ranks) -> str:
    rows = []
    for fmt, r in results["formats"].items():
        for p in ranks:
            mine = r["ranks"][p]
            target = TARGETS.get(fmt)
            verdict = "-" if target is None else ("PASS" if mine["ratio"] >= target else "MISS")
            memory = "PASS" if mine["memory"] <= TARGET_MEMORY else "MISS"
            rows.append([fmt, p, f"{r['reference_s']:.2f}", f"{mine['seconds']:.2f}",
                         f"{mine['ratio']:.2f}x {r['reference']}",
                         "-" if target is None else f">= {target}x", verdict,
                         f"{mine['memory']:.2f}x", memory])
    text = common.table(["format", "ranks", "ref s", "mpi_dml s", "per-rank speed", "target",
                         "", "peak mem", "<= 1.5x"], rows)
    if "predict" in results:
        text += "\n\npredict (CSV, end to end): " + ", ".join(
            f"{p} rank{'s' if p > 1 else ''} {s:.2f} s" for p, s in results["predict"].items())
    return "\n" + text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--cols", type=int, default=50)
    ap.add_argument("--svm-rows", type=int, default=250_000)
    ap.add_argument("--svm-features", type=int, default=1 << 20)
    ap.add_argument("--svm-nnz", type=int, default=40, help="nonzeros a LIBSVM row, on average")
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help=f"some of {', '.join(FORMATS)} (predict runs with csv)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--worker", choices=["mpi_dml", "libsvm", "pandas", "pyarrow", "h5py",
                                         "sklearn", "predict"], help=argparse.SUPPRESS)
    for hidden in ("--data", "--warm", "--check", "--model", "--output"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "mpi_dml":
        worker_mpi_dml(args)
    elif args.worker == "libsvm":
        worker_libsvm(args)
    elif args.worker == "sklearn":
        worker_sklearn(args)
    elif args.worker == "predict":
        worker_predict(args)
    elif args.worker:
        worker_reference(args)
    else:
        return drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
