"""Run under mpiexec by tests/test_sparse_engine_mpi.py: training on CSR rows against
the same rows given dense, and a resume of sparse training on this rank count.

    $ mpiexec -n 3 python tests/mpi_scripts/sparse_train.py RESULT.json --out DIR \
          [--resume-from PREVIOUS_DIR]

Every rank builds the same rows from fixed seeds (``tests/sparse_training.py``) and
takes its share of whole virtual shards. For each run of ``RUNS_HERE`` the engine trains
once on CSR rows and once on the same rows dense; the runs of ``RESUMED`` also train
with a checkpoint every ``EVERY`` steps into DIR/<run>, and with ``--resume-from``
continue PREVIOUS_DIR/<run>'s checkpoint of step ``EVERY`` (mid-epoch, written at any
rank count) to the end. Rank 0 writes RESULT.json with every run's parameters.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/

import sparse_training as st  # noqa: E402
from mpi_dml.parallel.comm import Comm, install_abort_hook  # noqa: E402

RUNS_HERE = ("sgd_decay_l1", "softmax_momentum", "logistic_adam", "mlp_sgd_decay")
RESUMED = ("sgd_decay_l1", "softmax_momentum")
EVERY = 10  # 7.5 steps an epoch: step 10 is inside the second


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("result")
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume-from", default="")
    args = parser.parse_args()
    install_abort_hook()
    comm = Comm.world()
    data = st.rows()
    result = {"world_size": comm.size, "runs": {}}
    for name in RUNS_HERE:
        sizes = []
        sparse = st.fit(comm, name, data=data, sizes=sizes)
        dense = st.fit(comm, name, dense=True, data=data)
        result["runs"][name] = {"sparse": sparse.params.tolist(), "dense": dense.params.tolist(),
                                "full_size": sparse.model.size, "round_sizes": sizes}
    for name in RESUMED:
        out = Path(args.out) / name
        run = st.fit(comm, name, data=data, out=str(out), checkpoint_every=str(EVERY), keep=100)
        result["runs"][name]["checkpointed"] = run.params.tolist()
        if args.resume_from:
            again = Path(args.out) / f"{name}-resumed"
            if comm.is_root:
                shutil.copytree(Path(args.resume_from) / name, again)
            comm.barrier()
            ckpt = again / "checkpoints" / f"ckpt-{EVERY:09d}.safetensors"
            run = st.fit(comm, name, data=data, out=str(again), resume=str(ckpt), keep=100)
            result["runs"][name]["resumed"] = run.params.tolist()
    if comm.is_root:
        Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
