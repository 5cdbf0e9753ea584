"""``params.yaml`` as the source of option defaults for every stage.

Precedence: an explicit command-line option, then ``params.yaml`` (``--params`` or ./params.yaml),
then the built-in default of the stage. DVC passes the important options explicitly and lists the
params sections as dependencies, so ``dvc repro`` and a hand-run stage do the same thing.

The file is checked against :data:`SCHEMA` when it is loaded, as strictly as the training configs
(:mod:`resail_train.config`): every section and key is declared with its type, its range or choices
and whether it may be null; a value of another type is refused rather than coerced (``k: 2.5`` is not
2, ``k: true`` is not 1), an unknown section or key is refused with the known ones, and integer keys
take the range of the option they stand for (:mod:`stages.options`). Two places stay free:
``train.set`` (config keys, checked by the training config they reach) and ``train.overrides`` (a list
of ``section.key=value`` strings, likewise).
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.errors import ConfigError
from stages.options import (BATCH_MAX, COUNT_MAX, JOBS_MAX, K_MAX, MASK_SIZE_MAX, PREVIEW_MAX, RANK_MAX, SEED_MAX,
                            THREADS_MAX, VARIANTS_MAX, is_device)

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path | None) -> dict:
    """The params file (``path``, else ./params.yaml when present), checked against :data:`SCHEMA`."""
    p = Path(path) if path else DEFAULT_PARAMS
    if not p.is_file():
        if path:
            raise ConfigError(p, "params file not found")
        return {}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(p, f"invalid YAML ({str(e).splitlines()[0]})") from None
    except ValueError as e:  # an integer longer than Python converts (4300 digits)
        raise ConfigError(p, f"invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(p, "top level must be a mapping")
    check_params(data, str(path) if path else str(p))
    return data


# ============================================================================ the schema
def _shown(v: Any) -> str:
    """A value for an error message, short even when hostile."""
    try:
        text = repr(v)
    except ValueError:  # an int beyond Python's 4300-digit str limit
        return "a number with more than 4300 digits"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Field:
    """One key: ``null`` says whether it may be null (= the stage's default)."""

    null: bool = False

    def expected(self) -> str:
        raise NotImplementedError

    def problem(self, v: Any, cap: int) -> str | None:
        """None when ``v`` is valid, else the message after ``section.key: ``."""
        if v is None:
            return None if self.null else f"expected {self.expected()}, got null"
        if not self.accepts(v, cap):
            return f"expected {self.expected()}{' or null' if self.null else ''}, got {_shown(v)}"
        return None

    def accepts(self, v: Any, cap: int) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Field):
    lo: int = 0
    hi: int = COUNT_MAX
    multiple_of: int = 1

    def expected(self) -> str:
        if self.multiple_of > 1:
            return f"a multiple of {self.multiple_of} in {self.lo}..{self.hi}"
        return f"an integer in {self.lo}..{self.hi}"

    def accepts(self, v, cap):
        return (not isinstance(v, bool) and isinstance(v, int) and self.lo <= v <= self.hi
                and v % self.multiple_of == 0)


