"""Side-by-side comparison of training runs: the page behind ``resail compare``.

Input is a list of run folders (``resail compare RUN …``) or the experiments DVC knows
(``resail compare --exps``, read from ``dvc exp show --json``; each experiment's run folder is read
at its git revision through :class:`dvc.api.DVCFileSystem`, so nothing has to be checked out).
Output: ``OUT/index.html`` (self-contained: every image is a ``data:`` URI, every data string is
HTML-escaped) and ``OUT/compare.md`` (every data string HTML-escaped too, with Markdown's ``\\ ` | [ ]``
backslash-escaped: Markdown viewers render raw HTML) with

* one row per run: name, the params that differ between the runs, FID, KID, mIoU, pixel accuracy, the
  segmenter that scored them, steps, training wall time, and the paper's numbers for the matching
  ablation table (:mod:`resail_train.reporting.paper_numbers`, chosen from the differing key); when a
  run's ``metrics.json`` has ``best`` (``resail evaluate`` scored ``checkpoints/best.pt`` too) the
  best checkpoint's numbers get their own columns beside the latest's, with a note that best is
  selected on the split it is scored on (as the authors' ``--which_epoch best``), so optimistic;
* seeds: runs that differ only in random seeds (:func:`is_seed_param`: the config's ``seed``, any
  ``….seed`` param) form one group, shown as one row of mean ± sample sd (ddof 1; ``—`` for one run)
  and n per metric, with the individual runs in a table below;
* the training curves of every run overlaid (dvclive ``logs/plots/metrics/train/*.tsv``);
* one strip per validation image: label map | real | what each run synthesised for that very map
  (``RUN/eval/<split>/<id>.png`` written by ``resail evaluate``; only ids every run has).

Protocols: a number means something only together with how it was measured (segmentation network
and its weights, FID reference split and image size, number of images). Runs are grouped by that
protocol; when there is more than one group every group gets its own table with its protocol spelt
out above it, so numbers of different protocols never share a column unannounced.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import yaml

from pipeline.cache import SegmentDB, atomic_outputs
from pipeline.errors import ConfigError, DataError, ResailError
from pipeline.visualize import colorize_labels, hstack
from resail_train.checkpoint import recorded_cache_dir
from resail_train.config import flatten  # noqa: F401  (compare.flatten: a run's params as dotted keys)
from resail_train.reporting.paper_numbers import PROTOCOL as PAPER_PROTOCOL
from resail_train.reporting.paper_numbers import PaperTable, TABLES, table_for_params
from resail_train.reporting.plots import labelled, line_plot, read_tsv, tile
from resail_train.run_files import (COMPARE_MD, CONFIG_FILE, CURVES_DIR, DETAILS_FILE, EVAL_DIR, INDEX_HTML, METRICS_FILE,
                                    REFERENCE_FILE, TRAIN_SUMMARY_FILE)

RUN_FILES = (METRICS_FILE, CONFIG_FILE, TRAIN_SUMMARY_FILE, DETAILS_FILE)
# Keys of metrics.json / eval_details.json that define how the numbers were measured.
PROTOCOL_KEYS = ("segmenter", "segmenter_weights_sha256", "fid_reference", "fid_weights", "fid_inception",
                 "split", "n_images", "size", "checkpoint")
# params.yaml keys that only say where things go or how fast: never a "differing param".
NOISE_PARAMS = ("train.run_dir", "dataset.name", "train.device", "evaluate.device", "report.device",
                "synthesize.device", "retrieve.device", "decompose.jobs", "distort.jobs", "compose.jobs",
                "decompose.backend")


# --------------------------------------------------------------------------- records
@dataclass
class RunRecord:
    """Everything the page shows about one run."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)  # flat "section.key" → value
    metrics: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    eval_images: dict[str, Path] = field(default_factory=dict)  # "split/image_id" → PNG
    cache_dir: Path | None = None
    source: str = ""  # the run folder, or "exp <name> (<rev>)"

    @property
    def steps(self) -> int | None:
        return self.summary.get("step", self.metrics.get("step"))

    @property
    def seconds(self) -> float | None:
        return self.summary.get("seconds")

    def protocol(self) -> dict[str, Any]:
        """How the metrics were measured (only keys the run records)."""
        out: dict[str, Any] = {}
        for k in PROTOCOL_KEYS:
            v = self.metrics.get(k, self.details.get(k))
            if v is not None:
                out[k] = v
        if "fid" in self.metrics and self.metrics.get("fid") is None:
            out["fid"] = "not computed"
        return out


