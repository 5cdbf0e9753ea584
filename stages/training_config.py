"""The training config a training command runs with: ``--config``, then ``train.config`` of
params.yaml (default ``demo``), with overrides applied in this order: ``train.overrides`` of
params.yaml (a list of ``section.key=value``), ``train.set`` of params.yaml (``train`` only), then the
``--set`` options. Shared by ``resail train``, ``resail train-segnet`` and ``resail train-eval-segnet``.
"""
from __future__ import annotations

import json

from pipeline.errors import ConfigError
from resail_train.config import flatten
from stages.params import Params


def overrides(p: Params, cli: tuple[str, ...]) -> list[str]:
    """``train.overrides`` of params.yaml (a string or a list), then ``cli``."""
    base = p.get("train", "overrides") or []
    if isinstance(base, str):
        base = [base]
    return [str(x) for x in base] + list(cli)


def param_sets(p: Params) -> list[str]:
    """``train.set`` of params.yaml (nested ``section: {key: value}``, null = keep) as ``section.key=value``.

    A DVC experiment can only change params.yaml, so this mapping is how ``dvc exp run -S
    train.set.model.norm=spade`` reaches a config key; values are written as JSON, which the
    config's YAML override parser reads back unchanged.
    """
    sets = p.get("train", "set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(p.source, "train.set must be a mapping of config sections")
    return [f"{k}={json.dumps(v)}" for k, v in flatten(sets).items() if v is not None and v != {}]


def load_training_config(p: Params, config: str | None, sets: tuple[str, ...], with_param_sets: bool = False):
    """The validated :class:`resail_train.config.TrainConfig` (see the module docstring)."""
    from resail_train.config import load_config

    extra = param_sets(p) if with_param_sets else []
    return load_config(p.get("train", "config", config, "demo"), overrides(p, tuple(extra) + tuple(sets)))
