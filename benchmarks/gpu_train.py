"""``bench_train.py --device gpu``: mpi_dml against PyTorch on the same GPU, same run.

    $ python benchmarks/bench_train.py --device gpu
    $ python benchmarks/bench_train.py --device gpu --repeats 5 --json gpu.json

For each model (784-512-512-10 and 4096-4096-4096-1000 ReLU MLPs, float32, 1024
samples per rank per step, SGD lr 0.01 momentum 0.9) the driver

1. validates: in one plain process, two SGD-momentum steps of each model in mpi_dml
   (CuPy arrays, the CUDA kernels) and in PyTorch on the GPU from identical weights and
   batches must agree within float32 tolerance, or nothing is timed;
2. writes one synthetic ``.npy`` per model and rank count, then launches, interleaved
   ``--repeats`` times: the real Engine with ``device="gpu"``; the same MLP in PyTorch
   on the same GPU with the same pinned-memory input pipeline; the step's GEMMs alone
   in CuPy (the throughput a step made only of GEMMs would reach);
3. prints, per model, samples/s of both, their ratio, the TFLOP/s each reaches and its
   share of the CuPy GEMM throughput, and the targets for the large MLP.

Without a GPU (or without CuPy, or without a CUDA build of PyTorch) it stops with one
message. The figures are medians over the repeats; epochs after the first are timed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gpu_workers import (ENV, MODELS, PER_RANK, STEPS, TARGET_MODEL, gpu_flops_per_sample,  # noqa: E402
                         n_classes, n_features)

TARGET_RATIO = 1.0   # mpi_dml samples/s over PyTorch samples/s, large MLP
TARGET_SHARE = 0.70  # mpi_dml TFLOP/s over CuPy GEMM TFLOP/s, large MLP


def why_no_gpu() -> str | None:
    """Why the GPU benchmark cannot run here, in one sentence, or None."""
    from mpi_dml.devices.gpu import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} has no CUDA here; install a CUDA build of torch"
    return None


def write_data(path: Path, model: str, n_rows: int, seed: int = 0):
    nf = n_features(model)
    rng = np.random.default_rng(seed)
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                      shape=(n_rows, nf + 1))
    for lo in range(0, n_rows, 8192):  # in blocks: the large model's table is ~0.5 GB
        hi = min(lo + 8192, n_rows)
        table[lo:hi, :nf] = rng.standard_normal((hi - lo, nf), dtype=np.float32)
        table[lo:hi, nf] = rng.integers(0, n_classes(model), hi - lo)
    table.flush()
    del table


def launch(kind: str, ranks: int, model: str, data: Path, args, tmp: Path, steps: int) -> dict:
    script = Path(__file__).resolve().parent / "bench_train.py"
    cmd = [script, "--worker", f"gpu_{kind}", "--model", model, "--data", data,
           "--epochs", args.epochs, "--steps", steps]
    if kind == "mpi_dml":
        cmd += ["--out", tempfile.mkdtemp(dir=tmp, prefix="out-"),
                "--gpu-exchange", args.gpu_exchange]
    if kind == "torch":
        cmd += ["--port", common.free_port(), "--master-addr", args.master_addr]
    if kind == "gemm":
        cmd += ["--gemm-iters", args.gemm_iters, "--gemm-reps", args.gemm_reps]
    result = common.run_ranks(ranks, cmd, timeout=args.timeout, launcher=args.launcher, env=ENV)
    return json.loads(common.last_json_line(result.stdout))


def validate() -> tuple[list[str], dict]:
    script = Path(__file__).resolve().parent / "bench_train.py"
    r = subprocess.run([sys.executable, str(script), "--worker", "gpu_validate"],
                       capture_output=True, text=True, timeout=900, cwd=common.ROOT,
                       env=common.worker_env(ENV))
    if r.returncode != 0:
        return [f"the validation run failed with status {r.returncode}:\n{r.stdout}\n{r.stderr}"], {}
    out = json.loads(common.last_json_line(r.stdout))
    return out["failures"], out


def drive(args) -> int:
    reason = why_no_gpu()
    if reason:
        print(f"bench_train: --device gpu: {reason}", file=sys.stderr)
        return 1
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    models = list(MODELS) if args.model == "all" else [args.model]
    info = common.machine(("mpi4py", "numba", "torch", "cupy"))
    print(f"bench_train --device gpu: {', '.join(models)} ReLU MLPs, float32 (no TF32), "
          f"{PER_RANK} samples/rank/step, SGD lr 0.01 momentum 0.9")
    print(f"  {args.epochs} epochs (first is warm-up), {args.repeats} interleaved repeats, "
          f"median reported; ranks {args.ranks}")
    failures, checked = validate()
    info["gpu"] = checked.get("gpu")
    print(f"  machine: {info}", flush=True)
    if failures:
        print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
        return 1
    print("validation (2 SGD-momentum steps on the GPU, identical start), worst relative "
          "difference mpi_dml vs torch:\n  "
          + ", ".join(f"{k} {v:.1e}" for k, v in checked["worst"].items()))
    print("validation: PASS\n")

    results = {"machine": info, "args": vars(args), "validation": checked, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_gpu-") as tmpdir:
        tmp = Path(tmpdir)
        for model in models:
            steps = args.steps or STEPS[model]
            results["models"][model] = {"flops_per_sample": gpu_flops_per_sample(model),
                                        "steps": steps, "ranks": {}}
            for p in ranks:
                data = tmp / f"{model}_{p}.npy"
                write_data(data, model, PER_RANK * p * steps)
                runs = common.interleaved(
                    ("mpi_dml", "torch", "gemm"), args.repeats,
                    lambda kind: launch(kind, p, model, data, args, tmp, steps),
                    f"{model} ranks {p}", _headline)
                results["models"][model]["ranks"][p] = summarize(runs, p, model)
                data.unlink()
    print()
    print(report(results, models, ranks))
    common.write_json(args.json, results)
    return 0


def _headline(kind, r):
    if kind == "gemm":
        return f"{r['tflops']:8.2f} TFLOP/s"
    return f"{r['samples_per_s']:9.0f} samples/s (loss {r['train_loss']:.3f})"


def summarize(runs, p, model) -> dict:
    fps = gpu_flops_per_sample(model)
    mine = common.median([r["samples_per_s"] for r in runs["mpi_dml"]])
    theirs = common.median([r["samples_per_s"] for r in runs["torch"]])
    gemm = common.median([r["tflops"] for r in runs["gemm"]])
    mine_tf, theirs_tf = mine / p * fps / 1e12, theirs / p * fps / 1e12
    return {
        "mpi_dml_samples_per_s": mine, "torch_samples_per_s": theirs, "ratio": mine / theirs,
        "mpi_dml_tflops_per_rank": mine_tf, "torch_tflops_per_rank": theirs_tf,
        "gemm_tflops_per_rank": gemm, "mpi_dml_share": mine_tf / gemm,
        "torch_share": theirs_tf / gemm,
        "exchange": (runs["mpi_dml"][0].get("device") or {}).get("exchange"),
        "per_gemm_tflops": {name: common.median([r["per_gemm"][name] for r in runs["gemm"]])
                            for name in runs["gemm"][0]["per_gemm"]},
        "runs": runs,
    }


def report(results, models, ranks) -> str:
    rows = []
    for model in models:
        for p in ranks:
            r = results["models"][model]["ranks"][p]
            rows.append([model, p, f"{r['mpi_dml_samples_per_s']:.0f}",
                         f"{r['torch_samples_per_s']:.0f}", f"{r['ratio']:.2f}",
                         f"{r['mpi_dml_tflops_per_rank']:.2f}", f"{r['torch_tflops_per_rank']:.2f}",
                         f"{r['gemm_tflops_per_rank']:.2f}", f"{100 * r['mpi_dml_share']:.0f}%",
                         f"{100 * r['torch_share']:.0f}%", r["exchange"]])
    lines = [common.table(["model", "ranks", "mpi_dml samples/s", "torch samples/s", "ratio",
                           "mpi_dml TF/s/rank", "torch TF/s/rank", "CuPy GEMM TF/s/rank",
                           "mpi_dml of GEMM", "torch of GEMM", "exchange"], rows)]
    lines.append("\nCuPy GEMM TFLOP/s by shape (same run): " + "; ".join(
        f"{m} {p} rank{'s' if p > 1 else ''}: " + ", ".join(
            f"{k.split()[0]} {v:.1f}"
            for k, v in results["models"][m]["ranks"][p]["per_gemm_tflops"].items())
        for m in models for p in ranks))
    lines.append("\ntargets (large MLP, 4096-4096-4096-1000):")
    if TARGET_MODEL not in models:
        lines.append(f"  not measured (run with --model all or --model {TARGET_MODEL})")
        return "\n".join(lines)
    for p in ranks:
        r = results["models"][TARGET_MODEL]["ranks"][p]
        at = f"at {p} rank{'s' if p > 1 else ''}"
        lines.append(f"  mpi_dml >= {TARGET_RATIO:.1f}x torch samples/s {at}: {r['ratio']:.2f}x  "
                     f"{common.verdict(r['ratio'] >= TARGET_RATIO)}")
        lines.append(f"  mpi_dml >= {100 * TARGET_SHARE:.0f}% of CuPy GEMM throughput {at}: "
                     f"{100 * r['mpi_dml_share']:.0f}%  "
                     f"{common.verdict(r['mpi_dml_share'] >= TARGET_SHARE)}")
    return "\n".join(lines)
