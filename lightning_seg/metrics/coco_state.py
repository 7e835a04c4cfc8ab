"""The state of ``COCOEvaluator``: flat tensors per field, gathered across processes.

Every field is a list of tensors (a ``torchmetrics`` list state): per image its id, size and
numbers of annotations; per ground-truth annotation and per detection its box, label, area,
crowd flag or score, keypoints and the length of its RLE string; and the RLE strings of all
masks joined into one ``uint8`` tensor. ``append_batch`` adds one ``update``'s tensors (and
merges small tensors now and then), ``all_gather_states`` gathers every process's states in
one ``all_gather_object`` (the fields have mixed dtypes and sizes), and ``unique_images``
drops the images that a ``DistributedSampler`` repeated to pad the last batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lightning_seg.data.io import DataError

IMAGE_STATES = ("img_ids", "img_sizes", "gt_counts", "dt_counts")
GT_STATES = ("gt_boxes", "gt_labels", "gt_crowd", "gt_area", "gt_rle", "gt_rle_len", "gt_kpts")
DT_STATES = ("dt_boxes", "dt_scores", "dt_labels", "dt_area", "dt_rle", "dt_rle_len", "dt_kpts")
STATES = IMAGE_STATES + GT_STATES + DT_STATES
COMPACT_EVERY = 32  # a tensor costs ~1 KiB of overhead: keep a few large ones, not many small
# dtype and trailing shape of each state (None: K * 3 keypoint values), for empty states
STATE_LAYOUT = {
    "img_ids": (torch.int64, ()), "img_sizes": (torch.int64, (2,)),
    "gt_counts": (torch.int64, ()), "dt_counts": (torch.int64, ()),
    "gt_boxes": (torch.float32, (4,)), "dt_boxes": (torch.float32, (4,)),
    "gt_labels": (torch.int64, ()), "dt_labels": (torch.int64, ()),
    "gt_crowd": (torch.bool, ()), "dt_scores": (torch.float32, ()),
    "gt_area": (torch.float64, ()), "dt_area": (torch.float64, ()),
    "gt_rle": (torch.uint8, ()), "dt_rle": (torch.uint8, ()),
    "gt_rle_len": (torch.int64, ()), "dt_rle_len": (torch.int64, ()),
    "gt_kpts": (torch.float32, None), "dt_kpts": (torch.float32, None),
}  # fmt: skip


def bytes_tensor(strings: Sequence[bytes]) -> Tensor:
    """The strings joined, as ``Tensor[sum of lengths]`` uint8 (a copy)."""
    buf = np.frombuffer(b"".join(strings), dtype=np.uint8).copy()
    return torch.from_numpy(buf)


def append_batch(
    states: Mapping[str, list[Tensor]],
    batch: Mapping[str, list[Tensor]],
    num_small: dict[str, int],
) -> None:
    """Append one batch to the states: one tensor per state (empty parts skipped).

    Args:
        states: each state's list of tensors, modified in place.
        batch: each state's parts of this batch (per image).
        num_small: per state, the tensors appended since the last merge (updated in place);
            every ``COMPACT_EVERY`` appended tensors are merged into one.
    """
    for name in STATES:
        parts = [p for p in batch[name] if p.shape[0]]
        if parts:
            state = states[name]
            state.append(torch.cat(parts).to(STATE_LAYOUT[name][0]))
            num_small[name] = num_small.get(name, 0) + 1
            if num_small[name] == COMPACT_EVERY:  # merge the newest small tensors
                state[-COMPACT_EVERY:] = [torch.cat(state[-COMPACT_EVERY:])]
                num_small[name] = 0


def cat_state(parts: Sequence[Tensor], name: str, num_keypoints: int | None) -> Tensor:
    """One state as a single CPU tensor of its dtype (empty with the right trailing shape).

    Args:
        parts: the state's list of tensors.
        name: the state's name (``STATE_LAYOUT``).
        num_keypoints: K, for the width of an empty keypoint state (0 when None).
    """
    dtype, trailing = STATE_LAYOUT[name]
    parts = [p.cpu() for p in parts if p.shape[0]]
    if parts:
        return torch.cat(parts).to(dtype)
    width = (3 * (num_keypoints or 0),) if trailing is None else trailing
    return torch.zeros((0, *width), dtype=dtype)


def all_gather_states(local: Mapping[str, Tensor], group=None) -> dict[str, list[Tensor]]:
    """Every process's states, as one object per rank (states of mixed dtypes and sizes).

    Args:
        local: this process's states, one tensor each (``cat_state``).
        group: the process group (default: the world).

    Returns:
        Per state, the non-empty tensors of all ranks in rank order.
    """
    gathered: list[dict | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, dict(local), group=group)
    out = {}
    for name in STATES:
        parts = [part[name] for part in gathered if part is not None]
        out[name] = [p for p in parts if p.numel()]
    return out


def unique_images(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The states with each image id kept once (its first occurrence).

    Args:
        data: every state as one numpy array.

    Raises:
        DataError: an image id was added twice with different ground truth.
    """
    ids = data["img_ids"]
    if np.unique(ids).size == ids.size:
        return data
    keep_img = _first_occurrences(data)
    keep = {"img": keep_img}
    for prefix in ("gt", "dt"):
        keep[prefix] = np.repeat(keep_img, data[f"{prefix}_counts"])
        keep[f"{prefix}_rle"] = np.repeat(keep[prefix], data[f"{prefix}_rle_len"])
    for name in STATES:
        group = name if name in keep else ("img" if name in IMAGE_STATES else name[:2])
        data[name] = data[name][keep[group]]
    return data


def _first_occurrences(data: dict[str, np.ndarray]) -> np.ndarray:
    """Bool [I]: False for a repeated image id; raises when a repeat has other ground truth."""
    gt_off = np.concatenate(([0], np.cumsum(data["gt_counts"])))
    rle_off = np.concatenate(([0], np.cumsum(data["gt_rle_len"])))

    def ground_truth(i: int) -> list[np.ndarray]:
        a, b = gt_off[i], gt_off[i + 1]
        keys = ("gt_boxes", "gt_labels", "gt_crowd", "gt_rle_len", "gt_kpts")
        fields = [data[k][a:b] for k in keys]
        return [data["img_sizes"][i], data["gt_rle"][rle_off[a] : rle_off[b]], *fields]

    keep = np.ones(data["img_ids"].size, dtype=bool)
    first: dict[int, int] = {}
    for i, image_id in enumerate(data["img_ids"].tolist()):
        j = first.setdefault(image_id, i)
        if j == i:
            continue
        if not all(np.array_equal(x, y) for x, y in zip(ground_truth(i), ground_truth(j))):
            raise DataError(
                f"COCOEvaluator: image id {image_id} was added twice with different ground "
                f"truth. Pass the dataset's own id of every image as image_ids (ids must be "
                f"unique)."
            )
        keep[i] = False
    return keep
