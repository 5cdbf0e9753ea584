"""The working resolution of a cache (``resail decompose --resize``).

A dataset is decomposed once at the size the model trains at, so no later stage touches pixels
the model never sees. :class:`ResizeSpec` is the parsed option — ``HxW`` (every image to that
size) or ``S`` (shorter side to S, aspect kept, the long side truncated to an integer as SPADE's
``scale_shortside`` does) — and :class:`ResizedAdapter` wraps a dataset adapter so that every
sample it loads is already at that size: the photo with :func:`pipeline.resize.resize_image`
(antialiased bicubic), class and instance maps with :func:`pipeline.resize.resize_index_map`
(nearest, so no new class or instance ids appear). The segment database records the spec, and
``SegmentDB.open_adapter`` returns this wrapper, so retrieve, compose, distort, train, evaluate
and synthesize all work at the working resolution without being told.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.datasets.base import ClassMeta, DatasetAdapter, Sample, SampleRef, check_target_size
from pipeline.errors import ConfigError

_FIXED = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_SHORT = re.compile(r"^\s*(\d+)\s*$")


@dataclass(frozen=True)
class ResizeSpec:
    """``height``/``width`` set: fixed size; ``short_side`` set: shorter side, aspect kept."""

    height: int | None = None
    width: int | None = None
    short_side: int | None = None

    @classmethod
    def parse(cls, value: str | int | None, *, what: str = "resize", cap: int | None = None) -> "ResizeSpec | None":
        """``None``/``""``/``"original"`` → None (original size); ``"256x512"`` (H×W) or ``256``.

        The smallest output the spec can make (H·W, or S·S) must be within the pixel cap (``cap``,
        default :func:`pipeline.datasets.base.max_pixels`); ``what`` names the value in the errors."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "original", "none", "null")):
            return None
        if isinstance(value, bool):
            raise ConfigError(None, f"resize must be HxW or S, got {value!r}")
        if isinstance(value, int):
            value = str(value)
        text = str(value)
        m = _FIXED.match(text)
        if m:
            spec = cls(height=int(m.group(1)), width=int(m.group(2)))
        elif _SHORT.match(text):
            spec = cls(short_side=int(text))
        else:
            raise ConfigError(None, f"resize must be HxW (e.g. 256x512) or a shorter side S (e.g. 256), got {value!r}")
        if min(v for v in (spec.height, spec.width, spec.short_side) if v is not None) < 1:
            raise ConfigError(None, f"resize sizes must be positive, got {value!r}")
        side = spec.short_side
        check_target_size(side or spec.height, side or spec.width, f"{what} {text.strip()}".strip(), cap)
        return spec

    def __str__(self) -> str:
        """Canonical text, as recorded in the cache: ``HxW`` or ``S``."""
        return f"{self.height}x{self.width}" if self.short_side is None else str(self.short_side)

    def target(self, height: int, width: int) -> tuple[int, int]:
        """Output (H, W) for an input of ``height × width``."""
        if self.short_side is None:
            return int(self.height), int(self.width)
        s = int(self.short_side)
        if height <= width:
            return s, max(1, int(s * width / height))
        return max(1, int(s * height / width)), s

    def agrees_with(self, load_size: tuple[int, int] | None) -> bool:
        """Whether a loader ``load_size`` [H, W] uses this resolution: ``None`` (take the cache's
        size) always does; a fixed cache needs the same H×W; a shorter-side cache needs
        ``min(load_size) == S`` (the loader may still square it, as SPADE's resize_and_crop does)."""
        if load_size is None:
            return True
        h, w = int(load_size[0]), int(load_size[1])
        if self.short_side is None:
            return (h, w) == (self.height, self.width)
        return min(h, w) == self.short_side


class ResizedAdapter(DatasetAdapter):
    """A dataset adapter whose samples come at the working resolution (see the module docstring).

    Listing (splits, refs, classes, options) is the wrapped adapter's; only :meth:`load` differs.
    """

    def __init__(self, inner: DatasetAdapter, spec: ResizeSpec) -> None:  # noqa: super() not called: no new root
        self.inner = inner
        self.spec = spec
        self.root = inner.root
        self.options = dict(inner.options)
        self.format = inner.format  # instance attribute: callers read adapter.format

    def classes(self) -> ClassMeta:
        return self.inner.classes()

    def splits(self) -> list[str]:
        return self.inner.splits()

    def refs(self, split: str) -> list[SampleRef]:
        return self.inner.refs(split)

    def load(self, ref: SampleRef) -> Sample:
        from pipeline.resize import resize_image, resize_index_map  # late: pipeline.resize imports segments → datasets

        s = self.inner.load(ref)
        h, w = self.spec.target(*s.labels.shape)
        if (h, w) == s.labels.shape:
            s.source_size = s.labels.shape
            return s
        image = resize_image(s.image, h, w)
        labels = resize_index_map(s.labels, h, w)
        instances = None if s.instances is None else resize_index_map(s.instances, h, w)
        return Sample(s.image_id, s.split, image, labels, instances, s.ref, source_size=s.labels.shape)
