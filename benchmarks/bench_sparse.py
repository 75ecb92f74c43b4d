"""Sparse logistic regression: mpi_dml against Vowpal Wabbit and scikit-learn, same files, same run.

    $ python benchmarks/bench_sparse.py                    # 250k + 50k held-out rows, 2 ranks
    $ python benchmarks/bench_sparse.py --train-rows 2000000 --ranks 1,2 --json sparse.json
    $ python benchmarks/bench_sparse.py --search           # re-tune mpi_dml's batch size and lr

The driver (plain ``python``, no MPI of its own) does, in order:

1. Data (untimed): ``--train-rows`` + ``--test-rows`` Criteo-like rows from
   ``sparse_data.make_rows`` (2**20 features, about 40 nonzeros a row, power-law feature
   popularity, labels from a sparse logistic model: see that module), written as
   ``train.svm``/``test.svm`` (LIBSVM, 1-based, labels 0/1) and ``train.vw``/``test.vw``
   (Vowpal Wabbit's text format, the same rows: 0-based feature names, labels -1/1).
2. Validate, one untimed run of each tool (it also warms the page cache and Numba's
   cache); nothing is timed unless all of it holds:
     * the files: scikit-learn's ``load_svmlight_file`` gives back exactly the generated
       matrix and labels, for both LIBSVM files;
     * VW saw every row, every nonzero and every label: its own summary counts
       ``train rows`` examples, ``nnz + train rows`` features (its constant feature is
       one more a row) and a weighted label sum of ``positives - negatives``;
     * scikit-learn loaded every row and nonzero; mpi_dml trained on every row
       (``samples_per_s x epoch_s`` in ``metrics.jsonl``) and ``evaluate`` saw every
       held-out row;
     * every held-out accuracy is above the majority class rate + 0.02.
3. Time, interleaved ``--repeats`` times so machine noise hits every tool alike (each
   timed run checks again that it saw every row):
     * VW (``vowpalwabbit`` package): ``Workspace("--loss_function logistic -b 20 -d
       train.vw")``, one pass: reading and learning, which VW pipelines on two threads,
       timed together; creating the workspace is inside the clock, importing it is not;
     * scikit-learn: ``load_svmlight_file`` (read; plus the copy of its int64 indices to
       int32 that ``SGDClassifier`` requires) and ``SGDClassifier(loss="log_loss",
       max_iter=1, tol=None).fit`` (train: one epoch, defaults otherwise);
     * mpi_dml: ``mpiexec -n P python -m mpi_dml train --data train.svm --format libsvm
       --num-features 1048576 --model logistic --epochs 1 ...``, the wall time of the
       whole command (total), its ``epoch_s`` from ``metrics.jsonl`` (train), the rest
       (start-up and read). ``mpiexec -n P python -m mpi_dml info`` is timed alongside,
       as the cost of starting P ranks and importing mpi_dml.
   Held-out accuracy is that of the validation run (every tool is deterministic here):
   VW's ``-t -i model`` margins on ``test.vw`` > 0, scikit-learn's ``score``, and
   ``python -m mpi_dml evaluate``. Every process but VW has one thread.
4. Print a table: seconds (read / train / total), rows/s, held-out accuracy and speed
   over VW's (its total over the tool's total), with the true model's accuracy on the
   held-out rows (the ceiling) and a NumPy replay of mpi_dml's Adam updates (what its
   documented algorithm gives on these rows) for reference.

Target (PASS/MISS; the exit status is 0 either way, 1 only if validation or a run
fails): mpi_dml's whole command at 2 ranks >= 2x VW's speed, with a held-out accuracy
no worse than VW's minus 0.01. A second line judges the same without mpi_dml's start-up
(the whole command less the ``info`` command's wall time), since VW's clock starts after
Python has started and imported it. An mpi_dml whose ``train`` refuses ``--format libsvm``
or ``--num-features`` is skipped with one line saying so, and a missing
``vowpalwabbit`` likewise; the other tools are still measured.

mpi_dml's settings: ``--optimizer adam --batch-size 4096 --lr 0.02`` (``--seed 0``,
float32), from ``--search``: on the default 250k rows a NumPy replay of the documented
updates reaches a held-out accuracy of 0.58-0.72 with plain SGD (batch 256 and 1024, lr
1-16: the one-hot and the numeric features want very different step sizes) and
0.751-0.776 with Adam (batch 1024-4096, lr 0.01-0.05). Batch 4096 with lr 0.02 gives
0.772-0.774 over two shuffles, within 0.004 of the best, in the fewest steps (62), each
of which updates all 2**20 weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import sparse_data  # noqa: E402

TARGET_SPEED = 2.0      # mpi_dml's rows/s over VW's, whole command, at 2 ranks
TARGET_ACCURACY = 0.01  # mpi_dml's held-out accuracy may be at most this below VW's
SANE_MARGIN = 0.02      # every accuracy must beat the majority class rate by this
SETTINGS = {"optimizer": "adam", "batch_size": 4096, "lr": 0.02}
# argparse's words for a flag or a choice it does not know: the CLI predates LIBSVM.
REFUSED = ("unrecognized arguments", "invalid choice")


# --- workers (one process each) ---------------------------------------------------------
def worker_vw(args):
    from vowpalwabbit import Workspace

    model = Path(args.out) / "vw.model"
    t0 = time.perf_counter()
    ws = Workspace(arg_list=["--loss_function", "logistic", "-b", "20", "-d", args.data,
                             "-f", str(model)], enable_logging=True)
    seconds = time.perf_counter() - t0
    ws.finish()  # writes the model
    summary = {}
    for line in ws.get_log():
        key, _, value = line.partition(" = ")
        if value:
            summary[key.strip()] = value.strip()
    measured = {"total_s": seconds, "rows": int(summary["number of examples"]),
                "features": int(summary["total feature number"]),
                "label_sum": float(summary["weighted label sum"])}
    if args.test:
        predictions = Path(args.out) / "vw.pred"
        Workspace(arg_list=["-t", "-i", str(model), "-d", args.test, "-p", str(predictions),
                            "--quiet"]).finish()
        margins = np.loadtxt(predictions, ndmin=1)
        truth = np.array([line.startswith(b"1 ") for line in open(args.test, "rb")])
        measured.update(accuracy=float(np.mean((margins > 0) == truth)),
                        test_rows=len(margins))
    print(json.dumps(measured))


def load_libsvm(path):
    """``load_svmlight_file`` as SGDClassifier takes it: int64 indices copied to int32."""
    import scipy.sparse as sp
    from sklearn.datasets import load_svmlight_file

    x, y = load_svmlight_file(path, n_features=sparse_data.N_FEATURES, zero_based=False)
    return sp.csr_matrix((x.data, x.indices.astype(np.int32), x.indptr.astype(np.int32)),
                         shape=x.shape), y


def worker_sklearn(args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    t0 = time.perf_counter()
    x, y = load_libsvm(args.data)
    t1 = time.perf_counter()
    clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, random_state=0)
    with warnings.catch_warnings():  # one epoch is what is asked for, not a convergence
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    t2 = time.perf_counter()
    measured = {"read_s": t1 - t0, "train_s": t2 - t1, "total_s": t2 - t0,
                "rows": x.shape[0], "nnz": x.nnz}
    if args.test:
        xt, yt = load_libsvm(args.test)
        measured.update(accuracy=float(clf.score(xt, yt)), test_rows=xt.shape[0])
    print(json.dumps(measured))


# --- mpi_dml, launched as a user runs it ------------------------------------------------
class Refused(Exception):
    """The CLI does not know a flag or choice this benchmark needs."""


def _mpi_dml(p: int, cli_args, args) -> tuple[float, str]:
    """``mpiexec -n P python -m mpi_dml ARGS``: its wall time and stdout."""
    t0 = time.perf_counter()
    try:
        result = common.run_ranks(p, ["-m", "mpi_dml", *cli_args], timeout=args.timeout)
    except RuntimeError as exc:
        if any(word in str(exc) for word in REFUSED):
            lines = [line for line in str(exc).splitlines() if "error:" in line]
            raise Refused(lines[-1] if lines else str(exc)) from None
        raise
    return time.perf_counter() - t0, result.stdout


def run_mpi_dml(p: int, paths: dict, args, out: Path, evaluate: bool) -> dict:
    wall, _ = _mpi_dml(p, ["train", "--data", paths["train.svm"], "--format", "libsvm",
                           "--num-features", sparse_data.N_FEATURES, "--model", "logistic",
                           "--optimizer", args.optimizer, "--batch-size", args.batch_size,
                           "--lr", args.lr, "--epochs", 1, "--seed", 0, "--progress", "none",
                           "--out", out], args)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    measured = {"total_s": wall, "train_s": record["epoch_s"],
                "read_s": wall - record["epoch_s"],
                "rows": round(record["samples_per_s"] * record["epoch_s"])}
    if evaluate:
        _, stdout = _mpi_dml(p, ["evaluate", "--model", out, "--data", paths["test.svm"],
                                 "--format", "libsvm"], args)
        scores = json.loads(common.last_json_line(stdout))
        measured.update(accuracy=scores["accuracy"], test_rows=scores["n"])
    return measured


# --- the reference replay ----------------------------------------------------------------
def replay(x, y, batch: int, lr: float, optimizer: str = "adam", seed: int = 0):
    """Weights and bias of one epoch of mpi_dml's documented minibatch update for logistic
    regression, in NumPy: the log-loss gradient summed over a batch and divided by its
    rows, then SGD or Adam (0.9, 0.999, 1e-8, bias-corrected) on weights and bias; the
    rows in one shuffled order (mpi_dml's shard order differs; accuracy should not)."""
    from scipy.special import expit

    order = np.random.default_rng(seed).permutation(x.shape[0])
    theta = np.zeros(x.shape[1] + 1)  # weights, then the bias
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for step, a in enumerate(range(0, len(order), batch), start=1):
        rows = order[a:a + batch]
        xb = x[rows]
        r = (expit(xb @ theta[:-1] + theta[-1]) - y[rows]) / len(rows)
        g = np.append(xb.T @ r, r.sum())
        if optimizer == "sgd":
            theta -= lr * g
            continue
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return theta[:-1], theta[-1]


def accuracy(x, y, weights, bias) -> float:
    return float(np.mean(((x @ weights + bias) > 0) == (y > 0)))


def search(rows, n_train):
    """Held-out accuracy of the replay over a small grid: how SETTINGS were chosen."""
    x, y = rows.x[:n_train], rows.y[:n_train]
    xt, yt = rows.x[n_train:], rows.y[n_train:]
    grid = [("sgd", b, lr) for b in (256, 1024) for lr in (1.0, 4.0, 16.0)]
    grid += [("adam", b, lr) for b in (1024, 2048, 4096) for lr in (0.01, 0.02, 0.03, 0.05)]
    out = []
    for optimizer, b, lr in grid:
        accs = [accuracy(xt, yt, *replay(x, y, b, lr, optimizer, seed)) for seed in (0, 1)]
        out.append([optimizer, b, lr, f"{accs[0]:.4f}", f"{accs[1]:.4f}"])
        print(f"  {optimizer} batch {b} lr {lr}: {accs[0]:.4f} {accs[1]:.4f}", flush=True)
    print("\n" + common.table(["optimizer", "batch", "lr", "acc, shuffle 0", "acc, shuffle 1"],
                              out))


# --- the driver -----------------------------------------------------------------------
def check_files(paths: dict, train, test) -> list[str]:
    """scikit-learn's reading of each LIBSVM file is exactly the rows written to it."""
    failures = []
    for name, want in (("train.svm", train), ("test.svm", test)):
        try:
            x, y = load_libsvm(paths[name])
        except ValueError as exc:
            failures.append(f"{name}: load_svmlight_file cannot read it: {exc}")
            continue
        same = (x.shape == want.x.shape and np.array_equal(x.indptr, want.x.indptr)
                and np.array_equal(x.indices, want.x.indices)
                and np.array_equal(x.data, want.x.data) and np.array_equal(y, want.y))
        if not same:
            failures.append(f"{name}: load_svmlight_file does not give back the rows written")
    return failures


def check_run(tool: str, r: dict, train, test) -> list[str]:
    """What one run of ``tool`` must have seen and scored (see the module docstring)."""
    n, failures = train.x.shape[0], []
    seen = {"rows": n}
    if tool == "vw":
        seen.update(features=train.x.nnz + n, label_sum=float(2 * train.y.sum() - n))
    if tool == "sklearn":
        seen["nnz"] = train.x.nnz
    if "accuracy" in r:
        seen["test_rows"] = test.x.shape[0]
    for key, want in seen.items():
        if r[key] != want:
            failures.append(f"{tool}: {key} {r[key]} where the training file has {want}")
    majority = max(test.y.mean(), 1 - test.y.mean())
    if "accuracy" in r and not r["accuracy"] > majority + SANE_MARGIN:
        failures.append(f"{tool}: held-out accuracy {r['accuracy']:.4f} is not above the "
                        f"majority class rate {majority:.4f} + {SANE_MARGIN}")
    return failures


def launch(tool: str, paths: dict, args, tmp: Path, evaluate: bool) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{tool}-"))
    if tool.startswith("mpi_dml"):
        return run_mpi_dml(int(tool.split("x")[-1]), paths, args, out, evaluate)
    if tool.startswith("start-up"):
        return {"total_s": _mpi_dml(int(tool.split("x")[-1]), ["info"], args)[0]}
    data = paths["train.vw" if tool == "vw" else "train.svm"]
    test = paths["test.vw" if tool == "vw" else "test.svm"] if evaluate else ""
    result = common.run_ranks(1, [Path(__file__).resolve(), "--worker", tool, "--data", data,
                                  "--test", test, "--out", out], timeout=args.timeout)
    return json.loads(common.last_json_line(result.stdout))


def drive(args) -> int:
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    info = common.machine(("mpi4py", "numba", "scipy", "sklearn", "vowpalwabbit"))
    print(f"bench_sparse: logistic regression, {args.train_rows} training + {args.test_rows} "
          f"held-out rows, 2**20 features; mpi_dml at ranks {ranks} ({args.optimizer}, batch "
          f"{args.batch_size}, lr {args.lr}); {args.repeats} interleaved repeats, median")
    print(f"  machine: {info}")
    results = {"machine": info, "args": vars(args), "skipped": {}}
    tools = ["vw", "sklearn"] + [f"mpi_dml x{p}" for p in ranks]
    if "vowpalwabbit" not in info:
        tools.remove("vw")
        results["skipped"]["vw"] = "vowpalwabbit is not installed (pip install vowpalwabbit)"
        print(f"vw: skipped: {results['skipped']['vw']}")
    with tempfile.TemporaryDirectory(prefix="bench_sparse-", dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        rows = sparse_data.make_rows(args.train_rows + args.test_rows, args.seed)
        train, test = sparse_data.split(rows, args.train_rows)
        paths = sparse_data.write_files(tmp, rows, args.train_rows)
        print(f"  data: {train.x.nnz / args.train_rows:.1f} nonzeros a row, "
              f"{train.y.mean():.3f} positive; " + ", ".join(
                  f"{name} {os.path.getsize(p) / 1e6:.0f} MB" for name, p in paths.items())
              + f" ({time.perf_counter() - t0:.1f} s)")
        if args.search:
            search(rows, args.train_rows)
            return 0
        failures = check_files(paths, train, test)
        first = {}
        for tool in list(tools):
            try:
                first[tool] = launch(tool, paths, args, tmp, evaluate=True)
            except Refused as exc:
                tools.remove(tool)
                results["skipped"][tool] = f"this mpi_dml refuses the LIBSVM flags ({exc})"
                print(f"{tool}: skipped: {results['skipped'][tool]}")
                continue
            failures += check_run(tool.split()[0], first[tool], train, test)
        if failures:
            print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
            return 1
        print("validation: PASS\n")
        kinds = tools + [f"start-up x{p}" for p in ranks if f"mpi_dml x{p}" in tools]

        def timed(kind):
            r = launch(kind, paths, args, tmp, evaluate=False)
            problems = [] if kind.startswith("start-up") else check_run(kind.split()[0], r,
                                                                        train, test)
            if problems:
                raise RuntimeError("; ".join(problems))
            return r

        runs = common.interleaved(kinds, args.repeats, timed, "run",
                                  lambda kind, r: f"{r['total_s']:.2f} s")
    results["tools"] = summarize(runs, first, args.train_rows)
    results["majority_rate"] = float(max(test.y.mean(), 1 - test.y.mean()))
    results["true_model_accuracy"] = float(np.mean((test.margin > 0) == (test.y > 0)))
    w, b = replay(train.x, train.y, args.batch_size, args.lr, args.optimizer)
    results["replay_accuracy"] = accuracy(test.x, test.y, w, b)
    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(report(results, ranks))
    common.write_json(args.json, results)
    return 0


def summarize(runs: dict, first: dict, n_rows: int) -> dict:
    out = {}
    for kind, rs in runs.items():
        entry = {key: common.median([r[key] for r in rs])
                 for key in ("read_s", "train_s", "total_s") if key in rs[0]}
        entry["rows_per_s"] = n_rows / entry["total_s"]
        if kind in first:
            entry["accuracy"] = first[kind]["accuracy"]
        entry["runs"] = rs
        out[kind] = entry
    return out


def report(results: dict, ranks) -> str:
    tools, skipped = results["tools"], results["skipped"]
    vw = tools.get("vw")
    rows = []
    for kind, t in tools.items():
        if kind.startswith("start-up"):
            continue
        ratio = f"{t['rows_per_s'] / vw['rows_per_s']:.2f}x" if vw else "-"
        rows.append([kind, *(f"{t[k]:.2f}" if k in t else "-" for k in ("read_s", "train_s")),
                     f"{t['total_s']:.2f}", f"{t['rows_per_s']:,.0f}", f"{t['accuracy']:.4f}",
                     ratio])
    lines = ["", common.table(["tool", "read s", "train s", "total s", "rows/s",
                               "held-out acc", "speed vs vw"], rows)]
    lines.append("\nvw reads and learns in one pipelined pass (no split); mpi_dml's read s is "
                 "its whole command less epoch_s (start-up included)")
    for p in ranks:
        if f"start-up x{p}" in tools:
            lines.append(f"start-up of mpiexec -n {p} python -m mpi_dml info: "
                         f"{tools[f'start-up x{p}']['total_s']:.2f} s")
    lines.append(f"held-out accuracy of the majority class: {results['majority_rate']:.4f}; "
                 f"of the true model: {results['true_model_accuracy']:.4f}; "
                 f"of a NumPy replay of mpi_dml's {results['args']['optimizer']} updates: "
                 f"{results['replay_accuracy']:.4f}")
    lines.append(f"1-minute load average: {results['machine']['load_avg_1min']} at the start, "
                 f"{results['load_avg_1min_end']} at the end")
    lines.append("\ntarget:")
    mine = tools.get("mpi_dml x2")
    what = (f"  mpi_dml at 2 ranks >= {TARGET_SPEED}x vw's rows/s and held-out accuracy >= "
            f"vw's - {TARGET_ACCURACY}: ")
    if mine and vw:
        speed = mine["rows_per_s"] / vw["rows_per_s"]
        good = mine["accuracy"] >= vw["accuracy"] - TARGET_ACCURACY
        lines.append(what + f"{speed:.2f}x, {mine['accuracy']:.4f} vs {vw['accuracy']:.4f}  "
                            f"{common.verdict(speed >= TARGET_SPEED and good)}")
        # VW's clock starts after Python and its import; this line puts mpi_dml on that footing.
        start = tools["start-up x2"]["total_s"]
        speed = vw["total_s"] / max(mine["total_s"] - start, 1e-9)
        lines.append(f"  the same less mpi_dml's start-up ({start:.2f} s): {speed:.2f}x  "
                     f"{common.verdict(speed >= TARGET_SPEED and good)}")
    else:
        why = skipped.get("mpi_dml x2") or skipped.get("vw") or "add 2 to --ranks"
        lines.append(what + f"not measured ({why})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-rows", type=int, default=250_000)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated rows")
    ap.add_argument("--ranks", default="2", help="mpi_dml's rank counts, e.g. 1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--optimizer", default=SETTINGS["optimizer"], choices=("sgd", "adam"))
    ap.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"])
    ap.add_argument("--lr", type=float, default=SETTINGS["lr"])
    ap.add_argument("--search", action="store_true",
                    help="print the replay's held-out accuracy over a grid of optimizers, "
                         "batch sizes and lr, and time nothing")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per launched run")
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--worker", choices=("vw", "sklearn"), help=argparse.SUPPRESS)
    for hidden in ("--data", "--test", "--out"):
        ap.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        {"vw": worker_vw, "sklearn": worker_sklearn}[args.worker](args)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
