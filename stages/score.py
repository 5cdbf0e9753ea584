"""``resail score``: FID, KID, mIoU and pixel accuracy of ANY method's output folders.

``--fake`` (generated images), ``--real`` (the real images) and ``--labels`` (the input label maps)
are paired by file stem, with the common layouts understood (SPADE's ``test_latest``, OASIS's
``best``, Cityscapes' ``*_leftImg8bit`` / ``*_gtFine_labelIds`` names; see docs/scoring.md). The
numbers come from the code ``resail evaluate`` uses (:mod:`resail_train.metrics.score`); the protocol
(label mapping, size, scales) is the dataset's Table-1 protocol. Writes ``OUT/score.json`` (numbers
and the protocol fingerprint) and ``OUT/per_class.csv``; the last line printed is
``FID … KID … ± … mIoU … acc …`` (mIoU / accuracy in %, void excluded).

Weights: ``--inception-weights auto`` = the bundled FID Inception; ``--weights auto`` = the
segmenter's published file(s), downloaded once into ``$RESAIL_HOME`` (docs/scoring.md says from where).
"""
from __future__ import annotations

from pathlib import Path

import click

from stages.options import (batch_size_option, dataset_spec_option, device_option, inception_weights_option,
                            palette_option, progress_option, scales_option)
from stages.params import Params

SEGMENTERS = ["drn-d-105", "upernet-r101", "deeplabv2-r101", "own", "none"]


@click.command("score")
@click.option("--fake", type=click.Path(file_okay=False), required=True,
              help="generated images (or SPADE's test_latest / OASIS's results folder)")
@click.option("--real", type=click.Path(file_okay=False), required=True, help="the real images")
@click.option("--labels", type=click.Path(file_okay=False), default=None,
              help="the input label maps (class ids, or colours with --palette); needed for mIoU")
@dataset_spec_option(required=True)
@click.option("--segmenter", type=click.Choice(SEGMENTERS), default=None,
              help="mIoU network [default: the dataset's published one: cityscapes drn-d-105, ade20k upernet-r101, "
                   "coco-stuff deeplabv2-r101; none for folder:]; own = a RUN/eval_segnet.pt given by --weights "
                   "(not comparable with the papers)")
@click.option("--weights", default="auto", show_default=True, metavar="auto|PATH[,PATH]",
              help="segmenter weights: auto = the published file(s), fetched into $RESAIL_HOME once")
@click.option("--size", default=None, metavar="HxW",
              help="score every pair at H×W (H·W at most limits.max_pixels) "
                   "[default: each generated image's own size]")
@palette_option()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where score.json and per_class.csv go [default: FAKE's folder's parent / score]")
@scales_option("segmenter test scales [default: the protocol's]")
@inception_weights_option("FID/KID network: auto = the bundled 2015-12-05 TF Inception; PATH; none",
                          default="auto", metavar="auto|none|PATH")
@batch_size_option(default=8)
@device_option(default="auto")
@progress_option(default=True)
@click.pass_obj
def command(p: Params, fake, real, labels, dataset_spec, segmenter, weights, size, palette, out, scales,
            inception_weights, batch_size, device, progress) -> None:
    """Score generated images against real ones: FID, KID, and mIoU / pixel accuracy with a segmenter."""
    from pipeline.datasets.palette import load_palette
    from pipeline.errors import ConfigError
    from resail_train.metrics.fid import bundled_inception_path, describe_weights, resolve_fid_inception
    from resail_train.metrics.fid_folders import parse_size
    from resail_train.metrics.score import (DEFAULT_SEGMENTER, dataset_classes, fingerprint, headline,
                                            pair_folders, score_folders, write_score)
    from resail_train.metrics.segmenters.registry import check_dataset, load_segmenter
    from resail_train.models.weights import is_auto, resolve_segmenter_weights
    from resail_train.runtime import resolve_device

    name, meta = dataset_classes(dataset_spec)
    seg_name = segmenter or DEFAULT_SEGMENTER.get(name, "none")
    if seg_name != "none" and labels is None:
        raise click.UsageError(f"--segmenter {seg_name} needs --labels (or pass --segmenter none)")
    pal = load_palette(palette)
    hw = parse_size(size)
    pairing = pair_folders(fake, real, labels)  # before any network is loaded: a bad folder is cheap
    note = pairing.unpaired_line()
    if note:
        click.echo(note, err=True)
    dev = resolve_device(device)
    inception = resolve_fid_inception(inception_weights)
    inception_file = None
    if inception is not None:
        inception_file = bundled_inception_path() if str(inception_weights).strip().lower() == "auto" \
            else Path(inception_weights)
    seg = None
    if seg_name != "none":
        if seg_name == "own":
            if is_auto(weights):
                raise ConfigError(None, "--segmenter own needs --weights RUN/eval_segnet.pt")
            seg = load_segmenter("own", weights, dev, meta=meta)
        else:
            check_dataset(seg_name, meta)
            seg = load_segmenter(seg_name, resolve_segmenter_weights(seg_name, weights, progress=progress), dev)
            check_dataset(seg, meta)
    res = score_folders(fake, real, labels, meta=meta, segmenter=seg, inception=inception, size=hw, palette=pal,
                        device=dev, batch_size=batch_size, scales=scales, progress=progress, pairing=pairing)
    protocol = fingerprint(res, dataset=name, meta=meta, segmenter=seg, inception=inception,
                           inception_file=inception_file, inception_desc=describe_weights(inception_weights),
                           size=hw, palette=pal, scales=scales)
    out_dir = out or Path(pairing.folders["fake"]).parent / "score"
    write_score(out_dir, res, protocol)
    sizes = ", ".join(f"{k} ×{v}" for k, v in res["sizes"].items())
    seg_text = "no segmenter" if seg is None else seg.describe()
    click.echo(f"score: {res['n_images']} pairs at {sizes}; {seg_text}; Inception "
               f"{'off' if inception is None else describe_weights(inception_weights)} → {out_dir / 'score.json'}")
    if res["miou_incl_void"] is not None:
        ref = res["reference"] or {}
        click.echo(f"void included: mIoU {100 * res['miou_incl_void']:.1f} acc {100 * res['pixel_acc_incl_void']:.1f}; "
                   f"real images: mIoU {_pct(ref.get('miou'))} acc {_pct(ref.get('pixel_acc'))}")
    if res.get("fid_reason"):
        click.echo(f"FID/KID: {res['fid_reason']}")
    click.echo(headline(res))


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"
