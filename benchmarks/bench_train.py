"""Training throughput: mpi_dml against PyTorch DistributedDataParallel, same MLP, same run.

    $ python benchmarks/bench_train.py                          # 1 and 2 ranks, 5 repeats
    $ python benchmarks/bench_train.py --ranks 1,2,4 --steps 60 --repeats 7 --json out.json
    $ python benchmarks/bench_train.py --section threads        # 1 rank x 2 threads vs 2 x 1
    $ python benchmarks/bench_train.py --device gpu             # on a GPU: see gpu_train.py

The driver (plain ``python``, no MPI of its own) does, in order:

1. Validate: one mpi_dml model and one torch model start from the same weights and take
   two SGD-momentum steps on the same batches, in this process; loss, gradients,
   momentum buffers and parameters must agree within float32 tolerance, or the
   benchmark stops before timing anything.
2. Time: for each rank count P it writes one synthetic ``.npy`` (256 x P x steps rows of
   784 random features and a label 0-9 in column "784"), then launches, interleaved
   ``--repeats`` times so machine noise hits all of them alike:
     * ``mpiexec -n P ... --worker mpi_dml``: the real engine, ``Engine(cfg,
       comm=Comm.world()).fit()``; samples/s from ``metrics.jsonl``, epochs after the
       first (the first one carries JIT loading, page faults and cache warm-up);
     * ``mpiexec -n P ... --worker torch``: the same MLP under DDP (gloo, CPU), the
       same epochs and steps, timed the same way (wall of each epoch, max over ranks);
     * ``mpiexec -n P ... --worker gemm``: the model's eight GEMMs of one step in numpy
       float32 on every rank at once, the roofline that a step made only of GEMMs
       would reach.
3. Profile (unless ``--no-profile``): one more mpi_dml run per rank count, the Engine
   given its cpu kernels behind a stopwatch, splits a step into data gathering,
   kernels, optimizer, gradient Allreduce and GEMMs + glue.
4. Print a table with the medians, the ratio and the targets (PASS/MISS; the exit
   status is 0 either way; it is 1 only if validation or a run fails).
5. Then (``--section all``, the default, or ``threads`` alone, which needs no torch):
   one rank with 2 threads against 2 ranks with one thread on the same training,
   validated to give the same model first (``train_layouts.py``; ``--layouts`` for
   others, such as 1x8,8x1).

Config: 784-512-512-10 ReLU MLP, float32, 256 samples per rank per step (the global
batch, which is what mpi_dml's ``batch_size`` means, is 256 x P), SGD lr 0.01 momentum
0.9, one thread per rank. ``shards = 256 x P`` makes every global batch exactly one
round over the shards, so every rank gets exactly 256 rows of every batch (with the
default 1024 shards each rank's share of a batch varies by a few percent).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_workers import (LAYERS, LR, MOMENTUM, N_CLASSES, PER_RANK,  # noqa: E402
                           flops_per_sample, validate, worker_gemm, worker_mpi_dml,
                           worker_profile, worker_torch, write_data)

TARGET_RATIO = 1.5      # mpi_dml samples/s over torch DDP samples/s, at 2 ranks
TARGET_ROOFLINE = 0.70  # achieved GFLOP/s per rank over numpy GEMM GFLOP/s


def launch(kind: str, ranks: int, data: Path, args, tmp: Path) -> dict:
    script = Path(__file__).resolve()
    cmd = [script, "--worker", kind, "--data", data, "--epochs", args.epochs]
    if kind in ("mpi_dml", "profile"):
        cmd += ["--out", tempfile.mkdtemp(dir=tmp, prefix="out-"), "--steps", args.steps]
    if kind == "torch":
        cmd += ["--port", common.free_port(), "--master-addr", args.master_addr]
    if kind == "gemm":
        cmd += ["--gemm-iters", args.gemm_iters, "--gemm-reps", args.gemm_reps]
    result = common.run_ranks(ranks, cmd, timeout=args.timeout, launcher=args.launcher)
    return json.loads(common.last_json_line(result.stdout))


def drive(args) -> int:
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    fps = flops_per_sample()
    info = common.machine()
    print(f"bench_train: MLP {'-'.join(str(a) for a, _ in LAYERS)}-{N_CLASSES} relu, float32, "
          f"{PER_RANK} samples/rank/step, SGD lr {LR} momentum {MOMENTUM}, 1 thread/rank")
    print(f"  {args.steps} steps/epoch, {args.epochs} epochs (first is warm-up), "
          f"{args.repeats} interleaved repeats, median reported")
    print(f"  machine: {info}")
    print(f"  training FLOPs/sample: {fps:,} ({fps / 1e6:.3f} MFLOP)")

    failures = validate()
    if failures:
        print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
        return 1
    print("validation: PASS\n")

    results = {"machine": info, "flops_per_sample": fps, "args": vars(args), "ranks": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmpdir:
        tmp = Path(tmpdir)
        for p in ranks:
            data = tmp / f"synthetic_{p}.npy"
            write_data(data, PER_RANK * p * args.steps)
            runs = common.interleaved(("mpi_dml", "torch", "gemm"), args.repeats,
                                      lambda kind: launch(kind, p, data, args, tmp),
                                      f"ranks {p}", _headline)
            results["ranks"][p] = summarize(runs, p, fps)
            if args.profile:
                results["ranks"][p]["profile"] = launch("profile", p, data, args, tmp)
                print(f"  ranks {p} profile run done", flush=True)
            data.unlink()

    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(f"\n1-minute load average: {info['load_avg_1min']} at the start, "
          f"{results['load_avg_1min_end']} at the end ({info['cores']} cores)")
    print(report(results, ranks))
    common.write_json(args.json, results)
    return 0


def _headline(kind, r):
    if kind == "gemm":
        return f"{r['gflops_per_rank']:8.1f} GFLOP/s per rank"
    return f"{r['samples_per_s']:8.0f} samples/s (loss {r['train_loss']:.3f})"


def summarize(runs, p, fps) -> dict:
    mine = common.median([r["samples_per_s"] for r in runs["mpi_dml"]])
    theirs = common.median([r["samples_per_s"] for r in runs["torch"]])
    gemm = common.median([r["gflops_per_rank"] for r in runs["gemm"]])
    per_gemm = {name: common.median([r["per_gemm"][name] for r in runs["gemm"]])
                for name in runs["gemm"][0]["per_gemm"]}
    shares = {key: common.median([r[key] for r in runs["mpi_dml"]])
              for key in ("compute_share", "comm_share", "data_share")}
    return {
        "mpi_dml_samples_per_s": mine, "torch_samples_per_s": theirs, "ratio": mine / theirs,
        "mpi_dml_gflops_per_rank": mine / p * fps / 1e9,
        "torch_gflops_per_rank": theirs / p * fps / 1e9,
        "gemm_gflops_per_rank": gemm,
        "roofline_fraction": mine / p * fps / 1e9 / gemm,
        "torch_roofline_fraction": theirs / p * fps / 1e9 / gemm,
        "mpi_dml_shares": shares, "per_gemm_gflops": per_gemm, "runs": runs,
    }


def report(results, ranks) -> str:
    rows = []
    for p in ranks:
        r = results["ranks"][p]
        rows.append([p, f"{r['mpi_dml_samples_per_s']:.0f}", f"{r['torch_samples_per_s']:.0f}",
                     f"{r['ratio']:.2f}", f"{r['mpi_dml_gflops_per_rank']:.1f}",
                     f"{r['torch_gflops_per_rank']:.1f}", f"{r['gemm_gflops_per_rank']:.1f}",
                     f"{100 * r['roofline_fraction']:.0f}%",
                     f"{100 * r['torch_roofline_fraction']:.0f}%"])
    lines = [common.table(["ranks", "mpi_dml samples/s", "torch DDP samples/s", "ratio",
                           "mpi_dml GF/s/rank", "torch GF/s/rank", "GEMM GF/s/rank",
                           "mpi_dml of roofline", "torch of roofline"], rows)]
    lines.append("\nmpi_dml epoch time shares (Engine timers, max over ranks): " + "; ".join(
        f"{p} ranks: " + ", ".join(f"{k.split('_')[0]} {100 * v:.0f}%"
                                   for k, v in results["ranks"][p]["mpi_dml_shares"].items())
        for p in ranks))
    lines.append("numpy GEMM GFLOP/s per rank by shape (same run): " + "; ".join(
        f"{p} ranks: " + ", ".join(f"{k.split()[0]} {v:.0f}"
                                   for k, v in results["ranks"][p]["per_gemm_gflops"].items())
        for p in ranks))
    if all("profile" in results["ranks"][p] for p in ranks):
        lines.append("\n" + profile_table(results, ranks))
    lines.append("\ntargets:")
    if 2 in results["ranks"]:
        ratio = results["ranks"][2]["ratio"]
        lines.append(f"  mpi_dml >= {TARGET_RATIO}x torch DDP at 2 ranks: {ratio:.2f}x  "
                     f"{common.verdict(ratio >= TARGET_RATIO)}")
    else:
        lines.append("  mpi_dml vs torch DDP at 2 ranks: not measured (add 2 to --ranks)")
    for p in ranks:
        frac = results["ranks"][p]["roofline_fraction"]
        lines.append(f"  mpi_dml >= {100 * TARGET_ROOFLINE:.0f}% of GEMM roofline at {p} "
                     f"rank{'s' if p > 1 else ''}: {100 * frac:.0f}%  "
                     f"{common.verdict(frac >= TARGET_ROOFLINE)}")
    return "\n".join(lines)


def profile_table(results, ranks) -> str:
    """Milliseconds per mpi_dml step by phase, from the profile run of each rank count."""
    names = [("data gather (x[idx], labels)", None), ("bias+activation forward", "bias_act_forward"),
             ("softmax cross-entropy", "softmax_xent"), ("activation backward + bias grad", "act_backward"),
             ("sgd_update (fused)", "sgd_update"), ("GEMMs + Python glue + grad scaling", None),
             ("gradient Allreduce (+ waiting)", None), ("whole step", None),
             ("the step's GEMMs alone at numpy roofline", None)]
    cols = []
    for p in ranks:
        r = results["ranks"][p]
        prof, k = r["profile"]["per_step_ms"], r["profile"]["kernel_ms"]
        kern = sum(k.values())
        roof = flops_per_sample() * PER_RANK / (r["gemm_gflops_per_rank"] * 1e9) * 1e3
        cols.append([prof["data_s"], k.get("bias_act_forward", 0), k.get("softmax_xent", 0),
                     k.get("act_backward", 0), k.get("sgd_update", 0), prof["compute_s"] - kern,
                     prof["comm_s"], prof["epoch_s"], roof])
    rows = [[label] + [f"{c[i]:.2f}" for c in cols] for i, (label, _) in enumerate(names)]
    return ("mpi_dml step profile, ms per step (real Engine run, kernels behind a stopwatch, "
            "epochs after the first):\n" + common.table(["phase"] + [f"{p} rank{'s' if p > 1 else ''}"
                                                       for p in ranks], rows))


# Defaults that differ between the CPU and the GPU benchmark.
DEFAULTS = {"cpu": {"ranks": "1,2", "steps": 40, "epochs": 3, "repeats": 5},
            "gpu": {"ranks": "1", "steps": None, "epochs": 5, "repeats": 3}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: against torch DDP on CPU cores (default); gpu: against torch "
                         "on the same GPU, both MLPs (benchmarks/gpu_train.py)")
    ap.add_argument("--ranks", help="comma-separated rank counts (default 1,2; gpu: 1)")
    ap.add_argument("--steps", type=int,
                    help="steps per epoch (default 40; gpu: 100 for mlp-784, 30 for mlp-4096)")
    ap.add_argument("--epochs", type=int,
                    help="epochs per run, the first one untimed (default 3, gpu 5; at least 2)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats (default 5; gpu: 3)")
    ap.add_argument("--model", default="all", choices=("all", "mlp-784", "mlp-4096"),
                    help="gpu: which MLP to time (default both)")
    ap.add_argument("--gpu-exchange", default="auto",
                    help="gpu: mpi_dml's --gpu-exchange for several ranks (default auto)")
    ap.add_argument("--json", default="", help="write every figure to this JSON file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launched run")
    ap.add_argument("--gemm-iters", type=int, default=20, help="GEMM passes per timing")
    ap.add_argument("--gemm-reps", type=int, default=5, help="GEMM timings per run")
    ap.add_argument("--launcher", default="",
                    help="command that starts N ranks, {n} for N (default: this venv's "
                         "'mpiexec -n {n}'; e.g. 'srun --mpi=pmi2 -n {n}' in a Slurm allocation)")
    ap.add_argument("--master-addr", default="127.0.0.1",
                    help="address of the host running rank 0, for torch's rendezvous "
                         "(default 127.0.0.1: one node; give this host's name for several)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the extra mpi_dml run that splits a step's time by phase")
    ap.add_argument("--section", choices=("all", "torch", "threads"), default="all",
                    help="cpu: torch (against torch DDP by rank count), threads (1 rank x T "
                         "threads against T ranks x 1 thread, train_layouts.py), or all "
                         "(default; the threads section needs no torch)")
    ap.add_argument("--layouts", default="1x2,2x1",
                    help="threads section: RANKSxTHREADS layouts over the same cores "
                         "(default 1x2,2x1)")
    ap.add_argument("--worker", choices=("mpi_dml", "torch", "gemm", "profile", "gpu_validate",
                                         "gpu_mpi_dml", "gpu_torch", "gpu_gemm"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rank-threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2: the first epoch is warm-up and not timed")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker and args.worker.startswith("gpu_"):
        import gpu_workers
        getattr(gpu_workers, "worker_" + args.worker[len("gpu_"):])(args)
        return 0
    if args.worker:
        workers = {"mpi_dml": worker_mpi_dml, "torch": worker_torch, "gemm": worker_gemm,
                   "profile": worker_profile}
        workers[args.worker](args)
        return 0
    if args.device == "gpu":
        import gpu_train
        return gpu_train.drive(args)
    status = 0
    if args.section == "all" and importlib.util.find_spec("torch") is None:
        print("torch section skipped: PyTorch is not installed (pip install torch)")
    elif args.section in ("all", "torch"):
        status = drive(args)
    if args.section in ("all", "threads"):
        import train_layouts
        print()
        status = max(status, train_layouts.drive(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
