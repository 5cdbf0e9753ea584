"""Rebuild ``data/camvid_demo`` from the CamVid folder-format copy (provenance of the demo data).

Usage: python data/make_camvid_demo.py SRC_ROOT [DST_ROOT]
Takes 80 train and 20 val frames evenly spaced in file-name order, downscales images to 240×180
(area interpolation, JPEG quality 92) and labels with nearest neighbour (PNG).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

SIZE = (240, 180)  # W, H
COUNTS = {"train": 80, "val": 20}


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "classes.json", dst / "classes.json")
    for split, n in COUNTS.items():
        stems = sorted(p.stem for p in (src / split / "images").glob("*.png"))
        pick = [stems[i] for i in np.linspace(0, len(stems) - 1, n).round().astype(int)]
        for sub in ("images", "labels"):
            (dst / split / sub).mkdir(parents=True, exist_ok=True)
        for stem in pick:
            img = cv2.imread(str(src / split / "images" / f"{stem}.png"), cv2.IMREAD_COLOR)
            lab = cv2.imread(str(src / split / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst / split / "images" / f"{stem}.jpg"), cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(dst / split / "labels" / f"{stem}.png"), cv2.resize(lab, SIZE, interpolation=cv2.INTER_NEAREST))
    json.loads((dst / "classes.json").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent / "camvid_demo")
