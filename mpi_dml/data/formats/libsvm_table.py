"""LIBSVM / SVMLight tables: sparse rows, byte ranges aligned to line ends, one file or many.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_table.py tests/test_libsvm_mpi.py

    table = open_table("train.svm", comm, zero_based=False, n_features=None)  # collective
    x, y = read_csr(table, lo, hi, np.float32)   # collective: rows [lo, hi) as CSR + labels

Each line is ``label idx:value idx:value ...`` (``libsvm_parse`` has the grammar).
Files ending in ``.svm``, ``.libsvm`` or ``.svmlight`` are read as LIBSVM, and any file
with ``--format libsvm``; a folder or glob of them is one table, its files in order.

Opening: the files' bytes, end to end, are cut into ``comm.size`` equal ranges. Each
rank scans only the whole lines that start in its range, on its Numba threads: it
counts lines and rows, parses and checks every index, and keeps the largest. The ranks
then pool what each range holds (rows, lines, pairs, largest column), which numbers
the rows across files, gives every range's first line in its file, and agrees on the
feature count: ``n_features`` if given, else the largest index seen + 1 (after the
1-based shift). Reading rows [lo, hi) then takes the byte offsets of the boundary rows
from the ranks that scanned them, and each rank parses only its own rows' bytes:
counted once (rows and pairs) to allocate the CSR arrays at their final size, then
parsed into them in place, values straight into the training dtype.

A rank's rows are a ``scipy.sparse.csr_matrix`` of shape (rows, n_features) whose
column indices increase strictly within each row, with int32 indices where the
nonzeros and the feature count allow, int64 otherwise; nothing is ever made dense, so
memory and time follow the nonzeros, whatever the feature count. Every bad line stops
every rank with one message naming the file, the line and the token.
"""
from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse

from ...errors import UserError
from . import libsvm_parse as lp
from .base import Table, changed_error, check_file, file_stamp, reading
from .csv_table import _mapped

# Bytes of whole lines parsed into one block by ``SparseRows.blocks``.
_BLOCK_BYTES = 1 << 24
# Largest feature count taken: indices are parsed as 18 decimal digits at most.
MAX_FEATURES = 10 ** 18
_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class _Segment:
    """The whole lines of one file that start in one rank's byte range."""

    file: int
    begin: int  # byte span [begin, end) of those lines
    end: int
    rows: int
    lines: int
    nnz: int
    max_col: int  # -1: no pair


@dataclass
class _Scanned:
    """One of this rank's segments and its chunks, whose starts serve as an index."""

    segment: _Segment
    bounds: np.ndarray  # chunk starts, then the segment's end
    stats: np.ndarray  # per chunk: libsvm_parse's result row

    def error(self):
        """(chunk, its result row) of the first chunk with an error, or None."""
        bad = np.flatnonzero(self.stats[:, lp.CODE])
        return None if bad.size == 0 else (int(bad[0]), self.stats[bad[0]])


