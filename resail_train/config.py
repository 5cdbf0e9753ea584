"""Training configurations: ``resail_train/configs/<name>.yaml`` or a YAML file of the user's.

A config is a mapping of sections (``data``, ``model``, ``optim``, ``loss``, ``segnet``, ``log``)
plus a few top-level keys. Every key of :data:`SCHEMA` must be present after inheritance; unknown
keys are errors (typos do not pass silently). A user config may start with ``base: <name|path>``
and then give only what differs; ``--set section.key=value`` overrides come last (values are
parsed as YAML, so ``--set optim.batch_size=8`` is an int and ``--set data.load_size=null`` None).

Every problem is a :class:`pipeline.errors.ConfigError` naming the config file.

Built-in configs (see each file's header for the paper values they carry):

* ``demo`` — the camvid_demo run of ``make demo``: trains in minutes on 2 CPU cores.
* ``camvid96`` — the small-scale Table 3 on full CamVid (docs/experiments.md) at 96×128 (the demo model).
* ``cityscapes``, ``ade20k``, ``ade20k-outdoor``, ``coco-stuff`` — the paper's settings (docs/method.md §6)
  with the released ``settings.sh`` global batch sizes (3, 8, 2, 3) and 100 + 100 epochs; they refuse
  to start without VGG19 weights (``loss.vgg_required``).

Sizes are bounded (:data:`SIZE_RANGES`): a typo such as ``model.ngf: 100000`` would otherwise build a
network of terabytes before anything reports it. Each range holds the paper configs with room to
spare (paper values in brackets):

* ``model.ngf``, ``model.ndf``: 1..256 [64] — the generator's widths grow with ngf², 256 is already
  ~16× the paper's parameter count;
* ``model.norm_hidden``: 1..1024 [128] (the SPADE/RESAIL modulation MLP width);
* ``model.num_upsampling``: 0..7 [5 ADE20K/COCO, 6 Cityscapes; SPADE's "most" is 7];
* ``model.n_layers_D``: 1..6 [4]; ``model.num_D``: 1..4 [2];
* ``segnet.base_width``: 2..512 [128];
* ``data.crop_size``, ``data.load_size``: each side 1..4096 [up to 256×512; full Cityscapes is 1024×2048];
* ``optim.batch_size``, ``segnet.batch_size``: 1..1024 [3..32].

Keys added later (``data.guidance_mode``, ``loss.vgg_input``, …) are filled from
:data:`LEGACY_DEFAULTS` — the value that reproduces what an older config or checkpoint meant — when
a config lacks them; the retired ``loss.retrieval_pass: false`` reads as ``data.guidance_mode:
distorted-gt``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from pipeline.errors import ConfigError
from resail_train.guidance_modes import MODE_NAMES as GUIDANCE_MODE_NAMES
from resail_train.models.norms.registry import norm_names

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_NAMES = ("demo", "cityscapes", "ade20k", "ade20k-outdoor", "coco-stuff", "camvid96")

VGG_HELP = ("the VGG19 perceptual loss needs ImageNet VGG19 weights: a torchvision-format state dict "
            "(keys features.N.weight/bias), e.g. torchvision's vgg19-dcbb9e9d.pth from "
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth; pass --vgg-weights PATH "
            "(or set vgg_weights in the config / train.vgg_weights in params.yaml)")


# --------------------------------------------------------------------------- value checkers
Check = Callable[[Any], Any]  # returns the normalised value or raises ValueError(reason)


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        if hi is not None and not lo <= v <= hi:
            raise ValueError(f"must be in {lo}..{hi}, got {v}")
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        return int(v)
    return check


#: ``key: (lo, hi)`` of every size that scales memory; see the module docstring for the paper values.
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "model.ngf": (1, 256),
    "model.ndf": (1, 256),
    "model.norm_hidden": (1, 1024),
    "model.num_upsampling": (0, 7),
    "model.n_layers_D": (1, 6),
    "model.num_D": (1, 4),
    "segnet.base_width": (2, 512),
    "optim.batch_size": (1, 1024),
    "segnet.batch_size": (1, 1024),
    "data.crop_size": (1, 4096),  # per side
    "data.load_size": (1, 4096),  # per side
}


def _bounded(key: str) -> Check:
    return _int(*SIZE_RANGES[key])


def _float(lo: float | None = None, hi: float | None = None) -> Check:
    def check(v):
        if isinstance(v, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"expected a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"expected a number, got {v!r}")
        v = float(v)
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {v}")
        return v
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _str(v):
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def _choice(*options: str) -> Check:
    def check(v):
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _optional(inner: Check) -> Check:
    def check(v):
        return None if v is None else inner(v)
    return check


def _size(key: str) -> Check:
    """``[H, W]`` (or one int for a square), each side in ``SIZE_RANGES[key]``."""
    lo, hi = SIZE_RANGES[key]

    def check(v):
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v, v]
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"expected [height, width] of integers, got {v!r}")
        if not all(lo <= x <= hi for x in v):
            raise ValueError(f"each side must be in {lo}..{hi}, got {list(v)!r}")
        return [int(v[0]), int(v[1])]
    return check


SCHEMA: dict[str, Any] = {
    "name": _str,
    "seed": _int(0),
    "deterministic": _bool,
    "vgg_weights": _optional(_str),
    "data": {
        "split": _str,
        "load_size": _optional(_size("data.load_size")),
        "allow_resize": _bool,  # accept a load_size that differs from the cache's --resize (optional, default false)
        "crop_size": _size("data.crop_size"),
        "flip": _bool,
        "guidance_sampling": _choice("rank0", "topk"),
        "guidance_mode": _choice(*GUIDANCE_MODE_NAMES),  # paper Table 4 (resail_train/guidance_modes.py)
        # distorted GT: one of the K variants of distortions.h5 (cached) or drawn fresh per sample and
        # epoch in the loader workers, as the released code does (online); optional, default cached
        "distortion": _choice("cached", "online"),
        "topk": _int(1),
        "instance_edges": _bool,
        "num_workers": _int(0),
    },
    "model": {
        "ngf": _bounded("model.ngf"),
        "norm": lambda v: _choice(*norm_names())(v),  # the registry in resail_train/models/norms
        "norm_hidden": _bounded("model.norm_hidden"),
        "num_upsampling": _bounded("model.num_upsampling"),
        "ndf": _bounded("model.ndf"),
        "n_layers_D": _bounded("model.n_layers_D"),
        "num_D": _bounded("model.num_D"),
    },
    "optim": {
        "batch_size": _bounded("optim.batch_size"),
        "epochs": _int(1),
        "decay_epochs": _int(0),
        "lr_G": _float(0.0),
        "lr_D": _float(0.0),
        "beta1": _float(0.0, 1.0),
        "beta2": _float(0.0, 1.0),
        "ema_decay": _float(0.0, 1.0),
        "amp_dtype": _choice("bf16", "fp16"),
    },
    "loss": {
        "lambda_fm": _float(0.0),
        "lambda_vgg": _float(0.0),
        "lambda_seg": _float(0.0),
        "vgg_required": _bool,
        "vgg_input": _choice("raw", "imagenet"),  # raw [-1, 1] as SPADE/released; imagenet = mean/std first
    },
    "segnet": {
        "path": _optional(_str),
        "base_width": _bounded("segnet.base_width"),
        "spectral": _bool,
        "batch_size": _bounded("segnet.batch_size"),
        "epochs": _int(1),
        "lr": _float(0.0),
        "val_split": _optional(_str),
        "eval_every": _int(1),
    },
    "log": {
        "scalar_every": _int(1),
        "sample_every": _int(1),
        "n_samples": _int(1),
        "latest_every": _int(1),
        "checkpoint_every": _int(1),
        "fid_every": _int(0),  # validation FID every N steps, checkpoints/best.pt; 0 = off
        "fid_images": _optional(_int(2)),  # the fixed validation subset (first N images of fid_split); null = all
        "fid_split": _str,
    },
}


# --------------------------------------------------------------------------- config object
class Section:
    """Attribute access to one validated section (``cfg.data.crop_size``)."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Section({self.__dict__!r})"


