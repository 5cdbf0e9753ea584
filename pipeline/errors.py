"""Expected failures: one clear line naming the file and the problem.

Stages catch :class:`ResailError` at the CLI boundary and print ``str(err)`` only (no traceback),
then exit with a non-zero code. Anything else is a bug and keeps its traceback.

The errors pickle as ``(class, (path, problem))`` so that one raised in a worker process (a torch
DataLoader worker, a loky/dask task) is rebuilt as the same class on the other side and still
prints as one line: the default ``Exception`` pickling passes only ``args`` (the joined message),
which does not fit ``__init__(path, problem)``. torch's DataLoader does not pickle the error at
all: it rebuilds ``type(err)(message)`` from the worker's formatted traceback, so a single argument
is accepted too and reduced to the traceback's last line (the original one-line message).
"""
from __future__ import annotations

import re
from pathlib import Path


class ResailError(Exception):
    """Base class of user-facing errors: ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is None:  # rebuilt from a message (torch's worker re-raise): keep its last line
            path, problem = None, _last_line(str(path))
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        # Always one line: a newline in a (hostile) file name is shown escaped, a multi-line problem
        # (e.g. a library's message) is joined.
        problem = " ".join(ln.strip() for ln in str(self.problem).splitlines() if ln.strip())
        if not self.path:
            return problem
        path = self.path.replace("\n", "\\n").replace("\r", "\\r")
        return f"{path}: {problem}"

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


def _last_line(message: str) -> str:
    """The original ``<path>: <problem>`` of a worker traceback text ("... Original Traceback ...
    pipeline.errors.CacheError: <path>: <problem>"), or the message itself when it is one line."""
    lines = [ln for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return message
    last = lines[-1]
    m = re.match(r"^[\w.]*(?:Error|Exception): (.*)$", last)
    return m.group(1) if m else last


class DataError(ResailError):
    """A dataset sample (image, label, instance map, class list) is missing or invalid."""


class CacheError(ResailError):
    """A stage cache (Parquet/HDF5) is missing, corrupt or does not match its schema."""


class ConfigError(ResailError):
    """A params/config file or an option value is invalid."""


class BusyError(ResailError):
    """Another process holds the lock of the cache stage this command wants to write."""
