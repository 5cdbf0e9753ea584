"""``resail labels check DIR``: what a folder of label maps holds, before anything is trained or scored.

For every label PNG directly in ``DIR`` (or in its sub-folders, as Cityscapes' cities):

* whether it is an id map (single channel, or RGB with equal channels) or a colour map;
* the pixel share of every class (colour maps read through the palette);
* ids not in the class list / palette, colours not in the palette (per file, with pixel counts);
* with an images folder beside it (``<split>/images`` for ``<split>/labels``, ``leftImg8bit`` for
  ``gtFine``, SPADE's ``real_image`` for ``input_label``, OASIS's ``image`` for ``label``,
  ADE20K's ``images`` for ``annotations``, COCO-Stuff's ``<split>_img`` for ``<split>_label``), the
  files whose size differs from their image's;
* for id maps and a palette: the ids a colour map cannot express (their colour reads as another id).

Array conventions: class maps H×W int64; colours RGB.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ClassMeta, header_size, read_image_rgb, read_index_map
from pipeline.datasets.palette import Palette, _rgb, is_colour
from pipeline.errors import DataError, ResailError

LABEL_EXTS = (".png",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
#: label-folder name → images-folder name of the common layouts
SIBLINGS = {"labels": "images", "label": "image", "input_label": "real_image", "gtFine": "leftImg8bit",
            "annotations": "images"}
#: label file-name suffix → image file-name suffix
STEM_SUFFIXES = (("_gtFine_labelIds", "_leftImg8bit"), ("_gtFine_color", "_leftImg8bit"),
                 ("_gtFine_instanceIds", "_leftImg8bit"), ("_input_label", "_real_image"))


@dataclass
class FolderReport:
    folder: Path
    images_folder: Path | None = None
    files: int = 0
    id_files: int = 0
    colour_files: int = 0
    pixels: Counter = field(default_factory=Counter)  # class id → pixels (colour maps decoded)
    unknown_ids: dict[int, int] = field(default_factory=dict)  # id → pixels, over all files
    unknown_id_files: list[str] = field(default_factory=list)
    unknown_colours: dict[tuple[int, int, int], int] = field(default_factory=dict)
    unknown_colour_files: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    no_image: list[str] = field(default_factory=list)
    inexpressible: dict[int, tuple[int | None, int]] = field(default_factory=dict)  # id → (reads as, pixels)
    unreadable: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.files == 0:
            return "empty"
        if self.colour_files == 0:
            return "class ids"
        if self.id_files == 0:
            return "colours"
        return f"mixed ({self.id_files} id maps, {self.colour_files} colour maps)"


def label_files(folder: Path) -> list[Path]:
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in LABEL_EXTS]
    if not files:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in LABEL_EXTS)
    # Cityscapes' gtFine keeps ids, colours, instances and polygons side by side: look at one kind
    ids = [f for f in files if f.stem.endswith("_gtFine_labelIds")]
    if ids:
        return ids
    return [f for f in files if not f.stem.endswith(("_gtFine_instanceIds", "_gtFine_color"))] or files


def images_folder(folder: Path) -> Path | None:
    """The images folder beside a label folder in the common layouts (see the module docstring)."""
    folder = Path(folder)
    parts = folder.parts
    for i in range(len(parts) - 1, -1, -1):
        name = parts[i]
        sib = SIBLINGS.get(name)
        if sib is None and name.endswith("_label"):
            sib = name[: -len("_label")] + "_img"
        if sib is not None:
            cand = Path(*parts[:i], sib, *parts[i + 1:])
            if cand.is_dir():
                return cand
    return None


def _image_for(label: Path, label_root: Path, image_root: Path) -> Path | None:
    rel = label.relative_to(label_root)
    stem = rel.stem
    for lab_suf, img_suf in STEM_SUFFIXES:
        if stem.endswith(lab_suf):
            stem = stem[: -len(lab_suf)] + img_suf
            break
    base = image_root / rel.parent
    for ext in IMAGE_EXTS:
        p = base / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def check_labels(folder: str | Path, palette: Palette | None = None, meta: ClassMeta | None = None,
                 images: str | Path | None = None) -> FolderReport:
    """Inspect a label folder (module docstring). ``meta`` (optional) gives the known ids of id maps;
    without it the palette's ids are the known ones; without either, any id is accepted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "label folder not found")
    rep = FolderReport(folder)
    rep.images_folder = Path(images) if images is not None else images_folder(folder)
    known = None
    if meta is not None:
        known = set(meta.ids.tolist()) | {meta.ignore_id}
    elif palette is not None:
        known = palette.ids | ({palette.void_id} if palette.void_id is not None else set())
    id_pixels: Counter = Counter()
    for f in label_files(folder):
        rep.files += 1
        name = str(f.relative_to(folder))
        try:
            raw = read_image_rgb(f) if _is_rgb_png(f) else None
            if raw is not None and is_colour(raw) and palette is not None:
                rep.colour_files += 1
                _tally_colours(raw, palette, rep, name)
            elif raw is not None and is_colour(raw):
                rep.colour_files += 1
                rep.unknown_colour_files.append(name)  # a colour map and no palette to read it
                codes, counts = _colour_counts(raw)
                for c, n in zip(codes.tolist(), counts.tolist()):
                    rep.unknown_colours[_rgb(c)] = rep.unknown_colours.get(_rgb(c), 0) + int(n)
            else:
                rep.id_files += 1
                ids = read_index_map(f, "label map")
                u, n = np.unique(ids, return_counts=True)
                bad = False
                for i, k in zip(u.tolist(), n.tolist()):
                    rep.pixels[i] += k
                    id_pixels[i] += k
                    if known is not None and i not in known:
                        rep.unknown_ids[i] = rep.unknown_ids.get(i, 0) + k
                        bad = True
                if bad:
                    rep.unknown_id_files.append(name)
            if rep.images_folder is not None:
                img = _image_for(f, folder, rep.images_folder)
                if img is None:
                    rep.no_image.append(name)
                else:
                    w, h = header_size(img, img.read_bytes())
                    lw, lh = header_size(f, f.read_bytes())
                    if (w, h) != (lw, lh):
                        rep.size_mismatch.append(f"{name} ({lw}x{lh} vs image {w}x{h})")
        except ResailError as e:
            rep.unreadable.append(f"{name}: {e.problem}")
    if palette is not None and id_pixels:
        for i, back in palette.inexpressible(list(id_pixels)).items():
            if known is None or i in known:
                rep.inexpressible[i] = (back, id_pixels[i])
    return rep


