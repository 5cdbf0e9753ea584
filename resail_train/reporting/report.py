"""A self-contained HTML report of a run: ``RUN_DIR/report/index.html`` + PNGs beside it.

Sections:

1. **Metrics** — ``RUN_DIR/metrics.json`` of ``resail evaluate`` (FID, mIoU, pixel accuracy of the
   generated images and of the real images as the segmentation net's reference) beside the paper's
   Table 1 row for the dataset (Cityscapes, ADE20K, ADE20K-outdoor, COCO-Stuff; the dataset is
   taken from the class list's name, "outdoor" in the cache/data path selects ADE20K-outdoor; other
   datasets — e.g. the CamVid demo — have no paper row and the table says so).
2. **Training curves** — PNG line plots drawn here with numpy + OpenCV (no matplotlib) from the
   dvclive TSVs in ``RUN_DIR/logs/plots/metrics`` (generator losses, discriminator losses, learning
   rates, each perf series) and ``RUN_DIR/segnet_logs`` when present.
3. **Samples** — label | retrieval guidance | generated | real for the first ``n_images`` images of
   the evaluated split (database order; the same images every time). Generated images come from
   ``RUN_DIR/eval/<split>/`` when ``resail evaluate`` wrote them, else they are generated here;
   guidance comes from ``guidance.h5`` (else on-line).
4. **Local editing** — one segment of the first sample (the largest *thing* segment with at least
   two retrieved candidates, else the largest such segment) takes its rank 0, 1, 2, … candidate
   while every other segment keeps rank 0 (guidance row and generated row).
5. **Global editing** — every segment at rank 0, 1, 2, and the *reference* edit: each segment takes
   its best candidate from one database image (the image supplying the most of the sample's top-k
   candidates), with that reference image shown.

The folder is built as ``RUN_DIR/.report.tmp`` and swapped in at the end; links are relative and
the page loads nothing from the network (inline CSS, no scripts).
"""
from __future__ import annotations

import html
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from pipeline import cache
from pipeline.cache.lineage import read_h5
from pipeline.errors import CacheError
from pipeline.visualize import colorize_labels, hstack, vstack, write_png
from resail_train.evaluation import METRICS_FILE, eval_image_path, protocol_note, read_details, read_evaluation
from resail_train.reporting.compare import read_run_file
from resail_train.reporting.plots import PALETTE, labelled, line_plot, read_tsv, tile  # noqa: F401
from resail_train.run_files import DETAILS_FILE, INDEX_HTML, REFERENCE_FILE, REPORT_DIR, TRAIN_SUMMARY_FILE
from resail_train.synthesis import Synthesizer


# Paper Table 1, "Ours" (docs/method.md §7): FID ↓, mIoU ↑ (%), pixel accuracy ↑ (%).
PAPER = {
    "cityscapes": ("Cityscapes", 45.5, 69.7, 83.2),
    "ade20k": ("ADE20K", 30.2, 49.3, 84.8),
    "ade20k-outdoor": ("ADE20K-outdoor", 48.6, 41.1, 86.5),
    "coco-stuff": ("COCO-Stuff", 18.3, 44.7, 73.1),
}


# --------------------------------------------------------------------------- paper rows
def paper_row(dataset: str, *hints: str | Path | None) -> tuple[str, tuple | None]:
    """(label, (name, fid, miou, acc) | None) for a dataset name (+ cache/data paths as hints)."""
    name = str(dataset or "").lower().replace("_", "-")
    hint = " ".join(str(h).lower() for h in hints if h)
    if "cityscapes" in name:
        key = "cityscapes"
    elif "ade20k" in name or "ade" == name:
        key = "ade20k-outdoor" if ("outdoor" in name or "outdoor" in hint) else "ade20k"
    elif "coco" in name:
        key = "coco-stuff"
    else:
        if "camvid" in name:
            return "no paper row (CamVid demo)", None
        return f"no paper row (dataset {dataset!r} is not in the paper's Table 1)", None
    row = PAPER[key]
    return f"paper (RESAIL, Table 1): {row[0]}", row


