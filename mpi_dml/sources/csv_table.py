"""CSV tables: byte ranges aligned to line ends, counted then read by their owners."""
from __future__ import annotations

import collections
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .base import Table, changed_error, check_file, reading

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
        with reading(self.path) as f:
            self._check_unchanged(f)
            for i, row in enumerate(rows):
                if row == self.n_rows:
                    offsets[i] = layout.data_end
                elif row in mine:
                    offsets[i] = _find_line_start(f, layout, row - self._first_row)
        return offsets

    def _check_unchanged(self, f):
        if os.fstat(f.fileno()).st_size != self._layout.file_size:
            raise changed_error(self.path)

    def _parse_rows(self, lo: int, hi: int, start: int, stop: int) -> np.ndarray:
        out = self._new_block(lo, hi)
        if lo == hi:
            return out
        row = lo
        with reading(self.path) as f:
            self._check_unchanged(f)
            for piece in _whole_line_pieces(f, start, stop):
                # Pieces end with a newline, except the file's last line.
                n = piece.count(b"\n") + (not piece.endswith(b"\n"))
                if row + n > hi:
                    raise changed_error(self.path)
                out[row - lo : row - lo + n] = self._parse_piece(piece, row, n)
                row += n
        if row != hi:
            raise changed_error(self.path)
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
    file_size = check_file(path)
    with reading(path) as f:
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
            raise changed_error(f.name)
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
    raise changed_error(f.name)


def _whole_line_pieces(f, start: int, stop: int):
    """Yield the bytes [start, stop) in pieces of whole lines, about _PARSE_BLOCK each."""
    f.seek(start)
    pos, carry = start, b""
    while pos < stop:
        block = f.read(min(_PARSE_BLOCK, stop - pos))
        if not block:
            raise changed_error(f.name)
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


