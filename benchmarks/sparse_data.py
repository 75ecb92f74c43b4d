"""Criteo-like sparse rows for ``bench_sparse.py``: the generator and the text writers.

    $ python benchmarks/sparse_data.py --out /tmp/sparse   # train/test .svm and .vw

The generator (``make_rows``), seeded, fully vectorised:

* 2**20 features. Features 0-12 are 13 numeric fields (Criteo's integer features): each
  is present in a row with probability 0.85, with a value ``log1p(k)`` to 3 decimals for
  a count ``k`` drawn from a geometric distribution (p = 0.3, capped at 64), so values are
  small positive reals from 0.693 to 4.174.
* The other 2**20 - 13 features are the values of 30 categorical fields (Criteo's hashed
  categoricals), one-hot with value 1. Field ``f`` owns a disjoint block of ``V_f``
  features, the sizes log-spaced from about 15 to about 300k. Each field is present
  with probability 0.97 and then takes one value whose rank ``r`` (0-based) within the
  field is drawn from a bounded Zipf law, P(r) proportional to (r + 1)**-1.1: feature
  popularity follows a power law, as in click logs. A fixed random permutation of the
  categorical feature ids maps ranks to feature ids, as hashing would, so popular
  features are spread over the index space. Fields are disjoint, so a row has no
  repeated feature: about 13 x 0.85 + 30 x 0.97 = 40.2 nonzeros a row.
* Labels from a sparse linear model: 30% of the features (chosen at random) carry a
  weight drawn from N(0, 0.7**2), the rest 0; the margin is ``x @ w`` minus its median
  (so the classes are balanced), and the label is a logistic draw,
  ``y = 1`` with probability ``1 / (1 + exp(-margin))``.

Rows come back as a ``scipy.sparse.csr_matrix`` (float64 values, int32 indices sorted
within each row), float64 labels 0/1, the true margins, and the value of each nonzero
as a small code into ``VALUE_TEXT`` (code 0 is the categorical ``1``), so the text
writers print exactly the digits the matrix holds without formatting a float per
nonzero.

``write_text`` writes the LIBSVM form (``label idx:val ...``, 1-based indices, labels
0/1) and Vowpal Wabbit's form (``-1 | idx:val ...``, 0-based feature names, labels
-1/1) with NumPy byte arithmetic, a block of rows at a time: no Python loop per row.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

N_FEATURES = 1 << 20
N_NUMERIC = 13
N_CATEGORICAL = 30
P_NUMERIC = 0.85
P_CATEGORICAL = 0.97
ZIPF_EXPONENT = 1.1
COUNT_P = 0.3
MAX_COUNT = 64
WEIGHT_SHARE = 0.3
WEIGHT_STD = 0.7
EXPECTED_NNZ_PER_ROW = N_NUMERIC * P_NUMERIC + N_CATEGORICAL * P_CATEGORICAL

# Code 0 is a categorical one-hot; code k >= 1 is a numeric field's log1p(k).
VALUE_TEXT = ["1"] + [f"{np.log1p(k):.3f}" for k in range(1, MAX_COUNT + 1)]
VALUES = np.array([float(t) for t in VALUE_TEXT])


class Rows(NamedTuple):
    x: sp.csr_matrix      # float64 values, int32 indices sorted within each row
    y: np.ndarray         # float64 labels 0/1
    codes: np.ndarray     # each nonzero's code into VALUE_TEXT
    margin: np.ndarray    # the true model's margin: P(y = 1) = 1 / (1 + exp(-margin))


def field_sizes(n_features: int = N_FEATURES) -> np.ndarray:
    """Vocabulary sizes of the categorical fields: log-spaced, summing to every feature
    that is not numeric."""
    raw = np.geomspace(1, 20_000, N_CATEGORICAL)
    sizes = np.floor(raw / raw.sum() * (n_features - N_NUMERIC)).astype(np.int64)
    sizes[-1] += n_features - N_NUMERIC - sizes.sum()
    return sizes


def _zipf_ranks(rng, size: int, n: int) -> np.ndarray:
    """``n`` ranks in [0, size) with P(r) proportional to (r + 1)**-ZIPF_EXPONENT."""
    cdf = np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -ZIPF_EXPONENT)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), size - 1)


def make_rows(n_rows: int, seed: int = 0, n_features: int = N_FEATURES) -> Rows:
    """``n_rows`` Criteo-like rows (see the module docstring)."""
    # Two streams: the feature ids and the true weights do not depend on how many rows
    # are drawn, so rows from two calls with one seed come from the same model.
    rng, model_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    hashed = model_rng.permutation(n_features - N_NUMERIC) + N_NUMERIC
    weights = np.where(model_rng.random(n_features) < WEIGHT_SHARE,
                       model_rng.normal(0.0, WEIGHT_STD, n_features), 0.0)
    sizes = field_sizes(n_features)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ids = np.empty((n_rows, N_NUMERIC + N_CATEGORICAL), dtype=np.int64)
    code = np.zeros(ids.shape, dtype=np.uint8)
    ids[:, :N_NUMERIC] = np.arange(N_NUMERIC)
    counts = np.minimum(rng.geometric(COUNT_P, (n_rows, N_NUMERIC)), MAX_COUNT)
    code[:, :N_NUMERIC] = counts
    for f, (size, start) in enumerate(zip(sizes, starts)):
        ids[:, N_NUMERIC + f] = hashed[start + _zipf_ranks(rng, int(size), n_rows)]
    present = np.empty(ids.shape, dtype=bool)
    present[:, :N_NUMERIC] = rng.random((n_rows, N_NUMERIC)) < P_NUMERIC
    present[:, N_NUMERIC:] = rng.random((n_rows, N_CATEGORICAL)) < P_CATEGORICAL
    # Sort each row by feature id, missing fields last, then keep the present ones.
    ids[~present] = n_features
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    code = np.take_along_axis(code, order, axis=1)
    keep = ids < n_features
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    codes = code[keep]
    x = sp.csr_matrix((VALUES[codes], ids[keep].astype(np.int32), indptr.astype(np.int32)),
                      shape=(n_rows, n_features))
    margin = x @ weights
    margin -= np.median(margin)
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
    return Rows(x, y, codes, margin)


def _digits(values: np.ndarray) -> np.ndarray:
    """Decimal digit count of each non-negative integer."""
    return 1 + np.searchsorted(10 ** np.arange(1, 19, dtype=np.int64), values, side="right")


def _text_block(indptr, printed, codes, labels, label_text) -> bytes:
    """One block of rows as text: ``label_text[label] + " idx:val" * nnz + "\\n"``."""
    table = [t.encode() for t in VALUE_TEXT]
    width = max(map(len, table))
    value_bytes = np.array([list(t.ljust(width)) for t in table], dtype=np.uint8)
    value_len = np.array([len(t) for t in table])
    prefixes = [t.encode() for t in label_text]
    prefix_len = np.array([len(p) for p in prefixes])[labels]
    n_rows, nnz = len(labels), len(printed)
    per_row = np.diff(indptr)
    digits = _digits(printed)
    token_len = 2 + digits + value_len[codes]  # " " idx ":" val
    token_end = np.concatenate([[0], np.cumsum(token_len)])
    row_len = prefix_len + token_end[indptr[1:]] - token_end[indptr[:-1]] + 1  # + "\n"
    row_start = np.concatenate([[0], np.cumsum(row_len)[:-1]])
    row_of = np.repeat(np.arange(n_rows), per_row)
    # Where each token starts: its row's start, past the label, plus the row's tokens before it.
    start = (row_start + prefix_len - token_end[indptr[:-1]])[row_of] + token_end[:-1]
    out = np.empty(int(row_len.sum()), dtype=np.uint8)
    for which, prefix in enumerate(prefixes):
        rows = row_start[labels == which]
        for c, ch in enumerate(prefix):
            out[rows + c] = ch
    out[start] = ord(" ")
    for d in range(int(digits.max()) if nnz else 0):
        m = digits > d
        out[start[m] + digits[m] - d] = 48 + (printed[m] // 10 ** d) % 10
    out[start + 1 + digits] = ord(":")
    for c in range(width):
        m = value_len[codes] > c
        out[start[m] + 2 + digits[m] + c] = value_bytes[codes[m], c]
    out[row_start + row_len - 1] = ord("\n")
    return out.tobytes()


def split(rows: Rows, n: int) -> tuple[Rows, Rows]:
    """The first ``n`` rows and the rest."""
    cut = rows.x.indptr[n]
    return (Rows(rows.x[:n], rows.y[:n], rows.codes[:cut], rows.margin[:n]),
            Rows(rows.x[n:], rows.y[n:], rows.codes[cut:], rows.margin[n:]))


def write_files(folder: Path, rows: Rows, n_train: int) -> dict:
    """``train``/``test`` x ``.svm``/``.vw`` in ``folder``: {file name: path}."""
    paths = {}
    for part, name in zip(split(rows, n_train), ("train", "test")):
        for kind, suffix in (("libsvm", ".svm"), ("vw", ".vw")):
            path = Path(folder) / (name + suffix)
            write_text(path, part.x, part.y, part.codes, kind)
            paths[name + suffix] = str(path)
    return paths


def write_text(path, x, y, codes, kind: str, block: int = 50_000) -> int:
    """Write rows as ``kind`` "libsvm" (1-based, labels 0/1) or "vw" (0-based names,
    labels -1/1); returns the bytes written."""
    first, label_text = {"libsvm": (1, ["0", "1"]), "vw": (0, ["-1 |", "1 |"])}[kind]
    labels = y.astype(np.int64)
    written = 0
    with open(path, "wb") as fh:
        for a in range(0, x.shape[0], block):
            b = min(a + block, x.shape[0])
            lo, hi = x.indptr[a], x.indptr[b]
            text = _text_block(x.indptr[a:b + 1] - lo, x.indices[lo:hi].astype(np.int64) + first,
                               codes[lo:hi], labels[a:b], label_text)
            written += fh.write(text)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-rows", type=int, default=250_000)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for train/test .svm and .vw")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = make_rows(args.train_rows + args.test_rows, args.seed)
    for path in write_files(Path(args.out), rows, args.train_rows).values():
        print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
