"""Step time under the balanced batch plan against the shuffled one, same training, same run.

    $ python benchmarks/bench_balance.py                       # 4 ranks, batch 64, 9 repeats
    $ python benchmarks/bench_balance.py --ranks 8 --batch-size 128 --repeats 7 --json out.json

Every step waits for the rank with the most rows of the batch. The driver (plain
``python``, no MPI of its own) does, in order:

1. Validate: under each plan, the batches of every epoch timed, simulated rank by rank
   with the engine's own functions (``data.sharding``), must be the same at 1 and at P
   ranks and hold every row exactly once; then it reports each plan's per-batch share
   of the slowest rank (its rows over the mean, rows / P), averaged over the batches
   and at worst. Nothing is timed if validation fails.
2. Time: one synthetic ``.npy`` (``--steps`` x batch rows of 784 random float32 features
   and a label 0-9; a multiple of 1024 rows, so the shuffled plan's shards are all the
   same size), then one ``mpiexec -n P`` job that trains on it with the real ``Engine``
   under ``--plan shuffled --shards 1024`` (the plan and shard count of earlier
   releases) and under the defaults (balanced), alternating, ``--repeats`` times: the
   same processes, placement and warmed-up kernels for both. The model is a
   784-512-512-10 ReLU MLP in float32 (about 4 MFLOP to train on a row), SGD, one
   thread per rank. The default, batch 64 at 4 ranks, is where the shuffled plan's
   slowest rank has 1.28x the mean rows on average; the Allreduce of the 2.7 MB
   gradient still takes a large part of a step on an oversubscribed machine, and
   ``--batch-size 256`` gives each rank four times the work (with the shuffled plan's
   slowest rank at 1.14x the mean; at 1024, one round of its shards, it is even). The
   step time is the epoch's wall time over its steps, epochs after the first; the
   table gives the median and the fastest over repeats, and the median of the
   repeats' ratios (each repeat runs both plans back to back). The engine's comm share
   (time in the Allreduce, where fast ranks wait for the slowest) is beside it.
3. Print a table and the ratio of step times (shuffled over balanced).

With more ranks than cores (4 on a 2-core machine) the ranks share cores: MPICH's ranks
spin while they wait, so the step still follows the slowest rank's rows, but the times
are not a cluster's; the table says when the run was oversubscribed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT))
from mpi_dml.data import sharding  # noqa: E402

N_FEATURES, N_CLASSES, SEED = 784, 10, 0
# (flags, shards the plan runs with): the earlier releases' plan, and today's defaults.
PLANS = {"shuffled": (["--plan", "shuffled", "--shards", "1024"], 1024),
         "balanced": ([], None)}


def shards_of(plan: str) -> int:
    from mpi_dml.config import DEFAULTS

    return PLANS[plan][1] or DEFAULTS["shards"]


def write_data(path: Path, n_rows: int, seed: int = SEED):
    rng = np.random.default_rng(seed)
    table = np.empty((n_rows, N_FEATURES + 1), dtype=np.float32)
    table[:, :N_FEATURES] = rng.standard_normal((n_rows, N_FEATURES), dtype=np.float32)
    table[:, N_FEATURES] = rng.integers(0, N_CLASSES, n_rows)
    np.save(path, table)


# --- validation: the plans, as the engine computes them ------------------------------
def batches(n_rows: int, plan: str, ranks: int, batch: int, epoch: int) -> list:
    """Each global batch of ``epoch`` as the rows each of ``ranks`` ranks contributes."""
    n_shards = sharding.shard_count(n_rows, shards_of(plan), plan)
    bounds = sharding.shard_bounds(n_rows, n_shards, plan)
    sizes = np.diff(bounds)
    per_rank = []
    for rank in range(ranks):
        s0, s1 = sharding.owned_shards(n_shards, rank, ranks)
        rows = np.arange(bounds[s0], bounds[s1])
        p = sharding.EpochPlan(sizes, np.arange(s0, s1), seed=SEED, epoch=epoch,
                               batch_size=batch, plan=plan)
        per_rank.append([rows[p.local_indices(k)] for k in range(p.steps)])
    return [[mine[k] for mine in per_rank] for k in range(len(per_rank[0]))]


def validate(n_rows: int, ranks: int, batch: int, epochs: int) -> tuple[list, dict]:
    """Failures (empty when both plans are sound) and each plan's slowest-rank shares."""
    failures, shares = [], {}
    for plan in PLANS:
        ratios = []
        for epoch in range(1, epochs):  # the epochs that are timed
            one = batches(n_rows, plan, 1, batch, epoch)
            many = batches(n_rows, plan, ranks, batch, epoch)
            rows = np.concatenate([b[0] for b in one])
            if rows.size != n_rows or np.unique(rows).size != n_rows:
                failures.append(f"{plan}, epoch {epoch}: not every row exactly once")
            for k, (a, b) in enumerate(zip(one, many)):
                if not np.array_equal(np.sort(a[0]), np.sort(np.concatenate(b))):
                    failures.append(f"{plan}, epoch {epoch}, batch {k}: differs at "
                                    f"{ranks} ranks from 1 rank")
                    break
                counts = [part.size for part in b]
                ratios.append(max(counts) / (sum(counts) / ranks))
        shares[plan] = {"mean_max_over_mean": float(np.mean(ratios)),
                        "worst_max_over_mean": float(np.max(ratios))}
    return failures, shares


