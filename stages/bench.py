"""``resail bench …``: benchmarks that print ratios against a reference measured in the same run.

Every ``resail bench`` subcommand is declared here; each runs one module of ``benchmarks/``
(imported when the subcommand runs, so that the pipeline stages never load the benchmarks).
"""
from __future__ import annotations

import click

from pipeline.distort.distortions import CANVASES
from resail_train.models.norms.registry import NORM_NAMES  # torch-free: the names only
from stages.options import (RANK_MAX, SEEDS, VARIANTS_MAX, IntList, batch_size_option, cache_option, config_option,
                            count, data_root_option, device_option, format_option, inception_weights_option,
                            jobs_list_option, limit_option, repeat_option, run_option, set_option, split_option,
                            threads_option, vgg_weights_option)
from stages.params import Params

RUN_CACHE_HELP = "its cache [default: recorded in the run]"


@click.group("bench")
def command() -> None:
    """Benchmarks (never run by the tests; numbers go into docs/benchmarks.md)."""


@command.command("decompose")
@format_option()
@data_root_option(None)
@jobs_list_option()
@repeat_option()
@click.pass_obj
def bench_decompose(p: Params, fmt, data_root, jobs_list, repeat) -> None:
    """images/s of `resail decompose` for each --jobs, against decoding alone."""
    from benchmarks.decompose import run_decompose_bench

    run_decompose_bench(p.get("dataset", "format", fmt, "folder"), p.get("dataset", "root", data_root),
                        jobs_list, repeat)


@command.command("distort")
@cache_option()
@jobs_list_option()
@click.option("--variants", type=count(1, VARIANTS_MAX), default=4, show_default=True)
@repeat_option()
@click.option("--canvas", type=click.Choice(CANVASES), default="black", show_default=True)
@click.pass_obj
def bench_distort(p: Params, cache_dir, jobs_list, variants, repeat, canvas) -> None:
    """images/s of `resail distort` for each --jobs, against decoding the same images."""
    from benchmarks.distort import run_distort_bench

    run_distort_bench(p.dataset_cache(cache_dir), jobs_list, variants=variants,
                      repeat=repeat, canvas=canvas)


@command.command("distort-k")
@cache_option()
@click.option("--variants", "ks", type=IntList(1, VARIANTS_MAX), default="1,4,16,32", show_default=True,
              help=f"comma-separated K values [each 1<=x<={VARIANTS_MAX}]")
@click.option("--epochs", type=count(), default=200, show_default=True,
              help="training epochs the variant reuse is counted over")
@click.option("--loader-epochs", type=count(0), default=3, show_default=True,
              help="passes over the images for the loader timing (0 = skip it)")
@click.option("--step-rate", type=float, default=10.0, show_default=True,
              help="GPU images/s the loader must feed (workers needed)")
@click.pass_obj
def bench_distort_k(p: Params, cache_dir, ks, epochs, loader_epochs, step_rate) -> None:
    """Bytes and CPU per image for each K of `resail distort`, and the loader's images/s per core, cached vs on line."""
    from benchmarks.distort_k import run_distort_k_bench
    from stages.distort import distort_params

    k_list = list(ks)
    run_distort_k_bench(p.dataset_cache(cache_dir), k_list, distort_params(p), epochs=epochs,
                        loader_epochs=loader_epochs, step_rate=step_rate, deflate_k=4 if 4 in k_list else k_list[0])


@command.command("pipeline")
@format_option("dataset layout [params: dataset.format]")
@data_root_option("dataset root [params: dataset.root]")
@click.option("--resize", default=None, help="working resolution HxW or S (shorter side), as `resail decompose --resize`")
@click.option("--splits", default="train", show_default=True, help="splits to run (comma-separated)")
@click.option("--variants", type=count(1, VARIANTS_MAX), default=4, show_default=True,
              help="distorted variants per image")
@limit_option("only the first N images")
@click.pass_obj
def bench_pipeline(p: Params, fmt, data_root, resize, splits, variants, limit) -> None:
    """Per-image time and bytes of decompose/retrieve/compose/distort, projected to full datasets."""
    from benchmarks.pipeline import run_pipeline_bench
    from pipeline.datasets.resized import ResizeSpec

    ResizeSpec.parse(resize, what="--resize")  # a bad or too large size fails before any work
    run_pipeline_bench(p.get("dataset", "format", fmt, "folder"), p.get("dataset", "root", data_root),
                       resize=resize, splits=splits, variants=variants, limit=limit)


