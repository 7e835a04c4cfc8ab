"""``argmax_labels`` is ``argmax``: the same indices, ties included, where label maps are taken."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.ops.labels import argmax_labels
from lightning_seg.structures import SemanticPredictions


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_equals_argmax_with_ties(dim):
    # small integers: most rows have tied maxima, and the first one must win in both
    scores = torch.randint(0, 3, (5, 6, 7), generator=torch.Generator().manual_seed(0)).float()
    torch.testing.assert_close(argmax_labels(scores, dim), scores.argmax(dim))


def test_semantic_label_maps_equal_argmax():
    logits = torch.randint(0, 4, (2, 3, 8, 10), generator=torch.Generator().manual_seed(1)).float()
    pred = SemanticPredictions(logits=logits, image_sizes=[(8, 10), (6, 9)], orig_sizes=[(8, 10), (12, 18)])
    torch.testing.assert_close(pred.labels(), logits.argmax(1))
    torch.testing.assert_close(pred.original(0), logits[0].argmax(0))
    resized = F.interpolate(logits[1:, :, :6, :9], size=(12, 18), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pred.original(1), resized.argmax(1)[0])
    small = pred.original(1, max_bytes=1)  # arg-max first, then nearest resize
    ref = F.interpolate(logits[1:, :, :6, :9].argmax(1, keepdim=True).float(), size=(12, 18), mode="nearest")
    torch.testing.assert_close(small, ref[0, 0].long())
