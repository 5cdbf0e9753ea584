"""``resail studio``: open a trained run in a local web studio (paint label maps, swap segments).

Loads the run once (generator + on-line retrieval index + segment crops), prints the URL and serves
:mod:`resail_studio.server` with uvicorn until Ctrl-C. Binds 127.0.0.1 unless ``--host`` says
otherwise (the studio has no authentication). Defaults: run ``train.run_dir``, cache the run's,
device/seed from the ``synthesize`` section of params.yaml.
"""
from __future__ import annotations

import click

from stages.params import Params
from stages.synthesize import CHECKPOINT_HELP, DEVICES, _load


@click.command("studio")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="run folder [params: train.run_dir; default runs/<dataset.name>]")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="stage cache (retrieval database) [default: the run's]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (the studio has no login: keep it local)")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--checkpoint", default=None, metavar="best|latest|PATH", help=CHECKPOINT_HELP)
@click.option("--device", type=DEVICES, default=None, help="[params: synthesize.device; auto]")
@click.option("--seed", type=int, default=None, help="torch seed [params: synthesize.seed; 0]")
@click.option("--max-maps", type=click.IntRange(min=1), default=16, show_default=True,
              help="open label maps kept (least recently used evicted)")
@click.option("--max-memory-mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="memory for the open maps (least recently used evicted)")
@click.option("--max-megapixels", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="largest label map accepted")
@click.pass_obj
def command(p: Params, run, cache, host, port, checkpoint, device, seed, max_maps, max_memory_mb,
            max_megapixels) -> None:
    """Edit syntheses in the browser: paint the label map, pick retrieved segments, global/reference edits."""
    import uvicorn

    from resail_studio.server import create_app

    run_dir = p.run_dir(run, "--run")
    syn = _load(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        app = create_app(syn, seed=int(p.get("synthesize", "seed", seed, 0)), max_maps=max_maps,
                         max_bytes=int(max_memory_mb) << 20, max_pixels=int(max_megapixels * 1e6),
                         run_name=str(run_dir))
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"studio: {run_dir} ({syn.meta.dataset}, generator {syn.size[0]}x{syn.size[1]} on {syn.device}) "
                   f"→ http://{shown}:{port}/   (Ctrl-C stops)")
        uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command("studio")
@click.option("--run", "run_dir", required=True, help="a trained run folder (e.g. runs/camvid_demo)")
@click.option("--cache", "cache_dir", default=None, help="its cache [default: recorded in the run]")
@click.option("--sizes", default="180x240,256x512", show_default=True, help="label map sizes H×W")
@click.option("--n", "n_maps", type=click.IntRange(min=1), default=6, show_default=True, help="validation maps")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True, help="edits and strokes per map")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch threads (cores)")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
def bench_command(run_dir, cache_dir, sizes, n_maps, repeat, threads, device) -> None:
    """Studio round trips (local edit, paint stroke) against `resail synthesize` as a process."""
    from benchmarks.studio import run_studio_bench

    try:
        size_list = [tuple(int(v) for v in s.lower().split("x")) for s in sizes.split(",") if s]
    except ValueError:
        raise click.BadParameter(f"{sizes!r}: expected HxW[,HxW…]", param_hint="--sizes") from None
    run_studio_bench(run_dir, cache_dir, size_list, n_maps=n_maps, repeat=repeat, device=device, threads=threads)
