"""What one ``model.norm`` choice is (:class:`NormVariant`): how to build its layer and its optional
guidance encoder. Torch-free, so the config validator can read variant names cheaply."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn


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
