"""bench_train.py's thread section: one rank with T threads against T ranks with one
thread each, on the same cores, the same training and in the same run.

    $ python benchmarks/bench_train.py --section threads                  # 1x2 against 2x1
    $ python benchmarks/bench_train.py --section threads --layouts 1x8,8x1,2x4 --steps 20

A layout RxT is R ranks with T threads each (``--threads T``: BLAS and the Numba
kernels). Every layout must use the same number of cores R x T, and all of them train
the same model on the same data: global batch 256 x R x T rows (``batch_size``), as many
shards (every batch is one round over them, so each of R ranks gets exactly 1/R of
it), the same epochs, seed and optimizer as the rest of bench_train.py. The driver:

1. Validates: each layout trains 2 epochs of 2 steps on a small file; the saved models
   must agree within float32 rounding (the layouts add the rows' gradients in another
   order, so the bits may differ), or nothing is timed.
2. Times: the layouts interleaved ``--repeats`` times (samples/s from metrics.jsonl,
   epochs after the first), then, unless ``--no-profile``, one stopwatched run each.
3. Prints samples/s, the ratio of each 1xT layout to Tx1, and the target.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

import common
from train_workers import LAYERS, LR, MOMENTUM, N_CLASSES, PER_RANK, write_data

SCRIPT = Path(__file__).resolve().parent / "bench_train.py"

TARGET_LAYOUT_RATIO = 0.9  # 1 rank x T threads over T ranks x 1 thread, samples/s
VALIDATION_RTOL = 1e-5     # largest parameter difference, relative to the largest parameter


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> [(1, 2), (2, 1)]; every layout must use the same cores."""
    layouts = []
    for part in text.split(","):
        ranks, _, threads = part.strip().lower().partition("x")
        if not (ranks.isdigit() and threads.isdigit() and int(ranks) > 0 and int(threads) > 0):
            raise SystemExit(f"--layouts {text!r}: each layout is RANKSxTHREADS, such as 2x1.")
        layouts.append((int(ranks), int(threads)))
    cores = {r * t for r, t in layouts}
    if len(cores) != 1:
        raise SystemExit(f"--layouts {text!r}: every layout must use the same number of "
                         f"cores (ranks x threads); these use {sorted(cores)}.")
    return layouts


def label(layout) -> str:
    return f"{layout[0]}x{layout[1]}"


def launch(layout, data: Path, batch: int, epochs: int, steps: int, args, tmp: Path,
           kind="mpi_dml") -> dict:
    """One run of ``layout``; returns rank 0's report plus the run's ``out`` folder."""
    ranks, threads = layout
    out = tempfile.mkdtemp(dir=tmp, prefix=f"out-{label(layout)}-")
    cmd = [SCRIPT, "--worker", kind, "--data", data, "--epochs", epochs, "--steps", steps,
           "--out", out, "--batch", batch, "--rank-threads", threads]
    result = common.run_ranks(ranks, cmd, timeout=args.timeout, launcher=args.launcher,
                              env=common.threads_env(threads))
    return {**json.loads(common.last_json_line(result.stdout)), "out": out}