# --------------------------------------------------------------------------- plots
def curve_groups(run_dir: Path) -> list[tuple[str, str, dict]]:
    """(file stem, title, {series name: (x, y)}) for every plot of the run's dvclive logs."""
    groups: list[tuple[str, str, dict]] = []
    base = run_dir / "logs" / "plots" / "metrics"
    if base.is_dir():
        train = {p.stem: read_tsv(p) for p in sorted((base / "train").glob("*.tsv"))}
        g = {k: v for k, v in train.items() if k.startswith("G")}
        d = {k: v for k, v in train.items() if k.startswith("D")}
        other = {k: v for k, v in train.items() if k not in g and k not in d}
        if g:
            groups.append(("curves_generator", "Generator losses (train/G_*)", g))
        if d:
            groups.append(("curves_discriminator", "Discriminator losses (train/D_*)", d))
        if other:
            groups.append(("curves_train_other", "Other training series", other))
        lr = {p.stem: read_tsv(p) for p in sorted((base / "lr").glob("*.tsv"))}
        if lr:
            groups.append(("curves_lr", "Learning rates", lr))
        for p in sorted((base / "perf").glob("*.tsv")):
            groups.append((f"curves_perf_{p.stem}", f"perf/{p.stem}", {p.stem: read_tsv(p)}))
    sbase = run_dir / "segnet_logs" / "plots" / "metrics"
    if sbase.is_dir():
        for sub in sorted(q for q in sbase.iterdir() if q.is_dir()):
            for p in sorted(sub.glob("*.tsv")):
                groups.append((f"curves_segnet_{sub.name}_{p.stem}", f"segmentation net: {sub.name}/{p.stem}",
                               {p.stem: read_tsv(p)}))
    return groups


# --------------------------------------------------------------------------- tiles
def outline_box(img: np.ndarray, box, scale: float) -> np.ndarray:
    out = img.copy()
    y0, x0, y1, x1 = (int(round(v * scale)) for v in box)
    cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 255, 255), 2)
    cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 0, 0), 1)
    return out


# --------------------------------------------------------------------------- report
def _read_json(path: Path) -> dict | None:
    """A run's JSON file through the bounded reader ``resail compare`` uses (size, nesting depth):
    a hostile file is one error line, an absent one None."""
    if not path.is_file():
        return None
    d = read_run_file(path)
    return d if isinstance(d, dict) else None


def _pct(v) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}"


