"""The loop that drives a training algorithm across the ranks, with checkpoints,
resume, metrics and the guards every algorithm gets (see ``engine.Engine``)."""
from .engine import Engine

__all__ = ["Engine"]
