"""Run under mpiexec by tests/test_algorithm_contract.py: the engine, unchanged, driving
the test algorithms of ``tests/algorithms_for_tests.py`` (L-BFGS, Lloyd's k-means).

    $ mpiexec -n 3 python tests/mpi_scripts/contract_fit.py RESULT.json \
          [--out DIR --every N] [--resume lbfgs=CKPT] [--resume kmeans=CKPT]

Every rank builds the same data from fixed seeds and hands the engine an uneven, rank
dependent share of the rows (``split_rows``). With ``--out`` each algorithm runs with a
checkpoint every N rounds into DIR/<algorithm>; ``--resume NAME=CKPT`` continues that
algorithm from a checkpoint (written at any rank count). Rank 0 writes RESULT.json:
per algorithm the final parameters, the history, the rounds run, the history length
on every rank and the final metrics. An exception on any rank aborts the job.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the algorithms

import algorithms_for_tests as alg  # noqa: E402
from mpi_dml.api.run import world  # noqa: E402
from mpi_dml.parallel.comm import install_abort_hook  # noqa: E402

FITS = {"lbfgs": alg.fit_lbfgs, "kmeans": alg.fit_kmeans}


def runtime(args, name) -> dict:
    if not args.out:
        return {}
    resume = dict(item.split("=", 1) for item in args.resume)
    return {"out": str(Path(args.out) / name), "checkpoint_every": str(args.every),
            "keep": 1000, "resume": resume.get(name, "")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("result")
    parser.add_argument("--out", default="")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--resume", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--only", default="lbfgs,kmeans")
    args = parser.parse_args()
    install_abort_hook()
    comm = world()
    result = {}
    for name in args.only.split(","):
        engine = FITS[name](comm, **runtime(args, name))
        lengths = comm.allgather(len(engine.history), what="history lengths")
        result[name] = {"params": engine.params.tolist(), "history": engine.history,
                        "rounds": engine.step, "history_lengths": lengths,
                        "final": engine.final, "world_size": comm.size}
    if comm.is_root:
        Path(args.result).write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
