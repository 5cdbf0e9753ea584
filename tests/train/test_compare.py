"""`resail compare`: run records, differing params, paper rows, protocol groups, escaping, the page itself."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.retrieve.rank_scores import HELPER_RANKS
from resail_train.reporting import compare as C
from resail_train.reporting.paper_numbers import TABLE_B_MEAN_SCORE, TABLES
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def make_run(root: Path, name: str, *, norm: str = "resail", fid: float | None = 50.0, miou: float = 0.5,
             acc: float = 0.8, segmenter: str | None = "own", steps: int = 20, seconds: float = 12.0,
             color=(200, 30, 30), images=("a", "b", "c"), curve_scale: float = 1.0) -> Path:
    run = root / name
    (run / "logs/plots/metrics/train").mkdir(parents=True)
    cfg = {"name": "demo", "seed": 0, "model": {"norm": norm, "ngf": 8}, "loss": {"lambda_seg": 5.0},
           "data": {"crop_size": [16, 24]}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = {"fid": fid, "miou": miou, "pixel_acc": acc, "split": "val", "n_images": len(images)}
    if segmenter is not None:
        m["segmenter"] = segmenter
    (run / "metrics.json").write_text(json.dumps(m))
    (run / "train_summary.json").write_text(json.dumps({"step": steps, "seconds": seconds}))
    for series in ("G_total", "D_total", "G_seg"):
        rows = "".join(f"0\t{s}\t{curve_scale * (10 - s / 10)}\n" for s in range(0, steps + 1, 10))
        (run / f"logs/plots/metrics/train/{series}.tsv").write_text(f"timestamp\tstep\t{series}\n{rows}")
    ev = run / "eval/val"
    ev.mkdir(parents=True)
    for i in images:
        img = np.zeros((16, 24, 3), np.uint8)
        img[:] = color
        cv2.imwrite(str(ev / f"{i}.png"), img[:, :, ::-1])
    return run


def test_flatten_and_differing_params(tmp_path):
    assert C.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    a = C.load_run(make_run(tmp_path, "a", norm="resail"))
    b = C.load_run(make_run(tmp_path, "b", norm="spade"))
    assert a.params["model.norm"] == "resail" and a.steps == 20 and a.seconds == 12.0
    assert set(a.curves) == {"G_total", "D_total", "G_seg"}
    assert sorted(a.eval_images) == ["val/a", "val/b", "val/c"]
    assert C.differing_params([a, b]) == ["model.norm"]
    b.params["loss.lambda_seg"] = 5  # int vs float of the same value is not a difference
    assert C.differing_params([a, b]) == ["model.norm"]
    b.params["train.run_dir"] = "elsewhere"  # where a run lives is not a param of the experiment
    assert C.differing_params([a, b]) == ["model.norm"]


def test_paper_table_rows_match_the_paper_text():
    t3, t4, ta, tb = TABLES["3"], TABLES["4"], TABLES["A"], TABLES["B"]
    assert (t3.row_for("resail").fid, t3.row_for("resail").miou, t3.row_for("resail").acc) == (45.5, 69.7, 83.2)
    assert (t3.row_for("spade").fid, t3.row_for("spade_plus").fid, t3.row_for("pix2pixhd_plus").fid,
            t3.row_for("sean_plus").fid) == (58.7, 53.4, 47.8, 66.6)
    assert t4.row_for("retrieval+original-gt").fid == 52.8 and t4.row_for("distorted-gt").miou == 64.9
    assert ta.row_for(0).fid == 46.8 and ta.row_for(5).fid == 45.5 and ta.row_for(2.0) is None
    # Table B is keyed by the pasted rank (compose.rank); its printed values are mean scores
    assert tb.param == "compose.rank" and tb.row_for(254).fid == 48.18 and tb.row_for(990).miou is None
    assert tb.row_for(0).fid == 45.49 and tb.row_for(10) is None and tb.row_for(None) is None
    assert sorted(TABLE_B_MEAN_SCORE) == sorted(tb.rows) and set(tb.rows) <= set(HELPER_RANKS)
    assert [TABLE_B_MEAN_SCORE[r] for r in sorted(tb.rows)] == [0.15, 0.25, 0.35, 0.45, 0.55, 0.58]
    # every number is in the paper's text (where the shared copy exists)
    paper = REPO.parent / "shared/paper/resail-cvpr2022.txt"
    if paper.is_file():
        text = paper.read_text()
        for t in TABLES.values():
            for row in t.rows.values():
                for v in (row.fid, row.miou, row.acc):
                    if v is not None:
                        assert re.search(rf"\b{re.escape(str(v))}\b", text), (t.key, v)


def test_page_rows_paper_columns_and_markdown(tmp_path):
    runs = [C.load_run(make_run(tmp_path, "r", norm="resail", fid=40.0, miou=0.61)),
            C.load_run(make_run(tmp_path, "s", norm="spade", fid=55.25, miou=0.5, color=(30, 200, 30)))]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.table == "3" and res.differing == ["model.norm"] and res.n_protocols == 1 and res.n_images == 3
    md = res.markdown.read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:6] == ["run", "model.norm", "FID ↓", "KID ↓", "mIoU % ↑", "acc % ↑"]
    row_s = dict(zip(head, [c.strip() for c in lines[2].strip("|").split("|")]))
    assert row_s["run"] == "s" and row_s["FID ↓"] == "55.25" and row_s["mIoU % ↑"] == "50.0"
    assert row_s["paper FID"] == "58.70" and row_s["paper mIoU"] == "62.2" and row_s["segmenter"] == "own"
    assert row_s["steps"] == "20" and row_s["train time"] == "12 s"
    page = res.html.read_text()
    # self-contained: every image is inline, nothing else is loaded
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page
    assert len(srcs) == len(C.curve_plots(runs)) + 3  # 3 curves + 3 image strips


def test_strip_shows_every_run_on_the_same_map(tmp_path):
    runs = [C.load_run(make_run(tmp_path, "r", color=(255, 0, 0), images=("a", "b"))),
            C.load_run(make_run(tmp_path, "s", color=(0, 0, 255), images=("b", "c")))]
    assert C.common_images(runs, 4) == ["val/b"]
    (key, strip), = C.image_strips(runs, ["val/b"], None)
    assert key == "val/b"
    # both runs' pictures are in the one strip: pure red and pure blue pixels
    assert ((strip == (255, 0, 0)).all(-1)).sum() > 100 and ((strip == (0, 0, 255)).all(-1)).sum() > 100


def test_curves_are_overlaid_one_line_per_run(tmp_path):
    runs = [C.load_run(make_run(tmp_path, "r")), C.load_run(make_run(tmp_path, "s", curve_scale=2.0))]
    plots = C.curve_plots(runs)
    assert [n for n, _ in plots][:2] == ["G_total", "D_total"]
    from resail_train.reporting.report import PALETTE

    img = plots[0][1]
    for color in PALETTE[:2]:  # one colour per run
        assert (np.abs(img.astype(int) - color).sum(-1) < 30).sum() > 20


def test_different_protocols_never_share_a_table(tmp_path):
    runs = [C.load_run(make_run(tmp_path, "own1", segmenter="own")),
            C.load_run(make_run(tmp_path, "own2", segmenter="own", norm="spade")),
            C.load_run(make_run(tmp_path, "drn", segmenter="drn-d-105"))]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.n_protocols == 2
    md = res.markdown.read_text()
    assert "2 different protocols" in md and "segmenter=own" in md and "segmenter=drn-d-105" in md
    tables = [b for b in md.split("**Protocol ")[1:]]
    assert len(tables) == 2
    assert "| own1 |" in tables[0] and "| own2 |" in tables[0] and "drn |" not in tables[0]
    assert "| drn |" in tables[1] and "own1" not in tables[1]
    page = res.html.read_text()
    assert page.count("<table>") == 2 and "class=warn" in page


def test_every_data_string_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>|x"
    run = make_run(tmp_path, "r", segmenter=evil)
    runs = [C.load_run(run, name=evil), C.load_run(make_run(tmp_path, "s", norm="<b>spade</b>"))]
    res = C.write_compare(runs, tmp_path / "out", notes=["note <i>"])
    page = res.html.read_text()
    assert "<script>" not in page and "<b>spade</b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;spade&lt;/b&gt;" in page
    md = res.markdown.read_text()
    assert "alert(1)&lt;/script&gt;\\|x" in md and "</script>" not in md  # escaped, and a pipe cannot break the table


def test_table_b_view_groups_runs_by_the_pasted_rank(tmp_path):
    """Runs whose caches were composed at ranks 0 and 50 (guidance.h5 ``rank``) get Table B's rows."""
    import h5py

    runs = []
    for name, rank in (("r0", 0), ("r50", 50)):
        cache_dir = tmp_path / f"cache_{name}"
        cache_dir.mkdir()
        with h5py.File(cache_dir / "guidance.h5", "w") as f:
            f.attrs["rank"] = rank
        runs.append(C.load_run(make_run(tmp_path, name), cache_dir=cache_dir))
    assert [r.params["compose.rank"] for r in runs] == [0, 50]
    assert C.differing_params(runs) == ["compose.rank"]
    res = C.write_compare(runs, tmp_path / "out")
    md = res.markdown.read_text()
    assert res.table == "B" and "rank 50 (paper: 0.25)" in md and "46.38" in md and "45.49" in md


