"""Studio latency: what a person waits for after a click or a brush stroke, against the CLI.

The studio (:func:`resail_studio.server.create_app`) runs under uvicorn on a free 127.0.0.1 port in
this process; an HTTP client (httpx, keep-alive, like a browser tab) measures wall-clock round trips:

* **local edit** — ``PUT /api/maps/{id}/segments/{q}`` (a segment takes another candidate: no
  decomposition, no retrieval) + ``GET …/image.png``;
* **paint stroke** — ``PUT /api/maps/{id}/labels`` with a map where a brush disc (radius 6 % of the
  width, the class of a neighbouring region) was painted + ``GET …/image.png``: decode, decompose,
  retrieval of the changed segments only, composition, generator, PNG;

against the **reference**: ``resail synthesize`` on the same label map as a separate process
(interpreter start, imports, loading the run and its index, one synthesis, writing the PNG) — what
editing costs without the studio. Label maps: the run cache's validation maps resized (nearest) to
each size. Medians; printed as a Markdown table with the server's own breakdown.
"""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.synthesize import _maps
from pipeline.resize import resize_index_map
from resail_studio.pngio import encode_index

GOAL_MS = 150.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stroke(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brush disc painted with the class found just outside it (a plausible edit)."""
    h, w = lab.shape
    r = max(2, int(0.06 * w))
    cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
    yy, xx = np.ogrid[:h, :w]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    out = lab.copy()
    out[disc] = lab[min(h - 1, cy + r + 1), cx]
    return out


def run_studio_bench(run_dir: str | Path, cache_dir: str | Path | None = None, sizes: Sequence[tuple[int, int]] =
                     ((180, 240), (256, 512)), n_maps: int = 6, repeat: int = 5, device: str = "cpu",
                     threads: int = 2, reference_runs: int = 3, print_fn=print) -> list[dict]:
    import httpx
    import uvicorn

    from resail_studio.server import create_app
    from resail_train.synthesis import Synthesizer

    torch.set_num_threads(int(threads))
    syn = Synthesizer.load(run_dir, cache_dir, device)
    rows = []
    with syn, tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        srv = uvicorn.Server(uvicorn.Config(create_app(syn), host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=srv.run, daemon=True)
        th.start()
        while not srv.started:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        maps = _maps(syn, n_maps, "val")
        rng = np.random.default_rng(0)
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                for h, w in sizes:
                    edit_ms, stroke_ms, srv_t = [], [], []
                    for lab0, inst0 in maps:
                        lab = resize_index_map(lab0, h, w)
                        inst = None if inst0 is None else resize_index_map(inst0, h, w)
                        files = {"labels": ("l.png", encode_index(lab), "image/png")}
                        if inst is not None:
                            files["instances"] = ("i.png", encode_index(inst), "image/png")
                        st = c.post("/api/maps", files=files).json()
                        mid = st["map_id"]
                        c.get(st["image_url"])  # warm-up
                        seg = next((s["index"] for s in st["segments"] if s["n_candidates"] >= 2), 0)
                        for k in range(repeat):
                            t0 = time.perf_counter()
                            st = c.put(f"/api/maps/{mid}/segments/{seg}", json={"rank": 1 + k % 2}).json()
                            c.get(st["image_url"]).raise_for_status()
                            edit_ms.append(1e3 * (time.perf_counter() - t0))
                        for k in range(repeat):
                            body = encode_index(_stroke(lab, rng))  # the page encodes before sending
                            t0 = time.perf_counter()
                            r = c.put(f"/api/maps/{mid}/labels", files={"labels": ("l.png", body, "image/png")})
                            st = r.json()
                            c.get(st["image_url"]).raise_for_status()
                            stroke_ms.append(1e3 * (time.perf_counter() - t0))
                            srv_t.append(st["timings"])
                        c.delete(f"/api/maps/{mid}")
                    ref_ms = _reference(run_dir, syn.cache_dir, maps, (h, w), device, threads, reference_runs, Path(tmp))
                    med = {k: statistics.median(t[k] for t in srv_t) for k in
                           ("decompose_ms", "retrieve_ms", "compose_ms", "generate_ms", "segments_retrieved",
                            "segments_reused")}
                    rows.append({"size": f"{h}x{w}", "edit_ms": statistics.median(edit_ms),
                                 "stroke_ms": statistics.median(stroke_ms), "synthesize_process_ms": ref_ms, **med})
        finally:
            srv.should_exit = True
            th.join(10)
    print_fn(f"studio on {syn.device}, {threads} torch thread(s), generator {syn.size[0]}x{syn.size[1]}, "
             f"{len(maps)} validation maps × {repeat}, medians")
    print_fn("| label map | local edit (PUT + GET image) | paint stroke (PUT labels + GET image) | "
             "`resail synthesize` process | process / edit | stroke: decompose · retrieve · compose · generate "
             "(segments retrieved / reused) |")
    print_fn("|---|---|---|---|---|---|")
    for r in rows:
        print_fn(f"| {r['size']} | {r['edit_ms']:.0f} ms | {r['stroke_ms']:.0f} ms | {r['synthesize_process_ms']:.0f} ms | "
                 f"{r['synthesize_process_ms'] / r['edit_ms']:.0f}× | {r['decompose_ms']:.1f} · {r['retrieve_ms']:.1f} · "
                 f"{r['compose_ms']:.1f} · {r['generate_ms']:.1f} ms ({r['segments_retrieved']:.0f} / "
                 f"{r['segments_reused']:.0f}) |")
    big = [r for r in rows if r["size"] == "256x512"]
    if big:
        ok = big[0]["edit_ms"] < GOAL_MS
        print_fn(f"goal: edit round trip < {GOAL_MS:.0f} ms at 256x512 → {big[0]['edit_ms']:.0f} ms "
                 f"({'met' if ok else 'not met'})")
    return rows


def _reference(run_dir, cache_dir, maps, size, device: str, threads: int, runs: int, tmp: Path) -> float:
    """Median wall time of `resail synthesize` as a process on the first maps at ``size``."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    times = []
    for i in range(runs):
        lab0, _ = maps[i % len(maps)]
        lp = tmp / f"ref_{i}.png"
        lp.write_bytes(encode_index(resize_index_map(lab0, *size)))
        cmd = [sys.executable, "-m", "stages.cli", "synthesize", "--run", str(run_dir), "--cache", str(cache_dir),
               "--labels", str(lp), "--out", str(tmp / f"out_{i}.png"), "--device", device]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1], env=env)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)
