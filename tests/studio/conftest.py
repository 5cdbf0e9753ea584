"""Fixtures of the studio tests: the guidance-sensitive copy of the tiny run (``srun``), a Synthesizer
on it (``syn``, overriding tests/conftest.py's on the plain tiny run) and FastAPI's test client."""
from __future__ import annotations

import pytest

from tests.fixtures.studio import guidance_sensitive_run


@pytest.fixture(scope="module")
def srun(tmp_path_factory):
    return guidance_sensitive_run(tmp_path_factory)


@pytest.fixture(scope="module")
def syn(srun):
    from resail_train.synthesis import Synthesizer

    s = Synthesizer.load(srun[0], srun[1], device="cpu")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(syn):
    from fastapi.testclient import TestClient

    from resail_studio.server import create_app

    return TestClient(create_app(syn))