class LibsvmTable(Table):
    """LIBSVM files read as one table of sparse rows; see the module docstring.

    ``columns`` is empty: features are numbered, not named, and the label is each
    line's first token. ``n_features`` is agreed by every rank; ``nnz`` counts the
    pairs of the whole table.
    """

    sparse = True
    empty_reason = "has no data lines (a label and its index:value pairs)"

    def __init__(self, path, comm, files, stamps, segments, mine, scanned, zero_based,
                 n_features):
        super().__init__(path, comm, [], sum(s.rows for s in segments), [])
        self._files, self._stamps = list(files), stamps
        self._segments = segments
        self._mine = mine  # global index of this rank's first segment
        self._scanned = scanned
        self.zero_based = bool(zero_based)
        self.n_features = n_features
        self.nnz = sum(s.nnz for s in segments)
        self._first_rows = np.concatenate([[0], np.cumsum([s.rows for s in segments])])
        self._first_lines = []  # each segment's first line in its file (0-based)
        counted = {}
        for s in segments:
            self._first_lines.append(counted.get(s.file, 0))
            counted[s.file] = counted.get(s.file, 0) + s.lines

    # What fixed ``n_features``, for messages: the flag, or e.g. a trained model.
    features_from = "--num-features"

    @classmethod
    def open(cls, path, comm, zero_based=False, n_features=None, features_from=None):
        return cls.open_files(path, comm, [path], zero_based=zero_based, n_features=n_features,
                              features_from=features_from)

    @classmethod
    def open_files(cls, path, comm, files, zero_based=False, n_features=None,
                   features_from=None):
        """Collective: ``files`` (in this order) as one table called ``path``.
        ``features_from`` names what fixed ``n_features`` when it is not the flag."""
        limit = comm.agreed(_feature_limit, n_features)
        stamps = comm.bcast_obj(comm.agreed_on_root(_stamps, files), what="file sizes")
        scanned = comm.agreed(_scan_share, files, stamps, comm.rank, comm.size,
                              bool(zero_based), limit, numba.get_num_threads())
        pooled = comm.allgather([s.segment for s in scanned], what="LIBSVM line counts")
        segments = [s for part in pooled for s in part]
        mine = sum(len(part) for part in pooled[:comm.rank])
        inferred = max((s.max_col for s in segments), default=-1) + 1
        table = cls(path, comm, files, stamps, segments, mine, scanned, zero_based,
                    limit if limit >= 0 else inferred)
        if features_from:
            table.features_from = features_from
        comm.agreed(table._raise_scan_error)
        comm.agreed(table._check_feature_count, limit)
        return table

    @property
    def files(self) -> list[str]:
        return list(self._files)

    # --- opening ------------------------------------------------------------------------
    def _raise_scan_error(self):
        for i, scanned in enumerate(self._scanned):
            found = scanned.error()
            if found is not None:
                c, result = found
                g = self._mine + i
                line = (self._first_lines[g] + int(scanned.stats[:c, lp.LINES].sum())
                        + int(result[lp.ERR_LINE]))
                raise self._error(scanned.segment.file, line, result)

    def _check_feature_count(self, limit):
        if limit < 0 and self.n_features == 0 and self.n_rows > 0:
            raise UserError(f"{self.path} has no index:value pairs on any line, so the "
                            f"feature count cannot be learned from it; pass --num-features")

    # --- reading ------------------------------------------------------------------------
    def read(self, lo, hi, columns=None, dtype=np.float64):
        raise TypeError(f"{self.path} holds sparse rows; read them with read_csr(table, "
                        f"lo, hi, dtype), which gives a SciPy CSR matrix and the labels")

    def rows(self, lo: int, hi: int, columns=None) -> "SparseRows":
        """Collective: get ready to read global rows ``lo .. hi-1``."""
        if columns is not None:
            raise ValueError(f"{self.path} is a LIBSVM table, whose rows are read whole "
                             f"(columns=None); got columns={columns!r}")
        lo, hi = operator.index(lo), operator.index(hi)
        ranges = self.comm.allgather((lo, hi))
        for rank, (r_lo, r_hi) in enumerate(ranges):
            if not 0 <= r_lo <= r_hi <= self.n_rows:
                raise ValueError(f"rank {rank} asked for rows [{r_lo}, {r_hi}) of "
                                 f"{self.path}, which has {self.n_rows} rows")
        return SparseRows(self, lo, hi, self._prepare(lo, hi, ranges, None))

    def _prepare(self, lo, hi, ranges, cols):
        """The spans (file, begin, end, first line) holding rows [lo, hi): the offsets
        of boundary rows come from the ranks that scanned them."""
        boundaries = sorted({row for r_lo, r_hi in ranges if r_lo < r_hi for row in (r_lo, r_hi)})
        if not boundaries:
            return []
        found = self.comm.agreed(self._boundary_positions, boundaries)
        self.comm.allreduce_(found, op="max")
        if lo == hi:
            return []
        (f0, a0, line0), (f1, b1, _) = (found[:, boundaries.index(row)].tolist()
                                        for row in (lo, hi))
        spans = []
        for f in range(f0, f1 + 1):
            a = a0 if f == f0 else 0
            b = b1 if f == f1 else self._stamps[f][0]
            if b > a:
                spans.append((f, a, b, line0 if f == f0 else 0))
        return spans

    def _boundary_positions(self, rows) -> np.ndarray:
        """(file, offset, line) of each row this rank scanned, -1 for the others."""
        found = np.full((3, len(rows)), -1, dtype=np.int64)
        for k, row in enumerate(rows):
            if row == self.n_rows:
                last = len(self._files) - 1
                found[:, k] = last, self._stamps[last][0], 0
                continue
            g = self._segment_of(row)
            if self._mine <= g < self._mine + len(self._scanned):
                found[:, k] = self._locate(g, row)
        return found

    def _segment_of(self, row: int) -> int:
        return bisect.bisect_right(self._first_rows, row) - 1

    def _locate(self, g: int, row: int) -> tuple[int, int, int]:
        """(file, offset, line in the file) of global row ``row``, in segment ``g``:
        from the nearest chunk start where this rank scanned it, else from the
        segment's start."""
        segment = self._segments[g]
        skip, start, line = row - int(self._first_rows[g]), segment.begin, self._first_lines[g]
        if self._mine <= g < self._mine + len(self._scanned):
            scanned = self._scanned[g - self._mine]
            rows_before = np.concatenate([[0], np.cumsum(scanned.stats[:, lp.ROWS])])
            c = int(np.searchsorted(rows_before, skip, side="right") - 1)
            c = min(c, len(scanned.stats) - 1)
            skip -= int(rows_before[c])
            start = int(scanned.bounds[c])
            line += int(scanned.stats[:c, lp.LINES].sum())
        text = self._text(segment.file)
        offset, lines = lp.find_row(text, start, segment.end, skip)
        if offset < 0:
            raise changed_error(self._files[segment.file])
        return segment.file, offset, line + lines

    def where(self, row: int) -> str:
        if not 0 <= row < self.n_rows:
            return f"{self.path} row {row}"
        file, _, line = self._locate(self._segment_of(row), row)
        return f"{self._files[file]} line {line + 1}"  # lines count from 1

    def _text(self, f: int) -> np.ndarray:
        with reading(self._files[f]) as fh:
            if file_stamp(fh) != self._stamps[f]:
                raise changed_error(self._files[f])
            return _mapped(fh)

    def _parse(self, spans, dtype, expected_rows=None):
        """Local: the rows of ``spans`` as (labels, CSR matrix), or the first bad line."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"LIBSVM values are read as float32 or float64, not {dtype}")
        threads = numba.get_num_threads()
        work = []
        for f, a, b, first_line in spans:
            text = self._text(f)
            if len(text) < b:
                raise changed_error(self._files[f])
            bounds = lp.chunk_bounds(text, a, b, threads)
            work.append((f, text, bounds, lp.count(text, bounds, threads=threads), first_line))
        rows = sum(int(w[3][:, lp.ROWS].sum()) for w in work)
        nnz = sum(int(w[3][:, lp.NNZ].sum()) for w in work)
        if expected_rows is not None and rows != expected_rows:
            raise changed_error(self.path)
        index = np.int32 if max(nnz, self.n_features, rows) <= _INT32_MAX else np.int64
        y, indptr = np.empty(rows), np.zeros(rows + 1, dtype=index)
        indices, data = np.empty(nnz, dtype=index), np.empty(nnz, dtype=dtype)
        row0 = k0 = 0
        for f, text, bounds, counts, first_line in work:
            out = lp.parse(text, bounds, counts, zero_based=self.zero_based,
                           n_features=self.n_features, y=y, indptr=indptr, indices=indices,
                           data=data, row0=row0, k0=k0, threads=threads)
            bad = np.flatnonzero(out[:, lp.CODE])
            if bad.size:
                c = int(bad[0])
                line = first_line + int(counts[:c, lp.LINES].sum()) + int(out[c, lp.ERR_LINE])
                raise self._error(f, line, out[c], text, dtype)
            if not np.array_equal(out[:, [lp.ROWS, lp.NNZ]], counts[:, [lp.ROWS, lp.NNZ]]):
                raise changed_error(self._files[f])  # rows or pairs not where counted
            row0 += int(counts[:, lp.ROWS].sum())
            k0 += int(counts[:, lp.NNZ].sum())
        x = scipy.sparse.csr_matrix((data, indices, indptr), shape=(rows, self.n_features),
                                    copy=False)
        # Strictly increasing, checked line by line: sorted, no duplicates.
        x.has_canonical_format = True
        return y, x

    def _error(self, f: int, line: int, result, text=None, dtype=None) -> UserError:
        """The message for a kernel's error ``result`` on (0-based) ``line`` of file f."""
        if result[lp.CODE] == lp.CHANGED:
            return changed_error(self._files[f])
        text = self._text(f) if text is None else text
        return UserError(describe(f"{self._files[f]} line {line + 1}", text, result,
                                  self.zero_based, self.n_features, dtype, self.features_from))

    def __repr__(self):
        return (f"LibsvmTable({self.path!r}, {len(self._files)} file(s), {self.n_rows} rows, "
                f"{self.n_features} features, {self.nnz} nonzeros)")


