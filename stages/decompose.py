"""``resail decompose``: dataset → segment database (segments.parquet, images.parquet, segments.h5)."""
from __future__ import annotations

import click

from pipeline.datasets import FORMATS, open_dataset, option_names
from pipeline.datasets.ade20k import SUBSETS
from pipeline.datasets.cityscapes import LABEL_SPACES
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.decompose.segments import PRUNING_MODES
from stages.options import (MASK_SIZE_MAX, backend_option, count, data_root_option, format_option, jobs_option,
                            palette_option, progress_option, scheduler_option)
from stages.params import Params, split_list


@click.command("decompose")
@format_option("dataset layout [params: dataset.format]", choices=FORMATS)
@data_root_option("dataset root [params: dataset.root]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--splits", default=None, help="comma-separated splits [params: dataset.splits; default: all]")
@jobs_option("parallel workers, 0 = all cores [params: decompose.jobs]")
@backend_option("[params: decompose.backend]")
@scheduler_option()
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=None,
              help="fail at the first bad sample, or skip it and list it in skipped.json [params: decompose.on_error]")
@click.option("--min-area", type=count(0), default=None,
              help="segments with fewer pixels are dropped [params: decompose.min_area; 16]")
@click.option("--mask-size", type=count(8, MASK_SIZE_MAX), default=None,
              help="S of the S×S normalised masks, a multiple of 8 [params: decompose.mask_size; 128]")
@click.option("--preserved-ratio", type=float, default=None,
              help="share of a class's area the kept largest segments cover [params: decompose.preserved_ratio; 0.9]")
@click.option("--pruning", type=click.Choice(PRUNING_MODES), default=None,
              help="image: per image and class, queries too (released code); dataset: per class over the "
                   "database split, candidates only; none [params: decompose.pruning; image]")
@click.option("--resize", default=None,
              help="working resolution: HxW (e.g. 256x512) or shorter side S (aspect kept); images antialiased, "
                   "label/instance maps nearest [params: decompose.resize; null = original]")
@click.option("--label-space", type=click.Choice(LABEL_SPACES), default=None,
              help="cityscapes: the 34 labelIds (SPADE/released code) or the 19 trainIds [params: dataset.label_space]")
@click.option("--subset", type=click.Choice(SUBSETS), default=None,
              help="ade20k: all images, or ADE20K-outdoor by sceneCategories.txt [params: dataset.subset]")
@palette_option("folder: label PNGs may be colour maps read through this palette (cityscapes | ade20k | coco-stuff | "
                "PATH.json; recorded, later stages read the same way) [params: dataset.palette]")
@progress_option()
@click.pass_obj
def command(p: Params, fmt, data_root, out, splits, jobs, backend, scheduler, on_error, min_area, mask_size,
            preserved_ratio, pruning, resize, label_space, subset, palette, progress) -> None:
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
        pruning=str(p.get("decompose", "pruning", pruning, "image")),
    )
    out_dir = p.dataset_cache(out)
    adapter = open_dataset(fmt, data_root, adapter_options(p, fmt, label_space=label_space, subset=subset, palette=palette),
                           resize=p.get("decompose", "resize", resize))
    summary = build_segment_db(
        adapter, out_dir, splits=split_list(p.get("dataset", "splits", splits)), params=params,
        jobs=int(p.get("decompose", "jobs", jobs, 1)), backend=p.get("decompose", "backend", backend, "loky"),
        scheduler=p.get("decompose", "scheduler", scheduler), on_error=p.get("decompose", "on_error", on_error, "fail"),
        progress=progress)
    per_split = ", ".join(f"{n} {s}" for s, n in summary.images_per_split.items())
    opts = ", ".join(f"{k} {v}" for k, v in adapter.options.items())
    click.echo(f"decompose: {summary.n_images} images ({per_split}{'; ' + opts if opts else ''}"
               f"{'; resize ' + str(adapter.spec) if hasattr(adapter, 'spec') else ''}), {summary.n_segments} segments "
               f"({summary.n_candidates} retrieval candidates, {summary.n_pruned_queries} pruned queries), "
               f"{len(summary.skipped)} skipped → {out_dir}")


def adapter_options(p: Params, fmt: str, **cli: str | None) -> dict[str, str]:
    """Adapter options from the command line, then params.yaml ``dataset.<name>``; a params value
    for an option this format does not have is ignored (params.yaml serves every format), a
    command-line one is an error."""
    accepts = {name for name, formats in option_names().items() if fmt in formats}
    out: dict[str, str] = {}
    for name, value in cli.items():
        if value is not None:
            if name not in accepts:
                raise click.UsageError(f"--{name.replace('_', '-')} is not an option of --format {fmt}")
            out[name] = value
        elif name in accepts and p.get("dataset", name) is not None:
            out[name] = str(p.get("dataset", name))
    return out
