"""Hostile or damaged files, each reproduced on tiny data: corrupt bytes inside compressed HDF5 chunks,
oversized model configs, YAML alias bombs and deeply nested JSON in run folders, markup in run names
and params, low-bit-depth and palette label PNGs, and UperNet checkpoints as CSAILVision saved them.

Every test states its expectation independently of the code under test (hand-built files, direct
computations); none measures time."""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline import cache
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.errors import CacheError, ConfigError, DataError, ResailError
from tests.fixtures.toy_dataset import make_toy_dataset


def invoke(args: list[str], tmp: Path):
    """Run the ``resail`` CLI (skipped while ``stages/`` cannot be imported: it is being restructured)."""
    try:
        from stages.cli import main
    except Exception as e:  # noqa: BLE001 - any import-time failure of the module being rebuilt
        pytest.skip(f"the CLI does not import right now ({type(e).__name__}: {e})")
    params = tmp / "empty_params.yaml"
    params.write_text("{}\n")
    return CliRunner().invoke(main, ["--params", str(params), *args], catch_exceptions=False)


def one_error_line(res) -> str:
    """The CLI failed with exactly one line ``error: …`` and no traceback."""
    out = res.output.strip()
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and len(out.splitlines()) == 1 and out.startswith("error: "), res.output
    return out


# =========================================================================== damaged HDF5 chunks
def flip_chunk_bytes(path: Path, key: str, chunk: int = 0, n: int = 16) -> None:
    """Invert ``n`` bytes in the middle of one stored chunk of ``key``: headers, sizes and the chunk
    index stay intact, so the file opens and only inflating that chunk fails."""
    with h5py.File(path, "r") as f:
        ds = f[key]
        assert ds.compression == "gzip", "the damage must sit inside a compressed chunk"
        info = ds.id.get_chunk_info(chunk)
    assert info.size > 2 * n
    at = info.byte_offset + info.size // 2 - n // 2
    with open(path, "r+b") as fh:
        fh.seek(at)
        data = fh.read(n)
        fh.seek(at)
        fh.write(bytes(b ^ 0xFF for b in data))
    with h5py.File(path, "r") as f, pytest.raises(OSError, match="read data"):
        f[key][...]  # the premise: h5py itself fails on that chunk with a bare OSError


def assert_damaged(err: BaseException, path: Path, key: str, stage: str) -> None:
    """One CacheError line naming the file, the dataset's HDF5 path and the stage to rerun."""
    msg = str(err)
    assert type(err) is CacheError, (type(err), msg)
    assert "\n" not in msg and msg.startswith(f"{path}: dataset {key} is damaged"), msg
    assert msg.endswith(f"rebuild with `resail {stage}`"), msg


@pytest.fixture(scope="module")
def seg_cache(tmp_path_factory) -> dict:
    """decompose of 4+2 toy images (no retrieval); tests copy it."""
    base = tmp_path_factory.mktemp("hostile_seg")
    data = make_toy_dataset(base / "toy", n_train=4, n_val=2, seed=3)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, params=DecomposeParams(min_area=4), progress=False)
    return {"data": data, "cache": cache_dir}


@pytest.fixture
def seg_work(seg_cache, tmp_path) -> dict:
    data, cache_dir = tmp_path / "toy", tmp_path / "cache"
    shutil.copytree(seg_cache["data"], data)
    shutil.copytree(seg_cache["cache"], cache_dir)
    with h5py.File(cache_dir / cache.SEGMENTS_H5, "r+") as f:
        f.attrs["data_root"] = str(data)
    return {"data": data, "cache": cache_dir, "tmp": tmp_path}


def test_damaged_segment_masks_stop_retrieve_and_studio_with_one_line(seg_work):
    from pipeline.online import OnlineGuidance
    from pipeline.retrieve.build import run_retrieval

    cache_dir = seg_work["cache"]
    h5p = cache_dir / cache.SEGMENTS_H5
    flip_chunk_bytes(h5p, "norm_masks")
    with pytest.raises(ResailError) as e:
        run_retrieval(cache_dir, progress=False)
    assert_damaged(e.value, h5p, "/norm_masks", "decompose")
    with pytest.raises(ResailError) as e:  # what the studio and `resail synthesize` open first
        OnlineGuidance(cache_dir)
    assert_damaged(e.value, h5p, "/norm_masks", "decompose")


