"""The studio's open label maps, bounded in number and in memory (least recently used evicted).

A browser tab that is closed never says so, so the server cannot wait for sessions to end: it
keeps at most ``max_maps`` maps and ``max_bytes`` of their state (:attr:`MapEdit.nbytes`) and
drops the least recently used ones. The map being touched is never the one dropped; an evicted
id answers 404 like an unknown one.
"""
from __future__ import annotations

import secrets
from collections import OrderedDict

from resail_studio.editor import MapEdit


class SessionStore:
    def __init__(self, max_maps: int = 16, max_bytes: int = 1 << 30) -> None:
        if max_maps < 1 or max_bytes < 1:
            raise ValueError("max_maps and max_bytes must be positive")
        self.max_maps, self.max_bytes = int(max_maps), int(max_bytes)
        self._maps: OrderedDict[str, MapEdit] = OrderedDict()
        self.evicted = 0

    @staticmethod
    def new_id() -> str:
        """An unguessable id (maps are local, but ids must not be enumerable from another tab/site)."""
        return secrets.token_hex(8)

    def add(self, edit: MapEdit) -> None:
        self._maps[edit.map_id] = edit
        self.touch(edit.map_id)

    def get(self, map_id: str) -> MapEdit:
        """KeyError for unknown or evicted ids."""
        edit = self._maps[map_id]
        self._maps.move_to_end(map_id)
        return edit

    def touch(self, map_id: str) -> None:
        """Mark ``map_id`` most recent and evict others until both bounds hold again."""
        self._maps.move_to_end(map_id)
        while len(self._maps) > 1 and (len(self._maps) > self.max_maps or self.nbytes > self.max_bytes):
            self._maps.popitem(last=False)
            self.evicted += 1

    def remove(self, map_id: str) -> None:
        del self._maps[map_id]

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._maps.values())

    def __len__(self) -> int:
        return len(self._maps)

    def __contains__(self, map_id: str) -> bool:
        return map_id in self._maps
