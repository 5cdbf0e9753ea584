"""``resail train-segnet`` and ``resail train``: the segmentation net, then the RESAIL GAN.

Both read the stage cache (segment DB, ``guidance.h5``, ``distortions.h5``) and write into a run
folder (default ``runs/<dataset.name>``). Option defaults come from the ``train`` section of
params.yaml: ``config``, ``run_dir``, ``device``, ``vgg_weights``, ``max_steps``,
``segnet_max_steps``, ``amp``, ``compile``, ``overrides`` (a list of ``section.key=value``).

DDP: ``torchrun --nproc_per_node G -m stages.cli train …`` (or ``torchrun --no-python resail
train …``); each process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment.
"""
from __future__ import annotations


import click

from pipeline.errors import ConfigError
from stages.params import Params

CONFIG_HELP = "demo | cityscapes | ade20k | coco-stuff | path to a YAML config [params: train.config; demo]"


def _overrides(p: Params, cli: tuple[str, ...]) -> list[str]:
    base = p.get("train", "overrides") or []
    if isinstance(base, str):
        base = [base]
    return [str(x) for x in base] + list(cli)


def _param_sets(p: Params) -> list[str]:
    """``train.set`` of params.yaml (nested ``section: {key: value}``, null = keep) as ``section.key=value``.

    This is how ``dvc exp run -S train.set.model.norm=spade`` reaches a config key (issue 15); values
    are written as JSON, which the config's YAML override parser reads back unchanged.
    """
    import json

    from resail_train.compare import flatten

    sets = p.get("train", "set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(p.source, "train.set must be a mapping of config sections")
    return [f"{k}={json.dumps(v)}" for k, v in flatten(sets).items() if v is not None and v != {}]


def _load(p: Params, config: str | None, sets: tuple[str, ...], with_param_sets: bool = False):
    from resail_train.config import load_config

    extra = _param_sets(p) if with_param_sets else []
    return load_config(p.get("train", "config", config, "demo"), _overrides(p, tuple(extra) + tuple(sets)))


def _echo_segnet(command: str, res) -> None:
    """The one-line summary both segmentation-net commands print."""
    val = "" if res.val_miou is None else f", val mIoU {res.val_miou:.3f} / acc {res.val_pixel_acc:.3f}"
    click.echo(f"{command}: {res.steps} steps in {res.seconds:.0f}s, train mIoU {res.train_miou:.3f} / "
               f"acc {res.train_pixel_acc:.3f}{val} → {res.path}")


@click.command("train-segnet")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder; writes OUT/segnet.pt [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="config override, e.g. segnet.epochs=5")
@click.option("--max-steps", type=int, default=None, help="stop after N steps [params: train.segnet_max_steps]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[params: train.device; auto]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="dataset root [default: recorded by decompose]")
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def train_segnet_command(p: Params, cache_dir, out, config, sets, max_steps, device, data_root, progress) -> None:
    """Train the segmentation net of the segmentation loss on the real training images."""
    from resail_train.segnet_training import train_segnet

    cfg = _load(p, config, sets)
    res = train_segnet(p.dataset_cache(cache_dir), p.run_dir(out, "--out"), cfg,
                       max_steps=p.get("train", "segnet_max_steps", max_steps),
                       device=p.get("train", "device", device, "auto"), progress=progress, data_root=data_root)
    _echo_segnet("train-segnet", res)


@click.command("train-eval-segnet")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder; writes OUT/eval_segnet.pt [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="config override, e.g. segnet.epochs=5")
@click.option("--seed", type=int, default=None,
              help="its own seed [params: eval_segnet.seed; default: the config's seed + 1000]")
@click.option("--max-steps", type=int, default=None, help="stop after N steps [params: eval_segnet.max_steps]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[params: train.device; auto]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="dataset root [default: recorded by decompose]")
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def train_eval_segnet_command(p: Params, cache_dir, out, config, sets, seed, max_steps, device, data_root,
                              progress) -> None:
    """Train the separate evaluation segmentation net (`resail evaluate --segmenter own`), never the loss net."""
    from resail_train.segnet_training import train_segnet

    cfg = _load(p, config, sets)
    res = train_segnet(p.dataset_cache(cache_dir), p.run_dir(out, "--out"), cfg,
                       max_steps=p.get("eval_segnet", "max_steps", max_steps),
                       device=p.get("train", "device", device, "auto"), progress=progress, data_root=data_root,
                       role="eval", seed=p.get("eval_segnet", "seed", seed))
    _echo_segnet("train-eval-segnet", res)


@click.command("train")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="cache folder [default: datasets_cache/<dataset.name>]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="config override, e.g. optim.batch_size=8")
@click.option("--max-steps", type=int, default=None,
              help="stop after N steps in total (the LR schedule still spans the configured epochs) "
                   "[params: train.max_steps]")
@click.option("--resume", is_flag=True, default=False, help="continue from OUT/checkpoints/latest.pt (exactly)")
@click.option("--amp/--no-amp", default=None, help="autocast on CUDA with optim.amp_dtype [params: train.amp]")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile G and D [params: train.compile]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[params: train.device; auto]")
@click.option("--vgg-weights", type=click.Path(dir_okay=False), default=None,
              help="torchvision-format VGG19 state dict (features.N.*) [params: train.vgg_weights]")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="dataset root [default: recorded by decompose]")
@click.option("--progress/--no-progress", default=True)
@click.pass_obj
def train_command(p: Params, cache_dir, out, config, sets, max_steps, resume, amp, compile_, device, vgg_weights,
                  data_root, progress) -> None:
    """Train the RESAIL generator (distorted-GT and retrieval guidance passes) with the frozen segnet."""
    from resail_train.trainer import TrainOptions, train

    cfg = _load(p, config, sets, with_param_sets=True)
    opts = TrainOptions(max_steps=p.get("train", "max_steps", max_steps), resume=resume,
                        amp=bool(p.get("train", "amp", amp, False)), compile=bool(p.get("train", "compile", compile_, False)),
                        device=p.get("train", "device", device, "auto"),
                        vgg_weights=p.get("train", "vgg_weights", vgg_weights), progress=progress, data_root=data_root)
    res = train(p.dataset_cache(cache_dir), p.run_dir(out, "--out"), cfg, opts)
    click.echo(f"train: step {res.step}/{res.total_steps}, {res.seconds:.0f}s, "
               f"data wait {100 * res.data_wait_fraction:.1f}% → {res.run_dir}")


commands = (train_segnet_command, train_eval_segnet_command, train_command)
