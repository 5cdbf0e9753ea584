"""One label map being edited in the studio: its segments, their top-k, the choices, the synthesis.

Why a class of its own: an interactive edit must not redo what did not change. A :class:`MapEdit`

* keeps the decomposition and the exact top-k of the current map; a repaint decomposes the new map
  (cheap) and retrieves **only the segments whose class or mask crop changed** — a segment's
  candidates depend on nothing else (:meth:`pipeline.online.OnlineGuidance.retrieve_segments`),
  so the result equals retrieving the whole map again (tested);
* holds the editing choices of ``resail edit`` — a global ``rank``, a ``reference`` image, local
  ``overrides`` {segment index: rank} — and resolves them exactly as
  :meth:`resail_train.synthesis.Synthesizer.guidance` does (reference first, overrides win);
* renders with :meth:`Synthesizer.render` and the same seed, so the rank-0 image is the one
  ``resail synthesize`` writes for the same label map;
* records a bounded history of snapshots (compressed label map + choices + a thumbnail).

Local overrides survive a repaint for the segments that are unchanged *in place* (same class, box
and mask); the others start again from the global rank / reference.

Bad choices never reach the state: ranks are checked by :func:`check_rank` (0 ≤ rank < the
retrieval's k) and seeds by :func:`check_seed` before anything is stored, and an edit that fails
half-way (any exception) puts the previous state back, so one bad request cannot break a map.

Threads: one :class:`MapEdit` is used by one thread at a time (the server holds a lock per map);
the calls into what all maps share — the retrieval index, the database crops (HDF5, an LRU cache)
and the generator (torch's global seed and settings) — are made under ``engine_lock``, one call at
a time, so several maps can be edited at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from pipeline.compose.composition import class_maps, paste_order, paste_segment
from pipeline.errors import ConfigError
from pipeline.online import choose
from pipeline.retrieve.retrieval import TopK
from pipeline.decompose.segments import Segment, segment_query_flags
from resail_studio.pngio import encode_rgb, thumbnail
from resail_studio.variety import MapVariety

HISTORY_LIMIT = 24  # snapshots kept per map (oldest dropped)
SEED_LIMIT = 2 ** 63  # seeds are 0 .. 2**63 - 1: what torch.manual_seed and numpy's generators both take
RANK_LIMIT = 2 ** 31  # ranks are below the retrieval's k, and below this when no k is given
MEMO_LIMIT = 4096  # segment top-k results kept per map (across repaints and history restores)
THUMB_SIDE = 160


def _shown(v) -> str:
    """A value for an error message: short even for a hostile 10**5000."""
    try:
        text = repr(v)
    except ValueError:  # an int over Python's digit limit for str()
        return "an integer of more than 4300 digits"
    return text if len(text) <= 40 else text[:37] + "..."


def check_rank(rank, k: int | None = None, what: str = "rank") -> int:
    """``rank`` as an int when it is an integer with 0 ≤ rank < ``k`` (the retrieval's top-k size:
    no segment has a candidate at rank k or beyond), or < :data:`RANK_LIMIT` when ``k`` is None;
    else :class:`ConfigError` (one line, naming ``what``: e.g. ``--rank``)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ConfigError(None, f"{what} must be an integer >= 0, got {_shown(rank)}")
    hi = RANK_LIMIT if k is None else max(1, min(int(k), RANK_LIMIT))
    if not 0 <= rank < hi:
        why = f"the retrieval keeps {hi} candidates per segment" if k is not None else "the largest rank accepted"
        raise ConfigError(None, f"{what} must be in 0..{hi - 1} ({why}), got {_shown(rank)}")
    return int(rank)


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int when it is an integer in 0 .. 2**63 − 1 (:data:`SEED_LIMIT`; torch's
    ``manual_seed`` overflows beyond its 64-bit range), else :class:`ConfigError` (one line)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(None, f"{what} must be an integer in 0..{SEED_LIMIT - 1}, got {_shown(seed)}")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(None, f"{what} must be in 0..{SEED_LIMIT - 1} (2**63 - 1), got {_shown(seed)}")
    return int(seed)


