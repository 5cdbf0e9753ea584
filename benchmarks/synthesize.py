"""Synthesis latency: label map → image with a trained run, split into its parts.

Per label map (the run cache's validation maps at their own size, cycled to ``n``), timed
separately and reported as medians:

* **retrieval + composition** — decompose the map, exact top-k search against the run's database,
  paste the guidance (:meth:`resail_train.synthesis.Synthesizer.guidance`; no memo: every call
  searches);
* **prep + post** — resize labels/guidance to the generator size, one-hot, and the bicubic resize
  of the output back to the map's size;
* **generator** — ``G`` forward only (CUDA synchronised): the reference the other columns are
  divided by (``total / generator``).

CPU always; CUDA too when available (``device="auto"``) or asked for. Printed as a Markdown table.
Usage: ``python -m benchmarks.synthesize RUN_DIR [--cache DIR] [--n 8] [--device auto|cpu|cuda]``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from resail_train.synthesis import Synthesizer


def _maps(syn: Synthesizer, n: int, split: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    db = syn.online.db
    rows = db.image_rows(split) or db.image_rows()
    adapter = db.open_adapter()
    refs = {(r.split, r.image_id): r for s in adapter.splits() for r in adapter.refs(s)}
    out = []
    for r in rows[:n]:
        s = adapter.load(refs[(r["split"], r["image_id"])])
        out.append((s.labels, s.instances))
    return [out[i % len(out)] for i in range(n)]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time_device(run_dir: Path, cache_dir, device: str, n: int, split: str, repeat: int) -> dict:
    syn = Synthesizer.load(run_dir, cache_dir, device)
    with syn:
        maps = _maps(syn, n, split)
        lab, inst = maps[0]
        syn.render(lab, syn.guidance(lab, inst).guidance, inst)  # warm-up
        ret, prep, gen, tot = [], [], [], []
        for _ in range(repeat):
            for lab, inst in maps:
                syn._memo = None  # time the search every call
                t0 = time.perf_counter()
                res = syn.guidance(lab, inst)
                t1 = time.perf_counter()
                seg, g = syn.prepare(lab, res.guidance, inst)
                t2 = time.perf_counter()
                fake = syn.generate(seg, g)
                _sync(syn.device)
                t3 = time.perf_counter()
                syn.to_image(fake[0], lab.shape)
                t4 = time.perf_counter()
                ret.append(t1 - t0)
                gen.append(t3 - t2)
                prep.append((t2 - t1) + (t4 - t3))
                tot.append(t4 - t0)
        ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
        return {"device": str(syn.device), "size": list(syn.size), "map_size": list(maps[0][0].shape),
                "retrieval_ms": ms(ret), "prep_ms": ms(prep), "generator_ms": ms(gen), "total_ms": ms(tot),
                "db_segments": len(syn.online.db), "candidates": len(syn.online.index),
                "threads": torch.get_num_threads()}


def run_synthesize_bench(run_dir: str | Path, n: int = 8, device: str = "auto", cache_dir: str | Path | None = None,
                         split: str = "val", repeat: int = 3, print_fn=print) -> dict:
    """Latency table (see the module docstring); returns the per-device numbers."""
    devices = ["cpu"]
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    results = {d: _time_device(Path(run_dir), cache_dir, d, n, split, repeat) for d in devices}
    r0 = results["cpu"]
    print_fn(f"synthesis latency: run {run_dir}, {n} label maps {r0['map_size'][0]}×{r0['map_size'][1]} → generator "
             f"{r0['size'][0]}×{r0['size'][1]}, database {r0['db_segments']} segments ({r0['candidates']} candidates), "
             f"median of {repeat}×{n}, CPU threads {r0['threads']}")
    print_fn("| device | retrieval + composition ms | prep + post ms | generator ms (reference) | total ms | "
             "total / generator |")
    print_fn("|---|---|---|---|---|---|")
    for d, r in results.items():
        print_fn(f"| {d} | {r['retrieval_ms']:.1f} | {r['prep_ms']:.1f} | {r['generator_ms']:.1f} | "
                 f"{r['total_ms']:.1f} | {r['total_ms'] / r['generator_ms']:.2f} |")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--split", default="val")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    run_synthesize_bench(a.run_dir, a.n, a.device, a.cache, a.split, a.repeat)


if __name__ == "__main__":
    main()
