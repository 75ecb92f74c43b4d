"""LIBSVM settings, suffixes and ``read_table``: what users and the config see.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_settings.py
"""
from __future__ import annotations

import numpy as np
import pytest

from mpi_dml.config import TrainConfig, ignored_settings
from mpi_dml.data.formats import open_table
from mpi_dml.data.formats.files import expand, names_libsvm
from mpi_dml.errors import UserError
from mpi_dml.parallel.comm import Comm
from test_libsvm_table import GOOD, LAYOUT, assert_same_csr

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.mark.parametrize("name", ["d.svm", "d.libsvm", "D.SVMLIGHT"])
def test_suffixes_name_libsvm(tmp_path, name):
    assert expand(str(tmp_path / name), None) == (None, "libsvm")
    assert names_libsvm(str(tmp_path / name), None)
    assert not names_libsvm(str(tmp_path / name), "csv")


def test_settings_apply_to_libsvm_only(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.svm").write_bytes(GOOD)
    for data, fmt in (("d.svm", "auto"), (str(folder), "auto"), ("d.txt", "libsvm")):
        c = TrainConfig(data=data, format=fmt, out="o", zero_based=True, num_features=7)
        c.validate()  # no label column needed: each line starts with its label
        assert ignored_settings(c, {"zero_based", "num_features"}) == []
        assert ignored_settings(c, {"label_column"}) == [
            "label_column ignored: LIBSVM lines start with their label and number their "
            "features"]
    c = TrainConfig(data="d.csv", label_column="y", out="o", zero_based=True, num_features=7)
    assert ignored_settings(c, {"zero_based", "num_features"}) == [
        "zero_based, num_features ignored: they apply to LIBSVM data (--format libsvm, or "
        "files ending in .svm, .libsvm or .svmlight)"]
    with pytest.raises(UserError, match="'label_column' parameter of TrainConfig must be given"):
        TrainConfig(data="d.csv", out="o").validate()
    with pytest.raises(UserError, match=r"'num_features' parameter of TrainConfig must be in "
                                        r"\[0, 10\*\*18\].*Got -1"):
        TrainConfig(data="d.svm", out="o", num_features=-1).validate()


def test_flags_of_train():
    from mpi_dml.cli import build_parser
    from mpi_dml.cli.train import train_config

    args = build_parser().parse_args(["train", "--data", "d.svm", "--out", "o", "--zero-based",
                                      "--num-features", "1048576"])
    cfg, notes = train_config(args)
    assert (cfg.zero_based, cfg.num_features, notes) == (True, 1048576, [])


def test_read_table_gives_csr_values_and_labels(tmp_path):
    import mpi_dml

    path = tmp_path / "t.svm"
    path.write_bytes(LAYOUT)
    rows = mpi_dml.read_table(path)
    want_x, want_y = sklearn_datasets.load_svmlight_file(str(path), zero_based=False)
    assert_same_csr(rows.values, rows.labels, want_x, want_y)
    assert (rows.columns, rows.first_row, rows.n_rows, len(rows)) == ([], 0, 5, 5)
    assert rows.values.dtype == np.float64 and "7 features, sparse" in repr(rows)
    with pytest.raises(TypeError, match="use .values \\(a SciPy CSR matrix\\) and .labels"):
        rows.to_frame()
    with pytest.raises(UserError, match="is a LIBSVM file, whose features are numbered"):
        mpi_dml.read_table(path, columns=["a"])
    assert mpi_dml.read_table(path, zero_based=True, n_features=9).values.shape == (5, 9)
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="The 'zero_based' parameter of read_table applies "
                                        "only to LIBSVM files"):
        mpi_dml.read_table(csv, zero_based=True)
    with pytest.raises(TypeError, match="read them with read_csr"):
        open_table(path, Comm.world()).read(0, 1)
