"""``resail bench …``: benchmarks that print ratios against a reference measured in the same run."""
from __future__ import annotations

import click

from resail_train.norms import NORM_NAMES  # torch-free: the names only
from stages.params import Params


@click.group("bench")
def command() -> None:
    """Benchmarks (never run by the tests; numbers go into README and notes)."""


@command.command("decompose")
@click.option("--format", "fmt", default=None)
@click.option("--data-root", default=None)
@click.option("--jobs", "jobs_list", default="1,2", show_default=True, help="comma-separated worker counts")
@click.option("--repeat", type=int, default=1, show_default=True)
@click.pass_obj
def bench_decompose(p: Params, fmt, data_root, jobs_list, repeat) -> None:
    """images/s of `resail decompose` for each --jobs, against decoding alone."""
    from benchmarks.decompose import run_decompose_bench

    run_decompose_bench(p.get("dataset", "format", fmt, "folder"), p.get("dataset", "root", data_root),
                        tuple(int(j) for j in jobs_list.split(",")), repeat)


@command.command("pipeline")
@click.option("--format", "fmt", default=None, help="dataset layout [params: dataset.format]")
@click.option("--data-root", default=None, help="dataset root [params: dataset.root]")
@click.option("--resize", default=None, help="working resolution HxW or S (shorter side), as `resail decompose --resize`")
@click.option("--splits", default="train", show_default=True, help="splits to run (comma-separated)")
@click.option("--variants", type=int, default=4, show_default=True, help="distorted variants per image")
@click.option("--limit", type=int, default=None, help="only the first N images")
@click.pass_obj
def bench_pipeline(p: Params, fmt, data_root, resize, splits, variants, limit) -> None:
    """Per-image time and bytes of decompose/retrieve/compose/distort, projected to full datasets."""
    from benchmarks.pipeline import run_pipeline_bench

    run_pipeline_bench(p.get("dataset", "format", fmt, "folder"), p.get("dataset", "root", data_root),
                       resize=resize, splits=splits, variants=variants, limit=limit)


def _register() -> None:
    from stages.distort import bench_command as distort_bench

    command.add_command(distort_bench)
    from stages.bench_evaluate import command as evaluate_bench  # helper D: resail bench evaluate
    command.add_command(evaluate_bench)
    from stages.studio import bench_command as studio_bench  # helper E: resail bench studio
    command.add_command(studio_bench)


_register()


@command.command("retrieval")
@click.option("--sizes", default="10000,100000,1000000", show_default=True, help="synthetic database sizes")
@click.option("--queries", type=int, default=2000, show_default=True)
@click.option("--cache", "cache_dir", default=None,
              help="segment cache whose real masks seed the synthetic databases (and add a row of its own size) "
                   "[default: datasets_cache/<dataset.name> when it exists]")
@click.option("--ref-budget", type=float, default=60.0, show_default=True, help="seconds for the reference per size")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.pass_obj
def bench_retrieval(p: Params, sizes, queries, cache_dir, ref_budget, device, threads) -> None:
    """Our exact engine vs the authors-style per-query search: queries/s, ratio, identical top-k, peak memory."""
    from pathlib import Path

    from benchmarks.retrieval import run_retrieval_bench
    from pipeline.cache import SegmentDB

    size_list = [int(s) for s in sizes.split(",") if s]
    real_masks = real_classes = None
    cache_dir = Path(cache_dir) if cache_dir else (p.dataset_cache(None) if p.get("dataset", "name") else None)
    if cache_dir is not None and (cache_dir / "segments.h5").exists():
        with SegmentDB.open(cache_dir) as db:
            real_masks, real_classes = db.norm_masks(), db.col("class_id").astype("int64")
        size_list = [len(real_classes), *size_list]
        click.echo(f"seeding with the {len(real_classes)} real masks of {cache_dir} (first row: its own size)")
    run_retrieval_bench(size_list, queries, real_masks=real_masks, real_classes=real_classes, jobs=threads,
                        ref_budget_s=ref_budget, device=device)


@command.command("online")
@click.option("--data-root", default="data/camvid_demo", show_default=True, help="folder-format source of frames")
@click.option("--images", type=int, default=400, show_default=True, help="jittered training images (≈32 segments each)")
@click.option("--size", default="256x512", show_default=True, help="query label map H×W")
@click.option("--repeat", type=int, default=3, show_default=True)
def bench_online(data_root, images, size, repeat) -> None:
    """Label map → guidance latency of the on-line API against a ≥10k-segment database."""
    from benchmarks.online import run_online_bench

    h, w = (int(v) for v in size.lower().split("x"))
    run_online_bench(data_root, images, (h, w), repeat=repeat)


@command.command("train")
@click.option("--cache", "cache_dir", default=None, help="cache folder [default: datasets_cache/<dataset.name>; "
              "a synthetic cache when absent]")
@click.option("--config", default="demo", show_default=True, help="training config (name or path)")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda")
@click.option("--steps", type=int, default=10, show_default=True, help="timed steps per generator kind")
@click.option("--set", "overrides", multiple=True, help="config override KEY=VALUE")
@click.option("--vgg-weights", default=None, help="VGG19 state dict (paper configs need it)")
@click.option("--norm", "norms", multiple=True, type=click.Choice(NORM_NAMES), help="model.norm variant to time against SPADE (repeatable) "
              "[default: resail]")
@click.pass_obj
def bench_train(p: Params, cache_dir, config, device, steps, overrides, vgg_weights, norms) -> None:
    """Step time of RESAIL (or each --norm variant) vs plain SPADE at the same size, and the data-wait fraction."""
    from benchmarks.train import run_train_bench

    if cache_dir is None and p.get("dataset", "name"):
        cand = p.dataset_cache(None)
        cache_dir = cand if (cand / "segments.h5").exists() else None
    run_train_bench(cache_dir, config, device, steps, overrides=overrides, vgg_weights=vgg_weights,
                    norms=norms or ("resail",))


@command.command("synthesize")
@click.option("--run", "run_dir", required=True, help="a trained run folder")
@click.option("--cache", "cache_dir", default=None, help="its cache [default: recorded in the run]")
@click.option("--n", type=int, default=8, show_default=True, help="label maps of the split")
@click.option("--split", default="val", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True)
def bench_synthesize(run_dir, cache_dir, n, split, device, repeat) -> None:
    """Label map → image latency: retrieval + composition vs generator time (CPU, and CUDA when present)."""
    from benchmarks.synthesize import run_synthesize_bench

    run_synthesize_bench(run_dir, n, device, cache_dir, split, repeat)
