"""``.npy`` (memory-mapped) and ``.npz`` (mapped or streamed members) tables."""
from __future__ import annotations

import collections
import contextlib
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from ...errors import UserError
from .base import Table, check_file

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: all convert to float64 exactly enough

# --- .npy -----------------------------------------------------------------------------
class NpyTable(Table):
    """A 2-D numeric array (columns "0", "1", ...) or a 1-D structured array."""

    @classmethod
    def open(cls, path, comm):
        columns, n_rows, positional = comm.agreed(_inspect_npy, path)
        table = cls(path, comm, columns, n_rows)
        table.positional = positional
        return table

    def _blocks(self, lo, hi, cols, state, max_rows):
        array = _map_npy(self.path)
        every = not array.dtype.names and cols == list(range(array.shape[1]))
        for a in range(lo, hi, max_rows):
            b = min(a + max_rows, hi)
            if every:  # pages of the map, in the file's own number type: no copy here
                yield array[a:b]
            elif array.dtype.names:
                yield np.column_stack([array[array.dtype.names[c]][a:b] for c in cols])
            else:
                yield array[a:b][:, cols]


def _map_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")  # pickles stay refused (allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npy file ({exc})") from exc
    if not isinstance(array, np.ndarray):  # np.load also opens zip archives
        array.close()
        raise UserError(f"{path} is an .npz archive, not an .npy file; name it .npz")
    return array


def _inspect_npy(path: str):
    check_file(path)
    array = _map_npy(path)
    dtype = array.dtype
    if dtype.names and array.ndim == 1:
        for name in dtype.names:
            field = dtype.fields[name][0]
            if field.shape or field.kind not in _NUMERIC_KINDS:
                raise UserError(f"{path}: field {name!r} holds {field}, not a single number per row")
        return list(dtype.names), array.shape[0], False
    if not dtype.names and array.ndim == 2 and dtype.kind in _NUMERIC_KINDS:
        return [str(j) for j in range(array.shape[1])], array.shape[0], True
    raise UserError(
        f"{path} holds a {array.ndim}-D array of {dtype}; expected a 2-D numeric array "
        "(rows, columns) or a 1-D structured array with numeric fields"
    )


# --- .npz -----------------------------------------------------------------------------
@dataclass
class _Member:
    """One array inside an .npz file, and where its data lies."""

    name: str  # the zip member's name, "<key>.npy"
    key: str
    shape: tuple
    dtype: np.dtype
    fortran: bool
    header_len: int  # bytes of .npy header before the data, inside the member
    file_offset: int | None  # absolute offset of the data if stored uncompressed

    @property
    def numeric(self) -> bool:
        return self.dtype.names is None and self.dtype.kind in _NUMERIC_KINDS

    @property
    def width(self) -> int:
        return self.shape[1] if len(self.shape) == 2 else 1


class NpzTable(Table):
    """One 2-D feature array plus 1-D numeric arrays of the same length (labels, and
    anything else, such as row ids or weights, which are features only when named)."""

    def __init__(self, path, comm, columns, n_rows, members: list[_Member]):
        super().__init__(path, comm, columns, n_rows, feature_columns=columns[:members[0].width])
        self._members = members  # the feature array first, then the 1-D columns

    @classmethod
    def open(cls, path, comm):
        columns, n_rows, members = comm.agreed(_inspect_npz, path)
        return cls(path, comm, columns, n_rows, members)

    def _blocks(self, lo, hi, cols, state, max_rows):
        # A compressed member is read as a stream from its start, so it is read in one
        # pass; uncompressed members are mapped, a block at a time.
        if any(m.file_offset is None for m in self._members):
            max_rows = hi - lo
        for a in range(lo, hi, max_rows):
            yield self._read_rows(a, min(a + max_rows, hi), cols)

    def _read_rows(self, lo: int, hi: int, cols: list[int]) -> np.ndarray:
        out = np.empty((hi - lo, len(cols)))
        if out.size == 0:
            return out
        first = 0
        with _npz_errors(self.path), zipfile.ZipFile(self.path) as zf:
            for member in self._members:
                wanted = [(j, c - first) for j, c in enumerate(cols)
                          if first <= c < first + member.width]
                first += member.width
                if not wanted:
                    continue  # members nobody asked for are never read
                j0 = wanted[0][0]
                whole = wanted == [(j0 + k, k) for k in range(member.width)]
                # The whole member, in order: straight into place, with no second copy.
                block = out[:, j0:j0 + member.width] if whole else np.empty((hi - lo, member.width))
                if member.file_offset is not None:
                    _copy_mapped(self.path, member, lo, hi, block)
                else:
                    _copy_streamed(zf, member, lo, hi, block)
                if not whole:
                    for j, k in wanted:
                        out[:, j] = block[:, k]
        return out


