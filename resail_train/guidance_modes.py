"""Which guidance feeds which generator pass, and which losses each pass gets (paper Table 4, §3.2, §3.4).

A training iteration runs the generator once per :class:`Pass` of the chosen ``data.guidance_mode``
(all passes in one module call, so DDP sees one forward per backward). Every pass is judged by the
discriminator (hinge GAN) and the frozen segmentation net (class-balanced CE ×λ_seg): paper §3.4 puts
the adversarial and segmentation losses on the synthesis from *both* kinds of guidance. A pass whose
guidance is derived from the image's own ground truth (**paired**) also gets the reconstruction-style
losses against the real image — feature matching ×λ_fm and VGG19 ×λ_vgg. A pass driven by retrieval
guidance does not: that guidance is pasted from *other* images, so it "lacks of paired ground-truth,
making it impossible to exploit perceptual supervision" (§3.2); the released code gives its retrieval
pass GAN + segmentation loss only (``compute_retrieval_generator_loss``). The discriminator sees every
pass's fake and the real image once per fake (as the released code adds ``D_real`` per pass).

The five rows of Table 4 (Cityscapes; columns "retrieval guidance" × "ground truth"):

================================  ==========================  ======================  =============
``data.guidance_mode``             passes (guidance → losses)  Table 4 row              released code
================================  ==========================  ======================  =============
``retrieval``                      retrieval → GAN+seg         original / w/o           —
``distorted-retrieval``            distorted retrieval →       distorted / w/o          —
                                   GAN+seg
``distorted-gt``                   distorted GT → GAN+FM+      w/o / distorted          ``--no_retrieval_loss``
                                   VGG+seg
``retrieval+original-gt``          original GT → GAN+FM+VGG+   original / original      —
                                   seg; retrieval → GAN+seg
``retrieval+distorted-gt`` (ours)  distorted GT → GAN+FM+VGG+  original / distorted     default
                                   seg; retrieval → GAN+seg
================================  ==========================  ======================  =============

Guidance sources (keys of the training batch, produced by :class:`resail_train.training.data.CacheDataset`):

* ``retrieval`` → ``guidance``: the composite of ``guidance.h5`` (or a top-k draw, ``data.guidance_sampling``);
* ``distorted-retrieval`` → ``guidance_distorted``: that composite with every pasted segment distorted
  by the ground-truth distortion functions (:mod:`pipeline.distort.distortions`), on line, seeded per (image, epoch);
* ``distorted-gt`` → ``distorted``: one variant of ``distortions.h5``;
* ``original-gt`` → ``original_gt``: the undistorted real image, black where the retrieval guidance is
  black (so it has the same holes as the guidance it stands in for).

Loss names: a paired pass logs ``G_gan``, ``G_fm``, ``G_vgg``, ``G_seg``, ``D_fake``; an unpaired one
``G_gan_ret``, ``G_seg_ret``, ``D_fake_ret`` — the default mode's names are those of earlier runs.
"""
from __future__ import annotations

from dataclasses import dataclass

#: guidance source → key of the training batch that carries it
SOURCE_KEYS = {
    "retrieval": "guidance",
    "distorted-retrieval": "guidance_distorted",
    "distorted-gt": "distorted",
    "original-gt": "original_gt",
}

PAIRED_LOSSES = ("gan", "fm", "vgg", "seg")
UNPAIRED_LOSSES = ("gan", "seg")


@dataclass(frozen=True)
class Pass:
    """One generator pass: its guidance source and whether the real image pairs with it."""

    source: str
    paired: bool

    @property
    def key(self) -> str:
        """Batch key of the guidance image this pass feeds to the generator."""
        return SOURCE_KEYS[self.source]

    @property
    def losses(self) -> tuple[str, ...]:
        """Generator loss terms of this pass (each still off when its λ is 0 / its net is absent)."""
        return PAIRED_LOSSES if self.paired else UNPAIRED_LOSSES

    @property
    def suffix(self) -> str:
        """Loss-name suffix: none for a paired pass, ``_ret`` for a retrieval-driven one."""
        return "" if self.paired else "_ret"


_RETRIEVAL = Pass("retrieval", paired=False)

#: The one definition of Table 4: mode → passes, paired (ground-truth) pass first.
GUIDANCE_MODES: dict[str, tuple[Pass, ...]] = {
    "retrieval": (_RETRIEVAL,),
    "distorted-retrieval": (Pass("distorted-retrieval", paired=False),),
    "distorted-gt": (Pass("distorted-gt", paired=True),),
    "retrieval+original-gt": (Pass("original-gt", paired=True), _RETRIEVAL),
    "retrieval+distorted-gt": (Pass("distorted-gt", paired=True), _RETRIEVAL),
}
DEFAULT_MODE = "retrieval+distorted-gt"
MODE_NAMES = tuple(GUIDANCE_MODES)


def passes_for(mode: str) -> tuple[Pass, ...]:
    """The passes of one ``data.guidance_mode`` (KeyError-free: the config already validated it)."""
    try:
        return GUIDANCE_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown guidance mode {mode!r} (one of {', '.join(MODE_NAMES)})") from None


def sources_for(mode: str) -> frozenset[str]:
    """The guidance sources the loader must produce for ``mode``."""
    return frozenset(p.source for p in passes_for(mode))
