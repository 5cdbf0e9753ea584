"""Is a trained generator using its retrieval guidance? Numbers that say why RESAIL beats SPADE
(or does not) at a given budget.

When RESAIL does not beat SPADE at a small budget, three things are worth knowing:

* **mix weights** — ``σ(wγ)``, ``σ(wβ)`` of every RESAIL layer (eq. h; both start at 0.5): how much
  of γ, β comes from the guidance branch now;
* **guidance sensitivity** — the same label map generated with its own guidance, with a black
  (empty) guidance and with another image's guidance: mean absolute pixel difference (0–255). A
  generator that ignores the guidance (SPADE by construction) gives 0;
* **guidance fidelity** — mean absolute difference between the generated image and the guidance on
  the pixels the guidance covers, next to the same for the real image: how far the output follows
  the pasted colours.

``python -m resail_train.reporting.diagnostics RUN [--cache CACHE] [--n 16] [--split val]`` prints one JSON
object; everything is computed on the first ``n`` images of the split at the generator size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def mix_weights(generator: torch.nn.Module) -> list[dict]:
    """``[{"layer", "gamma", "beta"}]``: σ of the mix scalars of every layer that has them."""
    out = []
    for name, m in generator.named_modules():
        wg, wb = getattr(m, "mix_gamma", None), getattr(m, "mix_beta", None)
        if isinstance(wg, torch.Tensor) and isinstance(wb, torch.Tensor):
            out.append({"layer": name, "gamma": float(torch.sigmoid(wg.detach()).mean()),
                        "beta": float(torch.sigmoid(wb.detach()).mean())})
    return out


def _as255(t: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] → H×W×3 float64 in [0, 255]."""
    return ((t.detach().float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).cpu().numpy().astype(np.float64)


def _mad(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(-1)
    if mask is not None:
        if not mask.any():
            return float("nan")
        d = d[mask]
    return float(d.mean())


def guidance_use(syn, samples: list, seed: int = 0) -> dict:
    """Sensitivity and fidelity (see the module docstring) over ``samples`` (adapter samples)."""
    from pipeline.resize import resize_image, resize_index_map

    h, w = syn.size
    prepared = []
    for s in samples:
        res = syn.guidance(s.labels, s.instances)
        seg, g = syn.prepare(s.labels, res.guidance, s.instances)
        valid = resize_index_map(np.asarray(res.valid, np.uint8), h, w).astype(bool)
        prepared.append((seg, g, valid, resize_image(s.image, h, w)))
    own, black, other, fid_fake, fid_real = [], [], [], [], []
    for i, (seg, g, valid, real) in enumerate(prepared):
        g_other = prepared[(i + 1) % len(prepared)][1]
        # float 0..255, not rounded: an untrained generator's differences are below one grey level
        outs = [_as255(syn.generate(seg, x, seed)[0]) for x in (g, torch.full_like(g, -1.0), g_other)]
        own.append(outs[0])
        black.append(_mad(outs[0], outs[1]))
        other.append(_mad(outs[0], outs[2]))
        gimg = _as255(g)
        fid_fake.append(_mad(outs[0], gimg, valid))
        fid_real.append(_mad(real, gimg, valid))

    def mean(v):
        v = [x for x in v if np.isfinite(x)]
        return float(np.mean(v)) if v else None

    return {"n_images": len(prepared), "size": [h, w],
            "sensitivity_black_guidance": mean(black), "sensitivity_other_guidance": mean(other),
            "fake_vs_guidance_on_covered": mean(fid_fake), "real_vs_guidance_on_covered": mean(fid_real)}


def diagnose(run_dir: str | Path, cache_dir: str | Path | None = None, n: int = 16, split: str = "val",
             device: str = "cpu") -> dict:
    """Mix weights + guidance use of one run (see the module docstring)."""
    from pipeline.cache import SegmentDB
    from resail_train.synthesis import Synthesizer

    syn = Synthesizer.load(run_dir, cache_dir, device=device)
    try:
        db = SegmentDB.open(syn.cache_dir)
        try:
            adapter = db.open_adapter()
            refs = sorted(adapter.refs(split), key=lambda r: r.image_id)[:n]
            samples = [adapter.load(r) for r in refs]
        finally:
            db.close()
        return {"run": str(run_dir), "norm": syn.cfg.model.norm, "step": syn.step,
                "mix_weights": mix_weights(syn.G), **guidance_use(syn, samples)}
    finally:
        syn.close()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--split", default="val")
    a = ap.parse_args(argv)
    print(json.dumps(diagnose(a.run, a.cache, a.n, a.split), indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