def validate(layouts, batch: int, args, tmp: Path) -> list[str]:
    """Each layout trains 2 epochs of 2 steps; the models must agree (see the docstring)."""
    from safetensors.numpy import load_file

    data = tmp / "validate.npy"
    write_data(data, 2 * batch, seed=1)
    models, losses = {}, {}
    for layout in layouts:
        run = launch(layout, data, batch, 2, 2, args, tmp)
        tensors = load_file(Path(run["out"]) / "model.safetensors")
        models[label(layout)] = np.concatenate([tensors[k].ravel() for k in sorted(tensors)])
        losses[label(layout)] = run["train_loss"]
    worst, failures = model_differences(models)
    print(f"validation (2 epochs of 2 steps, global batch {batch}): largest parameter "
          f"difference against {label(layouts[0])}, relative to the largest parameter: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
          + "; final train loss: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    return failures


def model_differences(models: dict) -> tuple[dict, list[str]]:
    """Each model's largest parameter difference from the first one's, relative to the
    first one's largest parameter; and the failures (over ``VALIDATION_RTOL``)."""
    first = next(iter(models))
    scale = float(np.max(np.abs(models[first])))
    worst, failures = {}, []
    for name, params in models.items():
        diff = worst[name] = float(np.max(np.abs(params - models[first]))) / scale
        if not diff <= VALIDATION_RTOL:  # NaN fails too
            failures.append(f"{name} against {first}: largest parameter difference "
                            f"{diff:.2e} of the largest parameter > {VALIDATION_RTOL:g}")
    return worst, failures


def drive(args) -> int:
    layouts = parse_layouts(args.layouts)
    cores = layouts[0][0] * layouts[0][1]
    batch = PER_RANK * cores
    info = common.machine(("mpi4py", "numba"))
    print(f"bench_train threads: layouts {', '.join(map(label, layouts))} (ranks x threads); "
          f"MLP {'-'.join(str(a) for a, _ in LAYERS)}-{N_CLASSES} relu, float32, global "
          f"batch {batch}, SGD lr {LR} momentum {MOMENTUM}")
    print(f"  {args.steps} steps/epoch, {args.epochs} epochs (first is warm-up), "
          f"{args.repeats} interleaved repeats, median reported")
    print(f"  machine: {info}")
    results = {"machine": info, "args": vars(args), "global_batch": batch, "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="bench_layouts-") as tmpdir:
        tmp = Path(tmpdir)
        failures = validate(layouts, batch, args, tmp)
        if failures:
            print("VALIDATION FAILED, nothing timed:\n  " + "\n  ".join(failures))
            return 1
        print("validation: PASS\n")
        data = tmp / "synthetic.npy"
        write_data(data, batch * args.steps)
        by_label = {label(l): l for l in layouts}
        runs = common.interleaved(list(by_label), args.repeats,
                                  lambda name: launch(by_label[name], data, batch, args.epochs,
                                                      args.steps, args, tmp),
                                  "layout", _headline)
        for name, layout in by_label.items():
            summary = results["layouts"][name] = {
                "ranks": layout[0], "threads": layout[1],
                "samples_per_s": common.median([r["samples_per_s"] for r in runs[name]]),
                "train_loss": [r["train_loss"] for r in runs[name]], "runs": runs[name]}
            if args.profile:
                summary["profile"] = launch(layout, data, batch, args.epochs, args.steps, args,
                                            tmp, kind="profile")
                print(f"  layout {name} profile run done", flush=True)
    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(f"\n1-minute load average: {info['load_avg_1min']} at the start, "
          f"{results['load_avg_1min_end']} at the end ({info['cores']} cores)")
    print(report(results))
    common.write_json(args.json, results)
    return 0


def _headline(name, r):
    return f"{r['samples_per_s']:8.0f} samples/s (loss {r['train_loss']:.4f})"


def report(results) -> str:
    lay = results["layouts"]
    rows = [[name, r["ranks"], r["threads"], f"{r['samples_per_s']:.0f}"]
            for name, r in lay.items()]
    lines = [common.table(["layout", "ranks", "threads/rank", "samples/s"], rows)]
    if all("profile" in r for r in lay.values()):
        lines.append("\n" + profile_table(lay))
    lines.append("\ntargets:")
    pairs = [(name, f"{r['threads']}x1") for name, r in lay.items()
             if r["ranks"] == 1 and r["threads"] > 1]
    for threaded, ranked in pairs:
        if ranked not in lay:
            lines.append(f"  {threaded} against {ranked}: not measured (add {ranked} to --layouts)")
            continue
        ratio = lay[threaded]["samples_per_s"] / lay[ranked]["samples_per_s"]
        lines.append(f"  {threaded} >= {TARGET_LAYOUT_RATIO}x {ranked} samples/s: {ratio:.2f}x  "
                     f"{common.verdict(ratio >= TARGET_LAYOUT_RATIO)}")
    if not pairs:
        lines.append("  none: the target compares a 1xT layout with Tx1")
    return "\n".join(lines)


def profile_table(lay) -> str:
    """Milliseconds per step by phase, from each layout's stopwatched run."""
    kernels = ("bias_act_forward", "softmax_xent", "act_backward", "sgd_update")
    phases = [("data gather", lambda p, k: p["data_s"])]
    phases += [(name, lambda p, k, name=name: k.get(name, 0.0)) for name in kernels]
    phases += [("GEMMs + Python glue", lambda p, k: p["compute_s"] - sum(k.values())),
               ("gradient Allreduce (+ waiting)", lambda p, k: p["comm_s"]),
               ("whole step", lambda p, k: p["epoch_s"])]
    rows = [[what] + [f"{get(r['profile']['per_step_ms'], r['profile']['kernel_ms']):.2f}"
                      for r in lay.values()] for what, get in phases]
    return ("ms per step (kernels behind a stopwatch, averaged over ranks; epochs after the "
            "first):\n" + common.table(["phase"] + list(lay), rows))
