"""The distortion parameters as params.yaml's ``distort`` section gives them. Shared by ``resail
distort`` (which pre-generates the variants) and ``resail train`` (which draws fresh ones in its data
loader with ``data.distortion: online``), so both read the section the same way."""
from __future__ import annotations

from pipeline.distort.build import DistortParams, parse_kinds
from pipeline.distort.distortions import KINDS
from stages.params import Params, split_list


def distort_params(p: Params, *, variants=None, seed=None, kinds=None, p_color=None, p_shape=None,
                   p_resolution=None, color_targets=None, canvas=None, resolution_reference=None) -> DistortParams:
    """The distortion parameters of params.yaml's ``distort`` section (an option given here wins);
    also what ``resail train`` draws fresh distortions with (``data.distortion: online``)."""
    kinds_value = p.get("distort", "kinds", kinds, ",".join(KINDS))
    return DistortParams(
        variants=int(p.get("distort", "variants", variants, 4)),
        seed=int(p.get("distort", "seed", seed, 0)),
        kinds=parse_kinds(split_list(kinds_value) or []),
        probs={"color": p.get("distort", "p_color", p_color, 1.0), "shape": p.get("distort", "p_shape", p_shape, 1.0),
               "resolution": p.get("distort", "p_resolution", p_resolution, 1.0)},
        scale_range=(float(p.get("distort", "scale_min", None, 0.5)), float(p.get("distort", "scale_max", None, 1.0))),
        paste_rules=str(p.get("distort", "paste_rules", None, "a1")),
        color_targets=str(p.get("distort", "color_targets", color_targets, "auto")),
        canvas=str(p.get("distort", "canvas", canvas, "black")),
        resolution_reference=str(p.get("distort", "resolution_reference", resolution_reference, "source")),
    )
