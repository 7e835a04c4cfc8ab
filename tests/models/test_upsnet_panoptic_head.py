"""UPSNet's parameter-free panoptic head and the panoptic post-processing, on hand-made cases
whose values are computed by hand in the comments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.models.heads.panoptic import HeuristicPanopticMerge, UPSNetPanopticHead
from lightning_seg.models.postprocess.panoptic import (
    box_extents,
    class_agnostic_detections,
    heuristic_merge,
    paste_mask_logits,
    remove_overlapping_masks,
    unified_panoptic_result,
    upsample_semantic_logits,
    upsnet_panoptic_logits,
    upsnet_panoptic_targets,
)
from lightning_seg.ops.boxes import BoxCoder
from lightning_seg.structures import InstancePredictions

# Classes in dataset order: 0 ground (stuff), 1 cat (thing), 2 dog (thing).
STUFF, THINGS = [0], [1, 2]
H, W = 4, 7


def _scene():
    """Two overlapping boxes over a stuff row, and a column that no box covers.

    Semantic logits: ground 0.5 on rows 0-2 and 10 on row 3; cat 1.5 and dog 2.0 everywhere.
    Box A (cat) covers columns 0-3 and every row; box B (dog) columns 2-5, rows 0-2; column 6
    is in no box. Mask logits (2x2): A [[0, 4], [4, 8]], B all -1.
    """
    sem = torch.zeros(3, H, W)
    sem[0, :3], sem[0, 3] = 0.5, 10.0
    sem[1], sem[2] = 1.5, 2.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 6.0, 3.0]])
    labels = torch.tensor([1, 2])
    masks = torch.tensor([[[0.0, 4.0], [4.0, 8.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    return sem, boxes, labels, masks


def test_paste_is_the_bilinear_resize_into_the_box():
    # a 2x2 mask resized to 4x4 (align_corners=False) takes, along each axis, the weights
    # (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1): [0, 4] -> [0, 1, 3, 4]; so A's value at (r, c)
    # is f(r) + f(c) with f = [0, 1, 3, 4]
    _, boxes, _, masks = _scene()
    pasted = paste_mask_logits(masks, box_extents(boxes), (H, W))
    f = torch.tensor([0.0, 1.0, 3.0, 4.0])
    expected_a = torch.zeros(H, W)
    expected_a[:, :4] = f[:, None] + f[None, :]
    expected_b = torch.zeros(H, W)
    expected_b[:3, 2:6] = -1.0
    torch.testing.assert_close(pasted[0], expected_a)
    torch.testing.assert_close(pasted[1], expected_b)


def test_box_extents_floor_ceil_and_one_pixel_at_least():
    boxes = torch.tensor([[3.0, 0.0, 8.0, 4.0], [2.2, 1.7, 2.3, 1.8], [1.0, 1.0, 1.0, 1.0]])
    assert box_extents(boxes).tolist() == [[3, 0, 8, 4], [2, 1, 3, 2], [1, 1, 2, 2]]
    # a ground-truth box of pixels 3..7 covers stride-4 cells 0 and 1
    assert box_extents(boxes[:1], 0.25).tolist() == [[0, 0, 2, 1]]


def test_panoptic_logits_unknown_and_final_map_by_hand():
    sem, boxes, labels, masks = _scene()
    extents = box_extents(boxes)
    logits = upsnet_panoptic_logits(sem, extents, labels, paste_mask_logits(masks, extents, (H, W)),
                                    STUFF, THINGS)
    assert logits.shape == (1 + 2 + 1, H, W)
    f = torch.tensor([0.0, 1.0, 3.0, 4.0])
    # stuff channel: the ground logits
    torch.testing.assert_close(logits[0], sem[0])
    # A = Y_A + X_A = 1.5 + f(r) + f(c) in its box, 0 outside
    a = torch.zeros(H, W)
    a[:, :4] = 1.5 + f[:, None] + f[None, :]
    torch.testing.assert_close(logits[1], a)
    # B = 2.0 - 1.0 in its box, 0 outside
    b = torch.zeros(H, W)
    b[:3, 2:6] = 1.0
    torch.testing.assert_close(logits[2], b)
    # unknown = max(cat, dog) - max(Y_A, Y_B) = 2 - 2 in B, 2 - 1.5 in A only, 2 - 0 elsewhere
    unknown = torch.full((H, W), 2.0)
    unknown[:, :4] = 0.5
    unknown[:3, 2:6] = 0.0
    torch.testing.assert_close(logits[3], unknown)
    # arg-max: rows 0-2 A A A A B B unknown (the overlap goes to A: 4.5 and 5.5 vs 1); row 3
    # ground (10 beats A's at most 9.5 and the unknown's 0.5 / 2)
    index = logits.argmax(0)
    assert index[:3].tolist() == [[1, 1, 1, 1, 2, 2, 3]] * 3
    assert index[3].tolist() == [0] * W
    # unified result: the semantic arg-max is dog on rows 0-2, so A's majority is a thing but
    # not its class: it stays a cat; unknown -> void; ground is one segment of 7 pixels
    pred = unified_panoptic_result(index, sem.argmax(0), labels, torch.tensor([0.9, 0.8]),
                                   STUFF, 3, stuff_area_limit=0)
    assert pred.labels.tolist() == [1, 2, 0] and pred.isthing.tolist() == [True, True, False]
    area = {int(i): int((pred.segment_map == i).sum()) for i in pred.ids}
    assert [area[int(i)] for i in pred.ids] == [12, 6, 7]
    assert int((pred.segment_map == 0).sum()) == 3 and (pred.segment_map[:3, 6] == 0).all()
    assert pred.scores.tolist() == pytest.approx([0.9, 0.8, 1.0])


def test_mask_logit_weight_scales_only_the_mask_term():
    # w = 2: A = 1.5 + 2 (f(r) + f(c)) and B = 2.0 - 2 in their boxes; stuff and unknown as
    # with w = 1 (the unknown channel uses the semantic terms only)
    sem, boxes, labels, masks = _scene()
    extents = box_extents(boxes)
    pasted = paste_mask_logits(masks, extents, (H, W))
    plain = upsnet_panoptic_logits(sem, extents, labels, pasted, STUFF, THINGS)
    weighted = upsnet_panoptic_logits(sem, extents, labels, pasted, STUFF, THINGS,
                                      mask_logit_weight=2.0)
    f = torch.tensor([0.0, 1.0, 3.0, 4.0])
    a = torch.zeros(H, W)
    a[:, :4] = 1.5 + 2 * (f[:, None] + f[None, :])
    b = torch.zeros(H, W)  # 2.0 - 2 * 1 = 0 in B's box, 0 outside
    torch.testing.assert_close(weighted[1], a)
    torch.testing.assert_close(weighted[2], b)
    torch.testing.assert_close(weighted[[0, 3]], plain[[0, 3]])
    with pytest.raises(ValueError, match="mask_logit_weight"):
        UPSNetPanopticHead(THINGS, STUFF, mask_logit_weight=0.0)


def test_unknown_is_optional_and_empty_instances_use_the_constant():
    sem, *_ = _scene()
    none = torch.zeros(0, 4, dtype=torch.int64)
    logits = upsnet_panoptic_logits(sem, none, torch.zeros(0, dtype=torch.int64),
                                    torch.zeros(0, H, W), STUFF, THINGS)
    assert logits.shape == (2, H, W)
    torch.testing.assert_close(logits[1], torch.full((H, W), 2.0 + 10.0))  # 2 - (-10)
    plain = upsnet_panoptic_logits(sem, none, torch.zeros(0, dtype=torch.int64),
                                   torch.zeros(0, H, W), STUFF, THINGS, with_unknown=False)
    assert plain.shape == (1, H, W)


@pytest.mark.parametrize("things", [[1, 2, 4], [3, 4, 5]])
@pytest.mark.parametrize("with_unknown,weight,n", [(True, 1.0, 5), (False, 2.0, 5), (True, 2.0, 1), (True, 1.0, 0)])
def test_panoptic_logits_at_inference_equal_the_differentiable_form(things, with_unknown, weight, n):
    """At inference the logits are built box by box (no [N, H, W] copies); they equal the
    differentiable form used in training exactly, with boxes partly or wholly outside the image,
    overlapping boxes, thing channels in one range or not."""
    g = torch.Generator().manual_seed(n)
    stuff = [c for c in range(6) if c not in things]
    sem = torch.randn(6, 9, 13, generator=g)
    extents = torch.tensor([[-3, -2, 5, 4], [2, 1, 11, 9], [10, 6, 20, 15], [13, 0, 16, 3], [4, 3, 5, 4]])[:n]
    labels = torch.tensor(things)[torch.randint(3, (n,), generator=g)]
    pasted = paste_mask_logits(torch.randn(n, 4, 4, generator=g), extents, (9, 13))
    fast = upsnet_panoptic_logits(sem, extents, labels, pasted, stuff, things, with_unknown,
                                  mask_logit_weight=weight)
    reference = upsnet_panoptic_logits(sem.clone().requires_grad_(), extents, labels, pasted, stuff,
                                       things, with_unknown, mask_logit_weight=weight)
    assert reference.requires_grad and not fast.requires_grad
    assert torch.equal(fast, reference.detach())


def test_targets_dropped_instance_pixels_are_unknown_not_a_neighbour():
    # semantic: ground row 3, void at (3, 6); cat region cols 0-1, dog region cols 2-5, a crowd
    # of dogs at col 6 (no instance); only the cat is kept
    sem = torch.zeros(H, W, dtype=torch.int64)
    sem[:3, :2], sem[:3, 2:6], sem[:3, 6] = 1, 2, 2
    sem[3, 6] = 255
    cat = torch.zeros(1, H, W, dtype=torch.bool)
    cat[0, :3, :2] = True
    target = upsnet_panoptic_targets(sem, cat, STUFF, 255)
    unknown = 1 + 1  # S + N
    assert target[:3, :2].eq(1).all()  # the kept cat: channel S + 0
    assert target[:3, 2:].eq(unknown).all()  # the dropped dog and the crowd: unknown
    assert target[3, :6].eq(0).all() and target[3, 6] == -100
    off = upsnet_panoptic_targets(sem, cat, STUFF, 255, with_unknown=False)
    assert off[:3, 2:].eq(-100).all()


def test_head_loss_equals_the_cross_entropy_by_hand():
    """The head's loss at stride 1 on the scene: mean over all pixels of the per-pixel CE, void
    pixels 0, times the loss weight; the dropped dog's pixels are unknown."""
    sem, boxes, labels, masks = _scene()
    head = UPSNetPanopticHead(THINGS, STUFF, 255, box_keep_fraction=0.5, loss_weight=0.1)
    labels_map = torch.zeros(H, W, dtype=torch.int64)
    labels_map[:3, :4], labels_map[:3, 4:] = 1, 2
    labels_map[3, 0] = 255
    cat = torch.zeros(1, H, W, dtype=torch.bool)
    cat[0, :3, :4] = True
    torch.manual_seed(0)
    kept = head.sample_instances(2)
    assert kept.numel() == 1  # max(int(2 * 0.5), 1)
    loss = head.loss(sem[None], 1, [boxes[:1]], [labels[:1]], [masks[:1]], [cat],
                     labels_map[None], [(H, W)])["loss_panoptic"]
    extents = box_extents(boxes[:1])
    logits = upsnet_panoptic_logits(sem, extents, labels[:1],
                                    paste_mask_logits(masks[:1], extents, (H, W)), STUFF, THINGS)
    target = torch.full((H, W), 2)  # unknown = S + N = 1 + 1
    target[:3, :4], target[3] = 1, 0
    target[3, 0] = -100
    pixel = F.cross_entropy(logits[None], target[None], ignore_index=-100, reduction="none")
    assert float(loss) == pytest.approx(0.1 * float(pixel.sum()) / (H * W))


