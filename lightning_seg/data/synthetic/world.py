"""Writing a shapes world to disk in the formats of real datasets (see the package docstring)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from lightning_seg.constants import COCO_KEYPOINT_OFFSET
from lightning_seg.data.io import DataError
from lightning_seg.data.synthetic.categories import (
    GENERATOR_VERSION,
    KEYPOINT_NAMES,
    PALETTE,
    SKELETON,
    STUFF_IDS,
    STUFF_NAMES,
    THING_IDS,
    THING_NAMES,
    flip_pairs_by_name,
)
from lightning_seg.data.synthetic.coco import (
    mask_bbox,
    mask_to_polygons,
    rle_compressed,
    rle_uncompressed,
)
from lightning_seg.data.synthetic.scene import (
    RLE,
    RLE_LIST,
    Layer,
    Scene,
    SceneParams,
    sample_image_scene,
    sample_video_scenes,
)

#: Split name -> code mixed into every item's random seed.
SPLITS: dict[str, int] = {"train": 0, "val": 1}
#: Panoptic segment id = ``category_id * SEGMENT_ID_BASE + n`` with n the instance number in
#: the image (1, 2, ... in depth order), the track id in videos, and 0 for stuff. Ids above
#: 65535 use the blue channel of the id PNG, as real COCO ids do.
SEGMENT_ID_BASE = 100_000
MANIFEST = "world.json"


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a generated world (stored in ``world.json``).

    Attributes:
        num_images: train images (train videos in video mode).
        num_val: val images (or videos).
        seed: the world's random seed.
        height: image height (the mean height when ``vary_size``).
        width: image width (the mean width when ``vary_size``).
        vary_size: draw each image's height and width independently in 0.75..1.25 x the size.
        video: write video sequences instead of still images.
        num_frames: frames per video.
        scene: how objects are sampled.
    """

    num_images: int
    num_val: int
    seed: int = 0
    height: int = 128
    width: int = 160
    vary_size: bool = False
    video: bool = False
    num_frames: int = 8
    scene: SceneParams = field(default_factory=SceneParams)

    def __post_init__(self) -> None:
        if self.num_images < 0 or self.num_val < 0 or self.seed < 0:
            raise ValueError("num_images, num_val and seed must be >= 0")
        if min(self.height, self.width) < 16 or self.num_frames < 1 or self.scene.max_objects < 1:
            raise ValueError("need height, width >= 16, num_frames >= 1 and max_objects >= 1")

    def split_size(self, split: str) -> int:
        return self.num_images if split == "train" else self.num_val

    def item_rng(self, split: str, index: int) -> np.random.Generator:
        """The generator of one image or video: it depends only on (seed, split, index)."""
        return np.random.default_rng([self.seed, SPLITS[split], index])

    def item_size(self, rng: np.random.Generator) -> tuple[int, int]:
        if not self.vary_size:
            return self.height, self.width
        h, w = rng.uniform(0.75, 1.25, size=2) * (self.height, self.width)
        return max(16, int(round(h))), max(16, int(round(w)))


