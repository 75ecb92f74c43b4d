"""What rank 0 shows while training: a bar on a terminal, plain lines elsewhere."""
from __future__ import annotations

import sys
import time


class Progress:
    """Progress of the epoch loop. Only rank 0 builds one that prints.

    ``mode`` is auto (bar on a terminal, lines otherwise), bar, lines or none.
    """

    def __init__(self, mode: str, epochs: int, steps: int, *, enabled: bool, stream=None):
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
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{'#' * done}{'.' * (width - done)}] "
                          f"{step + 1}/{self.steps}")
        self.stream.flush()

    def epoch(self, record: dict):
        if self.mode == "none":
            return
        parts = [f"epoch {record['epoch'] + 1}/{self.epochs}", f"loss {record['train_loss']:.4f}"]
        for key in ("val_loss", "val_accuracy", "val_r2"):
            if record.get(key) is not None:
                parts.append(f"{key} {record[key]:.4f}")
        parts.append(f"{record['samples_per_s']:.0f} samples/s")
        prefix = "\r" if self.mode == "bar" else ""
        self.stream.write(prefix + "  ".join(parts) + ("\033[K\n" if self.mode == "bar" else "\n"))
        self.stream.flush()
