"""``resail synthesize``: label map(s) → image(s) with rank-``R`` retrieval guidance, from a trained run.

A PNG in → a PNG out; a folder of PNGs in → a folder out, with a progress bar; ``--instances``
likewise, matched by file name. Every input is read and checked before anything is written, and every
output is written atomically, so a bad input (class ids outside the class list, an instance map of
another size, an unreadable PNG) fails with one line and leaves nothing behind.

Defaults from params.yaml: run folder ``train.run_dir`` (else ``runs/<dataset.name>``); cache: the one
the run records, else ``datasets_cache/<dataset.name>``; section ``synthesize`` (``device``, ``seed``,
``rank``). ``--checkpoint best|latest|PATH`` picks the generator.

Several images for one map: ``--samples N`` (1…64) and/or ``--temperature T`` (> 0; 1 when only
``--samples`` is given) write ``NAME_s0.png … NAME_s{N-1}.png`` (guidance likewise): sample ``i``
draws each segment's candidate from its top-k by a softmax over −score/T with the numpy Generator of
(``--seed``, i) (:meth:`resail_train.synthesis.Synthesizer.samples`). ``--samples 1`` without
``--temperature`` is plain synthesis (same names and bytes).
"""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.errors import ConfigError, DataError
from pipeline.online import MAX_SAMPLES
from stages.label_inputs import png_out, read_inputs, refuse_overwrite
from stages.options import (RUN_CACHE_HELP, RUN_GENERATOR_HELP, cache_option, checkpoint_option, count, device_option,
                            palette_option, progress_option, rank_option, run_option, seed_option)
from stages.params import Params
from stages.trained_run import load_synthesizer


@click.command("synthesize")
@run_option(RUN_GENERATOR_HELP)
@click.option("--labels", type=click.Path(exists=True, path_type=Path), required=True,
              help="label map PNG (class ids, or colours with --palette) or a folder of them")
@click.option("--instances", type=click.Path(exists=True, path_type=Path), default=None,
              help="instance map PNG (or folder, matched by file name)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output PNG (or folder for a folder)")
@click.option("--save-guidance", type=click.Path(path_type=Path), default=None,
              help="also write the retrieval guidance (PNG, or folder)")
@rank_option("candidate rank for every segment, below the retrieval's k [params: synthesize.rank; 0]")
@click.option("--samples", "n_samples", type=count(1, MAX_SAMPLES), default=None, metavar="N",
              help="N different images per map, drawn from each segment's top-k: NAME_s0.png … (1..64) [1]")
@click.option("--temperature", type=float, default=None, metavar="T",
              help="softmax temperature of the draw over -score/T (> 0; -> 0: rank 0) [1 with --samples]")
