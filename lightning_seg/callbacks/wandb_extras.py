"""What W&B gets beyond scalars: per-class tables and (optionally) the run's files as artifacts.

Both do nothing without a ``WandbLogger``, so ``PerClassTables`` sits in
``experiments/defaults.yaml`` for every run; ``WandbArtifacts`` is opt-in
(``--trainer.callbacks+=lightning_seg.callbacks.WandbArtifacts``, or ``lseg sweep
--wandb-artifacts``), since checkpoints are large.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lightning_seg.callbacks.predictions import run_dir


def wandb_loggers(trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def class_names_of(pl_module) -> list[str]:
    """The task's class names (``info.class_names``, else ``class_names``), or none."""
    info = getattr(pl_module, "info", None)
    names = getattr(info, "class_names", None) or getattr(pl_module, "class_names", None)
    return [str(n) for n in names] if names else []


def per_class_values(
    metrics: dict[str, float], stage: str, class_names: list[str]
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The per-class entries of logged metrics, ``{stage}/<metric>/<class>`` (``val/IoU/sky``,
    ``val/segm/AP/person``), as ``(metric names, {class: {metric: value}})``."""
    classes = set(class_names)
    columns: list[str] = []
    table: dict[str, dict[str, float]] = {}
    prefix = f"{stage}/"
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        metric, _, cls = key[len(prefix):].rpartition("/")
        if not metric or cls not in classes:
            continue
        if metric not in columns:
            columns.append(metric)
        table.setdefault(cls, {})[metric] = float(value)
    return columns, table


class PerClassTables(Callback):
    """Logs a W&B table of the per-class metrics (IoU per class, AP per class...) after every
    validation, as ``val/per_class`` (columns: class, then each per-class metric).

    Args:
        stage: the metric prefix to collect (``val``).
    """

    def __init__(self, stage: str = "val") -> None:
        self.stage = stage
        self.last: tuple[list[str], list[list]] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or trainer.sanity_checking or trainer.global_rank != 0:
            return
        names = class_names_of(pl_module)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        columns, values = per_class_values(metrics, self.stage, names)
        if not columns:
            return
        rows = [[cls, *[values.get(cls, {}).get(c) for c in columns]] for cls in names if cls in values]
        self.last = (["class", *columns], rows)
        import wandb

        for logger in loggers:
            table = wandb.Table(columns=["class", *columns], data=rows)
            logger.experiment.log({f"{self.stage}/per_class": table, "trainer/global_step": trainer.global_step})


class WandbArtifacts(Callback):
    """Logs the run's resolved ``config.yaml`` and its best checkpoint as W&B artifacts at the
    end of training (``config-<run id>``, type ``config``; ``model-<run id>``, type ``model``,
    alias ``best``, with the monitored score in its metadata).

    Args:
        config: log ``config.yaml``.
        best_checkpoint: log the best checkpoint (the last one when none is "best").
    """

    def __init__(self, config: bool = True, best_checkpoint: bool = True) -> None:
        self.config = config
        self.best_checkpoint = best_checkpoint
        self.logged: list[str] = []

    def on_train_end(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or trainer.global_rank != 0:
            return
        import wandb

        for logger in loggers:
            run = logger.experiment
            if self.config:
                path = run_dir(trainer) / "config.yaml"
                if path.is_file():
                    artifact = wandb.Artifact(f"config-{run.id}", type="config")
                    artifact.add_file(str(path))
                    run.log_artifact(artifact)
                    self.logged.append(str(path))
            if self.best_checkpoint:
                best, meta = self._best(trainer)
                if best is not None:
                    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=meta)
                    artifact.add_file(str(best))
                    run.log_artifact(artifact, aliases=["best", "latest"])
                    self.logged.append(str(best))

    @staticmethod
    def _best(trainer) -> tuple[Path | None, dict]:
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint):
                path = cb.best_model_path or cb.last_model_path
                if path and Path(path).is_file():
                    score = cb.best_model_score
                    meta = {"monitor": cb.monitor, "score": float(score) if score is not None else None}
                    return Path(path), meta
        return None, {}
