"""``resail train``: the RESAIL GAN, trained on the stage cache with the frozen segmentation net.

Reads the stage cache (segment DB, ``guidance.h5``, ``distortions.h5`` — not with
``data.distortion: online``, which needs ``retrieval.parquet`` and the dataset instead) and
``OUT/segnet.pt`` (from ``resail train-segnet``) and writes into a run folder (default
``runs/<dataset.name>``). Option defaults come from the ``train`` section of params.yaml: ``config``,
``run_dir``, ``device``, ``vgg_weights``, ``max_steps``, ``amp``, ``compile``, ``overrides`` (a list
of ``section.key=value``) and ``set`` (nested config keys, for ``dvc exp run -S``; see stages/training_config.py).

DDP: ``torchrun --nproc_per_node G -m stages.cli train …`` (or ``torchrun --no-python resail
train …``); each process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment.
"""
from __future__ import annotations

import click

from stages.options import (cache_option, config_option, data_root_option, device_option, max_steps_option,
                            progress_option, set_option, vgg_weights_option)
from stages.params import Params
from stages.training_config import load_training_config


@click.command("train")
@cache_option()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder [params: train.run_dir; default runs/<dataset.name>]")
@config_option()
@set_option("config override, e.g. optim.batch_size=8")
@max_steps_option("stop after N steps in total (the LR schedule still spans the configured epochs) "
                  "[params: train.max_steps]")
@click.option("--resume", is_flag=True, default=False, help="continue from OUT/checkpoints/latest.pt (exactly)")
@click.option("--allow-config-change", is_flag=True, default=False,
              help="with --resume: accept a config that differs from the checkpoint's (the differences are "
                   "logged; the model and crop size still may not change) [default: refuse, naming them]")
@click.option("--amp/--no-amp", default=None, help="autocast on CUDA with optim.amp_dtype [params: train.amp]")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile G and D [params: train.compile]")
@device_option("[params: train.device; auto]")
@vgg_weights_option("torchvision-format VGG19 state dict (features.N.*), or auto: torchvision's vgg19-dcbb9e9d.pth "
                    "(torch's hub cache, else $RESAIL_HOME, else downloaded once) [params: train.vgg_weights]")
@data_root_option()
@progress_option()
@click.pass_obj
def command(p: Params, cache_dir, out, config, sets, max_steps, resume, allow_config_change, amp, compile_, device,
            vgg_weights, data_root, progress) -> None:
    """Train the RESAIL generator (distorted-GT and retrieval guidance passes) with the frozen segnet."""
    from resail_train.models.weights import is_auto, resolve_vgg_weights
    from resail_train.training.trainer import TrainOptions, train

    cfg = load_training_config(p, config, sets, with_param_sets=True)
    vgg_weights = p.get("train", "vgg_weights", vgg_weights) or cfg.vgg_weights
    if is_auto(vgg_weights):  # only fetched when the config has a VGG loss
        vgg_weights = resolve_vgg_weights(vgg_weights, progress=progress) if cfg.loss.lambda_vgg > 0 else None
    opts = TrainOptions(max_steps=p.get("train", "max_steps", max_steps), resume=resume,
                        allow_config_change=allow_config_change,
                        amp=bool(p.get("train", "amp", amp, False)), compile=bool(p.get("train", "compile", compile_, False)),
                        device=p.get("train", "device", device, "auto"),
                        vgg_weights=vgg_weights, progress=progress, data_root=data_root)
    cache = p.dataset_cache(cache_dir)
    if cfg.data.distortion == "online" and "distorted-gt" in cfg.data.guidance_mode:
        from pipeline.cache import DISTORTIONS_H5
        from stages.distort_params import distort_params

        # Draw with what distortions.h5 was made with when it exists (the cached runs' operator),
        # else with params.yaml's distort section (what `resail distort` would make it with).
        if not (cache / DISTORTIONS_H5).is_file():
            opts.distort_params = distort_params(p)
        click.echo(f"train: distorted ground truth drawn fresh per sample (data.distortion: online), parameters "
                   f"{'of ' + str(cache / DISTORTIONS_H5) if opts.distort_params is None else 'of params.yaml distort'}")
    res = train(cache, p.run_dir(out, "--out"), cfg, opts)
    click.echo(f"train: step {res.step}/{res.total_steps}, {res.seconds:.0f}s, "
               f"data wait {100 * res.data_wait_fraction:.1f}% → {res.run_dir}")
