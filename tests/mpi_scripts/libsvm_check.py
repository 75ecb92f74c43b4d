"""Run under mpiexec by tests/test_libsvm_mpi.py: LIBSVM tables read on every rank.

    $ mpiexec -n 3 python tests/mpi_scripts/libsvm_check.py JOBS.json OUT

JOBS.json is a list of jobs ``{"path", "format", "zero_based", "n_features", "dtype",
"api"}``. For job i every rank writes ``OUT/<i>.rank<R>.npz``: its rows (the CSR
arrays, shape and labels), ``first_row``, ``n_rows``, and where() of its first and last
rows; or, when reading raised, the error's type and message. ``api`` is "read_csr"
(``open_table``, then ``read_csr`` of the rank's ``sharding.chunk``) or "read_table".
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import mpi_dml
from mpi_dml.api.run import world
from mpi_dml.data.formats import open_table, read_csr
from mpi_dml.data.sharding import chunk


def read(job, comm):
    if job["api"] == "read_table":
        rows = mpi_dml.read_table(job["path"], format=job["format"],
                                  zero_based=job["zero_based"], n_features=job["n_features"])
        table = open_table(job["path"], comm, job["format"], job["zero_based"],
                           job["n_features"])
        return rows.values, rows.labels, rows.first_row, table
    table = open_table(job["path"], comm, job["format"], job["zero_based"], job["n_features"])
    lo, hi = chunk(table.n_rows, comm.rank, comm.size)
    x, y = read_csr(table, lo, hi, np.dtype(job["dtype"]))
    return x, y, lo, table


def main(jobs_file: str, out: str) -> int:
    comm = world()
    jobs = json.loads(Path(jobs_file).read_text())
    for i, job in enumerate(jobs):
        target = Path(out) / f"{i}.rank{comm.rank}.npz"
        try:
            x, y, lo, table = read(job, comm)
        except Exception as exc:
            np.savez(target, error=type(exc).__name__, message=str(exc))
            continue
        where = [table.where(lo), table.where(lo + len(y) - 1)] if len(y) else ["", ""]
        np.savez(target, data=x.data, indices=x.indices, indptr=x.indptr, shape=x.shape,
                 sorted=x.has_sorted_indices, y=y, first_row=lo, n_rows=table.n_rows,
                 where=np.array(where, dtype=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
