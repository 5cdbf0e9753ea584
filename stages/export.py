"""``resail export``: a run's generator as a small stand-alone model folder (``generator.pt`` in half
precision + ``config.yaml``), the form the repository ships its pretrained CamVid model in."""
from __future__ import annotations

from pathlib import Path

import click

from stages.options import run_option
from stages.params import Params


@click.command("export")
@run_option()
@click.option("--checkpoint", default="latest", show_default=True,
              help="latest (RUN/generator.pt) | best | PATH (a training checkpoint: its EMA generator when present)")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="folder to write generator.pt and config.yaml to")
@click.option("--half/--full", default=True, show_default=True, help="store the weights in float16 (half the size)")
@click.pass_obj
def command(p: Params, run, checkpoint, out, half) -> None:
    """Write OUT/generator.pt (+ config.yaml) from a run, for synthesis without the run folder."""
    import yaml

    from pipeline.cache.atomic import write_text_atomic
    from pipeline.errors import CacheError
    from resail_train import checkpoint as ckpt

    run_dir = p.run_dir(run, "--run")
    src = ckpt.generator_checkpoint_path(run_dir, checkpoint)
    if not src.is_file():
        raise CacheError(src, "generator checkpoint not found")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt.export_generator(src, out_dir / ckpt.GENERATOR_FILE, half=half)
    obj = ckpt.load_checkpoint(path)
    write_text_atomic(out_dir / ckpt.CONFIG_FILE, yaml.safe_dump(obj["config"], sort_keys=False))
    size = path.stat().st_size / 1e6
    click.echo(f"export: step {obj.get('step')}, {size:.1f} MB → {path}")