def test_head_loss_at_stride_4_samples_cell_centres():
    # one cat over input pixels 2..9 x 2..9 of a 16 x 16 image: at stride 4 the targets are read
    # at the cell centres (pixels 2, 6, 10, 14), so cells 0-1 (rows and columns) are the cat
    head = UPSNetPanopticHead(THINGS, STUFF, 255, box_keep_fraction=1.0, loss_weight=1.0)
    labels_map = torch.zeros(16, 16, dtype=torch.int64)
    labels_map[2:10, 2:10] = 1
    mask = (labels_map == 1)[None]
    box = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    loss = head.loss(logits, 4, [box], [torch.tensor([1])], [torch.zeros(1, 2, 2)], [mask],
                     labels_map[None], [(16, 16)])["loss_panoptic"]
    loss.backward()
    # all logits 0: channels ground, cat-instance; the box covers cells 0..2 (ceil(10 / 4) = 3)
    # so in cells with target "instance" the CE is log(2) and elsewhere log(2) too
    assert float(loss.detach()) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    grad = logits.grad[0, 1]  # d loss / d cat logits: only where Y_cat enters (inside the box)
    assert grad[:3, :3].ne(0).all() and grad[3].eq(0).all() and grad[:, 3].eq(0).all()


def test_class_agnostic_detections_threshold_nms_and_cap():
    # three RoIs (zero deltas: the boxes are the RoIs) in a 32x32 image, 2 thing classes;
    # class probabilities [background, cat, dog] given as log-probabilities
    box_head = SimpleNamespace(box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)), min_box_size=1e-2)
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # A: cat 0.8
                         [1.0, 0.0, 11.0, 10.0],  # B: dog 0.75, IoU with A 90 / 110 = 0.82
                         [20.0, 20.0, 40.0, 30.0]])  # C: dog 0.65, clipped to x2 = 32
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.15, 0.75], [0.3, 0.05, 0.65]])
    raw = SimpleNamespace(rois=[rois], box_deltas=torch.zeros(3, 12), class_logits=probs.log())
    (det,) = class_agnostic_detections(box_head, raw, [(32, 32)])
    # B is suppressed by A although its class differs (class-agnostic NMS at 0.5); every
    # probability <= 0.6 is out (B's cat 0.15, C's cat 0.05, ...)
    assert det.labels.tolist() == [0, 1] and det.scores.tolist() == pytest.approx([0.8, 0.65])
    assert det.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 32.0, 30.0]]
    (det,) = class_agnostic_detections(box_head, raw, [(32, 32)], nms_thresh=0.9)
    assert det.labels.tolist() == [0, 1, 1] and det.scores.tolist() == pytest.approx([0.8, 0.75, 0.65])
    (det,) = class_agnostic_detections(box_head, raw, [(32, 32)], score_thresh=0.7)
    assert det.labels.tolist() == [0]
    (det,) = class_agnostic_detections(box_head, raw, [(32, 32)], nms_thresh=0.9, detections_per_img=2)
    assert det.scores.tolist() == pytest.approx([0.8, 0.75])


