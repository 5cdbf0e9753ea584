"""Hostile command-line and params.yaml input, each case through the ``resail`` CLI:

* integer options beyond any sensible value (``--rank 10**23``, ``--seed 10**26``, ``--k 1000000000``,
  which asked for hundreds of GiB): every integer option has a range, shown in ``--help``; a rank is
  also checked against the retrieval's k once the run or cache is loaded;
* ``resail train --allow-config-change`` reaches the trainer;
* params.yaml values of the wrong type, silently coerced ones (``k: 2.5`` → 2) and unknown keys: one
  strict schema, checked when the CLI loads the file;
* ``synthesize --out`` naming the input label maps (which it overwrote with images);
* resize targets above the pixel cap (``fid --size 100000x100000`` was killed by the OOM killer);
* ``resail studio`` on a busy port, and on an address other machines can reach.
"""
from __future__ import annotations

import copy
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.errors import ConfigError
from tests.conftest import REPO
from tests.fixtures.toy_dataset import make_toy_dataset
from tests.fixtures.tiny_run import unseen_map, write_map

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = str(10 ** 23)


def cli():
    from stages.cli import main

    return main


def invoke(args, params: Path | None = None, **kw):
    """The CLI with ``params`` (default: an empty params file, so the repository's does not count)."""
    if params is None:
        params = invoke.empty
    return CliRunner().invoke(cli(), ["--params", str(params), *args], **kw)


@pytest.fixture(autouse=True)
def _empty_params(tmp_path):
    invoke.empty = tmp_path / "empty_params.yaml"
    invoke.empty.write_text("{}\n")


