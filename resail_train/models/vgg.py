"""VGG19 feature extractor for the perceptual loss, defined here (no torchvision dependency).

``make_vgg19_features()`` rebuilds torchvision's ``vgg19().features`` (configuration "E", no batch
norm) with the same module indices, so a torchvision-format state dict (keys ``features.N.weight``
and ``features.N.bias`` for the 16 convs at N = 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28,
30, 32, 34; any ``classifier.*`` keys are ignored) loads into :class:`VGG19Features` unchanged.

:class:`VGG19Features` returns relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices 1, 6, 11, 20,
29) — the five layers of the pix2pixHD/SPADE VGG loss. Inputs are images in [-1, 1], fed to the
network as they are by default (``normalize_input=False``), as SPADE and the released RESAIL code
do (their ``VGG19`` in ``models/networks/architecture.py`` applies no normalisation and the loader's
``Normalize((0.5,)*3, (0.5,)*3)`` makes the input [-1, 1]). ``normalize_input=True`` (config
``loss.vgg_input: imagenet``) maps them to [0, 1] and standardises them with the ImageNet mean/std
the torchvision weights were trained with.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.errors import ConfigError

# torchvision cfg "E": channel counts, "M" = 2×2 max pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices into ``features``).
RELU_INDICES = (1, 6, 11, 20, 29)
LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_vgg19_features() -> nn.Sequential:
    """``nn.Sequential`` of 37 modules with torchvision's ``vgg19().features`` indexing."""
    layers: list[nn.Module] = []
    in_c = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_c, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_c = v
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """``VGG19Features(normalize_input=False, requires_grad=False)``.

    ``forward(x [B, 3, H, W] in [-1, 1]) -> [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]``
    (channels 64, 128, 256, 512, 512 at H, H/2, H/4, H/8, H/16). ``state_dict()`` keys are
    ``features.N.weight/bias`` exactly as torchvision's VGG19. Parameters are frozen unless
    ``requires_grad``; gradients still flow to the *input* (needed for the generator loss).
    """

    def __init__(self, normalize_input: bool = False, requires_grad: bool = False) -> None:
        super().__init__()
        self.features = make_vgg19_features()
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(requires_grad)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize_input:
            x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        last = RELU_INDICES[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in RELU_INDICES:
                out.append(x)
            if i == last:
                break
        return out


def _one_line(err: Exception) -> str:
    """The telling line of a (multi-line) torch.load error: the unpickler's reason when there is
    one (e.g. "Unsupported global: …" for a pickle that is not plain tensors), else the first line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln or ln.startswith("Unsupported"):
            return ln
    return lines[0] if lines else type(err).__name__


def load_vgg19(path: str | Path, normalize_input: bool = False) -> VGG19Features:
    """Frozen :class:`VGG19Features` in eval mode from a torchvision-format VGG19 state dict.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``; a
    ``{"state_dict": …}`` wrapper and a ``module.`` prefix are tolerated. Raises
    :class:`pipeline.errors.ConfigError` naming ``path`` when the file is missing, unreadable, not a
    state dict, or lacks / mis-shapes any ``features.N`` conv tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "VGG19 weights not found (expected a torchvision-format vgg19 state dict, "
                                "e.g. vgg19-dcbb9e9d.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is a config problem
        raise ConfigError(path, f"cannot read VGG19 weights: {type(err).__name__}: {_one_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(path, "VGG19 weights: not a state dict of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

    model = VGG19Features(normalize_input=normalize_input)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(missing[:4]) + (" …" if len(missing) > 4 else "")
        raise ConfigError(path, f"VGG19 weights: {len(missing)} of {len(expected)} 'features.N' tensors "
                                f"missing ({shown}); expected torchvision vgg19 keys")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(path, f"VGG19 weights: wrong shapes: {'; '.join(bad[:3])}")
    model.load_state_dict({k: state[k].float() for k in expected})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
