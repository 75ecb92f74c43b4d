"""The Python API on real data: each rank trains on its own rows of scikit-learn's digits.

    $ python examples/digits_api.py
    $ mpiexec -n 4 python examples/digits_api.py
    $ python -m mpi_dml evaluate --model runs/digits_api --data data/digits_test.csv

Every rank takes its own slice of the first 1500 images (rows it alone holds, as on a
cluster where no rank has all the data) and of the rest for testing. ``fit`` and
``score`` are collective; the model, and so the accuracy rank 0 prints, are the same
for any number of ranks. The last line on stdout is one JSON object.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI
from sklearn.datasets import load_digits

import mpi_dml

N_TRAIN = 1500


def main(out: str = "runs/digits_api") -> int:
    mpi_dml.setup_process()  # threads per rank, stops on signals, one rank's error ends all
    comm = MPI.COMM_WORLD
    X, y = load_digits(return_X_y=True)
    mine = np.array_split(np.arange(N_TRAIN), comm.size)[comm.rank]
    held = np.array_split(np.arange(N_TRAIN, len(y)), comm.size)[comm.rank]
    clf = mpi_dml.MLPClassifier(hidden_layer_sizes=(64,), random_state=0)
    clf.fit(X[mine], y[mine])                  # collective
    accuracy = clf.score(X[held], y[held])     # collective: the same on every rank
    clf.save(out)                              # collective: rank 0 writes the model folder
    if comm.rank == 0:
        print(json.dumps({"accuracy": accuracy, "epochs": clf.n_iter_, "model": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
