"""Video panoptic quality VPQ (Kim et al., "Video Panoptic Segmentation", CVPR 2020).

Follows the VPSNet evaluation (github.com/mcahny/vps, ``tools/eval_vpq.py``,
``vpq_compute_single_core``): for a window size of n annotated frames, every run of n
consecutive annotated frames of a video is one "window"; the frames of a window are stacked and
each segment id becomes a spatio-temporal tube (same id in several frames = one segment, so an
id switch of the prediction inside the window breaks the match). PQ's matching rules (IoU > 0.5,
void and crowd handling, see ``lightning_seg.metrics.panoptic``) are applied to the tubes of
every window; TP / FP / FN / IoU are summed over all windows of all videos, per window size.
A tube's category and crowd flag are those of its first frame in the window.

With annotations every ``frame_stride`` = 5 frames (Cityscapes-VPS), window sizes n = 1..4 give
the temporal spans ``k = (n - 1) * 5`` in {0, 5, 10, 15}; ``VPQ`` is the mean over k of the
per-k PQ (All, Things, Stuff separately), as the paper reports.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.data.io import DataError
from lightning_seg.metrics.panoptic import (
    PanopticCategories,
    PanopticCounts,
    _check_classes,
    _few,
    annotations_by_image,
    intersection_table,
    load_panoptic_segments,
    match_segments,
    pq_from_counts,
    read_json,
    segment_index,
)
from lightning_seg.structures import PanopticTargets

__all__ = ["VideoPanopticQualityMetric", "evaluate_vpq_files", "video_panoptic_counts"]


def _first_occurrence(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique keys, the position of each one's first occurrence, and each key's unique index."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    pos = torch.arange(keys.numel(), device=keys.device)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.int64, device=keys.device)
    first.scatter_reduce_(0, inverse, pos, reduce="amin")
    return uniq, first, inverse


def video_panoptic_counts(
    preds: list[PanopticTargets],
    targets: list[PanopticTargets],
    num_classes: int,
    window_frames: tuple[int, ...] = (1, 2, 3, 4),
    void_label: int = 0,
) -> list[PanopticCounts]:
    """Tube matching statistics of one video, one ``PanopticCounts`` per window size.

    Args:
        preds: predicted segments of each annotated frame, in temporal order; a segment id
            names the same predicted object in every frame.
        targets: ground-truth segments of the same frames.
        num_classes: K.
        window_frames: window sizes n, in annotated frames.
        void_label: segment id of void pixels.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predicted frames for {len(targets)} ground-truth frames")
    tables, gt_ids, pred_ids = [], [], []
    for f, (pred, target) in enumerate(zip(preds, targets)):
        if pred.segment_map.shape != target.segment_map.shape:
            raise ValueError(
                f"frame {f}: prediction is {tuple(pred.segment_map.shape)} but ground truth is "
                f"{tuple(target.segment_map.shape)}"
            )
        try:
            gi = segment_index(target.segment_map, target.ids, void_label)
            pi = segment_index(pred.segment_map, pred.ids, void_label).to(gi.device)
        except ValueError as exc:
            raise ValueError(f"frame {f}: {exc}") from None
        tables.append(intersection_table(gi, pi, len(target), len(pred)))
        gt_ids.append(target.ids.to(gi.device))
        pred_ids.append(pred.ids.to(gi.device))
    device = tables[0].device if tables else torch.device("cpu")
    results = []
    for n in window_frames:
        total = PanopticCounts.zeros(num_classes, device)
        for start in range(0, len(targets) - n + 1):
            frames = range(start, start + n)
            # tubes of the window: ids in first-occurrence order, with that frame's label
            g_keys = torch.cat([gt_ids[f] for f in frames])
            g_labels = torch.cat([targets[f].labels.to(device) for f in frames])
            g_crowd = torch.cat([targets[f].iscrowd.to(device=device, dtype=torch.bool) for f in frames])
            p_keys = torch.cat([pred_ids[f] for f in frames])
            p_labels = torch.cat([preds[f].labels.to(device) for f in frames])
            g_uniq, g_first, g_inv = _first_occurrence(g_keys)
            p_uniq, p_first, p_inv = _first_occurrence(p_keys)
            table = torch.zeros(g_uniq.numel() + 1, p_uniq.numel() + 1, dtype=torch.int64, device=device)
            g_off = p_off = 0
            for f in frames:
                ng, np_ = gt_ids[f].numel(), pred_ids[f].numel()
                zero = torch.zeros(1, dtype=torch.int64, device=device)
                rows = torch.cat([zero, g_inv[g_off : g_off + ng] + 1])  # frame row -> window row
                cols = torch.cat([zero, p_inv[p_off : p_off + np_] + 1])  # frame col -> window col
                table.index_put_((rows[:, None], cols[None, :]), tables[f], accumulate=True)
                g_off, p_off = g_off + ng, p_off + np_
            total = total + match_segments(
                table, g_labels[g_first], g_crowd[g_first], p_labels[p_first], num_classes, gt_order=g_first
            )
        results.append(total)
    return results


