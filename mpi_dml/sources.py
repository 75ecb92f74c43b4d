"""Partitioned readers for tables stored as CSV, ``.npy`` or ``.npz`` files.

Every rank reads only its own part of a file; no rank ever holds the whole dataset.
Opening and reading are both collectives:

    >>> table = open_table("data.csv", comm)   # every rank learns columns and n_rows
    >>> block = table.read(lo, hi)             # each rank passes its own rows [lo, hi)

``read`` returns a float64, C-contiguous array of shape ``(hi - lo, len(columns))``.
Ranks may ask for any rows, an empty range included; every rank must call it.

How each format is split:

* CSV: the bytes after the header are cut into ``comm.size`` equal byte ranges. Each
  rank scans only its range and counts the lines that *start* in it, which gives the
  global row count (sum) and each range's first global row (exclusive scan). To read,
  the ranks learn the byte offsets of every requested boundary row from whichever rank
  owns that row's first byte, then each rank reads and parses just its own bytes.
* ``.npy``: memory-mapped, so a rank only touches the pages of its rows.
* ``.npz``: members stored uncompressed (``np.savez``) are memory-mapped at their data
  offset inside the zip; compressed members (``np.savez_compressed``) are decompressed
  as a stream, keeping only the wanted rows.

Anything that can fail on some ranks only (a bad cell, an unreadable file) runs under
``Comm.agreed`` before the next collective, so one failing rank never leaves the others
waiting: every rank raises the same ``AgreedError``.
"""
from __future__ import annotations

import collections
import contextlib
import io
import operator
import os
import struct
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import UserError

# Bytes read at a time while looking for line starts in a CSV byte range.
_SCAN_BLOCK = 1 << 24
# Bytes of whole lines handed to the CSV parser at a time; bounds the text held in
# memory next to the parsed rows.
_PARSE_BLOCK = 1 << 26
# A CSV range remembers the byte offset of every this-many-th line start, so finding
# a row later rescans at most this many lines instead of the whole range, while the
# index stays tiny even for huge files.
_INDEX_STRIDE = 1 << 14

_NEWLINE = ord("\n")
_WHITESPACE = b" \t\r\n"
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: all convert to float64 exactly enough


def open_table(path, comm) -> "Table":
    """Collective: open a table, learning its columns and global row count.

    ``.npy`` and ``.npz`` files are read as NumPy arrays; anything else is read as CSV.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    cls = {".npy": NpyTable, ".npz": NpzTable}.get(suffix, CsvTable)
    return cls.open(path, comm)


class Table:
    """Columns and row count of one data file, readable in row ranges by every rank."""

    def __init__(self, path: str, comm, columns: list[str], n_rows: int):
        self.path = path
        self.comm = comm
        self.columns = columns
        self.n_rows = n_rows

    @classmethod
    def open(cls, path: str, comm) -> "Table":
        raise NotImplementedError

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Collective: global rows ``lo .. hi-1`` of every column, as float64."""
        lo, hi = operator.index(lo), operator.index(hi)
        # Every rank sees every request, so a bad range fails the same way everywhere
        # and formats that need to cooperate (CSV) know all boundaries.
        ranges = self.comm.allgather((lo, hi))
        for rank, (r_lo, r_hi) in enumerate(ranges):
            if not 0 <= r_lo <= r_hi <= self.n_rows:
                raise ValueError(
                    f"rank {rank} asked for rows [{r_lo}, {r_hi}) of {self.path}, "
                    f"which has {self.n_rows} rows"
                )
        return self._read(lo, hi, ranges)

    def _read(self, lo: int, hi: int, ranges: list) -> np.ndarray:
        raise NotImplementedError

    def _new_block(self, lo: int, hi: int) -> np.ndarray:
        return np.empty((hi - lo, len(self.columns)), dtype=np.float64)

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self.columns)} columns, {self.n_rows} rows)"


# --- files ----------------------------------------------------------------------------
def _check_file(path: str) -> int:
    """Size of ``path``, or a UserError saying why it cannot be a data file."""
    if not os.path.exists(path):
        raise UserError(f"No such file: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a data file")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise UserError(f"{path} is empty")
    return size


@contextlib.contextmanager
def _reading(path: str):
    """Open ``path`` for binary reading; I/O failures become UserErrors."""
    try:
        with open(path, "rb") as f:
            yield f
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _changed(path: str) -> UserError:
    return UserError(f"{path} changed while it was being read")


