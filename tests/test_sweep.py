"""``lseg sweep`` / ``lseg report`` end to end, on a 1-level U-Net at 32x32 (two steps a trial):
the grid and its report, ``--parallel 2``, killing and resuming, a failing trial, W&B offline
(local backend and the agent's trial command), the HTML page; and the parts in isolation (sweep
files, value formatting, random / Bayesian search, the W&B sweep config)."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_seg.sweeps import search
from lightning_seg.sweeps.spec import SweepError, format_value, load_sweep, short_names

REPO = Path(__file__).resolve().parents[1]
UNET = "model.init_args.model.init_args"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory) -> Path:
    """A 1-level U-Net on a 4-image shapes world at 32x32 (world written once, up front, so
    parallel trials only read it)."""
    from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule

    folder = tmp_path_factory.mktemp("tiny")
    data = {"task": "semantic", "root": str(folder / "world"), "num_train": 4, "num_val": 2,
            "height": 32, "width": 32, "batch_size": 2, "num_workers": 0,
            "persistent_workers": False, "pin_memory": False}
    SyntheticShapesDataModule(**data).prepare_data()
    cfg = {
        "model": {"class_path": "lightning_seg.tasks.SemanticSegmentationTask",
                  "init_args": {"model": {"class_path": "lightning_seg.models.detectors.UNet",
                                          "init_args": {"base_channels": 4, "depth": 1}},
                                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}}},
        "data": {"class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule", "init_args": data},
        "trainer": {"accelerator": "cpu", "max_steps": 2, "max_epochs": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "log_every_n_steps": 1},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_sweep(folder: Path, experiment: Path, parameters: dict, method: str = "grid", **extra) -> Path:
    path = folder / f"sweep_{len(list(folder.glob('sweep_*.yaml')))}.yaml"
    body = {"experiment": str(experiment), "method": method,
            "metric": {"name": "val/score", "goal": "maximize"}, "parameters": parameters, **extra}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def env(**more) -> dict:
    out = dict(os.environ)
    out.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                "WANDB_MODE": "disabled"})
    out.update(more)
    return out


def command(*args: str, via_cli: bool = False) -> list[str]:
    """``lseg sweep|report ...``; by default through ``python -m lightning_seg.commands.<cmd>``,
    which skips loading the training CLI (the trials still run ``lseg fit``)."""
    if via_cli:
        return [sys.executable, "-m", "lightning_seg.cli", *args]
    return [sys.executable, "-m", f"lightning_seg.commands.{args[0]}", *args[1:]]


def lseg(*args: str, timeout: float = 300, via_cli: bool = False, **env_vars) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, via_cli=via_cli), cwd=REPO, env=env(**env_vars),
                          capture_output=True, text=True, timeout=timeout, check=False)


def state_of(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


class TableParser(HTMLParser):
    """Rows of the ``<table id="report">`` and the ``<img>`` sources of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._in_table = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "report":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