class SparseRows:
    """Rows ``[lo, hi)`` of a LIBSVM table, ready to be read locally."""

    def __init__(self, table: LibsvmTable, lo: int, hi: int, spans):
        self.table, self.lo, self.hi, self._spans = table, lo, hi, spans

    def __len__(self):
        return self.hi - self.lo

    def csr(self, dtype=np.float64):
        """Every row as (CSR matrix of ``dtype``, float64 labels). Local: raise here, and
        the caller's agreement stops the job (``read_csr``)."""
        y, x = self.table._parse(self._spans, dtype, expected_rows=len(self))
        return x, y

    def blocks(self, max_bytes: int = _BLOCK_BYTES, dtype=np.float64):
        """Yield ``(first global row, labels, CSR matrix)`` in order, each parsed from
        about ``max_bytes`` of text, so a caller holds one block's rows at a time."""
        row = self.lo
        for f, a, b, line in self._spans:
            text = self.table._text(f)
            for begin, end in _pieces(text, a, b, max_bytes):
                y, x = self.table._parse([(f, begin, end, line)], dtype)
                if row + len(y) > self.hi:
                    raise changed_error(self.table.path)
                if len(y):
                    yield row, y, x
                row += len(y)
                line += int(np.count_nonzero(text[begin:end] == 10))
        if row != self.hi:
            raise changed_error(self.table.path)