@seed_option("torch seed, and the draw's seed with --samples [params: synthesize.seed; 0]")
@palette_option()
@cache_option(RUN_CACHE_HELP, dest="cache")
@device_option("[params: synthesize.device; auto]")
@checkpoint_option()
@progress_option()
@click.pass_obj
def command(p: Params, run, labels: Path, instances: Path | None, out: Path, save_guidance: Path | None,
            rank, n_samples, temperature, seed, palette, cache, device, checkpoint, progress) -> None:
    """Generate images from label maps with retrieval guidance (several per map with --samples)."""
    from pipeline.online import DEFAULT_TEMPERATURE, check_samples, check_temperature
    from pipeline.datasets.palette import load_palette
    from pipeline.visualize import write_png

    palette = load_palette(palette)
    rank = int(p.get("synthesize", "rank", rank, 0))
    seed = int(p.get("synthesize", "seed", seed, 0))
    n = 1 if n_samples is None else check_samples(n_samples, "--samples")
    drawn = n > 1 or temperature is not None
    if drawn:
        temperature = check_temperature(DEFAULT_TEMPERATURE if temperature is None else temperature, "--temperature")
        if rank != 0:
            raise ConfigError(None, f"--samples/--temperature draw every segment's rank; drop --rank {rank} "
                                    f"(or synthesize.rank)")
    folder = labels.is_dir()
    if folder:
        files = sorted(f for f in labels.iterdir() if f.suffix.lower() == ".png" and f.is_file())
        if not files:
            raise DataError(labels, "no .png label maps in this folder")
        if instances is not None and not instances.is_dir():
            raise click.BadParameter("a folder of label maps needs a folder of instance maps", param_hint="--instances")
        if out.suffix.lower() == ".png" or (out.exists() and not out.is_dir()):
            raise click.BadParameter(f"{out}: a folder of label maps writes a folder", param_hint="--out")
        pairs = []
        for f in files:
            ip = None
            if instances is not None:
                ip = instances / f.name
                if not ip.is_file():
                    raise DataError(ip, f"instance map for {f} is missing")
            pairs.append((f, ip, out / f.name, None if save_guidance is None else save_guidance / f.name))
    else:
        if instances is not None and instances.is_dir():
            raise click.BadParameter("one label map takes one instance map PNG", param_hint="--instances")
        pairs = [(labels, instances, png_out(out, "--out"),
                  None if save_guidance is None else png_out(save_guidance, "--save-guidance"))]
    # every file that will be written (each sample's with --samples), and the output folders
    written = [(opt, path if not drawn else sample_path(path, i)) for _, _, out_p, g_p in pairs
               for opt, path in (("--out", out_p), ("--save-guidance", g_p)) if path is not None
               for i in range(n if drawn else 1)]
    folders = [("--out", out), ("--save-guidance", save_guidance)] if folder else []
    refuse_overwrite([("--labels", labels), ("--instances", instances)]
                     + [("--labels", f) for f, _, _, _ in pairs] + [("--instances", i) for _, i, _, _ in pairs],
                     folders + written)
    syn = load_synthesizer(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        if not drawn:
            from resail_studio.editor import check_rank

            rank = check_rank(rank, syn.online.params.k, "--rank")  # no candidate exists at rank k or beyond
        for lab_p, inst_p, _, _ in pairs:  # check everything before writing anything
            read_inputs(lab_p, inst_p, syn, palette)
        it = pairs
        bar = None
        if folder and progress:
            from tqdm import tqdm

            bar = it = tqdm(pairs, desc="synthesize", unit="img", dynamic_ncols=True)
        for lab_p, inst_p, out_p, g_p in it:
            lab, inst = read_inputs(lab_p, inst_p, syn, palette)
            if drawn:
                for i, (img, guid, _) in enumerate(syn.samples(lab, inst, n, temperature=temperature, seed=seed,
                                                               source=lab_p)):
                    write_png(sample_path(out_p, i), img)
                    if g_p is not None:
                        write_png(sample_path(g_p, i), guid)
                continue
            img, guid, _ = syn.synthesize(lab, inst, rank=rank, seed=seed, source=lab_p)
            write_png(out_p, img)
            if g_p is not None:
                write_png(g_p, guid)
        if bar is not None:
            bar.close()
    where = out if folder else pairs[0][2]
    if drawn:
        shown = where if folder else sample_path(where, 0) if n == 1 else \
            f"{sample_path(where, 0)} … {sample_path(where, n - 1).name}"
        click.echo(f"synthesize: {len(pairs)} map(s) × {n} sample(s), temperature {temperature:g}, seed {seed}, "
                   f"generator {syn.size[0]}x{syn.size[1]} on {syn.device} → {shown}")
        return
    click.echo(f"synthesize: {len(pairs)} image(s), rank {rank}, generator {syn.size[0]}x{syn.size[1]} "
               f"on {syn.device} → {where}")


def sample_path(path: Path, i: int) -> Path:
    """``NAME.png`` → ``NAME_s{i}.png`` (the i-th sample of ``--samples``)."""
    return path.with_name(f"{path.stem}_s{i}{path.suffix}")
