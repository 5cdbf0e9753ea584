"""The ``resail`` command: one click group, one subcommand per module of ``stages/``.

Expected failures (:class:`pipeline.errors.ResailError`) print one line ``error: <file>: <problem>``
and exit with status 1; only bugs print a traceback.
"""
from __future__ import annotations

import sys

import click

from pipeline.errors import ResailError
from stages import (bench, black_share, compare, compose, contact_sheet, decompose, diagnostics, distort, edit,
                    evaluate, export, fid, labels, report, retrieve, score, studio, synthesize, train, train_segnet)
from stages.params import Params, apply_limits, load_params


class ResailGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ResailError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted (outputs were not replaced)", err=True)
            sys.exit(130)


@click.group(cls=ResailGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
              help="params file giving option defaults (default: ./params.yaml if present)")
@click.pass_context
def main(ctx: click.Context, params_file: str | None) -> None:
    """RESAIL: retrieval-based spatially adaptive normalization, as a DVC pipeline."""
    ctx.obj = Params(load_params(params_file), params_file or "params.yaml")
    apply_limits(ctx.obj)  # limits.max_pixels → every reader, workers included


for _command in (decompose.command, contact_sheet.command, retrieve.command, compose.command, distort.command,
                 *train_segnet.commands, train.command, synthesize.command, edit.command, evaluate.command,
                 report.command, export.command, fid.command, score.command, labels.command, compare.command, studio.command,
                 diagnostics.command, black_share.command, bench.command):
    main.add_command(_command)


if __name__ == "__main__":
    main()
