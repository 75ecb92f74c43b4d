"""The Python API: scikit-learn style estimators, model files, partitioned reading, and
training a model the engine does not know. ``mpi_dml`` re-exports what is public."""