# --- timing ---------------------------------------------------------------------------
def worker(args):
    """Under mpiexec: the same training under each plan in turn, ``--repeats`` times, in
    one job, so both plans run on the same processes, placement and warmed-up kernels.
    Rank 0 prints one JSON line: each plan's runs, in order."""
    from mpi_dml.config import TrainConfig
    from mpi_dml.engine import Engine
    from mpi_dml.parallel.comm import Comm, install_abort_hook

    install_abort_hook()
    comm = Comm.world()
    runs = {plan: [] for plan in PLANS}
    for rep in range(args.repeats):
        for plan in PLANS:
            out = Path(args.out) / f"{plan}-{rep}"
            cfg = TrainConfig(
                data=args.data, label_column=str(N_FEATURES), out=str(out), model="mlp",
                hidden=tuple(int(h) for h in args.hidden.split(",")), activation="relu",
                num_classes=N_CLASSES, optimizer="sgd", lr=0.01, batch_size=args.batch_size,
                epochs=args.epochs, seed=SEED, dtype="float32", plan=plan,
                shards=shards_of(plan), threads=1, progress="none", device="cpu")
            Engine(cfg, comm=comm, process=False).fit()
            if comm.is_root:
                summary = common.training_summary(out)
                summary["step_ms"] = 1e3 * args.batch_size / summary["samples_per_s"]
                runs[plan].append(summary)
                print(f"  repeat {rep + 1}/{args.repeats} {plan:8s} {_headline(summary)}",
                      flush=True)
    if comm.is_root:
        print(json.dumps(runs))


def launch(data: Path, args, tmp: Path) -> dict:
    cmd = [Path(__file__).resolve(), "--worker", "--data", data, "--out", tmp,
           "--ranks", args.ranks, "--batch-size", args.batch_size, "--epochs", args.epochs,
           "--repeats", args.repeats, "--hidden", args.hidden]
    result = common.run_ranks(args.ranks, cmd, timeout=args.timeout, launcher=args.launcher)
    print("\n".join(l for l in result.stdout.splitlines() if l.startswith("  repeat")))
    return json.loads(common.last_json_line(result.stdout))