def one_error_line(res, exit_code: int = 1) -> str:
    """The single ``error: …`` line of a failed command (no traceback, nothing else printed)."""
    assert res.exit_code == exit_code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and not isinstance(res.exception, (MemoryError, OverflowError)), res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def usage_error(res, option: str) -> str:
    """click's usage error for ``option`` (exit 2), no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    assert f"Invalid value for '{option}'" in res.output, res.output
    return res.output


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> dict:
    """decompose → retrieve → compose on 4+2 toy images; tests copy it."""
    from pipeline.compose.build import compose_dataset
    from pipeline.datasets import open_dataset
    from pipeline.decompose.build import DecomposeParams, build_segment_db
    from pipeline.retrieve.build import run_retrieval

    base = tmp_path_factory.mktemp("hostile_cli")
    data = make_toy_dataset(base / "toy", n_train=4, n_val=2, seed=5)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, params=DecomposeParams(min_area=4), progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    return {"data": data, "cache": cache_dir}


@pytest.fixture
def work(base_cache, tmp_path) -> dict:
    import h5py

    from pipeline import cache

    data, cache_dir = tmp_path / "toy", tmp_path / "cache"
    shutil.copytree(base_cache["data"], data)
    shutil.copytree(base_cache["cache"], cache_dir)
    with h5py.File(cache_dir / cache.SEGMENTS_H5, "r+") as f:
        f.attrs["data_root"] = str(data)
    return {"data": data, "cache": cache_dir, "tmp": tmp_path}


# =========================================================================== integer ranges
def all_commands():
    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    yield from walk(cli(), [])


def test_every_integer_option_of_every_command_has_a_range_shown_in_its_help():
    unbounded, hidden = [], []
    for name, cmd in all_commands():
        ctx = click.Context(cmd, info_name=name)
        for p in cmd.params:
            if not isinstance(p, click.Option) or not isinstance(p.type, click.types.IntParamType):
                continue
            if not isinstance(p.type, click.IntRange) or p.type.min is None or p.type.max is None:
                unbounded.append(f"{name} {p.opts[0]}")
                continue
            if p.type._describe_range() not in (p.get_help_record(ctx) or ("", ""))[1]:
                hidden.append(f"{name} {p.opts[0]}")
    assert unbounded == [], f"integer options without a range: {unbounded}"
    assert hidden == [], f"ranges not shown in --help: {hidden}"


def test_integer_list_options_are_ranged_too():
    res = invoke(["bench", "table-b", "--ranks", f"0,{HUGE}"])
    assert "1023" in usage_error(res, "--ranks")
    res = invoke(["bench", "decompose", "--jobs", f"1,{HUGE}"])
    assert "256" in usage_error(res, "--jobs")


def test_help_shows_the_ranges_chosen():
    out = invoke(["retrieve", "--help"]).output
    assert "1<=x<=1024" in out and "N·k" in out.replace("\n", " ").replace("  ", " ")
    out = invoke(["distort", "--help"]).output
    assert f"0<=x<={2 ** 63 - 1}" in out
    out = invoke(["compose", "--help"]).output
    assert "0<=x<=1023" in out


@pytest.mark.parametrize("args,option", [
    (["compose", "--rank", HUGE], "--rank"),
    (["compose", "--jobs", HUGE], "--jobs"),
    (["compose", "--preview", HUGE], "--preview"),
    (["distort", "--seed", str(10 ** 26)], "--seed"),
    (["distort", "--variants", HUGE], "--variants"),
    (["retrieve", "--k", HUGE], "--k"),
    (["retrieve", "--k", "1000000000"], "--k"),  # asked for 395 GiB
    (["retrieve", "--k", "0"], "--k"),
    (["retrieve", "--threads", HUGE], "--threads"),
    (["decompose", "--mask-size", HUGE], "--mask-size"),
    (["contact-sheet", "--tile", HUGE], "--tile"),
])
def test_huge_integers_on_cache_stages_are_refused_before_anything_is_written(work, args, option):
    before = files_of(work["cache"])
    res = invoke([*args, "--cache" if args[0] != "decompose" else "--out", str(work["cache"])])
    usage_error(res, option)
    assert files_of(work["cache"]) == before


@pytest.mark.parametrize("args,option", [
    (["synthesize", "--seed", HUGE], "--seed"),
    (["synthesize", "--rank", str(10 ** 30)], "--rank"),
    (["synthesize", "--samples", HUGE], "--samples"),
    (["edit", "--rank", str(10 ** 30), "--all"], "--rank"),
    (["edit", "--seed", HUGE, "--all", "--rank", "0"], "--seed"),
    (["studio", "--seed", HUGE], "--seed"),
    (["train-eval-segnet", "--seed", HUGE], "--seed"),
    (["train", "--max-steps", HUGE], "--max-steps"),
    (["train", "--max-steps", "0"], "--max-steps"),
])
def test_huge_integers_on_run_commands_are_refused(run, tmp_path, args, option):
    lp = write_map(tmp_path / "in.png", unseen_map()[0])
    extra = {"synthesize": ["--labels", str(lp), "--out", str(tmp_path / "out.png")],
             "edit": ["--labels", str(lp), "--out", str(tmp_path / "out.png")],
             "train": ["--out", str(tmp_path / "train_run")]}.get(args[0], [])
    where = ["--run", str(run[0])] if args[0] in ("synthesize", "edit", "studio") else []
    res = invoke([*args, *where, *extra, "--cache", str(run[1])])
    usage_error(res, option)
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "train_run").exists()


@pytest.mark.parametrize("cmd", ["synthesize", "edit"])
def test_rank_at_or_beyond_k_is_refused_once_the_run_is_loaded(run, tmp_path, cmd):
    run_dir, cache_dir = run
    lp = write_map(tmp_path / "in.png", unseen_map()[0])
    out = tmp_path / "out.png"
    mode = ["--all"] if cmd == "edit" else []
    res = invoke([cmd, "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--labels", str(lp),
                  "--out", str(out), *mode, "--rank", "10"])
    line = one_error_line(res)
    assert "--rank must be in 0..9" in line and "10 candidates" in line, line
    assert not out.exists()
    # the largest rank the retrieval kept works
    res = invoke([cmd, "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--labels", str(lp),
                  "--out", str(out), *mode, "--rank", "9"])
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_largest_seed_synthesizes(run, tmp_path):
    lp = write_map(tmp_path / "in.png", unseen_map()[0])
    out = tmp_path / "out.png"
    res = invoke(["synthesize", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--labels", str(lp),
                  "--out", str(out), "--seed", str(2 ** 63 - 1)])
    assert res.exit_code == 0, res.output
    assert out.is_file()


# =========================================================================== train --allow-config-change
@pytest.mark.parametrize("flag,expected", [([], False), (["--allow-config-change"], True)])
def test_train_passes_allow_config_change_to_the_trainer(tmp_path, monkeypatch, flag, expected):
    from resail_train.training import trainer

    seen = []

    def fake_train(cache, run_dir, cfg, opts):
        seen.append(opts)
        return SimpleNamespace(run_dir=Path(run_dir), step=0, total_steps=0, seconds=0.0, data_wait_fraction=0.0)

    monkeypatch.setattr(trainer, "train", fake_train)
    res = invoke(["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--config", "demo",
                  *flag, "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 1 and seen[0].allow_config_change is expected and seen[0].resume is True
    assert "--allow-config-change" in invoke(["train", "--help"]).output


@pytest.mark.parametrize("params_epochs, cli, loss_epochs, eval_epochs",
                         [(None, [], 30, 30), (12, [], 30, 12), (12, ["--set", "segnet.epochs=3"], 30, 3)])
def test_eval_segnet_epochs_reach_the_evaluation_net_only(tmp_path, monkeypatch, params_epochs, cli, loss_epochs,
                                                          eval_epochs):
    """params.yaml eval_segnet.epochs sets the evaluation net's segnet.epochs (demo config: 30); the loss net keeps
    the config's, and a command-line --set still wins."""
    from resail_train.training import segnet_trainer

    seen = {}

    def fake_train_segnet(cache, run_dir, cfg, *, role, **kw):
        seen[role] = cfg.segnet.epochs
        return SimpleNamespace(steps=0, seconds=0.0, train_miou=0.0, train_pixel_acc=0.0, val_miou=None, path="x")

    monkeypatch.setattr(segnet_trainer, "train_segnet", fake_train_segnet)
    params = write_params(tmp_path, {**shipped(), "eval_segnet": {"epochs": params_epochs}})
    common = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--config", "demo", "--no-progress"]
    assert invoke(["train-segnet", *common], params).exit_code == 0
    assert invoke(["train-eval-segnet", *common, *cli], params).exit_code == 0
    assert seen == {"loss": loss_epochs, "eval": eval_epochs}