# --- CSV ------------------------------------------------------------------------------
@dataclass
class _CsvLayout:
    """Where things are in a CSV file, as seen by one rank."""

    columns: list[str]
    file_size: int
    data_start: int  # first byte after the header line
    data_end: int  # one past the last non-blank byte; trailing blank lines lie beyond
    begin: int  # this rank's byte range [begin, end) of the data
    end: int
    count: int  # lines starting in [begin, end)
    stride: int  # checkpoints[k] is the offset of local line k * stride
    checkpoints: np.ndarray


class CsvTable(Table):
    """A comma-separated file of numbers under a header line of column names."""

    def __init__(self, path, comm, layout: _CsvLayout, first_row: int, n_rows: int):
        super().__init__(path, comm, layout.columns, n_rows)
        self._layout = layout
        self._first_row = first_row  # global index of the first line in our range

    @classmethod
    def open(cls, path, comm):
        layout = comm.agreed(_scan_csv, path, comm.rank, comm.size)
        first_row = comm.exscan_int(layout.count)
        n_rows = comm.allreduce_int(layout.count)
        return cls(path, comm, layout, first_row, n_rows)

    def _read(self, lo, hi, ranges):
        boundaries = sorted({row for r_lo, r_hi in ranges if r_lo < r_hi for row in (r_lo, r_hi)})
        if not boundaries:  # every rank asked for nothing; all ranks agree on that
            return self._new_block(lo, hi)
        # Each boundary row starts in exactly one rank's byte range; that rank fills in
        # its offset and the rest leave -1, so a max-reduction shares all of them.
        offsets = self.comm.agreed(self._boundary_offsets, boundaries)
        self.comm.allreduce_(offsets, op="max")
        if lo == hi:
            start = stop = 0
        else:
            start, stop = (int(offsets[boundaries.index(row)]) for row in (lo, hi))
        return self.comm.agreed(self._parse_rows, lo, hi, start, stop)

    def _boundary_offsets(self, rows: list[int]) -> np.ndarray:
        layout = self._layout
        offsets = np.full(len(rows), -1, dtype=np.int64)
        mine = range(self._first_row, self._first_row + layout.count)
        with _reading(self.path) as f:
            self._check_unchanged(f)
            for i, row in enumerate(rows):
                if row == self.n_rows:
                    offsets[i] = layout.data_end
                elif row in mine:
                    offsets[i] = _find_line_start(f, layout, row - self._first_row)
        return offsets

    def _check_unchanged(self, f):
        if os.fstat(f.fileno()).st_size != self._layout.file_size:
            raise _changed(self.path)

    def _parse_rows(self, lo: int, hi: int, start: int, stop: int) -> np.ndarray:
        out = self._new_block(lo, hi)
        if lo == hi:
            return out
        row = lo
        with _reading(self.path) as f:
            self._check_unchanged(f)
            for piece in _whole_line_pieces(f, start, stop):
                # Pieces end with a newline, except the file's last line.
                n = piece.count(b"\n") + (not piece.endswith(b"\n"))
                if row + n > hi:
                    raise _changed(self.path)
                out[row - lo : row - lo + n] = self._parse_piece(piece, row, n)
                row += n
        if row != hi:
            raise _changed(self.path)
        return out

    def _parse_piece(self, piece: bytes, first_row: int, n: int) -> np.ndarray:
        """Parse ``n`` whole lines at C speed; on failure, name the first bad line."""
        ncols = len(self.columns)
        values = _loadtxt(piece)
        if values is not None and values.shape == (n, ncols):
            return values
        lines = piece.split(b"\n")
        if piece.endswith(b"\n"):
            lines.pop()
        bad = _first_bad_line(lines, ncols)
        line_number = first_row + bad + 2  # 1-based, and the header is line 1
        raise UserError(f"{self.path} line {line_number}: {_describe_bad_line(lines[bad], self.columns)}")


