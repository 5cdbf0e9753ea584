"""Evaluation of a trained run (paper §4.1, Table 1): mIoU / pixel accuracy by a segmentation net, and FID.

For every image of ``split`` (default ``val``) of the run's stage cache:

* **guidance** — the retrieval guidance of that split: ``guidance.h5`` (written by ``resail
  compose``) when it holds the image and was composed at rank 0 (no per-segment overrides), else
  composed on-line (:class:`resail_train.synthesis.Synthesizer`, identical by construction);
* **generation** — the label map and guidance are resized to the generator size (the run's
  ``data.crop_size``: the paper's test protocol; see :mod:`resail_train.synthesis`) and generated
  in batches; the image resized back to the label map's size (bicubic) is saved as
  ``RUN_DIR/eval/<split>/<image_id>.png`` (exactly what ``resail synthesize`` writes for that map);
* **segmentation scores** — computed at the generator size: the run's frozen segmentation net
  (``RUN_DIR/segnet.pt``, or ``segnet.path`` of the run's config) segments the generated image and
  the real image (resized bicubic to the same size: the paper's "ground truth" reference row); one
  confusion matrix each against the input label map (resized nearest; void pixels excluded) summed
  over the split → ``miou``, ``pixel_acc``, ``per_class_iou`` (fractions in [0, 1]; a class absent
  from both labels and predictions has IoU ``null`` and does not count in the mean);
* **FID** — between InceptionV3 pool-3 features of the generated and the real images (both at the
  generator size; pytorch-fid's network and resize to 299) when ``inception_weights`` is given
  (:func:`resail_train.metrics.fid.load_fid_inception`); otherwise ``fid: null`` with
  ``fid_reason``. Below 2049 images the Fréchet distance is computed exactly in the N-dimensional
  space (:func:`frechet_distance_features`) instead of a 2048×2048 ``sqrtm``. FID of fewer than 2 images is ``null`` too. The paper's FIDs use full validation
  sets (500–5000 images); small splits give large, noisy values.

Outputs (each written atomically; the image folder is built beside and swapped in):
``RUN_DIR/metrics.json`` (flat ``miou``, ``pixel_acc``, ``fid``, ``fid_reason``, ``n_images``,
``split`` + nested ``reference``, ``per_class_iou``) for ``dvc metrics`` — kept to metrics so that
``dvc metrics show`` / ``dvc exp show`` stay readable —, ``RUN_DIR/eval_details.json`` (the returned
dict's ``details``: paths, sizes, guidance source, confusion matrices, timings),
``RUN_DIR/per_class_iou.csv`` (columns ``class,iou``; classes with an IoU only) for ``dvc plots``,
and ``RUN_DIR/eval/<split>/*.png``.
"""
from __future__ import annotations

import csv
import json
import io
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
from pipeline.errors import CacheError
from pipeline.visualize import write_png
from resail_train.data import Geometry, apply_geometry, rgb_to_tensor
from resail_train.metrics.fid import FID_WEIGHTS_FILENAME, FID_WEIGHTS_URL, fid_from_features, inception_features, \
    load_fid_inception
from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
from resail_train.synthesis import Synthesizer, recorded_cache_dir
from resail_train.models import load_segnet
from resail_train.trainer import SEGNET_FILE, segment

