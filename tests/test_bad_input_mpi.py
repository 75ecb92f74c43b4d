"""Bad input: one clear message, exit status 2, no model left behind, at 1 and 3 ranks."""
import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.mpi

N_ROWS = 40  # the broken row sits near the end, in the last rank's part


def write_csv(path, rows, header="a,b,c,label"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def good_rows(n=N_ROWS):
    rng = np.random.default_rng(0)
    return [f"{a:.3f},{b:.3f},{c:.3f},{int(a > 0)}" for a, b, c in rng.normal(size=(n, 3))]


def with_row(bad, at=N_ROWS - 2):
    rows = good_rows()
    rows[at] = bad
    return rows


TRAIN_CASES = {
    "missing file": (None, [], "No such file"),
    "unknown label column": (good_rows(), ["--label-column", "target"], "no column named 'target'"),
    "non-numeric cell": (with_row("0.1,abc,0.3,1"), [], f"line {N_ROWS}: column 'b' holds 'abc'"),
    "ragged row": (with_row("0.1,0.2,1"), [], f"line {N_ROWS}: expected 4"),
    "nan feature": (with_row("0.1,nan,0.3,1"), [], f"line {N_ROWS}: feature column 'b' is nan"),
    "inf feature": (with_row("inf,0.2,0.3,1"), [], f"line {N_ROWS}: feature column 'a' is inf"),
    "fractional label": (with_row("0.1,0.2,0.3,0.5"), [], "class label 0.5 is not an integer"),
    "label out of range": (with_row("0.1,0.2,0.3,2"), ["--model", "logistic"], "class label 2 is out of range"),
    "label over num_classes": (with_row("0.1,0.2,0.3,7"), ["--num-classes", "3"], "class label 7 is out of range"),
    "huge label": (with_row("0.1,0.2,0.3,250000"), [], "pass --num-classes if that is intended"),
    "empty file": ("", [], "is empty"),
    "header only": ([], [], "has a header but no data rows"),
    "lr <= 0": (good_rows(), ["--lr", "0"], "'lr' parameter of TrainConfig must be > 0"),
    "batch < ranks": (good_rows(), ["--batch-size", "1"], None),
    "bad model": (good_rows(), ["--model", "forest"], "'model' parameter of TrainConfig must be one of"),
    "val fraction, one shard": (good_rows(), ["--val-fraction", "0.2", "--shards", "1"],
                                "has only 1; raise --shards or use --val-data"),
    "val fraction, coarse shards": (good_rows(), ["--val-fraction", "0.1", "--shards", "2"],
                                    "gives 0.50 of the rows"),
    "config is a folder": (good_rows(), ["--config", "."], "Cannot read config file ."),
    "diverging": (good_rows(), ["--lr", "1e30", "--model", "linear", "--label-column", "a",
                                "--batch-size", "8", "--dtype", "float64", "--epochs", "3"],
                  "training diverged in epoch"),
}


# Also run under the Open MPI wheel (the `smoke` marker): an error in the last rank's
# rows, a config error, a failed run.
SMOKE_CASES = ("non-numeric cell", "lr <= 0", "diverging")


@pytest.mark.parametrize("n", [0, 3])
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.smoke) if c in SMOKE_CASES
                                  else c for c in TRAIN_CASES])
def test_bad_training_input(tmp_path, case, n):
    rows, flags, message = TRAIN_CASES[case]
    path = tmp_path / "train.csv"
    if rows == "":
        path.write_text("")
    elif rows is not None:
        write_csv(path, rows)
    if case == "batch < ranks":
        if n == 0:  # one rank: the smallest invalid batch is 0
            flags, message = ["--batch-size", "0"], "'batch_size' parameter of TrainConfig must be >= 1"
        else:
            message = "'batch_size' parameter of TrainConfig must be >= the number of ranks (3)"
    out = tmp_path / "out"
    result = run_cli(n, "train", "--data", path, "--label-column", "label", "--out", out,
                     "--epochs", "1", *flags, timeout=60)
    # Divergence is not an input error but a failed run: its own exit status.
    assert result.returncode == (3 if case == "diverging" else 2), result.stderr
    assert result.stderr.count(message) == 1, result.stderr
    assert result.stderr.count("mpi_dml: error") == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()


