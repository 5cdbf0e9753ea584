"""Image synthesis and editing with a trained RESAIL run (paper §3, Fig. 1, Fig. 6–7).

:class:`Synthesizer` = a run's generator (``RUN_DIR/generator.pt``) + its class list + an
:class:`pipeline.online.OnlineGuidance` on the run's stage cache (the retrieval database). For a
label map that need not be in the database it

1. decomposes the map and retrieves every segment's top-k candidates (exactly as the offline
   ``resail retrieve`` / ``resail compose`` stages, no image excluded), chooses one candidate per
   segment (rank 0 = best, or the editing choices below) and composes the guidance image at the
   **label map's own resolution** (the four paste rules);
2. resizes labels (nearest, :func:`pipeline.decompose.segments.nearest_indices`), guidance (bicubic) and
   instances (nearest) to the generator's size — by default the run's ``data.crop_size``: the
   whole map is resized to ``crop_size`` (aspect changes when the map's aspect differs), which is
   SPADE's/the paper's test protocol (ADE20K/COCO-Stuff 256×256, Cityscapes 512×256). These are the
   same resize functions the training data loader uses (:func:`resail_train.training.data.apply_geometry`),
   so a training-size map goes through exactly the training pre-processing;
3. one-hot encodes the labels with the dataset's lookup table (``ClassMeta.lookup_table``; void →
   all-zero), adds the instance edge map when the run was trained with ``data.instance_edges``
   (no instance map → no edges, as in training), runs ``G`` in eval mode under ``no_grad``;
4. resizes the output back to the label map's size (bicubic; nothing is done when equal).

``Synthesizer.load(..., size=(H, W))`` builds the generator at another size instead (the
generator is fully convolutional apart from the start-size resize; H and W must be multiples of
``2**num_upsampling``), e.g. the run's ``load_size`` rounded to such a multiple.

Determinism: ``G`` has no noise input; ``synthesize(..., seed=S)`` still seeds torch
(``torch.manual_seed``) and runs with ``torch.use_deterministic_algorithms(True)`` on CPU
(deterministic cuDNN without autotuning on CUDA), restoring the previous settings afterwards, so
the same inputs and seed give the same image on the same device.

Editing (paper Fig. 6–7):

* **local** — ``overrides={segment index: R}``: that segment pastes its rank-``R`` candidate, the
  others rank ``rank``. A segment is named by its index in the decomposition of the map
  (:func:`pipeline.decompose.segments.decompose` order: class id, then instance id, then connected components
  in raster order; :meth:`Synthesizer.segments` lists them) or by a pixel with
  :meth:`Synthesizer.segment_at` / ``resolve_overrides`` (``{(x, y): R}``): the segment containing it.
* **global** — ``rank=R``: every segment pastes its rank-``R`` candidate.
* **reference** — ``reference=IMAGE_ID`` (an image of the database split): each query segment takes,
  among **its own** retrieved top-k, the best-ranked candidate cut from that image; a segment with
  no such candidate keeps rank 0 (explicit ``overrides`` still win). The reference must be an
  image with at least one retrieval candidate, else :class:`~pipeline.errors.ConfigError`.

A rank a segment does not have leaves it black (as ``resail compose --rank``).

Several images for one map (:meth:`Synthesizer.samples`, ``guidance(..., temperature=T, sample=i)``):
sample ``i`` draws every segment's candidate from its top-k by a softmax over −score/T
(:func:`pipeline.online.draw_ranks`) with the numpy Generator ``sample_rng(seed, i)``; explicit
``overrides`` still win. The generator then runs with the same torch seed for every sample, so the
samples differ only through their guidance. T → 0 draws rank 0 everywhere: the same bytes as
today's synthesis.

Appearance from a photo (``reference_photo=`` a :class:`pipeline.online.PhotoReference` from
:meth:`Synthesizer.photo_reference`): each segment takes the best-scoring segment of its class cut
from the photo (the photo decomposed with the cache's settings, searched with the same score); a
segment without one falls back to the database (rank ``rank``, or explicit ``overrides``) or, with
``strict=True``, stays black. Explicit ``overrides`` win over the photo. When the photo and its label
(and instance) map are those of a database image, this equals ``reference=IMAGE_ID`` for every
segment whose best match in that image is among its database top-k (``reference=`` only looks
there and otherwise keeps rank 0; the photo path is not limited to the top-k).
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from pipeline.datasets.base import ClassMeta
from pipeline.errors import CacheError, ConfigError, DataError
from pipeline.online import (OnlineGuidance, OnlineResult, PhotoReference, check_samples, check_temperature, choose,
                             sample_rng, with_photo)
from pipeline.compose.composition import compose_guidance
from pipeline.decompose.segments import Segment
from resail_train import checkpoint as ckpt
from resail_train.config import TrainConfig, config_from_dict
from resail_train.training.data import Geometry, apply_geometry, instance_edges, rgb_to_tensor, tensor_to_rgb
from resail_train.models.build import build_generator
from resail_train.checkpoint import recorded_cache_dir
from resail_train.runtime import onehot, resolve_device

__all__ = ["Synthesizer", "SegmentInfo", "recorded_cache_dir", "read_generator", "parse_pixel"]



# --------------------------------------------------------------------------- run folder
def read_generator(run_dir: str | Path, checkpoint: str | Path | None = "latest") -> tuple[dict, Path]:
    """The generator of a run: ``checkpoint`` = ``latest`` (``generator.pt``), ``best``
    (``checkpoints/best.pt``) or a path (:func:`resail_train.checkpoint.generator_checkpoint_path`;
    training checkpoints give their EMA generator). CacheError naming the folder/file when missing or foreign."""
    run_dir = Path(run_dir)
    which = "latest" if checkpoint is None else str(checkpoint)
    if which in ckpt.CHECKPOINT_CHOICES and not run_dir.is_dir():
        raise CacheError(run_dir, "run folder not found (train one with `resail train --out RUN_DIR`)")
    path = ckpt.generator_checkpoint_path(run_dir, which)
    if not path.is_file():
        if which == "latest":
            raise CacheError(path, "generator checkpoint not found (it is written at the end of `resail train`; "
                                   "an interrupted run can be finished with `resail train --resume`)")
        raise CacheError(path, "generator checkpoint not found")
    obj = ckpt.as_generator_file(ckpt.load_checkpoint(path))
    missing = [k for k in ("config", "label_nc", "classes", "state_dict") if k not in obj]
    if missing or obj.get("kind", "resail-generator") != "resail-generator":
        raise CacheError(path, f"not a RESAIL generator file (missing {', '.join(missing) or 'kind'})")
    return obj, path


def parse_pixel(text: str) -> tuple[int, int] | None:
    """``"x,y"`` → (x, y); anything else → None."""
    parts = str(text).replace(" ", "").split(",")
    if len(parts) != 2:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


@dataclass
class SegmentInfo:
    index: int
    class_id: int
    class_name: str
    is_thing: bool
    box: tuple[int, int, int, int]
    area: int
    n_candidates: int


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """CPU: ``torch.use_deterministic_algorithms(True)``; CUDA: deterministic cuDNN, no autotuning.
    Previous settings are restored."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


