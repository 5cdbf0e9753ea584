"""The click options several ``resail`` commands share, declared once.

Each function returns a click decorator. The name, the type and the default of an option are fixed
here; a command passes only what differs between commands (mostly the help text, which says where the
default comes from: ``[params: section.key; default]`` when params.yaml can set it). Declarations
only: nothing here reads params.yaml or imports the pipeline, so every command module can use it.

Every integer option has a range (click shows it in ``--help`` and refuses a value outside it before
the command runs); the same ranges bound the params.yaml keys that set those options
(:data:`stages.params.SCHEMA`), so a value is refused alike wherever it comes from.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# ----------------------------------------------------------------- ranges of the integer options
SEED_MAX = 2 ** 63 - 1  # torch.manual_seed and numpy's generators take a 64-bit seed; beyond it they overflow
K_MAX = 1024  # retrieval.parquet and the top-k engine's working blocks hold N·k rows (N segments); 1024
#               covers Table B's rank sweep (k = 991; the released helper.py's 1001)
RANK_MAX = K_MAX - 1  # a candidate rank is below k; once the cache or run is loaded, below its own k
JOBS_MAX = 256  # worker processes; 0 = all cores
THREADS_MAX = 256  # torch CPU threads
BATCH_MAX = 1024  # images per network batch (1024 Inception inputs are 1 GiB of float32 already)
VARIANTS_MAX = 64  # distorted variants per image: all K of one image sit in one worker's memory at once
MASK_SIZE_MAX = 512  # S of the S×S normalised masks: every segment stores S²/8 bytes, every comparison reads them
PREVIEW_MAX = 10_000  # preview PNGs written next to a cache (one per image)
TILE_MAX = 1024  # contact-sheet tile side in pixels
COUNT_MAX = 2 ** 31 - 1  # images, steps, repeats, areas: counts the loaders and HDF5 indices keep in int32

SEEDS = click.IntRange(0, SEED_MAX)
RANKS = click.IntRange(0, RANK_MAX)
JOBS = click.IntRange(0, JOBS_MAX)
THREADS = click.IntRange(1, THREADS_MAX)


def count(lo: int = 1, hi: int = COUNT_MAX) -> click.IntRange:
    """An integer option's type: ``lo`` … ``hi`` (both shown in --help, both enforced)."""
    return click.IntRange(lo, hi)


class IntList(click.ParamType):
    """A comma-separated list of integers, each in ``lo`` … ``hi`` (``1,2,4``) → a tuple of ints."""

    name = "integers"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated integers", param, ctx)
        if not items:
            self.fail(f"{value!r}: expected at least one integer", param, ctx)
        bad = [v for v in items if not self.lo <= v <= self.hi]
        if bad:
            self.fail(f"{str(bad[0])[:40]} is not in the range {self.lo}<=x<={self.hi}", param, ctx)
        return items


class DeviceType(click.ParamType):
    """A torch device name: auto | cpu | cuda | cuda:N (anything else is refused before a tensor is made)."""

    name = "device"

    def convert(self, value, param, ctx):
        if is_device(value):
            return str(value)
        self.fail(f"{str(value)[:40]!r}: expected auto, cpu, cuda or cuda:N", param, ctx)


def is_device(value) -> bool:
    """Whether ``value`` names a device :class:`DeviceType` accepts."""
    text = value if isinstance(value, str) else ""
    return text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())

DEVICES = click.Choice(["auto", "cpu", "cuda"])
BACKENDS = click.Choice(["loky", "threads", "dask"])

CACHE_HELP = "cache folder [default: datasets_cache/<dataset.name>]"
RUN_CACHE_HELP = "stage cache (retrieval database) [default: the run's]"
RUN_OR_DATASET_CACHE_HELP = "stage cache [default: the run's, else datasets_cache/<dataset.name>]"
RUN_HELP = "run folder [params: train.run_dir; default runs/<dataset.name>]"
RUN_GENERATOR_HELP = "run folder with generator.pt [params: train.run_dir; default runs/<dataset.name>]"
CONFIG_HELP = "demo | cityscapes | ade20k | coco-stuff | path to a YAML config [params: train.config; demo]"
CHECKPOINT_HELP = ("generator: latest (RUN/generator.pt) | best (RUN/checkpoints/best.pt, lowest validation FID; "
                   "needs log.fid_every > 0) | PATH (a generator or training checkpoint) [latest]")
