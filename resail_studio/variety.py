"""What retrieval's variety adds to the studio: a shuffle, a strip of samples, a photo as the reference.

* **Shuffle** (:meth:`MapVariety.shuffle`): a new draw of every segment's candidate from its top-k
  (softmax over −score/T, :func:`pipeline.online.draw_ranks`), or of one segment's — then never its
  current candidate when it has another. The n-th shuffle of a map draws with
  ``sample_rng(seed, n)``, so shuffling a fresh map gives, in turn, the samples 0, 1, 2, … of
  ``resail synthesize --samples N --seed S --temperature T``. The draw becomes local choices
  (overrides), so it is undone, restored and carried over a repaint like any local edit.
* **Strip of samples** (:meth:`MapVariety.make_samples`): N (1…16) syntheses of the current label
  map; sample ``i`` is exactly sample ``i`` of ``resail synthesize --samples`` (same seed and
  temperature), whatever the map's current choices. Picking one (:meth:`MapVariety.apply_sample`)
  makes its draw the map's choices. A repaint makes the strip stale (it is dropped).
* **Reference photo** (:meth:`MapVariety.set_photo`): an uploaded photo + its label map become the
  candidates (:meth:`resail_train.synthesis.Synthesizer.photo_reference`): each segment takes the
  best-scoring photo segment of its class; the others keep the database choice (global rank, local
  edits) or, ``strict``, stay black. Local edits made later win, as with a reference image.

:class:`MapVariety` is mixed into :class:`resail_studio.editor.MapEdit` and reads its state; the
routes (:func:`add_routes`) go through the server's per-map sessions. (No ``from __future__ import
annotations`` here: FastAPI reads the route signatures, whose types are imported inside
:func:`add_routes` so that the editor does not need FastAPI.)
"""

import itertools
from typing import Any

import cv2
import numpy as np

from pipeline.compose.composition import compose_guidance
from pipeline.errors import ConfigError
from pipeline.online import check_temperature, choose, draw_ranks, sample_rng, with_photo

STRIP_MAX = 16  # samples in the studio's strip (the CLI allows 64)
PHOTO_LIMIT_BYTES = 64 << 20
_serials = itertools.count(1)


class _Photo:
    """A reference photo with a serial number (paste layers are keyed by it) and its thumbnail."""

    def __init__(self, ref, strict: bool, thumb_png: bytes) -> None:
        self.ref, self.strict, self.serial, self.thumb_png = ref, bool(strict), next(_serials), thumb_png

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes + len(self.thumb_png)


class _Strip:
    def __init__(self, segs, temperature: float, samples: list[dict]) -> None:
        self.segs, self.temperature, self.samples = segs, temperature, samples

    @property
    def nbytes(self) -> int:
        return sum(len(s["image"]) + len(s["guidance"]) + 8 * len(s["ranks"]) + 64 for s in self.samples)