def read_world_config(out: str | Path) -> WorldConfig:
    """The ``WorldConfig`` a generated world was written with (from ``out/world.json``)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; generate the world first (generate_shapes_world).")
    fields = dict(json.loads(path.read_text())["config"])
    fields["scene"] = SceneParams(**fields["scene"])
    return WorldConfig(**fields)


def render_image(config: WorldConfig, split: str, index: int) -> Scene:
    """The scene of still image ``index`` of ``split`` (what the writer annotates).

    The last image of a split with two or more images has no things, so every split exercises
    the empty-image path.
    """
    rng = config.item_rng(split, index)
    height, width = config.item_size(rng)
    empty = index == config.split_size(split) - 1 and config.split_size(split) >= 2
    return sample_image_scene(rng, height, width, config.scene, empty=empty)


def render_video(
    config: WorldConfig, split: str, index: int, first_track_id: int = 1
) -> list[Scene]:
    """The frames of video ``index`` of ``split``; its objects get track ids from
    ``first_track_id`` on (the writer numbers them across the split)."""
    rng = config.item_rng(split, index)
    height, width = config.item_size(rng)
    return sample_video_scenes(rng, height, width, config.num_frames, config.scene, first_track_id)


# --------------------------------------------------------------------------------------------
# Records


def _thing_categories() -> list[dict]:
    return [{"id": i, "name": n, "supercategory": "shape"} for i, n in zip(THING_IDS, THING_NAMES)]


def _keypoint_categories() -> list[dict]:
    skeleton = [[a + 1, b + 1] for a, b in SKELETON]  # COCO skeletons are 1-based
    return [dict(c, keypoints=list(KEYPOINT_NAMES), skeleton=skeleton) for c in _thing_categories()]


def _panoptic_categories() -> list[dict]:
    things = [dict(c, isthing=1, color=list(PALETTE[i])) for i, c in enumerate(_thing_categories())]
    stuff = [
        {"id": i, "name": n, "supercategory": "scene", "isthing": 0, "color": list(color)}
        for i, n, color in zip(STUFF_IDS, STUFF_NAMES, PALETTE[len(THING_IDS) :])
    ]
    return things + stuff


def _inside(polygon: np.ndarray, height: int, width: int) -> bool:
    x, y = polygon[:, 0], polygon[:, 1]
    return bool((x >= 0).all() and (y >= 0).all() and (x <= width).all() and (y <= height).all())


def encode_segmentation(layer: Layer, visible: np.ndarray) -> list | dict:
    """The COCO segmentation of a layer's visible mask, in the encoding the layer asked for.

    Polygon layers are written with the shape's own vertices when nothing hides or cuts the
    shape, else as pixel-outline polygons; masks with holes fall back to compressed RLE.
    """
    if layer.encoding == RLE_LIST:
        return rle_uncompressed(visible)
    if layer.encoding == RLE:
        return rle_compressed(visible)
    polygon = layer.outlines[0].polygon if len(layer.outlines) == 1 else None
    whole = polygon is not None and np.array_equal(visible, layer.full)
    if whole and _inside(polygon, *visible.shape):
        return [polygon.reshape(-1).tolist()]
    polygons = mask_to_polygons(visible)
    return polygons if polygons is not None else rle_compressed(visible)


def panoptic_ids(scene: Scene, thing_numbers: list[int]) -> tuple[np.ndarray, list[dict]]:
    """``int64[H, W]`` segment ids (0 = void) and COCO ``segments_info`` of a scene.

    Args:
        scene: the rendered scene.
        thing_numbers: per layer, its number n in ``category_id * SEGMENT_ID_BASE + n``.
    """
    ids = np.zeros(scene.size, dtype=np.int64)
    labelled = (scene.owner < 0) & ~scene.void
    ids[labelled] = np.asarray(STUFF_IDS)[scene.stuff[labelled]] * SEGMENT_ID_BASE
    segments = []
    for i, (layer, number) in enumerate(zip(scene.layers, thing_numbers)):
        visible = scene.visible(i)
        if visible.any():
            segment_id = THING_IDS[layer.label] * SEGMENT_ID_BASE + number
            ids[visible] = segment_id
            segments.append((segment_id, THING_IDS[layer.label], int(layer.iscrowd), visible))
    for k, category_id in enumerate(STUFF_IDS):
        region = labelled & (scene.stuff == k)
        if region.any():
            segments.append((category_id * SEGMENT_ID_BASE, category_id, 0, region))
    info = [
        {"id": s, "category_id": c, "iscrowd": crowd, "bbox": mask_bbox(m), "area": int(m.sum())}
        for s, c, crowd, m in segments
    ]
    return ids, info


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``int64[H, W]`` ids -> ``uint8[H, W, 3]`` with id = R + 256 G + 256^2 B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def coco_keypoints(points: np.ndarray) -> list[float]:
    """Flat COCO ``[x, y, v] * K`` of ``float[K, 3]`` continuous-frame keypoints.

    COCO stores pixel indices (the centre of pixel column ``j`` is ``x = j``), the scene the
    continuous frame (centre ``j + 0.5``): labelled keypoints are written 0.5 lower, as COCO
    would hold them, and the COCO reader adds the 0.5 back, so reading the file gives the
    scene's values. Unlabelled keypoints stay ``(0, 0, 0)``. The scene rounds to 0.01 px, so
    the shifted values are rounded to 0.01 again (plain decimals in the JSON).
    """
    out = np.array(points, dtype=np.float64)  # [K, 3]
    labelled = out[:, 2] > 0
    out[labelled, :2] = np.round(out[labelled, :2] - COCO_KEYPOINT_OFFSET, 2)
    return out.reshape(-1).tolist()


def _write_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _info(config: WorldConfig, split: str) -> dict:
    return {
        "description": f"lightning_seg synthetic shapes world ({split})",
        "version": GENERATOR_VERSION,
        "seed": config.seed,
    }


# --------------------------------------------------------------------------------------------
# Splits


def write_image_split(root: Path, config: WorldConfig, split: str) -> None:
    """Images, semantic and panoptic PNGs, and the instances / keypoints / panoptic JSON."""
    images, instances, keypoints, panoptic = [], [], [], []
    ann_id = 1
    for index in range(config.split_size(split)):
        scene = render_image(config, split, index)
        height, width = scene.size
        image_id, name = index + 1, f"{index:06d}.png"
        _save_png(scene.image, root / "images" / name)
        _save_png(scene.semantic(), root / "semantic" / name)
        ids, segments_info = panoptic_ids(scene, list(range(1, len(scene.layers) + 1)))
        _save_png(ids_to_rgb(ids), root / "panoptic" / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        panoptic.append({"image_id": image_id, "file_name": name, "segments_info": segments_info})
        for i, layer in enumerate(scene.layers):
            visible = scene.visible(i)
            record = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": THING_IDS[layer.label],
                "segmentation": encode_segmentation(layer, visible),
                "area": int(visible.sum()),
                "bbox": mask_bbox(visible),
                "iscrowd": int(layer.iscrowd),
            }
            points = np.zeros((len(KEYPOINT_NAMES), 3)) if layer.iscrowd else scene.keypoints(i)
            num_visible = int((points[:, 2] > 0).sum())
            instances.append(record)
            keypoints.append(
                dict(record, keypoints=coco_keypoints(points), num_keypoints=num_visible)
            )
            ann_id += 1
    info = _info(config, split)
    categories = _thing_categories()
    _write_json(
        {"info": info, "images": images, "annotations": instances, "categories": categories},
        root / "instances.json",
    )
    pairs = flip_pairs_by_name(KEYPOINT_NAMES)
    flip_map = [[KEYPOINT_NAMES[a], KEYPOINT_NAMES[b]] for a, b in pairs]
    _write_json(
        {
            "info": info,
            "images": images,
            "annotations": keypoints,
            "categories": _keypoint_categories(),
            "flip_map": flip_map,
        },
        root / "keypoints.json",
    )
    categories = _panoptic_categories()
    _write_json(
        {"info": info, "images": images, "annotations": panoptic, "categories": categories},
        root / "panoptic.json",
    )


def write_video_split(root: Path, config: WorldConfig, split: str) -> None:
    """Frames, per-frame panoptic / semantic PNGs, YouTube-VIS and video-panoptic JSON."""
    videos, tracks, frames, panoptic = [], [], [], []
    next_track = 1
    for index in range(config.split_size(split)):
        scenes = render_video(config, split, index, next_track)
        video_id, name = index + 1, f"video_{index:04d}"
        height, width = scenes[0].size
        layers = scenes[0].layers
        next_track += len(layers)
        if next_track > SEGMENT_ID_BASE:
            raise ValueError(
                f"more than {SEGMENT_ID_BASE - 1} tracks in one split: make fewer videos"
            )
        file_names = [f"{name}/{t:05d}.png" for t in range(len(scenes))]
        size = {"height": height, "width": width, "length": len(scenes)}
        videos.append({"id": video_id, "name": name, "file_names": file_names, **size})
        per_track: list[dict] = [{"segmentations": [], "bboxes": [], "areas": []} for _ in layers]
        for t, (scene, file_name) in enumerate(zip(scenes, file_names)):
            image_id = len(frames) + 1
            _save_png(scene.image, root / "frames" / file_name)
            _save_png(scene.semantic(), root / "video_semantic" / file_name)
            ids, segments_info = panoptic_ids(scene, [layer.track_id for layer in scene.layers])
            _save_png(ids_to_rgb(ids), root / "video_panoptic" / file_name)
            frames.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "height": height,
                    "width": width,
                    "video_id": video_id,
                    "frame_index": t,
                }
            )
            panoptic.append(
                {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}
            )
            for i, track in enumerate(per_track):
                visible = scene.visible(i)
                present = bool(visible.any())
                track["segmentations"].append(rle_compressed(visible) if present else None)
                track["bboxes"].append(mask_bbox(visible) if present else None)
                track["areas"].append(int(visible.sum()) if present else None)
        for layer, track in zip(layers, per_track):
            tracks.append(
                {
                    "id": layer.track_id,
                    "video_id": video_id,
                    "category_id": THING_IDS[layer.label],
                    "iscrowd": 0,
                    **size,
                    **track,
                }
            )
    info = _info(config, split)
    _write_json(
        {"info": info, "videos": videos, "annotations": tracks, "categories": _thing_categories()},
        root / "video_instances.json",
    )
    _write_json(
        {
            "info": info,
            "videos": [{k: v for k, v in video.items() if k != "file_names"} for video in videos],
            "images": frames,
            "annotations": panoptic,
            "categories": _panoptic_categories(),
        },
        root / "video_panoptic.json",
    )


# --------------------------------------------------------------------------------------------
# Entry point


def _manifest(config: WorldConfig, complete: bool) -> dict:
    return {
        "generator": "lightning_seg.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "complete": complete,
        "config": asdict(config),
        "splits": {split: config.split_size(split) for split in SPLITS},
    }


def generate_shapes_world(
    out: str | Path,
    num_images: int,
    seed: int = 0,
    num_val: int | None = None,
    height: int = 128,
    width: int = 160,
    video: bool = False,
    num_frames: int = 8,
    max_objects: int = 6,
    vary_size: bool = False,
    min_visible_area: int = 24,
    crowd_prob: float = 0.1,
    rle_prob: float = 0.2,
) -> Path:
    """Write a shapes world to ``out`` (idempotent) and return ``out``.

    Args:
        out: folder to write; it gets ``train/``, ``val/`` and ``world.json``.
        num_images: train images, or train videos when ``video``.
        seed: random seed; the same arguments always give byte-identical files.
        num_val: val images or videos; default ``max(4, num_images // 5)``.
        height: image height (mean height when ``vary_size``).
        width: image width (mean width when ``vary_size``).
        video: write sequences (frames, YouTube-VIS JSON, video panoptic) instead of images.
        num_frames: frames per video.
        max_objects: most shapes per image or video.
        vary_size: give every image (video) its own size in 0.75..1.25 x ``height``/``width``.
        min_visible_area: objects with fewer visible pixels are not annotated.
        crowd_prob: chance of one ``iscrowd=1`` group per still image.
        rle_prob: chance that an object is written as RLE rather than polygons.

    Returns:
        ``out`` as a Path. When ``out/world.json`` records a complete world with the same
        arguments, nothing is written. Several processes may call it for one ``out`` at once:
        the first writes while holding a lock file beside it (``world_lock_path``), the others
        wait for it and then find the world written.

    Raises:
        DataError: ``out`` holds a ``train/`` or ``val/`` folder that this generator did not
            write (no ``world.json``); it is never overwritten.
    """
    config = WorldConfig(
        num_images=num_images,
        num_val=max(4, num_images // 5) if num_val is None else num_val,
        seed=seed,
        height=height,
        width=width,
        vary_size=vary_size,
        video=video,
        num_frames=num_frames,
        scene=SceneParams(
            max_objects=max_objects,
            min_visible_area=min_visible_area,
            crowd_prob=crowd_prob,
            rle_prob=rle_prob,
        ),
    )
    out = Path(out)
    manifest_path = out / MANIFEST
    expected = json.loads(json.dumps(_manifest(config, complete=True)))
    if _manifest_is(manifest_path, expected):
        return out
    # Several processes may ask for the same world at once (the trials of `lseg sweep --parallel`,
    # DDP ranks sharing a cache): one writes it while the others wait, then find it complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(world_lock_path(out)):
        if _manifest_is(manifest_path, expected):  # written while this process waited
            return out
        if manifest_path.is_file():  # another world, or an unfinished one: written again
            for split in SPLITS:
                shutil.rmtree(out / split, ignore_errors=True)
        elif any((out / split).exists() for split in SPLITS):
            raise DataError(
                f"{out}: holds train/ or val/ but no {MANIFEST}, so it is not a shapes world written "
                f"by this generator; refusing to overwrite it. Choose a new or empty folder."
            )
        out.mkdir(parents=True, exist_ok=True)
        _write_json(_manifest(config, complete=False), manifest_path)
        write_split = write_video_split if video else write_image_split
        for split in SPLITS:
            (out / split).mkdir()
            write_split(out / split, config, split)
        _write_json(_manifest(config, complete=True), manifest_path)
    return out


def world_lock_path(out: str | Path) -> Path:
    """The lock file beside ``out`` that one writer of the world holds while it writes."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def _manifest_is(path: Path, expected: dict) -> bool:
    """Whether ``path`` is a readable manifest equal to ``expected``."""
    try:
        return json.loads(path.read_text()) == expected
    except (FileNotFoundError, json.JSONDecodeError):
        return False
