#!/usr/bin/env bash
# The main job, from a fresh checkout: set up, fetch nothing, train on real data, report.
#   bash examples/digits.sh            # 2 ranks
#   RANKS=4 bash examples/digits.sh
# Builds .venv (mpi4py + the MPICH wheel: no system MPI needed), writes scikit-learn's
# handwritten-digits data as CSV under data/, trains softmax regression on RANKS ranks
# into runs/digits, then prints the held-out accuracy as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${RANKS:-2}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[mpich]'
.venv/bin/python -m mpi_dml.data.bundled digits --out data
.venv/bin/mpiexec -n "$RANKS" .venv/bin/python -m mpi_dml train --config examples/digits.toml
.venv/bin/mpiexec -n "$RANKS" .venv/bin/python -m mpi_dml evaluate --model runs/digits \
    --data data/digits_test.csv --label-column label
