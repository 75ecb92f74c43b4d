"""The prediction file: one CSV row per input row, ``prediction`` then, for models that
give them, ``prob_0, prob_1, ...``.

Every rank formats its own rows and writes them at its own offset of the one file, so
no rank ever holds or formats more than its share, at any number of ranks:

* rank 0 creates a temporary file beside the output and writes the header;
* each rank learns its byte offset (the text lengths of the ranks before it) and writes
  its text there; the ranks' rows are contiguous and in rank order, so the file is in
  input order;
* once every rank has written and flushed, rank 0 renames the file into place. A
  reader sees the whole file or none of it, and a failure anywhere leaves nothing.

The output folder must be one that every rank sees (a shared file system), as for
checkpoints. A rank that cannot find rank 0's temporary file says so instead of
writing to a file of the same name on its own node.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import fsync_dir, temporary_beside


def prediction_header(probs) -> str:
    cols = ["prediction"]
    if probs is not None:
        cols += [f"prob_{c}" for c in range(probs.shape[1])]
    return ",".join(cols) + "\n"


def format_predictions(labels, probs, classifier) -> str:
    buf = io.StringIO()
    if probs is None:
        np.savetxt(buf, labels[:, None], fmt="%d" if classifier else "%.10g", delimiter=",")
    else:
        fmt = ["%d"] + ["%.6g"] * probs.shape[1]
        np.savetxt(buf, np.column_stack([labels, probs]), fmt=fmt, delimiter=",")
    return buf.getvalue()


def write_in_rank_order(path, header: bytes, text: bytes, comm):
    """Collective: write ``header`` then every rank's ``text``, in rank order, to
    ``path``, each rank writing its own part; the file appears whole or not at all."""
    path = Path(path)
    offset = len(header) + comm.exscan_int(len(text))
    total = len(header) + comm.allreduce_int(len(text))
    tmp = comm.agreed_on_root(_create, path, header)  # every rank waits for the file
    tmp = comm.bcast_obj(tmp, what="the output's temporary name")
    try:
        comm.agreed(_write_at, tmp, offset, text, path)
        comm.agreed_on_root(_publish, tmp, path, total)
    except BaseException:
        if comm.is_root:
            Path(tmp).unlink(missing_ok=True)
        raise


def _create(path: Path, header: bytes) -> str:
    try:
        fd, tmp = temporary_beside(path)
    except OSError as exc:
        raise UserError(f"Cannot write {path}: {exc.strerror or exc}") from exc
    try:
        os.write(fd, header)
    finally:
        os.close(fd)
    return tmp


def _write_at(tmp: str, offset: int, text: bytes, path: Path):
    try:
        fd = os.open(tmp, os.O_WRONLY)
    except FileNotFoundError:
        raise UserError(f"Cannot write {path}: rank 0 created it in {path.parent}, which "
                        f"this rank does not see; write predictions to a folder on a "
                        f"file system that every node shares") from None
    except OSError as exc:
        raise UserError(f"Cannot write {path}: {exc.strerror or exc}") from exc
    try:
        view, at = memoryview(text), 0
        while at < len(view):  # pwrite may write less than asked (signals, quotas)
            at += os.pwrite(fd, view[at:], offset + at)
        os.fsync(fd)
    except OSError as exc:
        raise UserError(f"Cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path, total: int):
    size = os.path.getsize(tmp)
    if size != total:  # every rank wrote and synced, so anything else is a lost write
        raise UserError(f"Cannot write {path}: the file holds {size} bytes after every "
                        f"rank wrote, not {total}; is {path.parent} on a file system "
                        f"that every node shares?")
    os.replace(tmp, path)
    fsync_dir(path.parent)
