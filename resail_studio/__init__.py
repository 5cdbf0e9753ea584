"""``resail studio``: a local web studio over a trained run (paint label maps, swap retrieved segments).

* :mod:`resail_studio.pngio` — PNG bytes in and out (uploads are decoded in memory, never saved);
* :mod:`resail_studio.editor` — one label map's editing state: decomposition, top-k reused across
  repaints, the rank/reference/local choices, the synthesis and a history of snapshots;
* :mod:`resail_studio.sessions` — the bounded store of those states (oldest evicted);
* :mod:`resail_studio.server` — the FastAPI application (JSON API + the static page in ``static/``).
"""
