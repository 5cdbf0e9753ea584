"""Training-step benchmark: RESAIL vs the plain SPADE generator, and the data-wait fraction.

One run, one device, one table (numbers are only comparable within a run):

* **G fwd+bwd** — one generator forward + backward on a batch (both guidance passes of a G step
  use this twice), ``norm="resail"`` against ``norm="spade"`` at the same ngf/crop/batch: the ratio
  is the cost of RESAIL's fine (guidance-image) branch;
* **train step** — a whole iteration of :class:`resail_train.training.trainer.Trainer` (G step with two G
  passes + D, segmentation net, D step) with each generator, and the ratio;
* **data wait** — time the training loop waits for the next batch from the cache DataLoader, as a
  fraction of the wall time of the measured steps (RESAIL run; goal < 5 %).

Without ``cache_dir`` a synthetic cache is built in a temporary folder (a folder-format dataset
of random street-like label maps, its segment database, guidance = the image shifted in colour,
two distortion variants) so the benchmark runs anywhere; give the demo cache
(``datasets_cache/camvid_demo``) to measure the real loader. The segmentation net is an untrained
one of the config's width (its cost is what matters); VGG is off unless ``vgg_weights`` is given.

``norms`` (``--norm``, repeatable) picks the ``model.norm`` variants measured against SPADE in the
same run (default RESAIL only; all of Table 3: ``--norm resail --norm spade_plus --norm pix2pixhd_plus
--norm sean_plus``).

Run: ``python -m benchmarks.train [--cache DIR] [--config demo] [--device cpu] [--steps 10] [--norm NAME]``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from resail_train.config import load_config
from resail_train.training.trainer import TrainOptions, Trainer, resolve_device


# --------------------------------------------------------------------------- synthetic cache
def make_synthetic_cache(root: Path, n_images: int = 24, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """A small folder dataset + segment DB + guidance.h5 + distortions.h5 under ``root``."""
    import cv2
    import h5py

    from pipeline import cache
    from pipeline.datasets import open_dataset
    from pipeline.decompose.build import build_segment_db

    classes = {"name": "synthetic", "ignore_id": 255, "classes": [
        {"id": 0, "name": "sky", "thing": False}, {"id": 1, "name": "road", "thing": False},
        {"id": 2, "name": "tree", "thing": False}, {"id": 3, "name": "car", "thing": True},
        {"id": 4, "name": "person", "thing": True}]}
    palette = np.array([[70, 130, 180], [128, 64, 128], [107, 142, 35], [0, 0, 142], [220, 20, 60]], np.uint8)
    rng = np.random.default_rng(seed)
    data = root / "data"
    (data / "train" / "images").mkdir(parents=True, exist_ok=True)
    (data / "train" / "labels").mkdir(parents=True, exist_ok=True)
    (data / "classes.json").write_text(json.dumps(classes))
    h, w = size
    for i in range(n_images):
        lab = np.zeros((h, w), np.uint8)
        lab[h // 2:] = 1
        for _ in range(int(rng.integers(1, 4))):
            x = int(rng.integers(0, w - 12))
            lab[int(rng.integers(2, h // 4)):h // 2, x:x + int(rng.integers(6, 14))] = 2
        for cls in (3, 4):
            for _ in range(int(rng.integers(1, 4))):
                y, x = int(rng.integers(h // 3, h - 14)), int(rng.integers(0, w - 16))
                lab[y:y + int(rng.integers(6, 14)), x:x + int(rng.integers(6, 16))] = cls
        img = np.clip(palette[lab].astype(int) + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(data / "train" / "images" / f"{i:04d}.jpg"), img[:, :, ::-1])
        cv2.imwrite(str(data / "train" / "labels" / f"{i:04d}.png"), lab)
    cache_dir = root / "cache"
    adapter = open_dataset("folder", data)
    build_segment_db(adapter, cache_dir, progress=False)
    refs = {r.image_id: r for r in adapter.refs("train")}
    with h5py.File(cache_dir / cache.GUIDANCE_H5, "w") as g, h5py.File(cache_dir / cache.DISTORTIONS_H5, "w") as d:
        for image_id, ref in refs.items():
            img = adapter.load(ref).image
            g.create_dataset(cache.image_key("train", image_id), data=np.ascontiguousarray(img[:, :, ::-1]), compression="gzip")
            g.create_dataset(cache.valid_key("train", image_id), data=np.ones((h, w), bool), compression="gzip")
            d.create_dataset(cache.image_key("train", image_id), data=np.stack([img, img // 2]), compression="gzip")
        up = cache.upstream_ids(cache_dir, retrieval=False)  # lineage: built from this DB (see pipeline.cache)
        cache.stamp_h5(g, cache.make_lineage("compose", up, {"bench": True}), cache.GUIDANCE_SCHEMA_VERSION)
        cache.stamp_h5(d, cache.make_lineage("distort", up, {"bench": True}), cache.DISTORTIONS_SCHEMA_VERSION)
    return cache_dir


def _write_untrained_segnet(path: Path, cfg, meta) -> None:
    from resail_train.checkpoint import save_atomic
    from resail_train.models.segnet import SegNet

    net = SegNet(meta.num_classes, base_width=cfg.segnet.base_width, spectral=cfg.segnet.spectral)
    save_atomic({"format": 1, "kind": "resail-segnet", "state_dict": net.state_dict(), "num_classes": meta.num_classes,
                 "base_width": cfg.segnet.base_width, "spectral": cfg.segnet.spectral, "classes": meta.to_dict()}, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- measurements
def _measure(cache_dir: Path, cfg, device: str, steps: int, warmup: int, work: Path, vgg_weights: str | None) -> dict:
    from pipeline.cache import SegmentDB

    with SegmentDB.open(cache_dir) as db:
        meta = db.meta
    seg_path = work / f"segnet_{cfg.model.norm}.pt"
    _write_untrained_segnet(seg_path, cfg, meta)
    cfg = cfg.with_overrides({"segnet.path": str(seg_path)})
    tr = Trainer(cache_dir, work / f"run_{cfg.model.norm}", cfg,
                 TrainOptions(device=device, progress=False, vgg_weights=vgg_weights))
    try:
        tr._setup()
        dev = tr.device
        # G forward + backward alone, on one real batch.
        tr.sampler.set_position(0, 0)
        batch = next(iter(tr.loader))
        x = tr._inputs(batch)
        g_times = []
        for k in range(warmup + steps):
            _sync(dev)
            t0 = time.perf_counter()
            out = tr.G(x["seg"], x[tr.passes[0].key])  # the first pass of data.guidance_mode
            out.float().mean().backward()
            tr.G.zero_grad(set_to_none=True)
            _sync(dev)
            if k >= warmup:
                g_times.append(time.perf_counter() - t0)
        # Whole training iterations through the cache DataLoader.
        step_times, waits = [], []
        epoch, done = 0, 0
        while done < warmup + steps:
            tr.sampler.set_position(epoch, 0)
            _sync(dev)
            t_prev = time.perf_counter()
            for batch in tr.loader:
                t_data = time.perf_counter()
                tr.train_step(tr._inputs(batch))
                _sync(dev)
                t_end = time.perf_counter()
                if done >= warmup:
                    waits.append(t_data - t_prev)
                    step_times.append(t_end - t_prev)
                done += 1
                t_prev = time.perf_counter()
                if done >= warmup + steps:
                    break
            epoch += 1
        n_params = sum(p.numel() for p in tr.G.parameters())
        return {"g_fwd_bwd_s": float(np.median(g_times)), "step_s": float(np.median(step_times)),
                "step_mean_s": float(np.mean(step_times)), "data_wait_fraction": float(sum(waits) / sum(step_times)),
                "g_params": int(n_params), "device": str(dev), "batch": cfg.optim.batch_size,
                "crop": list(cfg.data.crop_size), "ngf": cfg.model.ngf}
    finally:
        tr.dataset.close()
        if tr._det_prev is not None:
            torch.use_deterministic_algorithms(tr._det_prev[0])


def run_train_bench(cache_dir: str | Path | None = None, config: str = "demo", device: str = "cpu", steps: int = 10,
                    warmup: int = 2, overrides: Sequence[str] = (), num_workers: int | None = None,
                    vgg_weights: str | None = None, print_table: bool = True,
                    norms: Sequence[str] = ("resail",)) -> dict:
    """Measure each ``model.norm`` variant in ``norms`` (default RESAIL) against SPADE — step time and
    the data-wait fraction — and print a Markdown table (``--norm``, repeatable, on the command line)."""
    ov = list(overrides) + ["log.scalar_every=1000000"]
    if num_workers is not None:
        ov.append(f"data.num_workers={int(num_workers)}")
    base = load_config(config, ov)
    resolve_device(device)
    results: dict = {"config": base.name, "steps": steps, "warmup": warmup}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if cache_dir is None:
            crop = base.data.crop_size
            size = tuple(base.data.load_size or [crop[0] + 16, crop[1] + 16])
            cache_dir = make_synthetic_cache(work / "synthetic", n_images=max(16, 4 * base.optim.batch_size),
                                             size=(int(size[0]), int(size[1])))
            results["cache"] = "synthetic"
        else:
            results["cache"] = str(cache_dir)
        kinds = ["spade"] + [n for n in dict.fromkeys(norms) if n != "spade"]
        for norm in kinds:
            cfg = base.with_overrides({"model.norm": norm})
            results[norm] = _measure(Path(cache_dir), cfg, device, steps, warmup, work, vgg_weights)
    s = results["spade"]
    for norm in kinds[1:]:
        results[norm]["g_ratio"] = results[norm]["g_fwd_bwd_s"] / s["g_fwd_bwd_s"]
        results[norm]["step_ratio"] = results[norm]["step_s"] / s["step_s"]
    r = s  # device, batch, crop and ngf are the same for every variant
    if "resail" in results:  # the RESAIL ratios at the top level, as before
        results["g_ratio"], results["step_ratio"] = results["resail"]["g_ratio"], results["resail"]["step_ratio"]
    if print_table:
        print(f"train benchmark: config {base.name}, device {r['device']}, batch {r['batch']}, crop {r['crop'][0]}x"
              f"{r['crop'][1]} (HxW), ngf {r['ngf']}, {steps} measured steps (median) after {warmup} warm-up, "
              f"cache {results['cache']}, DataLoader workers {base.data.num_workers}")
        print("| generator | G params | G fwd+bwd s | × SPADE | train step s | × SPADE | data wait |")
        print("|---|---|---|---|---|---|---|")
        print(f"| SPADE (reference) | {s['g_params']:,} | {s['g_fwd_bwd_s']:.3f} | 1.00 | {s['step_s']:.3f} | 1.00 "
              f"| {100 * s['data_wait_fraction']:.1f} % |")
        for norm in kinds[1:]:
            v = results[norm]
            label = "RESAIL" if norm == "resail" else f"`{norm}`"
            print(f"| {label} | {v['g_params']:,} | {v['g_fwd_bwd_s']:.3f} | {v['g_ratio']:.2f} | {v['step_s']:.3f} "
                  f"| {v['step_ratio']:.2f} | {100 * v['data_wait_fraction']:.1f} % |")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="cache folder (default: a synthetic one)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--vgg-weights", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--norm", dest="norms", action="append", default=None,
                    help="model.norm variant to compare with SPADE (repeatable; default resail)")
    a = ap.parse_args(argv)
    run_train_bench(a.cache, a.config, a.device, a.steps, a.warmup, a.sets, a.workers, a.vgg_weights,
                    norms=a.norms or ("resail",))


if __name__ == "__main__":
    main()