@dataclass
class TrainConfig:
    """A validated configuration. ``values`` is the plain nested dict (YAML/JSON/checkpoint safe)."""

    values: dict
    source: str

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is None or name not in values:
            raise AttributeError(name)
        v = values[name]
        return Section(v) if isinstance(v, dict) else v

    def to_dict(self) -> dict:
        return copy.deepcopy(self.values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.values, sort_keys=False)

    def with_overrides(self, overrides: Iterable[str] | dict) -> "TrainConfig":
        data = copy.deepcopy(self.values)
        apply_overrides(data, overrides, self.source)
        return TrainConfig(validate(data, self.source), self.source)


# --------------------------------------------------------------------------- loading
def resolve_config_path(name_or_path: str | Path) -> Path:
    """A built-in name → its file; anything else is a path that must exist."""
    s = str(name_or_path)
    if s in CONFIG_NAMES:
        return CONFIG_DIR / f"{s}.yaml"
    p = Path(s)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in s or "\\" in s:
        if not p.is_file():
            raise ConfigError(p, "config file not found")
        return p
    raise ConfigError(s, f"unknown config name (built-in: {', '.join(CONFIG_NAMES)}; or give a path to a YAML file)")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read config ({e.strerror or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "top level must be a mapping of sections")
    return data


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(path, "config inherits from itself (base: cycle)")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(path, f"base: expected a config name or path, got {base!r}")
    base_path = Path(base)
    if base not in CONFIG_NAMES and not base_path.is_absolute():
        base_path = path.parent / base_path
    parent = resolve_config_path(base if base in CONFIG_NAMES else base_path)
    return _merge(_load_raw(parent, seen + (path,)), data)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str] | dict | None, source: str) -> None:
    """Apply ``section.key=value`` strings (or a ``{dotted key: value}`` dict) in place."""
    if not overrides:
        return
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError(source, f"override {ov!r}: expected section.key=value")
            k, v = ov.split("=", 1)
            parsed.append((k.strip(), _parse_scalar(v)))
        items = parsed
    for key, value in items:
        parts = key.split(".")
        node = data
        schema: Any = SCHEMA
        for part in parts[:-1]:
            if not isinstance(schema, dict) or not isinstance(schema.get(part), dict):
                raise ConfigError(source, f"override {key!r}: unknown section {part!r}")
            schema = schema[part]
            node = node.setdefault(part, {})
        if not isinstance(schema, dict) or parts[-1] not in schema or isinstance(schema[parts[-1]], dict):
            raise ConfigError(source, f"override {key!r}: unknown key")
        node[parts[-1]] = value