# ------------------------------------------------------------------ the grid, in parallel, and its report
@pytest.fixture(scope="module")
def grid_sweep(tiny_experiment, tmp_path_factory) -> Path:
    """A 2x2 grid run with --parallel 2 (what several tests read)."""
    folder = tmp_path_factory.mktemp("grid")
    sweep = write_sweep(folder, tiny_experiment, {
        f"{UNET}.base_channels": {"values": [4, 8]},
        "model.init_args.optimizer.init_args.lr": {"values": [0.001, 0.01]},
    })
    out = lseg("sweep", str(sweep), "--dir", str(folder / "sweep"), "--parallel", "2", "--devices", "cpu",
               via_cli=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return folder / "sweep"


def test_grid_sweep_runs_every_trial_in_parallel(grid_sweep):
    state = state_of(grid_sweep)
    trials = state["trials"]
    assert [t["status"] for t in trials] == ["finished"] * 4
    combos = [(t["params"][f"{UNET}.base_channels"], t["params"]["model.init_args.optimizer.init_args.lr"])
              for t in trials]
    assert combos == [(4, 0.001), (4, 0.01), (8, 0.001), (8, 0.01)]  # first parameter slowest
    for t in trials:
        assert t["attempts"] == 1 and t["returncode"] == 0 and t["error"] is None
        assert f"--{UNET}.base_channels={t['params'][f'{UNET}.base_channels']}" in t["command"]
        config = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        task = config["model"]["init_args"]
        assert task["model"]["init_args"]["base_channels"] == t["params"][f"{UNET}.base_channels"]
        assert task["optimizer"]["init_args"]["lr"] == t["params"]["model.init_args.optimizer.init_args.lr"]
        result = t["result"]
        assert 0.0 <= result["best"] <= 1.0 and result["final"] <= result["best"] + 1e-12
        assert result["cost/params"] > 0 and result["cost/flops"] > 0 and result["cost/latency_ms"] > 0
    # two slots: the first two trials ran at the same time
    a, b = trials[0], trials[1]
    assert a["started"] < b["ended"] and b["started"] < a["ended"]
    # a wider U-Net has more parameters and FLOPs
    assert trials[2]["result"]["cost/params"] > trials[0]["result"]["cost/params"]
    assert trials[2]["result"]["cost/flops"] > trials[0]["result"]["cost/flops"]


def test_report_of_the_grid(grid_sweep):
    out = lseg("report", str(grid_sweep))
    assert out.returncode == 0, out.stderr
    state = state_of(grid_sweep)
    report = grid_sweep / "report"
    rows = list(csv.DictReader(io.StringIO((report / "report.csv").read_text())))
    assert len(rows) == 4
    for row, trial in zip(rows, state["trials"]):
        assert row["run"] == trial["id"] and row["status"] == "finished"
        assert int(row["base_channels"]) == trial["params"][f"{UNET}.base_channels"]
        assert float(row["lr"]) == trial["params"]["model.init_args.optimizer.init_args.lr"]
        assert float(row["val/score best"]) == pytest.approx(trial["result"]["best"])
        assert float(row["params (M)"]) == pytest.approx(trial["result"]["cost/params"])
    md = (report / "report.md").read_text()
    assert md.count("\n| t0") == 4 and "| base_channels | lr |" in md
    best = max(state["trials"], key=lambda t: t["result"]["best"])
    assert f"**{best['result']['best']:.4f}**" in md
    for width in (4, 8):  # the mean over the two learning rates of each width
        scores = [t["result"]["best"] for t in state["trials"] if t["params"][f"{UNET}.base_channels"] == width]
        assert f"| {width} | {sum(scores) / 2:.4f} |" in md
    # the HTML page renders: its table holds the same rows, its plots are real PNGs
    page = TableParser()
    page.feed((report / "report.html").read_text())
    header, *body = page.rows
    assert header[:4] == ["run", "status", "base_channels", "lr"]
    assert [r[0] for r in body] == [t["id"] for t in state["trials"]]
    assert [r[2] for r in body] == [str(t["params"][f"{UNET}.base_channels"]) for t in state["trials"]]
    col = header.index("val/score best")
    assert [float(r[col]) for r in body] == pytest.approx([t["result"]["best"] for t in state["trials"]], abs=1e-4)
    names = {p.name for p in report.glob("*.png")}
    if importlib.util.find_spec("matplotlib") is None:  # the optional 'report' extra: tables only
        assert not names and not page.images and "pip install" in out.stdout
        return
    assert {"val_score_vs_base_channels.png", "val_score_vs_lr.png", "val_score_curves.png",
            "val_score_vs_cost.png"} <= names
    assert len(page.images) == len(names)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200


def test_report_of_run_folders_finds_the_differing_keys(grid_sweep, tmp_path):
    from lightning_seg.report import make_report

    runs = sorted((grid_sweep / "runs").iterdir())
    report = make_report([str(p) for p in runs[:2]], out=tmp_path, plots=False)
    assert report.params == ["model.init_args.optimizer.init_args.lr"]  # t000 vs t001
    assert [r.params["model.init_args.optimizer.init_args.lr"] for r in report.records] == [0.001, 0.01]
    # a folder holding run folders is read too
    assert len(make_report([str(grid_sweep / "runs")], out=tmp_path, plots=False).records) == 4


def test_two_sweeps_are_reported_together(grid_sweep, tmp_path):
    """A sweep and its extra seeds (another sweep file, which sweeps one more key and fixes
    another): one table, trials named by sweep, a key the other sweep fixed read from its runs."""
    import shutil

    from lightning_seg.report import ReportError, make_report

    width = f"{UNET}.base_channels"
    other = tmp_path / "more"
    shutil.copytree(grid_sweep, other, ignore=shutil.ignore_patterns("report"))
    state = state_of(other)
    state["name"] = "more"
    state["trials"] = [t for t in state["trials"] if t["params"][width] == 8]
    for t in state["trials"]:
        del t["params"][width]  # fixed (at 8) in this sweep: only in its runs' configs
    (other / "state.json").write_text(json.dumps(state))

    report = make_report([str(grid_sweep), str(other)], out=tmp_path / "out", plots=False)
    first = state_of(grid_sweep)["name"]
    assert [r.name for r in report.records] == [f"{first}/t00{i}" for i in range(4)] + [
        f"more/{t['id']}" for t in state["trials"]]
    assert report.params == [width, "model.init_args.optimizer.init_args.lr"]
    assert [r.params[width] for r in report.records[4:]] == [8, 8]
    assert f"Sweep {first} + more" in (tmp_path / "out" / "report.html").read_text()

    # a sweep over experiments beside one that fixes its experiment at the top of its file: the
    # fixed one's rows name its experiment too
    swept = tmp_path / "experiments"
    shutil.copytree(other, swept)
    state_x = state_of(swept)
    state_x["name"], state_x["experiment"] = "experiments", None
    for t, name in zip(state_x["trials"], ("a.yaml", "b.yaml")):
        t["params"]["experiment"] = f"experiments/{name}"
    (swept / "state.json").write_text(json.dumps(state_x))
    report = make_report([str(grid_sweep), str(swept)], out=tmp_path / "out3", plots=False)
    assert "experiment" in report.params
    assert [r.params["experiment"] for r in report.records] == ["tiny"] * 4 + ["a", "b"]

    state["metric"] = {"name": "val/loss", "goal": "minimize"}
    (other / "state.json").write_text(json.dumps(state))
    with pytest.raises(ReportError, match="report them apart"):
        make_report([str(grid_sweep), str(other)], out=tmp_path / "out2", plots=False)


def test_a_run_without_the_headline_metric_is_named(tmp_path, capsys):
    from lightning_seg.report import make_report

    run = tmp_path / "run_a"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,9,1.5\n")
    report = make_report([str(run)], out=tmp_path / "out", plots=False)
    assert len(report.records) == 1  # the row is kept...
    assert "1 finished run(s) logged no val/score: run_a" in capsys.readouterr().err  # ...and named
    assert "runs without val/score" in (tmp_path / "out" / "report.html").read_text()


# ------------------------------------------------------------------ kill and resume, failures
def test_killed_sweep_resumes_without_rerunning_finished_trials(tiny_experiment, tmp_path):
    sweep = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_channels": {"values": [4, 8]}})
    folder = tmp_path / "sweep"
    proc = subprocess.Popen(command("sweep", str(sweep), "--dir", str(folder)),
                            cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    second = None
    while time.time() < deadline:
        if (folder / "state.json").is_file():
            trials = state_of(folder)["trials"]
            if trials[0]["status"] == "finished" and trials[1]["status"] == "running":
                second = trials[1]
                break
        time.sleep(0.2)
    assert second is not None, "the first trial did not finish in time"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=30)
    first = state_of(folder)["trials"][0]
    deadline = time.time() + 30  # the running trial dies with the sweep (parent-death signal)
    while time.time() < deadline and _alive(second["pid"]):
        time.sleep(0.2)
    assert not _alive(second["pid"]), "the interrupted trial outlived the sweep"

    out = lseg("sweep", str(sweep), "--dir", str(folder))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed: 1 finished" in out.stdout
    trials = state_of(folder)["trials"]
    assert [t["status"] for t in trials] == ["finished"] * 2
    assert trials[0] == first  # not run again: same record, same times
    assert trials[1]["attempts"] == 2
    assert "t000 started" not in out.stdout and "t001 started" in out.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_failing_trial_is_recorded_and_the_others_complete(tiny_experiment, tmp_path):
    sweep = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.padding": {"values": ["bogus", "same"]}})
    out = lseg("sweep", str(sweep), "--dir", str(tmp_path / "sweep"))
    assert out.returncode == 1, out.stdout + out.stderr  # some trial failed
    bad, good = state_of(tmp_path / "sweep")["trials"]
    assert bad["status"] == "failed" and bad["returncode"] != 0
    assert "bogus" in bad["error"] and "padding" in bad["error"]
    assert Path(bad["log"]).is_file()
    assert good["status"] == "finished" and good["result"]["best"] >= 0
    assert "t000 FAILED" in out.stdout
    report = lseg("report", str(tmp_path / "sweep"))
    assert report.returncode == 0
    md = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "| t000 | failed | bogus |" in md and "t000: " in md  # the error under the table
    # a resume leaves the failure alone; --retry-failed runs it again
    again = lseg("sweep", str(sweep), "--dir", str(tmp_path / "sweep"))
    assert "t000 started" not in again.stdout and state_of(tmp_path / "sweep")["trials"][0]["attempts"] == 1
    again = lseg("sweep", str(sweep), "--dir", str(tmp_path / "sweep"), "--retry-failed")
    trials = state_of(tmp_path / "sweep")["trials"]
    assert "t000 started" in again.stdout and "t001 started" not in again.stdout
    assert trials[0]["attempts"] == 2 and trials[0]["status"] == "failed" and trials[1]["attempts"] == 1


def test_a_changed_sweep_file_does_not_reuse_the_folder(tiny_experiment, tmp_path, monkeypatch):
    from lightning_seg.sweeps.runner import LocalSweep, RunOptions
    from lightning_seg.sweeps.state import SweepState, save_state

    monkeypatch.chdir(REPO)
    sweep = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_channels": {"values": [4, 8]}})
    spec = load_sweep(sweep)
    save_state(tmp_path / "s", SweepState(str(sweep), "x", None, "grid", {}, "0123456789abcdef", 0, str(REPO)))
    with pytest.raises(SweepError, match="holds another sweep"):
        LocalSweep(spec, RunOptions(folder=tmp_path / "s")).run()
    save_state(tmp_path / "t", SweepState(str(sweep), "x", None, "grid", {}, spec.fingerprint(), 0, str(REPO),
                                          extra_args=["--trainer.max_epochs", "2"]))
    with pytest.raises(SweepError, match="resume with the same"):
        LocalSweep(spec, RunOptions(folder=tmp_path / "t", extra_args=["--trainer.max_epochs", "3"])).run()


# ------------------------------------------------------------------ W&B, offline
def test_wandb_offline_trials_carry_group_tags_and_swept_config(tiny_experiment, tmp_path):
    from wandb_records import offline_runs, run_facts

    sweep = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_channels": {"values": [4, 8]}}, name="widths")
    folder = tmp_path / "sweep"
    out = lseg("sweep", str(sweep), "--dir", str(folder), "--wandb", "--project", "lseg_test",
               "--parallel", "2", "--devices", "cpu", "--wandb-artifacts",
               WANDB_MODE="offline", WANDB_SILENT="true", WANDB_API_KEY="")
    assert out.returncode == 0, out.stdout + out.stderr
    files = offline_runs(folder / "wandb")
    assert len(files) == 2
    widths = set()
    for f in files:
        facts = run_facts(f)
        assert facts["group"] == "widths" and facts["job_type"] == "sweep"
        assert facts["tags"] == ["widths", "tiny"]
        assert facts["name"] in ("widths-t000", "widths-t001")
        assert facts["config"]["sweep"] == "widths"
        width = facts["config"][f"{UNET}.base_channels"]  # the swept value as a config column
        assert facts["config"]["model"]["init_args"]["model"]["init_args"]["base_channels"] == width
        widths.add(width)
        assert {"val/score", "cost/params", "cost/flops", "cost/latency_ms", "val/per_class"} <= facts["summary_keys"]
        assert any(a.startswith("config-") for a in facts["artifacts"])
        assert any(a.startswith("model-") for a in facts["artifacts"])
    assert widths == {4, 8}


def test_wandb_agent_trial_runs_the_same_lseg_fit(tiny_experiment, tmp_path):
    """What ``wandb agent`` runs: ``lseg sweep FILE --wandb-trial '${args_json}'``."""
    from wandb_records import offline_runs, run_facts

    from lightning_seg.sweeps.runner import WandbOptions
    from lightning_seg.sweeps.wandb_backend import create_wandb_sweep, wandb_sweep_config

    sweep = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_channels": {"values": [4, 8]},
                                                    "trainer.max_steps": {"value": 1}}, name="agent")
    spec = load_sweep(sweep, root=REPO)
    config = wandb_sweep_config(spec, WandbOptions(project="p"), ["--trainer.log_every_n_steps", "1"])
    assert "experiment" not in config and config["parameters"] == spec.raw["parameters"]
    assert config["command"][:6] == ["${env}", "lseg", "sweep", str(sweep), "--wandb-trial", "${args_json}"]
    assert config["command"][-3:] == ["--", "--trainer.log_every_n_steps", "1"]
    created = {}
    path, agent = create_wandb_sweep(spec, WandbOptions(project="p", entity="team"), [],
                                     sweep_fn=lambda cfg, project, entity: created.update(cfg=cfg) or "abc123")
    assert path == "team/p/abc123" and agent == "wandb agent team/p/abc123" and created["cfg"]["method"] == "grid"

    args_json = json.dumps({f"{UNET}.base_channels": 8, "trainer.max_steps": 1})  # as W&B fills ${args_json}
    out = lseg("sweep", str(sweep), "--wandb-trial", args_json, "--project", "p", "--dir", str(tmp_path / "agent"),
               WANDB_MODE="offline", WANDB_SILENT="true", WANDB_RUN_ID="run8abc", WANDB_API_KEY="")
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((tmp_path / "agent" / "runs" / "run8abc" / "config.yaml").read_text())
    assert config["model"]["init_args"]["model"]["init_args"]["base_channels"] == 8
    (facts,) = [run_facts(f) for f in offline_runs(tmp_path / "agent" / "wandb")]
    assert facts["group"] == "agent" and facts["job_type"] == "sweep"


