"""Per-stage cost of the data preparation, and what it projects to at full dataset scale.

``resail bench pipeline --format F --data-root R [--resize HxW|S]`` runs decompose → retrieve →
compose → distort on the images given (in a temporary cache, one process, ``--jobs 1``) and
measures, per stage and per image:

* CPU seconds (``time.process_time``: robust on a shared, loaded machine) and wall seconds;
* the split between the per-image work (what a dask worker runs) and the client's share (the
  loop that receives each result and writes the HDF5 file);
* bytes per image that a worker ships to the client (the pickled result, what crosses the network
  on dask-distributed) and bytes per image on disk;
* the client's write rate (bytes received per client-CPU second).

It prints the projection for Cityscapes (2,975), ADE20K (20,210) and COCO-Stuff (118,287)
training images on this machine (CPU time / cores; retrieval projected linearly, which
under-estimates it: its search grows with candidates × queries), and for each stage the number of
workers at which the single client would saturate (worker seconds per image / client seconds per
image).

The per-image functions are measured by wrapping ``ordered_map`` in the stage modules for the run
(serial execution, same code path as ``--jobs 1``).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from benchmarks.common import decode_seconds

DATASET_SIZES = {"Cityscapes": 2975, "ADE20K": 20210, "COCO-Stuff": 118287}
STAGE_FILES = {
    "decompose": ("segments.h5", "segments.parquet", "images.parquet"),
    "retrieve": ("retrieval.parquet",),
    "compose": ("guidance.h5",),
    "distort": ("distortions.h5", "distortions.parquet"),
}


class _Meter:
    """Totals of one instrumented ``ordered_map`` call site (per stage)."""

    def __init__(self) -> None:
        self.items = 0
        self.worker_cpu = 0.0
        self.client_cpu = 0.0
        self.net_bytes = 0


@contextmanager
def _instrument(modules: list, meters: dict[str, _Meter]) -> Iterator[None]:
    """Replace ``ordered_map`` in ``modules`` by a serial version that meters every item."""
    originals = [m.ordered_map for m in modules]

    def metered(fn, items, *, jobs=1, backend="loky", scheduler=None, desc="", unit="img", progress=True, **kwargs):
        meter = meters.setdefault(desc or fn.__name__, _Meter())
        for item in items:
            t0 = time.process_time()
            res = fn(item, **kwargs)
            meter.worker_cpu += time.process_time() - t0
            meter.net_bytes += len(pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
            meter.items += 1
            t1 = time.process_time()
            yield res
            meter.client_cpu += time.process_time() - t1

    for m in modules:
        m.ordered_map = metered
    try:
        yield
    finally:
        for m, orig in zip(modules, originals):
            m.ordered_map = orig


def _size(folder: Path, names) -> int:
    return sum((folder / n).stat().st_size for n in names if (folder / n).is_file())


def measure(fmt: str, data_root: str | Path, *, resize: str | None = None, splits: str = "train",
            variants: int = 4, limit: int | None = None) -> dict:
    """Run the four stages once in a temporary cache; per-stage totals (see module docstring)."""
    from pipeline.compose import build as compose_build
    from pipeline.decompose import build as decompose_build
    from pipeline.distort import build as distort_build
    from pipeline.datasets import open_dataset
    from pipeline.decompose.build import build_segment_db
    from pipeline.distort.build import DistortParams, build_distortions
    from pipeline.compose.build import compose_dataset
    from pipeline.retrieve.build import run_retrieval

    adapter = open_dataset(fmt, data_root, None, resize)
    split_list = [s for s in splits.split(",") if s]
    refs = [r for s in split_list for r in adapter.refs(s)]
    if limit:
        refs = refs[:limit]
    t0 = time.process_time()
    decode_wall = decode_seconds(adapter, refs)
    decode_cpu = time.process_time() - t0
    out: dict = {"format": fmt, "root": str(data_root), "resize": resize, "images": len(refs),
                 "decode_cpu": decode_cpu, "decode_wall": decode_wall, "stages": {}}
    meters: dict[str, _Meter] = {}
    with tempfile.TemporaryDirectory(prefix="resail_bench_pipeline_") as tmp, \
            _instrument([decompose_build, compose_build, distort_build], meters):
        cache_dir = Path(tmp) / "cache"
        steps = [
            ("decompose", lambda: build_segment_db(adapter, cache_dir, splits=split_list, refs=refs, progress=False)),
            ("retrieve", lambda: run_retrieval(cache_dir, progress=False)),
            ("compose", lambda: compose_dataset(cache_dir, progress=False)),
            ("distort", lambda: build_distortions(cache_dir, DistortParams(variants=variants), progress=False)),
        ]
        for name, run in steps:
            before = dict(meters)
            t0, w0 = time.process_time(), time.perf_counter()
            summary = run()
            cpu, wall = time.process_time() - t0, time.perf_counter() - w0
            new = {k: m for k, m in meters.items() if k not in before}
            per_image = [m for m in new.values() if m.items]
            st = {"cpu": cpu, "wall": wall, "disk_bytes": _size(cache_dir, STAGE_FILES[name]),
                  "worker_cpu": sum(m.worker_cpu for m in per_image),
                  "client_cpu": sum(m.client_cpu for m in per_image),
                  "net_bytes": sum(m.net_bytes for m in per_image),
                  "maps": {k: (m.items, m.worker_cpu, m.client_cpu, m.net_bytes) for k, m in new.items()}}
            if name == "distort":
                st["images"] = summary.n_images
            out["stages"][name] = st
    return out


def _fmt_bytes(n: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n:.0f} B"


def print_report(res: dict, cores: int | None = None) -> None:
    cores = cores or os.cpu_count() or 1
    n = res["images"]
    print(f"pipeline benchmark: {n} images of {res['format']} at {res['root']}"
          f"{', resize ' + res['resize'] if res['resize'] else ', original resolution'}; {cores} cores; "
          f"decode reference {1e3 * res['decode_cpu'] / n:.0f} ms CPU/image")
    print()
    print("| stage | images | CPU s/image | × decode | wall s/image | worker → client / image | on disk / image "
          "| client CPU s/image | client rate (MB/s received) | client saturates at |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dec = res["decode_cpu"] / n
    for name, st in res["stages"].items():
        k = st.get("images", n)
        per = st["cpu"] / k
        client = st["client_cpu"] / k
        worker = st["worker_cpu"] / k
        rate = (st["net_bytes"] / st["client_cpu"] / 1e6) if st["client_cpu"] > 0 else float("nan")
        sat = f"{worker / client:.0f} workers" if client > 0 and st["net_bytes"] else "– (not per image)"
        net = _fmt_bytes(st["net_bytes"] / k) if st["net_bytes"] else "–"
        print(f"| {name} | {k} | {per:.3f} | {per / dec:.1f} | {st['wall'] / k:.3f} | {net} | "
              f"{_fmt_bytes(st['disk_bytes'] / k)} | {client:.3f} | {rate:.0f} | {sat} |")
    print()
    print(f"Projection on this machine ({cores} cores, CPU time / cores; distort over the training images; "
          "retrieval linear: a lower bound):")
    print()
    print("| dataset | images | " + " | ".join(f"{s} (h)" for s in res["stages"]) + " | total (h) | disk (GB) |")
    print("|---|---|" + "---|" * (len(res["stages"]) + 2))
    for ds, size in DATASET_SIZES.items():
        hours = [st["cpu"] / st.get("images", n) * size / cores / 3600 for st in res["stages"].values()]
        disk = sum(st["disk_bytes"] / st.get("images", n) for st in res["stages"].values()) * size / 1e9
        print(f"| {ds} | {size:,} | " + " | ".join(f"{h:.2f}" for h in hours) + f" | {sum(hours):.2f} | {disk:.0f} |")


def run_pipeline_bench(fmt: str, data_root: str | Path, *, resize: str | None = None, splits: str = "train",
                       variants: int = 4, limit: int | None = None) -> dict:
    res = measure(fmt, data_root, resize=resize, splits=splits, variants=variants, limit=limit)
    print_report(res)
    return res
