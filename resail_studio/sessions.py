"""The studio's open label maps, bounded in number and in memory (least recently used evicted),
each with a lock of its own.

A browser tab that is closed never says so, so the server cannot wait for sessions to end: it
keeps at most ``max_maps`` maps and ``max_bytes`` of their state (:attr:`MapEdit.nbytes`) and
drops the least recently used ones. The map being touched is never the one dropped; an evicted
id answers 404 like an unknown one.

Locking: the store's own lock guards only the bookkeeping (a dictionary lookup, a move, an
eviction); the work on a map runs under that map's lock (:meth:`SessionStore.session`), so a long
edit of one map (a 60k-segment label map takes seconds) never makes the requests of another map
wait. A map's size is measured by the thread that holds its lock, when it lets go, so evicting
never reads a map that another thread is changing. A map evicted while a request works on it
finishes that request; later requests answer 404.
"""
from __future__ import annotations

import contextlib
import secrets
import threading
from collections import OrderedDict
from typing import Iterator

from resail_studio.editor import MapEdit


class _Entry:
    __slots__ = ("edit", "lock", "nbytes")

    def __init__(self, edit: MapEdit) -> None:
        self.edit, self.lock, self.nbytes = edit, threading.Lock(), int(edit.nbytes)


class SessionStore:
    def __init__(self, max_maps: int = 16, max_bytes: int = 1 << 30) -> None:
        if max_maps < 1 or max_bytes < 1:
            raise ValueError("max_maps and max_bytes must be positive")
        self.max_maps, self.max_bytes = int(max_maps), int(max_bytes)
        self._maps: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the dictionary only, never held while a map is worked on
        self.evicted = 0

    @staticmethod
    def new_id() -> str:
        """An unguessable id (maps are local, but ids must not be enumerable from another tab/site)."""
        return secrets.token_hex(8)

    def add(self, edit: MapEdit) -> None:
        """A new map (not yet shared with other threads: its size is measured here)."""
        entry = _Entry(edit)
        with self._lock:
            self._maps[edit.map_id] = entry
            self._evict(edit.map_id)

    def get(self, map_id: str) -> MapEdit:
        """KeyError for unknown or evicted ids. Does not take the map's lock (see :meth:`session`)."""
        with self._lock:
            entry = self._maps[map_id]
            self._maps.move_to_end(map_id)
            return entry.edit

    @contextlib.contextmanager
    def session(self, map_id: str) -> Iterator[MapEdit]:
        """Hold ``map_id``'s lock and yield its :class:`MapEdit` (KeyError, before anything runs, for
        unknown or evicted ids). On the way out the map's size is measured again and the bounds applied."""
        with self._lock:
            entry = self._maps[map_id]
            self._maps.move_to_end(map_id)
        with entry.lock:
            try:
                yield entry.edit
            finally:
                size = int(entry.edit.nbytes)
                with self._lock:
                    entry.nbytes = size
                    if self._maps.get(map_id) is entry:
                        self._evict(map_id)

    def touch(self, map_id: str) -> None:
        """Mark ``map_id`` most recent and evict others until both bounds hold again."""
        with self._lock:
            if map_id in self._maps:
                self._evict(map_id)

    def _evict(self, map_id: str) -> None:
        self._maps.move_to_end(map_id)
        while len(self._maps) > 1 and (len(self._maps) > self.max_maps or self._nbytes() > self.max_bytes):
            self._maps.popitem(last=False)
            self.evicted += 1

    def remove(self, map_id: str) -> None:
        with self._lock:
            del self._maps[map_id]

    def _nbytes(self) -> int:
        return sum(e.nbytes for e in self._maps.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes()

    def __len__(self) -> int:
        return len(self._maps)

    def __contains__(self, map_id: str) -> bool:
        return map_id in self._maps
