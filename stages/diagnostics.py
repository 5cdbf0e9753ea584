"""``resail diagnostics RUN``: is a trained generator using its retrieval guidance?

Prints one JSON object (see :mod:`resail_train.reporting.diagnostics`): the mix weights ``σ(wγ)``,
``σ(wβ)`` of every RESAIL layer, how much the output changes with a black or another image's guidance
(sensitivity), and how closely it follows the pasted colours (fidelity), on the first ``--n`` images
of ``--split`` at the generator size, on the CPU. Useful when RESAIL does not beat SPADE at a small
training budget.
"""
from __future__ import annotations

import json

import click

from stages.options import cache_option, count, split_option


@click.command("diagnostics")
@click.argument("run", type=click.Path(file_okay=False))
@cache_option("stage cache [default: the one the run records]", dest="cache")
@click.option("--n", type=count(), default=16, show_default=True,
              help="first N images of the split")
@split_option()
def command(run, cache, n, split) -> None:
    """Does a trained generator use its guidance? Mix weights, guidance sensitivity and fidelity as JSON."""
    from resail_train.reporting.diagnostics import diagnose

    click.echo(json.dumps(diagnose(run, cache, n, split), indent=1))
