"""Shared fixtures: a tiny folder-format dataset with known segments, and the repo paths."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TOY_CLASSES = {
    "name": "toy",
    "ignore_id": 255,
    "classes": [
        {"id": 0, "name": "sky", "thing": False},
        {"id": 1, "name": "road", "thing": False},
        {"id": 2, "name": "tree", "thing": False},
        {"id": 3, "name": "car", "thing": True},
        {"id": 4, "name": "person", "thing": True},
    ],
}


def toy_label_map(rng: np.random.Generator, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A street-like map: sky over road, a few trees, cars and people (with instance ids)."""
    lab = np.zeros((h, w), np.uint8)
    lab[h // 2:] = 1
    inst = np.zeros((h, w), np.uint16)
    for k in range(int(rng.integers(1, 3))):
        x = int(rng.integers(0, w - 10))
        lab[int(rng.integers(2, 8)):h // 2, x:x + int(rng.integers(4, 10))] = 2
    nid = 1
    for cls in (3, 4):
        for _ in range(int(rng.integers(1, 3))):
            y, x = int(rng.integers(h // 3, h - 10)), int(rng.integers(0, w - 12))
            hh, ww = int(rng.integers(5, 10)), int(rng.integers(5, 12))
            lab[y:y + hh, x:x + ww] = cls
            inst[y:y + hh, x:x + ww] = nid
            nid += 1
    lab[:2, :3] = 255  # some void
    return lab, inst


def make_toy_dataset(root: Path, n_train: int = 6, n_val: int = 2, seed: int = 0, instances: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "labels") + (("instances",) if instances else ()):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lab, inst = toy_label_map(rng)
            img = rng.integers(0, 256, (*lab.shape, 3), dtype=np.uint8)
            stem = f"{split}_{i:03d}"
            cv2.imwrite(str(root / split / "images" / f"{stem}.png"), img)
            cv2.imwrite(str(root / split / "labels" / f"{stem}.png"), lab)
            if instances:
                cv2.imwrite(str(root / split / "instances" / f"{stem}.png"), inst)
    return root


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "toy")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not present at {SHARED_DATA} (only in the developers' checkout)")
    return SHARED_DATA
