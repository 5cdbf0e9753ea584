"""Published network weights that fetch themselves: ``--weights auto`` / ``--vgg-weights auto``.

Every file comes from the address its authors publish, found in their repository (the ``page`` of
each entry below, also listed in docs/evaluation.md and docs/scoring.md):

============================  ==========================================================================
``vgg19``                     https://download.pytorch.org/models/vgg19-dcbb9e9d.pth — torchvision
                              ``torchvision/models/vgg.py`` ``model_urls['vgg19']``; torchvision is
                              BSD-3-Clause (no separate licence is stated for the ImageNet-trained weights).
                              The name carries the first 8 hex digits of the file's sha256: checked.
``drn-d-105``                 ``drn-d-105_ms_cityscapes.pth`` — fyu/drn README ("You can download the
                              pretrained DRN models on Cityscapes here: http://go.yf.io/drn-cityscapes-models"),
                              BSD-3-Clause. The authors publish a shared *folder*, not a file address:
                              ``auto`` cannot download it; the error says where to put it.
``upernet-r101-encoder``      http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/encoder_epoch_50.pth
``upernet-r101-decoder``      …/decoder_epoch_50.pth — CSAILVision/semantic-segmentation-pytorch README
                              ("All pretrained models can be found at: http://sceneparsing.csail.mit.edu/model/pytorch")
                              with ``config/ade20k-resnet101-upernet.yaml`` (``checkpoint: epoch_50.pth``),
                              BSD-3-Clause.
``deeplabv2-r101``            https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/deeplabv2_resnet101_msc-cocostuff164k-100000.pth
                              — kazuto1011/deeplab-pytorch README (COCO-Stuff 164k row), MIT.
============================  ==========================================================================

Only torchvision publishes a hash (the name's 8-digit sha256 prefix); for the others the sha256 of the
file used is recorded in every fingerprint (``score.json``, ``metrics.json``) instead.

Files live in ``$RESAIL_HOME/weights/<relpath>`` (default ``~/.cache/resail``). A file already there
is used without network; VGG19 is also taken from torch's hub cache
(``torch.hub.get_dir()/checkpoints``, default ``~/.cache/torch/hub/checkpoints``). A download goes to
a temporary file beside the target (with a tqdm bar on stderr), is checked (length against
Content-Length, hash prefix where published, ``torch.load(weights_only=True)``) and only then renamed
into place, so the cache never holds half a file. Any failure (offline, HTTP error, truncated or wrong
file) is one :class:`~pipeline.errors.ConfigError` line naming the address and the path where the file
can be put by hand. ``$RESAIL_WEIGHTS_URL_BASE`` (or ``url_base=``) replaces every address by
``<base>/<relpath>`` (a mirror; the tests' local server).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

HOME_ENV = "RESAIL_HOME"
URL_BASE_ENV = "RESAIL_WEIGHTS_URL_BASE"
AUTO = "auto"
TIMEOUT_S = 60


@dataclass(frozen=True)
class WeightFile:
    key: str
    relpath: str  # under $RESAIL_HOME/weights/ (and under a URL base)
    url: str | None  # the published address (None: the authors publish no direct file address)
    page: str  # where the address is published
    licence: str
    what: str
    sha256_prefix: str | None = None  # published part of the hash (torchvision: 8 hex digits in the name)
    hub_name: str | None = None  # file name in torch's hub cache

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


FILES: dict[str, WeightFile] = {f.key: f for f in (
    WeightFile("vgg19", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
               "github.com/pytorch/vision torchvision/models/vgg.py (model_urls['vgg19'])", "BSD-3-Clause (torchvision)",
               "torchvision VGG19 (ImageNet; perceptual loss)", sha256_prefix="dcbb9e9d",
               hub_name="vgg19-dcbb9e9d.pth"),
    WeightFile("drn-d-105", "drn-d-105/drn-d-105_ms_cityscapes.pth", None,
               "github.com/fyu/drn README: http://go.yf.io/drn-cityscapes-models (a shared folder)", "BSD-3-Clause",
               "DRN-D-105 Cityscapes segmenter (fyu/drn)"),
    WeightFile("upernet-r101-encoder", "ade20k-resnet101-upernet/encoder_epoch_50.pth",
               "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/encoder_epoch_50.pth",
               "github.com/CSAILVision/semantic-segmentation-pytorch README + config/ade20k-resnet101-upernet.yaml",
               "BSD-3-Clause", "UperNet-R101 ADE20K encoder (CSAILVision)"),
    WeightFile("upernet-r101-decoder", "ade20k-resnet101-upernet/decoder_epoch_50.pth",
               "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/decoder_epoch_50.pth",
               "github.com/CSAILVision/semantic-segmentation-pytorch README + config/ade20k-resnet101-upernet.yaml",
               "BSD-3-Clause", "UperNet-R101 ADE20K decoder (CSAILVision)"),
    WeightFile("deeplabv2-r101", "deeplabv2/deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
               "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
               "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
               "github.com/kazuto1011/deeplab-pytorch README (COCO-Stuff 164k, 'Download')", "MIT",
               "DeepLabV2-R101 COCO-Stuff 164k segmenter (kazuto1011)"),
)}

#: the file(s) each published segmenter loads, in its --segmenter-weights order
SEGMENTER_FILES = {"drn-d-105": ("drn-d-105",), "upernet-r101": ("upernet-r101-encoder", "upernet-r101-decoder"),
                   "deeplabv2-r101": ("deeplabv2-r101",)}


def resail_home() -> Path:
    """``$RESAIL_HOME`` (default ``~/.cache/resail``)."""
    raw = os.environ.get(HOME_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "resail"


def cache_path(key: str) -> Path:
    """Where ``key``'s file lives (or is to be put by hand)."""
    return resail_home() / "weights" / FILES[key].relpath


