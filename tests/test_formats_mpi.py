"""Parquet, HDF5 and many files as one table, under real mpiexec at 1-4 ranks.

    $ .venv/bin/python -m pytest -q tests/test_formats_mpi.py

``read_table`` on every rank (through mpi_scripts/custom_read_table.py) must give each
rank exactly its contiguous chunk of what pandas, pyarrow or h5py read from the files
in one process. Bad input to ``train`` must stop the job with one message and exit
status 2, writing nothing, at 1 rank, and at 3 for the failures met while reading rows. The same rows as CSV, Parquet and HDF5
must train the same model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import RANKS, ROOT, run_cli, run_mpi

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")

pytestmark = pytest.mark.mpi

SCRIPT = ROOT / "tests" / "mpi_scripts" / "custom_read_table.py"


def chunk(n, rank, size):
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def frame(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": pd.Series([f"r{seed}-{i}" for i in range(n)], dtype="str"),
                         "a": rng.normal(size=n), "b": rng.normal(size=n).astype(np.float32),
                         "label": rng.integers(0, 2, n)})


def write_parquet(path, df, row_group_size):
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path,
                   row_group_size=row_group_size)
    return path


def write_csv(path, data, names=("a", "b", "label")):
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_h5(path, x, y):
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x, chunks=(16, x.shape[1]))
        f["feature_names"] = np.array([f"f{j}" for j in range(x.shape[1])], dtype="S")
        f["label"] = y
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """spec -> (path, columns read, reference values read in one process)."""
    folder = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    out = {}

    one = write_parquet(folder / "one.parquet", frame(103, 0), row_group_size=10)
    out["parquet"] = (one, ["label", "b", "a"],
                      pd.read_parquet(one, columns=["label", "b", "a"]).to_numpy(float))

    many = folder / "many"  # five files, some smaller than a row group, one empty
    many.mkdir()
    frames = [frame(n, seed) for seed, n in enumerate((17, 3, 0, 40, 11))]
    for i, df in enumerate(frames):
        write_parquet(many / f"part-{i:02d}.parquet", df, row_group_size=6)
    out["parquet folder"] = (many, ["a", "label"],
                             pd.concat(frames)[["a", "label"]].to_numpy(float))
    two = many / "part-0[01].parquet"  # fewer files than ranks
    out["parquet glob"] = (two, ["b"], pd.concat(frames[:2])[["b"]].to_numpy(float))

    x, y = rng.normal(size=(77, 3)).astype(np.float32), rng.integers(0, 3, 77)
    h5 = write_h5(folder / "t.h5", x, y)
    out["hdf5"] = (h5, ["label", "f2", "f0"], np.column_stack([y, x[:, 2], x[:, 0]]))

    csvs = folder / "csvs"
    csvs.mkdir()
    parts = [rng.normal(size=(n, 3)).round(3) for n in (9, 1, 25, 6)]
    for i, part in enumerate(parts):
        write_csv(csvs / f"p{i}.csv", part)
    whole = pd.concat([pd.read_csv(csvs / f"p{i}.csv") for i in range(len(parts))])
    out["csv folder"] = (csvs, ["b", "label"], whole[["b", "label"]].to_numpy(float))
    return out


@pytest.mark.parametrize("n", RANKS)
def test_each_rank_reads_its_chunk(tables, tmp_path, n):
    names = list(tables)
    specs = [f"{tables[name][0]}::{'|'.join(tables[name][1])}" for name in names]
    result = run_mpi(n, [SCRIPT, tmp_path, *specs])
    assert result.returncode == 0, result.stderr
    for i, name in enumerate(names):
        _, columns, truth = tables[name]
        for rank in range(n):
            got = np.load(tmp_path / f"{i}.rank{rank}.npz")
            assert "error" not in got, str(got["message"])
            lo, hi = chunk(len(truth), rank, n)
            assert list(got["columns"]) == columns
            assert int(got["first_row"]) == lo and int(got["n_rows"]) == len(truth)
            np.testing.assert_array_equal(got["values"], truth[lo:hi],
                                          err_msg=f"{name}, rank {rank} of {n}")


# --- bad input ------------------------------------------------------------------------
def good_frame(n=40):
    rng = np.random.default_rng(1)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                         "label": rng.integers(0, 2, n)})


def parquet_case(folder):
    return write_parquet(folder / "t.parquet", good_frame(), row_group_size=8)


def h5_case(folder, **datasets):
    path = folder / "t.h5"
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def damaged(path, cut):
    raw = path.read_bytes()
    path.write_bytes(raw[:cut(len(raw))])
    return path


def string_feature(folder):
    df = good_frame()
    df.insert(1, "city", [f"c{i % 5}" for i in range(len(df))])
    return write_parquet(folder / "t.parquet", df, row_group_size=8)


def differing_csvs(folder):
    write_csv(folder / "p0.csv", good_frame().to_numpy())
    write_csv(folder / "p1.csv", good_frame().to_numpy()[:, [0, 2]], ("a", "label"))
    return folder


def differing_parquets(folder):
    write_parquet(folder / "p0.parquet", good_frame(), row_group_size=8)
    write_parquet(folder / "p1.parquet", good_frame().drop(columns=["b"]), row_group_size=8)
    return folder


def truncated_csv(folder):
    return damaged(write_csv(folder / "t.csv", good_frame().to_numpy()), lambda n: n - 9)


def truncated_npy(folder):
    np.save(folder / "t.npy", good_frame().to_numpy())
    return damaged(folder / "t.npy", lambda n: n - 40)


def truncated_npz(folder):
    df = good_frame()
    np.savez(folder / "t.npz", X=df[["a", "b"]].to_numpy(), label=df["label"].to_numpy())
    return damaged(folder / "t.npz", lambda n: n - 30)


def truncated_h5(folder):
    df = good_frame()
    return damaged(h5_case(folder, X=df[["a", "b"]].to_numpy(), label=df["label"].to_numpy()),
                   lambda n: n // 2)


def garbage(name):
    def make(folder):
        (folder / name).write_bytes(b"\x00\x01garbage\xff" * 30)
        return folder / name
    return make


X4, Y4 = np.zeros((40, 2)), np.arange(40) % 2
CASES = {
    "parquet string feature": (string_feature, "t.parquet: column 'city' holds"),
    "parquet without the label": (lambda f: write_parquet(
        f / "t.parquet", good_frame().drop(columns=["label"]), 8),
        "t.parquet has no column named 'label'"),
    "hdf5 without X": (lambda f: h5_case(f, label=Y4),
                       "should hold one 2-D numeric dataset of features"),
    "hdf5 X not 2-D": (lambda f: h5_case(f, X=np.zeros((40, 2, 2)), label=Y4),
                       "dataset 'X' should be a 2-D numeric dataset"),
    "hdf5 label of another length": (lambda f: h5_case(f, X=X4, label=Y4[:39]),
                                     "dataset 'label' has 39 rows but 'X' has 40"),
    "glob matching nothing": (lambda f: f / "part-*.csv", "part-*.csv matches no files"),
    "csv files with other columns": (differing_csvs, "p1.csv does not have the same columns as"),
    "parquet files with other columns": (differing_parquets,
                                         "p1.parquet does not have the same columns as"),
    "truncated csv": (truncated_csv, "t.csv line 41: expected 3 comma-separated values"),
    "unreadable csv": (garbage("t.csv"), "t.csv line 1: the header is not UTF-8 text"),
    "truncated npy": (truncated_npy, "t.npy is not a readable .npy file"),
    "unreadable npy": (garbage("t.npy"), "t.npy is not a readable .npy file"),
    "truncated npz": (truncated_npz, "t.npz is not a readable .npz file"),
    "unreadable npz": (garbage("t.npz"), "t.npz is not a readable .npz file"),
    "truncated parquet": (lambda f: damaged(parquet_case(f), lambda n: n // 2),
                          "t.parquet is not a readable Parquet file"),
    "unreadable parquet": (garbage("t.parquet"), "t.parquet is not a readable Parquet file"),
    "truncated hdf5": (truncated_h5, "t.h5 is not a readable HDF5 file"),
    "unreadable hdf5": (garbage("t.h5"), "t.h5 is not a readable HDF5 file"),
}


# Cases whose failure can arise on any rank as it reads its own rows or files, run at 3
# ranks too; the others fail while the table is opened, under the same agreement for
# every format (the agreement itself is tested at 1-4 ranks in test_bad_input_mpi.py).
AT_THREE_RANKS = ("parquet string feature", "csv files with other columns", "truncated csv",
                  "truncated parquet", "truncated hdf5", "hdf5 label of another length")


@pytest.mark.parametrize("case,n", [(case, n) for case in CASES
                                    for n in ((0, 3) if case in AT_THREE_RANKS else (0,))])
def test_bad_input_stops_training_with_one_message(tmp_path, case, n):
    make, message = CASES[case]
    folder = tmp_path / "data"
    folder.mkdir()
    data = make(folder)
    out = tmp_path / "out"
    result = run_cli(n, "train", "--data", data, "--label-column", "label", "--out", out,
                     "--epochs", "1", "--batch-size", "8", timeout=90)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(message) == 1, result.stderr
    assert result.stderr.count("mpi_dml: error") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()


# --- the same rows in every format train the same model -------------------------------
def test_csv_parquet_and_hdf5_train_the_same_model(tmp_path):
    load_file = pytest.importorskip("safetensors.numpy").load_file
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4))
    y = (x @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=300) * 0.3 > 0).astype(np.int64)
    names = ["f0", "f1", "f2", "f3"]
    write_csv(tmp_path / "d.csv", np.column_stack([x, y]), (*names, "label"))
    df = pd.DataFrame(x, columns=names).assign(label=y)
    write_parquet(tmp_path / "d.parquet", df, row_group_size=64)
    write_h5(tmp_path / "d.h5", x, y)
    models = {}
    for suffix in ("csv", "parquet", "h5"):
        out = tmp_path / f"m-{suffix}"
        result = run_cli(2, "train", "--data", tmp_path / f"d.{suffix}", "--label-column",
                         "label", "--model", "logistic", "--dtype", "float64", "--epochs", "3",
                         "--batch-size", "32", "--lr", "0.1", "--out", out, timeout=120)
        assert result.returncode == 0, result.stderr
        models[suffix] = load_file(str(out / "model.safetensors"))
    assert models["csv"].keys() == models["parquet"].keys() == models["h5"].keys()
    for key, value in models["csv"].items():
        for other in ("parquet", "h5"):
            np.testing.assert_allclose(models[other][key], value, rtol=0, atol=1e-6,
                                       err_msg=f"{key}: csv against {other}")


# --- evaluate and predict read every format ---------------------------------------------
@pytest.fixture(scope="module")
def model_and_copies(tmp_path_factory):
    """A softmax model trained on a CSV, and the same rows as Parquet (an odd suffix,
    read with --format), HDF5 and a folder of CSV parts."""
    tmp = tmp_path_factory.mktemp("every-format")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(400, 4))
    y = np.argmax(x[:, :3] + rng.normal(size=(400, 3)) * 0.3, axis=1)
    names = ["f0", "f1", "f2", "f3"]
    write_csv(tmp / "d.csv", np.column_stack([x, y]), (*names, "label"))
    df = pd.DataFrame(x, columns=names).assign(label=y)
    write_parquet(tmp / "d.bin", df, row_group_size=37)
    write_h5(tmp / "d.h5", x, y)
    (tmp / "parts").mkdir()
    for k, (a, b) in enumerate([(0, 150), (150, 151), (151, 400)]):
        write_csv(tmp / "parts" / f"part-{k}.csv", np.column_stack([x[a:b], y[a:b]]),
                  (*names, "label"))
    result = run_cli(0, "train", "--data", tmp / "d.csv", "--label-column", "label",
                     "--model", "softmax", "--dtype", "float64", "--epochs", "2",
                     "--standardize", "--out", tmp / "m")
    assert result.returncode == 0, result.stderr
    return tmp, x, y


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("source", [("d.bin", "parquet"), ("d.h5", None), ("parts", None)])
def test_evaluate_and_predict_read_every_format(model_and_copies, n, source):
    """The same figures and predictions as the CSV in one process, and predictions
    equal to a NumPy replay of the model on the raw rows."""
    load_file = pytest.importorskip("safetensors.numpy").load_file
    tmp, x, y = model_and_copies
    path, fmt = source
    extra = ["--format", fmt] if fmt else []

    def evaluate(n, data, *more):
        r = run_cli(n, "evaluate", "--model", tmp / "m", "--data", data, *more)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def predict(n, data, *more):
        out = tmp / f"pred-{n}-{data.name}.csv"
        r = run_cli(n, "predict", "--model", tmp / "m", "--data", data, "--output", out, *more)
        assert r.returncode == 0, r.stderr
        return out.read_text()

    assert evaluate(n, tmp / path, *extra) == pytest.approx(evaluate(0, tmp / "d.csv"))
    text = predict(n, tmp / path, *extra)
    assert text == predict(0, tmp / "d.csv")
    tensors = load_file(str(tmp / "m" / "model.safetensors"))
    z = ((x - tensors["standardize.mean"]) / tensors["standardize.std"]) \
        @ tensors["layers.0.weight"] + tensors["layers.0.bias"]
    rows = np.loadtxt(text.splitlines(), delimiter=",", skiprows=1)
    np.testing.assert_array_equal(rows[:, 0], np.argmax(z, axis=1))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(rows[:, 1:], p / p.sum(axis=1, keepdims=True), atol=1e-6)