class MapVariety:
    """Shuffle, sample strip and reference photo of a :class:`~resail_studio.editor.MapEdit`.

    Class-level defaults, so a map starts without any of them."""

    photo: _Photo | None = None
    photo_matches: np.ndarray | None = None
    shuffles: int = 0
    strip: _Strip | None = None

    # ------------------------------------------------------------------ hooks called by MapEdit
    def _with_photo(self, matches: np.ndarray) -> np.ndarray:
        """The database choice ``matches`` with the reference photo applied (sets ``photo_matches``)."""
        if self.photo is None:
            self.photo_matches = None
            return matches
        with self.engine:
            ptop = self.syn.online.photo_topk(self.photo.ref, self.segs)
        out, self.photo_matches = with_photo(matches, ptop, self.overrides, self.photo.strict)
        return out

    def _paste_code(self, i: int):
        """What segment ``i`` pastes: a database segment id, ``("photo", serial, j)``, or −1 (nothing)."""
        if self.photo_matches is not None and self.photo_matches[i] >= 0:
            return ("photo", self.photo.serial, int(self.photo_matches[i]))
        return int(self.matches[i])

    def _crop_of(self, code) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(code, tuple):
            return self.photo.ref.crops[code[2]]
        with self.engine:
            return self.syn.online.crop(int(code))

    def variety_state(self) -> dict:
        ph = self.photo
        strip = self.strip if self.strip is not None and self.strip.segs is self.segs else None
        base = f"/api/maps/{self.map_id}"
        return {
            "reference_photo": None if ph is None else {
                "source": ph.ref.source, "strict": ph.strict, "width": ph.ref.shape[1], "height": ph.ref.shape[0],
                "classes": sorted(ph.ref.class_ids), "thumbnail_url": f"{base}/reference-photo/thumbnail.png",
                "segments_from_photo": [] if self.photo_matches is None else
                [int(i) for i in np.flatnonzero(self.photo_matches >= 0)]},
            "shuffles": self.shuffles,
            "samples": None if strip is None else {
                "temperature": strip.temperature, "seed": self.seed,
                "items": [{"index": n, "image_url": f"{base}/samples/{n}/image.png?v={s['token']}",
                           "guidance_url": f"{base}/samples/{n}/guidance.png?v={s['token']}"}
                          for n, s in enumerate(strip.samples)]},
        }

    def variety_nbytes(self) -> int:
        seen = {id(self.photo): self.photo} if self.photo is not None else {}
        for h in getattr(self, "history", ()):
            p = getattr(h, "photo", None)
            if p is not None:
                seen[id(p)] = p
        return sum(p.nbytes for p in seen.values()) + (0 if self.strip is None else self.strip.nbytes)

    # ------------------------------------------------------------------ edits
    def shuffle(self, temperature: float = 1.0, index: int | None = None) -> None:
        """A new draw for every segment (clears the reference image/photo and local edits), or for
        segment ``index`` only (a candidate other than its current one when it has two or more)."""
        t = check_temperature(temperature)
        if index is not None:
            self._segment(index)
        rng = sample_rng(self.seed, self.shuffles)
        with self._all_or_nothing():
            if index is None:
                drawn = draw_ranks(self.top, len(self.segs), t, rng)
                self.rank, self.reference, self.photo = 0, None, None
                self.overrides = {i: int(r) for i, r in enumerate(drawn.tolist())}
                what = f"shuffle all (T={t:g})"
            else:
                cur = self.chosen_rank[index]
                drawn = draw_ranks(self.top, len(self.segs), t, rng, avoid=None if cur is None else {index: cur})
                self.overrides[int(index)] = int(drawn[index])
                what = f"shuffle segment {index} → rank {int(drawn[index])}"
            self.shuffles += 1
            self._changed(what)

    def make_samples(self, n: int, temperature: float = 1.0) -> None:
        """The strip: ``n`` samples of the current map (sample i = ``resail synthesize --samples``'s)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= STRIP_MAX:
            raise ConfigError(None, f"n must be an integer in 1..{STRIP_MAX}, got {str(n)[:40]}")
        t = check_temperature(temperature)
        from resail_studio.pngio import encode_rgb

        samples = []
        for i in range(int(n)):
            ranks = draw_ranks(self.top, len(self.segs), t, sample_rng(self.seed, i))
            matches = choose(self.top, len(self.segs), 0, {q: int(r) for q, r in enumerate(ranks.tolist())})
            with self.engine:
                crops = [None if c < 0 else self.syn.online.crop(int(c)) for c in matches.tolist()]
            guidance, _ = compose_guidance(self.labels, self.syn.meta, self.segs, crops)
            with self.engine:
                image = self.syn.render(self.labels, guidance, self.instances, self.seed)
            samples.append({"ranks": ranks, "image": encode_rgb(image), "guidance": encode_rgb(guidance),
                            "token": next(_serials)})
        self.strip = _Strip(self.segs, t, samples)

    def strip_item(self, n: int) -> dict:
        """Sample ``n`` of the current strip: ``ranks`` (drawn rank per segment), ``image`` and
        ``guidance`` (PNG bytes). KeyError when there is no such sample (or the strip is stale)."""
        strip = self.strip if self.strip is not None and self.strip.segs is self.segs else None
        if strip is None or not 0 <= n < len(strip.samples):
            raise KeyError(f"sample {n} does not exist (make a strip of samples of this map first)")
        return strip.samples[n]

    def apply_sample(self, n: int) -> None:
        """Make sample ``n`` of the strip the map's choices (a local choice per segment)."""
        ranks = self.strip_item(n)["ranks"]
        with self._all_or_nothing():
            self.rank, self.reference, self.photo = 0, None, None
            self.overrides = {i: int(r) for i, r in enumerate(np.asarray(ranks).tolist())}
            self._changed(f"sample {n} (T={self.strip.temperature:g})")

    def set_photo(self, image: np.ndarray | None, labels: np.ndarray | None = None,
                  instances: np.ndarray | None = None, strict: bool = False, source: str = "photo") -> None:
        """Reference photo on (``image`` H×W×3 uint8 + ``labels`` H×W class ids), or off (``image=None``).
        Clears the reference image and the local edits."""
        if image is None:
            with self._all_or_nothing():
                self.photo = None
                self._changed("reference photo off")
            return
        from resail_studio.pngio import encode_rgb, thumbnail

        ref = self.syn.photo_reference(image, labels, instances, source)  # DataError for a bad pair
        photo = _Photo(ref, strict, encode_rgb(thumbnail(np.asarray(image, np.uint8), 160)))
        with self._all_or_nothing():
            self.photo, self.reference, self.overrides = photo, None, {}
            self._changed(f"reference photo{' (strict)' if strict else ''}")


