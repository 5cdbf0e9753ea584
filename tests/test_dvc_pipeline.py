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


def test_dvc_repro_runs_skips_and_reruns_on_param_change(repo_copy):
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]
    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage 'decompose'" in out
    cache = repo / "datasets_cache" / "camvid_demo"
    for name in ("segments.parquet", "images.parquet", "segments.h5", "contact_sheet.png"):
        assert (cache / name).is_file(), name
    n_before = pq.read_metadata(cache / "segments.parquet").num_rows

    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage" not in out  # nothing changed → nothing re-runs

    params = (repo / "params.yaml").read_text().replace("min_area: 16", "min_area: 64")
    (repo / "params.yaml").write_text(params)
    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage 'decompose'" in out
    assert pq.read_metadata(cache / "segments.parquet").num_rows < n_before
