"""``resail compose``: segment DB + retrieval.parquet → guidance.h5 (+ optional preview PNGs)."""
from __future__ import annotations

import click

from pipeline.datasets import FORMATS
from pipeline.compose.build import PREVIEW_DIR, compose_dataset, preview, recorded_source
from stages.options import (PREVIEW_MAX, backend_option, cache_option, count, data_root_option, format_option,
                            jobs_option, progress_option, rank_option, scheduler_option)
from stages.params import Params


@click.command("compose")
@cache_option()
@data_root_option("dataset root [default: recorded by decompose, then params dataset.root]")
@format_option("dataset layout [default: recorded by decompose, then params dataset.format]", choices=FORMATS)
@rank_option("retrieval rank to paste, 0 = best, below the retrieval's k; queries without that rank stay black "
             "[params: compose.rank; 0]")
@jobs_option("parallel workers, 0 = all cores [params: compose.jobs; 1]")
@backend_option("[params: compose.backend; loky]")
@scheduler_option()
@click.option("--preview", "n_preview", type=count(0, PREVIEW_MAX), default=None,
              help=f"write N PNGs (labels | guidance | image) to CACHE/{PREVIEW_DIR} [params: compose.preview; 0]")
@progress_option()
@click.pass_obj
def command(p: Params, cache_dir, data_root, fmt, rank, jobs, backend, scheduler, n_preview, progress) -> None:
    """Paste each segment's retrieved segment into the guidance image (docs/method.md §3)."""
    cache_dir = p.dataset_cache(cache_dir)
    rec_fmt, rec_root = recorded_source(cache_dir)
    fmt = fmt or rec_fmt or p.get("dataset", "format", None, "folder")
    data_root = data_root or rec_root or p.get("dataset", "root")
    if not data_root:
        raise click.UsageError("--data-root is required (none recorded in the segment database or params.yaml)")
    rank = int(p.get("compose", "rank", rank, 0))
    if rank < 0:
        raise click.BadParameter("must be >= 0", param_hint="--rank")
    n_preview = int(p.get("compose", "preview", n_preview, 0))
    summary = compose_dataset(cache_dir, data_root=data_root, fmt=fmt, rank=rank,
                              jobs=int(p.get("compose", "jobs", jobs, 1)),
                              backend=p.get("compose", "backend", backend, "loky"),
                              scheduler=p.get("compose", "scheduler", scheduler), progress=progress)
    click.echo(f"compose: {summary.n_images} images, {summary.n_matched}/{summary.n_queries} segments pasted "
               f"(rank {rank}), {100 * summary.valid_fraction:.1f}% of pixels covered → {summary.path}")
    if n_preview > 0:
        paths = preview(cache_dir, n_preview, data_root=data_root, fmt=fmt)
        click.echo(f"preview: {len(paths)} PNGs → {cache_dir / PREVIEW_DIR}")
