"""The studio's web application: a JSON API over :class:`MapEdit` and the static page that uses it.

Everything heavy is loaded once, in :class:`Studio`: the run's generator and the on-line retrieval
index (a :class:`resail_train.synthesis.Synthesizer`), the segment database whose crops are the
candidate thumbnails, and the dataset adapter that reads the validation label maps offered as
starting points.

Threads (uvicorn runs sync endpoints in a thread pool): each open map has a lock of its own
(:meth:`resail_studio.sessions.SessionStore.session`), so a long edit of one map never holds up
another map's requests; the generator, the retrieval index, the HDF5 database and the thumbnail
cache are shared and not thread-safe, so every call into them takes ``Studio.engine``, one call
at a time (never for a whole edit).

Input hygiene: uploads are decoded in memory (:mod:`resail_studio.pngio`); ids in URLs are looked
up in dictionaries built at start (a request never names a file); every failure is a JSON
``{"error": "..."}`` with a 4xx status (5xx only for bugs), and the server keeps serving.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
from fastapi import Body, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import ConfigError, ResailError
from pipeline.visualize import class_colors, colorize_labels
from resail_studio.editor import MapEdit, check_rank, check_seed
from resail_studio.pngio import UploadError, decode_index_png, encode_index, encode_rgb, thumbnail
from resail_studio.sessions import SessionStore
from resail_studio.variety import add_routes as add_variety_routes

STATIC = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 16_000_000  # label maps larger than 16 Mpx are refused (413)
MAX_UPLOAD_BYTES = 64 << 20
THUMB_CACHE = 2048


class NotFound(KeyError):
    """An id that is not (or no longer) known → 404."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


