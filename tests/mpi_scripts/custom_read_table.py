"""Run under mpiexec by tests/test_read_table.py: ``mpi_dml.read_table`` on every rank.

    $ mpiexec -n 3 python tests/mpi_scripts/custom_read_table.py OUT PATH[::COL|COL] ...

For each PATH (with ``::`` and names separated by "|", only those columns) every rank
writes ``OUT/<i>.rank<R>.npz``: its ``values``, ``first_row``, ``n_rows`` and
``columns``, and whether ``to_frame()`` gave the same numbers indexed by global row
(``frame_ok``: 1 yes, 0 no, -1 without pandas); or, when read_table raised, the error's
type and message.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import mpi_dml
from mpi_dml.api.run import world


def frame_ok(rows) -> int:
    try:
        frame = rows.to_frame()
    except ImportError:
        return -1
    same = (list(frame.columns) == rows.columns
            and list(frame.index) == list(range(rows.first_row, rows.first_row + len(rows)))
            and np.array_equal(frame.to_numpy(), rows.values))
    return int(same)


def main(out: str, specs: list[str]) -> int:
    rank = world().rank
    for i, spec in enumerate(specs):
        path, _, names = spec.partition("::")
        target = Path(out) / f"{i}.rank{rank}.npz"
        try:
            rows = mpi_dml.read_table(path, columns=names.split("|") if names else None)
        except Exception as exc:
            np.savez(target, error=type(exc).__name__, message=str(exc))
            continue
        np.savez(target, values=rows.values, first_row=rows.first_row, n_rows=rows.n_rows,
                 columns=np.array(rows.columns, dtype=str), frame_ok=frame_ok(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
