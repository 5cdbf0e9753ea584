"""``resail edit``: one label map synthesised with chosen retrieval candidates, from a trained run.

* local edit: ``--segment ID`` or ``--segment x,y`` + ``--rank R``: that segment takes its rank-R
  candidate;
* global edit: ``--all --rank R``: every segment takes its rank-R candidate;
* reference edit: ``--reference IMAGE_ID``: every segment takes its best candidate from that
  database image;
* appearance from any photo: ``--reference-photo PHOTO --reference-labels LABELS|auto``
  (``--reference-instances``): the photo is decomposed with the cache's settings and each segment
  takes the best-scoring photo segment of its class; segments of classes the photo lacks keep the
  database's rank 0, or stay black with ``--strict``. ``auto`` predicts the photo's label map with
  the run's evaluation net (``RUN/eval_segnet.pt``) or ``--segmenter NAME --segmenter-weights W``.

``--list-segments`` prints the segment indices with class, box, area and candidate count. Defaults
as ``resail synthesize`` (params.yaml section ``synthesize``: ``device``, ``seed``).
"""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.errors import DataError
from stages.label_inputs import png_out, read_inputs, refuse_overwrite
from stages.options import (RUN_CACHE_HELP, RUN_GENERATOR_HELP, cache_option, checkpoint_option, device_option,
                            palette_option, rank_option, run_option, seed_option)
from stages.params import Params
from stages.trained_run import load_synthesizer


@click.command("edit")
@run_option(RUN_GENERATOR_HELP)
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="label map PNG (class ids, or colours with --palette)")
@click.option("--instances", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="instance map PNG")
@click.option("--segment", "segment", default=None, metavar="ID|X,Y",
              help="local edit: the segment index (see --list-segments) or a pixel x,y inside it")
@click.option("--all", "all_", is_flag=True, default=False, help="global edit: every segment takes --rank")
@click.option("--reference", default=None, metavar="IMAGE_ID",
              help="reference edit: each segment takes its best candidate from this database image")
@click.option("--reference-photo", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="PHOTO", help="appearance from any photo (PNG/JPEG): its segments become the candidates")
@click.option("--reference-labels", default=None, metavar="PNG|auto",
              help="the photo's label map (class ids), or auto: predicted by --segmenter")
