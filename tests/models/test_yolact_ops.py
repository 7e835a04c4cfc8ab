"""Golden tests of YOLACT's ops: Fast NMS against a plain loop of the paper's definition, SSD
box coding against hand-computed values, and the box crop of assembled masks."""

from __future__ import annotations

import importlib

import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from lightning_seg.ops import (
    SSDBoxCoder,
    batched_box_iou,
    crop_masks,
    cross_class_fast_nms,
    fast_nms,
    fast_nms_matrix,
)

# the module (``lightning_seg.ops.fast_nms`` as an attribute is the function)
fast_nms_module = importlib.import_module("lightning_seg.ops.fast_nms")


def reference_fast_nms(boxes, scores, labels, iou_thresh, top_k):
    """The paper's definition, one box at a time: per class take the ``top_k`` best boxes;
    box ``j`` is removed when any better box of its class (removed or not) overlaps it by more
    than ``iou_thresh``."""
    kept = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.argsort(scores[idx], descending=True, stable=True)][:top_k]
        for j in range(len(idx)):
            better = idx[:j]
            if len(better) == 0 or box_iou(boxes[better], boxes[idx[j : j + 1]]).max() <= iou_thresh:
                kept.append(int(idx[j]))
    kept = torch.tensor(kept, dtype=torch.int64)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def random_boxes(n, seed, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g), g


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top_k", [5, 200])
def test_fast_nms_equals_the_paper_definition_on_random_boxes(seed, top_k):
    boxes, scores, g = random_boxes(120, seed)
    labels = torch.randint(0, 4, (120,), generator=g)
    expected = reference_fast_nms(boxes, scores, labels, 0.5, top_k)
    got = fast_nms(boxes, scores, labels, 0.5, top_k=top_k)
    assert torch.equal(got, expected)
    assert got.dtype == torch.int64
    assert torch.all(scores[got][:-1] >= scores[got][1:])  # sorted by decreasing score


@pytest.mark.parametrize("block", [64, 4000, 10**9])
def test_fast_nms_in_blocks_equals_the_paper_definition(monkeypatch, block):
    """On a CPU the pairs go in blocks of rows and groups (ragged last blocks, padded groups of
    unequal sizes); from one row per block to everything in one, the result is the reference."""
    monkeypatch.setattr(fast_nms_module, "CPU_BLOCK_ELEMENTS", block)
    boxes, scores, g = random_boxes(400, 11, size=60.0)
    labels = torch.randint(0, 13, (400,), generator=g)
    for top_k in (7, 45):
        expected = reference_fast_nms(boxes, scores, labels, 0.5, top_k)
        assert torch.equal(fast_nms(boxes, scores, labels, 0.5, top_k=top_k), expected)
    # and the core on a [G, K] table with padding
    table = boxes[:60].reshape(5, 12, 4)
    valid = torch.rand(5, 12, generator=g) > 0.2
    monkeypatch.setattr(fast_nms_module, "CPU_BLOCK_ELEMENTS", 10**9)
    one_block = fast_nms_matrix(table, 0.3, valid)
    monkeypatch.setattr(fast_nms_module, "CPU_BLOCK_ELEMENTS", block)
    assert torch.equal(fast_nms_matrix(table, 0.3, valid), one_block)


def test_fast_nms_one_block_path_equals_the_paper_definition(monkeypatch):
    """The form CUDA and export use (one block, no workspace, coordinates always sanitised),
    run on a CPU by pretending to export: the same result as the reference and the blocks."""
    boxes, scores, g = random_boxes(300, 12, size=60.0)
    labels = torch.randint(0, 9, (300,), generator=g)
    bad = boxes.clone()
    bad[7, 1] = float("nan")
    blocked = fast_nms(bad, scores, labels, 0.5, top_k=40)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert torch.equal(fast_nms(bad, scores, labels, 0.5, top_k=40), blocked)
    assert torch.equal(fast_nms(boxes, scores, labels, 0.5, top_k=40),
                       reference_fast_nms(boxes, scores, labels, 0.5, 40))


def test_fast_nms_matrix_names_misshapen_inputs():
    with pytest.raises(ValueError, match=r"Tensor\[G, K, 4\].*\(5, 4\)"):
        fast_nms_matrix(torch.zeros(5, 4), 0.5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(2, 4\)"):
        fast_nms_matrix(torch.zeros(2, 3, 4), 0.5, torch.ones(2, 4, dtype=torch.bool))


def test_fast_nms_non_finite_boxes_neither_suppress_nor_are_suppressed():
    """As ``torchvision.ops.nms`` (whose IoU with a NaN box is never above the threshold): a box
    with a NaN or infinite coordinate is kept and removes nothing, and the rest is unchanged."""
    boxes, scores, g = random_boxes(60, 3)
    labels = torch.randint(0, 2, (60,), generator=g)
    bad = boxes.clone()
    bad[5, 0] = float("nan")
    bad[17, 2] = float("inf")
    bad[30] = float("-inf")
    good = torch.ones(60, dtype=torch.bool)
    good[[5, 17, 30]] = False
    rest = torch.nonzero(good).flatten()
    expected = rest[reference_fast_nms(boxes[good], scores[good], labels[good], 0.5, 200)].tolist()
    got = fast_nms(bad, scores, labels, 0.5).tolist()
    assert sorted(got) == sorted(expected + [5, 17, 30])


def test_fast_nms_half_precision_boxes_as_float32():
    """Half-precision boxes are compared in float32: areas of boxes from 256 x 256 would
    overflow float16."""
    boxes, scores, g = random_boxes(80, 4, size=900.0)
    boxes = boxes.half()
    labels = torch.randint(0, 3, (80,), generator=g)
    expected = fast_nms(boxes.float(), scores, labels, 0.5)
    assert torch.equal(fast_nms(boxes, scores, labels, 0.5), expected)
    assert torch.equal(fast_nms(boxes.bfloat16().float(), scores, labels, 0.5),
                       fast_nms(boxes.bfloat16(), scores, labels, 0.5))
    # IoU 1/3: both kept (in float16 arithmetic the 80000-pixel intersection would be inf)
    pair = torch.tensor([[0.0, 0, 400, 400], [200.0, 0, 600, 400]], dtype=torch.float16)
    assert fast_nms(pair, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64), 0.5).tolist() == [0, 1]


