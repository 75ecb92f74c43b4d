"""Models as a stack of dense layers whose parameters live in one flat buffer.

Every model here (linear, logistic, softmax, SVM, MLP) is dense layers followed by a
loss. Parameters and gradients are views into one contiguous buffer each, so one
Allreduce moves every gradient. The buffer holds the layers in *reverse* order (last
layer first): backward produces the last layer's gradient first, so the finished part
of the gradient buffer is always a prefix. An exchange that overlaps communication with
backward can then send growing prefixes without copying into separate buckets.

Losses and gradients are *sums* over the rows given, never means: the algorithm divides
by the true global batch count after the Allreduce, so ranks with uneven or empty
shares weigh in exactly.

The same code runs on NumPy arrays (CPU) and CuPy arrays (GPU): the array module
comes from the parameter buffer, and dense products go through ``xp.matmul`` (BLAS on
the CPU, cuBLAS on the GPU).

Rows may also be a CSR matrix (``scipy.sparse`` on the CPU, ``cupyx.scipy.sparse`` on
a GPU): the first layer's products then go through ``kernels.sparse`` and nothing is
made dense. Its weight gradient can be written compactly, for only the features a batch
touches (``first_rows`` in ``loss_grad``): the buffer then holds the same layers in the
same order with the first layer's weight cut to those rows (``compact_size``), so a
gradient exchange moves what the batch touched rather than every feature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..devices.arrays import array_module
from .losses import LOSSES, labels_for_loss


def is_sparse(x) -> bool:
    """Whether rows are a sparse matrix (SciPy's or CuPy's), never to be made dense."""
    return hasattr(x, "indptr") and hasattr(x, "tocsr")


def _sparse_kernels():
    # Imported on the first sparse rows: importing the models loads neither Numba nor SciPy.
    from ..kernels import sparse
    return sparse


@dataclass(frozen=True)
class Layer:
    n_in: int
    n_out: int
    activation: str  # identity, relu or tanh


class Model:
    """Dense layers + loss. Holds shapes and the buffer layout, never the data.

    Parameters
    ----------
    kind : linear, logistic, softmax, svm or mlp.
    layers : the dense layers, input to output.
    loss : squared, logistic, hinge, squared_hinge or softmax (``losses.LOSSES``).
    """

    def __init__(self, kind: str, layers: list[Layer], loss: str):
        self.kind = kind
        self.layers = list(layers)
        self.loss = loss
        self.n_features = layers[0].n_in
        self.n_outputs = layers[-1].n_out
        # (name, shape, offset, is_weight), in forward order; offsets in reverse order.
        self.params = []
        offset = 0
        for i in reversed(range(len(layers))):
            layer = layers[i]
            w = (f"layers.{i}.weight", (layer.n_in, layer.n_out), offset, True)
            offset += layer.n_in * layer.n_out
            b = (f"layers.{i}.bias", (layer.n_out,), offset, False)
            offset += layer.n_out
            self.params[:0] = [w, b]
        self.size = offset

    @property
    def is_classifier(self) -> bool:
        return self.loss != "squared"

    def labels(self, y: np.ndarray, dtype) -> np.ndarray:
        """Labels in the form this model's loss kernel takes."""
        return labels_for_loss(self, y, dtype)

    def describe(self) -> dict:
        """What a checkpoint records of the model, and a resume must find again."""
        return {"kind": self.kind, "loss": self.loss,
                "layers": [[l.n_in, l.n_out, l.activation] for l in self.layers]}

    # --- buffers --------------------------------------------------------------------
    def views(self, flat: np.ndarray, first_rows: int | None = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight, bias) views into ``flat`` for each layer, input to output; with
        ``first_rows``, into the compact layout whose first-layer weight has that many
        rows (``compact_size``)."""
        out = []
        cut = 0 if first_rows is None else (self.n_features - first_rows) * self.layers[0].n_out
        for i in range(len(self.layers)):
            (_, ws, wo, _), (_, bs, bo, _) = self.params[2 * i], self.params[2 * i + 1]
            if i == 0 and first_rows is not None:
                ws, bo = (first_rows, ws[1]), bo - cut
            out.append((flat[wo:wo + ws[0] * ws[1]].reshape(ws), flat[bo:bo + bs[0]]))
        return out

    def first_weight(self) -> tuple[int, int]:
        """Where the first layer's weight lies in the flat buffer: (offset, size). It is
        followed by the first layer's bias and nothing else (layers are stored last
        first), so the compact layout only shortens the buffer's tail."""
        _, shape, offset, _ = self.params[0]
        return offset, shape[0] * shape[1]

    def compact_size(self, first_rows: int) -> int:
        """Values in a buffer whose first-layer weight keeps ``first_rows`` rows."""
        return self.size - (self.n_features - first_rows) * self.layers[0].n_out

    def named(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[o:o + int(np.prod(s))].reshape(s) for name, s, o, _ in self.params}

    def decay_mask(self) -> np.ndarray:
        """1 for weights (regularised), 0 for biases."""
        mask = np.zeros(self.size, dtype=np.uint8)
        for _, shape, offset, is_weight in self.params:
            if is_weight:
                mask[offset:offset + int(np.prod(shape))] = 1
        return mask

    def init(self, flat: np.ndarray, seed: int):
        """Linear models start at zero (convex, so nothing to break); MLP layers get
        He (ReLU) or Glorot (tanh, output) uniform weights from ``seed``, drawn on the
        host so every device starts from the same values."""
        xp = array_module(flat)
        flat[:] = 0
        if self.kind != "mlp":
            return
        rng = np.random.default_rng(seed)
        for (w, _), layer in zip(self.views(flat), self.layers):
            if layer.activation == "relu":
                bound = np.sqrt(6.0 / layer.n_in)
            else:
                bound = np.sqrt(6.0 / (layer.n_in + layer.n_out))
            w[:] = xp.asarray(rng.uniform(-bound, bound, size=w.shape))

    # --- compute --------------------------------------------------------------------
    def forward(self, params: np.ndarray, x: np.ndarray, k) -> list[np.ndarray]:
        """Activations of every layer (x first, output pre-loss last)."""
        xp = array_module(params)
        acts = [x]
        for (w, b), layer in zip(self.views(params), self.layers):
            if is_sparse(acts[-1]):  # the first layer on CSR rows: nothing made dense
                z = _sparse_kernels().matmul(acts[-1], w)
            else:
                z = xp.matmul(acts[-1], w)
            k.bias_act_forward(z, b, layer.activation)
            acts.append(z)
        return acts

    # loss_grad takes ``totals`` and ``ready`` (see models.protocol).
    keeps_totals = True
    streams_gradient = True

    def layer_ends(self) -> list[int]:
        """For each layer, output to input: where in the flat buffer its parameters end.
        Backward finishes the layers in this order, so each end closes a finished prefix."""
        return [self.params[2 * i + 1][2] + self.layers[i].n_out
                for i in reversed(range(len(self.layers)))]

    def loss_grad(self, params, grads, x, y, k, totals=None, ready=None,
                  first_rows=None) -> tuple[float, int] | None:
        """Overwrite ``grads`` with the gradient summed (not averaged) over the rows of x.

        Returns (loss summed over rows, correctly classified rows; 0 for regression), or
        with ``totals`` (a float64 array of 3 where ``params`` is) writes [loss sum,
        correct rows, rows] there and returns None, so a GPU is not waited for here.
        ``ready(end)``, if given, is called as soon as ``grads[:end]`` is final (once a
        layer, ``layer_ends``), so an exchange can start on it while backward goes on.

        ``first_rows`` (CSR ``x`` only): sorted feature indices, every one ``x`` uses
        among them; ``grads`` then has the compact layout (``compact_size``) and its
        first-layer weight holds the gradient of those rows, in that order.
        """
        xp = array_module(params)
        if first_rows is not None:
            ready = None  # ``layer_ends`` are the dense layout's
        acts = self.forward(params, x, k)
        pviews = self.views(params)
        gviews = self.views(grads, None if first_rows is None else len(first_rows))
        out = acts[-1]
        gw_last, gb_last = gviews[-1]
        loss_kernel = getattr(k, LOSSES[self.loss])
        if totals is not None:
            loss_kernel(out, y, gb_last, totals)
        elif self.loss == "squared":
            loss, correct = loss_kernel(out, y, gb_last), 0
        else:
            loss, correct = loss_kernel(out, y, gb_last)
        delta = out  # the loss kernel turned the output into dLoss/dz in place
        ends = self.layer_ends()
        for i in reversed(range(len(self.layers))):
            gw, gb = gviews[i]
            if i == 0 and is_sparse(x):
                self._first_weight_grad(x, delta, gw, first_rows)
            else:
                xp.matmul(acts[i].T, delta, out=gw)
            if ready is not None:  # layer i's weights and bias are final, and all after it
                ready(ends[len(self.layers) - 1 - i])
            if i == 0:
                break
            upstream = xp.matmul(delta, pviews[i][0].T)
            k.act_backward(upstream, acts[i], self.layers[i - 1].activation, gviews[i - 1][1])
            delta = upstream
        return None if totals is not None else (float(loss), int(correct))

    def _first_weight_grad(self, x, delta, gw, first_rows):
        """``X.T @ delta`` into ``gw``: every feature's row, or only ``first_rows``'s."""
        sparse_kernels = _sparse_kernels()
        if first_rows is None:
            got = sparse_kernels.t_matmul(x, delta, self.n_features,
                                          out=gw if sparse_kernels.is_host_csr(x) else None)
        else:
            xp = array_module(delta)
            cols = sparse_kernels.positions(first_rows, x.indices, xp, self.n_features)
            got = sparse_kernels.t_matmul(x, delta, len(first_rows), columns=cols,
                                          out=gw if sparse_kernels.is_host_csr(x) else None)
        if got is not gw:  # another library's product made a new array
            gw[...] = got

    def predict_raw(self, params, x, k) -> np.ndarray:
        """Output layer values before the loss: logits, margins or predictions."""
        return self.forward(params, x, k)[-1]

    def evaluate(self, params, x, y, k) -> tuple[float, int, np.ndarray]:
        """(loss sum, correct count, raw outputs) without touching any gradient."""
        raw = self.predict_raw(params, x, k)
        scratch = raw.copy()
        bias_grad = array_module(raw).empty(self.n_outputs, dtype=raw.dtype)
        if self.loss == "squared":
            return float(k.squared_loss_grad(scratch, y, bias_grad)), 0, raw
        loss, correct = getattr(k, LOSSES[self.loss])(scratch, y, bias_grad)
        return float(loss), int(correct), raw

