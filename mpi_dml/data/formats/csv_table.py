"""CSV tables: byte ranges aligned to line ends, counted then read by their owners.

Quoting follows RFC 4180: a cell may be wrapped in double quotes (``"1.5"``, as Excel,
R's ``write.csv`` and many databases write numbers), and a quote inside a quoted
header name is doubled (``"the ""best"" guess"``). Header names may hold commas and line
breaks inside quotes; data cells are numbers, so a data line ends at its newline.
"""
from __future__ import annotations

import collections
import csv
import mmap
from dataclasses import dataclass

import numpy as np

from ...errors import UserError
from .base import Table, changed_error, check_file, file_stamp, reading

# Bytes read at a time while looking for line starts in a CSV byte range.
_SCAN_BLOCK = 1 << 22
# Bytes of whole lines handed to the CSV parser at a time, at most; bounds the text
# (and its parsed block) held in memory next to the rows being filled.
_PARSE_BLOCK = 1 << 24
# A CSV range remembers the byte offset of every this-many-th line start, so finding
# a row later rescans at most this many lines instead of the whole range, while the
# index stays tiny even for huge files.
_INDEX_STRIDE = 1 << 14

# A header record longer than this is not a header: an unclosed quote swallowing data.
_MAX_HEADER = 1 << 24

_NEWLINE = ord("\n")
_WHITESPACE = b" \t\r\n"

@dataclass
class _CsvLayout:
    """Where things are in a CSV file, as seen by one rank."""

    columns: list[str]
    stamp: tuple  # (size, mtime in ns) when scanned; a change means a rewrite
    header_lines: int  # lines the header takes (a quoted name may hold line breaks)
    data_start: int  # first byte after the header line
    data_end: int  # one past the last non-blank byte; trailing blank lines lie beyond
    begin: int  # this rank's byte range [begin, end) of the data
    end: int
    count: int  # lines starting in [begin, end)
    stride: int  # checkpoints[k] is the offset of local line k * stride
    checkpoints: np.ndarray