METRICS_FILE = "metrics.json"
DETAILS_FILE = "eval_details.json"
PER_CLASS_FILE = "per_class_iou.csv"
EVAL_DIR = "eval"
NO_WEIGHTS_REASON = (f"no InceptionV3 weights given (--inception-weights PATH): FID needs pytorch-fid's "
                     f"{FID_WEIGHTS_FILENAME} ({FID_WEIGHTS_URL})")


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
             inception_weights: str | Path | None = None, device: str = "auto", batch_size: int = 8, *,
             data_root: str | Path | None = None, limit: int | None = None, save_images: bool = True,
             progress: bool = False) -> dict:
    """Evaluate ``RUN_DIR`` on ``split`` of ``cache_dir`` (default: the run's cache); see the module docstring."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    cache_dir = Path(cache_dir) if cache_dir else recorded_cache_dir(run_dir)
    # FID weights and the segmentation net are checked before any work.
    inception = load_fid_inception(inception_weights) if inception_weights else None
    syn = Synthesizer.load(run_dir, cache_dir, device)
    try:
        return _evaluate(syn, run_dir, split, inception, inception_weights, batch_size, data_root, limit,
                         save_images, progress, t_start)
    finally:
        syn.close()


def _evaluate(syn: Synthesizer, run_dir: Path, split: str, inception, inception_weights, batch_size: int,
              data_root, limit, save_images: bool, progress: bool, t_start: float) -> dict:
    dev, meta, c = syn.device, syn.meta, syn.num_classes
    seg_path = Path(syn.cfg.segnet.path) if syn.cfg.segnet.path else run_dir / SEGNET_FILE
    segnet = load_segnet(seg_path, meta, dev)
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
    geo = Geometry((h, w), (0, 0, h, w), False)
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
    t_gen = 0.0
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
                dense = syn.lut[np.clip(sample.labels, 0, len(syn.lut) - 1)]
                labs.append(torch.from_numpy(apply_geometry(dense, geo, nearest=True).astype(np.int64)))
                reals.append(apply_geometry(sample.image, geo, nearest=False))
                sizes.append(sample.labels.shape)
                ids.append(row["image_id"])
            t0 = time.perf_counter()
            fake = syn.generate(torch.stack(segs), torch.stack(guids))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_gen += time.perf_counter() - t0
            labels_t = torch.stack(labs)
            real_t = torch.stack([rgb_to_tensor(r) for r in reals]).to(dev)
            with torch.no_grad():
                pred_fake = segment(segnet, fake).argmax(1).cpu()
                pred_real = segment(segnet, real_t).argmax(1).cpu()
            conf_fake += confusion_matrix(pred_fake, labels_t, c, ignore_index=c)
            conf_real += confusion_matrix(pred_real, labels_t, c, ignore_index=c)
            fake_u8 = np.stack([syn.to_image(f) for f in fake])
            if inception is not None:
                feats_fake.append(inception_features(inception, fake_u8, batch_size=len(chunk), device=dev))
                feats_real.append(inception_features(inception, np.stack(reals), batch_size=len(chunk), device=dev))
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
    names = _class_names(meta)
    per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sf["per_class_iou"])}
    ref_per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sr["per_class_iou"])}
    source = ("guidance.h5" if sources["online"] == 0 else "online" if sources["guidance.h5"] == 0 else "mixed")
    metrics = {
        "miou": _nan_to_none(sf["miou"]),
        "pixel_acc": _nan_to_none(sf["pixel_acc"]),
        "fid": fid,
        "fid_reason": fid_reason,
        "n_images": n,
        "split": split,
        "reference": {"miou": _nan_to_none(sr["miou"]), "pixel_acc": _nan_to_none(sr["pixel_acc"]),
                      "per_class_iou": ref_per_class},
        "per_class_iou": per_class,
        "details": {
            "dataset": meta.dataset, "run_dir": str(run_dir), "cache_dir": str(syn.cache_dir),
            "generator_step": syn.step, "size": [h, w], "device": str(dev), "guidance_source": source,
            "guidance_counts": sources, "segnet": str(seg_path),
            "inception_weights": str(inception_weights) if inception_weights else None,
            "confusion": conf_fake.tolist(), "reference_confusion": conf_real.tolist(),
            "generator_seconds": round(t_gen, 4), "seconds": round(time.perf_counter() - t_start, 3),
            "units": "fractions in [0, 1] (the paper's tables give percentages)",
        },
    }
    # Outputs: images folder swapped in, then the CSV, then metrics.json last.
    if save_images:
        old = run_dir / EVAL_DIR / f".{split}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    write_per_class_csv(run_dir / PER_CLASS_FILE, per_class)
    write_json_atomic(run_dir / DETAILS_FILE, metrics["details"])
    write_json_atomic(run_dir / METRICS_FILE, {k: v for k, v in metrics.items() if k != "details"})
    return metrics


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


def format_table(m: dict) -> str:
    """A Markdown table of the headline numbers (percentages, like the paper)."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    fid = "—" if m.get("fid") is None else f"{m['fid']:.2f}"
    ref = m.get("reference") or {}
    lines = [f"evaluation of {m['details']['run_dir']} on split '{m['split']}' ({m['n_images']} images, "
             f"generator {m['details']['size'][0]}x{m['details']['size'][1]}, guidance {m['details']['guidance_source']})",
             "| | FID ↓ | mIoU ↑ | pixel acc ↑ |", "|---|---|---|---|",
             f"| generated | {fid} | {pct(m.get('miou'))} | {pct(m.get('pixel_acc'))} |",
             f"| real images (reference) | — | {pct(ref.get('miou'))} | {pct(ref.get('pixel_acc'))} |"]
    if m.get("fid_reason"):
        lines.append(f"FID: {m['fid_reason']}")
    return "\n".join(lines)