#: Keys added after configs were first written, with the value that reproduces what a config (or a
#: checkpoint's stored config) written before them meant: such a config gets it when the key is missing.
LEGACY_DEFAULTS: dict[str, Any] = {
    "data.guidance_mode": "retrieval+distorted-gt",  # the two passes every earlier run trained with
    "loss.vgg_input": "imagenet",  # earlier runs standardised the VGG input with the ImageNet mean/std
    "data.allow_resize": False,  # the cache resolution check applies unless set
    "log.fid_every": 0,  # no validation FID unless asked for
    "log.fid_images": 50,
    "log.fid_split": "val",
    "data.distortion": "cached",  # the pre-generated variants every earlier run read
}


def upgrade_legacy(data: dict) -> dict:
    """Fill :data:`LEGACY_DEFAULTS` and translate the retired ``loss.retrieval_pass`` (in place).

    ``retrieval_pass: false`` meant "distorted-GT pass only" = ``data.guidance_mode: distorted-gt``;
    ``true`` was the default two-pass mode, so it changes nothing.
    """
    loss = data.get("loss")
    if isinstance(loss, dict) and "retrieval_pass" in loss:
        if loss.pop("retrieval_pass") is False and isinstance(data.get("data"), dict):
            data["data"]["guidance_mode"] = "distorted-gt"
    for dotted, value in LEGACY_DEFAULTS.items():
        sec, key = dotted.split(".")
        if isinstance(data.get(sec), dict):
            data[sec].setdefault(key, value)
    return data


def validate(data: dict, source: str) -> dict:
    """Check every key of :data:`SCHEMA` (present, known, well typed) and the cross-key rules."""
    data = upgrade_legacy(copy.deepcopy(data))

    def walk(schema: dict, node: Any, prefix: str) -> dict:
        if not isinstance(node, dict):
            raise ConfigError(source, f"{prefix.rstrip('.') or 'config'}: expected a mapping")
        unknown = sorted(set(node) - set(schema))
        if unknown:
            raise ConfigError(source, f"unknown key(s): {', '.join(prefix + k for k in unknown)}")
        out = {}
        for key, check in schema.items():
            if key not in node:
                raise ConfigError(source, f"missing key: {prefix}{key}")
            if isinstance(check, dict):
                out[key] = walk(check, node[key], f"{prefix}{key}.")
            else:
                try:
                    out[key] = check(node[key])
                except ValueError as e:
                    raise ConfigError(source, f"{prefix}{key}: {e}") from None
        return out

    v = walk(SCHEMA, data, "")
    crop, load = v["data"]["crop_size"], v["data"]["load_size"]
    if load is not None and (crop[0] > load[0] or crop[1] > load[1]):
        raise ConfigError(source, f"data.crop_size {crop} is larger than data.load_size {load}")
    factor = 2 ** v["model"]["num_upsampling"]
    if crop[0] % factor or crop[1] % factor:
        raise ConfigError(source, f"data.crop_size {crop} must be divisible by 2**model.num_upsampling = {factor}")
    if v["optim"]["decay_epochs"] > v["optim"]["epochs"]:
        raise ConfigError(source, "optim.decay_epochs must not exceed optim.epochs")
    return v


def load_config(name_or_path: str | Path, overrides: Iterable[str] | dict | None = None) -> TrainConfig:
    """Load, inherit (``base:``), override and validate a config by built-in name or path."""
    path = resolve_config_path(name_or_path)
    data = _load_raw(path)
    apply_overrides(data, overrides, str(path))
    return TrainConfig(validate(data, str(path)), str(path))


def config_from_dict(values: dict, source: str = "<checkpoint>") -> TrainConfig:
    """A config stored in a checkpoint or run folder (validated again)."""
    return TrainConfig(validate(copy.deepcopy(values), source), source)


def config_fingerprint(values: dict, sections: Iterable[str] = ("model",)) -> str:
    """A stable text of the sections that must match between a checkpoint and a resumed run."""
    return json.dumps({s: values.get(s) for s in sections}, sort_keys=True)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; an empty mapping and a list are kept as values (the dotted keys
    of ``--set``, of ``dvc exp -S train.set.…`` and of the run comparison)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
