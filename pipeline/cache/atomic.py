"""Atomic writes of stage outputs: a uniquely named temporary file beside each target, renamed at
the end (several outputs of one stage as one unit, through a commit journal), under an advisory stage
lock. A failed, interrupted or concurrent stage leaves either the previous complete files or nothing;
a write that fills the disk (``ENOSPC``/``EDQUOT``) is reported as one :class:`CacheError` line naming
the output and the free space (:func:`disk_full_error`), not as the writer library's traceback."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline.errors import BusyError, CacheError, ConfigError

# --------------------------------------------------------------------------- a full disk
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = tuple(os.strerror(c).lower() for c in DISK_FULL_ERRNOS)


def disk_full_errno(err: BaseException) -> int | None:
    """``ENOSPC``/``EDQUOT`` when ``err`` says the disk (or the user's quota) is full, else None.

    h5py and pyarrow do not always fill ``errno``; their message then carries the C library's
    text ("No space left on device", "errno = 28"), so the text is looked at too."""
    if not isinstance(err, OSError):
        return None
    if err.errno in DISK_FULL_ERRNOS:
        return int(err.errno)
    text = str(err).lower()
    for code, words in zip(DISK_FULL_ERRNOS, _DISK_FULL_TEXTS):
        if words in text or f"errno = {code}" in text or f"errno {code}]" in text:
            return code
    return None


def human_bytes(n: float) -> str:
    """``1234567`` → ``1.2 MB`` (decimal units, as ``df -H``)."""
    n = float(n)
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if abs(n) < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def free_bytes(path: Path) -> int | None:
    """Free bytes (for this user) on the file system that holds ``path`` (its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def disk_full_error(path: Path, err: BaseException, needed: int | None = None) -> CacheError | None:
    """The one-line :class:`CacheError` for a write of ``path`` that failed on a full disk (None for
    any other failure): the free space (:func:`shutil.disk_usage`, measured after the caller removed
    its temp file) and, when the caller can estimate it, the space the file needs."""
    code = disk_full_errno(err)
    if code is None:
        return None
    free = free_bytes(path)
    have = "free space unknown" if free is None else f"{human_bytes(free)} free there"
    need = f"about {human_bytes(needed)} needed" if needed else "more needed"
    return CacheError(path, f"{os.strerror(code).lower()} while writing it ({have}, {need}); "
                            "nothing was replaced: free some space and run again")


def _size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------- atomic writes
LOCK_WAIT_ENV = "RESAIL_LOCK_WAIT"  # seconds a writer waits for a busy stage lock (default 0: refuse)


def tmp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``, unique per call: ``<name>.<pid>-<random>.tmp``.

    Unique names mean two writers never share (or delete) each other's half-written file."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def lock_path(path: Path) -> Path:
    """The advisory lock file of the stage whose (first) output is ``path``: ``.<name>.lock``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _journal_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.commit")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmps(path: Path) -> None:
    """Delete temp files of ``path`` left by killed writers (their pid is gone; the legacy fixed
    ``<name>.tmp`` too). Runs under the stage lock, so no live locked writer owns them."""
    legacy = path.with_name(path.name + ".tmp")
    legacy.unlink(missing_ok=True)
    for t in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        pid = t.name[len(path.name) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            t.unlink(missing_ok=True)


def finish_interrupted_commit(path: Path) -> bool:
    """Complete a multi-file commit that was killed between its renames (roll forward).

    A multi-file writer first writes ``.<first output>.commit`` (the temp → target pairs, after every
    temp is complete), then renames, then deletes the journal; so a journal on disk means "these
    temps are whole and must all be published". Readers and the next writer call this before they
    look at the files; it is idempotent and safe to race (a rename already done is skipped)."""
    j = _journal_path(path)
    try:
        pairs = json.loads(j.read_text())["renames"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        j.unlink(missing_ok=True)  # a torn journal: its renames never started (it is written atomically)
        return False
    for t, p in pairs:
        t, p = path.parent / t, path.parent / p
        with contextlib.suppress(FileNotFoundError):
            os.replace(t, p)
    j.unlink(missing_ok=True)
    return True


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command')}`) since {info.get('since')}"


@contextlib.contextmanager
def stage_lock(path: Path, wait: float | None = None) -> Iterator[None]:
    """Hold the advisory (``fcntl.flock``) lock of the stage that writes ``path``.

    A second writer of the same output waits up to ``wait`` seconds (default: ``$RESAIL_LOCK_WAIT``,
    else 0) and then refuses with one line naming the holder (pid, host, command, start time). The
    kernel drops the lock when the holder dies, so a killed run never leaves the stage locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if wait is None:
        try:
            wait = float(os.environ.get(LOCK_WAIT_ENV, "0") or 0)
        except ValueError:
            raise ConfigError(None, f"${LOCK_WAIT_ENV} must be a number of seconds") from None
    lf = lock_path(path)
    try:
        fd = os.open(lf, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CacheError(path.parent, f"cannot write here ({e.strerror or e})") from None
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(path, f"another run is writing it: {_holder(lf)}; wait for it to finish "
                                          f"(or set {LOCK_WAIT_ENV}=SECONDS to wait)") from None
                time.sleep(0.1)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # the holder's name is only informational (a full disk must not stop the lock)
            pass
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_outputs(*paths: Path, lock: bool = True) -> Iterator[list[Path]]:
    """Yield fresh temp paths for ``paths`` and publish them together at the end; delete them on failure.

    * Temp names are unique per writer (:func:`tmp_path`), so concurrent runs never mix bytes.
    * ``lock``: hold the stage lock of ``paths[0]`` (:func:`stage_lock`) for the whole write, so a
      second writer of the same outputs refuses (or waits) instead of racing. Previews and small
      side files pass ``lock=False``.
    * Several outputs are one unit: a journal listing the renames is written once every temp is
      complete, then the renames run, then the journal goes (see :func:`finish_interrupted_commit`),
      so a kill between two renames is rolled forward by the next reader or writer, never left as a
      new file beside an old one.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    with stage_lock(paths[0]) if lock else contextlib.nullcontext():
        if lock:
            finish_interrupted_commit(paths[0])
            for p in paths:
                _remove_stale_tmps(p)
        tmps = [tmp_path(p) for p in paths]
        try:
            yield tmps
        except BaseException as e:
            err = _discard(paths, tmps, e)
            if err is e:
                raise
            raise err from None
        if len(paths) > 1:
            same_dir = all(t.parent == paths[0].parent and p.parent == paths[0].parent for t, p in zip(tmps, paths))
            if same_dir:
                j = _journal_path(paths[0])
                jt = tmp_path(j)
                try:
                    with open(jt, "w") as fh:
                        json.dump({"renames": [[t.name, p.name] for t, p in zip(tmps, paths)]}, fh)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(jt, j)
                except BaseException as e:  # the journal is not in place: nothing is published
                    jt.unlink(missing_ok=True)
                    err = _discard(paths, tmps, e)
                    if err is e:
                        raise
                    raise err from None
                finish_interrupted_commit(paths[0])
                return
        for t, p in zip(tmps, paths):
            os.replace(t, p)


def _discard(paths: list[Path], tmps: list[Path], err: BaseException) -> BaseException:
    """Delete the temps of a failed write; the error to raise: ``err`` itself, or for a full disk
    the one-line :func:`disk_full_error` naming the output being written (``err.filename`` when it
    is one of the temps) and the space it needs (its previous version's size, or what was written)."""
    written = sum(_size(t) for t in tmps)
    failed = paths[0]
    fn = getattr(err, "filename", None)
    for t, p in zip(tmps, paths):
        if fn is not None and Path(str(fn)).name == t.name:
            failed = p
    for t in tmps:
        t.unlink(missing_ok=True)
    if disk_full_errno(err) is None:
        return err
    return disk_full_error(failed, err, max(sum(_size(p) for p in paths), written) or None)


def write_text_atomic(path: Path, text: str) -> None:
    """A small side file (a config, a summary) written whole or not at all (no stage lock)."""
    with atomic_outputs(path, lock=False) as (tmp,):
        tmp.write_text(text)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic Parquet: fixed compression, no statistics that depend on anything but data."""
    pq.write_table(table, path, compression="zstd", compression_level=3)