def test_a_suppressed_box_still_suppresses():
    """A > B > C; B overlaps A and C, C does not overlap A. Standard NMS keeps A and C (B is
    gone before it can remove C); Fast NMS keeps only A (B still removes C)."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.int64)
    assert box_iou(boxes[:1], boxes[1:2]) > 0.4 and box_iou(boxes[1:2], boxes[2:]) > 0.4
    assert box_iou(boxes[:1], boxes[2:]) < 0.4
    assert batched_nms(boxes, scores, labels, 0.4).tolist() == [0, 2]
    assert fast_nms(boxes, scores, labels, 0.4).tolist() == [0]
    assert reference_fast_nms(boxes, scores, labels, 0.4, 200).tolist() == [0]
    # in different classes nothing suppresses anything
    assert fast_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.4).tolist() == [0, 1, 2]


def test_fast_nms_swaps_with_batched_nms_when_nothing_chains():
    """Disjoint clusters of two boxes: no suppressed box overlaps a third, so both agree."""
    base = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10]])
    boxes = torch.cat([base + 30 * i for i in range(5)])
    scores = torch.linspace(1, 0.1, 10)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 2, 2, 1, 1])
    assert torch.equal(fast_nms(boxes, scores, labels, 0.5), batched_nms(boxes, scores, labels, 0.5))


def test_fast_nms_edge_cases():
    empty = fast_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    one = fast_nms(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.3]), torch.tensor([7]), 0.5)
    assert one.tolist() == [0]
    # identical boxes: only the best one survives; IoU exactly at the threshold is kept
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[0.0, 0, 10, 20]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.6])
    assert fast_nms(boxes, scores, torch.zeros(4, dtype=torch.int64), 0.5).tolist() == [1, 3]
    with pytest.raises(ValueError, match="Tensor"):
        fast_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5)


@pytest.mark.parametrize("seed", range(3))
def test_cross_class_fast_nms(seed):
    boxes, scores, _ = random_boxes(80, seed)
    expected = reference_fast_nms(boxes, scores, torch.zeros(80, dtype=torch.int64), 0.5, 30)
    assert torch.equal(cross_class_fast_nms(boxes, scores, 0.5, top_k=30), expected)


def test_fast_nms_matrix_padding_neither_suppresses_nor_survives():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0.0, 0, 10, 10], [50.0, 50, 60, 60]]])
    valid = torch.tensor([[False, True, True]])
    assert fast_nms_matrix(boxes, 0.5, valid).tolist() == [[False, True, True]]
    assert fast_nms_matrix(boxes, 0.5).tolist() == [[True, False, True]]


def test_batched_box_iou_equals_torchvision():
    a, _, _ = random_boxes(7, 1)
    b, _, _ = random_boxes(5, 2)
    torch.testing.assert_close(batched_box_iou(a[None], b[None])[0], box_iou(a, b))
    zero = torch.zeros(1, 2, 4)
    assert batched_box_iou(zero, zero).eq(0).all()  # no NaN for empty unions


def test_ssd_box_coder_hand_values_and_round_trip():
    coder = SSDBoxCoder((0.1, 0.2))
    anchor = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size (20, 40)
    box = torch.tensor([[12.0, 24.0, 52.0, 64.0]])  # centre (32, 44), size (40, 40)
    deltas = coder.encode(box, anchor)
    expected = torch.tensor([[12 / (0.1 * 20), 4 / (0.1 * 40), torch.log(torch.tensor(2.0)) / 0.2, 0.0]])
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(coder.decode(deltas, anchor), box)
    # scaling the axes (pixels vs image-relative coordinates) leaves the deltas unchanged
    scale = torch.tensor([1 / 550, 1 / 400, 1 / 550, 1 / 400])
    torch.testing.assert_close(coder.encode(box * scale, anchor * scale), deltas)


def test_crop_masks_keeps_the_padded_box_only():
    masks = torch.ones(2, 6, 8)
    boxes = torch.tensor([[2.0, 1.0, 4.0, 3.0], [6.5, 4.2, 7.5, 5.0]])
    out = crop_masks(masks, boxes, padding=1)
    # box 0: columns 1..4 (1 <= j < 5), rows 0..3
    expected0 = torch.zeros(6, 8)
    expected0[0:4, 1:5] = 1
    assert torch.equal(out[0], expected0)
    # box 1: columns j with 5.5 <= j < 8.5 -> 6, 7; rows i with 3.2 <= i < 6 -> 4, 5
    expected1 = torch.zeros(6, 8)
    expected1[4:6, 6:8] = 1
    assert torch.equal(out[1], expected1)
    # without padding box 0 covers columns 2, 3 and rows 1, 2
    assert crop_masks(masks, boxes, padding=0)[0].sum() == 4
