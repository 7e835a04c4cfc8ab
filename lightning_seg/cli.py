"""The ``lseg`` command: LightningCLI with ``fit / validate / test / predict``.

Usage::

    lseg fit --config experiments/quickstart.yaml
    lseg fit --config experiments/deeplabv3plus_r50_camvid_80e.yaml --trainer.devices 2 --trainer.strategy ddp
    lseg fit --config ... --ckpt_path outputs/<run>/checkpoints/last.ckpt     # resume
    lseg predict --config ... --ckpt_path best.ckpt

``experiments/defaults.yaml`` (relative to the working directory) is read first when it exists,
then the files given with ``--config``: an experiment file holds everything that differs.
Dataset facts (number of classes, class names, ignore index, keypoint flip map...) are linked
from the DataModule into the task and its network, so they are never typed twice.
Every run saves its resolved ``config.yaml`` in its run folder.
"""

from __future__ import annotations

import os

import yaml
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_seg.callbacks.progress import default_progress_bar

DEFAULT_CONFIG = os.path.join("experiments", "defaults.yaml")

# (DataModule attribute, task/network argument) pairs. Every target must exist on every task
# and network (jsonargparse keeps an unknown link target as an extra kwarg in the saved
# hyperparameters, which then fails to load): tasks take ``num_classes`` and ``info``, networks
# take ``num_classes`` at their top level (builder classes wrap part-built detectors).
DATA_LINKS: list[tuple[str, str]] = [
    ("data.num_classes", "model.init_args.num_classes"),
    ("data.info", "model.init_args.info"),
    ("data.num_classes", "model.init_args.model.init_args.num_classes"),
]


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder and logs the resolved config to every logger
    (the run's config in W&B, ``hparams.yaml`` for CSV), so a run is reproducible from its logs."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class SegCLI(LightningCLI):
    """LightningCLI with the project's argument links and progress reporting."""

    def add_arguments_to_parser(self, parser) -> None:
        for source, target in DATA_LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        """Add a progress reporter that suits the output (rich bar on a TTY, plain lines otherwise)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config["trainer"]
        callbacks = list(trainer_config.get("callbacks") or []) + list(kwargs.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar", True) is not False and not any(
            isinstance(cb, ProgressBar) for cb in callbacks
        ):
            callbacks.append(default_progress_bar())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> SegCLI:
    """Entry point of ``lseg``; ``args`` lets tests run it in-process, ``run=False`` only
    parses and instantiates (then ``args`` holds no subcommand)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import lightning as L

    return SegCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=(
            {cmd: {"default_config_files": [DEFAULT_CONFIG]} for cmd in ("fit", "validate", "test", "predict")}
            if run
            else {"default_config_files": [DEFAULT_CONFIG]}
        ),
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def console_main() -> None:
    """The ``lseg`` console script: runs the CLI and returns nothing, so that the exit status
    is 0 on success (a returned object would be printed and exit with status 1)."""
    main()


if __name__ == "__main__":
    console_main()
