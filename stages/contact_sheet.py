"""``resail contact-sheet``: a PNG of a few decomposed segments per class."""
from __future__ import annotations

import click

from pipeline.cache import SegmentDB
from pipeline.contact_sheet import contact_sheet
from pipeline.datasets.base import check_target_size
from pipeline.visualize import write_png
from stages.options import TILE_MAX, cache_option, count
from stages.params import Params


@click.command("contact-sheet")
@cache_option()
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG path [default: CACHE/contact_sheet.png]")
@click.option("--per-class", type=count(1, 256), default=8, show_default=True, help="segments shown per class")
@click.option("--tile", type=count(8, TILE_MAX), default=72, show_default=True, help="tile size in pixels")
@click.pass_obj
def command(p: Params, cache_dir, out, per_class, tile) -> None:
    """Largest segments of each class, masked, one row per class."""
    cache_dir = p.dataset_cache(cache_dir)
    out = out or cache_dir / "contact_sheet.png"
    with SegmentDB.open(cache_dir) as db:
        # a name tile (2 tiles wide) and per_class tiles per row, one row per class: bounded like any image
        n = len(db.meta.classes)
        check_target_size(n * tile, (per_class + 2) * tile, f"a contact sheet of {n} classes x {per_class} tiles "
                                                           f"of {tile} px")
        write_png(out, contact_sheet(db, per_class, tile))
    click.echo(f"contact sheet → {out}")
