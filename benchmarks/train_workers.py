"""The processes bench_train.py launches, and the model arithmetic they share.

Each worker runs on every rank of one launch and rank 0 prints one JSON line:
``mpi_dml`` (the real Engine), ``profile`` (the Engine with stopwatched kernels),
``torch`` (the same MLP under DistributedDataParallel) and ``gemm`` (the step's GEMMs
alone, the roofline). ``validate`` checks, in one process, that mpi_dml and torch
compute the same step before anything is timed.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAYERS = [(784, 512), (512, 512), (512, 10)]  # (n_in, n_out), input to output
N_FEATURES, N_CLASSES = LAYERS[0][0], LAYERS[-1][1]
PER_RANK = 256
LR, MOMENTUM = 0.01, 0.9


# --- the model's arithmetic ---------------------------------------------------------------
def flops_per_sample(layers=LAYERS) -> int:
    """Training FLOPs of one sample: forward, weight gradients, input gradients
    (every layer but the first, whose input gradient is never needed)."""
    dense = sum(2 * a * b for a, b in layers)
    return dense + dense + sum(2 * a * b for a, b in layers[1:])


def step_gemms(batch: int, layers=LAYERS):
    """(name, left shape, right shape, left transposed, right transposed) of every GEMM
    in one step, in the order and memory layout ``Model.loss_grad`` uses."""
    out = [(f"fwd{i} x@W", (batch, a), (a, b), False, False) for i, (a, b) in enumerate(layers)]
    for i in reversed(range(len(layers))):
        a, b = layers[i]
        out.append((f"wgrad{i} x.T@d", (batch, a), (batch, b), True, False))
        if i > 0:
            out.append((f"igrad{i} d@W.T", (batch, b), (a, b), False, True))
    return out


def write_data(path: Path, n_rows: int, seed: int = 0):
    """``n_rows`` of random normal features and a label 0-9 in column "784", as ``.npy``."""
    rng = np.random.default_rng(seed)
    table = np.empty((n_rows, N_FEATURES + 1), dtype=np.float32)
    table[:, :N_FEATURES] = rng.standard_normal((n_rows, N_FEATURES), dtype=np.float32)
    table[:, N_FEATURES] = rng.integers(0, N_CLASSES, n_rows)
    np.save(path, table)


# --- validation -------------------------------------------------------------------------
def validate(seed: int = 0) -> list[str]:
    """Two SGD-momentum steps in both frameworks from identical weights and batches.

    Returns the failed checks (empty when everything agrees).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from mpi_dml.config import TrainConfig
    from mpi_dml.kernels import get, warm_up
    from mpi_dml.models import build_model
    from mpi_dml.algorithms.optimizers import Optimizer

    threadpool_limits(1)
    torch.set_num_threads(1)
    k = get("cpu")
    warm_up("cpu", np.float32)
    model = build_model("mlp", "classification", N_FEATURES, N_CLASSES,
                        [b for _, b in LAYERS[:-1]], "relu")
    params = np.zeros(model.size, dtype=np.float32)
    model.init(params, seed)
    grads = np.zeros_like(params)
    cfg = TrainConfig(optimizer="sgd", lr=LR, momentum=MOMENTUM, dtype="float32")
    opt = Optimizer(cfg, model.decay_mask(), k)

    net = torch_mlp()
    with torch.no_grad():
        for lin, (w, b) in zip(linear_layers(net), model.views(params)):
            lin.weight.copy_(torch.from_numpy(w.T.copy()))  # torch stores (n_out, n_in)
            lin.bias.copy_(torch.from_numpy(b))
    topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    rng = np.random.default_rng(seed + 1)
    failures = []

    def close(name, mine, theirs, tol):
        err = float(np.max(np.abs(mine - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))
        if not err <= tol:
            failures.append(f"{name}: relative difference {err:.2e} > {tol:g}")
        return err

    worst = {}
    for step in range(2):
        x = rng.standard_normal((PER_RANK, N_FEATURES), dtype=np.float32)
        y = rng.integers(0, N_CLASSES, PER_RANK)
        loss_sum, _ = model.loss_grad(params, grads, x, y, k)
        grads *= np.float32(1.0 / PER_RANK)  # loss_grad sums; the trainer divides by the count
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        worst[f"loss step {step}"] = close(f"loss step {step}", np.array(loss_sum / PER_RANK),
                                           np.array(loss.item()), 1e-5)
        for lin, (gw, gb) in zip(linear_layers(net), model.views(grads)):
            worst[f"grad step {step}"] = max(
                worst.get(f"grad step {step}", 0.0),
                close(f"weight grad step {step}", gw, lin.weight.grad.numpy().T, 1e-4),
                close(f"bias grad step {step}", gb, lin.bias.grad.numpy(), 1e-4))
        opt.step(params, grads, LR)
        topt.step()
    velocity = model.views(opt.state["velocity"])
    for i, (lin, (w, b), (vw, vb)) in enumerate(zip(linear_layers(net), model.views(params), velocity)):
        worst["velocity"] = max(worst.get("velocity", 0.0),
                                close(f"layer {i} weight velocity", vw,
                                      topt.state[lin.weight]["momentum_buffer"].numpy().T, 1e-4),
                                close(f"layer {i} bias velocity", vb,
                                      topt.state[lin.bias]["momentum_buffer"].numpy(), 1e-4))
        worst["params"] = max(worst.get("params", 0.0),
                              close(f"layer {i} weight", w, lin.weight.detach().numpy().T, 1e-5),
                              close(f"layer {i} bias", b, lin.bias.detach().numpy(), 1e-5))
    print("validation (2 SGD-momentum steps, batch 256, identical start), worst relative "
          "difference mpi_dml vs torch:")
    print("  " + ", ".join(f"{key} {v:.1e}" for key, v in worst.items()))
    return failures


def torch_mlp(layers=LAYERS):
    import torch.nn as nn

    mods = []
    for i, (a, b) in enumerate(layers):
        mods.append(nn.Linear(a, b))
        if i < len(layers) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def linear_layers(net):
    import torch.nn as nn

    return [m for m in net if isinstance(m, nn.Linear)]


# --- workers (one process per rank, under mpiexec) -----------------------------------------
def worker_mpi_dml(args):
    """The engine as users run it: TrainConfig -> Engine.fit(); figures from metrics.jsonl."""
    from mpi_dml.parallel.comm import Comm, install_abort_hook
    from mpi_dml.engine import Engine

    install_abort_hook()
    comm = Comm.world()
    Engine(_engine_config(args, comm), comm=comm).fit()
    if comm.is_root:
        print(json.dumps(common.training_summary(args.out)))


class _TimedKernels:
    """The cpu kernel module with a stopwatch on every call (seconds of each call, by name)."""

    def __init__(self, kernels):
        self._k = kernels
        self.seconds = {}

    def __getattr__(self, name):
        fn = getattr(self._k, name)

        def timed(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            self.seconds.setdefault(name, []).append(time.perf_counter() - t0)
            return out
        return timed


def worker_profile(args):
    """Where an mpi_dml step's time goes, from the real Engine run.

    The Engine is given the cpu kernels behind a stopwatch (its ``kernels=`` argument);
    its own timers give data gathering and the gradient Allreduce (including waiting for
    the slowest rank). What remains of the compute time is the GEMMs plus Python glue.
    """
    from mpi_dml.parallel.comm import Comm, install_abort_hook
    from mpi_dml.kernels import get, warm_up
    from mpi_dml.engine import Engine

    install_abort_hook()
    comm = Comm.world()
    warm_up("cpu", np.float32)  # what the Engine does when it picks the kernels itself
    k = _TimedKernels(get("cpu"))
    cfg = _engine_config(args, comm)
    Engine(cfg, comm=comm, kernels=k).fit()
    # Every epoch makes the same calls, so the first epoch's are the first 1/epochs of each list.
    timed_steps = (cfg.epochs - 1) * args.steps
    kernel_ms = {name: 1e3 * sum(s[len(s) // cfg.epochs:]) / timed_steps
                 for name, s in k.seconds.items()}
    kernel_ms = comm.allgather(kernel_ms)
    if comm.is_root:
        records = [json.loads(line) for line in open(Path(args.out) / "metrics.jsonl")][1:]
        per_step = {key: 1e3 * sum(r[key] for r in records) / timed_steps
                    for key in ("epoch_s", "compute_s", "comm_s", "data_s")}
        mean_k = {name: float(np.mean([d[name] for d in kernel_ms])) for name in kernel_ms[0]}
        print(json.dumps({"per_step_ms": per_step, "kernel_ms": mean_k,
                          "note": "epochs after the first; kernels averaged over ranks, "
                                  "Engine timers are max over ranks"}))


def _engine_config(args, comm):
    """256 rows a rank and one thread, or ``--batch`` (global) rows and ``--rank-threads``
    (the thread layouts' runs); shards = the global batch, so each batch is one round."""
    from mpi_dml.config import TrainConfig

    batch = getattr(args, "batch", None) or PER_RANK * comm.size
    return TrainConfig(
        data=args.data, label_column=str(N_FEATURES), out=args.out, model="mlp",
        hidden=tuple(b for _, b in LAYERS[:-1]), activation="relu", num_classes=N_CLASSES,
        optimizer="sgd", lr=LR, momentum=MOMENTUM, batch_size=batch,
        epochs=args.epochs, seed=0, dtype="float32", shards=batch,
        threads=getattr(args, "rank_threads", None) or 1, progress="none")


def worker_torch(args):
    """The same MLP under torch DDP (gloo): each epoch timed the same way as the Engine's."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    rank, size = mpi_rank_size()
    dist.init_process_group("gloo", init_method=f"tcp://{args.master_addr}:{args.port}",
                            rank=rank, world_size=size)
    try:
        table = np.load(args.data, mmap_mode="r")
        lo, hi = rank * table.shape[0] // size, (rank + 1) * table.shape[0] // size
        x = torch.from_numpy(np.ascontiguousarray(table[lo:hi, :N_FEATURES], dtype=np.float32))
        y = torch.from_numpy(table[lo:hi, N_FEATURES].astype(np.int64))
        torch.manual_seed(0)
        model = DistributedDataParallel(torch_mlp())  # broadcasts rank 0's weights
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(1000 + rank)
        steps = x.shape[0] // PER_RANK
        per_epoch = []
        for _ in range(args.epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            loss_sum = torch.zeros(())
            start = time.perf_counter()
            for step in range(steps):
                idx = perm[step * PER_RANK:(step + 1) * PER_RANK]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
            wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            per_epoch.append(steps * PER_RANK * size / wall.item())
        total = torch.stack([loss_sum])
        dist.all_reduce(total)
        if rank == 0:
            print(json.dumps({"samples_per_s": common.median(per_epoch[1:]),
                              "epochs_samples_per_s": per_epoch,
                              "train_loss": total.item() / size / steps,
                              "threads": torch.get_num_threads()}))
        del model  # the DDP reducer holds the process group
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Gloo's threads can still be joinable when the interpreter's C++ statics are destroyed,
    # which aborts about one run in twenty ("terminate called without an active
    # exception"); everything is reported by now, so leave without that teardown.
    sys.stdout.flush()
    os._exit(0)


def mpi_rank_size() -> tuple[int, int]:
    """Rank and size from MPICH hydra's PMI variables (Open MPI's and Slurm's as fallbacks),
    so the torch workers never initialise MPI themselves."""
    for r, s in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                 ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def worker_gemm(args):
    """Every rank runs the step's GEMMs at once (as in training); rank 0 reports."""
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    world = MPI.COMM_WORLD
    rng = np.random.default_rng(world.Get_rank())
    ops = []
    for name, sa, sb, ta, tb in step_gemms(PER_RANK):
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)  # views, as the engine passes them
        ops.append((name, a, b, np.empty((a.shape[0], b.shape[1]), dtype=np.float32)))
    flops = [2 * a.shape[0] * a.shape[1] * b.shape[1] for _, a, b, _ in ops]
    for _, a, b, out in ops:
        np.matmul(a, b, out=out)
    per_rep, per_op = [], np.zeros(len(ops))
    for _ in range(args.gemm_reps):
        world.Barrier()
        t_ops = np.zeros(len(ops))
        for _ in range(args.gemm_iters):
            for j, (_, a, b, out) in enumerate(ops):
                t0 = time.perf_counter()
                np.matmul(a, b, out=out)
                t_ops[j] += time.perf_counter() - t0
        per_rep.append(t_ops.sum() / args.gemm_iters)
        per_op += t_ops
    rate = sum(flops) / common.median(per_rep) / 1e9
    rates = world.gather(rate, root=0)
    ops_rate = world.gather([f / (t / (args.gemm_reps * args.gemm_iters)) / 1e9
                             for f, t in zip(flops, per_op)], root=0)
    if world.Get_rank() == 0:
        print(json.dumps({"gflops_per_rank": float(np.mean(rates)), "gflops_ranks": rates,
                          "per_gemm": {name: float(np.mean([r[j] for r in ops_rate]))
                                       for j, (name, *_) in enumerate(ops)}}))


# --- driver -----------------------------------------------------------------------------
