"""The registry of ResBlk normalisation variants (paper §4.4, Table 3; config key ``model.norm``).

Every variant is a :class:`NormVariant`: how to build one normalisation layer for a ResBlk
(``make_norm(norm_nc, label_nc, hidden)``, called as ``layer(x, seg, cond)``), and optionally a
*guidance encoder* that the generator runs once per forward on the full-resolution guidance image
(``encoder(guidance, seg) -> cond``; SEAN's style encoder). Without an encoder ``cond`` is the guidance
image itself. The generator asks this registry by name and never branches on a name, so a new variant
is one new module plus one line in :data:`_BUILTIN` (or a :func:`register` call from user code).

Built-in variants (the released code's names in brackets):

* ``resail`` — ours: SPADE coarse branch + guidance fine branch, learned mix (``SIN``);
* ``spade`` — SPADE, the guidance is ignored (``SPADE``);
* ``spade_plus`` — SPADE whose modulation net sees the label map concatenated with the guidance (``SPADE_CAT``);
* ``pix2pixhd_plus`` — features, label map and guidance concatenated, one conv, parameter-free BN, no
  modulation (``No_norm``);
* ``sean_plus`` — SEAN region-adaptive normalisation on per-class style codes that a style encoder
  extracts from the guidance (``SeanGenerator`` + ``ACE``, ``Zencoder``).

This module imports no torch: the config validator reads :func:`norm_names` cheaply; a variant's
module is imported the first time it is asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

__all__ = ["NormVariant", "get_norm_variant", "norm_names", "register", "NORM_NAMES"]


@dataclass(frozen=True)
class NormVariant:
    """One ``model.norm`` choice.

    ``make_norm(norm_nc, label_nc, hidden)`` → a layer called ``layer(x, seg, cond)``;
    ``make_encoder(label_nc, hidden)`` → ``None`` or a module called ``encoder(guidance, seg) -> cond``
    (run once per generator forward, shared by every ResBlk); ``uses_guidance``: whether the output
    depends on the guidance image (``spade``: no, so ``guidance=None`` is allowed); ``plain_blocks``:
    generator blocks that use the ``spade`` layer instead (SEAN keeps its last ResBlk plain SPADE);
    ``released``: what the authors' code calls it; ``summary``: one line for docs and ``--help``.
    """

    name: str
    make_norm: Callable[[int, int, int], "nn.Module"]
    make_encoder: Optional[Callable[[int, int], Optional["nn.Module"]]] = None
    uses_guidance: bool = True
    plain_blocks: tuple[str, ...] = ()
    released: str = ""
    summary: str = ""


# name -> (module, attribute holding its NormVariant); imported on first use.
_BUILTIN: dict[str, tuple[str, str]] = {
    "resail": ("resail_train.normalization", "RESAIL_VARIANT"),
    "spade": ("resail_train.normalization", "SPADE_VARIANT"),
    "spade_plus": ("resail_train.norms.spade_plus", "VARIANT"),
    "pix2pixhd_plus": ("resail_train.norms.pix2pixhd_plus", "VARIANT"),
    "sean_plus": ("resail_train.norms.sean_plus", "VARIANT"),
}
NORM_NAMES: tuple[str, ...] = tuple(_BUILTIN)
_REGISTERED: dict[str, NormVariant] = {}


def register(variant: NormVariant) -> NormVariant:
    """Add (or replace) a variant under ``variant.name`` — for experiments outside this package."""
    _REGISTERED[variant.name] = variant
    return variant


def norm_names() -> tuple[str, ...]:
    """Every name ``model.norm`` accepts: the built-ins, then user-registered ones."""
    return NORM_NAMES + tuple(n for n in _REGISTERED if n not in _BUILTIN)


def get_norm_variant(name: str) -> NormVariant:
    """The :class:`NormVariant` called ``name``; ``ValueError`` naming the choices otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown norm kind {name!r}; expected one of {', '.join(norm_names())}")
    module, attr = _BUILTIN[name]
    variant = getattr(importlib.import_module(module), attr)
    if variant.name != name:  # a wiring mistake in _BUILTIN, not a user error
        raise RuntimeError(f"{module}.{attr} is variant {variant.name!r}, registered as {name!r}")
    return variant