def _scan_csv(path: str, rank: int, size: int) -> _CsvLayout:
    """Read the header, find the data region, and index this rank's byte range."""
    file_size = _check_file(path)
    with _reading(path) as f:
        header, data_start = _read_header_line(f)
        columns = _parse_header(header, path)
        data_end = _find_data_end(f, data_start, file_size)
        span = data_end - data_start
        begin = data_start + span * rank // size
        end = data_start + span * (rank + 1) // size
        count, checkpoints = _index_lines(f, begin, end, data_start, _INDEX_STRIDE)
    return _CsvLayout(columns, file_size, data_start, data_end, begin, end, count,
                      _INDEX_STRIDE, checkpoints)


def _read_header_line(f) -> tuple[bytes, int]:
    """The first line (without its newline) and the offset just past it."""
    parts = []
    while True:
        block = f.read(1 << 16)
        newline = block.find(b"\n")
        if newline >= 0:
            parts.append(block[:newline])
            header = b"".join(parts)
            return header, len(header) + 1
        if not block:  # a header with no newline: the file has no data lines
            header = b"".join(parts)
            return header, len(header)
        parts.append(block)


def _parse_header(raw: bytes, path: str) -> list[str]:
    try:
        text = raw.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError:
        raise UserError(f"{path} line 1: the header is not UTF-8 text") from None
    text = text.rstrip("\r")
    if not text.strip():
        raise UserError(f"{path} line 1 should be a header of comma-separated column names, but it is blank")
    names = [_unquote(cell) for cell in text.split(",")]
    for i, name in enumerate(names, start=1):
        if not name:
            raise UserError(f"{path} line 1: column {i} of the header has an empty name")
    repeated = [name for name, k in collections.Counter(names).items() if k > 1]
    if repeated:
        listed = ", ".join(repr(name) for name in repeated)
        raise UserError(f"{path} line 1: column names must be unique, but {listed} appear more than once")
    return names


def _unquote(cell: str) -> str:
    name = cell.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].strip()
    return name


def _find_data_end(f, data_start: int, file_size: int) -> int:
    """Offset just past the last non-whitespace byte, so trailing blank lines are ignored."""
    pos = file_size
    while pos > data_start:
        step = min(1 << 16, pos - data_start)
        f.seek(pos - step)
        kept = f.read(step).rstrip(_WHITESPACE)
        if kept:
            return pos - step + len(kept)
        pos -= step
    return data_start


def _line_starts(f, begin: int, end: int, data_start: int):
    """Yield, block by block, arrays of the offsets in [begin, end) where a line starts.

    A line starts at ``data_start`` and right after every newline. Looking at the
    newlines in [begin - 1, end - 1) finds exactly the starts in [begin, end).
    """
    if begin >= end:
        return
    if begin == data_start:
        yield np.array([begin], dtype=np.int64)
    pos, stop = max(begin - 1, data_start), end - 1
    while pos < stop:
        f.seek(pos)
        block = f.read(min(_SCAN_BLOCK, stop - pos))
        if not block:
            raise _changed(f.name)
        newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE)
        yield newlines.astype(np.int64) + (pos + 1)
        pos += len(block)


def _index_lines(f, begin: int, end: int, data_start: int, stride: int):
    """Count the lines starting in [begin, end) and keep every ``stride``-th start."""
    count, marks = 0, []
    for starts in _line_starts(f, begin, end, data_start):
        marks.append(starts[(-count) % stride :: stride])
        count += len(starts)
    checkpoints = np.concatenate(marks) if marks else np.empty(0, dtype=np.int64)
    return count, checkpoints


