"""What a run leaves in ``--out`` besides checkpoints, written by rank 0 alone.

* ``ranks.json``: each rank's host and PID, since launchers report a dead process by
  host and PID (mpiexec) or task number (srun), never by rank.
* ``metrics.jsonl``: one line per finished period, rewritten whole by atomic rename
  after each one, so a reader never sees part of a line and a symlink there is
  replaced rather than followed.
* ``PREEMPTED``: the run stopped cleanly on a signal (for job scripts; srun may report
  a rank killed on its way out instead of 75).
* ``model.safetensors`` and ``model.json`` at the end (``io.model_files``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..io.atomic import atomic_write

PREEMPTED_MARK = "PREEMPTED"


def check_out_dir(path):
    """``--out`` must be a folder, or a path where one can be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if not out.exists() and (parent is None or not parent.is_dir()
                             or not os.access(parent, os.W_OK | os.X_OK)):
        raise UserError(f"--out {path} cannot be created: {parent} is not a writable folder")


class RunFolder:
    """``--out`` as rank 0 writes it; every method is rank 0's alone."""

    def __init__(self, path):
        self.path = Path(path)

    def forget_stop(self):
        """An earlier run's marker says nothing about this one."""
        (self.path / PREEMPTED_MARK).unlink(missing_ok=True)

    def start(self, ranks: list, history: list):
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "ranks.json", (json.dumps(ranks, indent=1) + "\n").encode())
        self.write_metrics(history)

    def write_metrics(self, history: list):
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in history)
        atomic_write(self.path / "metrics.jsonl", text.encode())

    def mark_stopped(self, text: str):
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / PREEMPTED_MARK, (text + "\n").encode())
