"""``resail bench …``: benchmarks that print ratios against a reference measured in the same run."""
from __future__ import annotations

import click

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


def _register() -> None:
    from stages.distort import bench_command as distort_bench

    command.add_command(distort_bench)


_register()
