"""Pictures of predictions during validation, prediction files for ``lseg predict``, run summary."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image

from lightning_seg.visualize import to_numpy, vstack


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run: the first logger's ``log_dir``, else ``trainer.default_root_dir``."""
    if trainer.logger is not None and getattr(trainer.logger, "log_dir", None):
        return Path(trainer.logger.log_dir)
    return Path(trainer.default_root_dir)


class PredictionImages(Callback):
    """Saves overlays of the first validation batch at the end of every ``every_n_epochs`` epoch.

    Writes ``<run dir>/predictions/epoch_XXX.png`` (one row per image: image, ground truth,
    prediction) and, with a ``WandbLogger``, logs the same picture as ``val/predictions`` and
    the images with interactive prediction / ground-truth mask layers as ``val/prediction_masks``.

    Args:
        num_images: how many images of the first validation batch to draw.
        every_n_epochs: how often.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or trainer.sanity_checking or trainer.global_rank != 0:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        pictures = pl_module.render_predictions(batch, outputs, self.num_images)
        if not pictures:
            return
        grid = to_numpy(vstack(pictures))
        out = run_dir(trainer) / "predictions" / f"epoch_{trainer.current_epoch:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out)
        self.last_path = out
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/predictions", [grid], step=trainer.global_step)
                self._log_wandb_masks(logger, pl_module, batch, outputs, trainer.global_step)

    def _log_wandb_masks(self, logger, pl_module, batch, outputs, step: int) -> None:
        """Images with interactive mask layers (prediction / ground truth) in the W&B UI."""
        import wandb

        images = []
        for i in range(min(self.num_images, len(batch))):
            image, layers, names = pl_module.mask_layers(batch, outputs, i)
            if layers:
                masks = {k: {"mask_data": v.numpy(), "class_labels": names} for k, v in layers.items()}
                images.append(wandb.Image(to_numpy(image), masks=masks))
        if images:
            logger.experiment.log({"val/prediction_masks": images, "trainer/global_step": step})


class PredictionWriter(BasePredictionWriter):
    """Writes what ``lseg predict`` computes: label PNGs, overlays, results JSON (task-specific).

    Args:
        output_dir: where to write; default ``<run dir>/predict``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _dir(self, trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predict"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        pl_module.write_predictions(batch, prediction, self._dir(trainer))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        pl_module.finish_predictions(self._dir(trainer))
        if trainer.global_rank == 0:
            print(f"[lseg] predictions written to {self._dir(trainer).resolve()}", flush=True)


class RunSummary(Callback):
    """Prints, at the end of ``fit``, where the checkpoint, metrics, config and pictures went."""

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        lines = ["", "[lseg] run finished"]
        root = run_dir(trainer).resolve()
        lines.append(f"  run folder:   {root}")
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint):
                best = cb.best_model_path or cb.last_model_path
                if best:
                    score = ""
                    if cb.best_model_score is not None:
                        score = f" ({cb.monitor}={float(cb.best_model_score):.4f})"
                    lines.append(f"  checkpoint:   {Path(best).resolve()}{score}")
                if cb.last_model_path:
                    lines.append(f"  last ckpt:    {Path(cb.last_model_path).resolve()} (resume: --ckpt_path)")
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                lines.append(f"  metrics:      {Path(logger.log_dir).resolve() / 'metrics.csv'}")
            elif isinstance(logger, WandbLogger):
                lines.append(f"  W&B run:      {logger.experiment.dir if logger.experiment else '?'}")
        if (root / "config.yaml").is_file():
            lines.append(f"  config:       {root / 'config.yaml'}")
        for cb in trainer.callbacks:
            if isinstance(cb, PredictionImages) and cb.last_path is not None:
                lines.append(f"  predictions:  {cb.last_path.resolve()}")
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and "/" not in k[4:]}
        if final:
            lines.append("  last val:     " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))
        cost = next((cb.measured for cb in trainer.callbacks if hasattr(cb, "measured") and
                     "cost/params" in getattr(cb, "measured", {})), None)
        if cost:
            lines.append(f"  cost:         {describe_cost(cost)}")
        print("\n".join(lines), flush=True)


def describe_cost(cost: dict[str, float]) -> str:
    """``11.2 M params, 3.41 GFLOPs/image at 128x160, latency 12.3 ms, train step 345 ms``."""
    parts = [f"{cost['cost/params'] / 1e6:.3g} M params"]
    if "cost/flops" in cost:
        size = ""
        if "cost/input_height" in cost:
            size = f" at {cost['cost/input_height']:.0f}x{cost['cost/input_width']:.0f}"
        parts.append(f"{cost['cost/flops'] / 1e9:.3g} GFLOPs/image{size}")
    if "cost/latency_ms" in cost:
        parts.append(f"latency {cost['cost/latency_ms']:.3g} ms")
    if "cost/train_step_ms" in cost:
        parts.append(f"train step {cost['cost/train_step_ms']:.3g} ms")
    return ", ".join(parts)