def test_remove_overlapping_masks_is_per_class_and_in_score_order():
    m = torch.zeros(4, 4, 4, dtype=torch.bool)
    m[0, :2, :2] = True  # 4 px, class 0, best
    m[1, :2, :3] = True  # 6 px, class 0: 4 of 6 covered by mask 0 (> 0.3) -> dropped
    m[2, :2, :3] = True  # same pixels, class 1: nothing of its class before -> kept
    keep = remove_overlapping_masks(m, torch.tensor([0, 0, 1, 0]), torch.tensor([0.9, 0.8, 0.7, 0.95]))
    assert keep.tolist() == [0, 2]  # mask 3 is empty


def test_unified_result_majority_stuff_and_small_stuff():
    # 6x6: index map stuff 0 (ground) everywhere but instance 0 on the top-left 3x3
    index = torch.zeros(6, 6, dtype=torch.int64)
    index[:3, :3] = 1
    semantic = torch.zeros(6, 6, dtype=torch.int64)  # ground everywhere...
    semantic[0, 0] = 1  # ...but one cat pixel: 8 of 9 pixels of the instance are ground
    labels, scores = torch.tensor([1]), torch.tensor([0.9])
    pred = unified_panoptic_result(index, semantic, labels, scores, STUFF, 3, stuff_area_limit=0)
    assert pred.labels.tolist() == [0] and int((pred.segment_map > 0).sum()) == 36
    # when the instance is half its own class it stays (majority is its class)
    semantic[:2, :3] = 1
    pred = unified_panoptic_result(index, semantic, labels, scores, STUFF, 3, stuff_area_limit=0)
    assert pred.labels.tolist() == [1, 0] and pred.isthing.tolist() == [True, False]
    # ground has 27 pixels: a limit of 28 makes it void
    pred = unified_panoptic_result(index, semantic, labels, scores, STUFF, 3, stuff_area_limit=28)
    assert pred.labels.tolist() == [1] and int((pred.segment_map == 0).sum()) == 27


