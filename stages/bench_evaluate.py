"""``resail bench evaluate``: images/s of the evaluation on the CPU (registered by stages/bench.py)."""
from __future__ import annotations

import click


@click.command("evaluate")
@click.option("--run", "run_dir", required=True, help="a trained run folder (with eval_segnet.pt for --segmenter own)")
@click.option("--cache", "cache_dir", default=None, help="its cache [default: recorded in the run]")
@click.option("--split", default="val", show_default=True)
@click.option("--limit", type=int, default=None, help="first N images of the split [all]")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--segmenter", default="own", show_default=True)
@click.option("--segmenter-weights", default=None)
@click.option("--inception-weights", default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="torch intra-op threads [torch default]")
def command(run_dir, cache_dir, split, limit, batch_size, device, segmenter, segmenter_weights, inception_weights,
            threads) -> None:
    """Evaluation throughput (generator, segmenter, Inception, rest) against Inception features alone."""
    from benchmarks.evaluate import run_evaluate_bench

    run_evaluate_bench(run_dir, cache_dir, split, limit, batch_size, device, segmenter, segmenter_weights,
                       inception_weights, threads)
