"""Scoring any method's output (``resail score``) and our own runs (``resail evaluate``), with one code path.

:class:`Scorer` is what both call: batches of generated images, real images and raw label maps (all at
the size the protocol scores them) go in; out come FID and KID (Inception pool3 features,
:mod:`resail_train.metrics.fid`, :mod:`resail_train.metrics.kid`), and with a segmenter mIoU and pixel
accuracy of the generated images and of the real images (the reference row), each **with and without
void pixels**:

* ``miou``, ``pixel_acc`` — void excluded, the papers' protocol: pixels whose label is void (or a
  class the segmenter does not score, e.g. Cityscapes labelIds without a trainId) are not counted;
* ``miou_incl_void``, ``pixel_acc_incl_void`` — void included: every void pixel counts, as a wrong
  pixel for the accuracy and, when the segmenter predicts class k there, as a false positive of k
  (void itself has no IoU: the segmenters cannot predict it).

:func:`score_folders` scores three folders (generated, real, labels) paired by file stem, with the
common layouts' names normalised (:func:`resolve_folder`, :func:`stem_of`): Cityscapes
``*_leftImg8bit`` / ``*_gtFine_labelIds`` / ``*_gtFine_color``, SPADE's
``test_latest/images/{synthesized_image,real_image,input_label}/``, pix2pixHD's
``*_synthesized_image`` / ``*_real_image`` / ``*_input_label`` in one folder, OASIS's
``best/{image,label}/``. The protocol is ``resail evaluate``'s: every pair is scored at one size —
``size`` (``--size HxW``) or the generated image's own — the generated image resized (antialiased
bicubic, :func:`pipeline.resize.resize_image`) only when ``size`` differs from it, the real image
resized the same way, the label map resized nearest (:func:`pipeline.resize.resize_index_map`) and
mapped to the segmenter's classes by the segmenter (:meth:`~resail_train.metrics.segmenters.base.Segmenter.map_labels`),
segmented at that size with the segmenter's default scales. The networks are arguments: the stage
(``stages/score.py``) loads them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ClassMeta, read_image_rgb
from pipeline.datasets.palette import Palette, read_label_map
from pipeline.errors import ConfigError, DataError
from pipeline.resize import resize_image, resize_index_map
from resail_train.metrics.fid import frechet_distance_features, inception_features
from resail_train.metrics.kid import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS, kid_from_features
from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
from resail_train.metrics.segmenters.base import IGNORE

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
ROLES = ("fake", "real", "labels")
#: file-name suffixes of the common layouts that only name the file kind (the folder gives the role):
#: Cityscapes' own names (SPADE and OASIS keep them: ``frankfurt_000000_000294_leftImg8bit.png``)
LAYOUT_SUFFIXES: dict[str, str] = {
    "_leftImg8bit": "image",
    "_gtFine_labelIds": "ids",
    "_gtFine_color": "color",
    "_gtFine_instanceIds": "skip",
    "_gtFine_trainIds": "skip",
    "_gtFine_labelTrainIds": "skip",
}
#: suffixes that give the role: pix2pixHD writes all three kinds into one folder
ROLE_SUFFIXES: dict[str, str] = {"_synthesized_image": "fake", "_real_image": "real", "_input_label": "labels"}
#: SPADE's ``test_latest/images/<role folder>`` and OASIS's ``best/<role folder>``
ROLE_FOLDERS = {"fake": ("synthesized_image", "image"), "real": ("real_image", "images"),
                "labels": ("input_label", "label", "labels")}
SHOWN = 3  # stems shown per category in the unpaired line


# --------------------------------------------------------------------------- the metric accumulator
def _nan_to_none(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def void_scores(conf: np.ndarray, void_pred: np.ndarray, void_pixels: int) -> dict:
    """mIoU / pixel accuracy with void pixels counted (see the module docstring): ``void_pred[k]`` =
    void pixels predicted as class k, ``void_pixels`` = all void pixels."""
    m = np.asarray(conf, np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp + np.asarray(void_pred, np.float64)
    iou = np.full(tp.shape, np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    total = m.sum() + void_pixels
    return {"miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class_iou": [float(v) for v in iou]}


class _SegTally:
    def __init__(self, c: int) -> None:
        self.conf = np.zeros((c, c), np.int64)
        self.void_pred = np.zeros(c, np.int64)
        self.void_pixels = 0

    def add(self, pred: np.ndarray, target: np.ndarray, c: int) -> None:
        self.conf += confusion_matrix(pred, target, c, ignore_index=IGNORE)
        void = target == IGNORE
        if void.any():
            p = pred[void].reshape(-1)
            self.void_pred += np.bincount(p[(p >= 0) & (p < c)], minlength=c)[:c]
            self.void_pixels += int(void.sum())

    def scores(self) -> dict:
        s = segmentation_scores(self.conf)
        v = void_scores(self.conf, self.void_pred, self.void_pixels)
        return {"miou": _nan_to_none(s["miou"]), "pixel_acc": _nan_to_none(s["pixel_acc"]),
                "miou_incl_void": _nan_to_none(v["miou"]), "pixel_acc_incl_void": _nan_to_none(v["pixel_acc"]),
                "per_class_iou": s["per_class_iou"], "per_class_iou_incl_void": v["per_class_iou"],
                "void_pixels": self.void_pixels}


class Scorer:
    """FID / KID / segmentation scores accumulated batch by batch (``resail score`` and ``resail evaluate``).

    ``segmenter``: a :class:`~resail_train.metrics.segmenters.base.Segmenter` or None (no mIoU);
    ``meta``: the class list the raw label ids belong to; ``inception``: the FID network or None (no
    FID/KID). :meth:`add` takes uint8 RGB ``[N, H, W, 3]`` generated and real images and int
    ``[N, H, W]`` raw label ids, all at the size they are scored at.
    """

    def __init__(self, segmenter=None, meta: ClassMeta | None = None, inception=None, device="cpu",
                 scales=None, kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
                 kid_seed: int = KID_SEED) -> None:
        self.seg, self.meta, self.inception, self.device, self.scales = segmenter, meta, inception, device, scales
        self.c = segmenter.num_classes if segmenter is not None else 0
        self.fake_tally = _SegTally(self.c) if segmenter is not None else None
        self.real_tally = _SegTally(self.c) if segmenter is not None else None
        self.feats_fake: list[np.ndarray] = []
        self.feats_real: list[np.ndarray] = []
        self.n = 0
        self.kid_args = (int(kid_subsets), int(kid_subset_size), int(kid_seed))
        self.seg_seconds = 0.0
        self.fid_seconds = 0.0

    def add(self, fake_u8: np.ndarray, real_u8: np.ndarray | None, labels: np.ndarray | None) -> None:
        fake_u8 = np.asarray(fake_u8)
        n = fake_u8.shape[0]
        if self.seg is not None:
            if labels is None:
                raise ValueError("a segmenter needs label maps")
            t0 = time.perf_counter()
            target = np.stack([self.seg.map_labels(lab, self.meta) for lab in labels])
            self.fake_tally.add(self.seg.predict(fake_u8, self.scales).numpy(), target, self.c)
            if real_u8 is not None:
                self.real_tally.add(self.seg.predict(real_u8, self.scales).numpy(), target, self.c)
            self.seg_seconds += time.perf_counter() - t0
        if self.inception is not None:
            t0 = time.perf_counter()
            self.feats_fake.append(inception_features(self.inception, fake_u8, batch_size=n, device=self.device))
            if real_u8 is not None:
                self.feats_real.append(inception_features(self.inception, real_u8, batch_size=n, device=self.device))
            self.fid_seconds += time.perf_counter() - t0
        self.n += n

    def distances(self) -> dict:
        """``fid``, ``kid``, ``kid_std`` (None with a ``fid_reason`` when they cannot be computed)."""
        out = {"fid": None, "kid": None, "kid_std": None, "fid_reason": None, "kid_subset_size": None}
        if self.inception is None:
            out["fid_reason"] = "no Inception network (FID/KID switched off)"
            return out
        fa = np.concatenate(self.feats_fake) if self.feats_fake else np.zeros((0, 1))
        fb = np.concatenate(self.feats_real) if self.feats_real else np.zeros((0, 1))
        if min(len(fa), len(fb)) < 2:
            out["fid_reason"] = f"FID/KID need at least 2 images per set, got {len(fa)} and {len(fb)}"
            return out
        fid = frechet_distance_features(fa, fb)
        if not math.isfinite(fid):
            out["fid_reason"] = "FID is not finite (degenerate features)"
        else:
            out["fid"] = float(fid)
        subsets, size, seed = self.kid_args
        out["kid"], out["kid_std"] = kid_from_features(fa, fb, subsets, size, seed)
        out["kid_subset_size"] = min(size, len(fa), len(fb))
        return out

    def segmentation(self) -> tuple[dict | None, dict | None]:
        """(generated, real) segmentation scores, or (None, None) without a segmenter."""
        if self.seg is None:
            return None, None
        return self.fake_tally.scores(), self.real_tally.scores()

    @property
    def confusions(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.seg is None:
            return None, None
        return self.fake_tally.conf, self.real_tally.conf


def segmenter_class_names(seg, meta) -> list[str]:
    """Names of the segmenter's class indices: the dataset's class mapped onto each (else ``class i``)."""
    lut = seg.label_lut(meta)
    names = [c.name for c in meta.classes]
    seen = Counter(names)
    own = [n if seen[n] == 1 else f"{n} ({c.id})" for n, c in zip(names, meta.classes)]
    out = [f"class {i}" for i in range(seg.num_classes)]
    for k, cl in enumerate(meta.classes):
        if 0 <= cl.id < len(lut) and 0 <= lut[cl.id] < seg.num_classes and out[lut[cl.id]].startswith("class "):
            out[lut[cl.id]] = own[k]
    return out


# --------------------------------------------------------------------------- folders and pairing
def stem_of(path: Path) -> tuple[str, str | None, str]:
    """(stem, role, kind) of a file: the layout suffixes removed (``x_leftImg8bit_synthesized_image`` →
    ``x``); role None unless a role suffix names it; kind ``image`` / ``ids`` / ``color`` / ``skip``."""
    stem, role, kind = path.stem, None, "image"
    for suf, r in ROLE_SUFFIXES.items():
        if stem.endswith(suf) and len(stem) > len(suf):
            stem, role = stem[: -len(suf)], r
            kind = "color" if r == "labels" else "image"
            break
    for suf, k in LAYOUT_SUFFIXES.items():
        if stem.endswith(suf) and len(stem) > len(suf):
            stem, kind = stem[: -len(suf)], k
            break
    return stem, role, kind


def resolve_folder(folder: str | Path, role: str) -> Path:
    """The folder holding ``role``'s files: ``folder`` itself, or its role sub-folder — SPADE's
    ``test_latest`` → ``images/synthesized_image`` (``real_image``, ``input_label``), OASIS's results
    folder or ``best`` → ``best/image`` (``best/label``), the project's folder format ``<split>`` →
    ``images`` / ``labels``."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(d, f"{role} folder not found")
    for base in (d / "images", d / "best", d):
        for name in ROLE_FOLDERS[role]:
            if (base / name).is_dir():
                return base / name
    return d


