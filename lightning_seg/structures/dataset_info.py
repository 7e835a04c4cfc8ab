"""Facts about a dataset that models need: classes, thing/stuff split, keypoints.

A DataModule exposes one ``DatasetInfo``. ``lseg`` fills every constructor argument named in
``DATASET_FACTS`` that an experiment leaves unset (None), at any depth of the model (the task,
its network, the network's heads, losses...), so no number is typed twice and a part that does
not take a fact never receives it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class DatasetInfo:
    """Class and keypoint metadata of a dataset.

    Attributes:
        class_names: one name per contiguous class index ``0..K-1``.
        category_ids: the dataset's own id for each contiguous index (COCO ids are
            non-contiguous: 1..90). Defaults to ``0..K-1``.
        isthing: per class, True for countable things, False for stuff. Defaults to all True.
        ignore_index: label value of void / unlabelled pixels in semantic maps.
        keypoint_names: names of the K keypoints of one instance (empty when none).
        keypoint_flip_map: pairs ``(i, j)`` of keypoint indices swapped by a horizontal flip.
        skeleton: pairs of keypoint indices drawn as limbs.
        keypoint_sigmas: per-keypoint OKS sigmas (COCO's 17 for people).
        palette: one RGB colour per class for overlays (generated when empty).
    """

    class_names: list[str]
    category_ids: list[int] = field(default_factory=list)
    isthing: list[bool] = field(default_factory=list)
    ignore_index: int = 255
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_flip_map: list[tuple[int, int]] = field(default_factory=list)
    skeleton: list[tuple[int, int]] = field(default_factory=list)
    keypoint_sigmas: list[float] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if not self.category_ids:
            self.category_ids = list(range(k))
        if not self.isthing:
            self.isthing = [True] * k
        if len(self.category_ids) != k or len(self.isthing) != k:
            raise ValueError(
                f"category_ids ({len(self.category_ids)}) and isthing ({len(self.isthing)}) "
                f"must have one entry per class ({k})"
            )
        if len(set(self.category_ids)) != k:
            raise ValueError("category_ids must be unique")
        if not self.palette:
            self.palette = default_palette(k)
        n = len(self.keypoint_names)
        for i, j in self.keypoint_flip_map:
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"keypoint_flip_map pair ({i}, {j}) is out of range for {n} keypoints")

    def as_config(self) -> dict[str, object]:
        """The fields as a config holds them, those ``__post_init__`` generates left empty.

        Building from this dict gives back an equal ``DatasetInfo``. ``lseg`` writes the info into
        every config it parses, saves and logs, and jsonargparse type-checks each element: LVIS's
        1203-class palette alone costs seconds at every pass.
        """
        config = asdict(self)
        k = self.num_classes
        if self.category_ids == list(range(k)):
            config["category_ids"] = []
        if all(self.isthing):
            config["isthing"] = []
        if [tuple(c) for c in self.palette] == default_palette(k):
            config["palette"] = []
        return config

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def thing_classes(self) -> list[int]:
        return [i for i, t in enumerate(self.isthing) if t]

    @property
    def stuff_classes(self) -> list[int]:
        return [i for i, t in enumerate(self.isthing) if not t]

    @property
    def id_to_index(self) -> dict[int, int]:
        """Dataset category id -> contiguous index."""
        return {c: i for i, c in enumerate(self.category_ids)}

    def flip_permutation(self) -> list[int]:
        """Index permutation that maps keypoints of an image to those of its mirror."""
        perm = list(range(self.num_keypoints))
        for i, j in self.keypoint_flip_map:
            perm[i], perm[j] = j, i
        return perm


#: Constructor arguments filled from the DataModule's ``DatasetInfo`` when left unset (None).
DATASET_FACTS: tuple[str, ...] = (
    "num_classes",
    "num_keypoints",
    "keypoint_flip_map",
    "ignore_index",
    "thing_classes",
    "stuff_classes",
    "info",
)


def dataset_facts(info: DatasetInfo) -> dict[str, object]:
    """The value of every name of ``DATASET_FACTS`` for a dataset."""
    return {
        "num_classes": info.num_classes,
        "num_keypoints": info.num_keypoints,
        "keypoint_flip_map": [tuple(p) for p in info.keypoint_flip_map],
        "ignore_index": info.ignore_index,
        "thing_classes": info.thing_classes,
        "stuff_classes": info.stuff_classes,
        "info": info,
    }


def require_fact(value, name: str, owner: str):
    """``value`` when set; else a clear error (a dataset fact that nobody filled in)."""
    if value is None:
        raise ValueError(
            f"{owner}: {name} is not set. Under `lseg` it is filled from the DataModule; in "
            f"Python pass {name}=..."
        )
    return value


def default_palette(num_classes: int, first: int = 1) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours: the PASCAL VOC bit-interleaving colour map.

    ``first=1`` (default) skips VOC's black so that class 0 stays visible in overlays;
    ``first=0`` gives VOC's own map (index 0 black).
    """
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + first
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


# Checkpoints keep the DatasetInfo a task was built with (hyperparameters): allow it in
# ``torch.load(weights_only=True)``, which Lightning uses to resume and load checkpoints.
torch.serialization.add_safe_globals([DatasetInfo])