class CsvTable(Table):
    """A comma-separated file of numbers under a header line of column names."""

    empty_reason = "has a header but no data rows"

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

    def _prepare(self, lo, hi, ranges, cols):
        """The byte range [start, stop) of rows [lo, hi): boundaries come from the
        ranks whose byte ranges hold them."""
        boundaries = sorted({row for r_lo, r_hi in ranges if r_lo < r_hi for row in (r_lo, r_hi)})
        if not boundaries:  # every rank asked for nothing; all ranks agree on that
            return 0, 0
        # Each boundary row starts in exactly one rank's byte range; that rank fills in
        # its offset and the rest leave -1, so a max-reduction shares all of them.
        offsets = self.comm.agreed(self._boundary_offsets, boundaries)
        self.comm.allreduce_(offsets, op="max")
        if lo == hi:
            return 0, 0
        return tuple(int(offsets[boundaries.index(row)]) for row in (lo, hi))

    def _boundary_offsets(self, rows: list[int]) -> np.ndarray:
        layout = self._layout
        offsets = np.full(len(rows), -1, dtype=np.int64)
        mine = range(self._first_row, self._first_row + layout.count)
        with reading(self.path) as f:
            self._check_unchanged(f)
            text = _mapped(f)
            if len(text) < layout.end:  # the file shrank since it was scanned
                raise changed_error(self.path)
            for i, row in enumerate(rows):
                if row == self.n_rows:
                    offsets[i] = layout.data_end
                elif row in mine:
                    offsets[i] = _find_line_start(text, layout, row - self._first_row)
        return offsets

    def _check_unchanged(self, f):
        if file_stamp(f) != self._layout.stamp:
            raise changed_error(self.path)

    def _blocks(self, lo, hi, cols, state, max_rows):
        start, stop = state
        every = cols == list(range(len(self.columns)))
        # Text pieces small next to the rows they become, so the text never costs
        # much memory beside the parsed rows.
        piece_bytes = min(_PARSE_BLOCK, max(1 << 16, (stop - start) // 64))
        row = lo
        with reading(self.path) as f:
            self._check_unchanged(f)
            text = _mapped(f)
        if len(text) < stop:  # the file shrank since it was scanned
            raise changed_error(self.path)
        for piece in _whole_line_pieces(text, start, stop, piece_bytes):
            n = _count_lines(piece)
            if row + n > hi:
                raise changed_error(self.path)
            # Every cell is parsed to check it; only the asked-for columns are kept.
            values = self._parse_piece(piece, row, n)
            for a in range(0, n, max_rows):
                part = values[a:a + max_rows]
                yield part if every else part[:, cols]
            row += n

    def _parse_piece(self, piece: np.ndarray, first_row: int, n: int) -> np.ndarray:
        """Parse ``n`` whole lines at native speed; on failure, name the first bad line."""
        out = np.empty((n, len(self.columns)))
        bad = _parse(piece, out)
        if bad < 0:
            return out
        piece = piece.tobytes()
        lines = piece.split(b"\n")
        if piece.endswith(b"\n"):
            lines.pop()
        what = _describe_bad_line(lines[bad], self.columns)
        raise UserError(f"{self.where(first_row + bad)}: {what}")

    def where(self, row: int) -> str:
        return f"{self.path} line {row + 1 + self._layout.header_lines}"  # lines count from 1


def _scan_csv(path: str, rank: int, size: int) -> _CsvLayout:
    """Read the header, find the data region, and index this rank's byte range."""
    check_file(path)
    with reading(path) as f:
        stamp = file_stamp(f)
        file_size = stamp[0]
        header, data_start = _read_header_record(f, path)
        columns = _parse_header(header, path)
        data_end = _find_data_end(f, data_start, file_size)
        span = data_end - data_start
        begin = data_start + span * rank // size
        end = data_start + span * (rank + 1) // size
        count, checkpoints = _index_lines(_mapped(f), begin, end, data_start, _INDEX_STRIDE)
    return _CsvLayout(columns, stamp, header.count(b"\n") + 1, data_start, data_end, begin,
                      end, count, _INDEX_STRIDE, checkpoints)


def _read_header_record(f, path: str) -> tuple[bytes, int]:
    """The header record (without its newline) and the offset just past it.

    The record ends at the first newline outside quotes: a quoted name may hold a
    line break (RFC 4180). Quotes toggle "inside", and a doubled quote toggles twice,
    so counting them is enough.
    """
    parts, quotes = [], 0
    while True:
        block = f.read(1 << 16)
        if not block:  # a header with no newline: the file has no data lines
            header = b"".join(parts)
            return header, len(header)
        at = 0
        while True:
            newline = block.find(b"\n", at)
            if newline < 0:
                quotes += block.count(b'"', at)
                break
            quotes += block.count(b'"', at, newline)
            if quotes % 2 == 0:
                header = b"".join(parts) + block[:newline]
                return header, len(header) + 1
            at = newline + 1
        parts.append(block)
        if sum(map(len, parts)) > _MAX_HEADER:
            raise UserError(f"{path} line 1: the header is longer than {_MAX_HEADER >> 20} MB; "
                            f"a quote that opens a column name and never closes?")


def _parse_header(raw: bytes, path: str) -> list[str]:
    try:
        text = raw.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError:
        raise UserError(f"{path} line 1: the header is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\r") else text
    if not text.strip():
        raise UserError(f"{path} line 1 should be a header of comma-separated column names, but it is blank")
    if _lone_carriage_return(text):
        raise UserError(f"{path} ends its lines with a carriage return alone (classic Mac OS "
                        f"line endings), which this reader does not take; convert it to \\n "
                        f"line endings, e.g. tr '\\r' '\\n' < {path} > fixed.csv")
    if text.count('"') % 2:
        raise UserError(f"{path} line 1: the header opens a quote that it never closes; "
                        f"a quote inside a quoted name is written twice (\"\")")
    # Lenient about spaces around quoted names (a, "b" ,c), which exporters and hand
    # edits produce; the spaces are not part of the name.
    names = [name.strip() for name in next(csv.reader([text], skipinitialspace=True))]
    for i, name in enumerate(names, start=1):
        if not name:
            raise UserError(f"{path} line 1: column {i} of the header has an empty name")
    repeated = [name for name, k in collections.Counter(names).items() if k > 1]
    if repeated:
        listed = ", ".join(repr(name) for name in repeated)
        raise UserError(f"{path} line 1: column names must be unique, but {listed} appear more than once")
    return names


def _lone_carriage_return(text: str) -> bool:
    """A carriage return outside quotes that does not end the line."""
    inside = False
    for ch in text:
        if ch == '"':
            inside = not inside
        elif ch == "\r" and not inside:
            return True
    return False


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


def _mapped(f) -> np.ndarray:
    """The open file's bytes as a read-only uint8 array, memory-mapped: scanning and
    parsing read the page cache in place instead of copying the text out of it. The
    map closes when the last array taken from it is gone. The size and time checked
    before each read catch a rewrite; a file cut short in the very moment it is read
    ends the rank with SIGBUS, which the launcher turns into the end of the job."""
    try:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {f.name}: {exc}") from exc


def _done_with(text: np.ndarray, begin: int, end: int):
    """Unmap the whole pages of [begin, end) from this process: they stay in the page
    cache, but no longer count as this rank's memory once read."""
    page = mmap.PAGESIZE
    a, b = -(-begin // page) * page, end // page * page
    owner = text.base
    while owner is not None and not isinstance(owner, mmap.mmap):
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    if b > a and owner is not None and hasattr(mmap, "MADV_DONTNEED"):
        owner.madvise(mmap.MADV_DONTNEED, a, b - a)


def _line_starts(text: np.ndarray, begin: int, end: int, data_start: int):
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
        block = text[pos:min(pos + _SCAN_BLOCK, stop)]
        newlines = np.flatnonzero(block == _NEWLINE)
        yield newlines.astype(np.int64) + (pos + 1)
        _done_with(text, pos, pos + len(block))
        pos += len(block)


def _index_lines(text: np.ndarray, begin: int, end: int, data_start: int, stride: int):
    """Count the lines starting in [begin, end) and keep every ``stride``-th start."""
    count, marks = 0, []
    for starts in _line_starts(text, begin, end, data_start):
        marks.append(starts[(-count) % stride :: stride])
        count += len(starts)
    checkpoints = np.concatenate(marks) if marks else np.empty(0, dtype=np.int64)
    return count, checkpoints


def _find_line_start(text: np.ndarray, layout: _CsvLayout, local_line: int) -> int:
    """Byte offset of the ``local_line``-th line starting in this rank's range."""
    skip = local_line % layout.stride
    base = int(layout.checkpoints[local_line // layout.stride])
    for starts in _line_starts(text, base, layout.end, layout.data_start):
        if skip < len(starts):
            return int(starts[skip])
        skip -= len(starts)
    raise UserError("the line index no longer matches the file")  # callers check the stamp first


def _whole_line_pieces(text: np.ndarray, start: int, stop: int, piece_bytes: int = _PARSE_BLOCK):
    """Yield the bytes [start, stop) of ``text`` as views of whole lines, about
    ``piece_bytes`` each (a longer line makes a longer piece)."""
    pos = start
    while pos < stop:
        end = min(pos + piece_bytes, stop)
        if end < stop:
            cut = _last_newline(text, pos, end)
            if cut < 0:  # one line longer than a piece: take it whole
                more = np.flatnonzero(text[end:stop] == _NEWLINE)
                cut = end + int(more[0]) if more.size else stop - 1
            end = cut + 1
        yield text[pos:end]
        _done_with(text, pos, end)
        pos = end


def _last_newline(text: np.ndarray, begin: int, end: int) -> int:
    """Offset of the last newline in [begin, end), or -1: looked for from the end in
    small windows, since a piece's last line is short and the piece is not."""
    while end > begin:
        start = max(begin, end - (1 << 16))
        hits = np.flatnonzero(text[start:end] == _NEWLINE)
        if hits.size:
            return start + int(hits[-1])
        end = start
    return -1


def _count_lines(text: np.ndarray) -> int:
    from .csv_numbers import count_lines

    return count_lines(text)


def _parse(text, out: np.ndarray) -> int:
    """Parse the lines of ``text`` into ``out`` on the rank's Numba threads; the index
    of the first line that does not parse, or -1."""
    import numba

    from .csv_numbers import parse_lines  # compiled on first use, then cached

    if not isinstance(text, np.ndarray):
        text = np.frombuffer(text, dtype=np.uint8)
    return parse_lines(text, out.shape[0], out, threads=numba.get_num_threads())


def _is_number(cell: str) -> bool:
    """Whether one cell parses, by the same rules as whole lines."""
    return _parse(cell.encode("utf-8"), np.empty((1, 1))) < 0


def _describe_bad_line(raw: bytes, columns: list[str]) -> str:
    text = raw.decode("utf-8", errors="replace")
    if text.endswith("\r"):
        text = text[:-1]
    if not text.strip():
        return "blank line (blank lines are allowed only at the end of the file)"
    if _lone_carriage_return(text):
        return ("holds a carriage return inside the line: the file mixes in classic Mac OS "
                "line endings (a carriage return alone); convert them to \\n")
    try:
        cells = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        return f"is not valid CSV ({exc})"
    if len(cells) != len(columns):
        return f"expected {len(columns)} comma-separated values (as in the header), found {len(cells)}"
    for name, cell in zip(columns, cells):
        if not cell.strip():
            return f"column {name!r} is empty"
        if not _is_number(cell):
            hint = (" (a quoted value needs its quotes at the very start and end of the cell)"
                    if '"' in cell else "")
            return f"column {name!r} holds {cell.strip()!r}, which is not a number{hint}"
    return f"could not read the line as {len(columns)} numbers"
