"""``lseg sweep SWEEP.yaml``: run an ablation, locally or as a W&B sweep.

Examples::

    lseg sweep experiments/sweeps/fcn_skips_r18_shapes.yaml                 # one trial at a time
    lseg sweep experiments/sweeps/deeplab_output_stride.yaml --parallel 4   # 4 GPUs, one each
    lseg sweep SWEEP.yaml --count 20 --parallel 2                           # random / bayes budget
    lseg sweep SWEEP.yaml --wandb --project my_project                      # local, logged to W&B
    lseg sweep SWEEP.yaml --backend wandb --project my_project              # W&B; then on every
    wandb agent ENTITY/my_project/SWEEP_ID                                  # machine: this line
    lseg sweep SWEEP.yaml --dry-run                                         # check, list trials
    lseg sweep SWEEP.yaml -- --trainer.max_epochs 2                         # extra lseg arguments

The sweep folder (``--dir``, default ``outputs/sweeps/<sweep name>``) records every trial; run
the same command again to resume a stopped sweep. ``lseg report <sweep folder>`` tabulates it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_seg.sweeps.spec import SweepError, load_sweep


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lseg sweep",
        description="Run the trials of a sweep file (W&B sweep format plus 'experiment:') as "
                    "lseg fit runs, locally or through a W&B sweep.",
        epilog="Arguments after '--' are given to every trial's lseg fit "
               "(e.g. -- --trainer.max_epochs 2).",
    )
    p.add_argument("sweep", type=Path, help="the sweep file (experiments/sweeps/*.yaml)")
    p.add_argument("--dir", type=Path, default=None,
                   help="sweep folder (default: outputs/sweeps/<sweep name> in the repository root)")
    p.add_argument("--backend", choices=("local", "wandb"), default="local",
                   help="local: run the trials here; wandb: create a W&B sweep and print the agent command")
    p.add_argument("--parallel", type=_positive_int, default=1, help="trials at once (local)")
    p.add_argument("--devices", default=None,
                   help="GPU ids shared out to the parallel trials, e.g. 0,1,2,3 (default: every "
                        "visible GPU; none: CPU); 'cpu' forces CPU")
    p.add_argument("--count", type=_positive_int, default=None,
                   help="trial budget (random / bayes need one unless the file has run_cap; caps a grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of random / bayes draws (new folders)")
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument("--trial-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a trial running longer and record it as failed")
    p.add_argument("--dry-run", action="store_true",
                   help="check every parameter against the experiment's parser and list the trials; run nothing")
    w = p.add_argument_group("Weights & Biases")
    w.add_argument("--wandb", action="store_true", help="local backend: trials also log to W&B")
    w.add_argument("--project", default="lightning_seg", help="W&B project")
    w.add_argument("--entity", default=None, help="W&B entity (default: your account's)")
    w.add_argument("--group", default=None, help="W&B group of every trial (default: the sweep's name)")
    w.add_argument("--job-type", default="sweep", help="W&B job type of every trial")
    w.add_argument("--tags", default=None,
                   help="comma-separated W&B tags (default: the sweep's name and experiment)")
    w.add_argument("--wandb-artifacts", action="store_true",
                   help="log each trial's config.yaml and best checkpoint as W&B artifacts")
    w.add_argument("--wandb-trial", default=None, metavar="ARGS_JSON",
                   help="run one trial for a W&B agent (what the W&B sweep's command calls)")
    return p


def main(argv: list[str]) -> int:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    spec = load_sweep(args.sweep)
    folder = args.dir if args.dir is not None else spec.root / "outputs" / "sweeps" / spec.name

    from lightning_seg.sweeps.runner import WandbOptions

    tags = [t for t in args.tags.split(",") if t] if args.tags is not None else None
    wandb = WandbOptions(project=args.project, entity=args.entity, group=args.group,
                         job_type=args.job_type, tags=tags, artifacts=args.wandb_artifacts)

    if args.wandb_trial is not None:
        from lightning_seg.sweeps.wandb_backend import run_wandb_trial

        run_wandb_trial(spec, args.wandb_trial, wandb, folder.resolve(), extra)
        return 0
    if args.dry_run:
        return _dry_run(spec, args, folder, extra, wandb)
    if args.backend == "wandb":
        from lightning_seg.sweeps.wandb_backend import create_wandb_sweep

        path, agent = create_wandb_sweep(spec, wandb, extra, args.dir)
        print(f"[sweep] created W&B sweep {path}\n"
              f"[sweep] on every machine (repository root, environment active), run:\n\n    {agent}\n\n"
              f"[sweep] each agent runs trials until the sweep is done (add --count N to stop one "
              f"earlier); then: lseg report --wandb {path}", flush=True)
        return 0

    from lightning_seg.sweeps.runner import LocalSweep, RunOptions

    devices = None
    if args.devices is not None:
        devices = [] if args.devices.strip().lower() == "cpu" else [d for d in args.devices.split(",") if d.strip()]
    options = RunOptions(
        folder=folder, parallel=args.parallel, count=args.count, seed=args.seed,
        retry_failed=args.retry_failed, devices=devices, trial_timeout_s=args.trial_timeout,
        wandb=wandb if args.wandb else None, extra_args=extra,
    )
    return LocalSweep(spec, options).run()


def _dry_run(spec, args, folder: Path, extra: list[str], wandb) -> int:
    from lightning_seg.sweeps.check import check_sweep
    from lightning_seg.sweeps.runner import LocalSweep, RunOptions, display_command, trial_command
    from lightning_seg.sweeps.state import SweepState

    problems = check_sweep(spec)
    for problem in problems:
        print(f"[sweep] problem: {problem}")
    if problems:
        raise SweepError(f"{spec.path}: {len(problems)} parameter value(s) do not parse (listed above)")
    sweep = LocalSweep(spec, RunOptions(folder=folder, count=args.count, seed=args.seed,
                                        wandb=wandb if args.wandb else None, extra_args=extra))
    state = SweepState(sweep_file=str(spec.path), name=spec.name, experiment=spec.experiment,
                       method=spec.method, metric={}, fingerprint="", seed=args.seed, root=str(spec.root))
    sweep.plan(state)
    print(f"[sweep] {spec.path}: every value parses; {spec.method} sweep, folder {folder}")
    if spec.method == "bayes":
        print(f"[sweep] bayes picks its {sweep.budget()} trials as results come in")
    for trial in state.trials:
        cmd = trial_command(spec, trial.params, sweep.loggers(trial), extra)
        print(f"  {trial.id}: {display_command(cmd)}")
    return 0



if __name__ == "__main__":  # python -m lightning_seg.commands.sweep: lseg sweep without loading the CLI
    from lightning_seg.commands import console

    console("sweep")