RECORDED_DATA_ROOT_HELP = "dataset root [default: recorded by decompose]"
SCHEDULER_HELP = "dask-distributed scheduler address (with --backend dask)"


def cache_option(help: str = CACHE_HELP, *, dest: str = "cache_dir") -> Decorator:
    """``--cache``: the stage cache folder (segment database, retrieval, guidance, distortions)."""
    return click.option("--cache", dest, type=click.Path(file_okay=False), default=None, help=help)


def run_option(help: str = RUN_HELP, *, dest: str = "run", required: bool = False) -> Decorator:
    """``--run``: a training run folder (``required``: no default at all, click refuses a missing one)."""
    if required:
        return click.option("--run", dest, type=click.Path(file_okay=False), required=True, help=help)
    return click.option("--run", dest, type=click.Path(file_okay=False), default=None, help=help)


def device_option(help: str | None = None, *, default: str | None = None, free: bool = False) -> Decorator:
    """``--device``: auto | cpu | cuda (``free``: any torch device string, e.g. ``cuda:1``)."""
    return click.option("--device", type=DeviceType() if free else DEVICES, default=default,
                        show_default=default is not None, help=help)


def progress_option(default: bool = True) -> Decorator:
    """``--progress/--no-progress``: tqdm bars on stderr."""
    return click.option("--progress/--no-progress", default=default)


def config_option(help: str = CONFIG_HELP, *, default: str | None = None) -> Decorator:
    """``--config``: a training config, by name (resail_train/configs) or path."""
    return click.option("--config", default=default, show_default=default is not None, help=help)


def set_option(help: str, *, dest: str = "sets") -> Decorator:
    """``--set KEY=VALUE`` (repeatable): a training-config override."""
    return click.option("--set", dest, multiple=True, metavar="KEY=VALUE", help=help)


def checkpoint_option(help: str = CHECKPOINT_HELP, metavar: str = "best|latest|PATH") -> Decorator:
    """``--checkpoint best|latest|PATH``: which generator of a run."""
    return click.option("--checkpoint", default=None, metavar=metavar, help=help)


def data_root_option(help: str | None = RECORDED_DATA_ROOT_HELP, *, default: str | None = None,
                     required: bool = False) -> Decorator:
    """``--data-root``: the dataset folder (``required``: no default at all, click refuses a missing one)."""
    if required:
        return click.option("--data-root", type=click.Path(file_okay=False), required=True, help=help)
    return click.option("--data-root", type=click.Path(file_okay=False), default=default,
                        show_default=default is not None, help=help)


