"""What the engine asks of a model: the interface every model implements.

``dense.Model`` (linear, logistic, softmax, SVM, MLP) is one implementation; a model
the engine does not know implements the same methods and is given to the engine
(``Engine(..., model=...)``) or, more simply, to the public API (``mpi_dml.train``,
which adapts a smaller protocol to this one). Parameters live in one flat buffer
whatever the model, so one Allreduce moves every gradient and a checkpoint stores
them on any number of ranks.

    size: int                          parameters in the flat buffer
    is_classifier: bool                whether validation reports accuracy
    init(flat, seed)                   fill ``flat`` with the initial parameters, from
                                       ``seed`` alone (rank 0 draws them; every rank
                                       gets rank 0's, bit for bit)
    loss_grad(params, grads, x, y, kernels) -> (loss_sum, correct)
                                       overwrite ``grads`` with the gradient SUMMED over
                                       the rows of ``x`` (never averaged: the algorithm
                                       divides after the reduction), return the summed
                                       loss and the correctly classified rows (0 for
                                       regression)
    keeps_totals: bool (optional)      True when ``loss_grad`` also takes ``totals=``, a
                                       float64 array of 3 on the device, and then writes
                                       [loss_sum, correct, rows] there and returns None:
                                       on a GPU the sums are then read with the step's
                                       summary instead of on their own
    streams_gradient: bool (optional)  True when ``loss_grad`` also takes ``ready=``, a
                                       function it calls with ``end`` once ``grads[:end]``
                                       is final, so a GPU exchange starts during backward
    compact_size(rows) -> int,         (optional) sparse rows: a buffer layout whose first
    first_weight() -> (offset, size)   layer's weight keeps only the rows of the features
                                       a batch touches, ``loss_grad(..., first_rows=)``
                                       writing it; the first layer's weight is the flat
                                       buffer's tail but for its bias (``dense.Model``)
    evaluate(params, x, y, kernels) -> (loss_sum, correct, raw outputs)
                                       the same sums without a gradient (validation)
    labels(y, dtype) -> array          labels in the form ``loss_grad`` takes them
    named(flat) -> {name: view}        named views into the flat buffer (checkpoints,
                                       replica checks, model files)
    decay_mask() -> uint8 array        1 where weight decay and L1 apply, else 0
    describe() -> dict                 JSON that a checkpoint records and a resume must
                                       find again (kind, shape)

``kernels`` is the device's kernel module (``kernels/``) and ``params``, ``grads`` and
the rows are the device's arrays (NumPy on the CPU): a model that computes with
``array_module(params)`` runs on either.
"""