def test_damaged_segment_masks_in_the_retrieve_command_is_one_line(seg_work):
    cache_dir = seg_work["cache"]
    h5p = cache_dir / cache.SEGMENTS_H5
    flip_chunk_bytes(h5p, "norm_masks")
    res = invoke(["retrieve", "--cache", str(cache_dir), "--no-progress"], seg_work["tmp"])
    line = one_error_line(res)
    assert f"{h5p}: dataset /norm_masks is damaged" in line and "`resail decompose`" in line


def _recompress(path: Path, key: str) -> None:
    """Store ``key`` again gzip-compressed in chunks (as compose/distort write it), same values."""
    with h5py.File(path, "r+") as f:
        data = f[key][...]
        del f[key]
        f.create_dataset(key, data=data, chunks=data.shape, compression="gzip", compression_opts=4)


@pytest.fixture
def train_cache(tmp_path) -> Path:
    from tests.fixtures.train_cache import make_train_cache

    cache_dir = make_train_cache(tmp_path / "c", n_train=2, n_val=0, size=(32, 32), variants=2, noise=20)
    for name in (cache.GUIDANCE_H5, cache.DISTORTIONS_H5):
        for image_id in ("train_000", "train_001"):
            _recompress(cache_dir / name, cache.image_key("train", image_id))
    return cache_dir


def test_damaged_guidance_chunk_in_a_dataloader_worker_is_the_one_line_error(train_cache):
    from resail_train.training.data import CacheDataset, collate

    gpath = train_cache / cache.GUIDANCE_H5
    key = cache.image_key("train", "train_001")
    flip_chunk_bytes(gpath, key)
    ds = CacheDataset(train_cache, "train", load_size=None, crop_size=[32, 32], train=False, guidance="rank0",
                      distortions=False)
    assert ds[0]["guidance"].shape == (3, 32, 32)  # the intact image still reads
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate,
                                         multiprocessing_context="spawn")
    with pytest.raises(Exception) as e:  # any class: assert_damaged checks it is CacheError
        for _ in loader:
            pass
    assert_damaged(e.value, gpath, key, "compose")
    ds.close()


def test_damaged_distortion_chunk_is_one_line_naming_distort(train_cache):
    from resail_train.training.data import CacheDataset

    dpath = train_cache / cache.DISTORTIONS_H5
    key = cache.image_key("train", "train_000")
    flip_chunk_bytes(dpath, key)
    ds = CacheDataset(train_cache, "train", load_size=None, crop_size=[32, 32], train=True, guidance=None,
                      distortions=True)
    with pytest.raises(Exception) as e:
        ds[(0, 0)]
    assert_damaged(e.value, dpath, key, "distort")
    assert ds[(0, 1)]["distorted"].shape == (3, 32, 32)
    ds.close()


# =========================================================================== model sizes in the config
# The documented ranges (resail_train/config.py docstring), written out here rather than read from the module.
RANGES = {
    "model.ngf": (1, 256), "model.ndf": (1, 256), "model.norm_hidden": (1, 1024), "model.num_upsampling": (0, 7),
    "model.n_layers_D": (1, 6), "model.num_D": (1, 4), "segnet.base_width": (2, 512), "optim.batch_size": (1, 1024),
    "segnet.batch_size": (1, 1024),
}


def _user_config(tmp_path: Path, section: str, key: str, value) -> Path:
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"base": "demo", section: {key: value}}))
    return p


def test_a_huge_ngf_is_one_config_line_naming_key_value_and_range(tmp_path):
    from resail_train.config import load_config

    cfg = _user_config(tmp_path, "model", "ngf", 100000)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)  # before: accepted, and building the generator asked for ~92 TB
    assert str(e.value) == f"{cfg.resolve()}: model.ngf: must be in 1..256, got 100000"


@pytest.mark.parametrize("dotted", sorted(RANGES))
def test_every_model_size_is_bounded_on_both_sides(tmp_path, dotted):
    from resail_train.config import load_config

    lo, hi = RANGES[dotted]
    section, key = dotted.split(".")
    for bad in (hi + 1, lo - 1, 10 ** 9):
        cfg = _user_config(tmp_path, section, key, bad)
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        assert f"{dotted}: must be in {lo}..{hi}, got {bad}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=rf"{dotted}: must be in {lo}\.\.{hi}, got {hi + 1}"):
        load_config("demo", [f"{dotted}={hi + 1}"])  # the same through --set