def read_csr(table: LibsvmTable, lo: int, hi: int, dtype=np.float64):
    """Collective: global rows ``lo .. hi-1`` of a LIBSVM table as (``scipy.sparse``
    CSR matrix of ``dtype``, shape (hi - lo, table.n_features); float64 labels), every
    check agreed: a bad line anywhere stops every rank with the same message."""
    rows = table.rows(lo, hi)
    return table.comm.agreed(rows.csr, dtype)


def _pieces(text, a: int, b: int, size: int):
    """[begin, end) runs of whole lines covering text[a:b], about ``size`` bytes each."""
    while a < b:
        end = b if b - a <= size else min(max(lp.line_start(text, a + size), a + 1), b)
        yield a, end
        a = end


# --- opening, one rank's share --------------------------------------------------------
def _feature_limit(n_features) -> int:
    """``n_features`` as the limit on columns, or -1 to learn it from the files."""
    if n_features is None or n_features == 0:
        return -1
    if (isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer))
            or not 0 < n_features <= MAX_FEATURES):
        raise UserError(f"The 'num_features' parameter must be an integer in [0, 10**18] "
                        f"(0: the largest index seen). Got {n_features!r} instead.")
    return int(n_features)


def _stamps(files) -> list:
    stamps = []
    for path in files:
        check_file(path)
        with reading(path) as fh:
            stamps.append(file_stamp(fh))
    return stamps


def _scan_share(files, stamps, rank, size, zero_based, limit, threads) -> list[_Scanned]:
    """Scan the whole lines that start in this rank's share of the files' bytes, end to
    end; stop at the first file with a bad line (the error is raised once the ranks
    have pooled their line counts, which its line number needs)."""
    sizes = [s[0] for s in stamps]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    lo, hi = starts[-1] * rank // size, starts[-1] * (rank + 1) // size
    scanned = []
    for f, path in enumerate(files):
        a, b = max(lo, starts[f]) - starts[f], min(hi, starts[f + 1]) - starts[f]
        if a >= b:
            continue
        with reading(path) as fh:
            if file_stamp(fh) != stamps[f]:
                raise changed_error(path)
            text = _mapped(fh)
        begin, end = lp.line_start(text, a), lp.line_start(text, b)
        bounds = lp.chunk_bounds(text, begin, end, threads)
        stats = lp.scan(text, bounds, zero_based=zero_based, limit=limit, threads=threads)
        segment = _Segment(f, begin, end, int(stats[:, lp.ROWS].sum()),
                           int(stats[:, lp.LINES].sum()), int(stats[:, lp.NNZ].sum()),
                           int(stats[:, lp.MAX_COL].max()))
        scanned.append(_Scanned(segment, bounds, stats))
        if stats[:, lp.CODE].any():
            break
    return scanned


