"""Every semantic model overfits one tiny batch (plain torch loop, Adam): the loss falls by at
least 90% and pixel accuracy / mIoU reach a threshold. Catches wiring, alignment and init bugs
that shape tests miss.

Two synthetic batches: ``shapes`` (coloured rectangle / disc / triangle on noise, 4 classes)
for models whose output is fine, and ``blocks`` (classes constant on cells aligned to the
output stride) for the coarse ones (FCN-32s, DeepLab v3 upsample 32x / 16x bilinearly and
cannot draw a 16-px disc, but must put block boundaries exactly where they are: a
misalignment of the score map fails this test).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone
from lightning_seg.models.backbones.xception import XceptionBackbone
from lightning_seg.models.detectors.deeplab import DeepLabV3, DeepLabV3Plus
from lightning_seg.models.detectors.fcn import FCN
from lightning_seg.models.detectors.unet import UNet
from lightning_seg.structures import Batch

NUM_CLASSES = 4
_PALETTE = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9]])


def _colourise(labels: Tensor, generator: torch.Generator) -> Tensor:
    """``Tensor[B, H, W]`` labels -> ``Tensor[B, 3, H, W]`` images: class colour + noise."""
    noise = torch.rand(labels.shape[0], 3, *labels.shape[1:], generator=generator)
    return _PALETTE[labels].permute(0, 3, 1, 2) * 0.7 + noise * 0.3  # Tensor[B, 3, H, W]


def shapes_batch(scale: int = 1) -> tuple[Tensor, Tensor]:
    """2 images of ``64 * scale`` px with a rectangle (1), a disc (2) and a triangle (3)."""
    h = w = 64
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.zeros(2, h, w, dtype=torch.long)
    for b, (cy, cx) in enumerate([(20, 40), (44, 22)]):
        rect = (ys >= 4 + 30 * b) & (ys < 20 + 30 * b) & (xs >= 6) & (xs < 26 - 4 * b)
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 < 100
        u = xs - 44 - 6 * b
        tri = (ys > 40 - 30 * b) & (ys < 62 - 30 * b) & (u > 0) & (u < ys - 40 + 30 * b)
        for k, m in ((1, rect), (2, disc), (3, tri)):
            labels[b][m] = k
    if scale > 1:
        labels = labels.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return _colourise(labels, torch.Generator().manual_seed(0)), labels


def blocks_batch(size: int, cell: int) -> tuple[Tensor, Tensor]:
    """2 images ``size x size`` whose classes are constant on ``cell x cell`` squares."""
    g = torch.Generator().manual_seed(1)
    n = size // cell
    cells = torch.randint(0, NUM_CLASSES, (2, n, n), generator=g)
    labels = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    return _colourise(labels, g), labels


def _miou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    ious = []
    for k in range(num_classes):
        union = ((pred == k) | (target == k)).sum()
        if union > 0:
            ious.append((((pred == k) & (target == k)).sum() / union).item())
    return sum(ious) / len(ious)


def overfit(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    miou_thresh: float,
    acc_thresh: float = 0.95,
    max_steps: int = 300,
    lr: float = 2e-3,
) -> tuple[float, float, float, float, int]:
    """Adam on one batch until the loss fell by 90% and both metrics pass (or ``max_steps``).

    Returns:
        ``(first_loss, last_loss, pixel_accuracy, miou, steps)`` of the last training step.
    """
    images, labels = batch
    data = Batch.from_images(images, semantic=labels)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = None
    for step in range(1, max_steps + 1):
        logits = model.logits(images)  # what model(data) computes, kept for the metrics
        assert logits.shape == (images.shape[0], NUM_CLASSES, *images.shape[-2:])
        loss = model.criterion(logits, data)["loss_ce"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() <= 0.1 * first:
            pred = logits.detach().argmax(dim=1)
            acc, miou = (pred == labels).float().mean().item(), _miou(pred, labels, NUM_CLASSES)
            if acc >= acc_thresh and miou >= miou_thresh:
                break
    pred = logits.detach().argmax(dim=1)
    acc, miou = (pred == labels).float().mean().item(), _miou(pred, labels, NUM_CLASSES)
    return first, loss.item(), acc, miou, step


def _tiny_vgg() -> VGGBackbone:
    return VGGBackbone(stage_channels=(8, 16, 32, 32, 32), fc_channels=64, fc_dropout=0.0)


def _tiny_resnet(out_features: tuple[str, ...], output_stride: int = 32, **kw) -> ResNetBackbone:
    return ResNetBackbone(
        depth=18, num_blocks=(1, 1, 1, 1), out_features=out_features, output_stride=output_stride, **kw
    )


Case = tuple[Callable[[], nn.Module], Callable[[], tuple[Tensor, Tensor]], float, float]
CASES: dict[str, Case] = {
    # name: (model factory, batch factory, mIoU threshold, Adam learning rate)
    "fcn32s_vgg_tiny": (
        lambda: FCN(_tiny_vgg(), NUM_CLASSES, variant="32s"), lambda: blocks_batch(128, 32), 0.9, 2e-3
    ),
    "fcn16s_vgg_tiny": (lambda: FCN(_tiny_vgg(), NUM_CLASSES, variant="16s"), lambda: shapes_batch(2), 0.75, 2e-3),
    "fcn8s_vgg_tiny": (lambda: FCN(_tiny_vgg(), NUM_CLASSES, variant="8s"), lambda: shapes_batch(2), 0.85, 2e-3),
    "fcn8s_resnet_tiny": (
        lambda: FCN(_tiny_resnet(("c3", "c4", "c5")), NUM_CLASSES, in_features=("c3", "c4", "c5")),
        lambda: shapes_batch(1),
        0.8,
        5e-3,
    ),
    "unet_valid": (
        lambda: UNet(NUM_CLASSES, base_channels=8, depth=2, padding="valid", norm_layer=None),
        lambda: shapes_batch(1),
        0.85,
        5e-3,
    ),
    "unet_same": (lambda: UNet(NUM_CLASSES, base_channels=8, depth=3), lambda: shapes_batch(1), 0.9, 5e-3),
    "deeplabv3_resnet_tiny": (
        lambda: DeepLabV3(
            _tiny_resnet(("c5",), output_stride=16, multi_grid=(1,)), NUM_CLASSES, aspp_channels=32, dropout=0.0
        ),
        lambda: blocks_batch(64, 32),
        0.9,
        5e-3,
    ),
    "deeplabv3plus_resnet_tiny": (
        lambda: DeepLabV3Plus(
            _tiny_resnet(("c2", "c5"), output_stride=16),
            NUM_CLASSES,
            aspp_channels=32,
            low_level_channels=16,
            decoder_channels=32,
            dropout=0.0,
        ),
        lambda: shapes_batch(1),
        0.85,
        5e-3,
    ),
    "deeplabv3plus_xception_tiny": (
        lambda: DeepLabV3Plus(
            XceptionBackbone(output_stride=16, middle_repeats=1, width_multiplier=0.125),
            NUM_CLASSES,
            in_feature="out",
            low_level_feature="low_level",
            aspp_channels=32,
            low_level_channels=16,
            decoder_channels=32,
            dropout=0.0,
        ),
        lambda: shapes_batch(1),
        0.85,
        5e-3,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_overfit_one_batch(name: str) -> None:
    make_model, make_batch, miou_thresh, lr = CASES[name]
    model = make_model()
    first, last, acc, miou, steps = overfit(model, make_batch(), miou_thresh, lr=lr)
    where = f"{name} after {steps} steps"
    assert last <= 0.1 * first, f"{where}: loss {first:.3f} -> {last:.3f} fell by less than 90%"
    assert acc >= 0.95, f"{where}: pixel accuracy {acc:.3f}"
    assert miou >= miou_thresh, f"{where}: mIoU {miou:.3f} < {miou_thresh}"
