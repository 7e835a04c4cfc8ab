"""Diagnostics of YOLACT's prototype ablations (Bolya et al., ICCV 2019, section 6 / Table 2b).

``PrototypeDiagnostics`` looks, at every validation, at the prototypes and the mask coefficients
of a fixed image (the first image of the first validation batch) and logs:

- ``proto/effective_rank``: ``exp(H(s / sum(s)))`` of the singular values ``s`` of the ``k``
  prototypes flattened to ``k x (h w)`` (Roy and Vetterli, EUSIPCO 2007): how many prototypes
  the network really uses (``<= k``);
- ``proto/dead``: prototypes that are zero everywhere on that image (ReLU-dead);
- ``coeff/saturated``: the fraction of the detections' coefficients with ``|c| > 0.99`` (tanh
  saturated: the paper's explanation of why large ``k`` is hard to predict), and
  ``coeff/mean_abs``;

to every logger (``metrics.csv``, W&B), and a grid picture of the prototypes of that image,
each normalised to its own maximum, at ``<run dir>/prototypes/epoch_XXX.png`` (and as
``val/prototypes`` in W&B).

``failure_mode_pictures`` draws YOLACT's two known failure modes on predictions: the leakage of
a mask when its box is too large (the same coefficients cropped with the predicted box and with
that box enlarged) and the localisation of crowded scenes (every detection of the most crowded
image drawn, with its ground truth).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from lightning_seg.callbacks.predictions import run_dir
from lightning_seg.structures import Batch, InstancePredictions
from lightning_seg.visualize import draw_instances, hstack, to_numpy, to_uint8_image, vstack


def effective_rank(protos: Tensor) -> float:
    """``exp`` of the entropy of the normalised singular values of ``Tensor[P, h, w]`` prototypes
    (1 for a rank-one stack, ``P`` for ``P`` orthogonal prototypes of equal energy; 0 if all zero)."""
    s = torch.linalg.svdvals(protos.flatten(1).double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def prototype_grid(protos: Tensor, columns: int | None = None, gap: int = 2) -> Tensor:
    """``Tensor[P, h, w]`` prototypes as one uint8 ``Tensor[3, H, W]`` grey picture, each
    prototype scaled by its own maximum, tiled row by row."""
    p, h, w = protos.shape
    columns = columns or math.ceil(math.sqrt(p))
    rows = math.ceil(p / columns)
    peak = protos.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    tiles = (protos / peak).clamp(0, 1)
    grid = torch.zeros(rows * (h + gap) - gap, columns * (w + gap) - gap)
    for i in range(p):
        r, c = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i].float().cpu()
    return (grid * 255).round().to(torch.uint8)[None].expand(3, -1, -1).contiguous()


def coefficient_stats(coeffs: Tensor, saturation: float = 0.99) -> dict[str, float]:
    """``{"saturated", "mean_abs"}`` of ``Tensor[N, P]`` tanh coefficients (0 when N is 0)."""
    if coeffs.numel() == 0:
        return {"saturated": 0.0, "mean_abs": 0.0}
    a = coeffs.float().abs()
    return {"saturated": float((a > saturation).float().mean()), "mean_abs": float(a.mean())}


@torch.no_grad()
def prototype_diagnostics(model, batch: Batch, index: int = 0) -> tuple[dict[str, float], Tensor]:
    """The diagnostics of image ``index`` of ``batch`` for a ``Yolact`` (module docstring).

    Returns:
        the scalars and the ``Tensor[P, h, w]`` prototypes of that image.
    """
    sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
    features, protos, input_size = model.features(batch.images, sizes)
    raw = model.head(features, input_size)
    dets, _ = model.detect(raw, protos)
    coeffs = dets.coeffs[index][dets.valid[index]]
    image_protos = protos[index].float()
    stats = {
        "proto/effective_rank": effective_rank(image_protos),
        "proto/dead": float((image_protos.flatten(1).amax(dim=1) <= 0).sum()),
        "proto/k": float(image_protos.shape[0]),
    }
    stats.update({f"coeff/{k}": v for k, v in coefficient_stats(coeffs).items()})
    return stats, image_protos


class PrototypeDiagnostics(Callback):
    """Log the prototype / coefficient diagnostics of a fixed validation image (module docstring).

    Works with a task whose ``model`` is a ``Yolact``; other networks are left alone (a warning
    once).

    Args:
        every_n_epochs: how often (validation epochs).
        save_grid: write the prototype picture.
    """

    def __init__(self, every_n_epochs: int = 1, save_grid: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.save_grid = save_grid
        self.last_stats: dict[str, float] = {}
        self.last_path: Path | None = None
        self._warned = False

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        from lightning_seg.models.detectors.yolact import Yolact

        model = getattr(pl_module, "model", pl_module)
        if not isinstance(model, Yolact):
            if not self._warned:
                import logging

                logging.getLogger("lightning_seg.callbacks").warning(
                    "PrototypeDiagnostics needs a YOLACT network, got %s: nothing logged", type(model).__name__)
                self._warned = True
            return
        stats, protos = prototype_diagnostics(model, batch)
        self.last_stats = stats
        for name, value in stats.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)
        if not self.save_grid or trainer.global_rank != 0:
            return
        grid = to_numpy(prototype_grid(protos))
        out = run_dir(trainer) / "prototypes" / f"epoch_{trainer.current_epoch:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out)
        self.last_path = out
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/prototypes", [grid], step=trainer.global_step)


@torch.no_grad()
def failure_mode_pictures(model, batch: Batch, box_enlarge: float = 1.6, score_thresh: float = 0.3,
                          class_names: list[str] | None = None) -> dict[str, Tensor]:
    """Pictures of YOLACT's known failure modes on a batch (uint8 ``Tensor[3, H, W]`` each).

    - ``"leakage"``: for the best detection of each image, its mask cropped with the predicted
      box | the same coefficients cropped with the box enlarged ``box_enlarge`` times about its
      centre: what the prototypes put outside the object appears (YOLACT's leakage when a box
      is too large);
    - ``"crowded"``: the most crowded image (most ground-truth instances): ground truth |
      every detection above ``score_thresh`` (localisation errors where objects touch).
    """
    from lightning_seg.models.postprocess.yolact import assemble_masks, masks_to_frame
    from lightning_seg.structures.dataset_info import default_palette

    names = list(class_names or [str(c) for c in range(model.num_classes)])
    palette = default_palette(model.num_classes)
    sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
    features, protos, input_size = model.features(batch.images, sizes)
    dets, probs = model.detect(model.head(features, input_size), protos)
    rows = []
    for i, size in enumerate(sizes):
        if not bool(dets.valid[i, 0]):
            continue
        box = dets.boxes[i, :1]  # [1, 4]
        centre, half = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) / 2 * box_enlarge
        big = torch.cat([centre - half, centre + half], dim=1)
        leak = assemble_masks(protos[i : i + 1], dets.coeffs[i : i + 1, :1], big[None], input_size)[0]
        image = to_uint8_image(batch.images[i], size)
        panels = []
        for masks, b in ((probs[i, :1], box), (leak, big)):
            m = masks_to_frame(masks, input_size, size, size) > model.mask_thresh
            pred = InstancePredictions(b.clamp(min=0), dets.scores[i, :1].float(), dets.labels[i, :1], size, masks=m)
            panels.append(draw_instances(image, pred, names, palette, score_thresh=0.0))
        rows.append(hstack(panels))
    out = {}
    if rows:
        out["leakage"] = vstack(rows)
    if batch.instances is not None:
        i = max(range(len(batch)), key=lambda j: len(batch.instances[j]))
        image = to_uint8_image(batch.images[i], sizes[i])
        pred = model.postprocess(dets, probs, input_size, sizes, sizes)[i]
        out["crowded"] = hstack([draw_instances(image, batch.instances[i].to("cpu"), names, palette),
                                 draw_instances(image, pred, names, palette, score_thresh=score_thresh)])
    return out
