"""The ``resail`` command: one click group, one subcommand per stage.

Expected failures (:class:`pipeline.errors.ResailError`) print one line ``error: <file>: <problem>``
and exit with status 1; only bugs print a traceback.
"""
from __future__ import annotations

import sys

import click

from pipeline.errors import ResailError
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


def _register() -> None:
    from stages import bench, compose, contact_sheet, decompose, distort, retrieve, synthesize, train
    from stages import studio

    for mod in (decompose, contact_sheet, retrieve, compose, distort):
        main.add_command(mod.command)
    for cmd in (*train.commands, *synthesize.commands, bench.command):
        main.add_command(cmd)
    main.add_command(studio.command)
    from stages import fid as fid_command  # resail fid DIR_A DIR_B

    main.add_command(fid_command.command)
    from stages import compare as compare_command  # resail compare RUN … / --exps

    main.add_command(compare_command.command)


_register()

if __name__ == "__main__":
    main()
