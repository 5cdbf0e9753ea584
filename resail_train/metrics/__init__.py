"""Evaluation metrics, each taking the networks it needs as arguments: FID and KID on Inception pool3
features, segmentation mIoU / pixel accuracy, and the segmentation networks that score generated images."""
