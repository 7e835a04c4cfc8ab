"""Mask R-CNN end to end with a tiny ResNet-18 FPN: losses, empty images, unequal sizes,
bf16 autocast, eval outputs, and overfitting real COCO images."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from lightning_seg.models.detectors.mask_rcnn import MaskRCNN, mask_rcnn_resnet_fpn
from lightning_seg.models.heads import RPN, BoxRoIHead, MaskRoIHead
from lightning_seg.structures import Batch, InstancePredictions, InstanceTargets

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


def tiny_mask_rcnn(num_classes: int = 3, **kwargs) -> MaskRCNN:
    """ResNet-18, 64-channel FPN, small heads and few RoIs: seconds per step on a CPU."""
    anchor_sizes = kwargs.pop("anchor_sizes", (16, 32, 64, 128, 256))
    box_options = kwargs.pop("box_options", dict(fc_dim=256, batch_size_per_image=128))
    levels = ("p2", "p3", "p4", "p5")
    options = dict(
        depth=18,
        fpn_channels=64,
        rpn=partial(RPN, anchor_sizes=anchor_sizes, pre_nms_top_n_train=300,
                    post_nms_top_n_train=150, pre_nms_top_n_test=300, post_nms_top_n_test=100,
                    batch_size_per_image=128),
        box_head=partial(BoxRoIHead, num_classes=num_classes, in_features=levels, **box_options),
        mask_head=partial(MaskRoIHead, num_classes=num_classes, in_features=levels,
                          conv_dims=(64, 64)),
    )
    options.update(kwargs)
    return mask_rcnn_resnet_fpn(num_classes, **options)


def batch_of(images, sizes, targets=None, orig_sizes=None) -> Batch:
    return Batch.from_images(images, targets, image_sizes=sizes, orig_sizes=orig_sizes)


def _blob_batch(sizes, counts, num_classes=3, seed=0):
    """Images with bright rectangles/ellipses on a dark background and their targets."""
    g = torch.Generator().manual_seed(seed)
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, hmax, wmax)
    targets = []
    for i, ((h, w), n) in enumerate(zip(sizes, counts)):
        images[i, :, :h, :w] = 0.1 * torch.rand(3, h, w, generator=g)
        boxes, labels, masks = [], [], []
        for _ in range(n):
            bw, bh = (torch.randint(14, max(15, w // 2), (1,), generator=g).item(),
                      torch.randint(14, max(15, h // 2), (1,), generator=g).item())
            x1 = torch.randint(0, w - bw, (1,), generator=g).item()
            y1 = torch.randint(0, h - bh, (1,), generator=g).item()
            label = torch.randint(0, num_classes, (1,), generator=g).item()
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            cx, cy = x1 + bw / 2, y1 + bh / 2
            if label == 0:  # ellipse
                m = ((xx + 0.5 - cx) / (bw / 2)) ** 2 + ((yy + 0.5 - cy) / (bh / 2)) ** 2 <= 1
            else:  # rectangle (label 1) or triangle-ish (label 2)
                m = (xx >= x1) & (xx < x1 + bw) & (yy >= y1) & (yy < y1 + bh)
                if label == 2:
                    m &= (xx - x1) * bh >= (yy - y1) * bw
            ys, xs = torch.nonzero(m, as_tuple=True)
            boxes.append(
                [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            )
            color = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]][label])
            images[i, :, :h, :w][:, m] = color[:, None]
            labels.append(label)
            masks.append(m)
        targets.append(
            InstanceTargets(
                boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.int64),
                image_size=(h, w),
                masks=torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
            )
        )
    return images, [(h, w) for h, w in sizes], targets


def test_training_losses_unequal_sizes_and_an_empty_image():
    model = tiny_mask_rcnn().train()
    images, sizes, targets = _blob_batch([(97, 130), (121, 83), (64, 64)], [3, 2, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_box"] > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.mask_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_empty_targets_give_zero_box_and_mask_losses():
    model = tiny_mask_rcnn().train()
    images, sizes, targets = _blob_batch([(75, 101), (90, 64)], [0, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    for key in ("loss_rpn_box", "loss_box", "loss_mask"):
        assert losses[key].item() == 0.0, key
    assert losses["loss_rpn_cls"] > 0 and losses["loss_cls"] > 0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.mask_head.mask_logits.weight.grad is not None  # graph stays connected


def test_crowd_only_image_is_a_background_image():
    model = tiny_mask_rcnn().train()
    images, sizes, targets = _blob_batch([(80, 96)], [2])
    targets = [
        InstanceTargets(targets[0].boxes, targets[0].labels, targets[0].image_size,
                        masks=targets[0].masks, iscrowd=torch.ones(2, dtype=torch.bool))
    ]
    losses = model(batch_of(images, sizes, targets))
    assert losses["loss_box"].item() == 0.0 and losses["loss_mask"].item() == 0.0


def test_degenerate_box_is_dropped_and_counted(caplog):
    model = tiny_mask_rcnn().train()
    images, sizes, _ = _blob_batch([(64, 64)], [0])
    bad = InstanceTargets(torch.tensor([[10.0, 10.0, 10.0, 30.0], [5.0, 5.0, 40.0, 40.0]]),
                          torch.tensor([0, 1]), (64, 64),
                          masks=torch.zeros(2, 64, 64, dtype=torch.bool))
    with caplog.at_level("WARNING", logger="lightning_seg.models"):
        losses = model(batch_of(images, sizes, [bad]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0  # the valid box still trains
    assert model.target_filter.counts["degenerate box"] == 1
    assert "dropped 1 training boxes" in caplog.text


def test_eval_outputs_and_orig_sizes():
    model = tiny_mask_rcnn().eval()
    model.box_head.score_thresh = 0.0  # random weights: keep detections
    images, sizes, _ = _blob_batch([(97, 130), (121, 83)], [2, 1])
    with torch.no_grad():
        native = model(batch_of(images, sizes))
        orig = [(194, 65), (121, 83)]
        scaled = model(batch_of(images, sizes, orig_sizes=orig))
    for pred, size in zip(native, sizes):
        assert isinstance(pred, InstancePredictions) and pred.image_size == size
        assert 0 < len(pred) <= model.box_head.detections_per_img
        assert pred.masks.dtype == torch.bool and pred.masks.shape == (len(pred), *size)
        assert (pred.labels >= 0).all() and (pred.labels < 3).all()
        assert (pred.boxes[:, 2] <= size[1]).all() and (pred.boxes[:, 3] <= size[0]).all()
    for a, b, (h, w), (h0, w0) in zip(native, scaled, sizes, orig):
        assert b.image_size == (h0, w0) and b.masks.shape[1:] == (h0, w0)
        factor = torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])
        torch.testing.assert_close(b.boxes, a.boxes * factor)
        torch.testing.assert_close(b.scores, a.scores)


def test_padding_does_not_change_predictions():
    """Extra collate padding (and what it is filled with) must not matter."""
    model = tiny_mask_rcnn().eval()
    model.box_head.score_thresh = 0.0
    images, sizes, _ = _blob_batch([(97, 130), (121, 83)], [2, 1])
    padded = F.pad(images, (0, 30, 0, 17), value=0.7)
    with torch.no_grad():
        a, b = model(batch_of(images, sizes)), model(batch_of(padded, sizes))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.boxes, y.boxes)
        assert torch.equal(x.masks, y.masks)


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny_mask_rcnn().train()
    images, sizes, targets = _blob_batch([(61, 80), (72, 57)], [2, 1])  # bf16 CPU convs are slow
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(
        p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()
    )
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(batch_of(images, sizes))
    assert all(torch.isfinite(p.boxes).all() for p in preds)


def test_faster_rcnn_without_mask_head():
    model = tiny_mask_rcnn(with_mask=False).train()
    images, sizes, targets = _blob_batch([(80, 96)], [2])
    assert set(model(batch_of(images, sizes, targets))) == LOSS_KEYS - {"loss_mask"}
    model.eval()
    with torch.no_grad():
        assert model(batch_of(images, sizes))[0].masks is None


def test_overfit_synthetic_image_loss_drops():
    """A tiny model memorises one image: the total loss falls by >= 90%."""
    torch.manual_seed(0)
    model = tiny_mask_rcnn(box_options=dict(fc_dim=256, batch_size_per_image=64)).train()
    images, sizes, targets = _blob_batch([(96, 128)], [2], seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for step in range(100):
        losses = model(batch_of(images, sizes, targets))
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        first = total.item() if first is None else first
        if total.item() < 0.1 * first:
            break
    assert math.isfinite(total.item())
    assert total.item() < 0.1 * first, (
        f"loss {first:.3f} -> {total.item():.3f} after {step + 1} steps"
    )


# ---------------------------------------------------------------------- real COCO images
def load_coco_mini(root, short_side: int = 200):
    """The 6 coco_mini images downscaled to ``short_side``, as a padded batch + targets."""
    from lightning_seg.data.formats.coco import CocoInstanceDataset

    folder = root / "instance" / "coco_mini"
    dataset = CocoInstanceDataset(folder / "images", folder / "annotations" / "instances.json")
    images, targets, image_ids = [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        h, w = sample.image_size
        scale = short_side / min(h, w)
        size = (round(h * scale), round(w * scale))
        image = F.interpolate(sample.image[None].float() / 255, size=size, mode="bilinear",
                              antialias=True, align_corners=False)[0]
        inst = sample.instances
        masks = torch.zeros(0, *size, dtype=torch.bool)
        if len(inst):
            masks = F.interpolate(inst.masks[None].float(), size=size, mode="bilinear",
                                  align_corners=False)[0] >= 0.5  # [N, h, w]
        factor = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
        keep = masks.flatten(1).any(dim=1)
        targets.append(
            InstanceTargets(
                boxes=(inst.boxes * factor)[keep], labels=inst.labels[keep], image_size=size,
                masks=masks[keep], iscrowd=inst.iscrowd[keep],
            )
        )
        images.append(image)
        image_ids.append(sample.meta.image_id)
    hmax, wmax = max(t.image_size[0] for t in targets), max(t.image_size[1] for t in targets)
    batch = torch.zeros(len(images), 3, hmax, wmax)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    return batch, [t.image_size for t in targets], targets, image_ids, dataset.info


def mask_ap50(preds: list[InstancePredictions], targets: list[InstanceTargets]) -> float:
    """COCO mask AP at IoU 0.5 (pycocotools ``COCOeval``, all areas, 100 detections)."""
    import contextlib
    import io

    import numpy as np
    import pycocotools.mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: torch.Tensor) -> dict:
        out = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        out["counts"] = out["counts"].decode()
        return out

    images, anns, results = [], [], []
    for image_id, (pred, target) in enumerate(zip(preds, targets)):
        h, w = target.image_size
        images.append({"id": image_id, "height": h, "width": w})
        for mask, label, crowd in zip(target.masks, target.labels, target.iscrowd):
            r = rle(mask)
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "segmentation": r, "area": float(mask_utils.area(r)),
                "bbox": list(mask_utils.toBbox(r)), "iscrowd": int(crowd),
            })
        for mask, label, score in zip(pred.masks, pred.labels, pred.scores):
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "segmentation": rle(mask), "score": float(score)})
    num_classes = int(max(int(t.labels.max()) for t in targets if len(t)) + 1)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return 0.0
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def overfit_coco_mini(model, batch, sizes, targets, max_steps: int = 360) -> None:
    """Train ``model`` on the COCO-mini images, 3 per step in turn (AdamW lr 1e-3), evaluating
    mask AP50 on all of them every 20 steps from step 100; pass at the first two consecutive
    evaluations >= 0.9, fail with the history after ``max_steps``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(max_steps):
        idx = [(3 * step + j) % len(sizes) for j in range(3)]
        model.train()
        losses = model(batch_of(batch[idx], [sizes[i] for i in idx], [targets[i] for i in idx]))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if (step + 1) % 20 == 0 and step + 1 >= 100:
            model.eval()
            with torch.no_grad():
                ap50 = mask_ap50(model(batch_of(batch, sizes)), targets)
            history.append((step + 1, round(ap50, 3)))
            if len(history) >= 2 and min(ap for _, ap in history[-2:]) >= 0.9:
                return
    raise AssertionError(f"mask AP50 >= 0.9 at two consecutive evaluations not reached; by step: {history}")


def test_overfit_coco_mini_mask_ap50(shared_data):
    """Memorise the 6 real COCO images (short side 200): mask AP50 >= 0.9 on them at two
    consecutive evaluations (20 steps apart), so a single lucky evaluation does not pass.

    The anchors are the paper's 32..512 (for an 800-px short side) scaled to 200 px, so the
    bottles of 3x4 px have an anchor of their size (with 16..256, AP50 crept from 0.80 at step
    100 to 0.907 at step 250). AP50 of these tiny masks swings by about 0.1 between evaluations
    early on; the history is in the failure message. Measured (seed 0, 2 threads, 2026-11-27):
    0.834 at step 100, 0.900 at 120, 0.904 at 140, so it passes at step 140 (105 s).
    """
    batch, sizes, targets, _, info = load_coco_mini(shared_data, short_side=200)
    torch.manual_seed(0)
    model = tiny_mask_rcnn(num_classes=info.num_classes, anchor_sizes=(8, 16, 32, 64, 128))
    overfit_coco_mini(model, batch, sizes, targets)

