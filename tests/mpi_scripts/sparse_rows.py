"""Rank r holds r*7 + 3 rows of one CSR matrix and reads the contiguous chunk that
``chunk`` gives rank r + 1; writes what it got for the test to compare."""
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mpi_dml.data import sharding
from mpi_dml.data.arrays import SparseArrayTable
from mpi_dml.data.labels import read_sparse_split
from mpi_dml.parallel.comm import Comm

out = Path(sys.argv[1])
comm = Comm.world()
held = [r * 7 + 3 for r in range(comm.size)]
rng = np.random.default_rng(5)
x = sp.random(sum(held), 50, density=0.1, format="csr", random_state=rng)
y = rng.integers(0, 3, x.shape[0]).astype(np.float64)
if comm.is_root:
    sp.save_npz(out / "x.npz", x)
    np.save(out / "y.npy", y)
start = sum(held[:comm.rank])
table = SparseArrayTable(x[start:start + held[comm.rank]], y[start:start + held[comm.rank]],
                         comm)
lo, hi = sharding.chunk(table.n_rows, (comm.rank + 1) % comm.size, comm.size)
split = read_sparse_split(table, lo, hi, dtype=np.float64)
(out / f"rank{comm.rank}.json").write_text(json.dumps(
    {"lo": lo, "hi": hi, "dense": split.x.toarray().ravel().tolist(), "y": split.y.tolist()}))
