"""Every file and folder name inside a run folder (``RUN_DIR`` of ``resail train``), in one place.

Training, the segmentation-net trainer, checkpointing, synthesis, evaluation, the report and
``resail compare`` all read and write run folders; they take the names from here so that a renamed
file cannot leave one reader behind.

Layout of ``RUN_DIR``::

    config.yaml                 the resolved training config
    train_summary.json          steps, wall time, throughput of the last ``resail train``
    generator.pt                final generator weights with what is needed to rebuild it
    checkpoints/latest.pt       full training state (exact resume); checkpoints/step_XXXXXXX.pt kept ones
    checkpoints/best.pt         lowest validation FID so far, when the FID monitor is on
    samples/step_XXXXXXX.png    training sample grids
    logs/                       dvclive: metrics.json, plots/metrics/{train,lr,perf}/*.tsv
    segnet.pt, segnet_logs/, segnet_summary.json                  the loss segmentation net
    eval_segnet.pt, eval_segnet_logs/, eval_segnet_summary.json   the separate evaluation net
    metrics.json, eval_details.json, per_class_iou.csv, eval/<split>/*.png   ``resail evaluate``
    reference.json, reference_per_class_iou.csv                   the real images through the same net
    report/index.html           ``resail report``
    .previous_run/              a fresh start's predecessor, kept until the first new checkpoint
"""
from __future__ import annotations

CONFIG_FILE = "config.yaml"
TRAIN_SUMMARY_FILE = "train_summary.json"
GENERATOR_FILE = "generator.pt"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"
SAMPLES_DIR = "samples"
LOGS_DIR = "logs"
CURVES_DIR = "logs/plots/metrics/train"  # dvclive's per-series TSV files of the training curves
PREVIOUS_DIR = ".previous_run"  # a fresh start keeps its predecessor here until its first checkpoint exists

SEGNET_FILE = "segnet.pt"
SEGNET_LOGS = "segnet_logs"
SEGNET_SUMMARY_FILE = "segnet_summary.json"
EVAL_SEGNET_FILE = "eval_segnet.pt"
EVAL_SEGNET_LOGS = "eval_segnet_logs"
EVAL_SEGNET_SUMMARY_FILE = "eval_segnet_summary.json"

METRICS_FILE = "metrics.json"
DETAILS_FILE = "eval_details.json"
PER_CLASS_FILE = "per_class_iou.csv"
REFERENCE_FILE = "reference.json"
REFERENCE_PER_CLASS_FILE = "reference_per_class_iou.csv"
EVAL_DIR = "eval"

REPORT_DIR = "report"
INDEX_HTML = "index.html"
COMPARE_MD = "compare.md"


def step_name(step: int) -> str:
    """``checkpoints/`` file name of the checkpoint kept at ``step``."""
    return f"step_{int(step):07d}.pt"
