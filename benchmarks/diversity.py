"""How different are the samples of one label map? (``resail bench diversity``)

For every temperature T (default 0.5, 1, 2) and every label map of the split (the run cache's
validation maps), N samples (:meth:`resail_train.synthesis.Synthesizer.samples`, seed ``--seed``):

* **within-map distance** — the mean over the N·(N−1)/2 pairs of one map's samples, averaged over
  the maps, of (a) the Euclidean distance of their Inception pool3 features (2048-d, the FID
  network, :func:`resail_train.metrics.fid.inception_features`) and (b) their mean absolute pixel
  difference (uint8 RGB, 0..255), and (c) the mean absolute difference of their *guidance* images —
  the variety retrieval offers, whatever the generator makes of it;
* the same two distances **between maps** — the rank-0 images of different maps of the same size,
  measured in the same run — as the scale: "within / between" says how much of the variety of
  different scenes one map gets from its candidates alone;
* **FID of the first sample vs all samples**: the FID (:func:`frechet_distance_features`) of the split's
  real images against the first sample of every map, and against all N samples of every map — does
  drawing lower-ranked candidates cost realism, or does covering more candidates help?;
* **changed**: the share of (segment, sample) pairs whose drawn candidate is not the rank-0 one.

The reference row "rank 0" is today's synthesis (T → 0: every sample equals it, distance 0).

Why not LPIPS: the usual diversity measure of SPADE-style papers is the mean pairwise LPIPS, which
needs ImageNet AlexNet (or VGG) weights *and* LPIPS's learned linear layers (``lpips`` weights
v0.1); neither can be downloaded here. Inception pool3 distance is the same kind of measure — a
distance between deep features of a pretrained network — with a network the project already
ships for FID (the bundled TorchScript Inception), and the pixel MAD is a network-free floor.
Inception distances are not LPIPS values and not comparable with published LPIPS diversities.

FID with few images (the demo's 20 validation maps) is dominated by the estimate's bias: compare
the rows of one table, never with the paper's FID. Usage:
``resail bench diversity --run RUN [--samples 4] [--temperatures 0.5,1,2] [--limit N]``.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def _maps(syn, split: str, limit: int | None):
    """(image_id, labels, instances, real image) of the split's maps, in the cache's order."""
    db = syn.online.db
    rows = db.image_rows(split)
    if not rows:
        from pipeline.errors import DataError

        raise DataError(db.cache_dir, f"no images of split {split!r} in this cache")
    rows = rows[:limit] if limit else rows
    adapter = db.open_adapter()
    refs = db.sample_refs(adapter, rows)
    out = []
    for r, ref in zip(rows, refs):
        s = adapter.load(ref)
        out.append((r["image_id"], s.labels, s.instances, s.image))
    return out


def pairwise_mean(vectors: Sequence[np.ndarray], dist) -> float:
    """Mean of ``dist(a, b)`` over the unordered pairs (0.0 for fewer than two)."""
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    if not pairs:
        return 0.0
    return float(np.mean([dist(vectors[i], vectors[j]) for i, j in pairs]))


def feature_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images of one size (0..255)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def run_diversity_bench(run_dir: str | Path, cache_dir: str | Path | None = None, *, split: str = "val",
                        n_samples: int = 4, temperatures: Sequence[float] = (0.5, 1.0, 2.0),
                        limit: int | None = None, seed: int = 0, device: str = "cpu",
                        inception_weights: str = "auto", batch_size: int = 8, print_fn=print) -> dict:
    """The diversity table (module docstring); returns its rows."""
    from pipeline.online import check_samples, check_temperature
    from resail_train.metrics.fid import (
        frechet_distance_features,
        inception_features,
        resolve_fid_inception,
    )
    from resail_train.synthesis import Synthesizer

    n_samples = check_samples(n_samples, "--samples")
    if n_samples < 2:
        from pipeline.errors import ConfigError

        raise ConfigError(None, "--samples must be at least 2 to measure a distance between samples")
    temps = [check_temperature(t, "--temperatures") for t in temperatures]
    model = resolve_fid_inception(inception_weights)
    if model is None:
        from pipeline.errors import ConfigError

        raise ConfigError(None, "the diversity measure needs the Inception network (--inception-weights auto|PATH)")
    t_start = time.perf_counter()
    feats = lambda imgs: inception_features(model, np.stack(imgs), batch_size=batch_size, device=device)
    with Synthesizer.load(run_dir, cache_dir, device) as syn:
        maps = _maps(syn, split, limit)
        real = np.concatenate([feats([m[3]]) for m in maps])
        base = [syn.synthesize(lab, inst, seed=seed, source=iid) for iid, lab, inst, _ in maps]
        base_feats = np.concatenate([feats([b[0]]) for b in base])
        between_f, between_p = [], []
        for i, j in itertools.combinations(range(len(maps)), 2):
            between_f.append(feature_distance(base_feats[i], base_feats[j]))
            if base[i][0].shape == base[j][0].shape:
                between_p.append(pixel_distance(base[i][0], base[j][0]))
        fid = (lambda f: frechet_distance_features(f, real)) if len(maps) >= 2 else (lambda f: float("nan"))
        rows = [{"temperature": None, "within_feature": 0.0, "within_pixel": 0.0, "within_guidance": 0.0,
                 "fid_first": fid(base_feats),
                 "fid_all": fid(base_feats), "changed": 0.0}]
        for t in temps:
            within_f, within_p, within_g, first, every = [], [], [], [], []
            changed = total = 0
            for (iid, lab, inst, _), b in zip(maps, base):
                samples = syn.samples(lab, inst, n_samples, temperature=t, seed=seed, source=iid)
                imgs = [s[0] for s in samples]
                f = feats(imgs)
                within_f.append(pairwise_mean(list(f), feature_distance))
                within_p.append(pairwise_mean(imgs, pixel_distance))
                within_g.append(pairwise_mean([s[1] for s in samples], pixel_distance))
                first.append(f[:1])
                every.append(f)
                r0 = b[2].matches
                for s in samples:
                    changed += int((s[2].matches != r0).sum())
                    total += len(r0)
            rows.append({"temperature": t, "within_feature": float(np.mean(within_f)),
                         "within_pixel": float(np.mean(within_p)), "within_guidance": float(np.mean(within_g)),
                         "fid_first": fid(np.concatenate(first)),
                         "fid_all": fid(np.concatenate(every)), "changed": changed / max(total, 1)})
        size = syn.size
    bf = float(np.mean(between_f)) if between_f else float("nan")
    bp = float(np.mean(between_p)) if between_p else float("nan")
    ratio = lambda a, b: f"{a / b:.2f}" if b == b and b > 0 else "n/a"
    print_fn(f"diversity: run {run_dir}, {len(maps)} {split} maps, {n_samples} samples each, seed {seed}, "
             f"generator {size[0]}x{size[1]}; between maps (rank 0): Inception {bf:.2f}, pixels {bp:.2f}; "
             f"{time.perf_counter() - t_start:.0f} s")
    print_fn("| T | Inception distance within map | / between maps | pixel MAD within map | / between maps | "
             "guidance MAD within map | FID first sample | FID all samples | segments changed |")
    print_fn("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "rank 0 (T → 0)" if r["temperature"] is None else f"{r['temperature']:g}"
        print_fn(f"| {name} | {r['within_feature']:.2f} | {ratio(r['within_feature'], bf)} | {r['within_pixel']:.2f} | "
                 f"{ratio(r['within_pixel'], bp)} | {r['within_guidance']:.2f} | {r['fid_first']:.1f} | {r['fid_all']:.1f} | "
                 f"{100 * r['changed']:.0f} % |")
    return {"rows": rows, "between_feature": bf, "between_pixel": bp, "n_maps": len(maps), "samples": n_samples,
            "threads": torch.get_num_threads()}
