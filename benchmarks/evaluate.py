"""Throughput of ``resail evaluate`` on the CPU (images/s), split into its parts.

One full :func:`resail_train.evaluation.evaluate` of the run's split (no PNGs written), with its own
timers: generator, segmenter (generated + real image), Inception features (generated + real) and the
rest (reading, guidance, resizing, Fréchet distance). The reference measured in the same run is the
**Inception alone**: pool3 features of the same number of images at the generator size, batch
``batch_size`` — the part every FID evaluation pays — so the table reads "evaluation = k × FID
features". Usage: ``resail bench evaluate --run RUN_DIR [--limit N] [--segmenter own]``.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def run_evaluate_bench(run_dir: str | Path, cache_dir: str | Path | None = None, split: str = "val",
                       limit: int | None = None, batch_size: int = 8, device: str = "cpu",
                       segmenter: str = "own", segmenter_weights=None, inception_weights: str = "auto",
                       threads: int | None = None) -> dict:
    from resail_train.evaluation import evaluate
    from resail_train.metrics.fid import inception_features, resolve_fid_inception

    if threads:
        torch.set_num_threads(int(threads))
    run_dir = Path(run_dir)
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:  # evaluate writes metrics into the run folder: work on a copy of what it reads
        copy = work / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "report", "checkpoints", "samples"))
        t0 = time.perf_counter()
        m = evaluate(copy, cache_dir, split=split, inception_weights=inception_weights, device=device,
                     batch_size=batch_size, segmenter=segmenter, segmenter_weights=segmenter_weights, limit=limit,
                     save_images=False)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    d, n = m["details"], m["n_images"]
    h, w = d["size"]
    model = resolve_fid_inception(inception_weights)
    imgs = np.random.default_rng(0).integers(0, 256, (2 * n, h, w, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    inception_features(model, imgs, batch_size=batch_size, device=device)
    ref = time.perf_counter() - t0
    parts = {"generator": d["generator_seconds"], "segmenter (fake + real)": d["segmenter_seconds"],
             "Inception (fake + real)": d["fid_seconds"]}
    parts["rest (read, guidance, resize, Fréchet)"] = max(0.0, total - sum(parts.values()))
    print(f"evaluate on {device}: {n} images of '{split}' at {h}x{w}, segmenter {m['segmenter']}, "
          f"batch {batch_size}, {torch.get_num_threads()} thread(s)")
    print("| part | seconds | share |")
    print("|---|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |")
    print(f"| **total** | {total:.2f} | {n / total:.2f} images/s |")
    print(f"reference, Inception features alone ({2 * n} images, same size): {ref:.2f} s; "
          f"evaluate / reference = {total / ref:.2f}×")
    return {"images_per_second": n / total, "seconds": total, "reference_seconds": ref, "parts": parts, "n": n}
