"""Joint augmentation of a ``Sample`` with albumentations 2.0.x.

One transform moves the image and every target together: instance masks, boxes, keypoints and
labels, the semantic map and the panoptic segment map.

Conventions (read before writing a model or a metric that depends on them):

- **Instances are tracked by index.** Boxes travel with an index label field and keypoints with
  their flat index, so an instance removed by a crop loses its mask, box, label, crowd flag,
  track id and keypoints together (``InstanceTargets.select``). When masks exist, boxes are
  recomputed from the transformed masks (tight after crop / rotation) and an instance whose mask
  became empty is dropped. Nothing is counted: this is augmentation, not data loss.
- **Boxes** are x1y1x2y2 in continuous pixel coordinates: a mask pixel ``(i, j)`` spans
  ``[j, j + 1] x [i, i + 1]``, so a box from a mask is ``(min_x, min_y, max_x + 1, max_y + 1)``
  (as COCO / ``pycocotools.mask.toBbox``).
- **Keypoints** are in the same continuous frame as boxes (and the synthetic world): the
  centre of pixel ``(i, j)`` is ``(x, y) = (j + 0.5, i + 0.5)``, so a horizontal flip maps
  ``x -> W - x``. Albumentations treats keypoints as pixel indices (flip ``x -> W - 1 - x``),
  so they are shifted by -0.5 before and +0.5 after: flips, transposes, 90-degree rotations,
  crops, pads and rotations are then exact. Albumentations' resizes scale ``x`` by ``s``
  directly, which leaves an error of ``0.5 * (s - 1)`` output pixels per resize (-0.5 px for a
  2x upscale, +0.25 px for a 0.5x downscale). A keypoint outside the image
  (``not 0 <= x < W`` or ``not 0 <= y < H``) gets visibility 0, and every visibility-0
  keypoint is written as ``(0, 0, 0)``.
- **Reflections swap left/right keypoints** through the flip permutation
  (``DatasetInfo.flip_permutation()``): a horizontal flip, a vertical flip, a transpose or a
  reflecting ``D4`` element each mirror the image, and an odd number of them swaps the keypoints.
  The applied transforms are read from ``Compose(save_applied_params=True)``.
- **Label maps**: semantic maps and panoptic maps are resampled with nearest interpolation
  (forced for every transform). Areas created by padding / rotation get ``ignore_index`` in the
  semantic map and 0 (void) in the panoptic map. This works by shifting the maps by one before
  the transform (so albumentations' ``fill_mask=0`` means "no label") and back afterwards: leave
  ``fill_mask`` at 0 in every transform (a different value raises).
- **Random state**: a seed makes the stream reproducible. All albumentations transforms share one
  generator pair owned by this object (albumentations' own seeding gives every child an identical
  stream). Inside a DataLoader worker the stream is re-seeded from the worker's torch seed (mixed
  with ``seed``), so workers never repeat each other's augmentations.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from dataclasses import replace

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from lightning_seg.structures import DatasetInfo, InstanceTargets, PanopticTargets, Sample

log = logging.getLogger("lightning_seg.data")
# D4 group elements that mirror the image (the others are rotations).
_D4_REFLECTIONS = frozenset({"h", "v", "t", "hvt"})
_ALWAYS_REFLECTIONS = frozenset({"HorizontalFlip", "VerticalFlip", "Transpose"})
_MAX_LABEL_CODE = np.iinfo(np.uint16).max


def is_reflection(name: str, params: dict) -> bool:
    """Whether an applied albumentations transform mirrors the image (reverses handedness).

    Args:
        name: class name of the applied transform (as in ``applied_transforms``).
        params: its applied parameters.
    """
    if name in _ALWAYS_REFLECTIONS:
        return True
    if name in ("D4", "SquareSymmetry"):
        return str(params.get("group_element")) in _D4_REFLECTIONS
    return False


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight boxes around bitmasks.

    Args:
        masks: ``Tensor[N, H, W]`` bool.

    Returns:
        ``Tensor[N, 4]`` float32 x1y1x2y2 with ``x2 = max_x + 1``; all zeros for an empty mask.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4)
    cols = masks.any(dim=1)  # [N, W]
    rows = masks.any(dim=2)  # [N, H]
    x1 = cols.int().argmax(dim=1)
    x2 = w - cols.flip(1).int().argmax(dim=1)
    y1 = rows.int().argmax(dim=1)
    y2 = h - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # [N, 4]
    return boxes * cols.any(dim=1, keepdim=True)


def _iter_transforms(transforms: Sequence) -> list:
    """Every transform in a (possibly nested) list of transforms and composes."""
    found = []
    for t in transforms:
        found.append(t)
        if isinstance(t, A.BaseCompose):
            found.extend(_iter_transforms(t.transforms))
    return found


def _check_fill_mask(transforms: Sequence) -> None:
    for t in _iter_transforms(transforms):
        fill_mask = getattr(t, "fill_mask", 0)
        values = np.atleast_1d(np.asarray(fill_mask if fill_mask is not None else 0, dtype=float))
        if np.any(values != 0):
            raise ValueError(
                f"{type(t).__name__}(fill_mask={fill_mask}): leave fill_mask at 0. "
                f"AlbumentationsTransform fills padded/rotated areas itself: ignore_index in "
                f"semantic maps, 0 (void) in panoptic maps, background in instance masks."
            )


class AlbumentationsTransform:
    """Apply a list of albumentations transforms jointly to a ``Sample``.

    YAML example::

        train_transform:
          class_path: lightning_seg.data.transforms.AlbumentationsTransform
          init_args:
            transforms:
              - class_path: albumentations.HorizontalFlip
                init_args: {p: 0.5}
              - class_path: albumentations.RandomCrop
                init_args: {height: 512, width: 512, pad_if_needed: true}

    Args:
        transforms: albumentations transforms (or composes such as ``OneOf``), applied in order.
            Keep ``fill_mask`` at 0 (see module docstring).
        flip_permutation: keypoint index permutation applied after a reflection
            (``DatasetInfo.flip_permutation()``). None: taken from the dataset when a DataModule
            calls ``bind(info)``; an unbound transform with None raises when it mirrors keypoints.
        ignore_index: semantic label of padded / rotated-in areas. None: taken from ``bind(info)``,
            else 255.
        seed: seed of the random stream; None draws fresh entropy.
    """

    def __init__(
        self,
        transforms: Sequence[A.BasicTransform | A.BaseCompose] = (),
        flip_permutation: list[int] | None = None,
        ignore_index: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.transforms = list(transforms)
        _check_fill_mask(self.transforms)
        self.flip_permutation = None if flip_permutation is None else list(flip_permutation)
        self.ignore_index = ignore_index
        self.seed = seed
        self._bound = False
        with warnings.catch_warnings():  # "processor for bboxes but no transform": expected
            warnings.filterwarnings("ignore", message="Got processor for", category=UserWarning)
            self.compose = self._make_compose()
        self._worker_seed: int | None = None
        self._set_rng(seed)

    def _make_compose(self) -> A.Compose:
        return A.Compose(
            self.transforms,
            bbox_params=A.BboxParams(
                format="pascal_voc", label_fields=["box_index"], clip=True, filter_invalid_bboxes=True
            ),
            keypoint_params=A.KeypointParams(
                format="xy", label_fields=["keypoint_index"], remove_invisible=False
            ),
            additional_targets={"semantic": "mask", "panoptic": "mask"},
            mask_interpolation=cv2.INTER_NEAREST,
            save_applied_params=True,
        )

    # ----------------------------------------------------------------------------- random state
    def _set_rng(self, seed: int | Sequence[int] | None) -> None:
        seq = np.random.SeedSequence(seed)
        self._np_rng = np.random.default_rng(seq)
        self._py_rng = random.Random(int(seq.generate_state(1, dtype=np.uint64)[0]))
        self.compose.set_random_state(self._np_rng, self._py_rng)

    def _reseed_in_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or self._worker_seed == info.seed:
            return
        self._worker_seed = info.seed
        entropy = [info.seed % 2**63] if self.seed is None else [self.seed, info.seed % 2**63]
        self._set_rng(entropy)

    def _get_state(self) -> tuple:
        return self._np_rng.bit_generator.state, self._py_rng.getstate()

    def _put_state(self, state: tuple) -> None:
        self._np_rng.bit_generator.state = state[0]
        self._py_rng.setstate(state[1])

    # ------------------------------------------------------------------------------ dataset facts
    def bind(self, info: DatasetInfo) -> AlbumentationsTransform:
        """Take the flip permutation and ignore index from the dataset unless set explicitly."""
        if self.flip_permutation is None:
            self.flip_permutation = info.flip_permutation()
        if self.ignore_index is None:
            self.ignore_index = info.ignore_index
        self._bound = True
        return self

    # ---------------------------------------------------------------------------------- calling
    def __call__(self, sample: Sample) -> Sample:
        """Augment one sample. Returns a new ``Sample`` (the input is not modified)."""
        self._reseed_in_worker()
        return self._apply(sample)

    def apply_clip(self, samples: Sequence[Sample]) -> list[Sample]:
        """Augment the frames of a video clip with the same random parameters.

        The random state is rewound before each frame, so frames of equal size get the same
        crop / flip / colour change (transforms whose parameters depend on the targets, such as
        ``BBoxSafeRandomCrop``, may still differ per frame).
        """
        self._reseed_in_worker()
        state = self._get_state()
        out = []
        for sample in samples:
            self._put_state(state)
            out.append(self._apply(sample))
        return out

    def _apply(self, sample: Sample) -> Sample:
        image = sample.image.permute(1, 2, 0).contiguous().numpy()  # [3, H, W] -> [H, W, 3]
        data: dict = {"image": image}
        inst = sample.instances
        n = 0 if inst is None else len(inst)
        num_kp = 0
        if inst is not None and inst.masks is not None and n > 0:
            data["masks"] = inst.masks.numpy().astype(np.uint8)  # [N, H, W]
        boxes = np.zeros((0, 4), np.float32) if inst is None else inst.boxes.numpy().astype(np.float32)
        data["bboxes"] = boxes
        data["box_index"] = np.arange(len(boxes))
        if inst is not None and inst.keypoints is not None:
            num_kp = inst.keypoints.shape[1]
            # continuous -> albumentations' pixel-index convention (module docstring)
            data["keypoints"] = inst.keypoints[..., :2].reshape(-1, 2).numpy().astype(np.float32) - 0.5
        else:
            data["keypoints"] = np.zeros((0, 2), np.float32)
        data["keypoint_index"] = np.arange(len(data["keypoints"]))
        if sample.semantic is not None:
            data["semantic"] = self._encode_semantic(sample)
        if sample.panoptic is not None:
            data["panoptic"] = _encode_panoptic(sample.panoptic, sample.meta.file_name)

        out = self.compose(**data)

        new_image = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)  # [3, H', W']
        new_size = (int(new_image.shape[1]), int(new_image.shape[2]))
        mirrored = sum(is_reflection(name, p) for name, p in out["applied_transforms"]) % 2 == 1
        instances = None
        if inst is not None:
            instances = self._instances_after(inst, out, new_size, num_kp, mirrored)
        semantic = None if sample.semantic is None else self._decode_semantic(out["semantic"])
        panoptic = None if sample.panoptic is None else _decode_panoptic(sample.panoptic, out["panoptic"])
        return Sample(
            image=new_image.contiguous(),
            meta=sample.meta,
            instances=instances,
            semantic=semantic,
            panoptic=panoptic,
        )

    # ---------------------------------------------------------------------------------- targets
    def _instances_after(
        self, inst: InstanceTargets, out: dict, size: tuple[int, int], num_kp: int, mirrored: bool
    ) -> InstanceTargets:
        n = len(inst)
        h, w = size
        # Boxes that albumentations kept, by original instance index.
        box_kept = torch.zeros(n, dtype=torch.bool)
        boxes = torch.zeros(n, 4)
        kept_index = torch.as_tensor(np.asarray(out["box_index"]), dtype=torch.int64)
        if len(kept_index):
            box_kept[kept_index] = True
            boxes[kept_index] = torch.as_tensor(np.asarray(out["bboxes"])[:, :4], dtype=torch.float32)
        masks = None
        keep = box_kept
        if inst.masks is not None:
            if n > 0:
                masks = torch.from_numpy(np.ascontiguousarray(out["masks"])).bool()  # [N, H', W']
            else:
                masks = torch.zeros(0, h, w, dtype=torch.bool)
            nonempty = masks.flatten(1).any(dim=1)
            was_empty = ~inst.masks.flatten(1).any(dim=1)
            # The mask decides; an instance annotated with an empty mask follows its box.
            keep = nonempty | (was_empty & box_kept)
            boxes = torch.where(nonempty[:, None], boxes_from_masks(masks), boxes)
        keypoints = None
        if inst.keypoints is not None:
            keypoints = self._keypoints_after(inst.keypoints, out, size, num_kp, mirrored)
        moved = replace(inst, boxes=boxes, image_size=size, masks=masks, keypoints=keypoints)
        return moved.select(keep)

    def _keypoints_after(
        self, keypoints: Tensor, out: dict, size: tuple[int, int], num_kp: int, mirrored: bool
    ) -> Tensor:
        n = keypoints.shape[0]
        h, w = size
        flat = torch.zeros(n * num_kp, 3)
        vis = keypoints[..., 2].reshape(-1).clone().float()  # [N*K]
        index = torch.as_tensor(np.asarray(out["keypoint_index"]), dtype=torch.int64)
        present = torch.zeros(n * num_kp, dtype=torch.bool)
        if len(index):
            xy = torch.as_tensor(np.asarray(out["keypoints"])[:, :2], dtype=torch.float32)
            flat[index, :2] = xy + 0.5  # back to continuous coordinates
            present[index] = True
        x, y = flat[:, 0], flat[:, 1]
        inside = present & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        flat[:, 2] = torch.where(inside, vis, torch.zeros_like(vis))
        flat[flat[:, 2] <= 0] = 0.0
        result = flat.reshape(n, num_kp, 3)  # [N*K, 3] -> [N, K, 3]
        if mirrored and num_kp > 0:
            perm = self.flip_permutation
            if perm is None:
                if not self._bound:
                    raise ValueError(
                        "a reflection (flip) was applied to keypoints but AlbumentationsTransform "
                        "has no flip_permutation: pass flip_permutation=info.flip_permutation() or "
                        "let the DataModule bind the transform to its DatasetInfo."
                    )
                perm = list(range(num_kp))
            if len(perm) != num_kp:
                raise ValueError(
                    f"flip_permutation has {len(perm)} entries but instances have {num_kp} keypoints"
                )
            result = result[:, torch.as_tensor(perm, dtype=torch.int64)]
        return result

    def _encode_semantic(self, sample: Sample) -> np.ndarray:
        sem = sample.semantic
        if sem.numel() and (int(sem.min()) < -1 or int(sem.max()) + 1 > _MAX_LABEL_CODE):
            raise ValueError(
                f"{sample.meta.file_name}: semantic labels must lie in [-1, {_MAX_LABEL_CODE - 1}], "
                f"got [{int(sem.min())}, {int(sem.max())}]"
            )
        return (sem + 1).numpy().astype(np.uint16)  # 0 now means "no label"

    def _decode_semantic(self, code: np.ndarray) -> Tensor:
        ignore = 255 if self.ignore_index is None else self.ignore_index
        sem = torch.from_numpy(np.ascontiguousarray(code).astype(np.int64)) - 1
        sem[sem < 0] = ignore
        return sem


def _encode_panoptic(pan: PanopticTargets, file_name: str) -> np.ndarray:
    """Segment map -> ``uint16`` codes: 0 void, ``s + 1`` for segment ``pan.ids[s]``."""
    if len(pan) + 1 > _MAX_LABEL_CODE:
        raise ValueError(f"{file_name}: {len(pan)} panoptic segments, at most {_MAX_LABEL_CODE - 1}")
    ids = pan.ids.to(torch.int64)
    order = torch.argsort(ids)
    sorted_ids = ids[order]
    seg = pan.segment_map.to(torch.int64)
    pos = torch.searchsorted(sorted_ids, seg).clamp(max=max(len(ids) - 1, 0))  # [H, W]
    if len(ids):
        found = (sorted_ids[pos] == seg) & (seg != 0)
        code = torch.where(found, order[pos] + 1, torch.zeros_like(seg))
    else:
        code = torch.zeros_like(seg)
    return code.numpy().astype(np.uint16)


def _decode_panoptic(pan: PanopticTargets, code: np.ndarray) -> PanopticTargets:
    code_t = torch.from_numpy(np.ascontiguousarray(code).astype(np.int64))
    lut = torch.cat([torch.zeros(1, dtype=torch.int64), pan.ids.to(torch.int64)])
    segment_map = lut[code_t]
    present = torch.zeros(len(pan) + 1, dtype=torch.bool)
    present[code_t.unique()] = True
    keep = present[1:] & (pan.ids != 0)
    return PanopticTargets(
        segment_map=segment_map,
        ids=pan.ids[keep],
        labels=pan.labels[keep],
        isthing=pan.isthing[keep],
        iscrowd=pan.iscrowd[keep],
    )


class TrainTransform(AlbumentationsTransform):
    """The usual training augmentation: random scale, crop or fit, horizontal flip, colour.

    YAML: ``class_path: lightning_seg.data.transforms.TrainTransform`` with
    ``init_args: {size: [512, 1024], scale_range: [0.5, 2.0]}``.

    Args:
        size: ``(H, W)``. With ``crop`` the scaled image is padded (if smaller) and randomly
            cropped to exactly this size (the semantic-segmentation recipe); without ``crop``
            the image is first resized to fit inside it, keeping the aspect ratio, then scaled
            (multi-scale training: sizes vary and the collate pads). None: no resize or crop.
        scale_range: range of the random scale factor; ``(1, 1)`` disables it.
        hflip_prob: probability of a horizontal flip (keypoints swap left/right).
        crop: random crop to ``size`` (True) or fit inside ``size`` (False).
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables).
        flip_permutation, ignore_index, seed: see ``AlbumentationsTransform``.
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        crop: bool = True,
        color_jitter: float = 0.0,
        flip_permutation: list[int] | None = None,
        ignore_index: int | None = None,
        seed: int | None = None,
    ) -> None:
        ops: list = []
        if size is not None and not crop:
            ops.append(A.LongestMaxSize(max_size_hw=tuple(size), p=1.0))
        lo, hi = scale_range
        if (lo, hi) != (1.0, 1.0):
            ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0))
        if size is not None and crop:
            ops.append(A.RandomCrop(height=size[0], width=size[1], pad_if_needed=True, p=1.0))
        if hflip_prob > 0:
            ops.append(A.HorizontalFlip(p=hflip_prob))
        if color_jitter > 0:
            ops.append(
                A.ColorJitter(
                    brightness=color_jitter,
                    contrast=color_jitter,
                    saturation=color_jitter,
                    hue=0.0,
                    p=1.0,
                )
            )
        super().__init__(ops, flip_permutation, ignore_index, seed)


