"""The W&B backend of ``lseg sweep``: W&B's sweep server picks the trials, agents run them.

``lseg sweep SWEEP.yaml --backend wandb`` sends the sweep file (less ``experiment``, plus a
``command``) to W&B and prints the ``wandb agent`` command. Every agent, on any machine, runs
from a checkout of the same repository (with its environment active)::

    lseg sweep SWEEP.yaml --wandb-trial '{"<param>": <value>, ...}' [--project P] [-- EXTRA]

which is ``lseg fit --config EXPERIMENT`` with the trial's parameters, a ``WandbLogger`` that
joins the agent's run (group, job type and tags of the sweep) and a ``CSVLogger`` in
``<sweep dir>/runs/<W&B run id>/`` on that machine. The parameter values reach ``lseg`` through
W&B's ``${args_json}`` and the same formatting as the local backend, so both backends run the
same command for the same values. An agent may run a trial on several GPUs: give
``-- --trainer.devices 4 --trainer.strategy ddp``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning_seg.sweeps.runner import (
    CSV_LOGGER,
    WandbOptions,
    display_command,
    trial_command,
    wandb_logger,
)
from lightning_seg.sweeps.spec import SweepError, SweepSpec


def wandb_sweep_config(spec: SweepSpec, options: WandbOptions, extra_args: list[str],
                       folder: Path | None = None) -> dict[str, Any]:
    """The sweep as W&B takes it: the file's W&B keys and the agents' command."""
    config = {k: v for k, v in spec.raw.items() if k not in ("experiment", "project", "entity")}
    config["name"] = spec.name
    config["method"] = spec.method
    config["metric"] = {"name": spec.metric.name, "goal": spec.metric.goal}
    sweep_file = _relative(spec.path, spec.root)
    command = ["${env}", "lseg", "sweep", sweep_file, "--wandb-trial", "${args_json}",
               "--project", options.project, "--job-type", options.job_type]
    if options.entity:
        command += ["--entity", options.entity]
    if options.group:
        command += ["--group", options.group]
    if options.tags is not None:
        command += ["--tags", ",".join(options.tags)]
    if options.artifacts:
        command.append("--wandb-artifacts")
    if folder is not None:
        command += ["--dir", str(folder)]
    if extra_args:
        command += ["--", *extra_args]
    config["command"] = command
    return config


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path.resolve())


def create_wandb_sweep(spec: SweepSpec, options: WandbOptions, extra_args: list[str],
                       folder: Path | None = None, sweep_fn=None) -> tuple[str, str]:
    """Create the sweep on the W&B server (online, logged in).

    Returns:
        ``(sweep path, agent command)``: ``entity/project/id`` and the line to run on each
        machine. ``sweep_fn`` replaces ``wandb.sweep`` in tests.
    """
    import wandb

    config = wandb_sweep_config(spec, options, extra_args, folder)
    if sweep_fn is None:
        mode = os.environ.get("WANDB_MODE", "online")
        if mode in ("offline", "disabled", "dryrun"):
            raise SweepError(f"WANDB_MODE={mode}: a W&B sweep lives on the W&B server; unset WANDB_MODE "
                             f"(and log in), or run the sweep here with the local backend (--wandb logs "
                             f"its trials to W&B, offline too)")
        sweep_fn = wandb.sweep
    try:
        sweep_id = sweep_fn(config, project=options.project, entity=options.entity)
    except SweepError:
        raise
    except Exception as exc:
        raise SweepError(f"W&B could not create the sweep ({type(exc).__name__}: {exc}); log in with "
                         f"'wandb login' (or set WANDB_API_KEY) and check --project / --entity") from exc
    entity = options.entity
    if entity is None and sweep_fn is wandb.sweep:
        entity = wandb.Api().default_entity
    path = "/".join(p for p in (entity, options.project, sweep_id) if p)
    return path, f"wandb agent {path}"


def run_wandb_trial(spec: SweepSpec, args_json: str, options: WandbOptions, folder: Path,
                    extra_args: list[str], execute: bool = True) -> list[str]:
    """What a W&B agent runs: ``lseg fit`` with the trial's parameters (``${args_json}``).

    Replaces this process by ``lseg fit`` (same process id, so the agent's signals reach the
    training); ``execute=False`` returns the command instead (tests, ``--dry-run``).
    """
    try:
        params = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise SweepError(f"--wandb-trial: not JSON ({exc}): {args_json[:200]}") from exc
    if not isinstance(params, dict):
        raise SweepError(f"--wandb-trial: expected a JSON object of parameters, got {args_json[:200]}")
    known = {p.name for p in spec.parameters}
    unknown = sorted(set(params) - known)
    if unknown:
        raise SweepError(f"--wandb-trial: {unknown} are not parameters of {spec.path}")
    run_id = os.environ.get("WANDB_RUN_ID") or f"trial-{os.getpid()}"
    loggers = [
        {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(folder / "runs"), "name": run_id, "version": ""}},
        wandb_logger(spec, options, folder, None, None),
    ]
    cmd = trial_command(spec, params, loggers, extra_args, artifacts=options.artifacts)
    if not execute:
        return cmd
    print(f"[sweep] {spec.name} trial {run_id}: {display_command(cmd)}", flush=True)
    os.chdir(spec.root)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return cmd  # pragma: no cover - execv does not return
