"""Learning-rate schedules: pure functions of the 0-based optimizer step."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine")


def learning_rate(step: int, *, lr: float, schedule: str, total_steps: int,
                  steps_per_epoch: int, warmup_steps: int = 0, step_epochs: int = 10,
                  gamma: float = 0.1) -> float:
    """Learning rate for 0-based optimizer ``step``.

    Linear warm-up over ``warmup_steps`` (reaching ``lr`` at the end of warm-up), then
    ``constant``; ``step`` (times ``gamma`` every ``step_epochs`` epochs); or
    ``cosine`` decay from ``lr`` to 0 over the remaining steps.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * gamma ** ((step // max(steps_per_epoch, 1)) // step_epochs)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")

