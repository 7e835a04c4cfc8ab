"""The local backend of ``lseg sweep``: each trial is an ordinary ``lseg fit`` in a subprocess.

A trial runs ``lseg fit --config EXPERIMENT --config <runtime> --<param>=<value> ...`` in the
repository root, where ``<runtime>`` (inline YAML) only sets the loggers: a ``CSVLogger`` whose
folder is the trial's run folder ``<sweep dir>/runs/<trial>/`` and, with W&B, a
``WandbLogger`` with the sweep's group, job type and tags and the trial's parameters as config
columns. ``--parallel N`` runs N trials at once, each with its own devices (GPU ids through
``CUDA_VISIBLE_DEVICES``; on CPUs, the cores shared out through ``OMP_NUM_THREADS``).

State lives in the sweep folder (``lightning_seg.sweeps.state``): a sweep stopped (Ctrl-C,
SIGTERM) or killed half-way is resumed by running the same command again; finished trials are
never run again, an interrupted one runs again from its start, a failed one is kept with its
error (``--retry-failed`` runs it again). Trial processes die with the sweep (their process
group is terminated on Ctrl-C / SIGTERM; on Linux they also get SIGTERM if the sweep is killed).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_seg.sweeps.search import bayes_next, grid, observed_value, random_trials
from lightning_seg.sweeps.spec import (
    EXPERIMENT_PARAM,
    SweepError,
    SweepSpec,
    format_value,
    override_args,
    short_names,
    trial_experiment,
)
from lightning_seg.sweeps.state import (
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    FolderLock,
    SweepState,
    Trial,
    load_state,
    new_trial_id,
    now,
    save_state,
)

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
ARTIFACTS_CALLBACK = "lightning_seg.callbacks.WandbArtifacts"


@dataclass
class WandbOptions:
    """How trials log to Weights & Biases (every trial of a sweep gets the same group, job
    type and tags, so W&B's grouped and parallel-coordinates views work).

    Attributes:
        project, entity: where the runs go (entity None: the account's default).
        group: W&B group (default: the sweep's name).
        job_type: W&B job type (default ``"sweep"``).
        tags: W&B tags (default: the sweep's name and the experiment's stem).
        artifacts: also log the run's ``config.yaml`` and best checkpoint as artifacts.
    """

    project: str = "lightning_seg"
    entity: str | None = None
    group: str | None = None
    job_type: str = "sweep"
    tags: list[str] | None = None
    artifacts: bool = False


@dataclass
class RunOptions:
    """Options of a local sweep.

    Attributes:
        folder: the sweep folder.
        parallel: trials at once.
        count: trial budget (needed by random / bayes unless the file has ``run_cap``; caps a
            grid).
        seed: seed of random / bayes draws (kept in the folder; a resumed sweep uses its own).
        retry_failed: run failed trials again.
        devices: GPU ids shared out to the parallel slots (None: all visible GPUs when there
            are any, else CPU).
        trial_timeout_s: a trial running longer is stopped and recorded as failed.
        wandb: log trials to W&B too.
        extra_args: ``lseg fit`` arguments given to every trial (after the parameters).
        python: the interpreter that runs ``lseg fit``.
        poll_s: how often running trials are checked.
        echo: where progress lines go.
    """

    folder: Path
    parallel: int = 1
    count: int | None = None
    seed: int = 0
    retry_failed: bool = False
    devices: list[str] | None = None
    trial_timeout_s: float | None = None
    wandb: WandbOptions | None = None
    extra_args: list[str] = field(default_factory=list)
    python: str = sys.executable
    poll_s: float = 0.5
    echo: Callable[[str], None] = lambda line: print(line, flush=True)


# ------------------------------------------------------------------ the trial command
def wandb_logger(spec: SweepSpec, options: WandbOptions, save_dir: Path, run_name: str | None,
                 params: dict[str, Any] | None) -> dict:
    """The ``WandbLogger`` config of a trial: the sweep's group / job type / tags, and the
    trial's parameters as flat config keys (as a W&B agent sets them)."""
    experiments = sorted({Path(e).stem for e in spec.experiments()})
    init: dict[str, Any] = {
        "project": options.project,
        "save_dir": str(save_dir),
        "group": options.group or spec.name,
        "job_type": options.job_type,
        "tags": list(options.tags) if options.tags is not None else [spec.name, *experiments],
    }
    if options.entity:
        init["entity"] = options.entity
    if run_name:
        init["name"] = run_name
    if params is not None:
        init["config"] = {"sweep": spec.name, **{k: _plain(v) for k, v in params.items()}}
    return {"class_path": WANDB_LOGGER, "init_args": init}


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def runtime_config(loggers: list[dict]) -> str:
    """The inline ``--config`` of a trial (JSON, which is YAML): its loggers."""
    return json.dumps({"trainer": {"logger": loggers}}, separators=(",", ":"))


def trial_command(
    spec: SweepSpec,
    params: dict[str, Any],
    loggers: list[dict],
    extra_args: list[str],
    artifacts: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """argv of a trial: ``python -m lightning_seg.cli fit --config EXPERIMENT --config
    <loggers> --<param>=<value>... <extra args>``. The order puts the parameters after the
    experiment, so they win."""
    cmd = [python, "-m", "lightning_seg.cli", "fit", "--config", trial_experiment(spec, params),
           "--config", runtime_config(loggers)]
    ordered = {p.name: params[p.name] for p in spec.parameters if p.name in params}
    cmd += override_args(ordered)
    if artifacts:
        cmd.append(f"--trainer.callbacks+={ARTIFACTS_CALLBACK}")
    return cmd + list(extra_args)


def display_command(cmd: list[str]) -> str:
    """A trial's command as a person types it (``lseg fit ...``)."""
    if len(cmd) > 3 and cmd[1:3] == ["-m", "lightning_seg.cli"]:
        cmd = ["lseg", *cmd[3:]]
    return shlex.join(cmd)


def describe(params: dict[str, Any], names: dict[str, str]) -> str:
    """``variant=8s lr=0.01`` for progress lines."""
    return " ".join(f"{names.get(k, k)}={format_value(v) if k != EXPERIMENT_PARAM else Path(str(v)).stem}"
                    for k, v in params.items() if k in names)


# ------------------------------------------------------------------ errors of a trial
_ERROR_LINE = re.compile(r"^(lseg: error: .*|[\w.]*(Error|Exception|Interrupt)\b:? .*|[\w.]*Error)$")


def error_from_log(log: Path, returncode: int) -> str:
    """Why a trial failed, from the end of its output: the ``lseg: error:`` line, else the
    last exception line, else the last line."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        reason = f"killed by {name}"
    else:
        reason = f"exit status {returncode}"
    try:
        lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return reason
    tail = lines[-400:]
    for line in reversed(tail):
        if line.startswith("lseg: error:"):
            return line[len("lseg: error:"):].strip()
    from lightning_seg.sweeps.check import innermost_message

    for i in range(len(tail) - 1, -1, -1):
        line = tail[i].strip()
        if _ERROR_LINE.match(line):
            detail = innermost_message("\n".join(tail[i:]))
            return line if not detail or detail in line else f"{line.split(':')[0]}: {detail}"
    return f"{reason}: {tail[-1]}" if tail else reason


# ------------------------------------------------------------------ process handling
def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: get SIGTERM when the sweep process dies (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the trial's process group, SIGKILL it after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def slot_env(slot: int, parallel: int, devices: list[str] | None) -> dict[str, str]:
    """Environment of the trials of one parallel slot: its GPUs, or its share of the cores."""
    env: dict[str, str] = {}
    if devices:
        per = max(1, len(devices) // parallel)
        mine = devices[slot * per:(slot + 1) * per] or [devices[slot % len(devices)]]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    elif parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(core_share(parallel))
    return env


def core_share(processes: int) -> int:
    """Threads each of ``processes`` CPU jobs gets so that together they fill, and do not
    oversubscribe, the cores this process may run on (the test suite's workers use it too)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes)


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` or all)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d for d in given.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA: CPU trials
        return []


# ------------------------------------------------------------------ the sweep
class LocalSweep:
    """Runs (or resumes) a sweep in its folder; ``run()`` returns the exit status."""

    def __init__(self, spec: SweepSpec, options: RunOptions) -> None:
        self.spec = spec
        self.options = options
        self.folder = options.folder.resolve()
        self.names = short_names([p.name for p in spec.swept] or [p.name for p in spec.parameters])
        self._stop_signal: int | None = None

    # ---------------------------------------------------------------- state
    def budget(self) -> int | None:
        """How many trials the sweep runs in all (None: the whole grid)."""
        count = self.options.count if self.options.count is not None else self.spec.run_cap
        if self.spec.method != "grid" and count is None:
            raise SweepError(
                f"{self.spec.path}: a {self.spec.method} sweep needs a trial budget: "
                f"--count N, or run_cap: N in the sweep file"
            )
        return count

    def open_state(self) -> SweepState:
        """The folder's state (checked against the sweep file), or a new one."""
        state = load_state(self.folder)
        fingerprint = self.spec.fingerprint()
        if state is None:
            state = SweepState(
                sweep_file=str(self.spec.path), name=self.spec.name, experiment=self.spec.experiment,
                method=self.spec.method,
                metric={"name": self.spec.metric.name, "goal": self.spec.metric.goal},
                fingerprint=fingerprint, seed=self.options.seed, root=str(self.spec.root),
                extra_args=list(self.options.extra_args),
            )
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.spec.path, self.folder / "sweep.yaml")
        elif state.fingerprint != fingerprint:
            raise SweepError(
                f"{self.folder} holds another sweep ({state.sweep_file}: its experiment, method, "
                f"metric or parameters differ from {self.spec.path} now); give this sweep its "
                f"own folder with --dir, or delete {self.folder} to start again"
            )
        elif state.extra_args != list(self.options.extra_args):
            raise SweepError(
                f"{self.folder} was started with the trial arguments {state.extra_args} after '--', "
                f"now {list(self.options.extra_args)}: resume with the same ones, or use another --dir"
            )
        return state

    def plan(self, state: SweepState) -> None:
        """Add the grid / random trials not created yet (bayes trials come one at a time)."""
        budget = self.budget()
        if self.spec.method == "grid":
            combos = grid(self.spec.parameters)
            combos = combos[:budget] if budget is not None else combos
        elif self.spec.method == "random":
            combos = random_trials(self.spec, budget, state.seed, start=len(state.trials))
            combos = [dict(t.params) for t in state.trials] + combos
        else:
            return
        for i, params in enumerate(combos):
            if i >= len(state.trials):
                state.trials.append(Trial(id=new_trial_id(i), params=params))

    def next_trial(self, state: SweepState) -> Trial | None:
        """The next trial to start, creating a bayes trial when the budget allows."""
        for trial in state.trials:
            if trial.status == PENDING:
                return trial
        if self.spec.method != "bayes" or len(state.trials) >= (self.budget() or 0):
            return None
        observed = [(t.params, v) for t in state.trials if t.status == FINISHED
                    and (v := observed_value(self.spec.metric, t.result)) is not None]
        pending = [t.params for t in state.trials if t.status == RUNNING]
        params = bayes_next(self.spec, observed, pending, state.seed, len(state.trials))
        trial = Trial(id=new_trial_id(len(state.trials)), params=params)
        state.trials.append(trial)
        return trial

    # ---------------------------------------------------------------- trials
    def loggers(self, trial: Trial) -> list[dict]:
        runs = self.folder / "runs"
        loggers = [{"class_path": CSV_LOGGER, "init_args": {"save_dir": str(runs), "name": trial.id, "version": ""}}]
        if self.options.wandb is not None:
            loggers.append(wandb_logger(self.spec, self.options.wandb, self.folder,
                                        f"{self.spec.name}-{trial.id}", trial.params))
        return loggers

    def start(self, trial: Trial, slot: int, devices: list[str] | None) -> tuple[subprocess.Popen, Any]:
        options = self.options
        run_dir = self.folder / "runs" / trial.id
        if run_dir.exists():  # what an interrupted attempt left
            shutil.rmtree(run_dir)
        log = self.folder / "logs" / f"{trial.id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        trial.command = trial_command(
            self.spec, trial.params, self.loggers(trial), options.extra_args,
            artifacts=options.wandb is not None and options.wandb.artifacts, python=options.python,
        )
        trial.run_dir = str(run_dir)
        trial.log = str(log)
        trial.status = RUNNING
        trial.attempts += 1
        trial.started, trial.ended = now(), None
        trial.returncode, trial.error, trial.result = None, None, None
        env = dict(os.environ)
        env.update(slot_env(slot, options.parallel, devices))
        env["LSEG_SWEEP"] = self.spec.name
        env["LSEG_SWEEP_TRIAL"] = trial.id
        handle = open(log, "w")  # the trial writes to it until it ends
        handle.write(f"# {display_command(trial.command)}\n")
        handle.flush()
        proc = subprocess.Popen(
            trial.command, cwd=self.spec.root, stdout=handle, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,  # no threads here
        )
        trial.pid = proc.pid
        env_note = ', '.join(f'{k}={v}' for k, v in slot_env(slot, options.parallel, devices).items())
        where = f" [{env_note}]" if env_note else ""
        self.options.echo(f"[sweep] {trial.id} started: {describe(trial.params, self.names)}"
                          f"{where}")
        return proc, handle

    def finish(self, trial: Trial, returncode: int, timed_out: bool = False) -> None:
        from lightning_seg.report.runs import summarize_run_dir

        trial.ended = now()
        trial.returncode = returncode
        trial.result = summarize_run_dir(Path(trial.run_dir), self.spec.metric)
        took = _duration(trial.duration_s)
        if returncode == 0 and not timed_out:
            trial.status = FINISHED
            if trial.result is None:
                trial.error = f"finished without logging {self.spec.metric.name}"
                self.options.echo(f"[sweep] {trial.id} finished in {took}, but {trial.error}")
            else:
                r = trial.result
                self.options.echo(f"[sweep] {trial.id} finished in {took}: {r['metric']} best "
                                  f"{r['best']:.4f}, final {r['final']:.4f}")
            return
        trial.status = FAILED
        if timed_out:
            trial.error = f"timed out after {self.options.trial_timeout_s:g} s"
        else:
            trial.error = error_from_log(Path(trial.log), returncode)
        self.options.echo(f"[sweep] {trial.id} FAILED after {took}: {trial.error} (log: {trial.log})")

    # ---------------------------------------------------------------- main loop
    def run(self) -> int:
        """Run the sweep to its end; 0 when every trial finished, 1 when some failed, 130
        when stopped by a signal."""
        options = self.options
        if options.parallel < 1:
            raise SweepError(f"--parallel must be >= 1, got {options.parallel}")
        devices = options.devices if options.devices is not None else visible_gpus()
        with FolderLock(self.folder):
            state = self.open_state()
            resumed = bool(state.trials)
            for trial in state.trials:
                if trial.status == RUNNING:
                    trial.status = PENDING
                    trial.error = "interrupted; runs again from its start"
                elif trial.status == FAILED and options.retry_failed:
                    trial.status = PENDING
            self.plan(state)
            save_state(self.folder, state)
            counts = state.counts()
            self.options.echo(
                f"[sweep] {self.spec.name}: {self.spec.method} over {', '.join(self.names.values())}; "
                f"folder {self.folder}" + (f" (resumed: {counts[FINISHED]} finished, {counts[FAILED]} "
                                           f"failed, {counts[PENDING]} to run)" if resumed else "")
            )
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._loop(state, devices)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                save_state(self.folder, state)
        counts = state.counts()
        self.options.echo(f"[sweep] {counts[FINISHED]} finished, {counts[FAILED]} failed, "
                          f"{counts[PENDING]} not run; report: lseg report {self.folder}")
        if self._stop_signal is not None:
            return 130
        return 1 if counts[FAILED] else 0

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _loop(self, state: SweepState, devices: list[str] | None) -> None:
        options = self.options
        running: dict[int, tuple[Trial, subprocess.Popen, Any]] = {}
        try:
            while True:
                for slot, (trial, proc, handle) in list(running.items()):
                    rc = proc.poll()
                    timed_out = False
                    if rc is None and options.trial_timeout_s is not None and \
                            now() - (trial.started or now()) > options.trial_timeout_s:
                        _stop_process(proc)
                        rc, timed_out = proc.wait(), True
                    if rc is None:
                        continue
                    handle.close()
                    self.finish(trial, rc, timed_out)
                    del running[slot]
                    save_state(self.folder, state)
                if self._stop_signal is not None:
                    break
                started = False
                for slot in range(options.parallel):
                    if slot in running:
                        continue
                    trial = self.next_trial(state)
                    if trial is None:
                        break
                    proc, handle = self.start(trial, slot, devices)
                    running[slot] = (trial, proc, handle)
                    started = True
                if started:
                    save_state(self.folder, state)
                if not running:
                    break
                time.sleep(options.poll_s)
        finally:
            if running:
                self.options.echo(f"[sweep] stopping {len(running)} running trial(s); run the same "
                                  f"command again to resume")
            for trial, proc, handle in running.values():
                _stop_process(proc)
                handle.close()
                trial.status = PENDING
                trial.ended = now()
                trial.error = "interrupted; runs again from its start"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
