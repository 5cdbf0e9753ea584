"""``resail report``: ``RUN_DIR/report/index.html``, the page of a trained and evaluated run.

Defaults from params.yaml: run folder ``train.run_dir`` (else ``runs/<dataset.name>``); cache: the one
the run records, else ``datasets_cache/<dataset.name>``; section ``report`` (``n_images``, ``device``).
"""
from __future__ import annotations

import click

from stages.options import RUN_OR_DATASET_CACHE_HELP, cache_option, checkpoint_option, count, device_option, run_option
from stages.params import Params
from stages.trained_run import run_cache_dir


@click.command("report")
@run_option()
@cache_option(RUN_OR_DATASET_CACHE_HELP, dest="cache")
@click.option("--n-images", type=count(), default=None, help="sample rows [params: report.n_images; 4]")
@device_option("[params: report.device; auto]")
@checkpoint_option()
@click.pass_obj
def command(p: Params, run, cache, n_images, device, checkpoint) -> None:
    """Write RUN_DIR/report/index.html: metrics vs the paper, curves, samples, editing strips."""
    from resail_train.reporting.report import write_report

    run_dir = p.run_dir(run, "--run")
    path = write_report(run_dir, run_cache_dir(p, run_dir, cache), n_images=int(p.get("report", "n_images", n_images, 4)),
                        device=p.get("report", "device", device, "auto"), checkpoint=checkpoint or "latest")
    click.echo(str(path))
