"""Metrics of top-down keypoint models: PCK, PCKh, NME and OKS AP on one stream of samples.

A top-down sample is one instance; its prediction and its ground truth arrive together, both
in the frame of the image on disk. ``TopDownKeypointMetrics`` feeds the metrics a dataset
calls for:

* ``"pck"``: PCK@``pck_alpha`` (0.2) normalised by the larger side of the instance's box
  (``BoxMaxSideNorm``, mmpose's ``bbox`` PCK);
* ``"pckh"``: PCKh@``pckh_alpha`` (0.5) with the head sizes of ``KeypointTargets.norm_size``
  (MPII: 0.6 x head-box diagonal);
* ``"nme"``: NME with ``norm_size`` (inter-ocular distance, box size), AUC and failure rate at
  ``nme_failure_thresh``;
* ``"oks"``: COCO keypoint AP (``KeypointOKS``): predictions and ground truth regrouped by
  image and evaluated by COCOeval with the dataset's OKS sigmas.

Samples whose ground truth has no labelled keypoint (crops around detections) add predictions
to OKS AP but no ground truth, and nothing to the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_seg.metrics.coco_eval import KEYPOINT_STAT_NAMES, accumulate
from lightning_seg.metrics.coco_records import keypoints_to_coco
from lightning_seg.metrics.keypoints import NME, PCK, BoxMaxSideNorm, PCKh
from lightning_seg.structures import KeypointPredictions, KeypointTargets

log = logging.getLogger("lightning_seg.metrics")

METRICS = ("pck", "pckh", "nme", "oks")


class GivenNorm:
    """A normaliser whose lengths are given: ``update(preds, target, boxes=norm)`` passes the
    per-instance ``Tensor[N]`` (``KeypointTargets.norm_size``) in place of boxes."""

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        if boxes is None or boxes.ndim != 1:
            raise ValueError("GivenNorm needs the per-instance lengths Tensor[N] as boxes=")
        return boxes.double()


class KeypointOKS(Metric):
    """COCO keypoint AP of top-down predictions (OKS; pycocotools semantics, faster-coco-eval).

    Rows arrive one instance at a time; ``compute`` regroups them by image, drops repeated
    rows (a DistributedSampler pads the last batch with repeated samples) and runs COCOeval.
    Keypoints are written in COCO's pixel-index convention (``keypoints_to_coco``), and a
    prediction's area is the extent of its keypoints, as pycocotools' ``loadRes`` does for the
    results files of ``lseg predict``: the numbers equal ``lseg-eval coco --iou-type keypoints``
    on those files (test against pycocotools).

    Args:
        sigmas: OKS sigma per keypoint (``DatasetInfo.keypoint_sigmas``).
        backend: ``"faster_coco_eval"`` or ``"pycocotools"``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, sigmas: Sequence[float], backend: str = "faster_coco_eval", **kwargs) -> None:
        super().__init__(**kwargs)
        if not sigmas:
            raise ValueError("OKS AP needs one sigma per keypoint (DatasetInfo.keypoint_sigmas)")
        self.sigmas = [float(s) for s in sigmas]
        self.backend = backend
        for name in ("gt_rows", "dt_rows"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[KeypointPredictions], targets: Sequence[KeypointTargets],
               image_ids: Sequence[int]) -> None:
        """Add samples: predictions and ground truth in the frame of the image on disk.

        Row layout (float64): ``image_id, instance id, x1, y1, x2, y2, area, H, W, score,
        K x (x, y, v)``.
        """
        k = len(self.sigmas)
        for pred, tgt, image_id in zip(preds, targets, image_ids):
            h, w = pred.image_size
            n = len(pred)
            if pred.keypoints.shape[1] != k or tgt.keypoints.shape[1] != k:
                raise ValueError(
                    f"image {image_id}: {pred.keypoints.shape[1]} predicted and "
                    f"{tgt.keypoints.shape[1]} ground-truth keypoints, {k} OKS sigmas"
                )
            ids = tgt.ids.double() if tgt.ids is not None else torch.full((len(tgt),), -1.0)
            if len(tgt):
                labelled = (tgt.keypoints[..., 2] > 0).any(-1).cpu()
                boxes = tgt.boxes.double().cpu() if tgt.boxes is not None else torch.zeros(len(tgt), 4)
                areas = tgt.areas.double().cpu() if tgt.areas is not None else (
                    (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
                rows = torch.cat([
                    torch.full((len(tgt), 1), float(image_id), dtype=torch.float64), ids.cpu()[:, None],
                    boxes, areas[:, None], torch.tensor([[h, w, 0.0]], dtype=torch.float64).expand(len(tgt), 3),
                    tgt.keypoints.double().cpu().reshape(len(tgt), -1),
                ], dim=1)[labelled]
                if len(rows):
                    self.gt_rows.append(rows.to(self.device))
            if n:
                boxes = pred.boxes.double().cpu() if pred.boxes is not None else torch.zeros(n, 4)
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                pid = ids.cpu()[:n] if len(ids) == n else torch.full((n,), -1.0, dtype=torch.float64)
                rows = torch.cat([
                    torch.full((n, 1), float(image_id), dtype=torch.float64), pid[:, None], boxes,
                    area[:, None], torch.tensor([[h, w]], dtype=torch.float64).expand(n, 2),
                    pred.scores.double().cpu()[:, None], pred.keypoints.double().cpu().reshape(n, -1),
                ], dim=1)
                self.dt_rows.append(rows.to(self.device))

    @staticmethod
    def _unique(rows: np.ndarray) -> np.ndarray:
        """Rows with repeats removed (first occurrence kept, order kept)."""
        if len(rows) == 0:
            return rows
        _, first = np.unique(rows, axis=0, return_index=True)
        return rows[np.sort(first)]

    def compute(self) -> dict[str, float]:
        """``{"AP", "AP50", "AP75", "APm", "APl", "AR", ...}`` (-1 without ground truth)."""
        def cat(state) -> np.ndarray:
            if isinstance(state, Tensor):
                return state.cpu().numpy()
            return torch.cat(state).cpu().numpy() if state else np.zeros((0, 10 + 3 * len(self.sigmas)))

        gt = self._unique(cat(self.gt_rows))
        dt = self._unique(cat(self.dt_rows))
        if len(gt) == 0:
            log.warning("KeypointOKS: no ground truth with labelled keypoints; OKS AP is -1 (crops "
                        "around detections are scored with lseg predict + lseg-eval coco)")
            return dict.fromkeys(KEYPOINT_STAT_NAMES, -1.0)
        k = len(self.sigmas)
        sizes = {}
        for rows in (gt, dt):
            for r in rows:
                sizes.setdefault(int(r[0]), (int(r[7]), int(r[8])))
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in sizes.items()]
        gt_kpts = keypoints_to_coco(gt[:, 10:].reshape(-1, k, 3), labelled_only=True).reshape(len(gt), -1)
        gt_anns = []
        for j, (r, kp) in enumerate(zip(gt, gt_kpts)):
            x1, y1, x2, y2 = r[2:6].tolist()
            gt_anns.append({
                "id": j + 1, "image_id": int(r[0]), "category_id": 1, "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(r[6]),
                "keypoints": kp.tolist(), "num_keypoints": int((kp[2::3] > 0).sum()),
            })
        dt_kpts = keypoints_to_coco(dt[:, 10:].reshape(-1, k, 3), labelled_only=False).reshape(len(dt), -1)
        dt_anns = []
        for j, (r, kp) in enumerate(zip(dt, dt_kpts)):
            # as pycocotools' loadRes for keypoint results: box and area from the keypoints
            x1, x2 = float(kp[0::3].min()), float(kp[0::3].max())
            y1, y2 = float(kp[1::3].min()), float(kp[1::3].max())
            dt_anns.append({
                "id": j + 1, "image_id": int(r[0]), "category_id": 1, "iscrowd": 0,
                "score": float(r[9]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "keypoints": kp.tolist(),
            })
        dataset = {"images": images, "categories": [{"id": 1, "name": "instance"}], "annotations": gt_anns}
        result = accumulate(dataset, dt_anns, "keypoints", backend=self.backend, kpt_sigmas=self.sigmas)
        return result.stats("keypoints")


class TopDownKeypointMetrics(nn.Module):
    """The metrics a keypoint dataset calls for, fed together (module docstring).

    Args:
        metrics: any of ``"pck"``, ``"pckh"``, ``"nme"``, ``"oks"``.
        num_keypoints: K.
        pck_alpha: PCK threshold (0.2 of the box's larger side).
        pckh_alpha: PCKh threshold (0.5 of the head size).
        nme_failure_thresh: T of NME's AUC@T and failure rate@T (0.08 for 300-W, 0.10 WFLW).
        kpt_sigmas: OKS sigmas (needed by ``"oks"``).
        keypoint_names: names for per-keypoint PCK.

    ``compute()`` returns flat names: ``pck``, ``pck_mean_over_keypoints``, ``pckh``, ``nme``,
    ``auc``, ``failure_rate``, ``oks/AP``, ``oks/AP50``... (those of the chosen metrics).
    """

    def __init__(
        self,
        metrics: Sequence[str],
        num_keypoints: int,
        pck_alpha: float = 0.2,
        pckh_alpha: float = 0.5,
        nme_failure_thresh: float = 0.08,
        kpt_sigmas: Sequence[float] | None = None,
        keypoint_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = [m for m in metrics if m not in METRICS]
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
        self.names = tuple(metrics)
        self.pck = PCK(num_keypoints, pck_alpha, BoxMaxSideNorm(), keypoint_names) if "pck" in metrics else None
        self.pckh = PCKh(num_keypoints, pckh_alpha, GivenNorm(), keypoint_names) if "pckh" in metrics else None
        self.nme = NME(GivenNorm(), nme_failure_thresh) if "nme" in metrics else None
        self.oks = None
        if "oks" in metrics:
            if not kpt_sigmas or len(kpt_sigmas) != num_keypoints:
                raise ValueError(
                    f"'oks' needs {num_keypoints} OKS sigmas (DatasetInfo.keypoint_sigmas), got "
                    f"{None if kpt_sigmas is None else len(kpt_sigmas)}"
                )
            self.oks = KeypointOKS(kpt_sigmas)

    def update(self, preds: Sequence[KeypointPredictions], targets: Sequence[KeypointTargets],
               image_ids: Sequence[int]) -> None:
        """Add samples (one instance each), both in the frame of the image on disk."""
        if len(preds) != len(targets) or len(preds) != len(image_ids):
            raise ValueError(f"{len(preds)} predictions, {len(targets)} targets, {len(image_ids)} ids")
        if self.oks is not None:
            self.oks.update(preds, targets, image_ids)
        pairs = [(p, t) for p, t in zip(preds, targets)
                 if len(t) and len(p) == len(t) and bool((t.keypoints[..., 2] > 0).any())]
        if not pairs:
            return
        pk = torch.cat([p.keypoints.detach().float().cpu() for p, _ in pairs])  # [N, K, 3]
        tk = torch.cat([t.keypoints.float().cpu() for _, t in pairs])  # [N, K, 3]
        if self.pck is not None:
            boxes = [t.boxes for _, t in pairs]
            if any(b is None for b in boxes):
                raise ValueError("PCK of the box needs KeypointTargets.boxes (the instance boxes)")
            self.pck.update(pk, tk, boxes=torch.cat([b.float().cpu() for b in boxes]))
        for name, metric in (("pckh", self.pckh), ("nme", self.nme)):
            if metric is None:
                continue
            norms = [t.norm_size for _, t in pairs]
            if any(n is None for n in norms):
                hint = ("MPII head sizes: set headbox_file of MPIIDataModule" if name == "pckh"
                        else "a face DataModule gives the NME normaliser")
                raise ValueError(
                    f"{name.upper()} needs KeypointTargets.norm_size ({hint}); this dataset does "
                    f"not provide it, use metrics=['pck'] or ['oks']"
                )
            metric.update(pk, tk, boxes=torch.cat([n.float().cpu() for n in norms]))

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pck is not None:
            r = self.pck.compute()
            out["pck"] = float(r["pck"])
            out["pck_mean_over_keypoints"] = float(r["pck_mean_over_keypoints"])
        if self.pckh is not None:
            r = self.pckh.compute()
            out["pckh"] = float(r["pck"])
            out["pckh_mean_over_keypoints"] = float(r["pck_mean_over_keypoints"])
        if self.nme is not None:
            r = self.nme.compute()
            out.update(nme=float(r["nme"]), auc=float(r["auc"]), failure_rate=float(r["failure_rate"]))
        if self.oks is not None:
            out.update({f"oks/{k}": float(v) for k, v in self.oks.compute().items()})
        return out

    def reset(self) -> None:
        for metric in (self.pck, self.pckh, self.nme, self.oks):
            if metric is not None:
                metric.reset()