class EvalTransform(AlbumentationsTransform):
    """Deterministic evaluation transform: optionally fit the image inside ``size``.

    Args:
        size: ``(H, W)`` to fit the image inside (aspect ratio kept); None keeps the image as is.
            Models map predictions back to ``meta.orig_size``.
        ignore_index: see ``AlbumentationsTransform``.
    """

    def __init__(self, size: tuple[int, int] | None = None, ignore_index: int | None = None) -> None:
        ops = [] if size is None else [A.LongestMaxSize(max_size_hw=tuple(size), p=1.0)]
        super().__init__(ops, flip_permutation=None, ignore_index=ignore_index, seed=0)


class LimitSize(AlbumentationsTransform):
    """Shrink an image (and its targets) whose longer side exceeds ``max_size``; smaller
    images pass unchanged (never enlarged).

    For inference on arbitrary images (``SegDataModule.predict_max_size``): an 8000 x 8000
    photo would not fit in memory in a backbone. ``meta.orig_size`` keeps the size on disk, so
    the tasks map predictions back to it (semantic maps are resized to ``orig_size``, instance
    boxes and masks are scaled to it). Area interpolation (anti-aliased) for the image,
    nearest for label maps. The first resize in each process is logged (INFO), later ones
    at DEBUG level; ``num_resized`` counts them in this process.

    Args:
        max_size: largest allowed height and width, in pixels.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self.num_resized = 0
        ops = [A.LongestMaxSize(max_size=self.max_size, interpolation=cv2.INTER_AREA, p=1.0)]
        super().__init__(ops, flip_permutation=None, ignore_index=None, seed=0)

    def _apply(self, sample: Sample) -> Sample:
        h, w = sample.image_size
        if max(h, w) <= self.max_size:
            return sample
        out = super()._apply(sample)
        self.num_resized += 1
        log.log(
            logging.INFO if self.num_resized == 1 else logging.DEBUG,
            "%s: %dx%d (h x w) resized to %dx%d for inference (longer side at most %d; "
            "predictions are mapped back to the original size). Further resizes are logged "
            "at DEBUG level.", sample.meta.file_name, h, w, *out.image_size, self.max_size,
        )
        return out


class ChainTransform:
    """Apply transforms one after the other (None entries are left out); ``bind`` and
    ``apply_clip`` are passed on to each."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = [t for t in transforms if t is not None]

    def bind(self, info: DatasetInfo) -> ChainTransform:
        for t in self.transforms:
            bind = getattr(t, "bind", None)
            if bind is not None:
                bind(info)
        return self

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def apply_clip(self, samples: Sequence[Sample]) -> list[Sample]:
        out = list(samples)
        for t in self.transforms:
            apply_clip = getattr(t, "apply_clip", None)
            out = apply_clip(out) if apply_clip else [t(s) for s in out]
        return out


def train_transform(**kwargs) -> TrainTransform:
    """``TrainTransform(**kwargs)`` (for Python code that prefers a builder function)."""
    return TrainTransform(**kwargs)


def eval_transform(**kwargs) -> EvalTransform:
    """``EvalTransform(**kwargs)``."""
    return EvalTransform(**kwargs)