@dataclass(frozen=True)
class Num(Field):
    """A number (an integer is one too); ``lo_open``: the lower bound itself is excluded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def expected(self) -> str:
        if self.lo is None and self.hi is None:
            return "a number"
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def accepts(self, v, cap):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            return False
        try:
            x = float(v)
        except OverflowError:
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or x <= self.hi


@dataclass(frozen=True)
class Str(Field):
    def expected(self) -> str:
        return "a string"

    def accepts(self, v, cap):
        return isinstance(v, str)


@dataclass(frozen=True)
class Bool(Field):
    def expected(self) -> str:
        return "true or false"

    def accepts(self, v, cap):
        return isinstance(v, bool)


@dataclass(frozen=True)
class Choice(Field):
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def accepts(self, v, cap):
        return isinstance(v, str) and v in self.choices


@dataclass(frozen=True)
class Device(Field):
    """Any torch device the retrieval takes: auto | cpu | cuda | cuda:N."""

    def expected(self) -> str:
        return "auto, cpu, cuda or cuda:N"

    def accepts(self, v, cap):
        return is_device(v)


@dataclass(frozen=True)
class Names(Field):
    """A comma-separated string or a list of strings; each one of ``choices`` when given."""

    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        return "a comma-separated string or a list of strings"

    def problem(self, v, cap):
        bad = super().problem(v, cap)
        if bad or v is None or not self.choices:
            return bad
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
        for item in items:
            if item and item not in self.choices:
                return f"{_shown(item)} is not one of {', '.join(self.choices)}"
        return None

    def accepts(self, v, cap):
        return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


@dataclass(frozen=True)
class StrList(Field):
    def expected(self) -> str:
        return "a list of strings"

    def accepts(self, v, cap):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)


@dataclass(frozen=True)
class Mapping(Field):
    """Free keys (checked by whatever reads them)."""

    def expected(self) -> str:
        return "a mapping"

    def accepts(self, v, cap):
        return isinstance(v, dict)


@dataclass(frozen=True)
class Resize(Field):
    """A working resolution: ``HxW`` or a shorter side ``S`` (:class:`pipeline.datasets.resized.ResizeSpec`),
    whose smallest output (H·W, or S·S) is within the pixel cap."""

    def expected(self) -> str:
        return "HxW (e.g. 256x512) or a shorter side S (e.g. 256)"

    def accepts(self, v, cap):
        return not isinstance(v, bool) and isinstance(v, (str, int))

    def problem(self, v, cap):
        bad = super().problem(v, cap)
        if bad or v is None:
            return bad
        from pipeline.datasets.resized import ResizeSpec

        try:
            ResizeSpec.parse(v, what="", cap=cap)
        except ConfigError as e:
            return e.problem if "pixel cap" in str(e.problem) else f"expected {self.expected()}, got {_shown(v)}"
        return None


DEVICE_NAMES = ("auto", "cpu", "cuda")
# The choices below are the pipeline's own tuples (tests/e2e/test_hostile_cli.py checks they agree);
# written out so that reading params.yaml imports no stage's code (stages.params is exempt from
# the dvc.yaml code deps because it only parses).
FORMATS = ("folder", "camvid", "cityscapes", "ade20k", "coco-stuff")  # pipeline.datasets.FORMATS
LABEL_SPACES = ("label-ids", "train-ids")  # pipeline.datasets.cityscapes.LABEL_SPACES
SUBSETS = ("all", "outdoor")  # pipeline.datasets.ade20k.SUBSETS
BACKENDS = ("loky", "threads", "dask")  # pipeline.parallel (stages.options.BACKENDS)
PRUNING_MODES = ("image", "dataset", "none")  # pipeline.decompose.segments.PRUNING_MODES
SCALE_TERMS = ("step", "log")  # pipeline.retrieve.retrieval.SCALE_TERMS
EXCLUDE_MODES = ("self", "image")  # pipeline.retrieve.build.EXCLUDE_MODES
KINDS = ("color", "shape", "resolution")  # pipeline.distort.distortions.KINDS
CANVASES = ("black", "real")  # pipeline.distort.distortions.CANVASES
COLOR_TARGET_MODES = ("auto", "retrieval", "class")  # pipeline.distort.build.COLOR_TARGET_MODES
RESOLUTION_REFERENCES = ("source", "working")  # pipeline.distort.build.RESOLUTION_REFERENCES
SEGMENTERS = ("own", "drn-d-105", "upernet-r101", "deeplabv2-r101")  # resail evaluate --segmenter
PIXELS_MAX = 2 ** 40  # limits.max_pixels: a terapixel, far above any image this pipeline reads

SCHEMA: dict[str, dict[str, Field]] = {
    "dataset": {
        "name": Str(null=True), "format": Choice(choices=FORMATS), "root": Str(null=True),
        "splits": Names(null=True), "label_space": Choice(null=True, choices=LABEL_SPACES),
        "subset": Choice(null=True, choices=SUBSETS), "palette": Str(null=True),
    },
    "decompose": {
        "min_area": Int(lo=0), "mask_size": Int(lo=8, hi=MASK_SIZE_MAX, multiple_of=8),
        "preserved_ratio": Num(lo=0, hi=1, lo_open=True), "pruning": Choice(choices=PRUNING_MODES),
        "resize": Resize(null=True), "db_split": Str(), "jobs": Int(lo=0, hi=JOBS_MAX),
        "backend": Choice(choices=BACKENDS), "scheduler": Str(null=True),
        "on_error": Choice(choices=("fail", "skip")),
    },
    "retrieve": {
        "k": Int(lo=1, hi=K_MAX), "max_score": Num(null=True), "alpha": Num(lo=0, hi=1e30),
        "scale_term": Choice(choices=SCALE_TERMS), "exclude": Choice(choices=EXCLUDE_MODES), "device": Device(),
        "threads": Int(null=True, lo=1, hi=THREADS_MAX),
    },
    "compose": {
        "rank": Int(lo=0, hi=RANK_MAX), "jobs": Int(lo=0, hi=JOBS_MAX), "backend": Choice(choices=BACKENDS),
        "scheduler": Str(null=True), "preview": Int(lo=0, hi=PREVIEW_MAX),
    },
    "distort": {
        "variants": Int(lo=1, hi=VARIANTS_MAX), "seed": Int(lo=0, hi=SEED_MAX), "kinds": Names(choices=KINDS),
        "p_color": Num(lo=0, hi=1), "p_shape": Num(lo=0, hi=1), "p_resolution": Num(lo=0, hi=1),
        "scale_min": Num(lo=0, hi=1, lo_open=True), "scale_max": Num(lo=0, hi=1, lo_open=True),
        "paste_rules": Choice(choices=("a1", "free")), "color_targets": Choice(choices=COLOR_TARGET_MODES),
        "canvas": Choice(choices=CANVASES), "resolution_reference": Choice(choices=RESOLUTION_REFERENCES),
        "splits": Names(null=True), "jobs": Int(lo=0, hi=JOBS_MAX), "backend": Choice(choices=BACKENDS),
    },
    "train": {
        "config": Str(), "run_dir": Str(null=True), "device": Choice(choices=DEVICE_NAMES),
        "vgg_weights": Str(null=True), "max_steps": Int(null=True, lo=1), "segnet_max_steps": Int(null=True, lo=1),
        "amp": Bool(), "compile": Bool(), "overrides": StrList(null=True), "set": Mapping(null=True),
    },
    "evaluate": {
        "split": Str(), "inception_weights": Str(null=True), "segmenter": Choice(choices=SEGMENTERS),
        "segmenter_weights": Str(null=True), "batch_size": Int(lo=1, hi=BATCH_MAX),
        "device": Choice(choices=DEVICE_NAMES), "limit": Int(null=True, lo=1),
    },
    "eval_segnet": {"seed": Int(null=True, lo=0, hi=SEED_MAX), "max_steps": Int(null=True, lo=1),
                    "epochs": Int(null=True, lo=1, hi=COUNT_MAX)},
    "report": {"n_images": Int(lo=1), "device": Choice(choices=DEVICE_NAMES)},
    "synthesize": {"rank": Int(lo=0, hi=RANK_MAX), "seed": Int(lo=0, hi=SEED_MAX),
                   "device": Choice(choices=DEVICE_NAMES)},
    "limits": {"max_pixels": Int(null=True, lo=1, hi=PIXELS_MAX)},
}


def _unknown(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{' (did you mean ' + repr(close[0]) + '?)' if close else ''}; known: {', '.join(known)}"


def check_params(data: dict, source: str = "params.yaml") -> None:
    """:class:`ConfigError` (one line: ``<source>: section.key: problem``) unless ``data`` fits :data:`SCHEMA`."""
    for name in data:
        if name not in SCHEMA:
            raise ConfigError(source, f"unknown section {_shown(name)}{_unknown(str(name), list(SCHEMA))}")
    for name, sec in data.items():
        if sec is not None and not isinstance(sec, dict):
            raise ConfigError(source, f"{name}: expected a mapping of keys, got {_shown(sec)}")
    # the pixel cap a resize is checked against: the environment's, else this file's, else the default
    limits = data.get("limits") or {}
    bad = SCHEMA["limits"]["max_pixels"].problem(limits.get("max_pixels"), 0)
    if bad:
        raise ConfigError(source, f"limits.max_pixels: {bad}")
    from pipeline.datasets.base import MAX_PIXELS_ENV, max_pixels

    cap = max_pixels() if os.environ.get(MAX_PIXELS_ENV, "").strip() or not limits.get("max_pixels") \
        else int(limits["max_pixels"])
    for name, sec in data.items():
        fields = SCHEMA[name]
        for key, value in (sec or {}).items():
            if key not in fields:
                raise ConfigError(source, f"{name}.{key}: unknown key{_unknown(str(key), list(fields))}")
            bad = fields[key].problem(value, cap)
            if bad:
                raise ConfigError(source, f"{name}.{key}: {bad}")


class Params:
    """Lookup of ``section.key`` with the precedence above."""

    def __init__(self, data: dict, source: str = "params.yaml") -> None:
        self.data = data
        self.source = source

    def get(self, section: str, key: str, cli_value: Any = None, default: Any = None) -> Any:
        if cli_value is not None:
            return cli_value
        sec = self.data.get(section) or {}
        if not isinstance(sec, dict):
            raise ConfigError(self.source, f"section '{section}' must be a mapping")
        return sec.get(key, default)

    def section(self, section: str) -> dict:
        sec = self.data.get(section) or {}
        if not isinstance(sec, dict):
            raise ConfigError(self.source, f"section '{section}' must be a mapping")
        return sec

    def dataset_cache(self, cli_value: str | None) -> Path:
        """The cache folder of the configured dataset: ``datasets_cache/<dataset.name>``."""
        if cli_value:
            return Path(cli_value)
        name = self.get("dataset", "name")
        if not name:
            raise ConfigError(self.source, "no --cache/--out given and no dataset.name in params")
        return Path("datasets_cache") / str(name)

    def run_dir(self, cli_value: str | None, option: str = "--run") -> Path:
        """The training run folder: the option, else ``train.run_dir``, else ``runs/<dataset.name>``."""
        if cli_value:
            return Path(cli_value)
        rd = self.get("train", "run_dir")
        if rd:
            return Path(rd)
        name = self.get("dataset", "name")
        if not name:
            raise ConfigError(self.source, f"{option} is required (or train.run_dir / dataset.name in params)")
        return Path("runs") / str(name)


def apply_limits(p: Params) -> None:
    """``limits.max_pixels`` → ``$RESAIL_MAX_PIXELS`` (the pixel cap of every image/label reader,
    see pipeline.datasets.base.max_pixels); an already set environment variable wins. Set in the
    environment so that worker processes started later inherit it."""
    import os

    from pipeline.datasets.base import MAX_PIXELS_ENV

    value = p.get("limits", "max_pixels")
    if value is None or os.environ.get(MAX_PIXELS_ENV):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(p.source, f"limits.max_pixels must be a positive integer, got {value!r}")
    os.environ[MAX_PIXELS_ENV] = str(value)


def split_list(value: str | list | None) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [s.strip() for s in str(value).split(",") if s.strip()]
