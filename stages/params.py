"""``params.yaml`` as the source of option defaults for every stage.

Precedence: an explicit command-line option, then ``params.yaml`` (``--params`` or ./params.yaml),
then the built-in default of the stage. DVC passes the important options explicitly and lists the
params sections as dependencies, so ``dvc repro`` and a hand-run stage do the same thing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path | None) -> dict:
    p = Path(path) if path else DEFAULT_PARAMS
    if not p.is_file():
        if path:
            raise ConfigError(p, "params file not found")
        return {}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(p, f"invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(p, "top level must be a mapping")
    return data


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