def drive(args) -> int:
    n_rows = args.steps * args.batch_size
    n_rows += -n_rows % 1024  # equal shards under the shuffled plan's 1024
    info = common.machine(libraries=("mpi4py", "numba"))
    per_rank = args.batch_size / args.ranks
    print(f"bench_balance: {args.ranks} ranks, batch {args.batch_size} ({per_rank:g} "
          f"rows/rank), {n_rows} rows x {N_FEATURES} float32, MLP {N_FEATURES}-"
          f"{args.hidden.replace(',', '-')}-{N_CLASSES} relu, SGD, 1 thread/rank")
    print(f"  {args.epochs} epochs (first is warm-up), {args.repeats} alternating repeats, "
          f"median reported")
    print(f"  machine: {info}")
    oversubscribed = args.ranks > (os.cpu_count() or 1)
    if oversubscribed:
        print(f"  note: {args.ranks} ranks on {os.cpu_count()} cores: oversubscribed")

    failures, shares = validate(n_rows, args.ranks, args.batch_size, args.epochs)
    if failures:
        print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
        return 1
    print("validation: PASS (same batches at 1 and "
          f"{args.ranks} ranks, every row once, both plans)\n")

    with tempfile.TemporaryDirectory(prefix="bench_balance-") as tmpdir:
        tmp = Path(tmpdir)
        data = tmp / "synthetic.npy"
        write_data(data, n_rows)
        runs = launch(data, args, tmp)

    results = {"machine": info, "args": vars(args), "n_rows": n_rows,
               "oversubscribed": oversubscribed, "plans": {}}
    for plan in PLANS:
        results["plans"][plan] = {
            "shards": shards_of(plan), **shares[plan],
            "step_ms": common.median([r["step_ms"] for r in runs[plan]]),
            "step_ms_min": min(r["step_ms"] for r in runs[plan]),
            "comm_share": common.median([r["comm_share"] for r in runs[plan]]),
            "runs": runs[plan]}
    # Each repeat runs both plans back to back: their ratio sees the same machine load.
    results["paired_ratio"] = common.median(
        [a["step_ms"] / b["step_ms"] for a, b in zip(runs["shuffled"], runs["balanced"])])
    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(f"\n1-minute load average: {info['load_avg_1min']} at the start, "
          f"{results['load_avg_1min_end']} at the end ({info['cores']} cores)")
    print(report(results))
    common.write_json(args.json, results)
    return 0


def _headline(r):
    return f"{r['step_ms']:7.2f} ms/step (comm {100 * r['comm_share']:.0f}%)"


def report(results) -> str:
    rows = []
    for plan, r in results["plans"].items():
        rows.append([plan, r["shards"], f"{r['mean_max_over_mean']:.3f}",
                     f"{r['worst_max_over_mean']:.3f}", f"{r['step_ms']:.2f}",
                     f"{r['step_ms_min']:.2f}", f"{100 * r['comm_share']:.0f}%"])
    old, new = results["plans"]["shuffled"], results["plans"]["balanced"]
    where = " (oversubscribed)" if results["oversubscribed"] else ""
    return ("\n" + common.table(["plan", "shards", "slowest/mean, mean", "worst",
                                 "step ms", "fastest", "comm"], rows)
            + f"\n\nstep time, shuffled over balanced at {results['args']['ranks']} ranks"
              f"{where}: {old['step_ms'] / new['step_ms']:.2f}x (medians), "
              f"{results['paired_ratio']:.2f}x (median of the repeats' ratios)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=4, help="ranks of every run (default 4)")
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    ap.add_argument("--steps", type=int, default=160,
                    help="steps per epoch, about (default 160)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    ap.add_argument("--repeats", type=int, default=9, help="alternating repeats (default 9)")
    ap.add_argument("--hidden", default="512,512", help="MLP hidden widths (default 512,512)")
    ap.add_argument("--json", default="", help="write every figure to this JSON file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launched run")
    ap.add_argument("--launcher", default="",
                    help="command that starts N ranks, with {n}: e.g. 'srun --mpi=pmi2 -n {n}'")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.epochs < 2:
        ap.error("--epochs must be at least 2: the first one is warm-up")
    if args.batch_size < args.ranks:
        ap.error("--batch-size must be at least --ranks")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