@contextlib.contextmanager
def _npz_errors(path: str):
    try:
        yield
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc})") from exc


def _inspect_npz(path: str):
    check_file(path)
    with _npz_errors(path), open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        members = [_read_member(zf, raw, info) for info in zf.infolist()
                   if info.filename.endswith(".npy")]
        by_key = {m.key: m for m in members}
        features = _feature_member(members, by_key, path)
        n_rows = features.shape[0]
        names = _feature_names(zf, by_key.get("feature_names"), features.width, path)
    extra = [m for m in members if m is not features and m.key != "feature_names"
             and len(m.shape) == 1 and m.numeric]
    for m in extra:
        if m.shape[0] != n_rows:
            raise UserError(f"{path}: {m.key!r} has {m.shape[0]} rows but {features.key!r} has {n_rows}")
    columns = names + [m.key for m in extra]
    repeated = [name for name, k in collections.Counter(columns).items() if k > 1]
    if repeated:
        raise UserError(f"{path}: column names must be unique, but {', '.join(map(repr, repeated))} "
                        "appear more than once (feature_names and array keys together)")
    return columns, n_rows, [features] + extra


def _read_member(zf: zipfile.ZipFile, raw, info: zipfile.ZipInfo) -> _Member:
    """Read a member's .npy header and, if stored uncompressed, locate its data."""
    with zf.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"member {info.filename!r} uses .npy format version {version}")
        header_len = stream.tell()
    file_offset = None
    if info.compress_type == zipfile.ZIP_STORED:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size < header_len + nbytes:
            raise ValueError(f"member {info.filename!r} is truncated")
        file_offset = _member_data_start(raw, info) + header_len
    return _Member(info.filename, info.filename[: -len(".npy")], tuple(shape), dtype,
                   fortran, header_len, file_offset)


def _member_data_start(raw, info: zipfile.ZipInfo) -> int:
    """Offset of a member's bytes: after its local header, whose name and extra field
    lengths may differ from those in the central directory."""
    raw.seek(info.header_offset)
    fixed = raw.read(30)
    if len(fixed) != 30 or fixed[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for member {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", fixed[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _feature_member(members: list[_Member], by_key: dict, path: str) -> _Member:
    if "X" in by_key:
        features = by_key["X"]
        if len(features.shape) != 2 or not features.numeric:
            raise UserError(f"{path}: 'X' should be a 2-D numeric array, but it is "
                            f"{len(features.shape)}-D of {features.dtype}")
        return features
    two_d = [m for m in members if len(m.shape) == 2 and m.numeric]
    if len(two_d) != 1:
        found = ", ".join(repr(m.key) for m in two_d) or "none"
        raise UserError(f"{path} should hold one 2-D numeric feature array (or name it 'X'); found {found}")
    return two_d[0]


def _feature_names(zf, member: _Member | None, width: int, path: str) -> list[str]:
    if member is None:
        return [f"x{j}" for j in range(width)]
    if member.dtype.kind not in "US" or member.shape != (width,):
        raise UserError(f"{path}: 'feature_names' should be a 1-D array of {width} strings, "
                        f"but it has shape {member.shape} and type {member.dtype}")
    with zf.open(member.name) as stream:
        values = np.lib.format.read_array(stream, allow_pickle=False)
    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]
    for j, name in enumerate(names):
        if not name.strip():
            raise UserError(f"{path}: feature_names[{j}] is empty")
    return names


def _copy_mapped(path: str, member: _Member, lo: int, hi: int, block: np.ndarray):
    """Copy rows lo..hi-1 of an uncompressed member into ``block`` via a memory map."""
    if block.size == 0:
        return
    array = np.memmap(path, dtype=member.dtype, mode="r", offset=member.file_offset,
                      shape=member.shape, order="F" if member.fortran else "C")
    block[...] = array[lo:hi].reshape(block.shape)


def _copy_streamed(zf, member: _Member, lo: int, hi: int, block: np.ndarray):
    """Copy rows lo..hi-1 of a compressed member, decompressing it as a stream.

    Seeking forward in a compressed member reads and drops bytes in bounded pieces,
    so the earlier rows pass through without being kept.
    """
    if block.size == 0:
        return
    n, width, item = member.shape[0], member.width, member.dtype.itemsize
    if member.fortran and width > 1:
        # Column-major: each column's rows lo..hi-1 are one run of the stream.
        runs = [(j * n + lo, j * n + hi, block[:, j]) for j in range(width)]
    else:
        runs = [(lo * width, hi * width, block)]
    with zf.open(member.name) as stream:
        for first, last, target in runs:
            stream.seek(member.header_len + first * item)
            data = stream.read((last - first) * item)
            if len(data) != (last - first) * item:
                raise ValueError(f"member {member.name!r} is truncated")
            target[...] = np.frombuffer(data, dtype=member.dtype).reshape(target.shape)