# --------------------------------------------------------------------------- uploads
def decode_photo(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    """An uploaded photo (PNG or JPEG, 8-bit; grey broadcast, alpha dropped) as H×W×3 uint8 RGB,
    refused before decoding when its header declares more than ``max_pixels``."""
    from pathlib import Path

    from pipeline.datasets.base import header_size
    from resail_studio.pngio import UploadError

    if len(data) > PHOTO_LIMIT_BYTES:
        raise UploadError(f"{what}: upload over {PHOTO_LIMIT_BYTES >> 20} MB", 413)
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8")):
        raise UploadError(f"{what}: not a PNG or JPEG file", 415)
    w, h = header_size(Path(what), data)
    if w * h > max_pixels:
        raise UploadError(f"{what}: {w}x{h} is over the limit of {max_pixels / 1e6:g} Mpx", 413)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0 or img.dtype != np.uint8:
        raise UploadError(f"{what}: unreadable, corrupt or not an 8-bit image")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])


def _number(body: Any, key: str, default: float) -> float:
    if not isinstance(body, dict):
        raise ConfigError(None, "expected a JSON object")
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(None, f"{key} must be a number, got {str(v)[:40]}")
    return check_temperature(v) if key == "temperature" else float(v)


def add_routes(app, studio, *, read_index, upload, png, not_found) -> None:
    """The shuffle / samples / reference-photo endpoints (docs/studio.md) on the server's ``app``,
    with the server's helpers: ``read_index(bytes, what, max_pixels)`` (an uploaded id map),
    ``upload`` (an UploadFile's bytes), ``png`` (bytes → response), ``not_found`` (→ 404)."""
    from fastapi import Body, File, Form, UploadFile
    from starlette.concurrency import run_in_threadpool

    NotFound, _png, _upload = not_found, png, upload

    def on_map(map_id: str, fn):
        with studio.session(map_id) as e:
            return fn(e)

    @app.post("/api/maps/{map_id}/shuffle")
    def shuffle(map_id: str, body: Any = Body(default={})):
        t = _number(body, "temperature", 1.0)
        seg = body.get("segment") if isinstance(body, dict) else None
        if seg is not None and (isinstance(seg, bool) or not isinstance(seg, int)):
            raise ConfigError(None, f"segment must be an integer or null, got {str(seg)[:40]}")

        def go(e):
            if seg is not None and not 0 <= seg < len(e.segs):
                raise NotFound(f"segment {seg} does not exist: map {e.map_id} has {len(e.segs)} segments")
            e.shuffle(t, seg)
            return e.state()
        return on_map(map_id, go)

    @app.post("/api/maps/{map_id}/samples")
    def samples(map_id: str, body: Any = Body(default={})):
        t = _number(body, "temperature", 1.0)
        n = body.get("n", 4) if isinstance(body, dict) else 4

        def go(e):
            e.make_samples(n, t)
            return e.state()["samples"]
        return on_map(map_id, go)

    def item(e, n: int) -> dict:
        try:
            return e.strip_item(n)
        except KeyError as err:
            raise NotFound(str(err.args[0])) from None

    def sample_file(map_id: str, n: int, what: str) -> bytes:
        return on_map(map_id, lambda e: item(e, n)[what])

    @app.get("/api/maps/{map_id}/samples/{n}/image.png")
    def sample_image(map_id: str, n: int):
        return _png(sample_file(map_id, n, "image"))

    @app.get("/api/maps/{map_id}/samples/{n}/guidance.png")
    def sample_guidance(map_id: str, n: int):
        return _png(sample_file(map_id, n, "guidance"))

    @app.post("/api/maps/{map_id}/samples/{n}/apply")
    def apply_sample(map_id: str, n: int):
        def go(e):
            item(e, n)
            e.apply_sample(n)
            return e.state()
        return on_map(map_id, go)

    @app.put("/api/maps/{map_id}/reference-photo")
    async def put_photo(map_id: str, photo: UploadFile = File(...), labels: UploadFile = File(...),
                        instances: UploadFile | None = File(None), strict: bool = Form(False)):
        ph_b = await _upload(photo, "photo")
        lab_b, inst_b = await _upload(labels, "photo labels"), await _upload(instances, "photo instances")

        def go():
            img = decode_photo(ph_b, "photo", studio.max_pixels)
            lab = read_index(lab_b, "photo labels", studio.max_pixels)
            inst = None if inst_b is None else read_index(inst_b, "photo instances", studio.max_pixels)
            with studio.session(map_id) as e:
                e.set_photo(img, lab, inst, strict, source=photo.filename or "photo")
                return e.state()
        return await run_in_threadpool(go)

    @app.delete("/api/maps/{map_id}/reference-photo")
    def delete_photo(map_id: str):
        def go(e):
            e.set_photo(None)
            return e.state()
        return on_map(map_id, go)

    @app.get("/api/maps/{map_id}/reference-photo/thumbnail.png")
    def photo_thumb(map_id: str):
        def go(e):
            if e.photo is None:
                raise NotFound(f"map {map_id} has no reference photo")
            return e.photo.thumb_png
        return _png(on_map(map_id, go))