@click.option("--reference-instances", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the photo's instance map PNG (optional)")
@click.option("--strict", is_flag=True, default=False,
              help="with --reference-photo: classes the photo lacks stay black (default: the database's rank 0)")
@click.option("--segmenter", default="own", show_default=True,
              help="--reference-labels auto: own (RUN/eval_segnet.pt) | drn-d-105 | upernet-r101 | deeplabv2-r101")
@click.option("--segmenter-weights", default=None, help="weights of a published --segmenter (own: RUN/eval_segnet.pt)")
@rank_option("candidate rank (with --segment / --all), below the retrieval's k")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output PNG")
@click.option("--save-guidance", type=click.Path(path_type=Path), default=None, help="also write the guidance PNG")
@click.option("--list-segments", is_flag=True, default=False, help="print the label map's segments and exit")
@seed_option("torch seed [params: synthesize.seed; 0]")
@palette_option()
@cache_option(RUN_CACHE_HELP, dest="cache")
@device_option("[params: synthesize.device; auto]")
@checkpoint_option()
@click.pass_obj
def command(p: Params, run, labels: Path, instances: Path | None, segment, all_, reference, reference_photo,
            reference_labels, reference_instances, strict, segmenter, segmenter_weights, rank, out,
            save_guidance, list_segments, seed, palette, cache, device, checkpoint) -> None:
    """Edit a synthesis: one segment's (local), every segment's (global), a reference image's or a photo's candidates."""
    from pipeline.datasets.palette import load_palette
    from pipeline.visualize import write_png
    from resail_train.synthesis import parse_pixel

    palette = load_palette(palette)

    modes = sum(x for x in (segment is not None, bool(all_), reference is not None, reference_photo is not None))
    if not list_segments:
        if modes != 1:
            raise click.UsageError("give exactly one of --segment ID|X,Y, --all, --reference IMAGE_ID or "
                                   "--reference-photo PHOTO")
        if (segment is not None or all_) and rank is None:
            raise click.UsageError("--rank R is required with --segment / --all")
        if (reference is not None or reference_photo is not None) and rank is not None:
            raise click.UsageError("--reference / --reference-photo choose the ranks themselves; drop --rank")
    if reference_photo is not None and reference_labels is None:
        raise click.UsageError("--reference-photo needs --reference-labels PNG|auto (the photo's label map)")
    if reference_photo is None and (reference_labels is not None or reference_instances is not None or strict):
        raise click.UsageError("--reference-labels / --reference-instances / --strict go with --reference-photo")
    if reference_labels == "auto" and reference_instances is not None:
        raise click.UsageError("--reference-labels auto predicts classes only; drop --reference-instances")
        if out is None:
            raise click.UsageError("--out PNG is required")
        png_out(out, "--out")
        if save_guidance is not None:
            png_out(save_guidance, "--save-guidance")
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
    if not list_segments:
        photo_labels = None if reference_labels in (None, "auto") else Path(reference_labels)
        refuse_overwrite([("--labels", labels), ("--instances", instances), ("--reference-photo", reference_photo),
                          ("--reference-labels", photo_labels), ("--reference-instances", reference_instances)],
                         [("--out", out), ("--save-guidance", save_guidance)])
    syn = load_synthesizer(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        if rank is not None:
            from resail_studio.editor import check_rank

            rank = check_rank(rank, syn.online.params.k, "--rank")  # no candidate exists at rank k or beyond
        lab, inst = read_inputs(labels, instances, syn, palette)
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
        photo = None
        if reference_photo is not None:
            photo = reference_photo_of(syn, run, p, reference_photo, reference_labels, reference_instances,
                                       segmenter, segmenter_weights, palette)
        img, guid, res = syn.synthesize(lab, inst, rank=glob, overrides=overrides, reference=reference,
                                        seed=seed, source=labels, reference_photo=photo, strict=strict)
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
    elif reference_photo is not None:
        n_photo, n_db = int((res.photo_matches >= 0).sum()), int((res.matches >= 0).sum())
        what = (f"reference photo {reference_photo}: {n_photo} of {len(res.segments)} segments take a segment of "
                f"it, {n_db} fall back to the database, {len(res.segments) - n_photo - n_db} black"
                f"{' (--strict)' if strict else ''}")
    else:
        ids = syn.online.db.col("image_id")
        n = int(sum(1 for c in res.matches.tolist() if c >= 0 and ids[c] == reference))
        what = f"reference {reference}: {n} of {len(res.segments)} segments take a candidate from it"
    click.echo(f"edit: {what} → {out}")


def reference_photo_of(syn, run, p: Params, photo_path: Path, labels_arg: str, instances: Path | None,
                       segmenter: str, segmenter_weights, palette=None):
    """The photo as candidates (:meth:`Synthesizer.photo_reference`): its label map read from a PNG,
    or (``auto``) predicted by the run's evaluation net / a published segmenter, which is said."""
    from pipeline.datasets.base import read_image_rgb, read_index_map

    image = read_image_rgb(photo_path)
    if labels_arg == "auto":
        from resail_train.evaluation import load_eval_segmenter

        seg = load_eval_segmenter(segmenter, segmenter_weights, p.run_dir(run, "--run"), syn.meta, syn.device)
        plabels = seg.label_map(image, syn.meta, size=syn.size)
        files = ", ".join(seg.weights) or seg.name
        click.echo(f"reference labels: predicted by {seg.name} ({files}) at {syn.size[0]}x{syn.size[1]}")
        source = f"{photo_path} (labels by {seg.name})"
        return syn.photo_reference(image, plabels, None, source)
    lpath = Path(labels_arg)
    if not lpath.is_file():
        raise click.BadParameter(f"{labels_arg}: not a file (a label map PNG, or auto)", param_hint="--reference-labels")
    from pipeline.datasets.palette import read_label_map

    plabels = read_label_map(lpath, palette, "reference label map", meta=syn.meta)
    pinst = read_index_map(instances, "reference instance map") if instances is not None else None
    if pinst is not None and pinst.shape != plabels.shape:
        raise DataError(instances, f"instance map is {pinst.shape[1]}x{pinst.shape[0]} but the reference label map "
                                   f"{lpath} is {plabels.shape[1]}x{plabels.shape[0]}")
    if plabels.shape != image.shape[:2]:
        raise DataError(lpath, f"reference label map is {plabels.shape[1]}x{plabels.shape[0]} but the photo "
                               f"{photo_path} is {image.shape[1]}x{image.shape[0]}")
    return syn.photo_reference(image, plabels, pinst, lpath)
