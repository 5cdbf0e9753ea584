"""``resail studio``: open a trained run in a local web studio (paint label maps, swap segments).

Loads the run once (generator + on-line retrieval index + segment crops), prints the URL and serves
:mod:`resail_studio.server` with uvicorn until Ctrl-C. Binds 127.0.0.1 unless ``--host`` says
otherwise (the studio has no authentication). Defaults: run ``train.run_dir``, cache the run's,
device/seed from the ``synthesize`` section of params.yaml. Its latency benchmark is ``resail bench
studio`` (stages/bench.py).
"""
from __future__ import annotations

import errno
import ipaddress
import socket

import click

from pipeline.errors import ConfigError
from stages.options import (RUN_CACHE_HELP, cache_option, checkpoint_option, count, device_option, palette_option,
                            run_option, seed_option)
from stages.params import Params
from stages.trained_run import load_synthesizer


@click.command("studio")
@run_option()
@cache_option(RUN_CACHE_HELP, dest="cache")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (the studio has no login: keep it local)")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@checkpoint_option()
@device_option("[params: synthesize.device; auto]")
@seed_option("torch seed [params: synthesize.seed; 0]")
@click.option("--max-maps", type=count(1, 1024), default=16, show_default=True,
              help="open label maps kept (least recently used evicted)")
@click.option("--max-memory-mb", type=count(16, 1 << 20), default=1024, show_default=True,
              help="memory for the open maps (least recently used evicted)")
@click.option("--max-megapixels", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="largest label map accepted (at most the readers' pixel cap, limits.max_pixels)")
@palette_option("uploaded label maps may be colour PNGs read through this palette (cityscapes | ade20k | "
                "coco-stuff | PATH.json) [default: class ids only]")
@click.pass_obj
def command(p: Params, run, cache, host, port, checkpoint, device, seed, max_maps, max_memory_mb,
            max_megapixels, palette) -> None:
    """Edit syntheses in the browser: paint the label map, pick retrieved segments, global/reference edits."""
    import uvicorn

    from pipeline.datasets.palette import load_palette
    from resail_studio.server import create_app

    from pipeline.datasets.base import max_pixels

    if max_megapixels * 1e6 > max_pixels():
        raise ConfigError(None, f"--max-megapixels {max_megapixels:g} is above the pixel cap of {max_pixels() / 1e6:g} "
                                f"Mpx (raise limits.max_pixels in params.yaml or $RESAIL_MAX_PIXELS)")
    check_port(host, port)  # before the run is loaded: a busy port fails in one line, at once
    if not is_loopback(host):
        click.echo(f"warning: --host {host} makes the studio reachable from other machines and it has no "
                   f"authentication: anyone who can reach port {port} can use it", err=True)
    palette = load_palette(palette)
    run_dir = p.run_dir(run, "--run")
    syn = load_synthesizer(p, run, cache, device, "synthesize", checkpoint)
    with syn:
        app = create_app(syn, seed=int(p.get("synthesize", "seed", seed, 0)), max_maps=max_maps,
                         max_bytes=int(max_memory_mb) << 20, max_pixels=int(max_megapixels * 1e6),
                         run_name=str(run_dir), palette=palette)
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"studio: {run_dir} ({syn.meta.dataset}, generator {syn.size[0]}x{syn.size[1]} on {syn.device}) "
                   f"→ http://{shown}:{port}/   (Ctrl-C stops)")
        uvicorn.run(app, host=host, port=port, log_level="warning")


def check_port(host: str, port: int) -> None:
    """ConfigError (one line) unless ``host``:``port`` can be bound now; uvicorn would otherwise print its
    own error after the run was loaded and exit with status 3. The test socket sets SO_REUSEADDR as
    uvicorn's does, so a port left in TIME_WAIT by a stopped studio counts as free."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(None, f"--host {host}: not an address of this machine ({e})") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(None, f"port {port} on {host} is in use ({e.strerror}); stop what serves it or "
                                        f"choose another --port") from None
            raise ConfigError(None, f"cannot listen on {host} port {port} ({e.strerror or e})") from None


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1): only this machine
    can reach it. 0.0.0.0 / :: (every interface) and any other address are not."""
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
        return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)
    except (socket.gaierror, UnicodeError, ValueError):
        return False