# ------------------------------------------------------------------ sweep files
SWEEP_FILES = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def test_the_sweep_files_are_there():
    assert len(SWEEP_FILES) >= 7


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_every_sweep_file_parses_into_its_experiment(path: Path, monkeypatch):
    """Every parameter path of every file in experiments/sweeps/ exists in its experiment's
    parser and every value type-checks (parsed as the trial passes it, nothing built)."""
    from lightning_seg.sweeps.check import check_sweep

    monkeypatch.chdir(REPO)
    spec = load_sweep(path, root=REPO)
    assert spec.swept, f"{path.name} sweeps nothing"
    problems = check_sweep(spec)
    assert not problems, "\n".join(f"{path.name}: {p}" for p in problems)


def test_the_check_catches_bad_paths_and_values(tiny_experiment, tmp_path):
    from lightning_seg.sweeps.check import check_sweep

    sweep = write_sweep(tmp_path, tiny_experiment, {
        f"{UNET}.base_chanels": {"values": [4]},
        f"{UNET}.depth": {"values": ["deep"]},
        "model.init_args.optimizer.init_args.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    }, method="random")
    problems = check_sweep(load_sweep(sweep, root=REPO))
    assert len(problems) == 2, problems
    assert "base_chanels" in problems[0] and "not accepted" in problems[0]
    assert "depth=deep" in problems[1] and "int" in problems[1]


@pytest.mark.parametrize("flag", ["--parallel", "--count"])
def test_parallel_and_count_must_be_positive(flag, capsys):
    from lightning_seg.commands.sweep import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["s.yaml", flag, "0"])
    assert f"argument {flag}: must be 1 or more, got 0" in capsys.readouterr().err


def test_sweep_file_errors_name_the_fix(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("{}")

    def bad(body: dict, match: str):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(body))
        with pytest.raises(SweepError, match=match):
            load_sweep(path, root=tmp_path)

    bad({"experiment": "e.yaml", "parameters": {"a": {"min": 0.1, "max": 1.0}}}, "a grid takes only")
    bad({"experiment": "e.yaml", "method": "hyperband", "parameters": {"a": {"value": 1}}}, "method must be")
    bad({"parameters": {"a": {"value": 1}}}, "no 'experiment'")
    bad({"experiment": "missing.yaml", "parameters": {"a": {"value": 1}}}, "not found")
    bad({"experiment": "e.yaml", "parameters": {"opt": {"parameters": {"lr": {"value": 1}}}}}, "dotted")
    bad({"experiment": "e.yaml", "method": "random", "parameters": {"a": {"distribution": "beta"}}},
        "not supported")
    bad({"experiment": "e.yaml", "parameters": {"a": {"values": [1, 2], "probabilities": [1]}}}, "probabilities")
    bad({"experiment": "e.yaml", "parameters": {"a": {"value": 1}}, "metric": {"name": "x", "goal": "up"}}, "goal")


def test_distribution_kinds_are_inferred_as_wandb_does(tmp_path):
    (tmp_path / "e.yaml").write_text("{}")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"experiment": "e.yaml", "method": "random", "run_cap": 5, "parameters": {
        "a": {"values": [1, 2]}, "b": {"value": 3}, "c": {"min": 1, "max": 4}, "d": {"min": 0.1, "max": 0.5}}}))
    spec = load_sweep(path, root=tmp_path)
    assert [p.distribution for p in spec.parameters] == ["categorical", "constant", "int_uniform", "uniform"]
    assert [p.name for p in spec.swept] == ["a", "c", "d"] and spec.run_cap == 5


