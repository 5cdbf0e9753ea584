"""The registry of ResBlk normalisation variants (paper §4.4, Table 3; config key ``model.norm``).

Every variant is a :class:`NormVariant`: how to build one normalisation layer for a ResBlk
(``make_norm(norm_nc, label_nc, hidden)``, called as ``layer(x, seg, cond)``), and optionally a
*guidance encoder* that the generator runs once per forward on the full-resolution guidance image
(``encoder(guidance, seg) -> cond``; SEAN's style encoder). Without an encoder ``cond`` is the guidance
image itself. The generator asks this registry by name and never branches on a name, so a new variant
is one new module in this folder plus one line in :func:`_builtin` (or a :func:`register` call from
user code).

Built-in variants (the released code's names in brackets):

* ``resail`` — ours: SPADE coarse branch + guidance fine branch, learned mix (``SIN``);
* ``spade`` — SPADE, the guidance is ignored (``SPADE``);
* ``spade_plus`` — SPADE whose modulation net sees the label map concatenated with the guidance (``SPADE_CAT``);
* ``pix2pixhd_plus`` — features, label map and guidance concatenated, one conv, parameter-free BN, no
  modulation (``No_norm``);
* ``sean_plus`` — SEAN region-adaptive normalisation on per-class style codes that a style encoder
  extracts from the guidance (``SeanGenerator`` + ``ACE``, ``Zencoder``).

This module imports no torch: the config validator reads :func:`norm_names` cheaply; the variant
modules (all five side by side in this folder) are imported the first time a variant is asked for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from resail_train.models.norms.variant import NormVariant

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

__all__ = ["NormVariant", "get_norm_variant", "make_norm", "norm_names", "register", "NORM_NAMES"]

NORM_NAMES: tuple[str, ...] = ("resail", "spade", "spade_plus", "pix2pixhd_plus", "sean_plus")
_REGISTERED: dict[str, NormVariant] = {}


def _builtin() -> dict[str, NormVariant]:
    """The five Table-3 variants by name. Imported here, on first use, because they need torch."""
    from resail_train.models.norms import pix2pixhd_plus, resail, sean_plus, spade, spade_plus

    variants = {m.VARIANT.name: m.VARIANT for m in (resail, spade, spade_plus, pix2pixhd_plus, sean_plus)}
    if tuple(variants) != NORM_NAMES:  # a wiring mistake in this module, not a user error
        raise RuntimeError(f"norm variant modules define {tuple(variants)}, registry lists {NORM_NAMES}")
    return variants


def register(variant: NormVariant) -> NormVariant:
    """Add (or replace) a variant under ``variant.name`` — for experiments outside this package."""
    _REGISTERED[variant.name] = variant
    return variant


def norm_names() -> tuple[str, ...]:
    """Every name ``model.norm`` accepts: the built-ins, then user-registered ones."""
    return NORM_NAMES + tuple(n for n in _REGISTERED if n not in NORM_NAMES)


def get_norm_variant(name: str) -> NormVariant:
    """The :class:`NormVariant` called ``name``; ``ValueError`` naming the choices otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in NORM_NAMES:
        raise ValueError(f"unknown norm kind {name!r}; expected one of {', '.join(norm_names())}")
    return _builtin()[name]


def make_norm(kind: str, norm_nc: int, label_nc: int, hidden: int = 128) -> "nn.Module":
    """The ``model.norm`` variant ``kind`` → a layer ``norm(x, seg, cond)``."""
    return get_norm_variant(kind).make_norm(norm_nc, label_nc, hidden)