def list_role_files(folder: Path, role: str) -> dict[str, Path]:
    """``{stem: file}`` of ``role`` in ``folder`` (its sub-folders when it has no files itself, as
    Cityscapes' city folders); files of another role (pix2pixHD's one folder) are left out; label
    stems with both an id map and a colour map keep the id map."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    out: dict[str, tuple[int, Path]] = {}
    rank = {"ids": 0, "image": 1, "color": 2}
    for f in files:
        stem, frole, kind = stem_of(f)
        if frole is not None and frole != role:
            continue
        if kind == "skip":
            continue
        r = rank.get(kind, 3)
        prev = out.get(stem)
        if prev is not None and prev[0] == r:
            raise DataError(f, f"two {role} files for '{stem}': {prev[1]} and {f}")
        if prev is None or r < prev[0]:
            out[stem] = (r, f)
    return {s: p for s, (_, p) in sorted(out.items())}


@dataclass
class Pairing:
    stems: list[str]
    fake: dict[str, Path]
    real: dict[str, Path]
    labels: dict[str, Path] | None
    folders: dict[str, str]
    unpaired: dict[str, list[str]] = field(default_factory=dict)

    def unpaired_line(self) -> str | None:
        """ONE line: what could not be paired (counts and the first few stems), None when all paired."""
        parts = []
        for what, stems in self.unpaired.items():
            if stems:
                shown = ", ".join(stems[:SHOWN]) + (", …" if len(stems) > SHOWN else "")
                parts.append(f"{len(stems)} {what} ({shown})")
        if not parts:
            return None
        return f"score: paired {len(self.stems)} images; not paired: " + "; ".join(parts)

    @property
    def stems_sha256(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.stems)).encode()).hexdigest()


def pair_folders(fake: str | Path, real: str | Path, labels: str | Path | None = None) -> Pairing:
    """Pair the generated, real and (optional) label files by normalised stem."""
    dirs = {"fake": resolve_folder(fake, "fake"), "real": resolve_folder(real, "real")}
    if labels is not None:
        dirs["labels"] = resolve_folder(labels, "labels")
    files = {role: list_role_files(d, role) for role, d in dirs.items()}
    for role, d in dirs.items():
        if not files[role]:
            raise DataError(d, f"no {role} images here ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    common = set(files["fake"]) & set(files["real"])
    if labels is not None:
        common &= set(files["labels"])
    stems = sorted(common)
    unpaired: dict[str, list[str]] = {}
    for stem in sorted(set().union(*files.values()) - common):
        missing = [r for r in files if stem not in files[r]]
        unpaired.setdefault("without " + " and ".join(missing), []).append(stem)
    p = Pairing(stems, files["fake"], files["real"], files.get("labels"), {r: str(d) for r, d in dirs.items()},
                unpaired)
    if not stems:
        raise DataError(dirs["fake"], f"no file pairs by name between {', '.join(map(str, dirs.values()))} "
                                      f"(e.g. {', '.join(list(files['fake'])[:2])} vs "
                                      f"{', '.join(list(files['real'])[:2])})")
    return p


# --------------------------------------------------------------------------- scoring folders
def check_label_ids(lab: np.ndarray, meta: ClassMeta, path) -> None:
    valid = np.append(meta.ids, meta.ignore_id)
    present = np.unique(lab)
    unknown = present[~np.isin(present, valid)]
    if unknown.size:
        raise DataError(path, f"class id(s) {', '.join(map(str, unknown[:8].tolist()))} not in the class list of "
                              f"{meta.dataset} (a colour map needs --palette; Cityscapes labels are labelIds)")


def score_folders(fake: str | Path, real: str | Path, labels: str | Path | None = None, *,
                  meta: ClassMeta | None = None, segmenter=None, inception=None, size: tuple[int, int] | None = None,
                  palette: Palette | None = None, device="cpu", batch_size: int = 8, scales=None,
                  progress: bool = False, pairing: Pairing | None = None) -> dict:
    """Score paired folders (module docstring). Returns the numbers, the per-class IoUs and the
    protocol facts; writing them is :func:`write_score`'s."""
    if segmenter is not None and (labels is None or meta is None):
        raise ConfigError(None, "mIoU needs --labels and --dataset")
    pairing = pairing or pair_folders(fake, real, labels)
    scorer = Scorer(segmenter, meta, inception, device, scales)
    sizes: Counter = Counter()
    resized = Counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairing.stems), desc="score", unit="img", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(pairing.stems), max(1, int(batch_size))):
            groups: dict[tuple[int, int], list] = {}
            for stem in pairing.stems[start:start + batch_size]:
                f = read_image_rgb(pairing.fake[stem])
                h, w = size or f.shape[:2]
                if f.shape[:2] != (h, w):
                    f = resize_image(f, h, w)
                    resized["fake"] += 1
                r = read_image_rgb(pairing.real[stem])
                if r.shape[:2] != (h, w):
                    r = resize_image(r, h, w)
                    resized["real"] += 1
                lab = None
                if pairing.labels is not None and segmenter is not None:
                    lp = pairing.labels[stem]
                    lab = read_label_map(lp, palette, meta=meta)
                    check_label_ids(lab, meta, lp)
                    if lab.shape != (h, w):
                        lab = resize_index_map(lab, h, w)
                        resized["labels"] += 1
                groups.setdefault((h, w), []).append((f, r, lab))
                sizes[f"{h}x{w}"] += 1
            for items in groups.values():
                fk = np.stack([x[0] for x in items])
                rl = np.stack([x[1] for x in items])
                lb = None if items[0][2] is None else np.stack([x[2] for x in items])
                scorer.add(fk, rl, lb)
                if bar is not None:
                    bar.update(len(items))
    finally:
        if bar is not None:
            bar.close()
    dist = scorer.distances()
    seg_fake, seg_real = scorer.segmentation()
    names = segmenter_class_names(segmenter, meta) if segmenter is not None else []
    per_class = []
    if segmenter is not None:
        conf = scorer.confusions[0]
        for i, name in enumerate(names):
            per_class.append({"class": name, "iou": _nan_to_none(seg_fake["per_class_iou"][i]),
                              "iou_incl_void": _nan_to_none(seg_fake["per_class_iou_incl_void"][i]),
                              "iou_real": _nan_to_none(seg_real["per_class_iou"][i]),
                              "pixels": int(conf[i].sum())})
    head = {k: (seg_fake or {}).get(k) for k in ("miou", "pixel_acc", "miou_incl_void", "pixel_acc_incl_void")}
    reference = None if seg_real is None else {k: seg_real[k] for k in head}
    return {**{k: dist[k] for k in ("fid", "kid", "kid_std", "fid_reason")}, **head, "reference": reference,
            "n_images": len(pairing.stems), "per_class": per_class, "pairing": pairing,
            "sizes": dict(sizes), "resized": dict(resized), "kid_subset_size": dist["kid_subset_size"],
            "void_pixels": None if seg_fake is None else seg_fake["void_pixels"],
            "seconds": round(time.perf_counter() - t0, 3)}


