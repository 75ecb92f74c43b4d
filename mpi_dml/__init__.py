"""mpi_dml: data-parallel training on HPC clusters.

Run one process, or many under an MPI launcher; the code path is the same:

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml
    $ srun --mpi=pmi2 -n 8 python -m mpi_dml train --config examples/digits.toml

or from Python, every rank passing its own rows:

    $ mpiexec -n 4 python my_script.py

    import mpi_dml
    clf = mpi_dml.LogisticRegression().fit(X_mine, y_mine)   # collective
    clf.score(X_test_mine, y_test_mine)                      # the same on every rank

Importing this package starts nothing: no MPI, no threads, no signal handlers. The
names below are loaded on first use.
"""
__version__ = "0.2.0"

_PUBLIC = {
    "LinearRegression": "estimators", "LogisticRegression": "estimators",
    "LinearSVC": "estimators", "MLPClassifier": "estimators", "MLPRegressor": "estimators",
    "load": "load", "read_table": "tables", "TableRows": "tables",
    "train": "custom", "CustomModel": "custom", "TrainResult": "custom",
    "setup_process": "run",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        module = importlib.import_module(f".api.{_PUBLIC[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mpi_dml' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
