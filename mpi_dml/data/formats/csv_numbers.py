"""Numbers in CSV lines parsed at native speed, rounded exactly as Python's ``float``.

A rank hands over a buffer of whole lines and an output array with one row per line;
``parse_lines`` fills it, on one thread or several, and says which line (if any) is
the first that does not parse, so that the caller's slow path can name the bad cell.

    $ .venv/bin/python -m pytest -q tests/test_csv_numbers.py
    $ .venv/bin/python tests/test_csv_numbers.py          # speed next to pandas

What a line must be (anything else makes it bad, so that the caller's message for a
bad line always finds something to name):

* exactly ``ncols`` cells separated by ``,``, ending with ``\\n`` or ``\\r\\n``; the
  buffer's last line may lack its newline, or end in ``\\r`` alone (a ``\\r\\n`` cut
  before its ``\\n``, which the slow path also strips); a blank line is bad;
* a cell is optional spaces or tabs, a number, optional spaces or tabs; or, as RFC 4180
  has it, a double quote as its very first byte, then the same inside, then the closing
  quote as its last byte (``"1.5"``, ``" 1.5 "``; not ``1, "2"``);
* a number is ``[+-]`` then ``digits[.digits]``, ``.digits`` or ``digits.``, then
  optionally ``(e|E)[+-]digits``; or ``nan``, ``inf``, ``infinity`` in any case with an
  optional sign. No underscores and no hexadecimal, although ``float`` takes both.

Values are what ``float(text)`` gives, bit for bit (``np.float32(float(text))`` for a
float32 output). Clinger's fast path covers a mantissa of at most 2**53 times a power
of ten up to 10**22, both exact doubles; the Eisel-Lemire algorithm covers the rest
with one or two 64x128-bit products against a table of powers of five. A mantissa
beyond 19 significant digits is cut to 19 and bracketed: when the cut value and the
one just above it round alike, that is the answer. The rare cells the algorithm cannot
decide are recorded and set afterwards by Python's ``float``, so no result is ever
approximate.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import intrinsic

_U64 = np.uint64
_LOW32, _32 = _U64(0xFFFFFFFF), _U64(32)
_ALL_ONES = _U64(0xFFFFFFFFFFFFFFFF)
_TEN, _ONE = _U64(10), _U64(1)
_SIGN_BIT = _U64(1 << 63)
_HIDDEN_BIT = _U64(1 << 52)
_MAX_FAST_MANTISSA = _U64(1 << 53)
_MAX_CUT_MANTISSA_DIGITS = 19  # 10**19 - 1 < 2**64: nineteen digits never wrap
_EXPONENT_CLAMP = 1 << 40  # explicit exponents beyond this saturate; far past any double
_INF_BITS = _U64(0x7FF0000000000000)
_NAN_BITS = _U64(0x7FF8000000000000)  # what float("nan") gives

_SMALLEST_POWER, _LARGEST_POWER = -342, 308  # w * 10**q with q outside is 0 or inf
_NAN, _INFINITY = (np.frombuffer(word, dtype=np.uint8) for word in (b"nan", b"infinity"))
_POW10 = np.array([10.0 ** k for k in range(23)])  # every one an exact double

_OK, _EXACT, _BAD = 0, 1, -1  # _number: parsed; needs Python's float; not a number
_FIXES_PER_PIECE = 256  # recorded without a second pass; more are rare


def _powers_of_five() -> np.ndarray:
    """5**q for q in [-342, 308] as 128-bit fractions [high, low], top bit set.

    Positive powers are truncated; negative ones are 2**b // 5**-q + 1, the table
    the Eisel-Lemire algorithm is proven correct with (Lemire, "Number Parsing at a
    Gigabyte per Second", 2021; Mushtak and Lemire, 2023).
    """
    rows = []
    for q in range(_SMALLEST_POWER, _LARGEST_POWER + 1):
        if q < 0:
            power = 5 ** -q
            z = power.bit_length()  # 2**(z-1) < 5**-q < 2**z
            if q >= -27:
                c = 2 ** (z + 127) // power + 1
            else:
                c = 2 ** (2 * z + 128) // power + 1
                c >>= max(c.bit_length() - 128, 0)
        else:
            c = 5 ** q
            c = c << (128 - c.bit_length()) if c.bit_length() < 128 else c >> (c.bit_length() - 128)
        rows.append((c >> 64, c & ((1 << 64) - 1)))
    return np.array(rows, dtype=np.uint64)


_POW5 = _powers_of_five()


@numba.njit(cache=True)
def _mul128(a, b):
    """(high, low) 64-bit halves of the 128-bit product a * b, from 32-bit halves."""
    a_lo, a_hi = a & _LOW32, a >> _32
    b_lo, b_hi = b & _LOW32, b >> _32
    lo_lo, lo_hi, hi_lo = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo
    middle = (lo_lo >> _32) + (lo_hi & _LOW32) + (hi_lo & _LOW32)  # < 2**34: no wrap
    low = (middle << _32) | (lo_lo & _LOW32)
    high = a_hi * b_hi + (lo_hi >> _32) + (hi_lo >> _32) + (middle >> _32)
    return high, low


@numba.njit(cache=True)
def _eisel_lemire(w, q):
    """(decided, bits) of the double nearest w * 10**q, for w > 0; bits lack the sign."""
    if q < _SMALLEST_POWER:
        return True, _U64(0)
    if q > _LARGEST_POWER:
        return True, _INF_BITS
    lz = np.int64(leading_zeros(w))
    w = w << _U64(lz)
    row = q - _SMALLEST_POWER
    high, low = _mul128(w, _POW5[row, 0])
    if (high & _U64(0x1FF)) == _U64(0x1FF):  # the 55 bits kept may carry: refine
        carry_high, _ = _mul128(w, _POW5[row, 1])
        low += carry_high
        if carry_high > low:
            high += _ONE
    if low == _ALL_ONES and not (-27 <= q <= 55):
        return False, _U64(0)  # 5**q is inexact in the table and the bits are on a boundary
    upper = np.int64(high >> _U64(63))
    shift = _U64(upper + 9)  # keep 54 bits: 53 and one to round with
    mantissa = high >> shift
    # (217706 * q) >> 16 is floor(q * log2(10)), exact over the table's range.
    power2 = ((217706 * q) >> 16) + 63 + upper - lz + 1023
    if power2 <= 0:  # subnormal, or below half the smallest subnormal
        if 1 - power2 >= 64:
            return True, _U64(0)
        mantissa >>= _U64(1 - power2)
        mantissa += mantissa & _ONE
        mantissa >>= _ONE
        # Rounding up may reach 2**52: exponent field 1, fraction 0, the smallest normal.
        return True, mantissa
    if (low <= _ONE and -4 <= q <= 23 and (mantissa & _U64(3)) == _ONE
            and (mantissa << shift) == high):  # exactly halfway: round to even, i.e. down
        mantissa &= ~_ONE
    mantissa += mantissa & _ONE
    mantissa >>= _ONE
    if mantissa >= _HIDDEN_BIT << _ONE:  # rounding carried into a new bit
        mantissa = _HIDDEN_BIT
        power2 += 1
    if power2 >= 0x7FF:
        return True, _INF_BITS
    return True, (mantissa & ~_HIDDEN_BIT) | (_U64(power2) << _U64(52))


# The parsers take the text as the address of its first byte, not as an array. Numba
# would count references to the array at every call of the inlined number parser
# (calls that cost more than the parsing itself) and check every index for being
# negative; and with an address one compiled version serves writable and read-only
# buffers alike.

@intrinsic
def _at(typingctx, text, p):
    """The byte at address text + p."""
    def codegen(context, builder, sig, args):
        where = builder.inttoptr(builder.add(args[0], args[1]), ir.IntType(8).as_pointer())
        return builder.load(where)
    return types.uint8(text, p), codegen


@intrinsic
def _load8(typingctx, text, p):
    """The eight bytes from address text + p as one uint64, the first byte lowest (on
    the little-endian machines Numba compiles for: x86-64, AArch64, ppc64le)."""
    def codegen(context, builder, sig, args):
        where = builder.inttoptr(builder.add(args[0], args[1]), ir.IntType(64).as_pointer())
        return builder.load(where, align=1)
    return types.uint64(text, p), codegen


@intrinsic
def _as_double(typingctx, bits):
    """The float64 whose IEEE 754 bits are ``bits``."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(bits), codegen


@numba.njit(cache=True)
def _peek(text, p, stop):
    """The byte at p, or 0 (which nothing accepts) past the end."""
    return _at(text, p) if p < stop else np.uint8(0)


@numba.njit(cache=True)
def _is_digit(byte):
    return 48 <= byte <= 57


@numba.njit(cache=True)
def _eight_digits(chunk):
    """Whether all eight bytes of ``chunk`` are ASCII digits (Lemire's SWAR test)."""
    return (((chunk + _U64(0x4646464646464646)) | (chunk - _U64(0x3030303030303030)))
            & _U64(0x8080808080808080)) == _U64(0)


@numba.njit(cache=True)
def _eight_digit_value(chunk):
    """The number eight ASCII digits spell, with three multiplications."""
    chunk -= _U64(0x3030303030303030)
    chunk = chunk * _TEN + (chunk >> _U64(8))
    mask = _U64(0x000000FF000000FF)
    return (((chunk & mask) * _U64(0x000F424000000064))
            + (((chunk >> _U64(16)) & mask) * _U64(0x0000271000000001))) >> _32


@numba.njit(cache=True)
def _four_digits(chunk):
    """Whether the first four bytes of ``chunk`` are ASCII digits."""
    return (((chunk + _U64(0x46464646)) | (chunk - _U64(0x30303030)))
            & _U64(0x80808080)) == _U64(0)


@numba.njit(cache=True)
def _four_digit_value(chunk):
    """The number the first four bytes of ``chunk`` spell, given they are digits."""
    chunk -= _U64(0x30303030)
    chunk = chunk * _TEN + (chunk >> _U64(8))  # byte 0: first two digits, byte 2: last two
    return (chunk & _U64(0xFF)) * _U64(100) + ((chunk >> _U64(16)) & _U64(0xFF))


@numba.njit(cache=True)
def _special(text, p, stop, sign):
    """nan, inf or infinity at p, in any case: (end, value, status)."""
    n = 0
    while n < len(_INFINITY) and (_peek(text, p + n, stop) | 0x20) == _INFINITY[n]:
        n += 1
    if n == 3 or n == 8:
        return p + n, _as_double(_INF_BITS | sign), _OK
    n = 0
    while n < 3 and (_peek(text, p + n, stop) | 0x20) == _NAN[n]:
        n += 1
    if n == 3:
        return p + 3, _as_double(_NAN_BITS | sign), _OK
    return p, 0.0, _BAD


@numba.njit(cache=True)
def _cut_mantissa(text, int_start, int_end, frac_start, frac_end, exponent):
    """More than 19 digits: (w, q, cut) with w the first 19 significant digits.

    ``cut`` is False when every digit left out is 0, so that w * 10**q is exact.
    """
    i = int_start
    while i < frac_end and (_at(text, i) == 48 or _at(text, i) == 46):  # leading 0s, the point
        i += 1
    w, digits = _U64(0), 0
    while i < frac_end and digits < _MAX_CUT_MANTISSA_DIGITS:
        if _at(text, i) != 46:
            w = w * _TEN + _U64(_at(text, i) - 48)
            digits += 1
        i += 1
    q = exponent + (int_end - i) if i <= int_end else exponent - (i - frac_start)
    for j in range(i, frac_end):
        if _at(text, j) != 46 and _at(text, j) != 48:
            return w, q, True
    return w, q, False


@numba.njit(cache=True, error_model="numpy", inline="always")
def _number(text, p, stop):
    """Parse the number at p: (end, value, status), status one of _OK, _EXACT, _BAD."""
    sign = _U64(0)
    byte = _peek(text, p, stop)
    if byte == 45 or byte == 43:  # - +
        sign = _SIGN_BIT if byte == 45 else _U64(0)
        p += 1
        byte = _peek(text, p, stop)
    w = _U64(0)
    int_start = p
    while _is_digit(byte):
        w = w * _TEN + _U64(byte - 48)  # wraps past 19 digits; redone below then
        p += 1
        byte = _peek(text, p, stop)
    int_end = frac_start = frac_end = p
    point = byte == 46
    if point:
        p += 1
        frac_start = p
        # Fractions go eight digits at a time, then four, then one.
        while p + 8 <= stop:
            chunk = _load8(text, p)
            if _eight_digits(chunk):
                w = w * _U64(100000000) + _eight_digit_value(chunk)
                p += 8
                continue
            if _four_digits(chunk):
                w = w * _U64(10000) + _four_digit_value(chunk)
                p += 4
            break
        byte = _peek(text, p, stop)
        while _is_digit(byte):
            w = w * _TEN + _U64(byte - 48)
            p += 1
            byte = _peek(text, p, stop)
        frac_end = p
    n_digits = (int_end - int_start) + (frac_end - frac_start)
    if n_digits == 0:
        if point:
            return p, 0.0, _BAD
        return _special(text, p, stop, sign)
    exponent = 0
    if (byte | 0x20) == 101:  # e E
        p += 1
        byte = _peek(text, p, stop)
        negative = byte == 45
        if byte == 45 or byte == 43:
            p += 1
            byte = _peek(text, p, stop)
        if not _is_digit(byte):
            return p, 0.0, _BAD
        while _is_digit(byte):
            if exponent < _EXPONENT_CLAMP:
                exponent = exponent * 10 + (byte - 48)
            p += 1
            byte = _peek(text, p, stop)
        if negative:
            exponent = -exponent
    q = exponent - (frac_end - frac_start)
    cut = False
    if n_digits > _MAX_CUT_MANTISSA_DIGITS:
        w, q, cut = _cut_mantissa(text, int_start, int_end, frac_start, frac_end, exponent)
    if w == 0:
        return p, _as_double(sign), _OK
    if not cut and -22 <= q <= 22 and w <= _MAX_FAST_MANTISSA:  # Clinger: one exact op
        value = np.float64(np.int64(w))  # exact; the signed conversion is one instruction
        value = value * _POW10[q] if q >= 0 else value / _POW10[-q]
        return p, -value if sign else value, _OK
    decided, bits = _eisel_lemire(w, q)
    if cut:  # the digits lie in [w, w + 1) * 10**q: both ends must round alike
        decided_above, bits_above = _eisel_lemire(w + _ONE, q)
        decided = decided and decided_above and bits == bits_above
    return p, _as_double(bits | sign), (_OK if decided else _EXACT)


@numba.njit(cache=True)
def _skip_blanks(text, p, stop):
    byte = _peek(text, p, stop)
    while byte == 32 or byte == 9:
        p += 1
        byte = _peek(text, p, stop)
    return p


@numba.njit(cache=True, error_model="numpy")
def _parse_range(text, p, stop, out, row0, n_rows, fixes):
    """Parse the lines at text[p:stop] into out[row0 : row0 + n_rows].

    Returns (first bad row or -1, where parsing stopped, cells that need Python's
    float). Their (row, col, start, end) go into ``fixes`` while it has room; all are
    counted.
    """
    ncols = out.shape[1]
    n_fixes = 0
    for row in range(row0, row0 + n_rows):
        for col in range(ncols):
            # RFC 4180: a quote opens a cell only as its first byte; blanks may pad the
            # number inside the quotes, or the cell when it is not quoted.
            quoted = _peek(text, p, stop) == 34
            if quoted:
                p += 1
            p = _skip_blanks(text, p, stop)
            start = p
            p, value, status = _number(text, p, stop)
            if status == _BAD:
                return row, p, n_fixes
            if status == _EXACT:
                if n_fixes < fixes.shape[0]:
                    fixes[n_fixes, 0], fixes[n_fixes, 1] = row, col
                    fixes[n_fixes, 2], fixes[n_fixes, 3] = start, p
                n_fixes += 1
            p = _skip_blanks(text, p, stop)
            if quoted:
                if _peek(text, p, stop) != 34:
                    return row, p, n_fixes
                p += 1
            out[row, col] = value
            if col + 1 < ncols:
                if _peek(text, p, stop) != 44:  # ,
                    return row, p, n_fixes
                p += 1
        if p < stop:  # else this is the last line, and it has no newline
            byte = _at(text, p)
            if byte == 13:  # \r\n, or a \r that ends the text
                byte = _at(text, p + 1) if p + 1 < stop else np.uint8(10)
                p += 1
            if byte != 10:
                return row, p, n_fixes
            p += 1
    return -1, p, n_fixes


@numba.njit(parallel=True, cache=True)
def _parse_pieces(text, bounds, first_rows, out, fixes, results):
    for k in numba.prange(len(bounds) - 1):
        bad, end, n_fixes = _parse_range(text, bounds[k], bounds[k + 1], out, first_rows[k],
                                         first_rows[k + 1] - first_rows[k], fixes[k])
        results[k, 0], results[k, 1], results[k, 2] = bad, end, n_fixes


@numba.njit(cache=True)
def _count_range(text, start, stop):
    """Lines in text[start:stop]: newlines, plus one for a last line without one."""
    n = 0
    for i in range(start, stop):
        n += _at(text, i) == 10
    if stop > start and _at(text, stop - 1) != 10:
        n += 1
    return n


@numba.njit(parallel=True, cache=True)
def _count_pieces(text, bounds, counts):
    for k in numba.prange(len(bounds) - 1):
        counts[k] = _count_range(text, bounds[k], bounds[k + 1])


@numba.njit(cache=True)
def _split(text, size, pieces):
    """Offsets cutting text[:size] into ``pieces`` runs of whole lines of about equal size."""
    bounds = np.empty(pieces + 1, dtype=np.int64)
    bounds[0], bounds[pieces] = 0, size
    for k in range(1, pieces):
        p = max(size * k // pieces, bounds[k - 1])
        while 0 < p < size and _at(text, p - 1) != 10:  # a piece starts after a newline
            p += 1
        bounds[k] = p
    return bounds


def count_lines(buf: np.ndarray) -> int:
    """Lines in ``buf``: newlines, plus one if the last byte is not a newline (0 for empty)."""
    buf = _as_bytes(buf)
    return int(_count_range(_address(buf), 0, len(buf)))


def parse_lines(buf: np.ndarray, n_lines: int, out: np.ndarray, threads: int = 1) -> int:
    """Parse ``n_lines`` lines of ``buf`` (a 1-D uint8 array of whole lines; the last
    line may lack its newline) into ``out`` (float64 or float32, C-contiguous, shape
    (n_lines, ncols)). Returns -1 when every line parsed, else the index of the first
    line that does not parse (the caller then builds the message with its own slow path).

    With ``threads`` > 1 the buffer is cut at newlines into that many pieces parsed in
    parallel, with the same result as one thread. Every line before a bad one is
    parsed; rows from the bad one on hold unspecified values. A ``buf`` that does not
    hold ``n_lines`` lines (``count_lines``) raises ValueError.
    """
    buf = _as_bytes(buf)
    _check(n_lines, out, threads)
    text, size = _address(buf), len(buf)
    fixes = np.empty((threads, _FIXES_PER_PIECE, 4), dtype=np.int64)
    results = np.empty((threads, 3), dtype=np.int64)  # first bad row, end, cells to fix
    if threads == 1:
        # One pass: lines are counted only when the parse did not end on the last one.
        bounds = np.array([0, size], dtype=np.int64)
        first_rows = np.array([0, n_lines], dtype=np.int64)
        results[0] = _parse_range(text, 0, size, out, 0, n_lines, fixes[0])
        if results[0, 0] >= 0 or results[0, 1] != size:
            _check_count(_count_range(text, 0, size), n_lines)
    else:
        bounds = _split(text, size, threads)
        counts = np.empty(threads, dtype=np.int64)
        with _numba_threads(threads):
            _count_pieces(text, bounds, counts)
            _check_count(int(counts.sum()), n_lines)
            first_rows = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            _parse_pieces(text, bounds, first_rows, out, fixes, results)
    for k in np.flatnonzero(results[:, 2]):
        _apply_fixes(buf, bounds[k], bounds[k + 1], out, first_rows[k], first_rows[k + 1],
                     fixes[k], results[k, 2])
    bad = results[:, 0]
    return int(bad[bad >= 0].min()) if (bad >= 0).any() else -1


def _apply_fixes(buf, start, stop, out, row0, row_stop, found, n_fixes):
    """Set the cells of one piece that the fast algorithms left undecided."""
    if n_fixes > len(found):  # too many to record on the first pass: parse again
        found = np.empty((n_fixes, 4), dtype=np.int64)
        _parse_range(_address(buf), start, stop, out, row0, row_stop - row0, found)
    with np.errstate(over="ignore"):  # beyond float32's range is inf, as np.float32() gives
        for row, col, begin, end in found[:n_fixes]:
            out[row, col] = float(buf[begin:end].tobytes())


def _address(buf: np.ndarray) -> int:
    # One compiled version serves every buffer (writable or not), and the caller's
    # reference keeps the memory alive while Numba reads it.
    return buf.ctypes.data


def _as_bytes(buf) -> np.ndarray:
    if not (isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1):
        raise TypeError(f"buf must be a 1-D uint8 NumPy array, got {type(buf).__name__} "
                        f"{getattr(buf, 'dtype', '')} {getattr(buf, 'shape', '')}")
    return np.ascontiguousarray(buf)


def _check(n_lines: int, out: np.ndarray, threads: int) -> None:
    if not (isinstance(out, np.ndarray) and out.dtype in (np.float64, np.float32)
            and out.ndim == 2 and out.flags.c_contiguous and out.flags.writeable):
        raise TypeError("out must be a writable C-contiguous 2-D float64 or float32 array")
    if out.shape[0] != n_lines or out.shape[1] < 1:
        raise ValueError(f"out must have shape (n_lines={n_lines}, ncols >= 1), got {out.shape}")
    if not (isinstance(threads, (int, np.integer)) and threads >= 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")


def _check_count(count: int, n_lines: int) -> None:
    if count != n_lines:
        raise ValueError(f"n_lines is {n_lines}, but buf holds {count} lines")


class _numba_threads:
    """Run Numba's parallel loops on ``n`` threads (at most as many as it started), then
    give back the count the program had set."""

    def __init__(self, n: int):
        self.n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))

    def __enter__(self):
        self.before = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.before)


def warm_up() -> None:
    """Compile (or load from Numba's cache) the parsers for both output dtypes, serial
    and parallel, so that the first real call does not pay for it (seconds, cold)."""
    buf = np.frombuffer(b'1.5, "2e-3"\n-inf,123456789012345678901234\n', dtype=np.uint8)
    for dtype in (np.float64, np.float32):
        for threads in (1, 2):
            parse_lines(buf, 2, np.empty((2, 2), dtype=dtype), threads)