class Studio:
    """The loaded run + database + dataset, and the open maps."""

    def __init__(self, syn, *, seed: int = 0, max_maps: int = 16, max_bytes: int = 1 << 30,
                 max_pixels: int = MAX_PIXELS, run_name: str | None = None) -> None:
        # A seed torch cannot take would fail every map's synthesis: refuse it at start, in one line.
        self.syn, self.seed, self.max_pixels = syn, check_seed(seed), int(max_pixels)
        self.run_name = run_name or (syn.run_dir.name if syn.run_dir is not None else "run")
        self.store = SessionStore(max_maps, max_bytes)
        self.engine = threading.RLock()  # the generator, index, database, adapter, thumbnail cache
        self.k = int(syn.online.params.k)
        self.meta = syn.meta
        self.colors = class_colors(self.meta)
        db = syn.online.db
        self.db = db
        self._seg_image = np.asarray(db.col("image_id"), dtype=object)
        self._seg_split = np.asarray(db.col("split"), dtype=object)
        self._seg_box = np.stack([db.col(c) for c in ("y0", "x0", "y1", "x1")], 1) if len(db) else np.zeros((0, 4), int)
        self._seg_class = db.col("class_id")
        rows = db.image_rows()
        self._rows = {(r["split"], r["image_id"]): r for r in rows}
        db_split = str(db.attrs.get("db_split", "train"))
        cand = np.asarray(db.col("candidate"), dtype=bool)
        ref_ids = set(self._seg_image[cand & (self._seg_split == db_split)].tolist())
        self.references = [r["image_id"] for r in rows if r["split"] == db_split and r["image_id"] in ref_ids]
        self.examples: dict[str, dict] = {}
        for r in rows:  # starting points: the maps of the other splits (val), never the database itself
            if r["split"] != db_split and r["image_id"] not in self.examples:
                self.examples[r["image_id"]] = r
        self.adapter, self.dataset_note = None, None
        try:
            self.adapter = db.open_adapter()
        except ResailError as e:
            self.dataset_note = f"dataset not readable, examples and source images are off ({e})"
        self._refs: dict[tuple[str, str], Any] = {}
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()

    # ------------------------------------------------------------------ dataset access (cached)
    def _sample(self, split: str, image_id: str):
        if self.adapter is None:
            raise NotFound(f"image {image_id}: {self.dataset_note}")
        key = (split, image_id)
        if key not in self._refs:
            self._refs[key] = self.db.sample_refs(self.adapter, [self._rows[key]])[0]
        return self.adapter.load(self._refs[key])

    def cached(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        hit = self._thumbs.get(key)
        if hit is not None:
            self._thumbs.move_to_end(key)
            return hit
        data = make()
        self._thumbs[key] = data
        if len(self._thumbs) > THUMB_CACHE:
            self._thumbs.popitem(last=False)
        return data

    def example(self, image_id: str) -> dict:
        if image_id not in self.examples:
            raise NotFound(f"example {image_id!r} is not a label map of this cache")
        return self.examples[image_id]

    def segment_row(self, segment_id: int) -> int:
        if not 0 <= segment_id < len(self.db):
            raise NotFound(f"segment {segment_id} is not in the database (0..{len(self.db) - 1})")
        return segment_id

    # ------------------------------------------------------------------ maps
    @contextlib.contextmanager
    def session(self, map_id: str) -> Iterator[MapEdit]:
        """Hold ``map_id``'s own lock for the block (other maps are not held up); 404 when unknown."""
        try:
            cm = self.store.session(map_id)
            edit = cm.__enter__()
        except KeyError:
            raise NotFound(f"map {map_id!r} is unknown or was evicted (open it again)") from None
        with contextlib.ExitStack() as stack:
            stack.push(cm)
            yield edit

    def open_map(self, labels: np.ndarray, instances: np.ndarray | None, source: str) -> dict:
        if labels.shape[0] * labels.shape[1] > self.max_pixels:
            raise UploadError(f"{source}: {labels.shape[1]}x{labels.shape[0]} is over the limit of "
                              f"{self.max_pixels / 1e6:g} Mpx", 413)
        # Not shared until it is in the store: built without any map lock, engine calls locked inside.
        edit = MapEdit(self.store.new_id(), self.syn, labels, instances, seed=self.seed, source=source,
                       engine_lock=self.engine)
        state = edit.state()
        self.store.add(edit)
        return state

    def info(self) -> dict:
        m = self.meta
        return {"run": self.run_name, "cache": str(self.syn.cache_dir), "dataset": m.dataset,
                "generator_size": list(self.syn.size), "k": int(self.syn.online.params.k),
                "classes": [{"id": c.id, "name": c.name, "thing": bool(c.thing), "color": _hex(self.colors[c.id])}
                            for c in m.classes],
                "ignore": {"id": m.ignore_id, "name": "void", "color": _hex(self.colors[m.ignore_id])},
                "examples": [{"image_id": i, "split": r["split"], "width": r["width"], "height": r["height"],
                              "thumbnail_url": f"/api/examples/{i}/thumbnail.png"}
                             for i, r in self.examples.items()] if self.adapter is not None else [],
                "references": self.references, "dataset_note": self.dataset_note,
                "limits": {"max_pixels": self.max_pixels, "max_maps": self.store.max_maps,
                           "max_bytes": self.store.max_bytes}}


# --------------------------------------------------------------------------- the application
def _read_index(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{what}: upload over {MAX_UPLOAD_BYTES >> 20} MB", 413)
    return decode_index_png(data, what, max_pixels)


async def _upload(f: UploadFile | None, what: str) -> bytes | None:
    if f is None:
        return None
    data = await f.read(MAX_UPLOAD_BYTES + 1)
    if not data:
        raise UploadError(f"{what}: empty upload")
    return data


def _int_field(body: Any, key: str) -> int:
    if not isinstance(body, dict) or key not in body:
        raise UploadError(f'expected a JSON object {{"{key}": …}}', 400)
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise UploadError(f"{key} must be an integer >= 0, got {v!r}"[:200], 400)
    return v


def _rank_field(body: Any, k: int) -> int:
    """A well-formed rank (else 400) that the retrieval can serve: 0 ≤ rank < k (else 422)."""
    r = _int_field(body, "rank")
    try:
        return check_rank(r, k)
    except ConfigError as e:
        raise UploadError(str(e), 422) from None


def _png(data: bytes, cache: bool = False) -> Response:
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "max-age=3600" if cache else "no-store"})


