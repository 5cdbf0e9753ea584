"""Reading the label maps given to ``resail synthesize`` and ``resail edit``, and checking their outputs.

Every input is read and checked against the run's class list before anything is written, so a bad
input fails with one line and leaves nothing behind. With ``--palette`` a colour label map is read
through that palette (:func:`pipeline.datasets.palette.read_label_map`; a colour not in it is one line).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import click
import numpy as np

from pipeline.datasets.base import read_index_map
from pipeline.datasets.palette import Palette, read_label_map
from pipeline.errors import ConfigError, DataError


def read_inputs(labels: Path, instances: Path | None, syn,
                palette: Palette | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The label map (class ids, or colours read through ``palette``) and the optional instance map
    (same size), checked by the synthesizer ``syn``."""
    lab = read_label_map(labels, palette, "label map", meta=syn.meta)
    inst = read_index_map(instances, "instance map") if instances is not None else None
    if inst is not None and inst.shape != lab.shape:
        raise DataError(instances, f"instance map is {inst.shape[1]}x{inst.shape[0]} but the label map "
                                   f"{labels} is {lab.shape[1]}x{lab.shape[0]}")
    syn.check(lab, inst, labels)
    return lab, inst


def png_out(path: Path, what: str) -> Path:
    """``path``, which must name a .png file (one label map writes one image); ``what``: the option."""
    if path.suffix.lower() != ".png":
        raise click.BadParameter(f"{path}: a single label map writes a .png file", param_hint=what)
    return path


def refuse_overwrite(inputs: Iterable[tuple[str, Path | None]], outputs: Iterable[tuple[str, Path | None]]) -> None:
    """ConfigError (one line) when an output would replace an input: an output file that is an input
    file, or an output folder that is an input folder, symlinks resolved. ``inputs`` / ``outputs``:
    ``(option, path)`` pairs (None = not given); checked before anything is loaded or written, since
    writing images over the label maps they come from loses the label maps."""
    given = [(opt, Path(p), Path(p).resolve()) for opt, p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for opt, path in outputs:
        if path is None:
            continue
        real = Path(path).resolve()
        for in_opt, in_path, in_real in given:
            if real == in_real:
                kind = "folder" if in_path.is_dir() else "file"
                raise ConfigError(path, f"{opt} is the input {kind} of {in_opt} ({in_path}): writing there would "
                                        f"overwrite the input; choose another {opt}")
        if real in seen and seen[real] != opt:
            raise ConfigError(path, f"{opt} is the same path as {seen[real]}: one would overwrite the other")
        seen.setdefault(real, opt)
