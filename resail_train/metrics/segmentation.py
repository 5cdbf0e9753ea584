"""Segmentation scores (mIoU, pixel accuracy) from a confusion matrix.

Used to score generated images by segmenting them and comparing with the input label maps.
Convention: ``conf[t, p]`` counts pixels whose ground-truth class is ``t`` and predicted class
is ``p`` (rows = target, columns = prediction).
"""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "segmentation_scores"]


def _as_int_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Confusion matrix ``int64 [C, C]`` of dense class maps ``pred`` and ``target``.

    ``pred`` and ``target`` are integer arrays (numpy or torch) of the same shape, with classes
    ``0..num_classes-1``. Pixels where ``target == ignore_index`` are not counted (nor are
    pixels where ``pred == ignore_index``). Any other value outside ``0..C-1`` raises
    ``ValueError``.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    c = int(num_classes)
    p = _as_int_array(pred, "pred")
    t = _as_int_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in shape: {p.shape} vs {t.shape}")
    p = p.reshape(-1).astype(np.int64, copy=False)
    t = t.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = (t != ignore_index) & (p != ignore_index)
        p, t = p[keep], t[keep]
    for name, a in (("pred", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= c):
            raise ValueError(
                f"{name} has class indices outside 0..{c - 1}: min {a.min()}, max {a.max()}")
    counts = np.bincount(t * c + p, minlength=c * c)
    return counts.reshape(c, c).astype(np.int64, copy=False)


def segmentation_scores(conf) -> dict:
    """Scores of a confusion matrix ``conf[t, p]``.

    Returns ``{"miou", "pixel_acc", "per_class_iou"}``: ``per_class_iou[k] = TP / (TP + FP + FN)``,
    NaN for a class that appears neither in the target nor in the prediction; ``miou`` is the
    mean over the other classes (NaN if there are none); ``pixel_acc`` is the fraction of counted
    pixels on the diagonal (NaN for an empty matrix).
    """
    m = np.asarray(conf, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {m.shape}")
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    iou = np.full(tp.shape, np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    total = m.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": [float(v) for v in iou],
    }
