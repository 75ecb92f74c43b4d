"""Files that appear whole or not at all: write to a temporary name, flush to disk,
rename over the final name, and make the rename itself durable."""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_writer(path, mode: str = "wb"):
    """A file handle whose contents appear at ``path`` only if the block succeeds.

    Data goes to a temporary file beside ``path``, is flushed to disk, then renamed
    over ``path``: a reader sees the whole old file or the whole new one, never part.
    """
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_beside(path) -> tuple[int, str]:
    """(open descriptor, name) of a new temporary file in ``path``'s folder, with the
    permissions a plain open() would give."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); colleagues on a shared cluster should be
    # able to read a model or a prediction file.
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes):
    with atomic_writer(path) as fh:
        fh.write(data)



def fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot sync a directory; their renames are as durable as
        # they get, so carry on rather than fail the run.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)