@command.command("retrieval")
@click.option("--sizes", type=IntList(1, 10_000_000), default="10000,100000,1000000", show_default=True,
              help="synthetic database sizes (each segment holds a 2 KiB mask) [each 1<=x<=10000000]")
@click.option("--queries", type=count(1, 1_000_000), default=2000, show_default=True)
@cache_option("segment cache whose real masks seed the synthetic databases (and add a row of its own size) "
              "[default: datasets_cache/<dataset.name> when it exists]")
@click.option("--ref-budget", type=float, default=60.0, show_default=True, help="seconds for the reference per size")
@device_option(default="cpu", free=True)
@threads_option(default=1)
@click.pass_obj
def bench_retrieval(p: Params, sizes, queries, cache_dir, ref_budget, device, threads) -> None:
    """Our exact engine vs the authors-style per-query search: queries/s, ratio, identical top-k, peak memory."""
    from pathlib import Path

    from benchmarks.retrieval import run_retrieval_bench
    from pipeline.cache import SegmentDB

    size_list = list(sizes)
    real_masks = real_classes = None
    cache_dir = Path(cache_dir) if cache_dir else (p.dataset_cache(None) if p.get("dataset", "name") else None)
    if cache_dir is not None and (cache_dir / "segments.h5").exists():
        with SegmentDB.open(cache_dir) as db:
            real_masks, real_classes = db.norm_masks(), db.col("class_id").astype("int64")
        size_list = [len(real_classes), *size_list]
        click.echo(f"seeding with the {len(real_classes)} real masks of {cache_dir} (first row: its own size)")
    run_retrieval_bench(size_list, queries, real_masks=real_masks, real_classes=real_classes, jobs=threads,
                        ref_budget_s=ref_budget, device=device)


@command.command("table-b")
@cache_option("cache whose retrieval.parquet keeps k >= max rank + 1 (resail retrieve --k 991) "
              "[default: datasets_cache/<dataset.name>]")
@click.option("--ranks", type=IntList(0, RANK_MAX), default="0,10,50,132,254,369,528,660,858,990", show_default=True,
              help=f"pasted ranks (the released helper.py's) [each 0<=x<={RANK_MAX}]")
@click.option("--split", default="val", show_default=True,
              help="queries of this split; all = every query (released helper.py: validation queries)")
@click.option("--require-rank", type=count(0, RANK_MAX), default=None,
              help="count only queries with a candidate of this rank (released helper.py: 1000, with k >= 1001)")
@click.pass_obj
def bench_table_b(p: Params, cache_dir, ranks, split, require_rank) -> None:
    """Table B as a rank sweep: mean score of the pasted candidate per rank, beside the paper's value."""
    from benchmarks.table_b import run_table_b

    rank_list = list(ranks)
    run_table_b(p.dataset_cache(cache_dir), rank_list, split=None if split == "all" else split,
                require_rank=require_rank, print_fn=click.echo)


@command.command("online")
@data_root_option("folder-format source of frames", default="data/camvid_demo")
@click.option("--images", type=count(1, 100_000), default=400, show_default=True,
              help="jittered training images (≈32 segments each)")
@click.option("--size", default="256x512", show_default=True, help="query label map H×W")
@repeat_option(3)
def bench_online(data_root, images, size, repeat) -> None:
    """Label map → guidance latency of the on-line API against a ≥10k-segment database."""
    from benchmarks.online import run_online_bench

    sizes = hw_list(size, "--size")
    if len(sizes) != 1:
        raise click.BadParameter(f"{size!r}: one size HxW", param_hint="--size")
    run_online_bench(data_root, images, sizes[0], repeat=repeat)


@command.command("train")
@cache_option("cache folder [default: datasets_cache/<dataset.name>; a synthetic cache when absent]")
@config_option("training config (name or path)", default="demo")
@device_option("cpu | cuda", default="cpu", free=True)
@click.option("--steps", type=count(), default=10, show_default=True, help="timed steps per generator kind")
@set_option("config override", dest="overrides")
@vgg_weights_option("VGG19 state dict (paper configs need it)")
@click.option("--norm", "norms", multiple=True, type=click.Choice(NORM_NAMES),
              help="model.norm variant to time against SPADE (repeatable) [default: resail]")
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
@run_option("a trained run folder", dest="run_dir", required=True)
@cache_option(RUN_CACHE_HELP)
@click.option("--n", type=count(), default=8, show_default=True, help="label maps of the split")
@split_option()
@device_option(default="auto", free=True)
@repeat_option(3)
def bench_synthesize(run_dir, cache_dir, n, split, device, repeat) -> None:
    """Label map → image latency: retrieval + composition vs generator time (CPU, and CUDA when present)."""
    from benchmarks.synthesize import run_synthesize_bench

    run_synthesize_bench(run_dir, n, device, cache_dir, split, repeat)