def dataset_classes(spec: str) -> tuple[str, ClassMeta]:
    """``--dataset`` → (name, class list of the raw label ids): :func:`pipeline.datasets.class_list`."""
    from pipeline.datasets import class_list

    return class_list(spec)


#: the published segmenter of each dataset (the paper's Table-1 protocol)
DEFAULT_SEGMENTER = {"cityscapes": "drn-d-105", "ade20k": "upernet-r101", "coco-stuff": "deeplabv2-r101"}


def fingerprint(result: dict, *, dataset: str, meta: ClassMeta | None, segmenter, inception,
                inception_file: str | Path | None, inception_desc: str | None, size, palette: Palette | None,
                scales=None) -> dict:
    """The protocol facts that make two scores comparable (``score.json``'s ``protocol``)."""
    from resail_train.models.weights import sha256_file

    pairing: Pairing = result["pairing"]
    seg = None
    if segmenter is not None:
        seg = {"name": segmenter.name, "classes": segmenter.num_classes, "weights": list(segmenter.weights),
               "sha256": [sha256_file(w) for w in segmenter.weights],
               "scales": "protocol default" if scales is None else [float(x) for x in scales],
               "description": segmenter.describe()}
    sizes = result["sizes"]
    return {
        "dataset": dataset, "classes": None if meta is None else meta.num_classes,
        "ignore_id": None if meta is None else meta.ignore_id,
        "inception": None if inception is None else {
            "weights": inception_desc, "sha256": sha256_file(inception_file) if inception_file else None,
            "convention": getattr(inception, "convention", None), "features": "pool3, 2048-d"},
        "segmenter": seg,
        "size": f"{size[0]}x{size[1]}" if size else "each generated image's own size",
        "sizes": sizes,
        "resize": {"fake": "none" if not size else "PIL bicubic, antialiased (pipeline.resize.resize_image), when the "
                                                   "size differs",
                   "real": "PIL bicubic, antialiased (pipeline.resize.resize_image), to the scored size",
                   "labels": "nearest (pipeline.resize.resize_index_map), to the scored size",
                   "files_resized": result["resized"]},
        "void": "miou/pixel_acc: void (and unscored) label pixels excluded, the papers' protocol; "
                "*_incl_void: they count (wrong for the accuracy, a false positive of the predicted class)",
        "kid": {"kernel": "(x.y/2048 + 1)^3", "estimator": "unbiased MMD^2", "subsets": KID_SUBSETS,
                "subset_size": result.get("kid_subset_size"), "seed": KID_SEED},
        "palette": None if palette is None else palette.describe(),
        "n_images": result["n_images"],
        "pairs_sha256": pairing.stems_sha256,
        "folders": pairing.folders,
    }


