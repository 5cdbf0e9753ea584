"""Per-item parallel execution shared by every per-image stage.

Results always come back **in input order**, whatever the backend or the number of workers, so
the caches a stage writes are byte-identical for ``--jobs 1`` and ``--jobs N``.

Backends: ``loky`` (joblib processes, default), ``threads`` (joblib threads), ``dask`` (a
dask-distributed cluster at ``scheduler``; the same function runs on its workers).
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from pipeline.errors import ConfigError

BACKENDS = ("loky", "threads", "dask")


def resolve_jobs(jobs: int | None) -> int:
    """``None``/0 → all cores; negative → cores + 1 + jobs (joblib convention)."""
    n = os.cpu_count() or 1
    if not jobs:
        return n
    return max(1, n + 1 + jobs) if jobs < 0 else jobs


def ordered_map(fn: Callable[..., Any], items: Sequence[Any], *, jobs: int | None = 1, backend: str = "loky",
                scheduler: str | None = None, desc: str = "", unit: str = "img", progress: bool = True,
                **kwargs: Any) -> Iterator[Any]:
    """Yield ``fn(item, **kwargs)`` for each item, in order, with a tqdm progress bar.

    Work in flight is bounded (a few tasks per worker), so memory stays flat on large datasets.
    """
    if backend not in BACKENDS:
        raise ConfigError(None, f"unknown backend '{backend}' (choose one of {', '.join(BACKENDS)})")
    n_jobs = resolve_jobs(jobs)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if backend == "dask":
            yield from _dask_map(fn, items, scheduler, bar, kwargs)
        elif n_jobs == 1:
            for item in items:
                yield fn(item, **kwargs)
                bar.update(1)
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=n_jobs, backend="loky" if backend == "loky" else "threading",
                           return_as="generator", pre_dispatch=f"{2 * n_jobs}")
            for res in par(delayed(fn)(item, **kwargs) for item in items):
                yield res
                bar.update(1)
    finally:
        bar.close()


def _dask_map(fn: Callable, items: Iterable, scheduler: str | None, bar: tqdm, kwargs: dict) -> Iterator[Any]:
    if not scheduler:
        raise ConfigError(None, "--backend dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(None, "--backend dask needs the 'distributed' package (pip install 'dask[distributed]')") from None
    try:
        client = Client(scheduler, timeout="20s")
    except OSError as e:
        raise ConfigError(scheduler, f"cannot connect to the dask scheduler ({e})") from None
    try:
        window = 4 * max(1, sum(client.nthreads().values()))
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(client.submit(fn, item, pure=False, **kwargs))
            if len(pending) >= window:
                break
        while pending:
            fut = pending.popleft()
            yield fut.result()
            bar.update(1)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(client.submit(fn, nxt, pure=False, **kwargs))
    finally:
        client.close()