@pytest.mark.parametrize("value", ["8s", "16", "true", "", "a b", 3, 0.5, 1e-5, -2.5e10, True, None,
                                   [6, 12, 18], [], {"class_path": "x.Y", "init_args": {"k": 1e-4}}, ["c2", "c5"]])
def test_values_reach_lseg_unchanged(value):
    text = format_value(value)
    assert yaml.safe_load(text) == value and type(yaml.safe_load(text)) is type(value)


def test_null_goes_through_an_inline_config():
    """jsonargparse rejects ``--a.b=null`` for nested ``Sequence | None`` arguments; a config takes it."""
    from lightning_seg.sweeps.spec import override_args

    assert override_args({"x.init_args.rates": None, "trainer.max_epochs": 2, "experiment": "e.yaml"}) == [
        "--config", '{"x":{"init_args":{"rates":null}}}', "--trainer.max_epochs=2"]


def test_short_names_stay_unique():
    assert short_names(["model.init_args.model.init_args.backbone.init_args.depth",
                        "model.init_args.model.init_args.depth", "trainer.max_epochs"]) == {
        "model.init_args.model.init_args.backbone.init_args.depth": "backbone.depth",
        "model.init_args.model.init_args.depth": "model.depth", "trainer.max_epochs": "max_epochs"}