def create_app(syn, *, seed: int = 0, max_maps: int = 16, max_bytes: int = 1 << 30, max_pixels: int = MAX_PIXELS,
               run_name: str | None = None, palette=None) -> FastAPI:
    """The FastAPI app of a loaded :class:`~resail_train.synthesis.Synthesizer` (see docs/studio.md); with a
    ``palette`` (:mod:`pipeline.datasets.palette`) uploaded label maps may be colour PNGs."""
    studio = Studio(syn, seed=seed, max_maps=max_maps, max_bytes=max_bytes, max_pixels=max_pixels,
                    run_name=run_name)

    def read_labels(data: bytes, what: str, max_pixels: int) -> np.ndarray:
        """``_read_index``; with a palette an RGB label upload is read through it (instances never are)."""
        if palette is None or "labels" not in what or data[25:26] in (b"\x00", b"\x04"):  # grey PNG: ids
            return _read_index(data, what, max_pixels)
        from pipeline.datasets.palette import decode_label_bytes
        from resail_studio.pngio import png_size

        if len(data) > MAX_UPLOAD_BYTES:
            raise UploadError(f"{what}: upload over {MAX_UPLOAD_BYTES >> 20} MB", 413)
        h, w = png_size(data, what)
        if h * w > max_pixels:
            raise UploadError(f"{what}: {w}x{h} = {h * w / 1e6:.1f} Mpx is over the limit of {max_pixels / 1e6:g} Mpx",
                              413)
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.size == 0:
            raise UploadError(f"{what}: unreadable or corrupt PNG")
        return decode_label_bytes(arr, palette, what, syn.meta)
    app = FastAPI(title="RESAIL studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio
    engine = studio.engine

    # -------------------------------------------------------------- errors: always {"error": …}
    @app.exception_handler(ResailError)
    async def _resail(_: Request, e: ResailError):
        return JSONResponse({"error": str(e)}, 400)

    @app.exception_handler(UploadError)
    async def _upload_err(_: Request, e: UploadError):
        return JSONResponse({"error": str(e)}, e.status)

    @app.exception_handler(NotFound)
    async def _nf(_: Request, e: NotFound):
        return JSONResponse({"error": e.message}, 404)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 422)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception):  # a bug: say so, keep serving
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    def locked(fn: Callable, *a):
        """Run ``fn`` under the shared-resources lock (thumbnails, dataset samples: short calls)."""
        with engine:
            return fn(*a)

    def on_map(map_id: str, fn: Callable[[MapEdit], Any]) -> Any:
        """Run ``fn(edit)`` under ``map_id``'s own lock."""
        with studio.session(map_id) as e:
            return fn(e)

    # -------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -------------------------------------------------------------- run, dataset
    @app.get("/api/health")
    def health():
        return {"status": "ok"}

    @app.get("/api/info")
    def info():
        return studio.info()

    @app.get("/api/examples/{image_id}/thumbnail.png")
    def example_thumb(image_id: str):
        r = studio.example(image_id)

        def make():
            s = studio._sample(r["split"], image_id)
            return encode_rgb(thumbnail(colorize_labels(s.labels, studio.meta), 128, index=True))
        return _png(locked(studio.cached, ("example", image_id), make), cache=True)

    @app.post("/api/examples/{image_id}", status_code=201)
    def open_example(image_id: str):
        r = studio.example(image_id)
        s = locked(studio._sample, r["split"], image_id)
        return studio.open_map(s.labels, s.instances, f"{r['split']}/{image_id}")

    @app.get("/api/images/{image_id}/thumbnail.png")
    def image_thumb(image_id: str):
        key = next(((sp, i) for (sp, i) in studio._rows if i == image_id and i in studio.references), None)
        if key is None:
            raise NotFound(f"image {image_id!r} is not a reference image of the database")

        def make():
            return encode_rgb(thumbnail(studio._sample(*key).image, 160))
        return _png(locked(studio.cached, ("image", image_id), make), cache=True)

    @app.get("/api/segments/{segment_id}/thumbnail.png")
    def segment_thumb(segment_id: int):
        studio.segment_row(segment_id)

        def make():
            rgb, m = studio.syn.online.crop(segment_id)
            rgba = np.dstack([rgb, np.where(m, 255, 0).astype(np.uint8)])
            return encode_rgb(thumbnail(rgba, 128, index=True))
        return _png(locked(studio.cached, ("seg", segment_id), make), cache=True)

    @app.get("/api/segments/{segment_id}/source.png")
    def segment_source(segment_id: int):
        studio.segment_row(segment_id)

        def make():
            img = studio._sample(studio._seg_split[segment_id], studio._seg_image[segment_id]).image
            # A shrunk image may be a read-only view of PIL's buffer (OpenCV refuses to draw on it) and
            # an unshrunk one is the sample itself: draw on a copy of our own.
            small = np.array(thumbnail(img, 200), dtype=np.uint8, order="C", copy=True)
            s = small.shape[0] / img.shape[0]
            y0, x0, y1, x1 = (int(round(v * s)) for v in studio._seg_box[segment_id])
            cv2.rectangle(small, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 230, 0), 2)
            return encode_rgb(small)
        return _png(locked(studio.cached, ("source", segment_id), make), cache=True)

    # -------------------------------------------------------------- maps
    @app.post("/api/maps", status_code=201)
    async def new_map(labels: UploadFile = File(...), instances: UploadFile | None = File(None)):
        lab_b, inst_b = await _upload(labels, "labels"), await _upload(instances, "instances")

        def go():
            lab = read_labels(lab_b, "labels", studio.max_pixels)
            inst = None if inst_b is None else _read_index(inst_b, "instances", studio.max_pixels)
            return studio.open_map(lab, inst, "labels")
        return await run_in_threadpool(go)

    @app.get("/api/maps/{map_id}")
    def get_map(map_id: str):
        return on_map(map_id, lambda e: e.state())

    @app.delete("/api/maps/{map_id}", status_code=204)
    def delete_map(map_id: str):
        on_map(map_id, lambda e: studio.store.remove(map_id))
        return Response(status_code=204)

    def edit_and_state(map_id: str, fn: Callable[[MapEdit], None]) -> dict:
        def go(e: MapEdit) -> dict:
            fn(e)
            return e.state()
        return on_map(map_id, go)

    @app.get("/api/maps/{map_id}/image.png")
    def map_image(map_id: str):
        return _png(on_map(map_id, lambda e: e.png("image")))

    @app.get("/api/maps/{map_id}/guidance.png")
    def map_guidance(map_id: str):
        return _png(on_map(map_id, lambda e: e.png("guidance")))

    @app.get("/api/maps/{map_id}/labels.png")
    def map_labels(map_id: str, color: bool = False):
        lab = on_map(map_id, lambda e: e.labels)  # replaced by an edit, never written in place
        return _png(encode_rgb(colorize_labels(lab, studio.meta)) if color else encode_index(lab))

    @app.get("/api/maps/{map_id}/instances.png")
    def map_instances(map_id: str):
        inst = on_map(map_id, lambda e: e.instances)
        if inst is None:
            raise NotFound(f"map {map_id} has no instance map")
        return _png(encode_index(inst))

    @app.get("/api/maps/{map_id}/labels.raw")
    def map_labels_raw(map_id: str):
        """The label map as little-endian uint16 H×W (what the page paints on)."""
        lab = on_map(map_id, lambda e: e.labels)
        return Response(np.ascontiguousarray(lab.astype("<u2")).tobytes(), media_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})

    @app.put("/api/maps/{map_id}/labels")
    async def put_labels(map_id: str, labels: UploadFile = File(...), instances: UploadFile | None = File(None)):
        lab_b, inst_b = await _upload(labels, "labels"), await _upload(instances, "instances")

        def go():
            with studio.session(map_id) as e:
                lab = read_labels(lab_b, "labels", studio.max_pixels)
                inst = None if inst_b is None else _read_index(inst_b, "instances", studio.max_pixels)
                e.set_labels(lab, inst, "labels")
                return e.state()
        return await run_in_threadpool(go)

    def seg_index(e: MapEdit, index: int) -> int:
        if not 0 <= index < len(e.segs):
            raise NotFound(f"segment {index} does not exist: map {e.map_id} has {len(e.segs)} segments")
        return index

    # A rank is checked before the map is touched: one the retrieval cannot serve (>= k, or past
    # int64 as a JSON integer can be) is a 422 and the map keeps its state.
    @app.put("/api/maps/{map_id}/segments/{index}")
    def put_segment(map_id: str, index: int, body: Any = Body(...)):
        r = _rank_field(body, studio.k)
        return edit_and_state(map_id, lambda e: e.set_segment_rank(seg_index(e, index), r))

    @app.put("/api/maps/{map_id}/ranks")
    def put_ranks(map_id: str, body: Any = Body(...)):
        r = _rank_field(body, studio.k)
        return edit_and_state(map_id, lambda e: e.set_rank(r))

    @app.put("/api/maps/{map_id}/reference")
    def put_reference(map_id: str, body: Any = Body(...)):
        if not isinstance(body, dict) or "image_id" not in body:
            raise UploadError('expected a JSON object {"image_id": "…"} (null leaves reference mode)')
        iid = body["image_id"]
        if iid is not None and not isinstance(iid, str):
            raise UploadError(f"image_id must be a string or null, got {iid!r}")
        if iid is not None and iid not in studio.references:
            raise NotFound(f"image {iid!r} is not a reference image of the database (one with retrieval candidates)")
        return edit_and_state(map_id, lambda e: e.set_reference(iid))

    @app.get("/api/maps/{map_id}/segments/{index}/candidates")
    def candidates(map_id: str, index: int):
        def go(e: MapEdit):
            top = e.candidates(seg_index(e, index))
            chosen = int(e.matches[index])
            return [{"rank": int(r), "segment_id": int(c), "image_id": str(studio._seg_image[c]),
                     "split": str(studio._seg_split[c]), "score": round(float(s), 5),
                     "shape_term": round(float(sh), 5), "scale_term": round(float(sc), 5),
                     "chosen": int(c) == chosen,
                     "thumbnail_url": f"/api/segments/{int(c)}/thumbnail.png",
                     "source_url": f"/api/segments/{int(c)}/source.png" if studio.adapter is not None else None}
                    for r, c, s, sh, sc in zip(top.rank.tolist(), top.candidate_id.tolist(), top.score.tolist(),
                                               top.shape_term.tolist(), top.scale_term.tolist())]
        return on_map(map_id, go)

    @app.get("/api/maps/{map_id}/segments/{index}/mask.png")
    def segment_mask(map_id: str, index: int):
        return _png(on_map(map_id, lambda e: encode_rgb(e.segment_mask_rgba(seg_index(e, index)))))

    @app.get("/api/maps/{map_id}/segment_at")
    def segment_at(map_id: str, x: int, y: int):
        return {"index": on_map(map_id, lambda e: e.segment_at(x, y))}

    @app.get("/api/maps/{map_id}/history")
    def history(map_id: str):
        return on_map(map_id, lambda e: e.state()["history"])

    def snap(e: MapEdit, n: int):
        if not 0 <= n < len(e.history):
            raise NotFound(f"history entry {n} does not exist (0..{len(e.history) - 1})")
        return e.history[n]

    @app.get("/api/maps/{map_id}/history/{n}/thumbnail.png")
    def history_thumb(map_id: str, n: int):
        return _png(on_map(map_id, lambda e: snap(e, n).thumb_png))

    @app.post("/api/maps/{map_id}/history/{n}/restore")
    def restore(map_id: str, n: int):
        return edit_and_state(map_id, lambda e: (snap(e, n), e.restore(n)))

    # shuffle, strip of samples, reference photo (resail_studio/variety.py)
    add_variety_routes(app, studio, read_index=read_labels, upload=_upload, png=_png, not_found=NotFound)
    return app