def write_score(out_dir: str | Path, result: dict, protocol: dict) -> dict:
    """``OUT/score.json`` (numbers + protocol) and ``OUT/per_class.csv``, each written atomically."""
    from pipeline.cache import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairing: Pairing = result["pairing"]
    doc = {k: result[k] for k in ("fid", "kid", "kid_std", "miou", "pixel_acc", "miou_incl_void",
                                  "pixel_acc_incl_void", "reference", "n_images", "fid_reason")}
    doc["units"] = "fractions in [0, 1] (papers print mIoU / accuracy in %)"
    doc["unpaired"] = {k: len(v) for k, v in pairing.unpaired.items()}
    doc["protocol"] = protocol
    if result["per_class"]:
        write_per_class(out / "per_class.csv", result["per_class"])
    write_json_atomic(out / "score.json", doc)
    return doc


def write_per_class(path: Path, rows: list[dict]) -> None:
    """``class,iou,iou_incl_void,iou_real,pixels`` (IoUs as fractions; empty = class absent)."""
    from pipeline.cache import atomic_outputs

    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["class", "iou", "iou_incl_void", "iou_real", "pixels"])
    for r in rows:
        wr.writerow([r["class"], *("" if r[k] is None else f"{r[k]:.6f}" for k in ("iou", "iou_incl_void", "iou_real")),
                     r["pixels"]])
    with atomic_outputs(path, lock=False) as (tmp,):
        tmp.write_text(buf.getvalue())


def headline(m: dict) -> str:
    """The last line of ``resail score``: ``FID … KID … ± … mIoU … acc …`` (mIoU / acc in %, void
    excluded)."""
    def num(v, fmt):
        return "—" if v is None else format(v, fmt)

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    return (f"FID {num(m.get('fid'), '.2f')} KID {num(m.get('kid'), '.4f')} ± {num(m.get('kid_std'), '.4f')} "
            f"mIoU {pct(m.get('miou'))} acc {pct(m.get('pixel_acc'))}")