# --- messages ---------------------------------------------------------------------------
def _token(text, pos: int) -> str:
    end = pos
    while end < len(text) and end - pos < 60 and text[end] not in b" \t\r\v\f\n#":
        end += 1
    return text[pos:end].tobytes().decode("utf-8", errors="replace")


def _lone_carriage_return(text, pos: int) -> bool:
    """Whether the line holding ``pos`` has a carriage return not followed by \\n."""
    line_end = pos
    while line_end < len(text) and text[line_end] != 10 and line_end - pos < 1 << 16:
        line_end += 1
    line = text[max(0, pos - (1 << 16)):line_end].tobytes().split(b"\n")[-1]
    return b"\r" in line.rstrip(b"\r")


def describe(where: str, text, result, zero_based: bool, n_features: int, dtype=None,
             features_from: str = "--num-features") -> str:
    """One sentence on the bad token of a kernel's ``result``, found at ``where``."""
    code, pos, extra = int(result[lp.CODE]), int(result[lp.ERR_POS]), int(result[lp.ERR_EXTRA])
    token = _token(text, pos)
    base = 0 if zero_based else 1
    index = token.split(":", 1)[0]
    if code == lp.BAD_LABEL:
        return (f"{where}: the label {token!r} is not a number; a LIBSVM line is a numeric "
                f"label, then index:value pairs")
    if code == lp.NONFINITE_LABEL:
        return f"{where}: the label {token!r} is not finite; labels must be finite numbers"
    if code == lp.QID:
        return (f"{where}: {token!r} is a query id (qid:), which mpi_dml does not support; "
                f"remove the qid: tokens from the file")
    if code == lp.BAD_PAIR:
        if _lone_carriage_return(text, pos):
            return (f"{where}: the line holds a carriage return that does not end it: the "
                    f"file uses classic Mac OS line endings (a carriage return alone); "
                    f"convert them to \\n")
        return f"{where}: {token!r} is not an index:value pair such as 7:0.25"
    if code == lp.INDEX_ZERO:
        return (f"{where}: {token!r} has index 0, but indices are 1-based; pass --zero-based "
                f"if the file numbers its features from 0")
    if code == lp.NOT_INCREASING:
        previous = extra + base
        what = "repeats" if int(index) == previous else "follows"
        what = f"{what} index {previous}"
        return (f"{where}: {token!r} {what}; indices must be strictly increasing within a "
                f"line (sorted, each at most once)")
    if code == lp.BEYOND:
        top = f"{'0' if zero_based else '1'}-based indices go up to {n_features - 1 + base}"
        if features_from != "--num-features":
            return (f"{where}: {token!r} has index {int(index)}, beyond the {n_features} "
                    f"features of {features_from} ({top})")
        return (f"{where}: {token!r} has index {int(index)}, beyond --num-features "
                f"{n_features} ({top}); raise it, or give 0 to use the largest index seen")
    if code == lp.HUGE_INDEX:
        return (f"{where}: the index of {token!r} has more than 18 digits; indices must be "
                f"below 10**18")
    if code == lp.BAD_VALUE:
        return f"{where}: in {token!r} the value is not a number"
    if code == lp.NONFINITE:
        return (f"{where}: {token!r} holds a value that is not finite; features must be "
                f"finite numbers")
    if code == lp.TOO_LARGE:
        name = np.dtype(dtype).name if dtype is not None else "float32"
        return (f"{where}: {token!r} holds a value too large for --dtype {name}; scale it or "
                f"use --dtype float64")
    return f"{where}: {token!r} cannot be read"