# ------------------------------------------------------------------ search
def _spec(tmp_path, parameters, method="random") -> object:
    (tmp_path / "e.yaml").write_text("{}")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"experiment": "e.yaml", "method": method, "run_cap": 10,
                                    "metric": {"name": "val/score", "goal": "maximize"},
                                    "parameters": parameters}))
    return load_sweep(path, root=tmp_path)


def test_random_draws_follow_the_distributions_and_repeat(tmp_path):
    spec = _spec(tmp_path, {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                            "k": {"distribution": "int_uniform", "min": 2, "max": 5},
                            "q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
                            "c": {"values": ["a", "b"], "probabilities": [0.9, 0.1]}})
    trials = search.random_trials(spec, 400, seed=3)
    assert trials[:5] == search.random_trials(spec, 5, seed=3)          # deterministic per index
    assert trials[5:10] == search.random_trials(spec, 10, seed=3, start=5)
    lrs = np.log10([t["lr"] for t in trials])
    assert lrs.min() >= -4 and lrs.max() <= -1 and abs(np.median(lrs) + 2.5) < 0.25   # log-uniform
    assert {t["k"] for t in trials} == {2, 3, 4, 5}
    assert {t["q"] for t in trials} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert 0.85 < np.mean([t["c"] == "a" for t in trials]) < 0.95