def test_parse_exp_show_takes_finished_exps_and_notes_the_rest():
    def row(rev, name, norm):
        return {"rev": rev, "name": name, "error": None, "experiments": None,
                "data": {"rev": rev, "params": {"params.yaml": {"data": {"train": {"set": {"model": {"norm": norm}}},
                                                                         "retrieve": {"max_score": None}}}},
                         "metrics": {}}}
    data = [row("workspace", None, "spade") | {"rev": "workspace"},
            row("b" * 40, "main", None) | {"experiments": [
                {"revs": [row("c" * 40, "exp-1", "spade")], "executor": None, "name": "exp-1"},
                {"revs": [row("d" * 40, "exp-2", "resail")], "executor": {"state": "queued"}, "name": "exp-2"},
                {"revs": [{"rev": "e" * 40, "name": "exp-3", "error": {"msg": "boom"}, "data": None}],
                 "executor": None, "name": "exp-3"}]}]
    entries, notes = C.parse_exp_show(data)
    assert [(e.name, e.baseline) for e in entries] == [("main", True), ("exp-1", False)]
    assert entries[1].params["train.set.model.norm"] == "spade" and entries[1].rev == "c" * 40
    assert notes == ["exp-2: skipped (queued)", "exp-3: skipped (boom)"]
    with pytest.raises(C.ResailError):
        C.parse_exp_show({"not": "a list"})


