"""``resail distort``: segment database → distorted ground truth (distortions.h5, distortions.parquet).

Params section ``distort`` (every key optional; an explicit option wins):
``variants`` (4), ``seed`` (0), ``kinds`` ("color,shape,resolution"), ``p_color`` / ``p_shape`` /
``p_resolution`` (1.0 each, as the released code applies all three), ``scale_min`` / ``scale_max``
(0.5 / 1.0, the resolution scale range), ``paste_rules`` ("a1"), ``color_targets`` ("auto"),
``canvas`` ("black": a variant shows only the segments with a retrieval match, black elsewhere, as the
released code; "real": the real image outside them, the earlier behaviour), ``resolution_reference``
("source": the resolution scale is relative to the image on disk before ``--resize``, as the released
code; "working": to the cached image, the earlier behaviour),
``splits`` (extra splits besides the database split; default none), ``jobs`` (1), ``backend`` ("loky").

Its throughput benchmark is ``resail bench distort`` (stages/bench.py).
"""
from __future__ import annotations

import click

from pipeline.distort.build import COLOR_TARGET_MODES, RESOLUTION_REFERENCES, build_distortions, preview
from pipeline.distort.distortions import CANVASES
from stages.distort_params import distort_params
from stages.options import (PREVIEW_MAX, VARIANTS_MAX, backend_option, cache_option, count, data_root_option,
                            format_option, jobs_option, progress_option, scheduler_option, seed_option)
from stages.params import Params, split_list


@click.command("distort")
@cache_option("cache folder holding the segment database [default: datasets_cache/<dataset.name>]")
@click.option("--variants", type=count(1, VARIANTS_MAX), default=None,
              help="distorted variants per image (all K of an image are made in one worker's memory) "
                   "[params: distort.variants; 4]")
@seed_option("base seed [params: distort.seed; 0]")
@click.option("--kinds", default=None,
              help="comma-separated subset of color,shape,resolution [params: distort.kinds; all three]")
@click.option("--p-color", type=float, default=None, help="probability per segment [params: distort.p_color; 1.0]")
@click.option("--p-shape", type=float, default=None, help="[params: distort.p_shape; 1.0]")
@click.option("--p-resolution", type=float, default=None, help="[params: distort.p_resolution; 1.0]")
@click.option("--color-targets", type=click.Choice(COLOR_TARGET_MODES), default=None,
              help="where colour targets come from: retrieved candidates, same-class segments of other images, "
                   "or retrieval when retrieval.parquet exists [params: distort.color_targets; auto]")
@click.option("--canvas", type=click.Choice(CANVASES), default=None,
              help="black: only segments with a retrieval match, black elsewhere (as the guidance, as the released "
                   "code); real: the real image outside them [params: distort.canvas; black]")
@click.option("--resolution-reference", type=click.Choice(RESOLUTION_REFERENCES), default=None,
              help="the resolution scale is relative to the image on disk before --resize (released code: "
                   "nearly no blur after a 4x resize) or to the cached working image "
                   "[params: distort.resolution_reference; source]")
@click.option("--splits", default=None,
              help="comma-separated splits to distort besides the database split [params: distort.splits]")
@format_option("dataset layout [default: the one recorded by decompose]")
@data_root_option("dataset root [default: the one recorded by decompose]")
@jobs_option("parallel workers, 0 = all cores [params: distort.jobs; 1]")
@backend_option("[params: distort.backend; loky]")
@scheduler_option()
@click.option("--preview", "n_preview", type=count(0, PREVIEW_MAX), default=0, show_default=True,
              help="also write PNG strips (real | variant 1..K) of the first N images")
@click.option("--preview-dir", type=click.Path(file_okay=False), default=None,
              help="folder of the preview PNGs [default: CACHE/distort_preview]")
@progress_option()
@click.pass_obj
def command(p: Params, cache_dir, variants, seed, kinds, p_color, p_shape, p_resolution, color_targets, canvas,
            resolution_reference, splits, fmt, data_root, jobs, backend, scheduler, n_preview, preview_dir,
            progress) -> None:
    """Pre-generate K distorted versions of every training image (colour, shape, resolution per segment)."""
    cache_dir = p.dataset_cache(cache_dir)
    params = distort_params(p, variants=variants, seed=seed, kinds=kinds, p_color=p_color, p_shape=p_shape,
                            p_resolution=p_resolution, color_targets=color_targets, canvas=canvas,
                            resolution_reference=resolution_reference)
    summary = build_distortions(
        cache_dir, params, splits=split_list(p.get("distort", "splits", splits)), fmt=fmt, data_root=data_root,
        jobs=int(p.get("distort", "jobs", jobs, 1)), backend=p.get("distort", "backend", backend, "loky"),
        scheduler=scheduler, progress=progress)
    pairs = summary.n_segments * summary.variants
    applied = ", ".join(f"{k} {v / pairs:.0%}" if pairs else f"{k} -" for k, v in summary.applied.items())
    click.echo(f"distort: {summary.n_images} images × {summary.variants} variants ({', '.join(summary.splits)}), "
               f"{summary.n_segments} segments; applied: {applied}; colour targets: {summary.color_targets} "
               f"→ {cache_dir}")
    if n_preview > 0:
        paths = preview(cache_dir, n_preview, preview_dir, fmt=fmt, data_root=data_root)
        click.echo(f"preview: {len(paths)} PNG strip(s) → {paths[0].parent if paths else preview_dir or cache_dir}")