# --------------------------------------------------------------------------- the synthesizer
class Synthesizer:
    """A trained generator + on-line retrieval guidance; see the module docstring."""

    def __init__(self, generator: torch.nn.Module, cfg: TrainConfig, meta: ClassMeta, online: OnlineGuidance,
                 device: torch.device, *, instance_edges: bool = False, run_dir: Path | None = None,
                 step: int | None = None) -> None:
        self.G = generator.to(device).eval()
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.cfg, self.meta, self.online, self.device = cfg, meta, online, device
        self.instance_edges = bool(instance_edges)
        self.run_dir, self.step = run_dir, step
        self.num_classes = meta.num_classes
        self.lut = meta.lookup_table()
        self._memo: tuple[str, list[Segment], object] | None = None
        self._image_of_segment: np.ndarray | None = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path, cache_dir: str | Path | None = None, device: str = "auto",
             size: Sequence[int] | None = None, online: OnlineGuidance | None = None,
             checkpoint: str | Path | None = "latest") -> "Synthesizer":
        """Load ``RUN_DIR/generator.pt`` and an :class:`OnlineGuidance` on the run's cache.

        ``cache_dir``: the stage cache (segment DB + retrieval); default: the one the run records
        (:func:`recorded_cache_dir`). ``size``: generator output (H, W); default ``data.crop_size``.
        ``checkpoint``: ``latest`` | ``best`` | a path (:func:`read_generator`).
        """
        run_dir = Path(run_dir)
        obj, gpath = read_generator(run_dir, checkpoint)
        try:
            cfg = config_from_dict(obj["config"], str(gpath))
            meta = ClassMeta.from_dict(obj["classes"])
            label_nc = int(obj["label_nc"])
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(gpath, f"generator file is incomplete ({e})") from None
        edges = bool(obj.get("instance_edges", False))
        if label_nc != meta.num_classes + (1 if edges else 0):
            raise CacheError(gpath, f"label_nc {label_nc} does not fit {meta.num_classes} classes"
                                    f"{' + edges' if edges else ''}")
        if size is not None:
            h, w = int(size[0]), int(size[1])
            f = 2 ** int(cfg.model.num_upsampling)
            if h <= 0 or w <= 0 or h % f or w % f:
                raise ConfigError(None, f"synthesis size {h}x{w} must be positive multiples of 2**num_upsampling = {f}")
            cfg = cfg.with_overrides({"data.crop_size": [h, w], "data.load_size": None})
        dev = resolve_device(device)
        G = build_generator(cfg, label_nc)
        try:
            G.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise CacheError(gpath, f"generator weights do not fit its config ({str(e).splitlines()[0]})") from None
        if online is None:
            cache = Path(cache_dir) if cache_dir else recorded_cache_dir(run_dir)
            if cache is None:
                raise ConfigError(run_dir, "the run does not record its stage cache; pass --cache CACHE_DIR "
                                           "(the datasets_cache/<name> folder it was trained on)")
            if not cache.is_dir():
                raise CacheError(cache, "stage cache folder not found (pass --cache CACHE_DIR)")
            online = OnlineGuidance(cache, device=dev.type)
        if online.meta != meta:
            name = online.cache_dir
            online.close()
            raise ConfigError(name, f"class list of this cache ({online.meta.dataset}, {online.meta.num_classes} "
                                    f"classes) differs from the run's ({meta.dataset}, {meta.num_classes})")
        syn = cls(G, cfg, meta, online, dev, instance_edges=edges, run_dir=run_dir, step=obj.get("step"))
        syn.generator_path = gpath  # which file --checkpoint chose (recorded by the evaluation)
        return syn

    @property
    def size(self) -> tuple[int, int]:
        """Generator output size (H, W)."""
        return tuple(int(v) for v in self.G.crop_size)

    @property
    def cache_dir(self) -> Path:
        return self.online.cache_dir

    def close(self) -> None:
        self.online.close()

    def __enter__(self) -> "Synthesizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- retrieval / editing
    def check(self, labels: np.ndarray, instances: np.ndarray | None = None, source=None) -> None:
        """DataError naming ``source`` for ids outside the class list / a mismatched instance map."""
        self.online.check(labels, instances, source)

    def _retrieve(self, labels: np.ndarray, instances: np.ndarray | None):
        """Segments + top-k of a map; the last map's result is memoised (editing reuses it)."""
        h = hashlib.sha1()
        for a in (labels, instances):
            if a is None:
                h.update(b"none")
            else:
                a = np.ascontiguousarray(a)
                h.update(f"{a.shape}{a.dtype}".encode())
                h.update(a.tobytes())
        key = h.hexdigest()
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1], self._memo[2]
        segs, top = self.online.retrieve(labels, instances)
        self._memo = (key, segs, top)
        return segs, top

    def segments(self, labels: np.ndarray, instances: np.ndarray | None = None, source=None) -> list[SegmentInfo]:
        """The map's segments (the indices local editing uses) with their candidate counts."""
        labels = np.asarray(labels)
        self.check(labels, instances, source)
        segs, top = self._retrieve(labels, instances)
        counts = np.bincount(top.query_index, minlength=len(segs)) if len(segs) else np.zeros(0, np.int64)
        out = []
        for i, s in enumerate(segs):
            out.append(SegmentInfo(i, int(s.class_id), self.meta.by_id(int(s.class_id)).name, bool(s.is_thing),
                                   tuple(int(v) for v in s.box), int(s.area), int(counts[i])))
        return out

    @staticmethod
    def segment_at(segs: Sequence[Segment], x: int, y: int, source=None) -> int:
        """Index of the segment containing pixel (x, y) (DataError when none does)."""
        for i, s in enumerate(segs):
            y0, x0, y1, x1 = s.box
            if y0 <= y < y1 and x0 <= x < x1 and s.mask[y - y0, x - x0]:
                return i
        raise DataError(source, f"pixel (x={x}, y={y}) is not in any segment (outside the map, void, or a "
                                f"segment smaller than min_area)")

    def reference_overrides(self, segs: Sequence[Segment], top, image_id: str) -> dict[int, int]:
        """{query index: best rank whose candidate comes from ``image_id``} (see module docstring)."""
        if self._image_of_segment is None:
            self._image_of_segment = np.asarray(self.online.db.col("image_id"), dtype=object)
        img = self._image_of_segment
        cand = np.asarray(self.online.db.col("candidate"), dtype=bool)
        if not np.any(cand & (img == image_id)):
            raise ConfigError(self.cache_dir, f"reference image {image_id!r} has no retrieval candidates in this "
                                              f"database (an image id of the database split is needed)")
        out: dict[int, int] = {}
        if len(top):
            hit = img[top.candidate_id] == image_id
            for q, r in zip(top.query_index[hit].tolist(), top.rank[hit].tolist()):
                if q not in out or r < out[q]:
                    out[int(q)] = int(r)
        return out

    def resolve_overrides(self, segs: Sequence[Segment], overrides: Mapping | None, source=None) -> dict[int, int]:
        """Keys may be segment indices or (x, y) pixels; values are ranks."""
        out: dict[int, int] = {}
        for k, r in (overrides or {}).items():
            if isinstance(k, (tuple, list)):
                k = self.segment_at(segs, int(k[0]), int(k[1]), source)
            k = int(k)
            if not 0 <= k < len(segs):
                raise ConfigError(source, f"segment {k} does not exist: the label map has {len(segs)} segments "
                                          f"(0..{len(segs) - 1})")
            if int(r) < 0:
                raise ConfigError(None, f"rank must be >= 0, got {r}")
            out[k] = int(r)
        return out

    def photo_reference(self, image: np.ndarray, labels: np.ndarray, instances: np.ndarray | None = None,
                        source=None) -> PhotoReference:
        """A photo (H×W×3 uint8 RGB) + its label map as candidates (:meth:`OnlineGuidance.photo_reference`)."""
        return self.online.photo_reference(image, labels, instances, source)

    def guidance(self, labels: np.ndarray, instances: np.ndarray | None = None, *, rank: int = 0,
                 overrides: Mapping | None = None, reference: str | None = None, source=None,
                 temperature: float | None = None, seed: int = 0, sample: int = 0,
                 reference_photo: PhotoReference | None = None, strict: bool = False) -> OnlineResult:
        """Retrieval guidance at the label map's resolution with the editing choices applied.

        ``temperature``: sample ``sample`` of the drawn choices (module docstring; ``rank`` must be 0);
        ``reference_photo``/``strict``: appearance from a photo (module docstring)."""
        import time

        if int(rank) < 0:
            raise ConfigError(None, f"rank must be >= 0, got {rank}")
        if temperature is not None:
            temperature = check_temperature(temperature)
            if int(rank) != 0:
                raise ConfigError(None, "drawn samples (temperature) take no global rank")
        if reference is not None and reference_photo is not None:
            raise ConfigError(None, "give a reference image id or a reference photo, not both")
        t0 = time.perf_counter()
        labels = np.asarray(labels)
        inst = None if instances is None else np.asarray(instances)
        self.check(labels, inst, source)
        segs, top = self._retrieve(labels, inst)
        t1 = time.perf_counter()
        ov = self.reference_overrides(segs, top, reference) if reference is not None else {}
        explicit = self.resolve_overrides(segs, overrides, source)
        ov.update(explicit)
        rng = None if temperature is None else sample_rng(seed, sample)
        matches = choose(top, len(segs), int(rank), ov, temperature=temperature, rng=rng)
        pm = None
        if reference_photo is not None:
            matches, pm = with_photo(matches, self.online.photo_topk(reference_photo, segs), explicit, strict)
        crops = [reference_photo.crops[int(pm[i])] if pm is not None and pm[i] >= 0 else
                 None if c < 0 else self.online.crop(int(c)) for i, c in enumerate(matches.tolist())]
        g, valid = compose_guidance(labels, self.meta, segs, crops)
        t2 = time.perf_counter()
        return OnlineResult(g, valid, segs, top, matches, {"retrieve": t1 - t0, "compose": t2 - t1, "total": t2 - t0},
                            photo_matches=pm)

    # ---------------------------------------------------------------- generation
    def prepare(self, labels: np.ndarray, guidance: np.ndarray, instances: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic input [label_nc, H, W], guidance [3, H, W] in [-1, 1]) at the generator size (CPU)."""
        labels = np.asarray(labels)
        if guidance.shape[:2] != labels.shape:
            raise ValueError(f"guidance {guidance.shape[:2]} and labels {labels.shape} differ in size")
        h, w = self.size
        geo = Geometry((h, w), (0, 0, h, w), False)
        dense = self.lut[np.clip(labels, 0, len(self.lut) - 1)]
        if (dense < 0).any():
            raise DataError(None, "label ids outside the class list")
        lab = torch.from_numpy(apply_geometry(dense, geo, nearest=True).astype(np.int64))
        seg = onehot(lab[None], self.num_classes)[0]
        if self.instance_edges:
            inst = np.zeros(labels.shape, np.int64) if instances is None else np.asarray(instances)
            e = instance_edges(apply_geometry(inst, geo, nearest=True))
            seg = torch.cat([seg, torch.from_numpy(e.astype(np.float32))[None]], 0)
        g = rgb_to_tensor(apply_geometry(np.asarray(guidance, np.uint8), geo, nearest=False))
        return seg, g

    @torch.no_grad()
    def generate(self, seg: torch.Tensor, guidance: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """G on a batch (or one sample) of prepared inputs → [B, 3, H, W] in [-1, 1] (on the device)."""
        if seg.dim() == 3:
            seg, guidance = seg[None], guidance[None]
        nb = self.device.type == "cuda"
        torch.manual_seed(int(seed))
        with _deterministic(self.device):
            return self.G(seg.to(self.device, non_blocking=nb), guidance.to(self.device, non_blocking=nb))

    @staticmethod
    def to_image(fake: torch.Tensor, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """[3, H, W] in [-1, 1] → uint8 RGB, resized (bicubic) to ``out_size`` (H, W) when given."""
        img = tensor_to_rgb(fake)
        if out_size is not None and tuple(img.shape[:2]) != tuple(out_size):
            img = cv2.resize(img, (int(out_size[1]), int(out_size[0])), interpolation=cv2.INTER_CUBIC)
        return img

    def render(self, labels: np.ndarray, guidance: np.ndarray, instances: np.ndarray | None = None,
               seed: int = 0) -> np.ndarray:
        """Generate from given guidance; uint8 RGB at the label map's size."""
        seg, g = self.prepare(labels, guidance, instances)
        return self.to_image(self.generate(seg, g, seed)[0], np.asarray(labels).shape)

    def synthesize(self, labels: np.ndarray, instances: np.ndarray | None = None, *, rank: int = 0,
                   overrides: Mapping | None = None, reference: str | None = None, seed: int = 0,
                   source=None, temperature: float | None = None, sample: int = 0,
                   reference_photo: PhotoReference | None = None, strict: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, OnlineResult]:
        """(image H×W×3 uint8, guidance H×W×3 uint8, OnlineResult) for a label map (H×W class ids)."""
        res = self.guidance(labels, instances, rank=rank, overrides=overrides, reference=reference, source=source,
                            temperature=temperature, seed=seed, sample=sample, reference_photo=reference_photo,
                            strict=strict)
        img = self.render(labels, res.guidance, instances, seed)
        return img, res.guidance, res

    def samples(self, labels: np.ndarray, instances: np.ndarray | None = None, n: int = 4, *,
                temperature: float = 1.0, seed: int = 0, overrides: Mapping | None = None, source=None
                ) -> list[tuple[np.ndarray, np.ndarray, OnlineResult]]:
        """``n`` (1…64) different syntheses of one map: sample ``i`` = ``synthesize(...,
        temperature=temperature, seed=seed, sample=i)`` (module docstring)."""
        n = check_samples(n)
        temperature = check_temperature(temperature)
        return [self.synthesize(labels, instances, overrides=overrides, seed=seed, source=source,
                                temperature=temperature, sample=i) for i in range(n)]
