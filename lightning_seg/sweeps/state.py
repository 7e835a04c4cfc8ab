"""The sweep folder: what was run, how it ended, and what it scored (``state.json``).

Layout of ``<sweep dir>/``::

    sweep.yaml          the sweep file as it was when the folder was started
    state.json          one record per trial (parameters, command, status, error, result)
    runs/<trial>/       each trial's run folder (config.yaml, metrics.csv, checkpoints/...)
    logs/<trial>.log    each trial's output (stdout and stderr of its ``lseg fit``)
    report/             written by ``lseg report <sweep dir>``

``state.json`` is rewritten atomically (a temporary file renamed over it) after every change,
so a sweep killed at any moment leaves a readable file; a trial found ``running`` by the next
``lseg sweep`` was interrupted and runs again from its start. One ``lseg sweep`` at a time owns
a folder (an advisory lock on ``.lock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_seg.sweeps.spec import SweepError

STATE_FILE = "state.json"
STATE_VERSION = 1
PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STATUSES = (PENDING, RUNNING, FINISHED, FAILED)


@dataclass
class Trial:
    """One trial of a sweep.

    Attributes:
        id: ``t000``, ``t001``... in the order the trials were created.
        params: the trial's parameter values, by parameter name.
        status: ``pending``, ``running``, ``finished`` or ``failed``.
        command: the ``lseg fit`` command it runs (argv).
        run_dir: its run folder.
        log: its output file.
        attempts: how many times it was started.
        pid: process id of the last attempt.
        started, ended: Unix times of the last attempt.
        returncode: exit status of the last attempt.
        error: why it failed (the last error line of its output), or None.
        result: ``{"metric", "best", "best_epoch", "final"}`` read from its metrics, or None.
    """

    id: str
    params: dict[str, Any]
    status: str = PENDING
    command: list[str] = field(default_factory=list)
    run_dir: str = ""
    log: str = ""
    attempts: int = 0
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass
class SweepState:
    """Everything ``state.json`` holds."""

    sweep_file: str
    name: str
    experiment: str | None
    method: str
    metric: dict[str, str]
    fingerprint: str
    seed: int
    root: str
    trials: list[Trial] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    version: int = STATE_VERSION

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise KeyError(trial_id)

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.trials) for s in STATUSES}


def new_trial_id(index: int) -> str:
    return f"t{index:03d}"


def save_state(folder: Path, state: SweepState) -> None:
    """Write ``state.json`` atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=1, default=str) + "\n")
    os.replace(tmp, folder / STATE_FILE)


def load_state(folder: Path) -> SweepState | None:
    """The state of a sweep folder, None when it has none yet."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path} is not valid JSON ({exc}); restore it or start a new sweep folder") from exc
    if raw.get("version") != STATE_VERSION:
        raise SweepError(f"{path}: state version {raw.get('version')} is not {STATE_VERSION}")
    trials = [Trial(**t) for t in raw.pop("trials", [])]
    return SweepState(**raw, trials=trials)


class FolderLock:
    """Advisory lock of a sweep folder (``.lock``), so two ``lseg sweep`` never share one."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SweepError(
                f"{self.path.parent} is in use by another lseg sweep (pid {owner}); wait for it, "
                f"or give this one another folder with --dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def now() -> float:
    return time.time()
