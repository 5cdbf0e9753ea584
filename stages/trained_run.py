"""A trained run as the commands that use one find it: its cache folder and its synthesizer.

Shared by ``resail synthesize``, ``edit``, ``evaluate``, ``report`` and ``studio``. The run folder is
``--run``, else ``train.run_dir`` of params.yaml, else ``runs/<dataset.name>``; its cache is
``--cache``, else the one the run records, else ``datasets_cache/<dataset.name>``.
"""
from __future__ import annotations

from pathlib import Path

from stages.params import Params


def run_cache_dir(p: Params, run_dir: Path, cache: str | None) -> Path | None:
    """--cache, else the run's recorded cache, else datasets_cache/<dataset.name> (None: let load() complain)."""
    from resail_train.checkpoint import recorded_cache_dir

    if cache:
        return Path(cache)
    rec = recorded_cache_dir(run_dir) if run_dir.is_dir() else None
    if rec is not None:
        return rec
    name = p.get("dataset", "name")
    return Path("datasets_cache") / str(name) if name else None


def load_synthesizer(p: Params, run: str | None, cache: str | None, device: str | None, section: str,
                     checkpoint: str | None = None):
    """The run's :class:`resail_train.synthesis.Synthesizer`; ``device`` defaults to ``<section>.device``."""
    from resail_train.synthesis import Synthesizer

    run_dir = p.run_dir(run, "--run")
    return Synthesizer.load(run_dir, run_cache_dir(p, run_dir, cache), p.get(section, "device", device, "auto"),
                            checkpoint=checkpoint or "latest")
