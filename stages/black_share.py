"""``resail black-share``: how much of the retrieval guidance stays black, per pruning mode and ``max_score``.

Wraps :mod:`benchmarks.black_share`: every (pruning, max_score) pair decomposes (once per pruning),
retrieves and composes the dataset in a temporary folder and prints one table row; nothing is
written elsewhere.
"""
from __future__ import annotations

import click

from pipeline.decompose.segments import PRUNING_MODES
from stages.options import data_root_option, format_option, jobs_option


@click.command("black-share")
@format_option("dataset layout", default="folder")
@data_root_option("dataset root", required=True)
@jobs_option("parallel workers of decompose and compose", default=2)
@click.option("--max-scores", default="null,0.58,0.15", show_default=True,
              help="comma list of retrieve.max_score values; null = no threshold")
@click.option("--prunings", default=",".join(PRUNING_MODES), show_default=True,
              help="comma list of decompose.pruning modes")
def command(fmt, data_root, jobs, max_scores, prunings) -> None:
    """Share of the retrieval guidance left black, per pruning mode and max_score (one table row each)."""
    from benchmarks.black_share import parse_max_scores, run_black_share

    try:
        scores = parse_max_scores(max_scores)
    except ValueError:
        raise click.BadParameter(f"{max_scores!r}: expected numbers or null, comma-separated",
                                 param_hint="--max-scores") from None
    run_black_share(fmt, data_root, max_scores=scores, prunings=tuple(prunings.split(",")), jobs=jobs)
