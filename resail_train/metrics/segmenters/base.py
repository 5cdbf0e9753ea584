"""What every evaluation segmenter shares: the :class:`Segmenter` interface (``predict`` on uint8
RGB batches, multi-scale, ``label_lut``), strict loading of published checkpoints, and the ignore
index. The networks live one per module beside this one; :mod:`.registry` picks one by name."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

IGNORE = 255


# --------------------------------------------------------------------------- checkpoint loading
def _describe(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    return f"{len(keys)} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})"


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (``weights_only``; ``module.``/``state_dict`` unwrapped)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, f"{what} weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle/IO errors: not a usable checkpoint
        raise ConfigError(p, f"cannot read {what} weights ({type(err).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items()):
        raise ConfigError(p, f"not a {what} checkpoint (no state dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_strict(model: nn.Module, path: str | Path, what: str,
                      state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Load ``path`` into ``model`` with ``strict=True``; a foreign file → one-line ConfigError naming it."""
    state = read_state_dict(path, what) if state is None else state
    expected = model.state_dict()
    for key, value in expected.items():  # BatchNorm step counters do not change eval outputs
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_describe(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append(f"shape mismatches {len(shapes)} ({'; '.join(shapes[:2])})")
    if problems:
        raise ConfigError(path, f"not a {what} checkpoint: {', '.join(problems)}")
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- the common predictor
def to_tensor(images) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (numpy or torch) → float ``[N, 3, H, W]`` in 0..255."""
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 RGB images [N, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float()


class Segmenter:
    """A segmentation network with its preprocessing and multi-scale protocol.

    Subclasses set ``name``, ``dataset``, ``num_classes``, ``default_scales`` and implement
    :meth:`normalise` (0..255 RGB → network input), :meth:`scores` (network input → per-class
    scores at the input's size) and :meth:`label_lut`. ``combine`` is how per-scale score maps
    (each upsampled bilinearly to H×W) are merged: ``"mean"`` or ``"max"``.
    """

    name = "segmenter"
    dataset = ""
    num_classes = 0
    default_scales: tuple[float, ...] = (1.0,)
    combine = "mean"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", weights: Sequence[str] = ()) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.weights = [str(w) for w in weights]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_lut(self, meta) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scaled_inputs(self, x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
        """The RGB 0..255 batch resized for each scale (bilinear; scale 1 = unchanged)."""
        if not scales or any(float(s) <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {scales}")
        h, w = x.shape[-2:]
        out = []
        for s in scales:
            if float(s) == 1.0:
                out.append(x)
            else:
                size = (max(1, int(round(h * float(s)))), max(1, int(round(w * float(s)))))
                out.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return out

    @torch.no_grad()
    def predict_scores(self, images, scales: Sequence[float] | None = None) -> torch.Tensor:
        """Merged class scores ``[N, num_classes, H, W]`` (float, on the CPU)."""
        x = to_tensor(images).to(self.device)
        h, w = x.shape[-2:]
        scales = self.default_scales if scales is None else tuple(scales)
        merged = None
        for xs in self.scaled_inputs(x, scales):
            sc = self.scores(self.normalise(xs))
            if sc.shape[-2:] != (h, w):
                sc = F.interpolate(sc, size=(h, w), mode="bilinear", align_corners=False)
            if merged is None:
                merged = sc
            elif self.combine == "max":
                merged = torch.maximum(merged, sc)
            else:
                merged = merged + sc
        return merged.cpu()

    def predict(self, images, scales: Sequence[float] | None = None) -> torch.Tensor:
        """uint8 RGB ``[N, H, W, 3]`` → int64 ``[N, H, W]`` in the network's class indices."""
        return self.predict_scores(images, scales).argmax(1).to(torch.int64)

    def map_labels(self, labels: np.ndarray, meta) -> np.ndarray:
        """A label map in the dataset's raw class ids → the network's indices (``IGNORE`` = not scored)."""
        lut = self.label_lut(meta)
        raw = np.asarray(labels).astype(np.int64)
        out = np.full(raw.shape, IGNORE, np.int64)
        ok = (raw >= 0) & (raw < len(lut))
        out[ok] = lut[raw[ok]]
        return out

    def class_ids_of(self, meta) -> np.ndarray:
        """Inverse of :meth:`label_lut`: for each network index the dataset class id it scores (the
        lowest when several map to it), ``meta.ignore_id`` for indices no class of ``meta`` maps to."""
        lut = np.asarray(self.label_lut(meta), np.int64)
        inv = np.full(int(self.num_classes), int(meta.ignore_id), np.int64)
        done = np.zeros(int(self.num_classes), bool)
        for raw in sorted(int(c) for c in meta.ids.tolist()):
            k = int(lut[raw]) if 0 <= raw < len(lut) else IGNORE
            if 0 <= k < len(inv) and not done[k]:
                inv[k], done[k] = raw, True
        return inv

    def label_map(self, image: np.ndarray, meta, size: tuple[int, int] | None = None,
                  scales: Sequence[float] | None = None) -> np.ndarray:
        """A photo (H×W×3 uint8 RGB) → its label map in ``meta``'s class ids (H×W int64), predicted at
        ``size`` (H, W; the photo antialias-resized, the prediction resized back nearest) or at the
        photo's own size."""
        from pipeline.resize import resize_image, resize_index_map

        image = np.asarray(image, np.uint8)
        h, w = image.shape[:2]
        x = image if size is None or tuple(size) == (h, w) else resize_image(image, int(size[0]), int(size[1]))
        pred = self.predict(np.array(x[None], np.uint8, copy=True), scales)[0].numpy()  # writable for torch
        out = self.class_ids_of(meta)[np.clip(pred, 0, int(self.num_classes) - 1)]
        return out if out.shape == (h, w) else resize_index_map(out, h, w)

    def describe(self) -> str:
        return f"{self.name} ({self.dataset}, {self.num_classes} classes)"


def split_weights(weights) -> list[str]:
    """``"a.pth,b.pth"`` / a path / a list → list of paths."""
    if weights is None:
        return []
    if isinstance(weights, (str, Path)):
        return [w.strip() for w in str(weights).split(",") if w.strip()]
    return [str(w) for w in weights]