# --------------------------------------------------------------------------- reading run files
# Run folders come from other people (a colleague's runs, a DVC experiment of a fork): their JSON and
# YAML files are read through read_run_file only, which `resail report` uses as well. It bounds what a
# small hostile file can cost: at most RUN_FILE_MAX_BYTES bytes, at most RUN_FILE_MAX_DEPTH levels of
# nesting (Python's JSON parser and everything that walks the result recurse once per level: a few
# kilobytes of "[[[[..." are a RecursionError), and no YAML anchors or aliases (a 700-byte "billion
# laughs" document expands to billions of nodes). Every refusal is one line naming the file.
RUN_FILE_MAX_BYTES = 16 << 20
RUN_FILE_MAX_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class _RunFileRefused(Exception):
    """Raised inside the YAML composer; :func:`read_run_file` turns it into the file's one line."""


class _RunFileYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases and nesting deeper than RUN_FILE_MAX_DEPTH.

    Aliases are what makes a YAML bomb (each one re-uses a whole subtree); configs written by
    ``resail train`` (``yaml.safe_dump``) never contain them, so refusing them costs nothing."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        where = f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RunFileRefused(f"YAML anchors and aliases (&, *) are not accepted in run files ({where})")
        self._run_file_depth = getattr(self, "_run_file_depth", 0) + 1
        try:
            if self._run_file_depth > RUN_FILE_MAX_DEPTH:
                raise _RunFileRefused(f"nested deeper than {RUN_FILE_MAX_DEPTH} levels ({where})")
            return super().compose_node(parent, index)
        finally:
            self._run_file_depth -= 1