def test_bayes_finds_the_optimum_faster_than_chance(tmp_path):
    spec = _spec(tmp_path, {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0},
                            "act": {"values": ["relu", "gelu"]}}, method="bayes")

    def objective(p):  # best at x = 0.3 with gelu
        return -((p["x"] - 0.3) ** 2) - (0.2 if p["act"] == "relu" else 0.0)

    # random search finds |x - 0.3| < 0.05 with gelu in 14 draws about half the time (1 - 0.95^14
    # ~ 0.51 for x alone); the GP must find it for each of 4 seeds (chance ~ 0.05)
    for seed in range(4):
        observed = []
        for i in range(14):
            params = search.bayes_next(spec, observed, [], seed=seed, index=i)
            observed.append((params, objective(params)))
        best = max(observed, key=lambda o: o[1])[0]
        assert best["act"] == "gelu" and abs(best["x"] - 0.3) < 0.05, (seed, observed)
    # a pending point is not proposed again right away
    nxt = search.bayes_next(spec, observed, [best], seed=0, index=14)
    assert nxt != best


def test_gp_interpolates_what_it_saw():
    x = np.array([[0.1], [0.4], [0.9]])
    y = np.array([1.0, 3.0, 2.0])
    gp = search.GaussianProcess().fit(x, y)
    mu, sd = gp.predict(x)
    assert np.allclose(mu * gp.std + gp.mean, y, atol=0.05) and (sd < 0.2).all()
    assert search.expected_improvement(np.array([0.0]), np.array([1.0]), 0.0, xi=0.0)[0] == pytest.approx(
        1 / math.sqrt(2 * math.pi))


