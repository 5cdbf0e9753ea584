"""``resail compare RUN … --out DIR`` and ``resail compare --exps``: one page comparing runs.

Thin CLI over :mod:`resail_train.reporting.compare`: writes ``DIR/index.html`` (self-contained) and
``DIR/compare.md``. Runs that differ only in seeds are aggregated (mean ± sd, n); runs evaluated
with their best checkpoint too show it in columns of its own.
"""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.errors import ResailError
from stages.options import cache_option, count
from stages.params import Params


@click.command("compare")
@click.argument("runs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--exps", is_flag=True, default=False,
              help="compare the DVC experiments of the repo (`dvc exp show --json`) instead of RUN folders")
@click.option("--repo", type=click.Path(file_okay=False), default=".", show_default=True,
              help="git/DVC repo for --exps")
@click.option("--no-baseline", is_flag=True, default=False, help="with --exps: leave the baseline commit out")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="folder for index.html and compare.md")
@click.option("--table", default="auto", show_default=True,
              help="paper table beside the runs: 3 | 4 | A | B | auto (from the param that differs) | none")
@click.option("--images", "n_images", type=count(0), default=4, show_default=True,
              help="validation images in the strip (ids every run synthesised)")
@cache_option("stage cache for label maps / real images in the strip [default: the one the runs recorded]")
@click.option("--name", "names", multiple=True, help="display name per RUN, in order (default: folder name)")
@click.pass_obj
def command(p: Params, runs, exps, repo, no_baseline, out_dir, table, n_images, cache_dir, names) -> None:
    """Compare training runs: params that differ, FID / mIoU / accuracy, paper numbers, curves, images."""
    from resail_train.reporting.compare import load_exps, load_run, write_compare

    notes: list[str] = []
    if exps:
        if runs:
            raise ResailError(None, "give RUN folders or --exps, not both")
        records, notes = load_exps(repo, Path(out_dir) / ".exps", include_baseline=not no_baseline)
    else:
        if not runs:
            raise ResailError(None, "nothing to compare: give RUN folders (or --exps)")
        if names and len(names) != len(runs):
            raise ResailError(None, f"--name given {len(names)} times for {len(runs)} runs")
        records = [load_run(r, names[i] if names else None) for i, r in enumerate(runs)]
    res = write_compare(records, out_dir, table=table, n_images=n_images, cache_dir=cache_dir, notes=notes)
    for n in notes:
        click.echo(f"compare: {n}", err=True)
    diff = ", ".join(res.differing) or "none"
    seeds = f"; {res.n_seed_groups} seed group(s) (mean ± sd)" if res.n_seed_groups else ""
    click.echo(f"compare: {res.n_runs} runs, differing params: {diff}; paper table "
               f"{res.table or 'none'}; {res.n_protocols} protocol(s){seeds}; {res.n_images} image strips → {res.html}")