# =========================================================================== params.yaml schema
def shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def with_value(section: str, key: str, value) -> dict:
    data = copy.deepcopy(shipped())
    data[section][key] = value
    return data


def test_the_shipped_params_yaml_passes_the_schema():
    from stages.params import load_params

    assert load_params(REPO / "params.yaml") == shipped()


@pytest.mark.parametrize("section,key,value,expected", [
    ("compose", "rank", "x", "compose.rank: expected an integer in 0..1023, got 'x'"),
    ("compose", "jobs", "two", "compose.jobs: expected an integer in 0..256, got 'two'"),
    ("compose", "preview", [1], "compose.preview: expected an integer in 0..10000, got [1]"),
    ("distort", "variants", "many", "distort.variants: expected an integer in 1..64, got 'many'"),
    ("retrieve", "max_score", [1, 2], "retrieve.max_score: expected a number or null, got [1, 2]"),
    ("retrieve", "device", "tpu", "retrieve.device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("retrieve", "k", 2.5, "retrieve.k: expected an integer in 1..1024, got 2.5"),
    ("retrieve", "k", True, "retrieve.k: expected an integer in 1..1024, got True"),
    ("retrieve", "k", 1000000000, "retrieve.k: expected an integer in 1..1024, got 1000000000"),
    ("synthesize", "seed", 10 ** 23, f"synthesize.seed: expected an integer in 0..{2 ** 63 - 1}, got {10 ** 23}"),
    ("synthesize", "rank", -1, "synthesize.rank: expected an integer in 0..1023, got -1"),
    ("decompose", "resize", "100000x100000", "decompose.resize: 100000x100000 is 10000.0 Mpx, above the pixel cap"),
    ("decompose", "pruning", "sometimes", "decompose.pruning: expected one of image, dataset, none, got 'sometimes'"),
    ("train", "amp", "yes", "train.amp: expected true or false, got 'yes'"),
    ("train", "overrides", "optim.batch_size=8", "train.overrides: expected a list of strings"),
    ("distort", "kinds", "color,blur", "distort.kinds: 'blur' is not one of color, shape, resolution"),
])
def test_a_bad_params_value_is_one_line_naming_the_key(work, tmp_path, section, key, value, expected):
    params = write_params(tmp_path, with_value(section, key, value))
    command = {"decompose": "decompose", "train": "train", "synthesize": "retrieve"}.get(section, section)
    before = files_of(work["cache"])
    where = ["--out" if command in ("decompose", "train") else "--cache", str(work["cache"])]
    res = invoke([command, *where], params=params)
    line = one_error_line(res)
    assert line.startswith(f"error: {params}: {expected}"), line
    assert files_of(work["cache"]) == before


def test_unknown_keys_and_sections_are_refused_with_the_known_ones(work, tmp_path):
    data = copy.deepcopy(shipped())
    data["retrieve"]["kk"] = 5
    res = invoke(["retrieve", "--cache", str(work["cache"])], params=write_params(tmp_path, data))
    line = one_error_line(res)
    assert "retrieve.kk: unknown key (did you mean 'k'?)" in line and "known: k, max_score, alpha" in line, line
    data = copy.deepcopy(shipped())
    data["retreive"] = {"k": 5}
    res = invoke(["retrieve", "--cache", str(work["cache"])], params=write_params(tmp_path, data))
    line = one_error_line(res)
    assert "unknown section 'retreive' (did you mean 'retrieve'?)" in line and "known: dataset, decompose" in line


def test_a_section_that_is_not_a_mapping_is_refused(work, tmp_path):
    data = copy.deepcopy(shipped())
    data["compose"] = [1, 2]
    res = invoke(["compose", "--cache", str(work["cache"])], params=write_params(tmp_path, data))
    assert "compose: expected a mapping of keys, got [1, 2]" in one_error_line(res)


def test_train_set_and_overrides_stay_free_and_null_sections_are_empty(tmp_path):
    from stages.params import load_params

    data = copy.deepcopy(shipped())
    data["train"]["set"] = {"model": {"norm": "spade"}, "optim": {"lr_g": 0.001, "new_key_the_config_checks": 1}}
    data["train"]["overrides"] = ["optim.batch_size=8", "model.norm=spade"]
    data["report"] = None
    assert load_params(write_params(tmp_path, data)) == data
    data["train"]["set"] = ["model.norm=spade"]
    with pytest.raises(ConfigError, match="train.set: expected a mapping"):
        load_params(write_params(tmp_path, data))


def test_every_key_the_stages_read_is_declared():
    """A key a stage reads but the schema lacks would be refused as unknown: list them all."""
    import re

    from stages.params import SCHEMA

    read = set()
    for path in (REPO / "stages").glob("*.py"):
        read |= set(re.findall(r'p\.get\("(\w+)", "(\w+)"', path.read_text()))
    missing = sorted(f"{s}.{k}" for s, k in read if k not in SCHEMA.get(s, {}))
    assert missing == []


def test_a_params_value_gets_the_range_of_its_option(work, tmp_path):
    """retrieve.k = 2000 was accepted (and made N·k rows); the schema uses the option's range."""
    params = write_params(tmp_path, with_value("retrieve", "k", 2000))
    res = invoke(["retrieve", "--cache", str(work["cache"])], params=params)
    assert "retrieve.k: expected an integer in 1..1024, got 2000" in one_error_line(res)


# =========================================================================== outputs never overwrite inputs
def test_synthesize_refuses_an_out_that_is_the_label_map(run, tmp_path):
    run_dir, cache_dir = run
    lp = write_map(tmp_path / "in" / "a.png", unseen_map()[0])
    ip = write_map(tmp_path / "inst" / "a.png", unseen_map()[1])
    common = ["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--no-progress"]
    before = files_of(tmp_path)
    link = tmp_path / "link.png"
    link.symlink_to(lp)
    for args, named in (
            (["--labels", str(lp), "--out", str(lp)], "--out"),
            (["--labels", str(lp), "--out", str(link)], "--out"),  # the same file through a symlink
            (["--labels", str(lp), "--instances", str(ip), "--out", str(tmp_path / "o.png"),
              "--save-guidance", str(ip)], "--save-guidance"),
            (["--labels", str(tmp_path / "in"), "--out", str(tmp_path / "in")], "--out"),
            (["--labels", str(tmp_path / "in"), "--instances", str(tmp_path / "inst"), "--out",
              str(tmp_path / "inst")], "--out"),
            (["--labels", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--save-guidance",
              str(tmp_path / "in" / ".." / "in")], "--save-guidance")):
        res = CliRunner().invoke(cli(), common + args)
        line = one_error_line(res)
        assert named in line and "input" in line, (args, line)
        assert files_of(tmp_path) == {**before, link.relative_to(tmp_path): lp.read_bytes()}, args


def test_synthesize_samples_may_not_land_on_an_input(run, tmp_path):
    run_dir, cache_dir = run
    lab = unseen_map()[0]
    src = write_map(tmp_path / "x_s1.png", lab)
    before = src.read_bytes()
    res = CliRunner().invoke(cli(), ["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--device",
                                     "cpu", "--labels", str(src), "--out", str(tmp_path / "x.png"), "--samples", "2"])
    line = one_error_line(res)
    assert "x_s1.png" in line and "input" in line, line
    assert src.read_bytes() == before and not (tmp_path / "x_s0.png").exists()


def test_edit_refuses_an_out_that_is_the_label_map(run, tmp_path):
    run_dir, cache_dir = run
    lp = write_map(tmp_path / "a.png", unseen_map()[0])
    before = lp.read_bytes()
    res = CliRunner().invoke(cli(), ["edit", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu",
                                     "--labels", str(lp), "--all", "--rank", "1", "--out", str(lp)])
    assert "--out" in one_error_line(res)
    assert lp.read_bytes() == before


# =========================================================================== resize targets under the pixel cap
@pytest.fixture
def two_folders(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return tmp_path / "a", tmp_path / "b"


def test_fid_size_above_the_pixel_cap_is_one_line(two_folders):
    res = invoke(["fid", str(two_folders[0]), str(two_folders[1]), "--size", "100000x100000", "--device", "cpu"])
    line = one_error_line(res)
    assert "--size 100000x100000" in line and "10000.0 Mpx" in line and "pixel cap" in line, line


def test_the_cap_of_a_size_is_the_readers_cap(two_folders, monkeypatch):
    monkeypatch.setenv("RESAIL_MAX_PIXELS", "1000")
    res = invoke(["fid", str(two_folders[0]), str(two_folders[1]), "--size", "40x40", "--device", "cpu"])
    assert "pixel cap of 0.001 Mpx" in one_error_line(res)


def test_score_size_above_the_pixel_cap_is_one_line(two_folders):
    res = invoke(["score", "--fake", str(two_folders[0]), "--real", str(two_folders[1]), "--dataset", "cityscapes",
                  "--segmenter", "none", "--size", "100000x100000", "--device", "cpu"])
    assert "--size 100000x100000" in one_error_line(res)
    assert not (two_folders[0].parent / "score").exists()


def test_decompose_resize_above_the_pixel_cap_is_one_line(work, tmp_path):
    out = tmp_path / "new_cache"
    for resize in ("100000x100000", "100000"):
        res = invoke(["decompose", "--format", "folder", "--data-root", str(work["data"]), "--out", str(out),
                      "--resize", resize, "--no-progress"])
        assert "pixel cap" in one_error_line(res)
        assert not out.exists()


@pytest.mark.parametrize("args", [["online", "--size", "100000x100000"],
                                  ["studio", "--run", "r", "--sizes", "180x240,100000x100000"]])
def test_bench_sizes_above_the_pixel_cap_are_refused(args):
    res = invoke(["bench", *args])
    assert "pixel cap" in one_error_line(res)


# =========================================================================== studio: busy port, open address
@pytest.fixture
def served(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    return calls


def test_studio_on_a_busy_port_is_one_line(run, served):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = invoke(["studio", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--port", str(port)])
    line = one_error_line(res)
    assert line.startswith(f"error: port {port} on 127.0.0.1 is in use ("), line
    assert served == []


def test_studio_on_an_open_address_warns_that_it_has_no_authentication(run, served):
    res = invoke(["studio", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--host", "0.0.0.0",
                  "--port", "0"])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "no authentication" in warnings[0] and "0.0.0.0" in warnings[0], res.stderr
    assert served and served[0]["host"] == "0.0.0.0"
    # on the loopback address: no warning
    res = invoke(["studio", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--port", "0"])
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output


def test_studio_max_megapixels_above_the_pixel_cap_is_refused(run, served):
    res = invoke(["studio", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu",
                  "--max-megapixels", "1000000"])
    assert "--max-megapixels" in one_error_line(res) and served == []


def test_the_schema_choices_are_the_pipelines():
    """The schema writes the choice lists out (reading params.yaml imports no stage's code); they must
    stay the pipeline's own."""
    from pipeline.datasets import FORMATS
    from pipeline.datasets.ade20k import SUBSETS
    from pipeline.datasets.cityscapes import LABEL_SPACES
    from pipeline.decompose.segments import PRUNING_MODES
    from pipeline.distort.build import COLOR_TARGET_MODES, RESOLUTION_REFERENCES
    from pipeline.distort.distortions import CANVASES, KINDS
    from pipeline.retrieve.build import EXCLUDE_MODES
    from pipeline.retrieve.retrieval import SCALE_TERMS
    from stages import params
    from stages.options import BACKENDS, DEVICES
    from stages.score import SEGMENTERS

    assert params.FORMATS == tuple(FORMATS) and params.SUBSETS == tuple(SUBSETS)
    assert params.LABEL_SPACES == tuple(LABEL_SPACES) and params.PRUNING_MODES == tuple(PRUNING_MODES)
    assert params.COLOR_TARGET_MODES == tuple(COLOR_TARGET_MODES)
    assert params.RESOLUTION_REFERENCES == tuple(RESOLUTION_REFERENCES)
    assert params.CANVASES == tuple(CANVASES) and params.KINDS == tuple(KINDS)
    assert params.EXCLUDE_MODES == tuple(EXCLUDE_MODES) and params.SCALE_TERMS == tuple(SCALE_TERMS)
    assert params.BACKENDS == tuple(BACKENDS.choices) and params.DEVICE_NAMES == tuple(DEVICES.choices)
    assert set(params.SEGMENTERS) == set(SEGMENTERS) - {"none"}


@pytest.mark.parametrize("cmd", ["evaluate", "score"])
@pytest.mark.parametrize("value, problem", [("0,1", "must be positive"), ("1,x", "comma-separated numbers"),
                                            (",", "must be positive"), ("nan", "must be positive")])
def test_bad_segmenter_scales_are_refused_before_any_work(two_folders, cmd, value, problem):
    args = (["evaluate", "--run", str(two_folders[0])] if cmd == "evaluate" else
            ["score", "--fake", str(two_folders[0]), "--real", str(two_folders[1]), "--dataset", "cityscapes",
             "--segmenter", "none"])
    res = invoke([*args, "--scales", value])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "--scales" in res.output and problem in res.output, res.output
    assert not (two_folders[0].parent / "score").exists()


def test_segmenter_scales_parse_into_floats():
    from stages.options import scales_option

    @click.command()
    @scales_option("help")
    def show(scales):
        click.echo(repr(scales))

    assert CliRunner().invoke(show, ["--scales", "0.75, 1,1.25"]).output.strip() == "[0.75, 1.0, 1.25]"
    assert CliRunner().invoke(show, []).output.strip() == "None"
