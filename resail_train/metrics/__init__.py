"""Evaluation metrics: FID with pytorch-fid's InceptionV3, and segmentation mIoU / pixel accuracy."""
from .fid import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    inception_features,
    load_fid_inception,
)
from .segmentation import confusion_matrix, segmentation_scores

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_features",
    "load_fid_inception",
    "confusion_matrix",
    "segmentation_scores",
]