def test_crop_and_load_sizes_are_bounded_per_side(tmp_path):
    from resail_train.config import load_config

    for key in ("crop_size", "load_size"):
        cfg = _user_config(tmp_path, "data", key, [96, 100000])
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        assert f"data.{key}: each side must be in 1..4096, got [96, 100000]" in str(e.value)


def test_the_paper_configs_are_inside_the_ranges():
    from resail_train.config import CONFIG_NAMES, load_config

    paper = {"cityscapes": ((256, 512), 6), "ade20k": ((256, 256), 5), "coco-stuff": ((256, 256), 5)}
    for name in CONFIG_NAMES:
        cfg = load_config(name)  # would raise if a built-in value were out of range
        if name in paper:
            assert (tuple(cfg.data.crop_size), cfg.model.num_upsampling) == paper[name]
            assert (cfg.model.ngf, cfg.model.ndf, cfg.model.norm_hidden) == (64, 64, 128)
            assert (cfg.model.n_layers_D, cfg.model.num_D, cfg.segnet.base_width) == (4, 2, 128)


# =========================================================================== hostile run files
def make_run(root: Path, name: str, norm: str = "resail", params: dict | None = None) -> Path:
    """A minimal run folder as `resail train` + `resail evaluate` leave it."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"name": "demo", "model": {"norm": norm, "ngf": 8}, **(params or {})}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.json").write_text(json.dumps({"fid": 50.0, "miou": 0.5, "pixel_acc": 0.8, "segmenter": "own"}))
    (run / "train_summary.json").write_text(json.dumps({"step": 20, "seconds": 12.0}))
    return run


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: level k lists level k-1 nine times (9**levels strings in ~700 bytes)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_in_config_is_refused_in_one_line(tmp_path):
    from resail_train.reporting import compare as C

    run = make_run(tmp_path, "bomb")
    text = billion_laughs(9)
    assert len(text) < 800
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        C.load_run(run)  # before: loaded, then rendering the 387M-element value stalled `resail compare`
    msg = str(e.value)
    assert msg.startswith(f"{run / 'config.yaml'}: ") and "anchors and aliases" in msg and "\n" not in msg
    # an anchor alone is refused as well (it only exists to be aliased)
    (run / "config.yaml").write_text("model: &m {norm: spade}\n")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        C.load_run(run)


def test_compare_command_refuses_an_alias_bomb_in_one_line(tmp_path):
    good = make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad")
    (bad / "config.yaml").write_text(billion_laughs(4))  # small enough for the old code to finish
    res = invoke(["compare", str(good), str(bad), "--out", str(tmp_path / "out")], tmp_path)
    line = one_error_line(res)
    assert f"{bad / 'config.yaml'}: " in line and "anchors and aliases" in line
    assert not (tmp_path / "out" / "compare.md").exists()


def test_deep_nesting_and_huge_run_files_are_one_line(tmp_path):
    from resail_train.reporting import compare as C

    run = make_run(tmp_path, "deep")
    (run / "metrics.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError) as e:
        C.load_run(run)  # before: RecursionError
    assert str(e.value).startswith(f"{run / 'metrics.json'}: nested 100000 levels deep")
    (run / "metrics.json").write_text(json.dumps({"fid": 1.0}))
    (run / "config.yaml").write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        C.load_run(run)
    (run / "config.yaml").write_text("model: {norm: spade}\n")
    (run / "train_summary.json").write_text(json.dumps({"step": 1, "pad": "x" * (17 << 20)}))
    with pytest.raises(DataError, match="larger than 16 MiB"):
        C.load_run(run)
    # brackets inside strings are text, not nesting; 64 levels are still accepted
    (run / "train_summary.json").write_text(json.dumps({"step": 3, "note": "[[[{{" * 500, "ok": [[[1]]]}))
    nested = 1
    for _ in range(63):
        nested = [nested]
    (run / "metrics.json").write_text(json.dumps({"fid": 2.0, "deep": nested}))
    rec = C.load_run(run)
    assert rec.steps == 3 and rec.metrics["fid"] == 2.0 and rec.params["model.norm"] == "spade"


def test_report_refuses_deeply_nested_metrics_in_one_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from resail_train.reporting import report as R

    run = make_run(tmp_path, "deep")
    (run / "metrics.json").write_text("{\"a\": " * 50000 + "1" + "}" * 50000)
    stub = SimpleNamespace(meta=None, online=SimpleNamespace(db=None), close=lambda: None)
    monkeypatch.setattr(R.Synthesizer, "load", staticmethod(lambda *a, **k: stub))
    with pytest.raises(ResailError) as e:
        R.write_report(run)  # before: RecursionError from the metrics reader
    assert str(e.value).startswith(f"{run / 'metrics.json'}: nested 50000 levels deep")
    assert not (run / "report").exists()


# =========================================================================== compare.md escaping
def test_compare_md_escapes_every_data_string(tmp_path):
    from resail_train.reporting import compare as C

    name = "<script>alert(1)</script>"
    value = "<img src=x onerror=alert(1)>"
    a = C.load_run(make_run(tmp_path, "a", params={"data": {"note": value}}), name=name)
    b = C.load_run(make_run(tmp_path, "b", norm="spade|`x`"), name="b")
    a.params["<b>key</b>"] = "[click](javascript:alert(2))"
    res = C.write_compare([a, b], tmp_path / "out", notes=["exp <i>x</i>: skipped"])
    md = res.markdown.read_text()
    assert "<" not in md and ">" not in md.replace("> **Warning", "")  # no raw markup at all
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "spade\\|\\`x\\`" in md and "\\[click\\](javascript:alert(2))" in md
    # what a Markdown viewer makes of it: the strings come back as text, no element is injected
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    for tag in ("<script", "<img", "<b>", "<i>", "<a ", "<code>x</code>"):
        assert tag not in rendered, tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered and "&lt;img src=x onerror=alert(1)&gt;" in rendered
    head, *rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    n_cols = len(head.split(" | "))
    table = rendered.split("<table>")[1].split("</table>")[0]
    assert table.count("<th>") == n_cols and table.count("<td>") == n_cols * len(rows)  # no pipe split a cell
    assert "spade|`x`" in table.replace("&lt;", "<")


# =========================================================================== low-bit and palette label PNGs
def png_bytes(values: np.ndarray, bit_depth: int, colour_type: int = 0, palette: np.ndarray | None = None) -> bytes:
    """An exact PNG of ``values`` (H×W ints) written by hand: packed rows, filter 0, one IDAT."""
    h, w = values.shape
    per_byte = 8 // bit_depth
    rows = []
    for r in values.astype(np.int64):
        if bit_depth >= 8:
            row = r.astype(">u2" if bit_depth == 16 else np.uint8).tobytes()
        else:
            pad = np.zeros((-w) % per_byte, np.int64)
            groups = np.concatenate([r, pad]).reshape(-1, per_byte)
            shifts = bit_depth * np.arange(per_byte - 1, -1, -1)
            row = (groups << shifts).sum(1).astype(np.uint8).tobytes()
        rows.append(b"\x00" + row)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    return out + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_grey_label_png_reads_as_the_stored_ids(tmp_path, bits):
    from pipeline.datasets.base import read_index_map

    rng = np.random.default_rng(bits)
    ids = rng.integers(0, 1 << bits, (7, 19))  # odd width: the last byte of a row is padded
    ids[0, :1 << bits] = np.arange(1 << bits)
    p = tmp_path / f"grey{bits}.png"
    p.write_bytes(png_bytes(ids, bits))
    got = read_index_map(p)
    assert got.dtype == np.int64 and np.array_equal(got, ids)  # before: 4-bit v read as 17 * v


def test_a_4bit_grey_label_map_loads_through_a_dataset(tmp_path):
    data = make_toy_dataset(tmp_path / "toy", n_train=1, n_val=0, instances=False)
    adapter = open_dataset("folder", data)
    (ref,) = adapter.refs("train")
    h, w = adapter.load(ref).labels.shape
    ids = np.random.default_rng(0).integers(0, 5, (h, w))  # the five toy classes, 0..4
    ref.label.write_bytes(png_bytes(ids, 4))
    sample = adapter.load(ref)  # before: "class id(s) 17, 34, 51, 68 not in the class list"
    assert np.array_equal(sample.labels, ids)


def test_palette_label_png_reads_as_indices_unless_the_palette_is_grey(tmp_path):
    from pipeline.datasets.base import read_index_map

    ids = np.arange(12).reshape(3, 4) % 5
    colours = np.array([[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]])  # VOC-style
    p = tmp_path / "pal.png"
    for bits in (4, 8):
        p.write_bytes(png_bytes(ids, bits, colour_type=3, palette=colours))
        assert np.array_equal(read_index_map(p), ids)  # before: refused as a 3-channel colour map
    grey = np.repeat(np.array([[0], [40], [2], [255], [3]]), 3, axis=1)  # a grey map stored with a palette
    p.write_bytes(png_bytes(ids, 8, colour_type=3, palette=grey))
    assert np.array_equal(read_index_map(p), grey[ids, 0])


# =========================================================================== UperNet as published
@pytest.fixture(scope="module")
def upernet_files(tmp_path_factory) -> dict:
    from resail_train.metrics.segmenters.upernet import UPerNetR101

    d = tmp_path_factory.mktemp("upernet")
    torch.manual_seed(0)
    model = UPerNetR101()
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    # random weights give logits of std ~0.04, where softmax is nearly linear and the order of
    # softmax and up-sampling cannot show; scaled, they are of the size a trained net produces
    model.decoder.conv_last[1].weight.data.mul_(100)
    model.eval()

    def csail_state(module: torch.nn.Module) -> dict:
        """As mit_semseg saved it: SynchronizedBatchNorm2d's three extra buffers on every BatchNorm,
        no num_batches_tracked (PyTorch 0.4)."""
        state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                state[f"{name}._tmp_running_mean"] = m.running_mean.clone()
                state[f"{name}._tmp_running_var"] = m.running_var.clone()
                state[f"{name}._running_iter"] = torch.ones(1)
        return state

    enc, dec = csail_state(model.encoder), csail_state(model.decoder)
    assert sum(k.endswith("._running_iter") for k in enc) > 100 and sum(k.endswith("._running_iter") for k in dec) > 5
    torch.save(enc, d / "encoder_epoch_50.pth")
    torch.save(dec, d / "decoder_epoch_50.pth")
    return {"model": model, "enc": enc, "dec": dec, "dir": d}


def test_csail_sync_bn_checkpoints_load_and_nothing_else_extra_does(upernet_files, tmp_path):
    from resail_train.metrics.segmenters.registry import load_segmenter

    f = upernet_files
    enc, dec = f["dir"] / "encoder_epoch_50.pth", f["dir"] / "decoder_epoch_50.pth"
    seg = load_segmenter("upernet-r101", f"{enc},{dec}")  # before: "unexpected keys 312 (..._running_iter ...)"
    ours = f["model"].state_dict()
    for k, v in seg.model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, ours[k]), k
    for extra in ({"decoder_extra.weight": torch.zeros(1)},  # an unknown key
                  {"conv_last.1._tmp_running_mean": torch.zeros(150)},  # SyncBN name on a conv, not a BatchNorm
                  {"conv_last.0.1._running_iter": torch.ones(3)}):  # right name, wrong shape
        bad = tmp_path / "bad_dec.pth"
        torch.save({**f["dec"], **extra}, bad)
        with pytest.raises(ConfigError, match="unexpected keys 1"):
            load_segmenter("upernet-r101", f"{enc},{bad}")
    cut = dict(f["dec"])
    cut.pop("conv_last.0.1.running_var")
    torch.save(cut, tmp_path / "cut_dec.pth")
    with pytest.raises(ConfigError, match="missing keys 1"):
        load_segmenter("upernet-r101", f"{enc},{tmp_path / 'cut_dec.pth'}")


@torch.no_grad()
def test_upernet_upsamples_logits_then_softmax_as_published(upernet_files):
    import torch.nn.functional as F

    from resail_train.metrics.segmenters.upernet import UPerNetSegmenter

    model = upernet_files["model"]
    seg = UPerNetSegmenter(model, "cpu")
    img = np.random.default_rng(4).integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    h, w = 40, 56
    scales = (1.0, 0.75)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    theirs, old = 0, 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        logits = model((xs / 255 - mean) / std)
        assert logits.shape[-2:] == (-(-xs.shape[-2] // 4), -(-xs.shape[-1] // 4))  # at 1/4 of the input
        # mit_semseg UPerNet.forward(use_softmax=True): logits to segSize, then softmax; eval.py averages
        theirs = theirs + F.softmax(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), 1) / len(scales)
        old = old + F.interpolate(F.softmax(logits, 1), size=(h, w), mode="bilinear", align_corners=False)
    probs = seg.predict_scores(img, scales)
    assert torch.allclose(probs, theirs, atol=1e-6) and torch.allclose(probs.sum(1), torch.ones(1, h, w), atol=1e-5)
    pred = seg.predict(img, scales)
    assert torch.equal(pred, theirs.argmax(1))
    assert (pred != old.argmax(1)).any()  # the two orders really differ on this input