def test_heuristic_merge_by_hand():
    semantic = torch.zeros(4, 6, dtype=torch.int64)  # ground
    semantic[:2, :4] = 1  # cat pixels
    semantic[3, 5] = 2  # a dog pixel no instance claims -> void
    masks = torch.zeros(3, 4, 6, dtype=torch.bool)
    masks[0, :2, :2] = True  # cat 0.9
    masks[1, :2, 1:4] = True  # cat 0.8: 2 of 6 px taken (0.33 > 0.3) -> skipped
    masks[2, 2:, :2] = True  # dog 0.5: below the score threshold
    pred = heuristic_merge(semantic, masks, torch.tensor([1, 1, 2]), torch.tensor([0.9, 0.8, 0.5]),
                           STUFF, 3, stuff_area_limit=0)
    assert pred.labels.tolist() == [1, 0]
    seg = pred.segment_map
    cat_id, ground_id = pred.ids.tolist()
    assert (seg[:2, :2] == cat_id).all() and (seg[:2, 2:4] == 0).all()  # cat pixels w/o instance
    assert int((seg == ground_id).sum()) == 4 * 6 - 8 - 1 and seg[3, 5] == 0
    merge = HeuristicPanopticMerge(THINGS, STUFF, overlap_thresh=0.4, stuff_area_limit=0)
    inst = InstancePredictions(torch.zeros(3, 4), torch.tensor([0.9, 0.8, 0.5]),
                               torch.tensor([1, 1, 2]), (4, 6), masks=masks)
    assert merge.predict(semantic, inst).labels.tolist() == [1, 1, 0]  # 0.33 <= 0.4 now