def source_url(key: str, url_base: str | None = None) -> str | None:
    """The address ``key`` downloads from: ``<base>/<relpath>`` with a URL base (argument, then
    ``$RESAIL_WEIGHTS_URL_BASE``), else the published one (None when there is none)."""
    base = url_base if url_base is not None else os.environ.get(URL_BASE_ENV, "").strip() or None
    if base:
        return base.rstrip("/") + "/" + FILES[key].relpath
    return FILES[key].url


def _hub_file(f: WeightFile) -> Path | None:
    if not f.hub_name:
        return None
    try:
        import torch.hub

        p = Path(torch.hub.get_dir()) / "checkpoints" / f.hub_name
    except Exception:  # noqa: BLE001 - no torch hub dir: nothing cached there
        return None
    return p if p.is_file() else None


def find_cached(key: str) -> Path | None:
    """The file of ``key`` already on disk ($RESAIL_HOME, then torch's hub cache for VGG19), else None."""
    p = cache_path(key)
    if p.is_file():
        return p
    return _hub_file(FILES[key])


def sha256_file(path: str | Path) -> str:
    """sha256 of a file. For files in ``$RESAIL_HOME`` the digest is remembered in a ``.<name>.sha256``
    side file while the size and mtime are unchanged (weights are hundreds of MB); other files (the
    user's own) are hashed every time and nothing is written beside them."""
    p = Path(path)
    st = p.stat()
    side = p.with_name(f".{p.name}.sha256")
    try:
        remember = p.resolve().is_relative_to(resail_home().resolve())
    except OSError:
        remember = False
    if remember:
        try:
            rec = json.loads(side.read_text())
            if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
                return str(rec["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if remember:
        try:
            side.write_text(json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
        except OSError:
            pass  # a read-only cache: just do not remember
    return digest


def _fail(f: WeightFile, url: str | None, dest: Path, problem: str) -> ConfigError:
    where = f"from {url}" if url else f"(published at {f.page})"
    return ConfigError(None, f"cannot get the {f.what} weights {where}: {problem}; download {f.filename} by hand "
                             f"and put it at {dest}")


def fetch(key: str, *, url_base: str | None = None, progress: bool = True) -> Path:
    """The local file of ``key``: the cached one, else downloaded atomically (see the module docstring)."""
    if key not in FILES:
        raise ConfigError(None, f"unknown weights {key!r} (known: {', '.join(FILES)})")
    f = FILES[key]
    dest = cache_path(key)
    found = find_cached(key)
    if found is not None:
        return found
    url = source_url(key, url_base)
    if url is None:
        raise _fail(f, None, dest, "the authors publish no direct file address, so it cannot be fetched "
                                   "automatically")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f, url, dest, f"cannot create {dest.parent} ({e.strerror or e})") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{f.filename}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = _download(url, fd, f, progress)
        if f.sha256_prefix and not digest.startswith(f.sha256_prefix):
            raise _fail(f, url, dest, f"sha256 {digest[:16]}… does not start with the published {f.sha256_prefix}")
        _check_loadable(tmp, f, url, dest)
        os.replace(tmp, dest)
    except ConfigError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:  # offline, refused, timeout, HTTP error, disk
        reason = getattr(e, "reason", None) or e
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        raise _fail(f, url, dest, str(reason)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    st = dest.stat()
    try:
        dest.with_name(f".{dest.name}.sha256").write_text(
            json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    except OSError:
        pass
    return dest


def _download(url: str, fd: int, f: WeightFile, progress: bool) -> str:
    """Stream ``url`` into the open file ``fd``; returns the sha256. Short reads are an error."""
    import http.client

    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "resail-weights"})
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f.filename,
                       dynamic_ncols=True)
        got = 0
        try:
            while True:
                try:
                    block = resp.read(1 << 20)
                except http.client.IncompleteRead as e:
                    raise ValueError(f"connection closed after {got + len(e.partial)} of {total} bytes") from None
                if not block:
                    break
                out.write(block)
                h.update(block)
                got += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and got != total:
            raise ValueError(f"truncated download: {got} of {total} bytes")
        if got == 0:
            raise ValueError("empty download")
    return h.hexdigest()


def _check_loadable(path: Path, f: WeightFile, url: str, dest: Path) -> None:
    """A state-dict file torch can read (weights only): a cut or foreign file never enters the cache."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means a bad download
        raise _fail(f, url, dest, f"the downloaded file is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not obj:
        raise _fail(f, url, dest, "the downloaded file holds no state dict")


def is_auto(value) -> bool:
    return value is not None and str(value).strip().lower() == AUTO


def resolve_segmenter_weights(name: str, weights, *, url_base: str | None = None, progress: bool = True):
    """``weights`` unchanged, or for ``auto`` the local files of the published segmenter ``name``."""
    if not is_auto(weights):
        return weights
    if name not in SEGMENTER_FILES:
        raise ConfigError(None, f"--weights auto: segmenter {name!r} has no published weights "
                                f"(auto knows {', '.join(SEGMENTER_FILES)})")
    return [str(fetch(k, url_base=url_base, progress=progress)) for k in SEGMENTER_FILES[name]]


def resolve_vgg_weights(value, *, url_base: str | None = None, progress: bool = True):
    """``--vgg-weights``: a path unchanged, ``auto`` → torchvision's VGG19 file (cached or downloaded)."""
    if not is_auto(value):
        return value
    return str(fetch("vgg19", url_base=url_base, progress=progress))
