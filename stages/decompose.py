"""``resail decompose``: dataset → segment database (segments.parquet, images.parquet, segments.h5)."""
from __future__ import annotations

import click

from pipeline.datasets import FORMATS, open_dataset
from pipeline.decomposition import DecomposeParams, build_segment_db
from stages.params import Params, split_list


@click.command("decompose")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="dataset layout [params: dataset.format]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="dataset root [params: dataset.root]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--splits", default=None, help="comma-separated splits [params: dataset.splits; default: all]")
@click.option("--jobs", type=int, default=None, help="parallel workers, 0 = all cores [params: decompose.jobs]")
@click.option("--backend", type=click.Choice(["loky", "threads", "dask"]), default=None, help="[params: decompose.backend]")
@click.option("--scheduler", default=None, help="dask-distributed scheduler address (with --backend dask)")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=None,
              help="fail at the first bad sample, or skip it and list it in skipped.json [params: decompose.on_error]")
@click.option("--min-area", type=int, default=None)
@click.option("--mask-size", type=int, default=None)
@click.option("--preserved-ratio", type=float, default=None)
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def command(p: Params, fmt, data_root, out, splits, jobs, backend, scheduler, on_error, min_area, mask_size,
            preserved_ratio, progress) -> None:
    """Split every image into segments (things per instance, stuff per connected component)."""
    fmt = p.get("dataset", "format", fmt, "folder")
    data_root = p.get("dataset", "root", data_root)
    if not data_root:
        raise click.UsageError("--data-root is required (or dataset.root in params.yaml)")
    mask_size = int(p.get("decompose", "mask_size", mask_size, 128))
    if mask_size <= 0 or mask_size % 8:
        raise click.BadParameter("must be a positive multiple of 8", param_hint="--mask-size")
    params = DecomposeParams(
        min_area=int(p.get("decompose", "min_area", min_area, 16)),
        mask_size=mask_size,
        preserved_ratio=float(p.get("decompose", "preserved_ratio", preserved_ratio, 0.9)),
        db_split=str(p.get("decompose", "db_split", None, "train")),
    )
    out_dir = p.dataset_cache(out)
    adapter = open_dataset(fmt, data_root)
    summary = build_segment_db(
        adapter, out_dir, splits=split_list(p.get("dataset", "splits", splits)), params=params,
        jobs=int(p.get("decompose", "jobs", jobs, 1)), backend=p.get("decompose", "backend", backend, "loky"),
        scheduler=p.get("decompose", "scheduler", scheduler), on_error=p.get("decompose", "on_error", on_error, "fail"),
        progress=progress)
    click.echo(f"decompose: {summary.n_images} images, {summary.n_segments} segments "
               f"({summary.n_candidates} retrieval candidates), {len(summary.skipped)} skipped → {out_dir}")