def _is_rgb_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(33)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] in (2, 3, 6)


def _colour_counts(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    return np.unique(codes.reshape(-1), return_counts=True)


def _tally_colours(rgb: np.ndarray, palette: Palette, rep: FolderReport, name: str) -> None:
    codes, counts = _colour_counts(rgb)
    bad = False
    for c, n in zip(codes.tolist(), counts.tolist()):
        i = palette.lookup.get(int(c))
        if i is None:
            rep.unknown_colours[_rgb(c)] = rep.unknown_colours.get(_rgb(c), 0) + int(n)
            bad = True
        else:
            rep.pixels[i] += int(n)
    if bad:
        rep.unknown_colour_files.append(name)


def format_report(rep: FolderReport, palette: Palette | None = None, meta: ClassMeta | None = None,
                  shown: int = 5) -> list[str]:
    """The lines ``resail labels check`` prints."""
    names = dict(palette.names) if palette is not None else {}
    if meta is not None:
        names.update({c.id: c.name for c in meta.classes})
        names.setdefault(meta.ignore_id, "void")
    lines = [f"{rep.folder}: {rep.files} label map(s); they look like {rep.kind}"
             + (f" (palette {palette.name})" if palette is not None and rep.colour_files else "")]
    total = sum(rep.pixels.values())
    if total:
        lines.append("| id | class | pixel share |")
        lines.append("|---|---|---|")
        for i, n in sorted(rep.pixels.items()):
            lines.append(f"| {i} | {names.get(i, '?')} | {100 * n / total:.2f}% |")

    def few(items):
        items = list(items)
        return ", ".join(items[:shown]) + (f", … ({len(items)} in all)" if len(items) > shown else "")

    if rep.unknown_ids:
        ids = ", ".join(f"{i} ({n} px)" for i, n in sorted(rep.unknown_ids.items()))
        lines.append(f"unknown ids: {ids} in {few(rep.unknown_id_files)}")
    if rep.unknown_colours:
        top = sorted(rep.unknown_colours.items(), key=lambda kv: -kv[1])
        txt = ", ".join(f"{c} ({n} px)" for c, n in top[:shown])
        txt += f", … ({len(top)} colours)" if len(top) > shown else ""
        hint = "" if palette is not None else " (colour maps: pass --palette)"
        lines.append(f"unknown colours: {txt} in {few(rep.unknown_colour_files)}{hint}")
        if palette is not None:
            c0 = top[0][0]
            lines.append(f"  nearest to {c0}: {palette.nearest_text(c0)}")
    if rep.images_folder is None:
        lines.append("sizes: no images folder found beside this one (not checked)")
    else:
        if rep.size_mismatch:
            lines.append(f"size differs from the image ({rep.images_folder}): {few(rep.size_mismatch)}")
        else:
            lines.append(f"sizes: every label map matches its image in {rep.images_folder}")
        if rep.no_image:
            lines.append(f"no image for: {few(rep.no_image)}")
    if rep.inexpressible:
        parts = [f"{i} {names.get(i, '')}".strip() + f" → reads back as {'nothing' if b is None else b} ({n} px)"
                 for i, (b, n) in sorted(rep.inexpressible.items())]
        lines.append(f"warning: a {palette.name} colour map cannot express ids used here: {few(parts)}")
    if rep.unreadable:
        lines.append(f"unreadable: {few(rep.unreadable)}")
    return lines


def problems(rep: FolderReport) -> int:
    """Number of problem kinds found (the command's exit status is 1 when there is any)."""
    return sum(bool(x) for x in (rep.unknown_ids, rep.unknown_colours, rep.size_mismatch, rep.unreadable))


__all__ = ["FolderReport", "check_labels", "format_report", "images_folder", "problems"]
