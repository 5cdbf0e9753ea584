"""`dvc repro` of the shipped pipeline in a fresh git repo: runs, skips when nothing changed,
re-runs only what a changed parameter touches."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def repo_copy(tmp_path: Path) -> tuple[Path, dict]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    dst = tmp_path / "repo"
    for f in files:
        if (REPO / f).is_file() and not f.startswith(("tests/", "dvc.lock")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "init"], dst, env)
    return dst, env


def set_params(repo, **sections) -> None:
    import yaml

    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        data[section].update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_dvc_repro_runs_skips_and_reruns_on_param_change(repo_copy):
    """The whole shipped pipeline, shrunk (2 training steps), then selective re-runs."""
    repo, env = repo_copy
    set_params(repo, distort={"variants": 1}, train={"max_steps": 2, "segnet_max_steps": 2},
               evaluate={"limit": 3}, report={"n_images": 2})
    dvc = [sys.executable, "-m", "dvc"]
    out = sh([*dvc, "repro"], repo, env)
    for stage in ("decompose", "contact_sheet", "retrieve", "compose", "distort", "train_segnet", "train",
                  "evaluate", "report"):
        assert f"Running stage '{stage}'" in out, stage
    cache = repo / "datasets_cache" / "camvid_demo"
    for name in ("segments.parquet", "images.parquet", "segments.h5", "contact_sheet.png", "retrieval.parquet",
                 "guidance.h5", "distortions.h5"):
        assert (cache / name).is_file(), name
    run = repo / "runs" / "camvid_demo"
    for name in ("segnet.pt", "generator.pt", "metrics.json", "report/index.html"):
        assert (run / name).is_file(), name
    metrics = sh([*dvc, "metrics", "show", "--json"], repo, env)
    assert "miou" in metrics and "pixel_acc" in metrics
    n_before = pq.read_metadata(cache / "segments.parquet").num_rows

    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage" not in out  # nothing changed → nothing re-runs

    set_params(repo, report={"n_images": 1})
    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage 'report'" in out and "Running stage 'train'" not in out \
        and "Running stage 'decompose'" not in out

    set_params(repo, decompose={"min_area": 64})
    out = sh([*dvc, "repro", "decompose"], repo, env)
    assert "Running stage 'decompose'" in out and "Running stage 'retrieve'" not in out
    assert pq.read_metadata(cache / "segments.parquet").num_rows < n_before
