"""LIBSVM / SVMLight lines scanned and parsed at native speed, on the rank's Numba threads.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_table.py

A line is ``label idx:value idx:value ...``: tokens separated by spaces or tabs (a
``\\r`` before the newline, or anywhere, is a blank too), indices strictly increasing.
``#`` starts a comment that runs to the end of the line, whether it opens the line or
follows a token; blank and comment-only lines are not rows. ``qid:`` tokens are refused.

Three kernels, two of which share one grammar (``_lines``):

* ``scan``: the open. Counts lines and rows, and parses and checks the indices (1-based
  or 0-based, strictly increasing, below a given feature count) to learn the largest
  one; values are only skipped, since no rank keeps them at this point.
* ``count`` (``_count``, a plain byte loop): a read's first pass: lines, rows and ``:``
  outside comments (the nonzeros of a good file), so that the output arrays are
  allocated once, at their final size.
* ``parse``: a read's second pass: labels and values parsed exactly as Python's
  ``float`` (the CSV reader's Clinger and Eisel-Lemire parser, ``csv_numbers``), cast to
  the output's dtype, with every check of the scan plus those on values.

Each kernel cuts its byte span at newlines into chunks and runs them with ``prange``;
every chunk reports its own counts and its first error, and the caller keeps the
first error in file order, so results never depend on the thread count. Chunks are
handed to the threads a window of bytes at a time, and a window's pages are released
once done (``_done_with``), so a rank's memory holds its rows, not its text.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .csv_numbers import _BAD, _EXACT, _at, _number, _numba_threads, _peek
from .csv_table import _done_with

# Error codes a kernel reports (0: none); ``libsvm_table`` turns them into messages.
BAD_LABEL, NONFINITE_LABEL, BAD_PAIR, QID, INDEX_ZERO, NOT_INCREASING, BEYOND, \
    HUGE_INDEX, BAD_VALUE, NONFINITE, TOO_LARGE, CHANGED = range(1, 13)

# One kernel result row: counts, then the first error (its line within the chunk,
# the byte where its token starts, and one more number: the index it follows).
LINES, ROWS, NNZ, MAX_COL, FIXES, CODE, ERR_LINE, ERR_POS, ERR_EXTRA = range(9)
_RESULT = 9

_MAX_INDEX_DIGITS = 18  # below 2**63 whatever the digits
_FIXES_PER_CHUNK = 64  # values Python's float must settle, recorded in one pass; rare
# Target bytes per chunk: large enough that a chunk's overhead vanishes, small enough
# that threads share the work evenly and that finding a row later rescans little.
_CHUNK_MIN, _CHUNK_MAX = 1 << 18, 1 << 22
# Bytes of text each thread works through before the window's pages are released: the
# text a rank holds in memory beside its rows stays about this times its threads.
_WINDOW = 1 << 23


@intrinsic
def _put(typingctx, address, index, value):
    """Store ``value``, in its own type, as element ``index`` of the array at ``address``.

    The parser writes its outputs through their addresses, like it reads its text: one
    compiled version then serves float32 and float64 values and int32 and int64
    indices alike, where arrays would make four (a cold compile four times as long).
    """
    def codegen(context, builder, sig, args):
        kind = context.get_value_type(sig.args[2])
        start = builder.inttoptr(args[0], kind.as_pointer())
        builder.store(args[2], builder.gep(start, [args[1]]))
        return context.get_dummy_value()
    return types.void(address, index, value), codegen


@numba.njit(cache=True, error_model="numpy")
def _value(text, p, stop):
    """``_number`` behind a call of its own: compiled once for every kernel and dtype
    instead of inlined into each (which made a cold compile several times longer);
    LLVM still inlines the machine code where it pays."""
    return _number(text, p, stop)


@numba.njit(cache=True, inline="always")
def _is_blank(byte):
    return byte == 32 or byte == 9 or byte == 13 or byte == 11 or byte == 12


@numba.njit(cache=True, inline="always")
def _ends_token(byte):
    # A blank, a newline, a comment, or the end of the text (``_peek`` gives 0 there).
    return _is_blank(byte) or byte == 10 or byte == 35 or byte == 0


@numba.njit(cache=True, inline="always")
def _skip_blanks(text, p, stop):
    while p < stop and _is_blank(_at(text, p)):
        p += 1
    return p


@numba.njit(cache=True, inline="always")
def _to_newline(text, p, stop):
    while p < stop and _at(text, p) != 10:
        p += 1
    return p


@numba.njit(cache=True, inline="always")
def _is_qid(text, p, stop):
    return (_peek(text, p, stop) == 113 and _peek(text, p + 1, stop) == 105
            and _peek(text, p + 2, stop) == 100 and _peek(text, p + 3, stop) == 58)


@numba.njit(cache=True, error_model="numpy")
def _lines(text, p, stop, zero_based, limit, store, row, row_end, k, k_end, y, indptr,
           indices, wide, data, single, fixes, out):
    """Scan (``store`` False) or parse the whole lines in text[p:stop].

    Parsing writes labels to ``y[row:row_end]``, and through the addresses ``indptr``,
    ``indices`` (int64 where ``wide``, else int32) and ``data`` (float32 where
    ``single``, else float64): each row's end to ``indptr[row + 1:]``, columns and values
    to ``indices[k:k_end]`` and ``data[k:k_end]``. Values the fast parser leaves
    undecided go to ``fixes`` as (slot, start, end): slot k for a value, -1 - row for a
    label. ``limit``: columns must be below it (-1: no limit).
    """
    lines, rows, nnz, max_col, n_fixes, code = 0, 0, 0, -1, 0, 0
    err_pos, extra = 0, 0
    while p < stop:
        p = _skip_blanks(text, p, stop)
        byte = _peek(text, p, stop)
        if byte == 35:  # a comment line
            p = _to_newline(text, p, stop)
        elif p < stop and byte != 10:  # a data line
            start = p
            if store and row >= row_end:  # more rows than the count found: the file changed
                code = CHANGED
                break
            if store:
                p, value, status = _value(text, p, stop)
                if status == _BAD or not _ends_token(_peek(text, p, stop)):
                    code, err_pos = BAD_LABEL, start
                    break
                if status == _EXACT:
                    if n_fixes < fixes.shape[0]:
                        fixes[n_fixes, 0], fixes[n_fixes, 1] = -1 - row, start
                        fixes[n_fixes, 2] = p
                    n_fixes += 1
                elif not np.isfinite(value):
                    code, err_pos = NONFINITE_LABEL, start
                    break
                y[row] = value
            else:  # the label is checked by the parse; here it is only skipped
                while not _ends_token(_peek(text, p, stop)):
                    p += 1
            prev = -1
            while True:
                p = _skip_blanks(text, p, stop)
                byte = _peek(text, p, stop)
                if byte == 35:
                    p = _to_newline(text, p, stop)
                    break
                if p >= stop or byte == 10:
                    break
                start = p
                index, digits = 0, 0
                while 48 <= byte <= 57:
                    if digits < _MAX_INDEX_DIGITS:
                        index = index * 10 + (byte - 48)
                    digits += 1
                    p += 1
                    byte = _peek(text, p, stop)
                if digits == 0 or byte != 58:
                    code = QID if digits == 0 and _is_qid(text, start, stop) else BAD_PAIR
                    break
                if digits > _MAX_INDEX_DIGITS:
                    code = HUGE_INDEX
                    break
                p += 1
                col = index if zero_based else index - 1
                if col < 0:
                    code = INDEX_ZERO
                    break
                if col <= prev:
                    code, extra = NOT_INCREASING, prev
                    break
                if 0 <= limit <= col:
                    code = BEYOND
                    break
                if store:
                    if k >= k_end:  # more pairs than the count found: the file changed
                        code = CHANGED
                        break
                    value_start = p
                    p, value, status = _value(text, p, stop)
                    if status == _BAD or not _ends_token(_peek(text, p, stop)):
                        code = BAD_VALUE
                        break
                    if status == _EXACT:  # checked once Python's float has settled it
                        if n_fixes < fixes.shape[0]:
                            fixes[n_fixes, 0], fixes[n_fixes, 1] = k, value_start
                            fixes[n_fixes, 2] = p
                        n_fixes += 1
                    elif not np.isfinite(value):
                        code = NONFINITE
                        break
                    elif single and np.isinf(np.float32(value)):  # finite, not in float32
                        code = TOO_LARGE
                        break
                    if single:
                        _put(data, k, np.float32(value))
                    else:
                        _put(data, k, value)
                    if wide:
                        _put(indices, k, np.int64(col))
                    else:
                        _put(indices, k, np.int32(col))
                    k += 1
                else:
                    if _ends_token(_peek(text, p, stop)):
                        code = BAD_VALUE
                        break
                    while not _ends_token(_peek(text, p, stop)):
                        p += 1
                prev = col
                nnz += 1
            if code != 0:
                err_pos = start
                break
            if prev > max_col:
                max_col = prev
            rows += 1
            row += 1
            if store:
                if wide:
                    _put(indptr, row, np.int64(k))
                else:
                    _put(indptr, row, np.int32(k))
        lines += 1  # p is at this line's newline, or at the end of the text
        p += 1
    out[LINES], out[ROWS], out[NNZ], out[MAX_COL] = lines, rows, nnz, max_col
    out[FIXES], out[CODE], out[ERR_LINE], out[ERR_POS], out[ERR_EXTRA] = \
        n_fixes, code, lines, err_pos, extra


@numba.njit(cache=True)
def _count(text, p, stop, out):
    """Lines, rows, and ``:`` outside comments in the whole lines of text[p:stop]."""
    lines, rows, colons = 0, 0, 0
    while p < stop:
        p = _skip_blanks(text, p, stop)
        if p < stop:
            byte = _at(text, p)
            if byte != 10 and byte != 35:
                rows += 1
                while p < stop:
                    byte = _at(text, p)
                    if byte == 10 or byte == 35:
                        break
                    colons += byte == 58
                    p += 1
            p = _to_newline(text, p, stop)
        lines += 1
        p += 1
    out[LINES], out[ROWS], out[NNZ] = lines, rows, colons


@numba.njit(parallel=True, cache=True)
def _scan_chunks(text, bounds, zero_based, limit, out):
    no_labels, no_fixes = np.empty(0), np.empty((0, 3), dtype=np.int64)
    for c in numba.prange(len(bounds) - 1):
        _lines(text, bounds[c], bounds[c + 1], zero_based, limit, False, 0, 0, 0, 0,
               no_labels, 0, 0, False, 0, False, no_fixes, out[c])


@numba.njit(parallel=True, cache=True)
def _count_chunks(text, bounds, out):
    for c in numba.prange(len(bounds) - 1):
        _count(text, bounds[c], bounds[c + 1], out[c])


@numba.njit(parallel=True, cache=True)
def _parse_chunks(text, bounds, zero_based, n_features, first_rows, first_ks, y, indptr,
                  indices, wide, data, single, fixes, out):
    for c in numba.prange(len(bounds) - 1):
        _lines(text, bounds[c], bounds[c + 1], zero_based, n_features, True, first_rows[c],
               first_rows[c + 1], first_ks[c], first_ks[c + 1], y, indptr, indices, wide,
               data, single, fixes[c], out[c])


@numba.njit(cache=True)
def _cut(text, begin, end, pieces):
    """Offsets cutting text[begin:end] (whole lines) into ``pieces`` runs of whole lines
    of about equal size; a run may be empty where one line is longer than a run."""
    bounds = np.empty(pieces + 1, dtype=np.int64)
    bounds[0], bounds[pieces] = begin, end
    for c in range(1, pieces):
        p = max(begin + (end - begin) * c // pieces, bounds[c - 1])
        while begin < p < end and _at(text, p - 1) != 10:
            p += 1
        bounds[c] = p
    return bounds


@numba.njit(cache=True)
def _line_start_from(text, p, size):
    """The first line start at or after p: p itself at a line start, else just past the
    next newline, or ``size``."""
    if p <= 0:
        return 0
    p = p - 1
    while p < size and _at(text, p) != 10:
        p += 1
    return min(p + 1, size)


@numba.njit(cache=True)
def _find_row(text, p, stop, skip):
    """(offset, lines before it) of the data row ``skip`` rows after p, a line start;
    (-1, lines) when text[p:stop] holds fewer rows."""
    lines = 0
    while p < stop:
        q = _skip_blanks(text, p, stop)
        if q < stop and _at(text, q) != 10 and _at(text, q) != 35:
            if skip == 0:
                return p, lines
            skip -= 1
        p = _to_newline(text, q, stop) + 1
        lines += 1
    return -1, lines


# --- what the table calls -------------------------------------------------------------
def _address(text: np.ndarray) -> int:
    # One compiled version serves every buffer, writable or read-only (csv_numbers).
    return text.ctypes.data


def line_start(text: np.ndarray, p: int) -> int:
    """The first line start at or after byte ``p`` of ``text``."""
    return int(_line_start_from(_address(text), p, len(text)))


def find_row(text: np.ndarray, p: int, stop: int, skip: int) -> tuple[int, int]:
    """(offset, lines passed) of the data row ``skip`` rows after line start ``p``."""
    offset, lines = _find_row(_address(text), p, stop, skip)
    return int(offset), int(lines)


def chunk_bounds(text: np.ndarray, begin: int, end: int, threads: int) -> np.ndarray:
    """Cut the whole lines of text[begin:end] into chunks for ``threads`` threads."""
    size = max(_CHUNK_MIN, min(_CHUNK_MAX, (end - begin) // max(4 * threads, 1)))
    pieces = max(1, -(-(end - begin) // size))
    return _cut(_address(text), begin, end, pieces)


def _windows(bounds: np.ndarray, threads: int):
    """Runs [c0, c1) of chunks holding about ``_WINDOW`` bytes per thread each."""
    size, c0 = _WINDOW * threads, 0
    while c0 < len(bounds) - 1:
        c1 = c0 + 1
        while c1 < len(bounds) - 1 and bounds[c1 + 1] - bounds[c0] <= size:
            c1 += 1
        yield c0, c1
        c0 = c1


def _by_windows(text, bounds, threads, kernel):
    """Run ``kernel(address, bounds of a window, first chunk, end chunk)`` window by
    window on ``threads`` threads, releasing each window's pages after it, until the
    kernel says to stop (an error: what follows no longer matters)."""
    with _numba_threads(threads):
        for c0, c1 in _windows(bounds, threads):
            stop = kernel(_address(text), bounds[c0:c1 + 1], c0, c1)
            _done_with(text, int(bounds[c0]), int(bounds[c1]))
            if stop:
                return


def scan(text, bounds, *, zero_based: bool, limit: int, threads: int) -> np.ndarray:
    """Per chunk: lines, rows, pairs, largest column (-1: none), and its first error."""
    out = np.zeros((len(bounds) - 1, _RESULT), dtype=np.int64)

    def kernel(address, window, c0, c1):
        _scan_chunks(address, window, zero_based, limit, out[c0:c1])
        return out[c0:c1, CODE].any()

    _by_windows(text, bounds, threads, kernel)
    return out


def count(text, bounds, *, threads: int) -> np.ndarray:
    """Per chunk: lines, rows and the pairs a good file holds there."""
    out = np.zeros((len(bounds) - 1, _RESULT), dtype=np.int64)

    def kernel(address, window, c0, c1):
        _count_chunks(address, window, out[c0:c1])

    _by_windows(text, bounds, threads, kernel)
    return out


def parse(text, bounds, counts, *, zero_based: bool, n_features: int, y, indptr, indices,
          data, row0: int, k0: int, threads: int) -> np.ndarray:
    """Parse the chunks into rows ``row0 ...`` and slots ``k0 ...`` of the arrays, whose
    sizes ``count`` gave; per chunk, the result as ``scan`` gives it (with the parsed
    nonzeros). Undecided values are settled here by Python's ``float``; a value that
    then is not finite, or not a float32 where ``data`` is, becomes the chunk's error
    if it comes before the one the kernel found."""
    first_rows = row0 + np.concatenate([[0], np.cumsum(counts[:, ROWS])]).astype(np.int64)
    first_ks = k0 + np.concatenate([[0], np.cumsum(counts[:, NNZ])]).astype(np.int64)
    if first_rows[-1] > len(y) or first_ks[-1] > len(data):
        raise ValueError("the arrays are smaller than the counts")
    outputs = _outputs(y, indptr, indices, data)
    out = np.zeros((len(bounds) - 1, _RESULT), dtype=np.int64)
    fixes = np.empty((len(bounds) - 1, _FIXES_PER_CHUNK, 3), dtype=np.int64)

    def kernel(address, window, c0, c1):
        _parse_chunks(address, window, zero_based, n_features, first_rows[c0:c1 + 1],
                      first_ks[c0:c1 + 1], *outputs, fixes[c0:c1], out[c0:c1])
        for c in range(c0, c1):
            if out[c, FIXES]:
                _settle(text, bounds, c, out, fixes[c], zero_based, n_features, first_rows,
                        first_ks, outputs, y, data)
            if out[c, CODE]:
                return True
        return False

    _by_windows(text, bounds, threads, kernel)
    return out


def _outputs(y, indptr, indices, data) -> tuple:
    """The arguments that stand for the output arrays in ``_lines``: labels as an
    array; the rest as addresses, with the index and value widths."""
    if not (y.dtype == np.float64 and indptr.dtype == indices.dtype
            and indices.dtype in (np.int32, np.int64) and data.dtype in (np.float32, np.float64)
            and all(a.flags.c_contiguous and a.flags.writeable and a.ndim == 1
                    for a in (y, indptr, indices, data))):
        raise TypeError("y must be float64, indptr and indices int32 or int64 alike, data "
                        "float32 or float64, all writable and contiguous")
    return (y, indptr.ctypes.data, indices.ctypes.data, indices.dtype == np.int64,
            data.ctypes.data, data.dtype == np.float32)


def _settle(text, bounds, c, out, found, zero_based, n_features, first_rows, first_ks,
            outputs, y, data):
    """Give chunk ``c``'s undecided values Python's ``float``. They all come before the
    kernel's first error, if any, so the first that is not finite (or not a float32,
    where ``data`` is) becomes the chunk's error in its place."""
    n = int(out[c, FIXES])
    if n > len(found):  # more than one pass could record: parse the chunk again
        found = np.empty((n, 3), dtype=np.int64)
        _lines(_address(text), bounds[c], bounds[c + 1], zero_based, n_features, True,
               first_rows[c], first_rows[c + 1], first_ks[c], first_ks[c + 1], *outputs,
               found, out[c])
    for slot, start, end in found[:n]:
        value = float(text[start:end].tobytes())
        target, at = (y, -1 - slot) if slot < 0 else (data, slot)
        with np.errstate(over="ignore"):
            target[at] = value
        if not np.isfinite(target[at]):
            begin = int(bounds[c])
            start = _token_start(text, begin, int(start))  # a value's token is idx:value
            out[c, CODE] = (NONFINITE_LABEL if slot < 0 else
                            NONFINITE if not np.isfinite(value) else TOO_LARGE)
            out[c, ERR_LINE] = np.count_nonzero(text[begin:start] == 10)
            out[c, ERR_POS] = start
            return


def _token_start(text, begin: int, p: int) -> int:
    """Start of the token holding byte p (whose line starts at or after ``begin``)."""
    while p > begin and text[p - 1] not in b" \t\r\v\f\n":
        p -= 1
    return p


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel, so that the first real read
    does not pay for it (tens of seconds, cold)."""
    text = np.frombuffer(b"1 1:0.5 3:2e-3 # c\n\n-1 2:1.5e300\n", dtype=np.uint8)
    bounds = chunk_bounds(text, 0, len(text), 1)
    scan(text, bounds, zero_based=False, limit=-1, threads=1)
    counts = count(text, bounds, threads=1)
    parse(text, bounds, counts, zero_based=False, n_features=3, y=np.empty(2),
          indptr=np.zeros(3, dtype=np.int32), indices=np.empty(3, dtype=np.int32),
          data=np.empty(3), row0=0, k0=0, threads=1)
