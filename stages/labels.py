"""``resail labels check DIR``: what a folder of label maps holds (ids or colours, class shares, problems).

Prints whether the maps look like class ids or colour maps, the pixel share of every class, unknown
ids or colours (with ``--palette`` colour maps are read through it), label maps whose size differs
from their image when an images folder is beside the folder, and — for id maps and a palette — the
ids a colour map cannot express. Exit status 1 when unknown ids/colours, size mismatches or
unreadable files were found. ``--dataset`` names the class list (and, for the three published
datasets, implies their palette unless ``--palette`` says otherwise).
"""
from __future__ import annotations

import sys

import click

from stages.options import dataset_spec_option, palette_option


@click.group("labels")
def command() -> None:
    """Inspect label-map folders."""


@command.command("check")
@click.argument("folder", type=click.Path(file_okay=False))
@palette_option()
@dataset_spec_option("class list the ids should belong to: cityscapes | ade20k | coco-stuff | folder:CLASSES.json "
                     "[default: the palette's ids, else any]")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="images folder to compare sizes with [default: the one beside FOLDER in the common layouts]")
def check(folder, palette, dataset_spec, images) -> None:
    """Check a folder of label maps (ids or colours)."""
    from pipeline.datasets.label_check import check_labels, format_report, problems
    from pipeline.datasets.palette import load_palette, palette_for_dataset

    meta = None
    pal = load_palette(palette)
    if dataset_spec:
        from pipeline.datasets import class_list

        name, meta = class_list(dataset_spec)
        if pal is None:
            pal = palette_for_dataset(name)
    rep = check_labels(folder, pal, meta, images)
    for line in format_report(rep, pal, meta):
        click.echo(line)
    if problems(rep):
        sys.exit(1)