def write_report(run_dir: str | Path, cache_dir: str | Path | None = None, *, n_images: int = 4,
                 n_ranks: int = 4, device: str = "auto", split: str | None = None,
                 checkpoint: str | Path | None = "latest") -> Path:
    """Write ``RUN_DIR/report/index.html`` (+ PNGs); returns its path. ``checkpoint``: the generator of
    the samples and edits (``latest`` | ``best`` | a path, as ``resail synthesize --checkpoint``)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    syn = Synthesizer.load(run_dir, cache_dir, device, checkpoint=checkpoint)
    tmp = run_dir / f".{REPORT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        body = _build(syn, run_dir, tmp, n_images, n_ranks, split)
        (tmp / INDEX_HTML).write_text(_page(body, run_dir, time.perf_counter() - t0))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        syn.close()
    out = run_dir / REPORT_DIR
    old = run_dir / f".{REPORT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out / INDEX_HTML


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _check_numbers(path: Path, metrics: dict | None) -> None:
    """The headline numbers must be numbers (or null): text in metrics.json is one error line, not
    a traceback from the formatting below."""
    if not metrics:
        return
    pairs = [(k, metrics.get(k)) for k in ("fid", "kid", "kid_std", "miou", "pixel_acc")]
    ref = metrics.get("reference")
    if ref is not None and not isinstance(ref, dict):
        raise CacheError(path, f"'reference' must be an object, got {ref!r:.40}")
    pairs += [(f"reference.{k}", (ref or {}).get(k)) for k in ("miou", "pixel_acc")]
    best = metrics.get("best")
    if best is not None and not isinstance(best, dict):
        raise CacheError(path, f"'best' must be an object, got {best!r:.40}")
    pairs += [(f"best.{k}", (best or {}).get(k)) for k in ("fid", "kid", "kid_std", "miou", "pixel_acc")]
    for name, d in (("per_class_iou", metrics.get("per_class_iou")), ("reference.per_class_iou",
                                                                       (ref or {}).get("per_class_iou"))):
        if d is not None and not isinstance(d, dict):
            raise CacheError(path, f"'{name}' must be an object, got {d!r:.40}")
        pairs += [(f"{name}.{k}", v) for k, v in (d or {}).items()]
    for name, v in pairs:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CacheError(path, f"'{name}' must be a number or null, got {v!r:.40} (rerun `resail evaluate`)")


def _build(syn: Synthesizer, run_dir: Path, out: Path, n_images: int, n_ranks: int, split: str | None) -> str:
    meta, db = syn.meta, syn.online.db
    # The evaluation files are parsed again below by resail_train.evaluation's plain json.loads: check
    # them with the bounded reader first, so a deeply nested or huge file is one line, not a RecursionError.
    for name in (METRICS_FILE, REFERENCE_FILE, DETAILS_FILE):
        _read_json(run_dir / name)
    metrics = read_evaluation(run_dir) if (run_dir / METRICS_FILE).is_file() else None
    if metrics is not None and not isinstance(metrics, dict):
        raise CacheError(run_dir / METRICS_FILE, "not a JSON object (rerun `resail evaluate`)")
    _check_numbers(run_dir / METRICS_FILE, metrics)
    summary = _read_json(run_dir / TRAIN_SUMMARY_FILE) or {}
    attrs = db.attrs
    parts: list[str] = []

    # ---- metrics
    label, row = paper_row(meta.dataset, syn.cache_dir, attrs.get("data_root"))
    rows = []
    if metrics:
        ref = metrics.get("reference") or {}
        fid = metrics.get("fid")
        det0 = read_details(run_dir)
        fid_proto = ("—" if fid is None else
                     f"FID: 2015-12-05 TF Inception pool3 ({det0.get('inception_weights')}), "
                     f"{metrics.get('n_images')} {metrics.get('split')} images at "
                     f"{metrics.get('size') or det0.get('size')}")
        seg_proto = "mIoU / acc: " + protocol_note(metrics.get("segmenter"))
        kid = metrics.get("kid")
        kid_text = "—" if kid is None else f"{kid:.4f} ± {metrics.get('kid_std') or 0:.4f}"
        best = metrics.get("best") or {}
        which = f", {metrics.get('checkpoint') or 'latest'} (step {metrics.get('step')})" if best else ""
        rows.append((f"This run: generated images{which}", "—" if fid is None else f"{fid:.2f}", kid_text,
                     _pct(metrics.get("miou")), _pct(metrics.get("pixel_acc")), f"{fid_proto}; {seg_proto}"))
        if best:
            bkid = "—" if best.get("kid") is None else f"{best['kid']:.4f} ± {best.get('kid_std') or 0:.4f}"
            rows.append((f"This run: generated images, best (step {best.get('step')})",
                         "—" if best.get("fid") is None else f"{best['fid']:.2f}", bkid, _pct(best.get("miou")),
                         _pct(best.get("pixel_acc")), "selected by validation FID on split "
                         f"'{best.get('selected_on_split')}', scored on '{metrics.get('split')}': optimistic"))
        rows.append(("This run: real images (segmentation-net reference)", "—", "—", _pct(ref.get("miou")),
                     _pct(ref.get("pixel_acc")), seg_proto))
    else:
        rows.append(("This run", "not evaluated", "", "run `resail evaluate`", "", ""))
    paper_proto = ("paper: FID of pytorch-fid (same 2015-12-05 Inception) on the full validation set; mIoU / acc "
                   "by DRN-D-105 (Cityscapes), UperNet-R101 (ADE20K), DeepLabV2-R101 (COCO-Stuff)")
    if row is not None:
        rows.append((label, f"{row[1]:.1f}", "—", f"{row[2]:.1f}", f"{row[3]:.1f}", paper_proto))
    else:
        rows.append((label, "—", "—", "—", "—", ""))
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    notes = []
    if metrics:
        split = split or metrics.get("split")
        det = metrics.get("details") or read_details(run_dir)
        notes.append(f"Split <b>{html.escape(str(metrics.get('split')))}</b>, {metrics.get('n_images')} images, "
                     f"generator size {html.escape(str(det.get('size')))}, guidance from "
                     f"{html.escape(str(det.get('guidance_source')))}.")
        if metrics.get("fid_reason"):
            notes.append("FID: " + html.escape(str(metrics["fid_reason"])))
    notes.append("mIoU and accuracy in %; the paper's numbers use its own segmentation networks and full "
                 "validation sets, so only same-network comparisons are exact.")
    if metrics and metrics.get("segmenter") in (None, "own"):
        notes.append("<b>Not comparable with Table 1</b>: mIoU and accuracy come from this run's own evaluation "
                     "net (trained only for evaluation, never the loss net); evaluate with "
                     "<code>--segmenter drn-d-105|upernet-r101|deeplabv2-r101 --segmenter-weights …</code> for the "
                     "paper's protocol.")
    parts.append("<h2>Metrics</h2><table><tr><th></th><th>FID ↓</th><th>KID ↓</th><th>mIoU ↑</th>"
                 "<th>pixel acc ↑</th>"
                 "<th>protocol</th></tr>"
                  f"{trs}</table>" + "".join(f"<p class=note>{n}</p>" for n in notes))
    if metrics and metrics.get("per_class_iou"):
        pc = metrics["per_class_iou"]
        rc = (metrics.get("reference") or {}).get("per_class_iou") or {}
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_pct(v)}</td><td>{_pct(rc.get(k))}</td></tr>"
                        for k, v in pc.items())
        parts.append("<details><summary>Per-class IoU (%)</summary><table><tr><th>class</th><th>generated</th>"
                     f"<th>real</th></tr>{cells}</table></details>")

    # ---- run facts
    cfg = syn.cfg
    facts = [("config", cfg.name), ("dataset", meta.dataset), ("cache", str(syn.cache_dir)),
             ("step", f"{summary.get('step', syn.step)} / {summary.get('total_steps', '?')}"),
             ("generator size (H×W)", f"{syn.size[0]}×{syn.size[1]}"), ("ngf", cfg.model.ngf),
             ("norm", cfg.model.norm), ("training time (s)", summary.get("seconds", "?")),
             ("device (training)", summary.get("device", "?"))]
    parts.append("<h2>Run</h2><table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                                 for k, v in facts) + "</table>")

    # ---- curves
    groups = curve_groups(run_dir)
    imgs = []
    for stem, title, series in groups:
        write_png(out / f"{stem}.png", line_plot(series, title))
        imgs.append(_img(f"{stem}.png", title))
    parts.append("<h2>Training curves</h2>" + ("<div class=grid>" + "".join(imgs) + "</div>" if imgs else
                                                "<p>No dvclive logs in RUN_DIR/logs.</p>"))

    # ---- samples
    splits = [r["split"] for r in db.image_rows()]
    if not split or split not in splits:
        split = "val" if "val" in splits else next((s for s in splits if s != attrs.get("db_split")), splits[0])
    rows_db = db.image_rows(split)[:max(1, n_images)]
    adapter = db.open_adapter()
    refs = {r.image_id: r for r in adapter.refs(split)}
    gpath = syn.cache_dir / cache.GUIDANCE_H5
    if gpath.is_file():
        cache.check_stage_h5(gpath, syn.cache_dir)  # cut/old/stale file → one CacheError line
    gfile = h5py.File(gpath, "r") if gpath.is_file() else None
    samples = []
    try:
        grid_rows = []
        for r in rows_db:
            s = adapter.load(refs[r["image_id"]])
            key = cache.image_key(split, r["image_id"])
            rank0 = gfile is not None and str(gfile.attrs.get("rank", 0)) == "0" and key in gfile
            # a damaged chunk inside an otherwise readable file is one CacheError line (read_h5)
            guid = read_h5(gpath, gfile[key]) if rank0 else syn.guidance(s.labels, s.instances).guidance
            ep = eval_image_path(run_dir, split, r["image_id"])
            fake = None
            if ep.is_file():
                fake = cv2.imread(str(ep), cv2.IMREAD_COLOR)
                fake = None if fake is None or fake.shape[:2] != s.labels.shape else fake[:, :, ::-1]
            if fake is None:
                fake = syn.render(s.labels, guid, s.instances)
            samples.append((r["image_id"], s))
            cols = [tile(colorize_labels(s.labels, meta), nearest=True), tile(guid), tile(fake), tile(s.image)]
            heads = ["label", "guidance", "generated", "real"]
            grid_rows.append(hstack([labelled(c, f"{r['image_id']}: {h}" if k == 0 else h)
                                     for k, (c, h) in enumerate(zip(cols, heads))]))
    finally:
        if gfile is not None:
            gfile.close()
    write_png(out / "samples.png", vstack(grid_rows, gap=6))
    parts.append(f"<h2>Samples ({html.escape(split)})</h2><p class=note>label | retrieval guidance (rank 0) | "
                 "generated | real.</p>" + _img("samples.png", "samples"))

    # ---- editing
    image_id, s = samples[0]
    parts.append(_local_edit(syn, s, image_id, out, n_ranks))
    parts.append(_global_edit(syn, s, image_id, out, adapter))
    return "\n".join(parts)


def _local_edit(syn: Synthesizer, s, image_id: str, out: Path, n_ranks: int) -> str:
    infos = syn.segments(s.labels, s.instances)
    pool = [i for i in infos if i.n_candidates >= 2] or [i for i in infos if i.n_candidates >= 1]
    if not pool:
        return "<h2>Local editing</h2><p>No segment of this image has a retrieved candidate.</p>"
    things = [i for i in pool if i.is_thing]
    seg = max(things or pool, key=lambda i: (i.area, -i.index))
    ranks = list(range(min(n_ranks, seg.n_candidates)))
    lab = colorize_labels(s.labels, syn.meta)
    t = tile(lab, nearest=True)
    first = outline_box(t, seg.box, t.shape[0] / lab.shape[0])
    g_row, f_row = [labelled(first, f"segment {seg.index} ({seg.class_name})")], [labelled(tile(s.image), "real")]
    for r in ranks:
        img, guid, _ = syn.synthesize(s.labels, s.instances, overrides={seg.index: r})
        g_row.append(labelled(tile(guid), f"guidance, rank {r}"))
        f_row.append(labelled(tile(img), f"generated, rank {r}"))
    write_png(out / "edit_local.png", vstack([hstack(g_row), hstack(f_row)], gap=6))
    return (f"<h2>Local editing</h2><p class=note>{html.escape(image_id)}: segment {seg.index} "
            f"({html.escape(seg.class_name)}, {seg.area} px, box outlined) takes its rank "
            f"{', '.join(map(str, ranks))} candidate; all other segments keep rank 0.</p>"
            + _img("edit_local.png", "local editing"))


def _global_edit(syn: Synthesizer, s, image_id: str, out: Path, adapter) -> str:
    res = syn.guidance(s.labels, s.instances)
    top = res.topk
    g_row, f_row = [], []
    for r in (0, 1, 2):
        img, guid, _ = syn.synthesize(s.labels, s.instances, rank=r)
        g_row.append(labelled(tile(guid), f"guidance, all rank {r}"))
        f_row.append(labelled(tile(img), f"generated, all rank {r}"))
    note = ""
    if len(top):
        imgs = np.asarray(syn.online.db.col("image_id"), dtype=object)[top.candidate_id]
        # the database image supplying the most candidates (ties: best summed rank, then id)
        stats: dict[str, list] = {}
        for iid, rk in zip(imgs.tolist(), top.rank.tolist()):
            st = stats.setdefault(iid, [0, 0])
            st[0] += 1
            st[1] += rk
        ref_id = min(stats, key=lambda k: (-stats[k][0], stats[k][1], k))
        img, guid, rr = syn.synthesize(s.labels, s.instances, reference=ref_id)
        all_ids = np.asarray(syn.online.db.col("image_id"), dtype=object)
        n_from = int(sum(1 for c in rr.matches.tolist() if c >= 0 and all_ids[c] == ref_id))
        g_row.append(labelled(tile(guid), f"guidance, reference {ref_id}"))
        f_row.append(labelled(tile(img), "generated, reference"))
        db_split = syn.online.db.attrs.get("db_split", "train")
        try:
            ref = next(r for r in adapter.refs(db_split) if r.image_id == ref_id)
            g_row.append(labelled(tile(adapter.load(ref).image), f"reference image {ref_id}"))
        except (StopIteration, Exception):  # noqa: BLE001 - the picture is optional
            pass
        note = (f" Reference edit: each segment takes its best-ranked candidate from database image "
                f"<b>{html.escape(ref_id)}</b> ({n_from} of {len(rr.segments)} segments found one there; the others "
                f"keep rank 0).")
    write_png(out / "edit_global.png", vstack([hstack(g_row), hstack(f_row)], gap=6))
    return (f"<h2>Global editing</h2><p class=note>{html.escape(image_id)}: every segment takes its rank 0, 1, 2 "
            f"candidate (a segment without that rank stays black).{note}</p>" + _img("edit_global.png", "global editing"))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;background:#fff}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left;font-size:14px}
th{background:#f0f0f0}.note{color:#555;font-size:13px;max-width:1100px}img{max-width:100%;border:1px solid #ddd;background:#fff}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:560px}
"""


def _page(body: str, run_dir: Path, seconds: float) -> str:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>RESAIL report: "
            f"{html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>RESAIL run report: {html.escape(str(run_dir))}</h1>\n{body}\n"
            f"<p class=note>Written by <code>resail report</code> in {seconds:.1f} s.</p></body></html>\n")


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - convenience
    path = write_report(sys.argv[1] if argv is None else argv[0])
    print(path)
