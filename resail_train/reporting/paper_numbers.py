"""The paper's ablation numbers, so `resail compare` can put them beside ours.

All four tables are Cityscapes at 512×256 (paper §4.4 and appendix C), scored with the paper's
protocol (FID of the 2015-12-05 Inception over the 500 validation images; mIoU and pixel accuracy,
in %, by DRN-D-105). A small run on other data or at another size is a different protocol: the
numbers are there to show the *direction* the paper reports, not to be matched digit for digit.

Source: Shi et al., "Retrieval-based Spatially Adaptive Normalization for Semantic Image
Synthesis", CVPR 2022 (``../shared/paper/resail-cvpr2022.txt``):

* Table 3 — normalisation variants (``model.norm``), "Guidance Inject" column in the label;
* Table 4 — guidance used during training (``data.guidance_mode``): retrieval-based guidance
  original / distorted / w/o × ground truth w/o / distorted / original;
* Table A — with and without the segmentation loss (``loss.lambda_seg``; the paper's on-value is 5);
* Table B — the "shape non-similarity threshold", FID only. It is a sweep of the *pasted rank*
  (``compose.rank``), not a threshold: the released search has none, and the released ``helper.py``
  prints the mean score of the rank-r candidate over the validation queries for r in
  :data:`pipeline.retrieve.rank_scores.HELPER_RANKS` (0, 10, 50, 132, 254, 369, 528, 660, 858, 990);
  the paper's 0.15 … 0.58 are such means. Which rank gave which column the released code does not
  record; ten ranks for ten means 0.15, 0.20, …, 0.55, 0.58 of which the paper prints every other one
  (and the last) is our reading: ranks 0, 50, 254, 528, 858, 990 (:data:`TABLE_B_MEAN_SCORE`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROTOCOL = "Cityscapes 512×256, 500 val images, FID (pytorch-fid Inception), mIoU/acc by DRN-D-105"


@dataclass(frozen=True)
class PaperRow:
    label: str
    fid: float | None
    miou: float | None  # %
    acc: float | None  # %


@dataclass(frozen=True)
class PaperTable:
    key: str  # "3", "4", "A", "B"
    title: str
    param: str  # the config key (or params.yaml key, compose.rank, for Table B) whose value picks the row
    rows: dict[Any, PaperRow]

    def row_for(self, value: Any) -> PaperRow | None:
        """The paper's row for a run whose ``param`` has ``value`` (numbers compared as floats)."""
        for k, row in self.rows.items():
            if k == value:
                return row
            try:
                if isinstance(k, (int, float)) and not isinstance(k, bool) and value is not None \
                        and not isinstance(value, bool) and abs(float(value) - k) < 1e-9:
                    return row
            except (TypeError, ValueError):
                continue
        return None


TABLES: dict[str, PaperTable] = {
    "3": PaperTable("3", "Table 3: normalisation variants (Cityscapes)", "model.norm", {
        "spade": PaperRow("SPADE (guidance w/o)", 58.7, 62.2, 81.9),
        "pix2pixhd_plus": PaperRow("Pix2pixHD+ (guidance into the conv layer)", 47.8, 66.7, 81.9),
        "spade_plus": PaperRow("SPADE+ (guidance into the SPADE module)", 53.4, 68.6, 82.8),
        "sean_plus": PaperRow("SEAN+ (guidance into the SEAN module)", 66.6, 69.4, 82.1),
        "resail": PaperRow("Ours (RESAIL module)", 45.5, 69.7, 83.2),
    }),
    "4": PaperTable("4", "Table 4: guidance during training (Cityscapes)", "data.guidance_mode", {
        "retrieval": PaperRow("retrieval original / GT w/o", 47.7, 66.3, 82.5),
        "distorted-retrieval": PaperRow("retrieval distorted / GT w/o", 48.8, 65.3, 82.6),
        "distorted-gt": PaperRow("retrieval w/o / GT distorted", 49.0, 64.9, 82.1),
        "retrieval+original-gt": PaperRow("retrieval original / GT original", 52.8, 64.0, 81.2),
        "retrieval+distorted-gt": PaperRow("retrieval original / GT distorted (ours)", 45.5, 69.7, 83.2),
    }),
    "A": PaperTable("A", "Table A: segmentation loss (Cityscapes)", "loss.lambda_seg", {
        0.0: PaperRow("without L_seg", 46.8, 66.3, 82.7),
        5.0: PaperRow("with L_seg (×5)", 45.5, 69.7, 83.2),
    }),
    "B": PaperTable("B", "Table B: pasted rank, reported as its mean score (Cityscapes, FID only)", "compose.rank", {
        0: PaperRow("rank 0 (paper: 0.15)", 45.49, None, None),
        50: PaperRow("rank 50 (paper: 0.25)", 46.38, None, None),
        254: PaperRow("rank 254 (paper: 0.35)", 48.18, None, None),
        528: PaperRow("rank 528 (paper: 0.45)", 48.3, None, None),
        858: PaperRow("rank 858 (paper: 0.55)", 50.56, None, None),
        990: PaperRow("rank 990 (paper: 0.58)", 51.04, None, None),
    }),
}

#: Table B's printed value ("non-similarity threshold") per pasted rank, as we read it: the mean
#: score of the rank-r candidate (module docstring; the rank assignment is inferred).
TABLE_B_MEAN_SCORE = {0: 0.15, 50: 0.25, 254: 0.35, 528: 0.45, 858: 0.55, 990: 0.58}


def table_for_params(keys: set[str] | list[str]) -> PaperTable | None:
    """The table whose varied key is among ``keys`` (the params that differ between runs), if exactly one."""
    hits = [t for t in TABLES.values() if t.param in set(keys)]
    return hits[0] if len(hits) == 1 else None
