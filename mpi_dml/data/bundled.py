"""Write real datasets that scikit-learn ships into the CSV format mpi_dml reads.

    $ python -m mpi_dml.data.bundled digits --out data
    $ python -m mpi_dml.data.bundled breast_cancer --out data

Each writes ``NAME_train.csv`` and ``NAME_test.csv`` (80/20, split with a fixed seed and
stratified by class) with a header row and a ``label`` column. Needs scikit-learn
(a dependency of mpi_dml); nothing is downloaded.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LOADERS = {"digits": "load_digits", "breast_cancer": "load_breast_cancer"}


def load(name: str):
    """(features, integer labels, feature names) of a scikit-learn bundled dataset."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, LOADERS[name])()
    names = [str(n).replace(" ", "_") for n in getattr(bunch, "feature_names", [])]
    if len(names) != bunch.data.shape[1]:
        names = [f"x{i}" for i in range(bunch.data.shape[1])]
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), names


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Train and test row indices with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test.extend(rows[: int(round(test_fraction * rows.size))])
    test = np.sort(np.array(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(y.size), test)
    return rng.permutation(train), test


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, names: list):
    header = ",".join(names + ["label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt=["%.10g"] * x.shape[1] + ["%d"])


def prepare(name: str, out: Path, test_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    x, y, names = load(name)
    train, test = stratified_split(y, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{name}_train.csv", out / f"{name}_test.csv"
    write_csv(paths[0], x[train], y[train], names)
    write_csv(paths[1], x[test], y[test], names)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpi_dml.data.bundled", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(LOADERS))
    parser.add_argument("--out", default="data", help="folder to write into (default: data)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in prepare(args.name, Path(args.out), args.test_fraction, args.seed):
        print(path)


if __name__ == "__main__":
    main()
