"""``resail distort``: segment database → distorted ground truth (distortions.h5, distortions.parquet).

Params section ``distort`` (every key optional; an explicit option wins):
``variants`` (4), ``seed`` (0), ``kinds`` ("color,shape,resolution"), ``p_color`` / ``p_shape`` /
``p_resolution`` (1.0 each, as the released code applies all three), ``scale_min`` / ``scale_max``
(0.5 / 1.0, the resolution scale range), ``paste_rules`` ("a1"), ``color_targets`` ("auto"),
``canvas`` ("black": a variant shows only the segments with a retrieval match, black elsewhere, as the
released code; "real": the real image outside them, the earlier behaviour),
``splits`` (extra splits besides the database split; default none), ``jobs`` (1), ``backend`` ("loky").

Also ``bench_command``: ``resail bench distort`` (attach it to the ``bench`` group).
"""
from __future__ import annotations

import click

from pipeline.distorted_gt import COLOR_TARGET_MODES, DistortParams, build_distortions, parse_kinds, preview
from pipeline.distortions import CANVASES, KINDS
from stages.params import Params, split_list


@click.command("distort")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder holding the segment database [default: datasets_cache/<dataset.name>]")
@click.option("--variants", type=int, default=None, help="distorted variants per image [params: distort.variants; 4]")
@click.option("--seed", type=int, default=None, help="base seed [params: distort.seed; 0]")
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
@click.option("--splits", default=None,
              help="comma-separated splits to distort besides the database split [params: distort.splits]")
@click.option("--format", "fmt", default=None, help="dataset layout [default: the one recorded by decompose]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="dataset root [default: the one recorded by decompose]")
@click.option("--jobs", type=int, default=None, help="parallel workers, 0 = all cores [params: distort.jobs; 1]")
@click.option("--backend", type=click.Choice(["loky", "threads", "dask"]), default=None,
              help="[params: distort.backend; loky]")
@click.option("--scheduler", default=None, help="dask-distributed scheduler address (with --backend dask)")
@click.option("--preview", "n_preview", type=int, default=0, show_default=True,
              help="also write PNG strips (real | variant 1..K) of the first N images")
@click.option("--preview-dir", type=click.Path(file_okay=False), default=None,
              help="folder of the preview PNGs [default: CACHE/distort_preview]")
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def command(p: Params, cache_dir, variants, seed, kinds, p_color, p_shape, p_resolution, color_targets, canvas, splits, fmt,
            data_root, jobs, backend, scheduler, n_preview, preview_dir, progress) -> None:
    """Pre-generate K distorted versions of every training image (colour, shape, resolution per segment)."""
    cache_dir = p.dataset_cache(cache_dir)
    kinds_value = p.get("distort", "kinds", kinds, ",".join(KINDS))
    params = DistortParams(
        variants=int(p.get("distort", "variants", variants, 4)),
        seed=int(p.get("distort", "seed", seed, 0)),
        kinds=parse_kinds(split_list(kinds_value) or []),
        probs={"color": p.get("distort", "p_color", p_color, 1.0), "shape": p.get("distort", "p_shape", p_shape, 1.0),
               "resolution": p.get("distort", "p_resolution", p_resolution, 1.0)},
        scale_range=(float(p.get("distort", "scale_min", None, 0.5)), float(p.get("distort", "scale_max", None, 1.0))),
        paste_rules=str(p.get("distort", "paste_rules", None, "a1")),
        color_targets=str(p.get("distort", "color_targets", color_targets, "auto")),
        canvas=str(p.get("distort", "canvas", canvas, "black")),
    )
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


@click.command("distort")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--jobs", "jobs_list", default="1,2", show_default=True, help="comma-separated worker counts")
@click.option("--variants", type=int, default=4, show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True)
@click.option("--canvas", type=click.Choice(CANVASES), default="black", show_default=True)
@click.pass_obj
def bench_command(p: Params, cache_dir, jobs_list, variants, repeat, canvas) -> None:
    """images/s of `resail distort` for each --jobs, against decoding the same images."""
    from benchmarks.distort import run_distort_bench

    run_distort_bench(p.dataset_cache(cache_dir), tuple(int(j) for j in jobs_list.split(",")), variants=variants,
                      repeat=repeat, canvas=canvas)
