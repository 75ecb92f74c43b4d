"""What rank 0 shows while training: a bar on a terminal, plain lines elsewhere."""
from __future__ import annotations

import sys
import time


class Progress:
    """Progress of the training loop. Only rank 0 builds one that prints.

    ``mode`` is auto (bar on a terminal, lines otherwise), bar, lines or none. A line per
    finished period (an epoch, an iteration) shows what its record holds; the bar moves
    with the steps of an epoch.
    """

    def __init__(self, mode: str, epochs: int, steps: int, *, enabled: bool, stream=None,
                 period_name: str = "epoch"):
        self.period_name = period_name
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode if enabled else "none"
        self.epochs, self.steps = epochs, steps
        self._last = 0.0

    def step(self, epoch: int, step: int):
        if self.mode != "bar":
            return
        now = time.monotonic()
        if now - self._last < 0.1 and step + 1 < self.steps:
            return  # redrawing more than ten times a second only costs time
        self._last = now
        width = 30
        done = int(width * (step + 1) / max(self.steps, 1))
        # Epochs before the periods counted (a warm start of L-BFGS) have no total here.
        of = f"/{self.epochs}" if self.period_name == "epoch" else ""
        self.stream.write(f"\repoch {epoch + 1}{of} [{'#' * done}{'.' * (width - done)}] "
                          f"{step + 1}/{self.steps}")
        self.stream.flush()

    def period(self, index: int, record: dict):
        if self.mode == "none":
            return
        # A record names its own kind of period (SGD epochs before L-BFGS iterations).
        name = next((key for key in ("epoch", "iteration") if key in record),
                     self.period_name)
        of = f"/{self.epochs}" if self.epochs and name == self.period_name else ""
        parts = [f"{name} {index + 1}{of}"]
        for key, label in (("train_loss", "loss"), ("objective", "objective"),
                           ("val_loss", "val_loss"), ("val_accuracy", "val_accuracy"),
                           ("val_r2", "val_r2")):
            if record.get(key) is not None:
                parts.append(f"{label} {record[key]:.4f}")
        if record.get("samples_per_s") is not None:
            parts.append(f"{record['samples_per_s']:.0f} samples/s")
        prefix = "\r" if self.mode == "bar" else ""
        self.stream.write(prefix + "  ".join(parts) + ("\033[K\n" if self.mode == "bar" else "\n"))
        self.stream.flush()
