"""A run's checkpoints folder: naming, listing, rotation, and what ``--resume`` means.

Checkpoints are ``OUT/checkpoints/ckpt-{step:09d}.safetensors``. Nothing with a later
step than the one being continued is ever deleted: such checkpoints (and the
checkpoints of a run that a resume from another folder replaces) are moved into a
``superseded-*`` subfolder, which the listing does not enter, so ``--resume latest``
continues the resumed run. Rotation deletes only older checkpoints beyond ``--keep``. A
fresh start (no ``--resume``) refuses a folder that already holds checkpoints: they are
another run's, and a crash before the first checkpoint of the new run would otherwise
leave ``--resume auto`` continuing theirs.

    $ python -m mpi_dml train --config c.toml --out runs/a --checkpoint-every 12
    $ python -m mpi_dml train --config c.toml --out runs/a \
          --resume runs/a/checkpoints/ckpt-000000036.safetensors   # moves 48, 60, ... aside
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..io.atomic import fsync_dir

_NAME = re.compile(r"ckpt-(\d{9,})\.safetensors")


# --- writing ------------------------------------------------------------------------
def print_note(message: str):
    print(f"mpi_dml: note: {message}", file=sys.stderr)


def rotate(folder: Path, written: Path, keep: int, note=print_note):
    step = _step_of(written)
    found = list_checkpoints(folder)
    # A checkpoint with a later step than the one just written is from a line that was
    # resumed from an earlier point: left in place, "latest" would undo that resume.
    # Resuming moves them aside first; one found here (a file copied in) gets the same.
    later = [p for p in found if _step_of(p) > step]
    if later:
        note(_moved_note(_move_aside(folder, later, f"superseded-after-step-{step}"),
                         later, f"after step {step}", f"this run has just written step "
                         f"{step}, so they are not on its line"))
    older = [p for p in found if _step_of(p) < step]
    for p in older[:max(len(older) - (keep - 1), 0)]:
        p.unlink(missing_ok=True)
    # Temporary files of a writer killed mid-write; anything older than our own write
    # cannot belong to a writer still running.
    written_ns = written.stat().st_mtime_ns
    for p in folder.glob(".ckpt-*.tmp"):
        try:
            if p.stat().st_mtime_ns < written_ns:
                p.unlink()
        except FileNotFoundError:
            pass


# --- moving another line's checkpoints aside -----------------------------------------
def set_aside_for_resume(out, resumed_from, step: int) -> str | None:
    """Rank 0, once a resume from ``resumed_from`` (at ``step``) is accepted and before
    it trains: move the checkpoints in ``OUT/checkpoints`` that are not on its line into
    a subfolder, so "latest" continues this run and rotation deletes none of them.

    Not on its line: those with a later step when ``resumed_from`` is in that folder;
    all of them when it is elsewhere (another run's, or an abandoned attempt of this
    one). Returns the note that says where they went, or None when nothing moved.
    """
    folder = Path(out) / "checkpoints"
    found = list_checkpoints(folder)
    if not found:
        return None
    resumed_from = Path(resumed_from)
    if _same_folder(resumed_from.parent, folder):
        later = [p for p in found if _step_of(p) > step]
        if not later:
            return None
        dest = _move_aside(folder, later, f"superseded-after-step-{step}")
        return _moved_note(dest, later, f"after step {step}",
                           f"this run continues from {resumed_from.name}; to go back to "
                           f"that line, pass one of them to --resume")
    dest = _move_aside(folder, found, "superseded-other-run")
    return _moved_note(dest, found, "of another run (or of an abandoned attempt)",
                       f"this run resumes from {resumed_from}, in another folder, and "
                       f"writes its own checkpoints here")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _move_aside(folder: Path, paths: list, prefix: str) -> Path:
    """Move ``paths`` into a new subfolder ``PREFIX-<UTC time>`` of ``folder``.

    A rename within one folder's file system: no copy, nothing half-moved on a kill but
    the files not yet renamed, which stay visible where they were.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = None
    try:
        dest = _new_folder(folder, f"{prefix}-{stamp}")
        for p in paths:
            os.rename(p, dest / p.name)
        fsync_dir(dest)
        fsync_dir(folder)
    except OSError as exc:
        if dest is not None:
            with contextlib.suppress(OSError):
                dest.rmdir()  # only if nothing reached it
        span = _span(paths)
        raise UserError(f"Cannot move {span} in {folder} aside into a '{prefix}-...' "
                        f"subfolder ({exc.strerror or exc}), and they must not be deleted: "
                        f"make {folder} writable, or move them out of it yourself, then "
                        f"run again") from None
    return dest


def _new_folder(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name-2``, ``-3``, ... when a set-aside in the same second
    already took it."""
    for n in range(1, 1000):
        dest = folder / (name if n == 1 else f"{name}-{n}")
        try:
            dest.mkdir()
            return dest
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{name}-1 to -999 all exist", str(folder / name))


def _span(paths: list) -> str:
    if len(paths) == 1:
        return f"checkpoint {paths[0].name}"
    return f"{len(paths)} checkpoints ({paths[0].name} to {paths[-1].name})"


def _moved_note(dest: Path, paths: list, which: str, why: str) -> str:
    kept = "it is" if len(paths) == 1 else "they are"
    return (f"moved {_span(paths)} {which} into {dest}/, where {kept} kept but never "
            f"taken as the latest: {why}")


# --- finding ------------------------------------------------------------------------
def _step_of(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def list_checkpoints(folder) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first by step; temporary files and
    subfolders (checkpoints moved aside) excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def latest_checkpoint(folder) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve_resume(resume: str, out: str) -> Path | None:
    """The checkpoint ``--resume`` names, or None for a fresh start.

    "" starts fresh and refuses an OUT/checkpoints that holds checkpoints; "latest"
    takes the newest there and must find one; "auto" takes it if there is one; anything
    else is a checkpoint file, a run folder holding ``checkpoints/``, or a checkpoints
    folder (its newest is used).
    """
    if resume == "":
        found = latest_checkpoint(Path(out) / "checkpoints")
        if found is not None:
            raise UserError(f"--out {out} already holds checkpoints of an earlier run "
                            f"(newest: {found}): pass --resume to continue that run, or "
                            f"choose another --out for a new one")
        return None
    if resume in ("latest", "auto"):
        folder = Path(out) / "checkpoints"
        found = latest_checkpoint(folder)
        if found is None and resume == "latest":
            raise UserError(f"--resume latest: no checkpoint in {folder} to resume from. "
                            f"Use --resume auto to start fresh when there is none.")
        return found
    path = Path(resume)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint file or folder")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = latest_checkpoint(folder)
    if found is None:
        raise UserError(f"--resume {resume}: no checkpoint (ckpt-*.safetensors) in {folder}")
    return found

