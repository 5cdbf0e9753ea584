"""``resail train-segnet`` and ``resail train-eval-segnet``: one segmentation-net trainer, two roles.

Both train the same network with :func:`resail_train.training.segnet_trainer.train_segnet` on the real
training images of the stage cache, and differ only in the role they give it:

* ``train-segnet`` (role ``loss``) writes ``OUT/segnet.pt``, the frozen net of the generator's
  segmentation loss (run it before ``resail train``);
* ``train-eval-segnet`` (role ``eval``) writes ``OUT/eval_segnet.pt``, a separate net with its own
  seed that only scores generated images (``resail evaluate --segmenter own``); the generator never
  sees it, so its scores are not inflated by a net the generator was trained against.

Option defaults from params.yaml: ``train`` (``config``, ``run_dir``, ``device``, ``overrides``,
``segnet_max_steps``) and ``eval_segnet`` (``seed``, ``max_steps``, and ``epochs``: the evaluation net's
``segnet.epochs``, so that it can train longer than the loss net of the same config).
"""
from __future__ import annotations

import click

from stages.options import (cache_option, config_option, data_root_option, device_option, max_steps_option,
                            progress_option, seed_option, set_option)
from stages.params import Params
from stages.training_config import load_training_config


def _train(p: Params, command: str, role: str, cache_dir, out, config, sets, max_steps, device, data_root, progress,
           seed=None) -> None:
    """Train the net in ``role`` and print the one-line summary of ``command``."""
    from resail_train.training.segnet_trainer import train_segnet

    cfg = load_training_config(p, config, sets)
    res = train_segnet(p.dataset_cache(cache_dir), p.run_dir(out, "--out"), cfg, max_steps=max_steps,
                       device=p.get("train", "device", device, "auto"), progress=progress, data_root=data_root,
                       role=role, seed=seed)
    val = "" if res.val_miou is None else f", val mIoU {res.val_miou:.3f} / acc {res.val_pixel_acc:.3f}"
    click.echo(f"{command}: {res.steps} steps in {res.seconds:.0f}s, train mIoU {res.train_miou:.3f} / "
               f"acc {res.train_pixel_acc:.3f}{val} → {res.path}")


@click.command("train-segnet")
@cache_option()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder; writes OUT/segnet.pt [params: train.run_dir; default runs/<dataset.name>]")
@config_option()
@set_option("config override, e.g. segnet.epochs=5")
@max_steps_option("stop after N steps [params: train.segnet_max_steps]")
@device_option("[params: train.device; auto]")
@data_root_option()
@progress_option()
@click.pass_obj
def train_segnet_command(p: Params, cache_dir, out, config, sets, max_steps, device, data_root, progress) -> None:
    """Train the segmentation net of the segmentation loss on the real training images."""
    _train(p, "train-segnet", "loss", cache_dir, out, config, sets, p.get("train", "segnet_max_steps", max_steps),
           device, data_root, progress)


@click.command("train-eval-segnet")
@cache_option()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder; writes OUT/eval_segnet.pt [params: train.run_dir; default runs/<dataset.name>]")
@config_option()
@set_option("config override, e.g. segnet.epochs=5")
@seed_option("its own seed [params: eval_segnet.seed; default: the config's seed + 1000]")
@max_steps_option("stop after N steps [params: eval_segnet.max_steps]")
@device_option("[params: train.device; auto]")
@data_root_option()
@progress_option()
@click.pass_obj
def train_eval_segnet_command(p: Params, cache_dir, out, config, sets, seed, max_steps, device, data_root,
                              progress) -> None:
    """Train the separate evaluation segmentation net (`resail evaluate --segmenter own`), never the loss net."""
    epochs = p.get("eval_segnet", "epochs")
    if epochs is not None:  # before the command line's --set, which wins
        sets = (f"segnet.epochs={int(epochs)}", *sets)
    _train(p, "train-eval-segnet", "eval", cache_dir, out, config, sets, p.get("eval_segnet", "max_steps", max_steps),
           device, data_root, progress, seed=p.get("eval_segnet", "seed", seed))


commands = (train_segnet_command, train_eval_segnet_command)