def _json_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (brackets inside strings do not count).

    Measured without parsing, so a hostile depth is refused before the recursive parser sees it.
    Up to the first syntax error the string tokens found here are the parser's, so the depth the
    parser would reach is never under-estimated."""
    raw = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    if not raw.size:
        return 0
    step = (np.isin(raw, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(raw, (ord("]"), ord("}"))).astype(np.int64))
    return int(max(0, np.cumsum(step).max()))


def read_run_file(path: str | Path, error: type[ResailError] | None = None) -> Any:
    """The parsed content of a run folder's ``.json`` or ``.yaml``/``.yml`` file, bounded in size,
    depth and (YAML) anchors/aliases; every problem is one ``error`` line naming the file
    (default: :class:`ConfigError` for YAML, :class:`DataError` for JSON)."""
    path = Path(path)
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    error = error or (ConfigError if is_yaml else DataError)
    kind = "YAML" if is_yaml else "JSON"
    try:
        with open(path, "rb") as fh:
            data = fh.read(RUN_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise error(path, f"cannot be read ({e.strerror or e})") from None
    if len(data) > RUN_FILE_MAX_BYTES:
        raise error(path, f"larger than {RUN_FILE_MAX_BYTES >> 20} MiB, the limit for a run's {kind} file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(path, f"invalid {kind} (not UTF-8 text: {e.reason} at byte {e.start})") from None
    if is_yaml:
        try:
            return yaml.load(text, Loader=_RunFileYamlLoader)  # a SafeLoader subclass: no Python objects
        except _RunFileRefused as e:
            raise error(path, str(e)) from None
        except yaml.YAMLError as e:
            raise error(path, f"invalid YAML ({' '.join(str(e).split())})") from None
    return loads_bounded_json(text, path, error)


def loads_bounded_json(text: str, source: str | Path, error: type[ResailError] = DataError) -> Any:
    """``json.loads`` of a text nested at most :data:`RUN_FILE_MAX_DEPTH` levels (else one ``error``
    line naming ``source``)."""
    depth = _json_depth(text)
    if depth > RUN_FILE_MAX_DEPTH:
        raise error(source, f"nested {depth} levels deep, deeper than the {RUN_FILE_MAX_DEPTH} accepted in run files")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(source, f"invalid JSON ({e})") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    d = read_run_file(path)
    return d if isinstance(d, dict) else {}


def _read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_tsv(path)


def _retrieval_params(cache_dir: Path | None) -> dict[str, Any]:
    """The retrieve params recorded in ``retrieval.parquet`` (k, max_score, exclude …), without reading rows."""
    if cache_dir is None:
        return {}
    p = Path(cache_dir) / "retrieval.parquet"
    if not p.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        raw = (pq.read_schema(p).metadata or {}).get(b"resail")
        return {f"retrieve.{k}": v for k, v in json.loads(raw).items()} if raw else {}
    except Exception:  # noqa: BLE001 - optional information
        return {}


def _compose_params(cache_dir: Path | None) -> dict[str, Any]:
    """``compose.rank`` recorded in ``guidance.h5`` (Table B's grid: the pasted rank), without reading images."""
    p = Path(cache_dir) / "guidance.h5" if cache_dir is not None else None
    if p is None or not p.is_file():
        return {}
    try:
        import h5py

        with h5py.File(p, "r") as f:
            rank = f.attrs.get("rank")
        rank = rank.decode() if isinstance(rank, bytes) else rank
        return {} if rank is None else {"compose.rank": rank if isinstance(rank, str) else int(rank)}
    except Exception:  # noqa: BLE001 - optional information
        return {}


def load_run(run_dir: str | Path, name: str | None = None, extra_params: dict | None = None,
             cache_dir: str | Path | None = None) -> RunRecord:
    """Read a run folder (``config.yaml``, ``metrics.json``, ``train_summary.json``, logs, ``eval/``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResailError(run_dir, "not a run folder (does not exist)")
    if not any((run_dir / f).is_file() for f in (CONFIG_FILE, METRICS_FILE, TRAIN_SUMMARY_FILE)):
        raise ResailError(run_dir, "not a run folder (no config.yaml, metrics.json or train_summary.json)")
    params: dict[str, Any] = {}
    cfg_p = run_dir / CONFIG_FILE
    if cfg_p.is_file():
        cfg = read_run_file(cfg_p) or {}
        params.update(flatten(cfg if isinstance(cfg, dict) else {}))
    summary = _read_json(run_dir / TRAIN_SUMMARY_FILE)
    if cache_dir is None:
        cache_dir = recorded_cache_dir(run_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None and Path(cache_dir).is_dir() else None
    if extra_params:
        params.update(extra_params)
    for k, v in {**_retrieval_params(cache_dir), **_compose_params(cache_dir)}.items():
        params.setdefault(k, v)
    curves = {p.stem: _read_tsv(p) for p in sorted((run_dir / CURVES_DIR).glob("*.tsv"))}
    images: dict[str, Path] = {}
    ev = run_dir / EVAL_DIR
    if ev.is_dir():
        for p in sorted(ev.rglob("*.png")):
            images[p.relative_to(ev).with_suffix("").as_posix()] = p
    return RunRecord(name or run_dir.name, params, _read_json(run_dir / METRICS_FILE), summary,
                     _read_json(run_dir / DETAILS_FILE), curves, images, cache_dir, str(run_dir))


# --------------------------------------------------------------------------- DVC experiments
@dataclass
class ExpEntry:
    name: str
    rev: str
    params: dict[str, Any]
    baseline: bool
    # metrics files as `dvc exp show --json` reports them ({path: values}): in experiments made while
    # dvc.yaml still had `cache: false` outputs, metrics.json was in neither the experiment commit nor
    # the DVC cache, so the file may be unreadable at that revision (dvc.yaml now caches every output)
    metrics: dict[str, dict] = field(default_factory=dict)


def parse_exp_show(data: Any) -> tuple[list[ExpEntry], list[str]]:
    """Experiments (and their baselines) of ``dvc exp show --json`` → entries, plus notes on skipped ones.

    The workspace row is left out (it repeats an experiment or the baseline); rows with an error or
    without data (queued, running or failed experiments) are skipped with a note.
    """
    if not isinstance(data, list):
        raise ResailError("dvc exp show --json", "expected a JSON list")
    entries: list[ExpEntry] = []
    notes: list[str] = []

    def take(row: dict, baseline: bool) -> None:
        name = row.get("name") or str(row.get("rev", ""))[:7]
        d = row.get("data")
        if row.get("error") or not isinstance(d, dict):
            err = row.get("error") or {}
            notes.append(f"{name}: skipped ({(err.get('msg') if isinstance(err, dict) else err) or 'no data'})")
            return
        params = {}
        for fname, pf in (d.get("params") or {}).items():
            if isinstance(pf, dict) and isinstance(pf.get("data"), dict):
                params.update(flatten(pf["data"]))
        metrics = {str(path): mf["data"] for path, mf in (d.get("metrics") or {}).items()
                   if isinstance(mf, dict) and isinstance(mf.get("data"), dict)}
        entries.append(ExpEntry(str(name), str(row.get("rev")), params, baseline, metrics))

    for top in data:
        if not isinstance(top, dict) or top.get("rev") == "workspace":
            continue
        take(top, True)
        for exp in top.get("experiments") or []:
            revs = exp.get("revs") or []
            ex = exp.get("executor") or {}
            state = ex.get("state") if isinstance(ex, dict) else None
            if state in ("queued", "running", "failed") or not revs:
                notes.append(f"{exp.get('name') or '?'}: skipped ({state or 'no revision'})")
                continue
            take(revs[0], False)
    return entries, notes


def dvc_exp_show(repo: str | Path) -> Any:
    """``dvc exp show --json`` of ``repo`` as parsed JSON (one-line error when DVC fails)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        res = subprocess.run(cmd, cwd=str(repo), capture_output=True, text=True, check=False)
    except OSError as e:
        raise ResailError(repo, f"cannot run dvc ({e})") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ResailError(repo, f"dvc exp show failed: {last}")
    try:
        return loads_bounded_json(res.stdout, "dvc exp show --json", ResailError)  # params/metrics of any fork
    except ResailError as e:
        raise ResailError(repo, f"dvc exp show printed no usable JSON ({e.problem})") from None


def _fetch_run_files(fs, run_dir: str, dest: Path) -> bool:
    """Copy the small files of ``run_dir`` at one revision into ``dest`` (no checkpoints)."""
    got = False
    for f in RUN_FILES:
        p = f"{run_dir}/{f}"
        if fs.exists(p):
            dest.mkdir(parents=True, exist_ok=True)
            (dest / f).write_bytes(fs.cat_file(p))
            got = True
    for sub in (CURVES_DIR, EVAL_DIR):
        p = f"{run_dir}/{sub}"
        if not fs.isdir(p):
            continue
        for f in fs.find(p):
            rel = Path(f).relative_to("/" + run_dir if f.startswith("/") else run_dir)
            if sub == EVAL_DIR and rel.suffix != ".png" or sub == CURVES_DIR and rel.suffix != ".tsv":
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(fs.cat_file(f))
            got = True
    return got


def _metrics_from_show(metrics: dict[str, dict], run_dir: str, dest: Path) -> bool:
    """Write the run's metrics files that ``dvc exp show`` reported but the revision lacks."""
    wrote = False
    for path, values in metrics.items():
        rel = path.replace("\\", "/").strip("/")
        if not rel.startswith(run_dir + "/"):
            continue
        sub = rel[len(run_dir) + 1:]
        out = dest / sub
        if sub not in (METRICS_FILE, REFERENCE_FILE) or out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(values))
        wrote = True
    return wrote