@pytest.mark.parametrize("n", [0, 2])
def test_validation_labels_cannot_widen_the_model(tmp_path, n):
    train_csv = write_csv(tmp_path / "train.csv", good_rows())
    val_csv = write_csv(tmp_path / "val.csv", with_row("0.1,0.2,0.3,5", at=3))
    r = run_cli(n, "train", "--data", train_csv, "--val-data", val_csv, "--label-column", "label",
                "--out", tmp_path / "out", timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("val.csv line 5: class label 5 is out of range") == 1, r.stderr


@pytest.mark.parametrize("n", [0, 2])
def test_out_must_be_a_folder(tmp_path, n):
    data = write_csv(tmp_path / "train.csv", good_rows())
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    r = run_cli(n, "train", "--data", data, "--label-column", "label", "--out", blocker, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("exists and is not a folder") == 1, r.stderr
    assert blocker.read_text() == "not a folder"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    data = write_csv(tmp / "train.csv", good_rows())
    out = tmp / "m"
    r = run_cli(0, "train", "--data", data, "--label-column", "label", "--out", out, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_feature_mismatch(tmp_path, model_dir, command, n):
    """Named columns: a feature of the model is missing. Numbered columns (a plain .npy):
    the count differs."""
    extra = ["--output", tmp_path / "p.csv"] if command == "predict" else ["--label-column", "label"]
    narrow = write_csv(tmp_path / "narrow.csv", [r.split(",", 1)[1] for r in good_rows(5)],
                       "b,c,label")
    r = run_cli(n, command, "--model", model_dir, "--data", narrow, *extra, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("has no column named 'a', which the model was trained on") == 1, r.stderr
    numbered = tmp_path / "wide.npy"  # four features, and a label column for evaluate
    np.save(numbered, np.ones((5, 5 if command == "evaluate" else 4)))
    if command == "evaluate":
        extra = ["--label-column", "4"]
    r = run_cli(n, command, "--model", model_dir, "--data", numbered, *extra, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("has 4 feature columns but the model was trained on 3") == 1, r.stderr
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("n", [0, 2])
def test_predict_output_must_be_a_file(tmp_path, model_dir, n):
    data = write_csv(tmp_path / "d.csv", good_rows(5))
    r = run_cli(n, "predict", "--model", model_dir, "--data", data, "--output", tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("it is a folder") == 1, r.stderr


@pytest.mark.parametrize("n", [0, 2])
def test_predict_ignores_placeholder_labels(tmp_path, model_dir, n):
    rows = [r.rsplit(",", 1)[0] + ",-1" for r in good_rows(7)]
    with_labels = write_csv(tmp_path / "with.csv", rows)
    without = write_csv(tmp_path / "without.csv", [r.rsplit(",", 1)[0] for r in rows], "a,b,c")
    for data in (with_labels, without):
        out = tmp_path / f"{data.stem}.pred.csv"
        r = run_cli(n, "predict", "--model", model_dir, "--data", data, "--output", out, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(out.read_text().splitlines()) == 8
    assert (tmp_path / "with.pred.csv").read_text() == (tmp_path / "without.pred.csv").read_text()


@pytest.mark.parametrize("n", [0, 2])
def test_damaged_model_is_refused(tmp_path, model_dir, n):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    blob = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    data = write_csv(tmp_path / "d.csv", good_rows(5))
    r = run_cli(n, "evaluate", "--model", broken, "--data", data, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("does not match model.json") == 1, r.stderr


@pytest.mark.smoke
def test_exception_on_one_rank_ends_the_job(tmp_path):
    """A crash (not bad input) on one rank aborts every rank, naming rank and host."""
    from conftest import run_mpi
    script = tmp_path / "crash.py"
    script.write_text(
        "from mpi_dml.parallel.comm import Comm, install_abort_hook\n"
        "install_abort_hook()\n"
        "comm = Comm.world()\n"
        "if comm.rank == comm.size - 1:\n"
        "    raise RuntimeError('boom')\n"
        "comm.barrier()\n")
    r = run_mpi(3, [script], timeout=60)
    assert r.returncode != 0
    assert r.stderr.count("mpi_dml: rank 2 on ") == 1, r.stderr
    assert "RuntimeError: boom" in r.stderr