# ------------------------------------------------------------------ the report from the W&B API, dry run
class _FakeRun:
    def __init__(self, name, variant, scores, state="finished"):
        self.name, self.state = name, state
        self.config = {"model.init_args.model.init_args.variant": variant,
                       "model": {"init_args": {"model": {"init_args": {"variant": variant}}}}}
        self._rows = [{"val/score": s, "epoch": i, "trainer/global_step": 10 * i} for i, s in enumerate(scores)]
        self.summary = {"val/score": scores[-1], "val/pixel_acc": 0.9, "cost/params": 1e6, "cost/flops": 2e9,
                        "cost/latency_ms": 5.0, "cost/train_step_ms": 50.0, "_runtime": 3}

    def scan_history(self, keys):
        return [{k: r[k] for k in keys if k in r} for r in self._rows]


class _FakeApi:
    def __init__(self):
        self.runs_ = [_FakeRun("a", "32s", [0.2, 0.4]), _FakeRun("b", "8s", [0.3, 0.6, 0.5]),
                      _FakeRun("c", "16s", [0.1], state="crashed")]

    def sweep(self, path):
        assert path == "team/proj/abc"
        return type("Sweep", (), {"runs": self.runs_, "config": {"parameters": {
            "model.init_args.model.init_args.variant": {"values": ["32s", "16s", "8s"]}}}})()


def test_report_reads_a_wandb_sweep(tmp_path):
    from lightning_seg.report import make_report

    report = make_report(wandb_path="team/proj/abc", out=tmp_path, wandb_api=_FakeApi(), plots=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert [(r["run"], r["status"], r["variant"]) for r in rows] == [
        ("a", "finished", "32s"), ("b", "finished", "8s"), ("c", "failed", "16s")]
    assert [float(r["val/score best"]) for r in rows] == [0.4, 0.6, 0.1]
    assert [float(r["val/score final"]) for r in rows] == [0.4, 0.5, 0.1]
    assert rows[1]["best epoch"] == "1" and float(rows[1]["GFLOPs/img"]) == 2e9
    assert report.table.best_row == 1


def test_dry_run_checks_and_lists_the_trials(tiny_experiment, tmp_path, capsys, monkeypatch):
    from lightning_seg.commands import sweep

    monkeypatch.chdir(REPO)
    path = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_channels": {"values": [4, 8]},
                                                   "trainer.max_steps": {"value": 1}})
    assert sweep.main([str(path), "--dry-run", "--dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "every value parses" in out
    assert f"t000: lseg fit --config {tiny_experiment}" in out and f"--{UNET}.base_channels=8" in out
    assert not (tmp_path / "d").exists()  # nothing ran
    bad = write_sweep(tmp_path, tiny_experiment, {f"{UNET}.base_chanels": {"values": [4]}})
    with pytest.raises(SweepError, match="do not parse"):
        sweep.main([str(bad), "--dry-run"])


def test_wandb_backend_needs_the_server(tiny_experiment, tmp_path, monkeypatch):
    from lightning_seg.sweeps.runner import WandbOptions
    from lightning_seg.sweeps.wandb_backend import create_wandb_sweep

    spec = load_sweep(write_sweep(tmp_path, tiny_experiment, {f"{UNET}.depth": {"values": [1, 2]}}), root=REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SweepError, match="local backend"):
        create_wandb_sweep(spec, WandbOptions(), [])

    def refused(config, project, entity):
        raise PermissionError("api_key not configured")

    with pytest.raises(SweepError, match="wandb login"):
        create_wandb_sweep(spec, WandbOptions(), [], sweep_fn=refused)
