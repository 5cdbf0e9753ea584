"""``resail contact-sheet``: a PNG of a few decomposed segments per class."""
from __future__ import annotations

import click

from pipeline.cache import SegmentDB
from pipeline.contact_sheet import contact_sheet
from pipeline.visualize import write_png
from stages.params import Params


@click.command("contact-sheet")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG path [default: CACHE/contact_sheet.png]")
@click.option("--per-class", type=int, default=8, show_default=True)
@click.option("--tile", type=int, default=72, show_default=True, help="tile size in pixels")
@click.pass_obj
def command(p: Params, cache_dir, out, per_class, tile) -> None:
    """Largest segments of each class, masked, one row per class."""
    cache_dir = p.dataset_cache(cache_dir)
    out = out or cache_dir / "contact_sheet.png"
    with SegmentDB.open(cache_dir) as db:
        write_png(out, contact_sheet(db, per_class, tile))
    click.echo(f"contact sheet → {out}")
