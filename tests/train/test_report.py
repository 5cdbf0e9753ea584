"""``report``: a self-contained index.html with existing PNGs; paper-row mapping; plots; Chromium render."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.fixtures.cli import cli
from tests.fixtures.tiny_run import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run copy, cache, index.html): evaluated, then reported without --cache (recorded by evaluate)."""
    from resail_train.evaluation import evaluate
    from resail_train.reporting.report import write_report

    run_dir, cache_dir = tiny_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(copy, cache_dir, device="cpu", batch_size=2)
        index = write_report(copy, device="cpu", n_images=2)
    finally:
        torch.set_num_threads(n)
    return copy, cache_dir, index


def _refs(text: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"(?:src|href)\s*=\s*'([^']*)'", text)


def test_index_is_self_contained_and_links_exist(report):
    run_dir, _, index = report
    assert index == run_dir / "report" / "index.html" and index.is_file()
    text = index.read_text()
    refs = _refs(text)
    assert refs, "the report shows pictures"
    # nothing is loaded from the network (a URL may appear as text, e.g. where FID weights come from)
    assert not any(r.lower().startswith(("http://", "https://", "//")) for r in refs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*https?://", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert "<link" not in text.lower() and "<iframe" not in text.lower()
    for r in refs:
        assert not r.startswith(("/", "file:")) and ".." not in r, r
        p = index.parent / r
        assert p.is_file(), r
        assert cv2.imread(str(p)) is not None, r
    for name in ("samples.png", "edit_local.png", "edit_global.png", "curves_generator.png"):
        assert name in refs, name
    assert "no paper row" in text and "Metrics" in text and "Local editing" in text and "Global editing" in text
    assert not list(run_dir.glob(".report*"))


def test_report_grid_shapes(report):
    _, _, index = report
    grid = cv2.imread(str(index.parent / "samples.png"))
    # two sample rows of four tiles (label | guidance | generated | real)
    assert grid.shape[0] > 2 * 160 and grid.shape[1] > 4 * 200
    strip = cv2.imread(str(index.parent / "edit_local.png"))
    assert strip.shape[0] > 2 * 160


def test_paper_rows():
    from resail_train.reporting.report import paper_row

    assert paper_row("cityscapes")[1][1:] == (45.5, 69.7, 83.2)
    assert paper_row("ade20k")[1][1:] == (30.2, 49.3, 84.8)
    assert paper_row("ade20k", "datasets_cache/ade20k_outdoor")[1][1:] == (48.6, 41.1, 86.5)
    assert paper_row("coco-stuff")[1][1:] == (18.3, 44.7, 73.1)
    assert paper_row("camvid") == ("no paper row (CamVid demo)", None)
    assert paper_row("toy")[1] is None


def test_line_plot_draws_something(tmp_path):
    from resail_train.reporting.report import line_plot, read_tsv

    p = tmp_path / "G.tsv"
    p.write_text("step\tG\n1\t2.0\n2\t1.5\n3\tnan\n4\t1.0\n")
    x, y = read_tsv(p)
    assert x.tolist() == [1, 2, 4] and y.tolist() == [2.0, 1.5, 1.0]
    img = line_plot({"G": (x, y), "const": (x, np.ones(3))}, "t")
    assert img.shape == (300, 560, 3) and img.dtype == np.uint8 and len(np.unique(img.reshape(-1, 3), axis=0)) > 5
    empty = line_plot({}, "empty")
    assert empty.shape == (300, 560, 3)


def test_report_cli_prints_path(report, tmp_path):
    run_dir, cache_dir, _ = report
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    r = CliRunner().invoke(cli(), ["report", "--run", str(run2), "--cache", str(cache_dir), "--device", "cpu",
                                   "--n-images", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(run2 / "report" / "index.html")
    r = CliRunner().invoke(cli(), ["report", "--run", str(tmp_path / "nope"), "--device", "cpu"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "nope" in r.output, r.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed here (install it to check that the "
                                                "report renders: apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, _, index = report
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
           index.resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    assert img.std() > 5 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank
