"""Checkpoints inside a job: rank 0 reads and writes the file, every rank gets the state.

Only rank 0 touches checkpoint files, so a job resumed on another allocation needs the
file where its rank 0 can read it and nowhere else. The state is broadcast from there:
the small part as one object, the flat buffers with ``Bcast``. Nothing in a checkpoint
depends on the number of ranks, so the job that resumes may have any.

Once rank 0 has accepted the checkpoint, and before the first step, the checkpoints in
``OUT/checkpoints`` that are not on the resumed line (later steps, or another run's) are
moved aside into a subfolder, named in one note: a run that dies before its own first
checkpoint then leaves ``--resume latest`` on the line it resumed. A fresh run whose
``OUT/checkpoints`` already holds checkpoints is refused before anything is written.

    $ mpiexec -n 4 python -m mpi_dml train --config c.toml --out runs/a --resume
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .checkpoint import CheckpointState, load_checkpoint, model_description, save_checkpoint
from .checkpoint_folder import print_note, resolve_resume, set_aside_for_resume
from .compatibility import check_compatible


class Resumed:
    """What every rank learns from the checkpoint it resumes from.

    ``state`` (with the arrays and the history) is rank 0's alone; the step, the
    algorithm's counters, the unfinished period and the standardization are everyone's.
    """

    def __init__(self, path, header: dict, state: CheckpointState | None):
        self.path = path
        self.step = header["step"]
        self.counters = header["counters"]
        self.period = header["period"]
        self.standardize = header["standardize"]
        self.state = state


def find_and_read(cfg, comm) -> Resumed | None:
    """Collective: the checkpoint ``--resume`` names, read on rank 0, or None for a
    fresh start (refused, on every rank, when ``OUT/checkpoints`` holds checkpoints)."""
    path = comm.agreed_on_root(resolve_resume, cfg.resume, cfg.out)
    path = comm.bcast_obj(None if path is None else str(path), what="checkpoint path")
    if path is None:
        return None
    state = comm.agreed_on_root(load_checkpoint, path)
    header = None
    if comm.is_root:
        header = {"step": state.step, "counters": dict(state.counters),
                  "period": dict(state.period), "standardize": state.standardize}
        epoch, step = state.counters.get("epoch"), state.counters.get("step_in_epoch", 0)
        at = ("" if epoch is None else f", in epoch {epoch + 1}" if step
              else f", after epoch {epoch}")
        print(f"mpi_dml: resuming from {path}: {state.step} steps done{at}", file=sys.stderr)
    return Resumed(path, comm.bcast_obj(header, what="checkpoint header"), state)


def check_and_restore(resumed: Resumed, cfg, comm, model, data, algorithm, dev):
    """Collective: refuse an incompatible checkpoint, else move the checkpoints that
    are not on its line aside and give its state to ``algorithm`` on every rank."""
    model_desc = model_description(model, cfg.dtype)
    notes = comm.agreed_on_root(_accept_root, resumed, cfg, model_desc,
                                data_description(data), algorithm)
    if comm.is_root:
        for note in notes or []:
            print_note(note)
    state = resumed.state
    arrays = {}
    for name, target in algorithm.arrays().items():  # the same names and order everywhere
        host = np.empty(target.shape, dtype=target.dtype)
        if comm.is_root:
            host[...] = state.arrays[name]
        arrays[name] = comm.bcast_(host, what=f"checkpoint {name}")
    algorithm.restore(arrays, resumed.counters)


def _accept_root(resumed: Resumed, cfg, model_desc, data_desc, algorithm) -> list[str]:
    notes = check_compatible(resumed.state, cfg, model_desc, data_desc, resumed.path,
                             algorithm)
    # Only an accepted resume moves anything: a refused one leaves the folder as it was.
    moved = set_aside_for_resume(cfg.out, resumed.path, resumed.step)
    return notes + ([moved] if moved else [])


def data_description(data) -> dict:
    names = data.feature_names
    return {"n_features": data.n_features, "n_classes": data.n_classes,
            "n_train": data.n_train, "n_val": data.n_val,
            "feature_names": None if names is None else list(names)}


def write(cfg, comm, folder, state_fn) -> Path | None:
    """Collective: rank 0 builds the state with ``state_fn()`` and writes it.

    A failed write (disk full, quota) stops every rank with one message rather than
    leaving the others waiting for rank 0.
    """
    return comm.agreed_on_root(_write_root, cfg, folder, state_fn)


def _write_root(cfg, folder, state_fn) -> Path:
    try:
        return save_checkpoint(folder, state_fn(), keep=cfg.keep)
    except OSError as exc:
        raise UserError(f"cannot write a checkpoint in {folder}: {exc.strerror or exc}") from None