def _find_line_start(f, layout: _CsvLayout, local_line: int) -> int:
    """Byte offset of the ``local_line``-th line starting in this rank's range."""
    skip = local_line % layout.stride
    base = int(layout.checkpoints[local_line // layout.stride])
    for starts in _line_starts(f, base, layout.end, layout.data_start):
        if skip < len(starts):
            return int(starts[skip])
        skip -= len(starts)
    raise _changed(f.name)


def _whole_line_pieces(f, start: int, stop: int):
    """Yield the bytes [start, stop) in pieces of whole lines, about _PARSE_BLOCK each."""
    f.seek(start)
    pos, carry = start, b""
    while pos < stop:
        block = f.read(min(_PARSE_BLOCK, stop - pos))
        if not block:
            raise _changed(f.name)
        pos += len(block)
        data = carry + block
        if pos >= stop:
            yield data
            return
        cut = data.rfind(b"\n") + 1  # 0 when a line is longer than the block: keep reading
        carry = data[cut:]
        if cut:
            yield data[:cut]


def _loadtxt(text: bytes):
    """Numbers in ``text`` as a 2-D float64 array, or None if numpy cannot parse them.

    numpy skips fully blank lines, so callers compare the row count with the lines
    they handed in.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data" for blank-only text
        try:
            return np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64,
                              ndmin=2, comments=None)
        except ValueError:
            return None


def _lines_parse(lines: list[bytes], ncols: int) -> bool:
    values = _loadtxt(b"\n".join(lines) + b"\n")
    return values is not None and values.shape == (len(lines), ncols)


def _first_bad_line(lines: list[bytes], ncols: int) -> int:
    """Index of the first line that does not parse, given that not all of them do.

    Lines parse independently, so if the left half parses the fault is in the right
    half. Halving costs about twice one parse of the text, unlike a line-by-line loop.
    """
    lo, hi = 0, len(lines)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _lines_parse(lines[lo:mid], ncols):
            lo = mid
        else:
            hi = mid
    return lo


def _describe_bad_line(raw: bytes, columns: list[str]) -> str:
    text = raw.decode("utf-8", errors="replace")
    if text.endswith("\r"):
        text = text[:-1]
    if not text.strip():
        return "blank line (blank lines are allowed only at the end of the file)"
    cells = text.split(",")
    if len(cells) != len(columns):
        return f"expected {len(columns)} comma-separated values (as in the header), found {len(cells)}"
    for name, cell in zip(columns, cells):
        if not cell.strip():
            return f"column {name!r} is empty"
        if not _lines_parse([cell.encode("utf-8")], 1):
            return f"column {name!r} holds {cell.strip()!r}, which is not a number"
    return f"could not read the line as {len(columns)} numbers"


# --- .npy -----------------------------------------------------------------------------
class NpyTable(Table):
    """A 2-D numeric array (columns "0", "1", ...) or a 1-D structured array."""

    @classmethod
    def open(cls, path, comm):
        columns, n_rows = comm.agreed(_inspect_npy, path)
        return cls(path, comm, columns, n_rows)

    def _read(self, lo, hi, ranges):
        return self.comm.agreed(self._read_rows, lo, hi)

    def _read_rows(self, lo: int, hi: int) -> np.ndarray:
        out = self._new_block(lo, hi)
        if lo == hi:
            return out
        array = _map_npy(self.path)
        if array.dtype.names:
            for j, name in enumerate(array.dtype.names):
                out[:, j] = array[name][lo:hi]
        else:
            out[...] = array[lo:hi]
        return out


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
    _check_file(path)
    array = _map_npy(path)
    dtype = array.dtype
    if dtype.names and array.ndim == 1:
        for name in dtype.names:
            field = dtype.fields[name][0]
            if field.shape or field.kind not in _NUMERIC_KINDS:
                raise UserError(f"{path}: field {name!r} holds {field}, not a single number per row")
        return list(dtype.names), array.shape[0]
    if not dtype.names and array.ndim == 2 and dtype.kind in _NUMERIC_KINDS:
        return [str(j) for j in range(array.shape[1])], array.shape[0]
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
    """One 2-D feature array plus 1-D numeric arrays of the same length (targets)."""

    def __init__(self, path, comm, columns, n_rows, members: list[_Member]):
        super().__init__(path, comm, columns, n_rows)
        self._members = members  # the feature array first, then the 1-D columns

    @classmethod
    def open(cls, path, comm):
        columns, n_rows, members = comm.agreed(_inspect_npz, path)
        return cls(path, comm, columns, n_rows, members)

    def _read(self, lo, hi, ranges):
        return self.comm.agreed(self._read_rows, lo, hi)

    def _read_rows(self, lo: int, hi: int) -> np.ndarray:
        out = self._new_block(lo, hi)
        if out.size == 0:
            return out
        col = 0
        with _npz_errors(self.path), zipfile.ZipFile(self.path) as zf:
            for member in self._members:
                block = out[:, col : col + member.width]
                if member.file_offset is not None:
                    _copy_mapped(self.path, member, lo, hi, block)
                else:
                    _copy_streamed(zf, member, lo, hi, block)
                col += member.width
        return out


@contextlib.contextmanager
def _npz_errors(path: str):
    try:
        yield
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc})") from exc


def _inspect_npz(path: str):
    _check_file(path)
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
