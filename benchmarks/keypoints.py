"""Keypoint localisation on the synthetic keypoint world through ``lseg sweep`` / ``lseg report``:
heatmaps vs regression, intermediate supervision, decoding (issue #15).

The comparisons are the repository's sweep files, run with one budget and one seed for every
trial (the budget is written into a copy of each sweep file under ``--out``, so ``lseg report``
shows it in its table):

* ``heatmap_minus_regression``: ``experiments/sweeps/keypoints_heatmap_vs_regression.yaml``,
  final ``val/pck`` (PCK@0.2 of the box, flip test on) of SimpleBaseline-R18 (heatmaps) minus the
  same ResNet-18 regressing coordinates; the seeds' claim is > 0;
* ``intermediate_supervision_gain``: ``experiments/sweeps/hourglass_intermediate_supervision.yaml``
  at ``--stacks`` (default 2 stacks only; ``--stacks 1 2 4`` is the paper's whole ablation), final
  ``val/pck`` with a loss on every stack minus on the last one only;
* ``decoding``: the best checkpoints (by ``val/pck``) of the 2-stack hourglass (intermediate
  supervision on) and of SimpleBaseline, each decoded by arg-max, the quarter shift, DARK and
  soft-argmax without retraining (``experiments/sweeps/keypoints_decoding.yaml`` is the
  retraining variant), at PCK@0.05 / 0.1 / 0.2 of the box and as the mean error in box sizes,
  where sub-pixel decoding shows. Every trial's best checkpoint is also scored this way
  (``trials`` in the JSON; its ``pck@0.2`` is the trial's ``val/pck best``).

Usage (the default budget fits about 45 minutes on 2 CPU cores)::

    python benchmarks/keypoints.py                      # 4 trials of 500 steps, batch 32
    python benchmarks/keypoints.py --steps 10 --num-train 16 --num-val 4 --batch-size 8  # smoke
    python benchmarks/keypoints.py --device cuda --steps 5000 --stacks 1 2 4   # where a GPU is lent

A stopped run resumes (finished trials are kept: ``lseg sweep``'s state in the sweep folders).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DECODERS = ("argmax", "quarter", "dark", "soft_argmax")
ALPHAS = (0.05, 0.1, 0.2)
METRIC = "val/pck"
SUPERVISION = "model.init_args.model.init_args.head.init_args.intermediate_supervision"
STACKS = "model.init_args.model.init_args.backbone.init_args.num_stacks"
HEATMAP_EXPERIMENT = "experiments/simplebaseline_r18_shapes_kp.yaml"


def budget(args: argparse.Namespace) -> dict[str, dict]:
    """The sweep parameters every trial shares: steps, seed, the synthetic world, batch, device;
    validation every ``interval`` steps (a divisor of the steps, so the last step is validated)."""
    world = Path(args.cache) / f"kp_world_{args.num_train}_{args.num_val}_seed{args.seed}"
    interval = next(d for d in range(max(1, args.steps // args.evals), args.steps + 1) if args.steps % d == 0)
    fixed = {
        "trainer.max_steps": args.steps,
        "trainer.max_epochs": -1,
        "trainer.check_val_every_n_epoch": None,
        "trainer.val_check_interval": interval,
        "trainer.accelerator": args.device,
        "trainer.devices": 1,
        "seed_everything": args.seed,
        "data.init_args.root": str(world),
        "data.init_args.num_train": args.num_train,
        "data.init_args.num_val": args.num_val,
        "data.init_args.seed": args.seed,
        "data.init_args.augment_seed": args.seed,
        "data.init_args.batch_size": args.batch_size,
        "data.init_args.num_workers": args.workers,
    }
    return {k: {"value": v} for k, v in fixed.items()}


def write_sweep(name: str, source: str, args: argparse.Namespace, changes: dict[str, dict]) -> Path:
    """A copy of the sweep file ``source`` with the budget and ``changes`` (under ``--out``)."""
    raw = yaml.safe_load((REPO / source).read_text())
    raw["parameters"].update(changes)
    raw["parameters"].update(budget(args))
    raw["metric"] = {"name": METRIC, "goal": "maximize"}
    raw["description"] = f"benchmarks/keypoints.py: {source} with the benchmark's budget"
    path = Path(args.out) / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def lseg(*argv: str, threads: int) -> None:
    """``lseg <command> ...`` in the repository root; raises when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "lightning_seg.cli", *argv]
    print("$ lseg " + " ".join(argv), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def sweep_and_report(name: str, sweep_file: Path, args: argparse.Namespace) -> list[dict]:
    """Run the sweep (resuming one stopped earlier), tabulate it with ``lseg report``, and return
    its trials as recorded in ``state.json``."""
    folder = Path(args.out) / name
    devices = ["--devices", "cpu"] if args.device == "cpu" else []
    lseg("sweep", str(sweep_file), "--dir", str(folder), *devices, threads=args.threads)
    plots = ["--no-plots"] if args.no_plots else ["--title", f"keypoints benchmark: {name}"]
    lseg("report", str(folder), "--metric", METRIC, *plots, threads=args.threads)
    trials = json.loads((folder / "state.json").read_text())["trials"]
    failed = [t["id"] for t in trials if t["status"] != "finished" or not t.get("result")]
    if failed:
        raise SystemExit(f"{folder}: trials {failed} did not finish (see {folder / 'logs'})")
    return trials


def final(trial: dict) -> float:
    return float(trial["result"]["final"])


def datamodule(args: argparse.Namespace):
    """The validation data every trial used (the synthetic world of the budget)."""
    from lightning_seg.cli import build_experiment

    overrides = []
    for key, spec in budget(args).items():
        if key.startswith("data."):
            overrides += [f"--{key}", str(spec["value"])]
    _, data = build_experiment(REPO / HEATMAP_EXPERIMENT, *overrides)
    data.setup("validate")
    return data


def load(trial: dict):
    """The trial's best checkpoint (by ``val/pck``; ``last.ckpt`` is only rewritten when the
    best one is, so it is no later) and its step."""
    import torch

    from lightning_seg.tasks import KeypointTask

    (path,) = sorted((Path(trial["run_dir"]) / "checkpoints").glob("best-*.ckpt"))
    step = torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    return KeypointTask.load_from_checkpoint(path, map_location="cpu"), step


def evaluate(task, data, device: str) -> dict[str, float]:
    """PCK at ``ALPHAS`` of the box's larger side and the mean error / box size, over the
    labelled keypoints of the validation crops, in the frame of the images on disk (flip test as
    the network is configured)."""
    import torch

    from lightning_seg.metrics.keypoints import PCK, BoxMaxSideNorm, normalized_distances
    from lightning_seg.models.postprocess.keypoints import targets_to_original_frame

    pcks = {a: PCK(task.num_keypoints, a, BoxMaxSideNorm()) for a in ALPHAS}
    errors: list[float] = []
    model = task.model.to(device).eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            preds = model(batch.to(device))
            for pred, tgt, meta in zip(preds, batch.keypoints, batch.meta):
                t = targets_to_original_frame(tgt, meta)
                p = pred.keypoints.cpu()
                for metric in pcks.values():
                    metric.update(p, t.keypoints, boxes=t.boxes)
                dist, valid = normalized_distances(p, t.keypoints, BoxMaxSideNorm()(t.keypoints, t.boxes))
                errors.extend(dist[valid].tolist())
    out = {f"pck@{a}": round(float(m.compute()["pck"]), 4) for a, m in pcks.items()}
    out["mean_error"] = round(sum(errors) / max(1, len(errors)), 5)
    out["num_keypoints"] = len(errors)
    return out


def decode_all(task, data, device: str) -> dict[str, dict]:
    """``evaluate`` with every decoder of the heatmap head (the trained weights unchanged)."""
    head = task.model.head
    original = head.decoder
    out = {}
    for method in DECODERS:
        head.decoder = method
        out[method] = evaluate(task, data, device)
    head.decoder = original
    return out


def describe(trial: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial["params"].items()
                     if k in ("experiment", SUPERVISION, STACKS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps per trial")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=512, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=64, help="synthetic validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evals", type=int, default=10, help="validations per trial (about)")
    parser.add_argument("--stacks", type=int, nargs="+", default=[2],
                        help="hourglass stacks of the intermediate-supervision sweep")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per trial")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per trial")
    parser.add_argument("--out", default=None,
                        help="benchmark folder (default: outputs/benchmarks/keypoints/<budget>)")
    parser.add_argument("--cache", default=os.environ.get("LSEG_CACHE_DIR",
                                                          str(Path.home() / ".cache" / "lightning_seg")))
    parser.add_argument("--skip", nargs="*", default=[], choices=["regression", "supervision"],
                        help="leave comparisons out")
    parser.add_argument("--no-plots", action="store_true", help="lseg report without plots")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(REPO / "outputs" / "benchmarks" / "keypoints"
                       / f"steps{args.steps}_b{args.batch_size}_{args.num_train}_{args.num_val}_seed{args.seed}")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"steps={args.steps} batch={args.batch_size} world={args.num_train}/{args.num_val} seed={args.seed} "
          f"device={args.device} threads={args.threads} out={args.out}", flush=True)
    result: dict = {"benchmark": "keypoints", "steps": args.steps, "batch_size": args.batch_size,
                    "num_train_images": args.num_train, "num_val_images": args.num_val, "seed": args.seed,
                    "device": args.device, "threads": args.threads, "metric": f"{METRIC} final (PCK@0.2)"}
    trials: dict[str, dict] = {}
    if "regression" not in args.skip:
        path = write_sweep("heatmap_vs_regression", "experiments/sweeps/keypoints_heatmap_vs_regression.yaml", args, {})
        for t in sweep_and_report("heatmap_vs_regression", path, args):
            trials["simplebaseline_r18" if t["params"]["experiment"] == HEATMAP_EXPERIMENT else "regression_r18"] = t
        gain = final(trials["simplebaseline_r18"]) - final(trials["regression_r18"])
        result["heatmap_minus_regression"] = round(gain, 4)
    if "supervision" not in args.skip:
        path = write_sweep("intermediate_supervision", "experiments/sweeps/hourglass_intermediate_supervision.yaml",
                           args, {STACKS: {"values": args.stacks}})
        for t in sweep_and_report("intermediate_supervision", path, args):
            on = "intermediate" if t["params"][SUPERVISION] else "last_stack_only"
            trials[f"hourglass{t['params'][STACKS]}_{on}"] = t
        gains = {s: round(final(trials[f"hourglass{s}_intermediate"])
                          - final(trials[f"hourglass{s}_last_stack_only"]), 4) for s in args.stacks}
        if 2 in gains:
            result["intermediate_supervision_gain"] = gains[2]
        result["intermediate_supervision_gain_by_stacks"] = gains

    data = datamodule(args)
    scored: dict[str, dict] = {}
    decoding: dict[str, dict] = {}
    for name, trial in trials.items():
        task, step = load(trial)
        scored[name] = {"params": describe(trial), "val/pck final": round(final(trial), 4),
                        "val/pck best": round(float(trial["result"]["best"]), 4), "best_step": step,
                        "train_minutes": round((trial["ended"] - trial["started"]) / 60, 1),
                        **evaluate(task, data, args.device)}
        print(f"{name:<28} " + "  ".join(f"{k}={v}" for k, v in scored[name].items()), flush=True)
        if name in ("simplebaseline_r18", "hourglass2_intermediate"):
            decoding[name] = decode_all(task, data, args.device)
            for method, s in decoding[name].items():
                print(f"decode {name:<24} {method:<12} " + "  ".join(f"{k}={v}" for k, v in s.items()), flush=True)
    result["decoding"] = {m: {d: {k: v for k, v in s.items() if k != "num_keypoints"} for d, s in rows.items()}
                          for m, rows in decoding.items()}
    result["trials"] = scored
    result["total_minutes"] = round((time.perf_counter() - start) / 60, 1)
    assert all(math.isfinite(r["val/pck final"]) for r in scored.values())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