class VideoPanopticQualityMetric(Metric):
    """VPQ over windows of ``window_frames`` annotated frames (see the module docstring).

    ``update`` takes one whole video (all its annotated frames in order): windows never span
    two calls. Under DDP each process must therefore receive whole videos.

    Args:
        things: contiguous class indices of things.
        stuff: contiguous class indices of stuff.
        window_frames: window sizes in annotated frames (1, 2, 3, 4 in the paper).
        frame_stride: raw frames between two annotated frames, only used to name the window
            span ``k = (n - 1) * frame_stride`` in the result keys.
        class_names: optional class names.
        void_label: segment id of void pixels.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        things: list[int],
        stuff: list[int],
        window_frames: tuple[int, ...] = (1, 2, 3, 4),
        frame_stride: int = 5,
        class_names: list[str] | None = None,
        void_label: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = _check_classes(things, stuff)
        self.things = sorted(int(c) for c in things)
        self.stuff = sorted(int(c) for c in stuff)
        if not window_frames or min(window_frames) < 1:
            raise ValueError(f"window_frames must be positive window sizes, got {window_frames}")
        self.window_frames = tuple(int(n) for n in window_frames)
        self.spans = [(n - 1) * frame_stride for n in self.window_frames]
        self.class_names = class_names
        self.void_label = void_label
        known = torch.zeros(self.num_classes, dtype=torch.bool)
        known[self.things + self.stuff] = True
        self._known = known
        shape = (len(self.window_frames), self.num_classes)
        for name in ("iou_fixed", "tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_videos", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: list[PanopticTargets], targets: list[PanopticTargets]) -> None:
        """Add one video: its annotated frames in temporal order (see ``video_panoptic_counts``)."""
        for f, (p, t) in enumerate(zip(preds, targets)):
            for what, labels in (("ground-truth", t.labels), ("predicted", p.labels)):
                if labels.numel() and (
                    bool(((labels < 0) | (labels >= self.num_classes)).any())
                    or not bool(self._known.to(labels.device)[labels].all())
                ):
                    raise ValueError(
                        f"frame {f}: {what} labels {_few(labels)} include classes outside things/stuff"
                    )
        per_window = video_panoptic_counts(
            preds, targets, self.num_classes, self.window_frames, self.void_label
        )
        device = self.tp.device
        for w, counts in enumerate(per_window):
            self.iou_fixed[w] += counts.iou_fixed.to(device)
            self.tp[w] += counts.tp.to(device)
            self.fp[w] += counts.fp.to(device)
            self.fn[w] += counts.fn.to(device)
        self.num_videos += 1

    def compute(self) -> dict[str, Tensor]:
        """``vpq, vpq_th, vpq_st`` (mean over window spans k) and per k ``pq_k{k}, sq_k{k},
        rq_k{k}, n_k{k}`` with ``_th`` / ``_st`` variants (e.g. ``pq_th_k5``)."""
        out: dict[str, Tensor] = {}
        per_group = defaultdict(list)
        for w, k in enumerate(self.spans):
            counts = PanopticCounts(self.iou_fixed[w], self.tp[w], self.fp[w], self.fn[w])
            res = pq_from_counts(counts, self.things, self.stuff)
            for suffix in ("", "_th", "_st"):
                for m in ("pq", "sq", "rq", "n"):
                    out[f"{m}{suffix}_k{k}"] = res[f"{m}{suffix}"]
                per_group[suffix].append(res[f"pq{suffix}"])
        for suffix, values in per_group.items():
            out[f"vpq{suffix}"] = torch.stack(values).mean()
        out["num_videos"] = self.num_videos
        return out


def evaluate_vpq_files(
    gt_json: str | os.PathLike,
    gt_folder: str | os.PathLike,
    pred_json: str | os.PathLike,
    pred_folder: str | os.PathLike,
    window_frames: tuple[int, ...] = (1, 2, 3, 4),
    frame_stride: int = 5,
) -> dict:
    """VPQ of per-frame COCO panoptic PNGs.

    File format (COCO panoptic, one PNG per annotated frame, id = R + 256 G + 256^2 B):

    * ground-truth JSON: ``categories`` (``id``, ``name``, ``isthing``); ``images`` with ``id``,
      ``video_id`` and ``frame_id`` (any sortable number: frames of a video are ordered by it and
      consecutive entries are consecutive annotated frames); ``annotations`` with ``image_id``,
      ``file_name``, ``segments_info`` (``id``, ``category_id``, ``iscrowd``);
    * prediction JSON: ``annotations`` with the same layout, one per ground-truth image;
    * in both, a segment id names the same object in every frame of its video.

    Returns:
        ``{"vpq": {"All", "Things", "Stuff"}, "per_k": {k: {"All"|"Things"|"Stuff": {"pq",
        "sq", "rq", "n"}}}, "num_videos", "num_frames"}``.

    Raises:
        DataError: malformed JSON, images without ``video_id`` / ``frame_id``, missing
            predictions, PNG/JSON disagreements, unknown categories, size mismatches.
    """
    gt_data = read_json(gt_json)
    pred_data = read_json(pred_json)
    categories = PanopticCategories.from_json(gt_data, gt_json)
    gt_anns = annotations_by_image(gt_data, gt_json)
    pred_anns = annotations_by_image(pred_data, pred_json)
    images = gt_data.get("images")
    if not isinstance(images, list):
        raise DataError(f"{gt_json}: no 'images' list; VPQ needs images with 'video_id' and 'frame_id'.")
    videos: dict = defaultdict(list)
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not {"id", "video_id", "frame_id"} <= set(img):
            raise DataError(
                f"{gt_json}: images[{i}] needs 'id', 'video_id' and 'frame_id' (the annotated frame's "
                f"position in its video), got {str(img)[:120]}"
            )
        if img["id"] not in gt_anns:
            raise DataError(f"{gt_json}: image {img['id']} has no entry in 'annotations'.")
        videos[img["video_id"]].append((img["frame_id"], img["id"]))
    metric = VideoPanopticQualityMetric(
        categories.things, categories.stuff, window_frames=window_frames, frame_stride=frame_stride
    )
    num_frames = 0
    for video_id, frames in videos.items():
        frames.sort(key=lambda x: x[0])
        preds, targets = [], []
        for _, image_id in frames:
            if image_id not in pred_anns:
                raise DataError(f"{pred_json}: no prediction for image_id {image_id} (video {video_id}).")
            target = load_panoptic_segments(gt_folder, gt_anns[image_id], categories, gt_json, False)
            pred = load_panoptic_segments(pred_folder, pred_anns[image_id], categories, pred_json, True)
            if pred.image_size != target.image_size:
                raise DataError(
                    f"{pred_json}: image_id {image_id}: predicted PNG is {pred.image_size} (H, W), the "
                    f"ground truth {target.image_size}; predictions must be at the original size."
                )
            preds.append(pred)
            targets.append(target)
        metric.update(preds, targets)
        num_frames += len(frames)
    res = metric.compute()
    out: dict = {"vpq": {}, "per_k": {}}
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        out["vpq"][name] = float(res[f"vpq{suffix}"])
    for k in metric.spans:
        out["per_k"][k] = {
            name: {
                m: (int if m == "n" else float)(res[f"{m}{suffix}_k{k}"]) for m in ("pq", "sq", "rq", "n")
            }
            for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
        }
    out["num_videos"] = len(videos)
    out["num_frames"] = num_frames
    return out