def test_exp_show_metrics_fill_in_uncommitted_metrics_files(tmp_path):
    # `cache: false` metrics are not in experiment commits: the values `dvc exp show --json` reports
    # must reach the record (headline metrics.json and reference.json of the run, nothing else)
    rev = "f" * 40
    m = {"fid": 123.5, "miou": 0.25, "pixel_acc": 0.5, "step": 7, "segmenter": "own"}
    data = [{"rev": rev, "name": "exp-9", "error": None, "experiments": None,
             "data": {"rev": rev, "params": {}, "metrics": {
                 "runs/x/metrics.json": {"data": m}, "runs/x/reference.json": {"data": {"miou": 0.4}},
                 "runs/x/logs/metrics.json": {"data": {"step": 7}}, "runs/y/metrics.json": {"data": {"fid": 1.0}},
                 "runs/x/broken.json": {"error": {"msg": "x"}}}}}]
    (entry,), _ = C.parse_exp_show(data)
    assert set(entry.metrics) == {"runs/x/metrics.json", "runs/x/reference.json", "runs/x/logs/metrics.json",
                                  "runs/y/metrics.json"}
    dest = tmp_path / "rec"
    assert C._metrics_from_show(entry.metrics, "runs/x", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.json")) == ["metrics.json", "reference.json"]
    (dest / "config.yaml").write_text("model: {norm: spade}\n")
    rec = C.load_run(dest, "exp-9")
    assert rec.metrics == m and rec.steps == 7
    # a file fetched from the revision wins over the reported values
    (dest / "metrics.json").write_text(json.dumps({"fid": 9.0}))
    assert not C._metrics_from_show({"runs/x/metrics.json": m}, "runs/x", dest)
    assert json.loads((dest / "metrics.json").read_text()) == {"fid": 9.0}


def test_cli_errors_are_one_line(tmp_path):
    from stages.cli import main

    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "not a run folder" in res.output
    assert not (tmp_path / "o" / "index.html").exists()
    bad = make_run(tmp_path, "bad")
    (bad / "metrics.json").write_text("{nope")
    res = CliRunner().invoke(main, ["compare", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "metrics.json: invalid JSON" in res.output
    good = [str(make_run(tmp_path, n, norm=n)) for n in ("resail", "spade")]
    res = CliRunner().invoke(main, ["compare", *good, "--out", str(tmp_path / "o"), "--table", "Z"])
    assert res.exit_code == 1 and "unknown paper table" in res.output
    res = CliRunner().invoke(main, ["compare", *good, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "differing params: model.norm; paper table 3" in res.output


@pytest.mark.skipif(CHROMIUM is None, reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    """The page loads in a real browser and its inlined images are painted (a pure-colour run is visible)."""
    runs = [C.load_run(make_run(tmp_path, "r", color=(255, 0, 255), norm="resail")),
            C.load_run(make_run(tmp_path, "s", color=(0, 255, 255), norm="spade"))]
    res = C.write_compare(runs, tmp_path / "out")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,4000", f"--screenshot={shot}",
           res.html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = cv2.imread(str(shot))[:, :, ::-1]
    assert img.shape[0] >= 1000
    for color in ((255, 0, 255), (0, 255, 255)):  # the two runs' synthesised images, painted
        assert (np.abs(img.astype(int) - color).sum(-1) < 12).sum() > 500, color
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", res.html.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<table>" in dom and "Table 3" in dom


# --------------------------------------------------------------------------- diagnostics: does the generator use its guidance
class _StubSyn:
    """The four Synthesizer methods diagnostics.guidance_use needs, over a real generator."""

    def __init__(self, G, n_classes: int = 3, size=(16, 16)):
        self.G, self.size, self.n = G.eval(), size, n_classes

    def guidance(self, labels, instances=None):
        from types import SimpleNamespace

        g = np.stack([labels * 70 % 256, 255 - labels * 50, labels * 30 + 20], -1).astype(np.uint8)
        return SimpleNamespace(guidance=g, valid=labels > 0)

    def prepare(self, labels, guidance, instances=None):
        import torch

        seg = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), self.n).permute(2, 0, 1).float()
        return seg, torch.from_numpy(guidance).permute(2, 0, 1).float() / 127.5 - 1

    def generate(self, seg, g, seed=0):
        import torch

        torch.manual_seed(seed)
        with torch.no_grad():
            return self.G(seg[None], g[None])

    @staticmethod
    def to_image(t):
        return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def _tiny_generator(norm: str):
    from resail_train.config import load_config
    from resail_train.models.build import build_generator

    cfg = load_config("demo", [f"model.norm={norm}", "data.crop_size=[16,16]", "data.load_size=null",
                               "model.num_upsampling=2", "model.ngf=2", "model.norm_hidden=4"])
    import torch

    G = build_generator(cfg, 3)
    torch.manual_seed(0)
    with torch.no_grad():  # the 0.02-gain init is ~silent in eval mode; wake it up (mix scalars stay 0)
        for n, p in G.named_parameters():
            if "mix_" not in n:
                p.normal_(0, 0.3)
    return G


def test_diagnostics_mix_weights_and_guidance_use():
    import torch
    from types import SimpleNamespace

    from resail_train.reporting.diagnostics import guidance_use, mix_weights

    G = _tiny_generator("resail")
    mw = mix_weights(G)
    assert mw and all(m["gamma"] == 0.5 and m["beta"] == 0.5 for m in mw)  # eq. h starts at 0.5 / 0.5
    with torch.no_grad():
        next(p for n, p in G.named_parameters() if n.endswith("mix_gamma")).fill_(1.0)
    assert max(m["gamma"] for m in mix_weights(G)) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert mix_weights(_tiny_generator("spade")) == []

    rng = np.random.default_rng(0)
    samples = [SimpleNamespace(labels=rng.integers(0, 3, (16, 16)), instances=None,
                               image=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    spade = guidance_use(_StubSyn(_tiny_generator("spade")), samples)
    assert spade["sensitivity_black_guidance"] == 0 and spade["sensitivity_other_guidance"] == 0
    res = guidance_use(_StubSyn(G), samples)
    assert res["sensitivity_black_guidance"] > 0 and res["n_images"] == 3
    # fidelity of the real image: by hand on the covered pixels
    s = samples[0]
    g = _StubSyn(G).guidance(s.labels).guidance
    m = s.labels > 0
    want = [np.abs(x.image.astype(float) - _StubSyn(G).guidance(x.labels).guidance).mean(-1)[x.labels > 0].mean()
            for x in samples]
    assert res["real_vs_guidance_on_covered"] == pytest.approx(np.mean(want))
    assert g.shape == (16, 16, 3) and m.any()