def segment_key(s: Segment) -> bytes:
    """What a segment's retrieval depends on: class id, crop shape (box area) and mask bits."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.array([s.class_id, *s.mask.shape], np.int64).tobytes())
    h.update(np.packbits(s.mask, axis=None).tobytes())
    return h.digest()


def placed_key(s: Segment) -> tuple:
    """A segment unchanged *in place* (for carrying a local override over a repaint)."""
    return (segment_key(s), tuple(int(v) for v in s.box))


def _compact(a: np.ndarray | None) -> np.ndarray | None:
    """The smallest unsigned dtype holding an id map (labels/instances are small non-negative ints)."""
    if a is None:
        return None
    a = np.asarray(a)
    hi = int(a.max(initial=0))
    lo = int(a.min(initial=0))
    if lo < 0:
        return a.astype(np.int64)
    dt = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32 if hi < 2 ** 32 else np.int64
    return a.astype(dt)


@dataclass
class Snapshot:
    """A point in the history: enough to restore the map exactly, plus a small picture of it."""

    what: str
    shape: tuple[int, int]
    labels_z: bytes
    labels_dtype: str
    instances_z: bytes | None
    instances_dtype: str | None
    rank: int
    reference: str | None
    overrides: dict[int, int]
    thumb_png: bytes
    created: float = field(default_factory=time.time)
    photo: object = None  # the reference photo in use (resail_studio.variety), shared, not copied

    @classmethod
    def take(cls, what: str, edit: "MapEdit") -> "Snapshot":
        lab = _compact(edit.labels)
        inst = _compact(edit.instances)
        th = thumbnail(edit.image, THUMB_SIDE)
        return cls(what, tuple(edit.labels.shape), zlib.compress(lab.tobytes(), 1), str(lab.dtype),
                   None if inst is None else zlib.compress(inst.tobytes(), 1), None if inst is None else str(inst.dtype),
                   edit.rank, edit.reference, dict(edit.overrides), encode_rgb(th), photo=edit.photo)

    def labels(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.labels_z), self.labels_dtype).reshape(self.shape).astype(np.int64)

    def instances(self) -> np.ndarray | None:
        if self.instances_z is None:
            return None
        return np.frombuffer(zlib.decompress(self.instances_z), self.instances_dtype).reshape(self.shape).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return len(self.labels_z) + len(self.instances_z or b"") + len(self.thumb_png) + 256


class MapEdit(MapVariety):
    """The editing state of one label map (see the module docstring). One thread at a time per map;
    ``engine_lock`` (shared by every map of a server) serialises the calls into the shared
    retrieval index, crop database and generator."""

    def __init__(self, map_id: str, syn, labels: np.ndarray, instances: np.ndarray | None, *, seed: int = 0,
                 source: str = "labels", what: str = "start", engine_lock=None) -> None:
        self.map_id, self.syn, self.seed = map_id, syn, check_seed(seed)
        self.engine = engine_lock if engine_lock is not None else threading.RLock()
        self.k = int(syn.online.params.k)
        self.rank = 0
        self.reference: str | None = None
        self.overrides: dict[int, int] = {}
        self.version = 0
        self.history: list[Snapshot] = []
        self.current = -1  # the history entry the state equals (−1: none)
        self._memo: OrderedDict[bytes, tuple[np.ndarray, ...]] = OrderedDict()
        self._png: dict[str, bytes] = {}
        self.timings: dict[str, float] = {}
        self.labels = np.zeros((0, 0), np.int64)
        self.instances: np.ndarray | None = None
        self.segs: list[Segment] = []
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._layers: dict[tuple[int, int], tuple] = {}
        self._apply_labels(labels, instances, source)
        self._render()
        self._snapshot(what)

    # ------------------------------------------------------------------ retrieval, reused
    def _topk(self, segs: list[Segment]) -> tuple[TopK, int]:
        """Top-k of ``segs`` (query index = position), retrieving only segments not in the memo."""
        keys = [segment_key(s) for s in segs]
        missing = [i for i, k in enumerate(keys) if k not in self._memo]
        uniq: dict[bytes, int] = {}
        for i in missing:
            uniq.setdefault(keys[i], i)
        if uniq:
            # A new map is searched as one batch of all its segments, exactly the call `resail
            # synthesize` makes; a repaint searches only the segments not seen before.
            todo = list(range(len(segs))) if not self._memo else list(uniq.values())
            with self.engine:
                top = self.syn.online.retrieve_segments([segs[i] for i in todo])
            for q, i in enumerate(todo):
                part = top.for_query(q)
                self._memo[keys[i]] = (part.rank, part.candidate_id, part.score, part.shape_term, part.scale_term)
        parts = []
        for q, k in enumerate(keys):
            rows = self._memo[k]
            self._memo.move_to_end(k)
            parts.append((np.full(len(rows[0]), q, np.int64), *rows))
        while len(self._memo) > max(MEMO_LIMIT, len(set(keys))):
            self._memo.popitem(last=False)
        if not parts:
            return TopK.empty(), len(uniq)
        cols = [np.concatenate([p[j] for p in parts]) for j in range(6)]
        # Per-image query pruning depends on the whole map, so it is applied after the memo (as
        # OnlineGuidance.retrieve does): a pruned segment stays black, exactly as in `resail synthesize`.
        online = self.syn.online
        flags = segment_query_flags(segs, online.pruning, online.preserved_ratio)
        return TopK(*cols).only_queries(flags), len(uniq)

    def _apply_labels(self, labels: np.ndarray, instances: np.ndarray | None, source: str) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        inst = None if instances is None else np.asarray(instances, dtype=np.int64)
        self.syn.check(labels, inst, source)
        t0 = time.perf_counter()
        segs = self.syn.online.decompose(labels, inst)
        t1 = time.perf_counter()
        top, n_new = self._topk(segs)
        t2 = time.perf_counter()
        old = {placed_key(s): self.overrides[i] for i, s in enumerate(self.segs) if i in self.overrides}
        self.overrides = {i: old[k] for i, s in enumerate(segs) if (k := placed_key(s)) in old}
        self.labels, self.instances, self.segs, self.top = labels, inst, segs, top
        self._maps, self._layers = None, {}  # paste layers depend on the whole map's thing/stuff pixels
        self.timings = {"decompose_ms": 1e3 * (t1 - t0), "retrieve_ms": 1e3 * (t2 - t1),
                        "segments_retrieved": n_new, "segments_reused": len(segs) - n_new}

    # ------------------------------------------------------------------ choices → picture
    def _choices(self) -> tuple[dict[int, int], np.ndarray]:
        ov = self.syn.reference_overrides(self.segs, self.top, self.reference) if self.reference is not None else {}
        ov.update(self.overrides)
        return ov, self._with_photo(choose(self.top, len(self.segs), self.rank, ov))

    def _render(self) -> None:
        t0 = time.perf_counter()
        ov, self.matches = self._choices()
        self.chosen_rank = [ov.get(i, self.rank) if self.matches[i] >= 0 else None for i in range(len(self.segs))]
        self.guidance, self.valid = self._compose()
        t1 = time.perf_counter()
        with self.engine:
            self.image = self.syn.render(self.labels, self.guidance, self.instances, self.seed)
        t2 = time.perf_counter()
        self.version += 1
        self._png.clear()
        self.timings.update({"compose_ms": 1e3 * (t1 - t0), "generate_ms": 1e3 * (t2 - t1)})

    def _compose(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pipeline.compose.composition.compose_guidance`, by layers: each segment's paste (its box,
        pasted pixels and colours, computed by :func:`paste_segment` itself) is kept per chosen
        candidate until the map is repainted, so a local or global edit pastes only the segments
        whose candidate changed and then replays the layers in the paste order (same result)."""
        H, W = self.labels.shape
        if self._maps is None:
            self._maps = class_maps(self.labels, self.syn.meta)
            self._layers.clear()
        thing_map, stuff_map = self._maps
        guidance = np.zeros((H, W, 3), np.uint8)
        valid = np.zeros((H, W), bool)
        scratch_g, scratch_v = None, None
        for i in paste_order(self.segs):
            c = self._paste_code(i)  # a database segment id, a photo segment, or -1
            if c == -1:
                continue
            layer = self._layers.get((i, c))
            if layer is None:
                if scratch_g is None:
                    scratch_g, scratch_v = np.zeros((H, W, 3), np.uint8), np.zeros((H, W), bool)
                q = self.segs[i]
                rgb, m = self._crop_of(c)
                paste_segment(scratch_g, scratch_v, q.box, q.mask, q.is_thing, thing_map, rgb, m, stuff_map=stuff_map)
                y0, x0, y1, x1 = q.box
                layer = (q.box, scratch_v[y0:y1, x0:x1].copy(), scratch_g[y0:y1, x0:x1].copy())
                scratch_g[y0:y1, x0:x1] = 0
                scratch_v[y0:y1, x0:x1] = False
                self._layers[(i, c)] = layer
            (y0, x0, y1, x1), pm, rgb = layer
            guidance[y0:y1, x0:x1][pm] = rgb[pm]
            valid[y0:y1, x0:x1] |= pm
        return guidance, valid

    def _snapshot(self, what: str) -> None:
        self.history.append(Snapshot.take(what, self))
        if len(self.history) > HISTORY_LIMIT:
            del self.history[0]
        self.current = len(self.history) - 1

    def _changed(self, what: str, relabelled: bool = False) -> None:
        if not relabelled:  # a choice changed: nothing was decomposed or retrieved
            self.timings = {"segments_retrieved": 0, "segments_reused": len(self.segs)}
        t0 = time.perf_counter()
        self._render()
        self._snapshot(what)
        self.timings["total_ms"] = self.timings.get("decompose_ms", 0) + self.timings.get("retrieve_ms", 0) + \
            1e3 * (time.perf_counter() - t0)

    # ------------------------------------------------------------------ edits (each returns nothing; read state())
    @contextlib.contextmanager
    def _all_or_nothing(self):
        """Put the previous state back when an edit fails part-way (the arrays are replaced, never
        written in place; the containers edits mutate are copied). The top-k memo and the paste
        layers only gain entries that are right for the map they were computed on, so they are kept."""
        saved = dict(self.__dict__)
        saved.update(overrides=dict(self.overrides), _png=dict(self._png), history=list(self.history),
                     timings=dict(self.timings))
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def set_labels(self, labels: np.ndarray, instances: np.ndarray | None = None, source: str = "labels") -> None:
        """A repainted map. Without ``instances`` the old instance ids are kept where the class did not
        change (a painted-over thing loses its id and becomes connected components)."""
        labels = np.asarray(labels, dtype=np.int64)
        if instances is None and self.instances is not None and labels.shape == self.labels.shape:
            instances = np.where(labels == self.labels, self.instances, 0)
        with self._all_or_nothing():
            self._apply_labels(labels, instances, source)
            self._changed("paint", relabelled=True)

    def set_segment_rank(self, index: int, rank: int) -> None:
        self._segment(index)
        rank = check_rank(rank, self.k)
        with self._all_or_nothing():
            self.overrides[int(index)] = rank
            self._changed(f"segment {index} → rank {rank}")

    def set_rank(self, rank: int) -> None:
        """Global edit: every segment takes ``rank``; local overrides and the reference are cleared."""
        rank = check_rank(rank, self.k)
        with self._all_or_nothing():
            self.rank = rank
            self.overrides, self.reference = {}, None
            self._changed(f"all → rank {rank}")

    def set_reference(self, image_id: str | None) -> None:
        """Reference edit (``None`` leaves the mode): every segment takes its best candidate from
        ``image_id``; local overrides are cleared, later ones win."""
        if image_id is not None:
            self.syn.reference_overrides(self.segs, self.top, str(image_id))  # ConfigError when unusable
        with self._all_or_nothing():
            self.reference = None if image_id is None else str(image_id)
            self.photo = None
            self.overrides = {}
            self._changed(f"reference {image_id}" if image_id is not None else "reference off")

    def restore(self, n: int) -> None:
        """Go back to history entry ``n`` (the history itself is kept)."""
        if not 0 <= n < len(self.history):
            raise KeyError(n)
        snap = self.history[n]
        with self._all_or_nothing():
            self._apply_labels(snap.labels(), snap.instances(), "history")
            self.rank, self.reference, self.overrides = snap.rank, snap.reference, dict(snap.overrides)
            self.photo = snap.photo
            self._render()
            self.current = n

    # ------------------------------------------------------------------ reading
    def _segment(self, index: int) -> Segment:
        if not 0 <= int(index) < len(self.segs):
            raise KeyError(index)
        return self.segs[int(index)]

    def candidates(self, index: int) -> TopK:
        self._segment(index)
        return self.top.for_query(int(index))

    def segment_at(self, x: int, y: int) -> int | None:
        for i, s in enumerate(self.segs):
            y0, x0, y1, x1 = s.box
            if y0 <= y < y1 and x0 <= x < x1 and s.mask[y - y0, x - x0]:
                return i
        return None

    def segment_mask_rgba(self, index: int) -> np.ndarray:
        """The segment's box-sized mask as an RGBA overlay (white, alpha inside the mask)."""
        m = self._segment(index).mask
        out = np.zeros((*m.shape, 4), np.uint8)
        out[m] = (255, 255, 255, 255)
        return out

    def png(self, what: str) -> bytes:
        """image / guidance PNG of the current version (encoded once per version)."""
        if what not in self._png:
            self._png[what] = encode_rgb({"image": self.image, "guidance": self.guidance}[what])
        return self._png[what]

    def state(self) -> dict:
        meta = self.syn.meta
        counts = np.bincount(self.top.query_index, minlength=len(self.segs)) if len(self.segs) else []
        segs = [{"index": i, "class_id": int(s.class_id), "class_name": meta.by_id(int(s.class_id)).name,
                 "is_thing": bool(s.is_thing), "box": [int(v) for v in s.box], "area": int(s.area),
                 "n_candidates": int(counts[i]), "rank": self.chosen_rank[i],
                 "candidate_id": int(self.matches[i]) if self.matches[i] >= 0 else None,
                 "edited": i in self.overrides}
                for i, s in enumerate(self.segs)]
        base = f"/api/maps/{self.map_id}"
        v = f"?v={self.version}"
        return {"map_id": self.map_id, "width": int(self.labels.shape[1]), "height": int(self.labels.shape[0]),
                "version": self.version, "rank": self.rank, "reference": self.reference,
                "overrides": {str(k): v_ for k, v_ in sorted(self.overrides.items())},
                "has_instances": self.instances is not None, "segments": segs,
                "image_url": base + "/image.png" + v, "guidance_url": base + "/guidance.png" + v,
                "labels_url": base + "/labels.png" + v,
                "history": [{"index": n, "what": h.what, "thumbnail_url": f"{base}/history/{n}/thumbnail.png"}
                            for n, h in enumerate(self.history)],
                "current": self.current,
                "timings": {k: (round(v_, 2) if isinstance(v_, float) else v_) for k, v_ in self.timings.items()},
                **self.variety_state()}

    @property
    def nbytes(self) -> int:
        """Memory held by this map (arrays, masks, top-k memo, cached PNGs, history)."""
        n = self.labels.nbytes + (0 if self.instances is None else self.instances.nbytes)
        n += self.image.nbytes + self.guidance.nbytes + self.valid.nbytes
        n += sum(s.mask.nbytes + 200 for s in self.segs)
        n += sum(sum(a.nbytes for a in rows) + 64 for rows in self._memo.values())
        n += sum(len(b) for b in self._png.values()) + sum(h.nbytes for h in self.history)
        n += sum(pm.nbytes + rgb.nbytes for _, pm, rgb in self._layers.values())
        n += 0 if self._maps is None else sum(a.nbytes for a in self._maps)
        n += self.variety_nbytes()
        return int(n)
