"""``resail retrieve``: exact top-k geometric-consistency retrieval → retrieval.parquet."""
from __future__ import annotations

import click

from pipeline.errors import ConfigError
from pipeline.retrieve.retrieval import SCALE_TERMS, RetrievalParams
from pipeline.retrieve.build import EXCLUDE_MODES, run_retrieval
from stages.options import K_MAX, cache_option, count, device_option, progress_option, threads_option
from stages.params import Params


def retrieval_params(p: Params, k=None, max_score=None, alpha=None, scale_term=None) -> RetrievalParams:
    """RetrievalParams from options, then params.yaml `retrieve`, then method.md defaults."""
    ms = p.get("retrieve", "max_score", max_score, None)
    try:
        return RetrievalParams(k=int(p.get("retrieve", "k", k, 10)),
                               max_score=float("inf") if ms is None else float(ms),
                               alpha=float(p.get("retrieve", "alpha", alpha, 1.0)),
                               scale_term=str(p.get("retrieve", "scale_term", scale_term, "step")))
    except ValueError as e:
        raise ConfigError(p.source, f"retrieve: {e}") from None


@click.command("retrieve")
@cache_option()
@click.option("--k", type=count(1, K_MAX), default=None,
              help="candidates kept per query; memory and retrieval.parquet grow as N·k rows for N segments "
                   "[params: retrieve.k; 10]")
@click.option("--max-score", type=float, default=None,
              help="candidates scoring above are not admissible [params: retrieve.max_score; none]")
@click.option("--alpha", type=float, default=None, help="weight of the scale term [params: retrieve.alpha; 1.0]")
@click.option("--scale-term", type=click.Choice(SCALE_TERMS), default=None,
              help="step at ratio 2 (released code) or |ln ratio| [params: retrieve.scale_term; step]")
@click.option("--exclude", type=click.Choice(EXCLUDE_MODES), default=None,
              help="what a training query may not retrieve: its own segment (released code) or any segment of "
                   "its own image [params: retrieve.exclude; self]")
@device_option("cpu | cuda | auto [params: retrieve.device; auto]", free=True)
@threads_option("torch CPU threads for large blocks [params: retrieve.threads]")
@progress_option()
@click.pass_obj
def command(p: Params, cache_dir, k, max_score, alpha, scale_term, exclude, device, threads, progress) -> None:
    """For every segment, the k most geometrically consistent same-class training segments."""
    cache_dir = p.dataset_cache(cache_dir)
    params = retrieval_params(p, k, max_score, alpha, scale_term)
    s = run_retrieval(cache_dir, params, device=p.get("retrieve", "device", device, "auto"),
                      threads=p.get("retrieve", "threads", threads), progress=progress,
                      exclude=str(p.get("retrieve", "exclude", exclude, "self")))
    click.echo(f"retrieve: {s.n_queries} queries ({s.n_pruned} pruned segments not searched), {s.n_matched} with a match, {s.n_rows} rows → "
               f"{cache_dir / 'retrieval.parquet'}")
