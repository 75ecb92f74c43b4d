"""Tests for mpi_dml.data.formats.csv_numbers, the Numba parser of CSV number lines:
values bit for bit against Python's ``float``, whole files against pandas and
``np.loadtxt``, the lines it refuses, and several threads against one.

    $ .venv/bin/python -m pytest -q tests/test_csv_numbers.py
    $ .venv/bin/python tests/test_csv_numbers.py [rows]    # speed next to pandas (not a test)
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numba
import numpy as np
import pytest

from mpi_dml.data.formats import csv_numbers
from mpi_dml.data.formats.csv_numbers import count_lines, parse_lines

DTYPES = (np.float64, np.float32)


def as_buf(text) -> np.ndarray:
    return np.frombuffer(text.encode() if isinstance(text, str) else text, dtype=np.uint8)


def parse(text, ncols: int, dtype=np.float64, threads: int = 1):
    """(first bad line or -1, the parsed rows) for ``text``."""
    buf = as_buf(text)
    out = np.full((count_lines(buf), ncols), -7.0, dtype=dtype)
    return parse_lines(buf, len(out), out, threads), out


def expected(strings, dtype=np.float64) -> np.ndarray:
    """What the parser must give: Python's float, then numpy's cast for float32."""
    with np.errstate(over="ignore"):  # beyond float32's range is inf, as intended
        return np.array([float(s) for s in strings], dtype=np.float64).astype(dtype)


def assert_same_bits(got, want):
    got, want = np.asarray(got).ravel(), np.asarray(want).ravel()
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = np.uint64 if got.dtype == np.float64 else np.uint32
    wrong = np.flatnonzero(got[~nan].view(bits) != want[~nan].view(bits))
    assert wrong.size == 0, (f"{wrong.size} values differ, first at {wrong[0]}: "
                             f"got {got[~nan][wrong[0]]!r}, want {want[~nan][wrong[0]]!r}")


# --- numbers to test with ---------------------------------------------------------

def decimal(n: int, k: int) -> str:
    """n / 10**k written out exactly, for n >= 0."""
    digits = str(n).rjust(k + 1, "0")
    return digits[: len(digits) - k] + ("." + digits[len(digits) - k:] if k else "")


def halfway_strings(doubles, rng) -> list:
    """Each double's exact midpoint with its neighbour away from zero, written out in
    full, and the same a hair (1e-25 relative) above or below it."""
    out = []
    for x in map(float, doubles):
        middle = Fraction(abs(x)) + Fraction(math.ulp(x)) / 2
        j = middle.denominator.bit_length() - 1  # the denominator is 2**j
        n = middle.numerator * 5 ** j  # middle = n / 10**j
        sign = "-" if x < 0 else ""
        out.append(sign + decimal(n, j))
        out.append(sign + decimal(n * 10 ** 25 + int(rng.choice([1, -1])), j + 25))
    return out


def random_doubles(rng, n: int) -> np.ndarray:
    """Finite doubles with uniformly random bits: every exponent, subnormals too."""
    x = rng.integers(0, 2 ** 64, size=2 * n, dtype=np.uint64).view(np.float64)
    return x[np.isfinite(x)][:n]


CLASSIC = [
    "9007199254740993", "9007199254740992.5", "9007199254740993.0000000000000000001",
    "9007199254740995", "18014398509481985", "0.1", "1e23", "8.98846567431158e307",
    "2.2250738585072011e-308", "2.2250738585072012e-308", "2.2250738585072014e-308",
    "2.225073858507201136057409796709131975934819546351645648e-308",
    "7.038531e-26", "1.7976931348623157e308", "1.7976931348623158e308",
    "1.7976931348623159e308",
    ("179769313486231580793728971405303415079934132710037826936173778"
     "98044496829276475094664901797758720709633028641669288791094655554785194040263065748867150"
     "58206819089020007083836762738548458177115317644757302700698555713669596228429148198608349"
     "36475292719074168444365510704342711559699508093042880177904174497791.999999999999999999"),
    "4.9406564584124654e-324", "2.4703282292062327e-324", "2.4703282292062328e-324",
    "4.940656458412465441765687928682213723651e-324", "1e-320", "1e308", "1e309", "1e-400",
    "-1e-400", "-1e309", "1e-342", "1e-343", "1e-324", "3e-324", "1e-323",
    "123456789012345678901234567890e-330", "0.000000000000000000000000000001e-290",
    "1e99999999999999999999", "1e-99999999999999999999", "0e999999", "-0", "-0.0e-5", "0",
    "000123.4500", "0.0000000000000000000000000001234567890123456789012",
    "1234567890123456789", "12345678901234567890", "18446744073709551615",
    "18446744073709551616", "99999999999999999999999", "0.99999999999999999999999",
    "1.00000000000000011102230246251565404236316680908203125",  # halfway above 1
    "1.00000000000000011102230246251565404236316680908203124",
    "1.00000000000000011102230246251565404236316680908203126",
    "4.35679275e-20", "3.0540412e5", "7.3177701707893310e+15", "1.448997445238699",
    "5e-324", "2.2250738585072009e-308", "1.9156918820264798e-56", "6.6564021122018745e+264",
    "4.91e-6", "9.5e-5", "+.5", ".5", "5.", "-5.e3", "+5E+3", "1E-0", "7e0",
]

SPECIAL = ["nan", "NaN", "NAN", "-nan", "+nan", "inf", "-inf", "+inf", "Inf", "INF",
           "infinity", "Infinity", "-INFINITY", "+iNfInItY"]


def number_strings(rng, n: int) -> list:
    """About ``n`` number strings from every family the parser has a path for."""
    k = n // 10
    doubles = random_doubles(rng, 4 * k)
    moderate = rng.standard_normal(3 * k) * 10.0 ** rng.integers(-12, 12, 3 * k)
    strings = [repr(float(x)) for x in doubles[:k]]
    strings += [f"{x:.18e}" for x in doubles[k: 2 * k]]
    strings += [f"{x:.25g}" for x in doubles[2 * k: 3 * k]]
    strings += [f"{x:.17g}" for x in doubles[3 * k:]]
    precision = rng.integers(0, 10, k).tolist()
    strings += [f"{x:.{p}f}" for p, x in zip(precision, moderate[:k])]  # short decimals
    strings += [f"{x:.6g}" for x in moderate[k: 2 * k]]
    strings += [repr(float(x)) for x in moderate[2 * k:]]
    # Mantissas of 1 to 25 digits against exponents near both ends of the range.
    digits = rng.integers(1, 26, k)
    exps = np.where(rng.random(k) < 0.5, rng.integers(-360, -290, k), rng.integers(270, 330, k))
    for d, e in zip(digits.tolist(), exps.tolist()):
        lead, rest = int(rng.integers(1, 10)), int(rng.integers(0, 10 ** min(d - 1, 18)))
        mantissa = lead * 10 ** (d - 1) + rest
        strings.append(f"{mantissa}e{e}")
    # Integers around 2**53 and 2**64, where the fast paths end.
    for base in (2 ** 53, 2 ** 64, 10 ** 19):
        strings += [str(base + int(d)) for d in rng.integers(-3000, 3000, k // 10)]
    scale = 10.0 ** rng.integers(-20, 20, k // 4)
    strings += halfway_strings(rng.standard_normal(k // 4) * scale, rng)
    strings += halfway_strings(random_doubles(rng, k // 20), rng)
    # Leading zeros and signs on some of them.
    for i in rng.choice(len(strings), size=len(strings) // 10, replace=False):
        s = strings[i]
        sign = "-" if s.startswith("-") else rng.choice(["", "+"])
        strings[i] = sign + "0" * int(rng.integers(1, 30)) + s.lstrip("-")
    strings += CLASSIC + SPECIAL
    rng.shuffle(strings)
    return strings


def lay_out(strings: list, ncols: int, rng) -> bytes:
    """``strings`` as CSV lines of ``ncols`` cells, some quoted, padded, or ending \\r\\n."""
    cells = []
    for s in strings:
        roll = rng.random()
        if roll < 0.05:
            s = f'"{s}"'
        elif roll < 0.10:
            s = " " * int(rng.integers(1, 3)) + s + "\t"
        elif roll < 0.12:
            s = f'"\t {s}  "'  # blanks inside the quotes (RFC 4180: none before them)
        cells.append(s)
    lines = [",".join(cells[i: i + ncols]) for i in range(0, len(cells), ncols)]
    ends = rng.choice(["\n", "\r\n"], size=len(lines), p=[0.9, 0.1])
    return "".join(line + end for line, end in zip(lines, ends)).encode()


@pytest.fixture(scope="module")
def million():
    rng = np.random.default_rng(20261130)
    strings = number_strings(rng, 1_150_000)
    ncols = 10
    strings = strings[: len(strings) // ncols * ncols]
    return lay_out(strings, ncols, rng), ncols, strings


# --- values -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype,threads", [(np.float64, 1), (np.float32, 2)])
def test_a_million_numbers_match_python_float(million, dtype, threads):
    text, ncols, strings = million
    assert len(strings) >= 1_000_000
    bad, out = parse(text, ncols, dtype, threads)
    assert bad == -1
    assert_same_bits(out, expected(strings, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_classic_hard_cases_and_spellings(dtype):
    strings = CLASSIC + SPECIAL
    bad, out = parse("\n".join(strings) + "\n", 1, dtype)
    assert bad == -1
    assert_same_bits(out, expected(strings, dtype))


def test_float32_output_rounds_through_float64():
    # Just above the midpoint of float32 1 and its successor: correctly rounded to
    # float32 it is the successor, but float() rounds it to the midpoint itself,
    # which float32 rounds to even, 1. The rule is np.float32(float(text)).
    text = "1.0000000596046447753906250000000001"
    assert np.float32(float(text)) == np.float32(1.0)
    _, out = parse(text, 1, np.float32)
    assert out[0, 0] == np.float32(1.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_undecided_cells_are_set_exactly(threads):
    # Midpoints written with more than 19 digits: cut to 19, the two candidate values
    # round apart, so every one goes to Python's float; more than one pass records.
    rng = np.random.default_rng(7)
    strings = [s for s in halfway_strings(rng.uniform(1, 2, 600), rng) if len(s) > 25][:900]
    lines = [",".join(strings[i: i + 3]) for i in range(0, len(strings), 3)]
    text = ("\n".join(lines) + "\n").encode()
    buf = as_buf(text)
    undecided = csv_numbers._parse_range(buf.ctypes.data, 0, len(buf), np.empty((300, 3)),
                                         0, 300, np.empty((0, 4), dtype=np.int64))[2]
    assert undecided > csv_numbers._FIXES_PER_PIECE * threads
    bad, out = parse(text, 3, np.float64, threads)
    assert bad == -1
    assert_same_bits(out, expected(strings))


# --- against other readers --------------------------------------------------------

def pandas_exact(path) -> np.ndarray:
    import pandas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3 deprecates the option it honours
        frame = pandas.read_csv(path, header=None, engine="c", float_precision="round_trip")
    return frame.to_numpy(dtype=np.float64)


@pytest.mark.parametrize("fmt", ["%.18e", "%.6f", "%.17g", "%.3e"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_files_match_pandas_and_loadtxt(tmp_path, fmt, dtype):
    rng = np.random.default_rng(3)
    values = rng.standard_normal((2000, 7)) * 10.0 ** rng.integers(-30, 30, (2000, 7))
    values[::17, 3] = 0.0
    path = tmp_path / "t.csv"
    np.savetxt(path, values, fmt=fmt, delimiter=",")
    bad, out = parse(path.read_bytes(), 7, dtype, threads=2)
    assert bad == -1
    assert_same_bits(out, pandas_exact(path).astype(dtype))
    assert_same_bits(out, np.loadtxt(path, delimiter=",", dtype=np.float64).astype(dtype))


# --- what a line may be -----------------------------------------------------------

ACCEPTED = {
    " 1.5 ": 1.5, "\t-2\t": -2.0, '"3"': 3.0, '" 4e1 "': 40.0, '"\t-.25"': -0.25,
    "+.5": 0.5, "5.": 5.0, "5.e3": 5000.0, "-0": -0.0, "1E+02": 100.0, "NaN": np.nan,
    "-inf": -np.inf, "+Infinity": np.inf, "INF": np.inf, '"nan"': np.nan, "00": 0.0,
}


@pytest.mark.parametrize("cell", list(ACCEPTED))
def test_accepted_cells(cell):
    bad, out = parse(f"1,{cell}\n{cell},2", 2)
    assert bad == -1
    want = np.array([[1.0, ACCEPTED[cell]], [ACCEPTED[cell], 2.0]])
    assert_same_bits(out, want)


@pytest.mark.parametrize("text,rows", [
    ("1,2\r\n3,4\r\n", 2), ("1,2\n3,4", 2), ("1,2\r\n3,4\r", 2), ("1,2", 1), ("1,2\n", 1),
])
def test_line_endings(text, rows):
    bad, out = parse(text, 2)
    assert bad == -1
    assert_same_bits(out, np.array([[1.0, 2.0], [3.0, 4.0]])[:rows])


GOOD = "1.5,-2\n3,4e1\n"  # two good lines before each bad one
BAD_LINES = [
    "7", "7,8,9", "7,8,", ",8", "7, ", "7,\t", "1.2.3,8", "1e,8", "1e+,8", "1E-,8", "abc,8",
    "--1,8", "+-1,8", "1_000,8", "0x10,8", "1 2,8", "7,8 9", '"1.5,8', ' "1.5",8', '\t"-.25",8', '"1.5" ,8',
    '1.5",8', '""1.5"",8', '"",8', ".,8", "+,8", "-,8", "e5,8", ".e5,8", "infin,8", "nana,8",
    "in,8", "infinityy,8", "7;8", "7\t8", "7,8\r9", "7\r,8", "", "\r", " ", "7,8\x00",
    "١,8",  # an Arabic-Indic digit, which float() takes
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("line", BAD_LINES)
def test_first_bad_line_is_named_and_lines_before_it_parse(line, threads):
    bad, out = parse(GOOD + line + "\n5,6\n", 2, threads=threads)
    assert bad == 2
    assert_same_bits(out[:2], np.array([[1.5, -2.0], [3.0, 40.0]]))


def test_a_blank_line_in_the_middle_is_bad_and_the_first_bad_line_wins():
    assert parse("1,2\n\n3,4\n", 2)[0] == 1
    assert parse("1,2\r\n\r\n3,4\r\n", 2)[0] == 1
    text = GOOD * 50 + "x,1\n" + GOOD * 50 + "1,y\n" + GOOD
    for threads in (1, 2, 3, 8):
        assert parse(text, 2, threads=threads)[0] == 100


# --- threads ----------------------------------------------------------------------

@pytest.mark.parametrize("threads", [2, 3, 7, 64])
def test_threads_give_the_same_result_as_one(threads):
    rng = np.random.default_rng(threads)
    rows = []
    for _ in range(3000):  # lines of very uneven length
        pad = " " * int(rng.integers(0, 200)) if rng.random() < 0.1 else ""
        rows.append(",".join(pad + repr(float(x)) for x in rng.standard_normal(4)))
    text = "\n".join(rows)  # no newline after the last line
    bad1, one = parse(text, 4, np.float64, 1)
    bad_n, many = parse(text, 4, np.float64, threads)
    assert bad1 == bad_n == -1
    assert_same_bits(many, one)
    assert_same_bits(one, expected(",".join(rows).split(",")).reshape(one.shape))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="Numba started one thread")
def test_the_program_thread_count_is_given_back():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert parse("1,2\n3,4\n", 2, threads=2)[0] == -1
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


def test_more_pieces_than_lines():
    bad, out = parse("1,2\n3,4\n", 2, threads=5)
    assert bad == -1
    assert_same_bits(out, np.array([[1.0, 2.0], [3.0, 4.0]]))


# --- counting and checks ----------------------------------------------------------

@pytest.mark.parametrize("text,n", [
    (b"", 0), (b"1", 1), (b"1\n", 1), (b"1\n2", 2), (b"1\r\n2\r\n", 2), (b"1\r\n2", 2),
    (b"\n", 1), (b"\n\n", 2),
])
def test_count_lines(text, n):
    assert count_lines(as_buf(text)) == n


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("text,n_lines", [("1\n2\n", 1), ("1\n2\n", 3), ("1\nx\n", 3),
                                          ("", 1), ("1", 0)])
def test_a_wrong_line_count_raises(text, n_lines, threads):
    with pytest.raises(ValueError, match="n_lines"):
        parse_lines(as_buf(text), n_lines, np.empty((n_lines, 1)), threads)


def test_empty_buffer_has_no_lines():
    assert parse_lines(as_buf(b""), 0, np.empty((0, 3)), 2) == -1


@pytest.mark.parametrize("buf,out,threads,error", [
    (b"1\n", np.empty((1, 1)), 1, TypeError),
    (np.array([49, 10], dtype=np.int8), np.empty((1, 1)), 1, TypeError),
    (as_buf(b"1\n"), np.empty((1, 1), dtype=np.float16), 1, TypeError),
    (as_buf(b"1\n"), np.empty((1, 4))[:, ::2], 1, TypeError),
    (as_buf(b"1\n"), np.empty((1, 1)), 0, ValueError),
    (as_buf(b"1\n"), np.empty((2, 1)), 1, ValueError),
    (as_buf(b"1\n"), np.empty((1, 0)), 1, ValueError),
])
def test_argument_checks(buf, out, threads, error):
    with pytest.raises(error):
        parse_lines(buf, 1, out, threads)


def test_warm_up_compiles_both_dtypes():
    csv_numbers.warm_up()
    kinds = {str(sig[3]) for sig in csv_numbers._parse_range.signatures}
    assert {"array(float64, 2d, C)", "array(float32, 2d, C)"} <= kinds


# --- speed (not a test: python tests/test_csv_numbers.py [rows]) -------------------

def _best_times(contenders: dict, repeats: int = 5) -> dict:
    """Best wall time of each contender, taking turns so that load from other
    processes falls on all of them alike."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def compare_speed(rows: int = 500_000, cols: int = 50, folder: str = "/tmp") -> None:
    """Parse the same files with pandas' C engine and with parse_lines; print MB/s.

    Each file is 20,000 distinct rows of standard normal values repeated to ``rows``.
    Values are checked against pandas before anything is timed.
    """
    block = np.random.default_rng(0).standard_normal((20_000, cols))
    formats = {"%.6f": lambda v: f"{v:.6f}", "repr": repr, "%.18e": lambda v: f"{v:.18e}"}
    csv_numbers.warm_up()
    print(f"{rows} x {cols}, best of 5 taking turns; Numba has "
          f"{numba.config.NUMBA_NUM_THREADS} threads")
    for name, fmt in formats.items():
        lines = "".join(",".join(fmt(float(v)) for v in row) + "\n" for row in block).encode()
        repeats = max(1, rows // len(block))
        path = Path(folder) / f"csv_numbers_speed_{name.strip('%.')}.csv"
        path.write_bytes(lines * repeats)
        try:
            _compare_on(path, len(block) * repeats, cols, name)
        finally:
            path.unlink()


def _compare_on(path: Path, n: int, cols: int, name: str) -> None:
    import pandas

    buf = np.fromfile(path, dtype=np.uint8)
    out = np.empty((n, cols))
    assert parse_lines(buf, n, out) == -1
    assert_same_bits(out[:20_000], pandas_exact(path)[:20_000])
    peer = "pandas.read_csv(path, engine='c')"
    contenders = {peer: lambda: pandas.read_csv(path, header=None, engine="c")}
    for t in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
        contenders[f"parse_lines(buf, threads={t})"] = lambda t=t: parse_lines(buf, n, out, t)
    contenders["parse_lines(np.fromfile(path), threads=1)"] = \
        lambda: parse_lines(np.fromfile(path, dtype=np.uint8), n, out)
    best = _best_times(contenders)
    mb = len(buf) / 1e6
    print(f"{name}: {mb:.0f} MB")
    for who, seconds in best.items():
        print(f"  {who:42s} {seconds:6.3f} s {mb / seconds:6.0f} MB/s  "
              f"{best[peer] / seconds:4.1f}x pandas")


if __name__ == "__main__":
    compare_speed(int(sys.argv[1]) if len(sys.argv) > 1 else 500_000)