def test_upsample_semantic_logits_equals_the_whole_map():
    logits = torch.randn(3, 8, 10)
    full = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    for h, w in ((32, 40), (13, 21), (1, 1)):
        torch.testing.assert_close(upsample_semantic_logits(logits, (h, w), 4), full[:, :h, :w])


def test_head_predict_void_for_unknown_and_original_size():
    sem, boxes, labels, masks = _scene()
    head = UPSNetPanopticHead(THINGS, STUFF, 255, stuff_area_limit=0)
    det = InstancePredictions(boxes, torch.tensor([0.9, 0.8]), labels, (H, W))
    pred = head.predict(sem, det, masks, (8, 14))  # twice the size: nearest resize
    assert pred.image_size == (8, 14)
    # B's mask logits are all -1: an empty mask, removed (official MaskRemoval). Without it the
    # unknown channel is 2 - 0 outside A's box, beating ground (0.5) on rows 0-2, columns 4-6:
    # 9 void pixels, 36 at twice the size; A keeps columns 0-3, ground row 3
    assert int((pred.segment_map == 0).sum()) == 36 and (pred.segment_map[:6, 8:] == 0).all()
    assert pred.labels.tolist() == [1, 0]
    masks[1] = 1.0  # B's mask is now on: its box is B where A does not win
    pred = head.predict(sem, det, masks, (H, W))
    assert pred.labels.tolist() == [1, 2, 0]
    assert pred.segment_map[:3].tolist() == [[1, 1, 1, 1, 2, 2, 0]] * 3


def test_predict_without_detections_compares_stuff_with_the_thing_logits():
    """No detection at test: the unknown channel is max(thing logits) - 0 (the official dummy
    all-zero instance), not the training constant: stuff wins where its logit is higher."""
    sem, *_ = _scene()
    head = UPSNetPanopticHead(THINGS, STUFF, 255, stuff_area_limit=0)
    none = InstancePredictions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), (H, W))
    pred = head.predict(sem, none, torch.zeros(0, 2, 2), (H, W))
    # ground 10 > dog 2 on row 3: ground; ground 0.5 < 2 on rows 0-2: unknown -> void
    assert pred.labels.tolist() == [0] and (pred.segment_map[3] > 0).all()
    assert (pred.segment_map[:3] == 0).all()