@command.command("diversity")
@run_option("a trained run folder", dest="run_dir", required=True)
@cache_option(RUN_CACHE_HELP)
@split_option()
# 64: pipeline.online.MAX_SAMPLES (not imported: it would load torch for every bench command)
@click.option("--samples", "n_samples", type=count(2, 64), default=4, show_default=True, help="samples per label map")
@click.option("--temperatures", default="0.5,1,2", show_default=True, help="comma-separated temperatures T > 0")
@limit_option("first N label maps of the split [all]")
@click.option("--seed", type=SEEDS, default=0, show_default=True, help="the draw's (and torch's) seed")
@device_option(default="cpu", free=True)
@inception_weights_option(None, default="auto")
@batch_size_option(default=8)
def bench_diversity(run_dir, cache_dir, split, n_samples, temperatures, limit, seed, device, inception_weights,
                    batch_size) -> None:
    """Samples of one map: pairwise Inception / pixel distance, FID of the first vs all samples, per T."""
    from benchmarks.diversity import run_diversity_bench

    try:
        temps = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{temperatures!r}: expected numbers, e.g. 0.5,1,2", param_hint="--temperatures") from None
    run_diversity_bench(run_dir, cache_dir, split=split, n_samples=n_samples, temperatures=temps, limit=limit,
                        seed=seed, device=device, inception_weights=inception_weights, batch_size=batch_size)


@command.command("evaluate")
@run_option("a trained run folder (with eval_segnet.pt for --segmenter own)", dest="run_dir", required=True)
@cache_option(RUN_CACHE_HELP)
@split_option()
@limit_option("first N images of the split [all]")
@batch_size_option(default=8)
@device_option(default="cpu", free=True)
@click.option("--segmenter", default="own", show_default=True)
@click.option("--segmenter-weights", default=None)
@inception_weights_option(None, default="auto")
@threads_option("torch intra-op threads [torch default]")
def bench_evaluate(run_dir, cache_dir, split, limit, batch_size, device, segmenter, segmenter_weights,
                   inception_weights, threads) -> None:
    """Evaluation throughput (generator, segmenter, Inception, rest) against Inception features alone."""
    from benchmarks.evaluate import run_evaluate_bench

    run_evaluate_bench(run_dir, cache_dir, split, limit, batch_size, device, segmenter, segmenter_weights,
                       inception_weights, threads)


@command.command("studio")
@run_option("a trained run folder (e.g. runs/camvid_demo)", dest="run_dir", required=True)
@cache_option(RUN_CACHE_HELP)
@click.option("--sizes", default="180x240,256x512", show_default=True, help="label map sizes H×W")
@click.option("--n", "n_maps", type=count(), default=6, show_default=True, help="validation maps")
@repeat_option(5, "edits and strokes per map")
@threads_option("torch threads (cores)", default=2)
@device_option(default="cpu")
def bench_studio(run_dir, cache_dir, sizes, n_maps, repeat, threads, device) -> None:
    """Studio round trips (local edit, paint stroke) against `resail synthesize` as a process."""
    from benchmarks.studio import run_studio_bench

    size_list = hw_list(sizes, "--sizes")
    run_studio_bench(run_dir, cache_dir, size_list, n_maps=n_maps, repeat=repeat, device=device, threads=threads)


def hw_list(text: str, option: str) -> list[tuple[int, int]]:
    """``HxW[,HxW…]`` → [(H, W), …], each within the readers' pixel cap (one line otherwise)."""
    from pipeline.datasets.base import check_target_size

    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected HxW[,HxW…]", param_hint=option) from None
    if not sizes or any(len(hw) != 2 or min(hw) < 1 for hw in sizes):
        raise click.BadParameter(f"{text!r}: expected HxW[,HxW…] with positive sides", param_hint=option)
    for h, w in sizes:
        check_target_size(h, w, f"{option} {h}x{w}")
    return sizes