def load_exps(repo: str | Path = ".", work_dir: str | Path | None = None, show: Any = None,
              include_baseline: bool = True) -> tuple[list[RunRecord], list[str]]:
    """One :class:`RunRecord` per DVC experiment of ``repo`` (files copied into ``work_dir``)."""
    from dvc.api import DVCFileSystem

    repo = Path(repo).resolve()
    entries, notes = parse_exp_show(dvc_exp_show(repo) if show is None else show)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="resail-compare-"))
    records: list[RunRecord] = []
    for e in entries:
        if e.baseline and not include_baseline:
            continue
        run_dir = str(e.params.get("train.run_dir") or f"runs/{e.params.get('dataset.name', '')}").strip("/")
        dest = work / f"{len(records):02d}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in e.name)}"
        fs = DVCFileSystem(str(repo), rev=e.rev)
        try:
            found = _fetch_run_files(fs, run_dir, dest)
        except Exception as err:  # noqa: BLE001 - a missing cache object etc. → note, not a crash
            notes.append(f"{e.name}: skipped (cannot read {run_dir} at {e.rev[:7]}: {err})")
            continue
        found = _metrics_from_show(e.metrics, run_dir, dest) or found
        if not found:
            notes.append(f"{e.name}: skipped (no run files under {run_dir} at {e.rev[:7]})")
            continue
        params = {k: v for k, v in e.params.items() if not k.startswith(("train.set.", "train.overrides"))}
        cache = repo / "datasets_cache" / str(e.params.get("dataset.name", ""))
        rec = load_run(dest, e.name, extra_params=params, cache_dir=cache if cache.is_dir() else None)
        rec.source = f"exp {e.name} ({e.rev[:7]})" + (" [baseline]" if e.baseline else "")
        records.append(rec)
    return records, notes


# --------------------------------------------------------------------------- analysis
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
    return a == b


def differing_params(records: list[RunRecord]) -> list[str]:
    """Keys whose value is not the same in every run (absent counts as a value), sorted."""
    keys = sorted(set().union(*(r.params for r in records))) if records else []
    out = []
    for k in keys:
        if k in NOISE_PARAMS or k == "name":
            continue
        vals = [r.params.get(k, "<absent>") for r in records]
        if any(not _same(vals[0], v) for v in vals[1:]):
            out.append(k)
    return out


def protocol_groups(records: list[RunRecord]) -> list[tuple[dict, list[RunRecord]]]:
    """Runs grouped by :meth:`RunRecord.protocol`, in first-seen order."""
    groups: list[tuple[dict, list[RunRecord]]] = []
    for r in records:
        p = r.protocol()
        for gp, rs in groups:
            if gp == p:
                rs.append(r)
                break
        else:
            groups.append((p, [r]))
    return groups


def is_seed_param(key: str) -> bool:
    """A random seed: the config's ``seed`` or any ``section.seed`` (``train.set.seed``, ``distort.seed`` …).
    Runs that differ only in these are replicates of one experiment."""
    return key.rsplit(".", 1)[-1] == "seed"


