"""Expected failures: one clear line naming the file and the problem.

Stages catch :class:`ResailError` at the CLI boundary and print ``str(err)`` only (no traceback),
then exit with a non-zero code. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class ResailError(Exception):
    """Base class of user-facing errors: ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class DataError(ResailError):
    """A dataset sample (image, label, instance map, class list) is missing or invalid."""


class CacheError(ResailError):
    """A stage cache (Parquet/HDF5) is missing, corrupt or does not match its schema."""


class ConfigError(ResailError):
    """A params/config file or an option value is invalid."""
