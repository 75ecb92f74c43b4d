"""The prediction file: one CSV row per input row, ``prediction`` then, for models that
give them, ``prob_0, prob_1, ...``."""
from __future__ import annotations

import io

import numpy as np


def prediction_header(probs) -> str:
    cols = ["prediction"]
    if probs is not None:
        cols += [f"prob_{c}" for c in range(probs.shape[1])]
    return ",".join(cols) + "\n"


def format_predictions(labels, probs, classifier) -> str:
    buf = io.StringIO()
    if probs is None:
        np.savetxt(buf, labels[:, None], fmt="%d" if classifier else "%.10g", delimiter=",")
    else:
        fmt = ["%d"] + ["%.6g"] * probs.shape[1]
        np.savetxt(buf, np.column_stack([labels, probs]), fmt=fmt, delimiter=",")
    return buf.getvalue()