def seed_groups(records: list[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by every param except the seeds (and the keys :func:`differing_params` ignores),
    in first-seen order; a group's runs differ only in seeds."""
    def key_params(r: RunRecord) -> dict[str, Any]:
        return {k: v for k, v in r.params.items() if k not in NOISE_PARAMS and k != "name" and not is_seed_param(k)}

    groups: list[tuple[dict, list[RunRecord]]] = []
    for r in records:
        kp = key_params(r)
        for gp, rs in groups:
            if set(gp) == set(kp) and all(_same(gp[k], kp[k]) for k in gp):
                rs.append(r)
                break
        else:
            groups.append((kp, [r]))
    return [rs for _, rs in groups]


def choose_table(records: list[RunRecord], diff: list[str], table: str | None = "auto") -> PaperTable | None:
    """The paper table to show beside the runs: ``table`` by key, or (``auto``) from the differing params."""
    if table in (None, "", "none"):
        return None
    if table != "auto":
        key = str(table).upper() if str(table).upper() in ("A", "B") else str(table)
        if key not in TABLES:
            raise ResailError("--table", f"unknown paper table {table!r} (3, 4, A, B, auto or none)")
        return TABLES[key]
    return table_for_params(diff)


def _fmt_num(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def _fmt_kid(m: dict) -> str:
    """``KID ± std`` (4 decimals) of a metrics.json; ``—`` when absent (runs evaluated before KID existed)."""
    v = m.get("kid")
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—" if v is None or isinstance(v, float) else str(v)
    sd = m.get("kid_std")
    return f"{v:.4f}" + (f" ± {sd:.4f}" if isinstance(sd, (int, float)) and not isinstance(sd, bool) else "")


def _fmt_val(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_val(x) for x in v) + "]"
    return str(v)


def _fmt_time(s: Any) -> str:
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        return "—"
    s = float(s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _protocol_text(p: dict) -> str:
    if not p:
        return "not recorded (no metrics.json: run `resail evaluate`)"
    parts = []
    for k, v in p.items():
        if k == "segmenter_weights_sha256" and isinstance(v, str):
            v = v[:12]
        parts.append(f"{k}={_fmt_val(v)}")
    return ", ".join(parts)


BEST_HEAD = ["best FID ↓", "best KID ↓", "best mIoU % ↑", "best acc % ↑", "best step"]


def best_metrics(r: RunRecord) -> dict:
    """The ``best`` object of a run's metrics.json ({} when the best checkpoint was not scored)."""
    b = r.metrics.get("best")
    return b if isinstance(b, dict) else {}


def _paper_cells(paper: PaperTable | None, r: RunRecord) -> list[str]:
    if paper is None:
        return []
    pr = paper.row_for(r.params.get(paper.param))
    return (["no paper row", "—", "—", "—"] if pr is None else
            [pr.label, _fmt_num(pr.fid), "—" if pr.miou is None else f"{pr.miou:.1f}",
             "—" if pr.acc is None else f"{pr.acc:.1f}"])


def _paper_head(paper: PaperTable | None) -> list[str]:
    return [] if paper is None else [f"paper row (Table {paper.key})", "paper FID", "paper mIoU", "paper acc"]


def table_rows(records: list[RunRecord], diff: list[str], paper: PaperTable | None,
               best: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the comparison table (shared by the HTML and the Markdown); ``best``
    adds the best checkpoint's columns."""
    head = ["run", *diff, "FID ↓", "KID ↓", "mIoU % ↑", "acc % ↑", *(BEST_HEAD if best else []),
            "segmenter", "steps", "train time", *_paper_head(paper)]
    rows = []
    for r in records:
        m, b = r.metrics, best_metrics(r)
        cells = [r.name, *(_fmt_val(r.params.get(k, "—")) for k in diff),
                 _fmt_num(m.get("fid")), _fmt_kid(m), _fmt_num(m.get("miou"), True),
                 _fmt_num(m.get("pixel_acc"), True)]
        if best:
            cells += ([_fmt_num(b.get("fid")), _fmt_kid(b), _fmt_num(b.get("miou"), True),
                       _fmt_num(b.get("pixel_acc"), True), _fmt_val(b.get("step", "—"))] if b else ["—"] * 5)
        cells += [str(m.get("segmenter") or ("—" if not m else "run segnet (not recorded)")),
                  "—" if r.steps is None else str(r.steps), _fmt_time(r.seconds), *_paper_cells(paper, r)]
        rows.append(cells)
    return head, rows


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_sd(values: list[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample sd with ddof 1 — None for one value —, count) of the finite numbers in ``values``."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _fmt_mean_sd(values: list[Any], fmt) -> str:
    """``mean ± sd`` (``± —`` for one value; `` (n=k)`` when only k of the runs have the number)."""
    mean, sd, k = mean_sd(values)
    if mean is None:
        return "—"
    text = f"{fmt(mean)} ± {'—' if sd is None else fmt(sd)}"
    return text if k == len(values) else f"{text} (n={k})"


def _spread(values: list[Any]) -> str:
    """One value when all agree, else ``min–max`` (numbers) or the distinct values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if all(_same(vals[0], v) for v in vals[1:]):
        return _fmt_val(vals[0])
    if all(_finite(v) for v in vals):
        return f"{_fmt_val(min(vals))}–{_fmt_val(max(vals))}"
    return ", ".join(dict.fromkeys(_fmt_val(v) for v in vals))


def group_rows(groups: list[list[RunRecord]], diff: list[str], seeds: list[str], paper: PaperTable | None,
               best: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per seed group: the non-seed params that differ, the seeds, n, and mean ± sd per metric."""
    f2, f4 = (lambda v: f"{v:.2f}"), (lambda v: f"{v:.4f}")
    pct = lambda v: f"{100 * v:.1f}"
    head = ["runs", *diff, "seeds", "n", "FID ↓", "KID ↓", "mIoU % ↑", "acc % ↑", *(BEST_HEAD if best else []),
            "segmenter", "steps", "train time", *_paper_head(paper)]
    rows = []
    for rs in groups:
        ms, bs = [r.metrics for r in rs], [best_metrics(r) for r in rs]
        seed_text = "; ".join(f"{k}={', '.join(_fmt_val(r.params.get(k, '—')) for r in rs)}" for k in seeds) or "—"
        cells = [", ".join(r.name for r in rs), *(_fmt_val(rs[0].params.get(k, "—")) for k in diff), seed_text,
                 str(len(rs)), _fmt_mean_sd([m.get("fid") for m in ms], f2), _fmt_mean_sd([m.get("kid") for m in ms], f4),
                 _fmt_mean_sd([m.get("miou") for m in ms], pct), _fmt_mean_sd([m.get("pixel_acc") for m in ms], pct)]
        if best:
            cells += [_fmt_mean_sd([b.get("fid") for b in bs], f2), _fmt_mean_sd([b.get("kid") for b in bs], f4),
                      _fmt_mean_sd([b.get("miou") for b in bs], pct), _fmt_mean_sd([b.get("pixel_acc") for b in bs], pct),
                      _spread([b.get("step") for b in bs])]
        seconds = mean_sd([r.seconds for r in rs])[0]
        cells += [_spread([m.get("segmenter") for m in ms]), _spread([r.steps for r in rs]),
                  _fmt_time(seconds) if seconds is not None else "—", *_paper_cells(paper, rs[0])]
        rows.append(cells)
    return head, rows


def best_notes(records: list[RunRecord]) -> list[str]:
    """What the best columns mean, one line per (selection split, scored split) pair among ``records``."""
    out = []
    pairs = dict.fromkeys((best_metrics(r).get("selected_on_split"), r.metrics.get("split"))
                          for r in records if best_metrics(r))
    for sel, split in pairs:
        where = f"split {sel}" if sel else "the validation split"
        if sel is not None and sel != split:
            out.append(f"best …: checkpoints/best.pt, the generator with the lowest validation FID during training on "
                       f"{where}, scored here on split {split}. FID, KID, mIoU, acc: the latest generator.")
        else:
            out.append(f"best …: checkpoints/best.pt, the generator with the lowest validation FID during training on "
                       f"{where}, scored here on that same split, as the authors did (--which_epoch best): selected on "
                       f"the images it is scored on, so its numbers are optimistic. FID, KID, mIoU, acc: the latest "
                       f"generator, not selected.")
    return out


# --------------------------------------------------------------------------- pictures
def curve_plots(records: list[RunRecord], width: int = 560, height: int = 300) -> list[tuple[str, np.ndarray]]:
    """One overlay plot per training series (``G_total``, ``D_total`` first), a line per run."""
    names = sorted(set().union(*(r.curves for r in records))) if records else []
    first = ("G_total", "D_total")
    names.sort(key=lambda n: (first.index(n) if n in first else len(first), n))
    out = []
    for n in names:
        series = {}
        for i, r in enumerate(records):
            if n in r.curves and len(r.curves[n][0]):
                series[f"{i + 1}: {r.name}"] = r.curves[n]
        if series:
            out.append((n, line_plot(series, f"train/{n}", width, height)))
    return out


def common_images(records: list[RunRecord], n: int) -> list[str]:
    """The first ``n`` (sorted) ``split/image_id`` keys every run synthesised."""
    if not records:
        return []
    keys = set(records[0].eval_images)
    for r in records[1:]:
        keys &= set(r.eval_images)
    return sorted(keys)[:max(0, n)]


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else np.ascontiguousarray(img[:, :, ::-1])


def _label_and_real(cache_dir: Path | None, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``key`` → (colourised label map, real image) from the stage cache's dataset, where it can be read."""
    if cache_dir is None or not keys:
        return {}
    try:
        db = SegmentDB.open(cache_dir)
        try:
            adapter = db.open_adapter()
            out = {}
            by_split: dict[str, dict] = {}
            for key in keys:
                split, image_id = key.split("/", 1)
                if split not in by_split:
                    by_split[split] = {ref.image_id: ref for ref in adapter.refs(split)}
                ref = by_split[split].get(image_id)
                if ref is None:
                    continue
                s = adapter.load(ref)
                out[key] = (colorize_labels(s.labels, adapter.meta), s.image)
            return out
        finally:
            db.close()
    except Exception:  # noqa: BLE001 - the strip still shows the generated images
        return {}


def image_strips(records: list[RunRecord], keys: list[str], cache_dir: Path | None) -> list[tuple[str, np.ndarray]]:
    """Per validation image: label | real | run 1 | run 2 | … (each tile titled)."""
    extra = _label_and_real(cache_dir, keys)
    strips = []
    for key in keys:
        tiles = []
        if key in extra:
            lab, real = extra[key]
            tiles += [labelled(tile(lab, nearest=True), "label"), labelled(tile(real), "real")]
        for i, r in enumerate(records):
            img = _read_rgb(r.eval_images[key])
            if img is not None:
                tiles.append(labelled(tile(img), f"{i + 1}: {r.name}"[:40]))
        if tiles:
            strips.append((key, hstack(tiles)))
    return strips


def png_data_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------- writing
CSS = ("body{font-family:sans-serif;margin:24px;max-width:1500px}table{border-collapse:collapse;margin:8px 0}"
       "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:13px}th{background:#eee}"
       ".note{color:#444;font-size:13px}.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}"
       "img{max-width:100%;margin:4px 0}td.paper{background:#f4f7ff}")


_MD_SPECIAL = re.compile(r"([\\`|\[\]])")


def _md(s: Any) -> str:
    """A data-derived string as inert Markdown text, shown as written: HTML-escaped as index.html is
    (a renderer passes raw HTML through, so a run named ``<script>…`` would run), then ``\\``, a
    backtick (code spans), ``|`` (table cells) and ``[``/``]`` (links, images) backslash-escaped, and
    kept on one line. Data strings therefore never sit in code spans, where escapes do not apply."""
    text = html.escape(" ".join(str(s).splitlines()), quote=True)
    return _MD_SPECIAL.sub(r"\\\1", text)


@dataclass
class CompareResult:
    out_dir: Path
    html: Path
    markdown: Path
    n_runs: int
    differing: list[str]
    table: str | None
    n_protocols: int
    n_images: int
    n_seed_groups: int = 0  # rows of mean ± sd (0: no runs differ only in seeds, one row per run)


def write_compare(records: list[RunRecord], out_dir: str | Path, *, table: str | None = "auto", n_images: int = 4,
                  cache_dir: str | Path | None = None, notes: Iterable[str] = (),
                  title: str = "RESAIL run comparison") -> CompareResult:
    """Write ``OUT/index.html`` and ``OUT/compare.md`` for ``records`` (see the module docstring)."""
    if not records:
        raise ResailError(out_dir, "nothing to compare (no runs)")
    out_dir = Path(out_dir)
    diff = differing_params(records)
    paper = choose_table(records, diff, table)
    groups = protocol_groups(records)
    cache = Path(cache_dir) if cache_dir else next((r.cache_dir for r in records if r.cache_dir), None)
    keys = common_images(records, n_images)
    notes = list(notes)
    esc = html.escape

    h: list[str] = [f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{esc(title)}</title>"
                    f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"]
    md: list[str] = [f"# {_md(title)}", ""]
    h.append("<p class=note>Runs: " + "; ".join(f"{i + 1}. <b>{esc(r.name)}</b> ({esc(r.source)})"
                                               for i, r in enumerate(records)) + "</p>")
    md += ["Runs: " + "; ".join(f"{i + 1}. {_md(r.name)} ({_md(r.source)})" for i, r in enumerate(records)), ""]
    if diff:
        h.append("<p class=note>Params that differ: " + ", ".join(f"<code>{esc(k)}</code>" for k in diff) + "</p>")
        md += ["Params that differ: " + ", ".join(_md(k) for k in diff), ""]
    else:
        h.append("<p class=note>The runs have the same params.</p>")
        md += ["The runs have the same params.", ""]
    if paper is not None:
        pnote = (f"Paper columns: {paper.title}, Shi et al. CVPR 2022, row chosen by <code>{esc(paper.param)}</code>; "
                 f"paper protocol: {esc(PAPER_PROTOCOL)}. They show the direction the paper reports, not numbers "
                 "comparable with ours.")
        h.append(f"<p class=note>{pnote}</p>")
        md += [f"Paper columns: {_md(paper.title)}, Shi et al. CVPR 2022, row chosen by {_md(paper.param)}; paper "
               f"protocol: {_md(PAPER_PROTOCOL)}. They show the direction the paper reports, not numbers comparable "
               "with ours.", ""]
    if len(groups) > 1:
        w = (f"These runs were measured under {len(groups)} different protocols; each protocol has its own "
             "table below and numbers of different tables are not comparable.")
        h.append(f"<p class=warn>{esc(w)}</p>")
        md += [f"> **Warning:** {w}", ""]
    h.append("<h2>Results</h2>")
    md += ["## Results", ""]
    npaper = 4 if paper is not None else 0

    def emit(head: list[str], rows: list[list[str]]) -> None:
        h.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr>")
        for row in rows:
            h.append("<tr>" + "".join(
                f"<td{' class=paper' if j >= len(row) - npaper else ''}>{esc(c)}</td>" for j, c in enumerate(row))
                + "</tr>")
        h.append("</table>")
        md.extend(["| " + " | ".join(_md(c) for c in head) + " |", "|" + "---|" * len(head)])
        md.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in rows)
        md.append("")

    # seeds: aggregate when some runs differ only in seeds (within one protocol: never across)
    seeds = [k for k in diff if is_seed_param(k)]
    by_proto = [seed_groups(rs) for _, rs in groups]
    aggregate = bool(seeds) and any(len(g) > 1 for gs in by_proto for g in gs)
    n_seed_groups = sum(len(gs) for gs in by_proto) if aggregate else 0
    if aggregate:
        t = ("Runs that differ only in seeds (" + ", ".join(seeds) + ") are one row: mean ± sample sd (— for a "
             "single run) over the n runs; the individual runs follow each table.")
        h.append(f"<p class=note>{esc(t)}</p>")
        md += [_md(t), ""]
    for gi, (proto, rs) in enumerate(groups):
        ptxt = _protocol_text(proto)
        label = f"Protocol {gi + 1}: " if len(groups) > 1 else "Protocol: "
        h.append(f"<p class=note><b>{esc(label)}</b>{esc(ptxt)}</p>")
        md += [f"**{_md(label)}**{_md(ptxt)}", ""]
        with_best = any(best_metrics(r) for r in rs)
        if aggregate:
            emit(*group_rows(by_proto[gi], [k for k in diff if k not in seeds], seeds, paper, with_best))
            h.append("<p class=note>Individual runs:</p>")
            md += ["Individual runs:", ""]
            emit(*table_rows([r for g in by_proto[gi] for r in g], diff, paper, with_best))
        else:
            emit(*table_rows(rs, diff, paper, with_best))
        for n in best_notes(rs) if with_best else []:
            h.append(f"<p class=note>{esc(n)}</p>")
            md += [_md(n), ""]
    for n in notes:
        h.append(f"<p class=note>{esc(n)}</p>")
        md += [f"- {_md(n)}"]
    if notes:
        md.append("")

    plots = curve_plots(records)
    h.append("<h2>Training curves</h2>")
    if plots:
        h.append("<p class=note>dvclive series of every run overlaid (legend number = run number).</p>")
        h += [f'<img alt="{esc("train/" + n)}" src="{png_data_uri(img)}">' for n, img in plots]
        md += ["## Training curves", "", "Overlaid in index.html: " + ", ".join(_md(f"train/{n}") for n, _ in plots), ""]
    else:
        h.append("<p class=note>No dvclive training logs found in these runs.</p>")
    strips = image_strips(records, keys, cache)
    h.append("<h2>Same validation label maps, every run</h2>")
    if strips:
        h.append("<p class=note>label | real | the image each run synthesised for that label map "
                 "(<code>eval/</code> of <code>resail evaluate</code>).</p>")
        h += [f'<p class=note>{esc(k)}</p><img alt="{esc(k)}" src="{png_data_uri(img)}">' for k, img in strips]
        md += ["## Same validation label maps, every run", "", "In index.html: " + ", ".join(_md(k) for k, _ in strips), ""]
    else:
        msg = "No validation image synthesised by every run (run `resail evaluate` on each)."
        h.append(f"<p class=note>{esc(msg)}</p>")
        md += [msg, ""]
    h.append("</body></html>")

    out_dir.mkdir(parents=True, exist_ok=True)
    html_p, md_p = out_dir / INDEX_HTML, out_dir / COMPARE_MD
    with atomic_outputs(html_p, md_p) as (th, tm):
        Path(th).write_text("\n".join(h), encoding="utf-8")
        Path(tm).write_text("\n".join(md) + "\n", encoding="utf-8")
    return CompareResult(out_dir, html_p, md_p, len(records), diff, None if paper is None else paper.key,
                         len(groups), len(strips), n_seed_groups)