def format_option(help: str | None = None, *, choices: Sequence[str] | None = None,
                  default: str | None = None) -> Decorator:
    """``--format``: the dataset layout (the caller passes pipeline.datasets.FORMATS to check it)."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)) if choices else None, default=default,
                        show_default=default is not None, help=help)


def jobs_option(help: str, *, default: int | None = None) -> Decorator:
    """``--jobs N``: parallel worker processes (0 = all cores)."""
    return click.option("--jobs", type=JOBS, default=default, show_default=default is not None, help=help)


def jobs_list_option() -> Decorator:
    """``--jobs 1,2`` of the throughput benchmarks: one measurement per worker count."""
    return click.option("--jobs", "jobs_list", type=IntList(1, JOBS_MAX), default="1,2", show_default=True,
                        help=f"comma-separated worker counts [each 1<=x<={JOBS_MAX}]")


def backend_option(help: str) -> Decorator:
    """``--backend``: how the workers run (joblib loky processes, threads, or a dask cluster)."""
    return click.option("--backend", type=BACKENDS, default=None, help=help)


def scheduler_option() -> Decorator:
    """``--scheduler``: the dask-distributed scheduler of ``--backend dask``."""
    return click.option("--scheduler", default=None, help=SCHEDULER_HELP)


def seed_option(help: str) -> Decorator:
    """``--seed``: a random seed (default from params.yaml, see the help)."""
    return click.option("--seed", type=SEEDS, default=None, help=help)


def rank_option(help: str) -> Decorator:
    """``--rank R``: a retrieval candidate rank; the command checks it against the loaded k too."""
    return click.option("--rank", type=RANKS, default=None, help=help)


def split_option(help: str | None = None, *, default: str | None = "val") -> Decorator:
    """``--split``: the dataset split to work on."""
    return click.option("--split", default=default, show_default=default is not None, help=help)


def repeat_option(default: int = 1, help: str | None = None, *, checked: bool = True) -> Decorator:
    """``--repeat N`` of the benchmarks: measurements per setting (always 1…COUNT_MAX; ``checked`` is
    accepted for the callers that still pass it)."""
    return click.option("--repeat", type=count(), default=default, show_default=True, help=help)


def threads_option(help: str | None = None, *, default: int | None = None, checked: bool = True) -> Decorator:
    """``--threads``: torch CPU threads (always 1…THREADS_MAX; ``checked`` is accepted for the callers that
    still pass it)."""
    return click.option("--threads", type=THREADS, default=default, show_default=default is not None, help=help)


def max_steps_option(help: str) -> Decorator:
    """``--max-steps N``: stop training after N steps."""
    return click.option("--max-steps", type=count(), default=None, help=help)


def vgg_weights_option(help: str) -> Decorator:
    """``--vgg-weights``: the VGG19 state dict of the perceptual loss."""
    return click.option("--vgg-weights", type=click.Path(dir_okay=False), default=None, help=help)


def inception_weights_option(help: str, *, default: str | None = None, metavar: str | None = None) -> Decorator:
    """``--inception-weights``: the FID network (auto = the bundled TorchScript Inception)."""
    return click.option("--inception-weights", default=default, show_default=default is not None, metavar=metavar,
                        help=help)


def batch_size_option(help: str | None = None, *, default: int | None = None) -> Decorator:
    """``--batch-size N``."""
    return click.option("--batch-size", type=count(1, BATCH_MAX), default=default,
                        show_default=default is not None, help=help)


def limit_option(help: str, *, checked: bool = True) -> Decorator:
    """``--limit N``: only the first N images (always 1…COUNT_MAX; ``checked`` is accepted for the
    callers that still pass it)."""
    return click.option("--limit", type=count(), default=None, help=help)


PALETTE_HELP = ("colour label maps: read RGB label PNGs through this palette (cityscapes | ade20k | coco-stuff | "
                "PATH.json; see docs/scoring.md) [default: label PNGs hold class ids]")
DATASET_SPEC_HELP = "class list of the label maps: cityscapes | ade20k | coco-stuff | folder:CLASSES.json"


def _parse_scales(ctx, param, value) -> list[float] | None:
    """``--scales 0.75,1,1.25`` → ``[0.75, 1.0, 1.25]`` (None: the protocol's own scales)."""
    if not value:
        return None
    try:
        scales = [float(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers") from None
    if not scales or any(not x > 0 for x in scales):
        raise click.BadParameter(f"{value!r}: scales must be positive")
    return scales


def scales_option(help: str) -> Decorator:
    """``--scales S[,S…]``: the segmenter's test scales, parsed into a list of positive floats."""
    return click.option("--scales", default=None, metavar="S[,S…]", callback=_parse_scales, help=help)


def palette_option(help: str = PALETTE_HELP) -> Decorator:
    """``--palette``: the colour table of colour label maps (pipeline.datasets.palette)."""
    return click.option("--palette", default=None, metavar="cityscapes|ade20k|coco-stuff|PATH.json", help=help)


def dataset_spec_option(help: str = DATASET_SPEC_HELP, *, required: bool = False) -> Decorator:
    """``--dataset``: a dataset's class list by name, or ``folder:CLASSES.json``."""
    return click.option("--dataset", "dataset_spec", required=required, default=None,
                        metavar="cityscapes|ade20k|coco-stuff|folder:CLASSES.json", help=help)
