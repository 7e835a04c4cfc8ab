"""The synthetic shapes world: formats checked with pycocotools, the project's readers,
determinism, idempotence and the pixel-outline polygon encoder."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lightning_seg.data.io import DataError, read_rgb_ids
from lightning_seg.data.synthetic import (
    KEYPOINT_NAMES,
    SEGMENT_ID_BASE,
    STUFF_IDS,
    THING_IDS,
    THING_NAMES,
    generate_shapes_world,
    read_world_config,
    render_image,
    render_video,
    shapes_instance_info,
    shapes_keypoint_info,
    shapes_panoptic_info,
    shapes_semantic_info,
)
from lightning_seg.data.synthetic.__main__ import main
from lightning_seg.data.synthetic.coco import mask_to_polygons, rle_compressed, rle_uncompressed
from lightning_seg.data.synthetic.shapes import SHAPE_BUILDERS, shape_keypoints
from lightning_seg.data.synthetic.world import world_lock_path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """10 train + 3 val images of unequal sizes, with plenty of crowds and RLE objects."""
    out = tmp_path_factory.mktemp("shapes") / "world"
    return generate_shapes_world(
        out, 10, seed=3, num_val=3, height=72, width=90, vary_size=True,
        crowd_prob=0.5, rle_prob=0.35,
    )  # fmt: skip


@pytest.fixture(scope="module")
def video_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes_video") / "world"
    return generate_shapes_world(
        out, 3, seed=5, num_val=1, height=56, width=72, video=True, num_frames=6
    )


def _annotations(coco: COCO, image_id: int) -> list[dict]:
    """All annotations of an image (crowds too), in file order = depth order."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
    return sorted(anns, key=lambda a: a["id"])


def _semantic_from_panoptic(ids: np.ndarray, segments_info: list[dict]) -> np.ndarray:
    index = shapes_semantic_info().id_to_index
    semantic = np.full(ids.shape, 255, dtype=np.int64)
    for seg in segments_info:
        semantic[ids == seg["id"]] = index[seg["category_id"]]
    return semantic


def test_layout_manifest_and_image_modes(world):
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["complete"] and manifest["splits"] == {"train": 10, "val": 3}
    sizes = set()
    for split, n in (("train", 10), ("val", 3)):
        root = world / split
        for name in ("instances.json", "keypoints.json", "panoptic.json"):
            assert (root / name).is_file()
        for k in range(n):
            image = Image.open(root / "images" / f"{k:06d}.png")
            assert image.mode == "RGB"
            assert Image.open(root / "semantic" / f"{k:06d}.png").mode == "L"
            assert Image.open(root / "panoptic" / f"{k:06d}.png").mode == "RGB"
            sizes.add(image.size)
    assert len(sizes) > 5  # vary_size gives every image its own size


def test_instances_decode_to_the_rendered_masks(world):
    config = read_world_config(world)
    coco = COCO(str(world / "train" / "instances.json"))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == list(THING_IDS)
    kinds = set()
    for image_id in coco.getImgIds():
        image = coco.loadImgs(image_id)[0]
        scene = render_image(config, "train", image_id - 1)
        assert scene.size == (image["height"], image["width"])
        anns = _annotations(coco, image_id)
        assert len(anns) == len(scene.layers)
        for i, (ann, layer) in enumerate(zip(anns, scene.layers)):
            mask = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(mask, scene.visible(i))
            assert ann["area"] == mask.sum() == mask_utils.area(coco.annToRLE(ann))
            assert ann["area"] >= config.scene.min_visible_area
            assert ann["bbox"] == mask_utils.toBbox(coco.annToRLE(ann)).astype(int).tolist()
            assert ann["category_id"] == THING_IDS[layer.label]
            seg = ann["segmentation"]
            if isinstance(seg, list):
                kinds.add("polygon")
            elif ann["iscrowd"]:
                assert isinstance(seg["counts"], list)  # COCO writes crowds uncompressed
                kinds.add("crowd")
            else:
                kinds.add("rle_list" if isinstance(seg["counts"], list) else "rle_string")
    assert kinds == {"polygon", "crowd", "rle_list", "rle_string"}
    last = coco.getImgIds()[-1]  # the last image of a split is empty on purpose
    assert coco.getAnnIds(imgIds=last, iscrowd=None) == []


def test_most_objects_are_polygons_by_default(tmp_path):
    out = generate_shapes_world(tmp_path / "w", 12, num_val=0)
    anns = json.loads((out / "train" / "instances.json").read_text())["annotations"]
    polygons = sum(isinstance(a["segmentation"], list) for a in anns)
    assert len(anns) > 20 and polygons > 0.6 * len(anns)


def test_panoptic_pngs_match_segments_info_and_instances(world):
    panoptic = json.loads((world / "val" / "panoptic.json").read_text())
    coco = COCO(str(world / "val" / "instances.json"))
    assert [(c["id"], c["isthing"]) for c in panoptic["categories"]] == [
        (i, 1) for i in THING_IDS
    ] + [(i, 0) for i in STUFF_IDS]
    for ann in panoptic["annotations"]:
        ids = read_rgb_ids(world / "val" / "panoptic" / ann["file_name"])
        infos = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) == set(infos)  # no void in still images
        for seg_id, seg in infos.items():
            mask = ids == seg_id
            assert seg["area"] == mask.sum()
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert seg["bbox"] == mask_utils.toBbox(rle).astype(int).tolist()
            assert seg_id // SEGMENT_ID_BASE == seg["category_id"]
        things = [s for s in infos.values() if s["category_id"] in THING_IDS]
        instances = coco.loadAnns(coco.getAnnIds(imgIds=ann["image_id"], iscrowd=None))
        assert len(things) == len(instances)
        for inst in instances:
            mask = coco.annToMask(inst).astype(bool)
            seg_id = int(ids[mask][0])
            assert (ids == seg_id).sum() == mask.sum()
            assert infos[seg_id]["category_id"] == inst["category_id"]
            assert infos[seg_id]["iscrowd"] == inst["iscrowd"]


def test_semantic_png_equals_panoptic_derived_map(world):
    panoptic = json.loads((world / "train" / "panoptic.json").read_text())
    for ann in panoptic["annotations"]:
        semantic = np.asarray(Image.open(world / "train" / "semantic" / ann["file_name"]))
        ids = read_rgb_ids(world / "train" / "panoptic" / ann["file_name"])
        np.testing.assert_array_equal(semantic, _semantic_from_panoptic(ids, ann["segments_info"]))
        assert semantic.max() < 255


def test_keypoints_names_flip_map_and_visibility(world):
    info = shapes_keypoint_info()
    seen = set()
    for split in ("train", "val"):
        seen |= _check_keypoints(world / split, info)
    assert seen == {0, 1, 2}


def _check_keypoints(root: Path, info) -> set[int]:
    """Check one split's keypoints.json against its panoptic PNGs; return the visibilities seen."""
    coco = COCO(str(root / "keypoints.json"))
    top = coco.dataset
    for cat in top["categories"]:
        assert cat["keypoints"] == list(KEYPOINT_NAMES)
        assert [tuple(p) for p in cat["skeleton"]] == [(a + 1, b + 1) for a, b in info.skeleton]
    name_pairs = [(KEYPOINT_NAMES[a], KEYPOINT_NAMES[b]) for a, b in info.keypoint_flip_map]
    assert [tuple(p) for p in top["flip_map"]] == name_pairs == [("left_side", "right_side")]
    panoptic = json.loads((root / "panoptic.json").read_text())["annotations"]
    png_of = {a["image_id"]: a["file_name"] for a in panoptic}
    seen = set()
    for image_id in coco.getImgIds():
        anns = _annotations(coco, image_id)
        ids = read_rgb_ids(root / "panoptic" / png_of[image_id])
        for depth, ann in enumerate(anns, start=1):  # segment number n = depth order
            points = np.asarray(ann["keypoints"]).reshape(-1, 3)
            assert points.shape == (len(KEYPOINT_NAMES), 3)
            assert ann["num_keypoints"] == (points[:, 2] > 0).sum()
            if ann["iscrowd"]:
                assert not points.any()
                continue
            own = ann["category_id"] * SEGMENT_ID_BASE + depth
            for k, (x, y, v) in enumerate(points):
                seen.add(int(v))
                if v == 0:
                    assert x == y == 0
                    continue
                # COCO pixel indices: pixel column j spans x in [j - 0.5, j + 0.5)
                under = int(ids[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))])
                category, number = divmod(under, SEGMENT_ID_BASE)
                on_later_thing = category in THING_IDS and number > depth
                assert on_later_thing == (v == 1)
                if k == 0 and v == 2:
                    assert under == own  # a visible centre lies on its own shape
    return seen


def test_keypoints_json_is_coco_pixel_indices_and_reads_back_exactly(world):
    """The JSON holds what COCO would (continuous - 0.5 for labelled keypoints); the COCO
    reader gives back the generator's in-memory (continuous) keypoints."""
    from lightning_seg.data.formats.coco import CocoInstanceDataset

    config = read_world_config(world)
    checked = 0
    for split in ("train", "val"):
        root = world / split
        coco = COCO(str(root / "keypoints.json"))  # pycocotools loads it
        reader = CocoInstanceDataset(root / "images", root / "keypoints.json", with_keypoints=True)
        for i in range(len(reader)):
            scene = render_image(config, split, i)
            image_id = reader[i].meta.image_id
            expected = np.zeros((len(scene.layers), len(KEYPOINT_NAMES), 3))  # [N, K, 3]
            for k, layer in enumerate(scene.layers):
                if not layer.iscrowd:
                    expected[k] = scene.keypoints(k)  # continuous frame
            got = reader[i].instances.keypoints.numpy()
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
            in_file = np.array([a["keypoints"] for a in _annotations(coco, image_id)])
            in_file = in_file.reshape(expected.shape)
            labelled = expected[..., 2] > 0
            shifted = np.where(labelled[..., None], expected[..., :2] - 0.5, 0.0)
            np.testing.assert_allclose(in_file[..., :2], shifted, atol=1e-9, rtol=0)
            np.testing.assert_array_equal(in_file[..., 2], expected[..., 2])
            checked += int(labelled.sum())
    assert checked > 50


@pytest.mark.parametrize("kind", THING_NAMES)
def test_keypoints_follow_a_horizontal_flip(kind):
    width = 90.0
    perm = shapes_keypoint_info().flip_permutation()
    for angle in (-25.0, 0.0, 17.0):
        shape = SHAPE_BUILDERS[kind]((30.3, 41.7), 12.0, angle)
        mirror = SHAPE_BUILDERS[kind]((width - 30.3, 41.7), 12.0, -angle)
        expected = shape_keypoints(shape)
        expected[:, 0] = width - expected[:, 0]
        np.testing.assert_allclose(shape_keypoints(mirror), expected[perm], atol=1e-9)


def test_dataset_infos_agree_with_the_json(world):
    instance = shapes_instance_info()
    semantic, panoptic = shapes_semantic_info(), shapes_panoptic_info()
    assert instance.class_names == list(THING_NAMES) and instance.category_ids == list(THING_IDS)
    cats = json.loads((world / "train" / "panoptic.json").read_text())["categories"]
    for info in (semantic, panoptic):
        assert info.category_ids == [c["id"] for c in cats]
        assert info.class_names == [c["name"] for c in cats]
        assert info.isthing == [bool(c["isthing"]) for c in cats]
        assert info.ignore_index == 255
    keypoint = shapes_keypoint_info()
    assert keypoint.keypoint_names == list(KEYPOINT_NAMES)
    assert keypoint.keypoint_flip_map == [(3, 4)]
    assert len(keypoint.keypoint_sigmas) == keypoint.num_keypoints


def test_shapes_stand_out_from_their_surroundings(world):
    config = read_world_config(world)
    contrasts = []
    for index in range(9):
        scene = render_image(config, "train", index)
        image = scene.image.astype(np.float64)
        for i, layer in enumerate(scene.layers):
            inside = scene.visible(i)
            ring = np.zeros_like(inside)  # stuff 3 px above or below the shape
            y, x = np.nonzero(inside)
            ring[np.clip(y - 3, 0, None), x] = True
            ring[np.clip(y + 3, None, inside.shape[0] - 1), x] = True
            ring &= scene.owner < 0
            if not layer.iscrowd and ring.sum() > 5:
                contrasts.append(np.linalg.norm(image[inside].mean(0) - image[ring].mean(0)))
    assert len(contrasts) > 10
    assert np.median(contrasts) > 60


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    kwargs = dict(num_val=2, height=48, width=64, crowd_prob=0.5)
    a = generate_shapes_world(tmp_path / "a", 3, seed=11, **kwargs)
    b = generate_shapes_world(tmp_path / "b", 3, seed=11, **kwargs)
    c = generate_shapes_world(tmp_path / "c", 3, seed=12, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == (3 + 2) * 3 + 2 * 3 + 1  # 3 PNGs per image, 3 JSON per split, manifest
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "train/instances.json").read_bytes() != (c / "train/instances.json").read_bytes()
    image = "train/images/000000.png"
    assert (a / image).read_bytes() != (c / image).read_bytes()


def test_idempotent_and_regenerated_when_the_parameters_change(tmp_path):
    out = generate_shapes_world(tmp_path / "w", 2, num_val=1, height=40, width=48)
    marker = out / "train" / "marker.txt"
    marker.write_text("kept while the world is unchanged")
    generate_shapes_world(tmp_path / "w", 2, num_val=1, height=40, width=48)
    assert marker.is_file()
    generate_shapes_world(tmp_path / "w", 3, num_val=1, height=40, width=48)
    assert not marker.exists()
    assert len(json.loads((out / "train/instances.json").read_text())["images"]) == 3
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="refusing"):
        generate_shapes_world(foreign, 2)
    assert (foreign / "train").is_dir()


def test_a_second_writer_waits_for_the_first_and_keeps_its_world(tmp_path):
    """Two trials of a parallel sweep ask for one world: the second waits on the lock, then finds
    the world the first wrote and leaves it alone (without the lock both wrote at once and one
    crashed)."""
    kwargs = dict(num_val=1, height=40, width=48)
    written = generate_shapes_world(tmp_path / "elsewhere", 2, **kwargs)
    out = tmp_path / "w"
    errors: list[Exception] = []

    def second_writer():
        try:
            generate_shapes_world(out, 2, **kwargs)
        except Exception as error:  # reported by the main thread
            errors.append(error)

    first_writer = FileLock(world_lock_path(out))
    first_writer.acquire()
    try:
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not out.exists()  # waiting, nothing written
        shutil.copytree(written, out)  # the first writer's world
        (out / "train" / "marker.txt").write_text("the first writer's")
    finally:
        first_writer.release()
    thread.join(30)
    assert not thread.is_alive() and not errors
    assert (out / "train" / "marker.txt").is_file()  # not rewritten
    assert read_world_config(out).num_images == 2


def test_cli_writes_a_world(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-images", "2", "--num-val", "1", "--seed", "4",
          "--height", "40", "--width", "56", "--max-objects", "3"])  # fmt: skip
    assert "shapes world" in capsys.readouterr().out
    config = read_world_config(tmp_path / "cli")
    assert (config.num_images, config.num_val, config.seed) == (2, 1, 4)
    assert config.scene.max_objects == 3
    assert len(list((tmp_path / "cli" / "train" / "images").glob("*.png"))) == 2


def test_video_world_tracks_panoptic_and_semantic(video_world):
    config = read_world_config(video_world)
    root = video_world / "train"
    vis = json.loads((root / "video_instances.json").read_text())
    pan = json.loads((root / "video_panoptic.json").read_text())
    assert len(vis["videos"]) == 3 and [c["id"] for c in vis["categories"]] == list(THING_IDS)
    frames = {(im["video_id"], im["frame_index"]): im for im in pan["images"]}
    pan_ann = {a["image_id"]: a for a in pan["annotations"]}
    absent = occluded = 0
    for video in vis["videos"]:
        assert video["length"] == len(video["file_names"]) == 6
        tracks = [a for a in vis["annotations"] if a["video_id"] == video["id"]]
        assert tracks
        scenes = render_video(config, "train", video["id"] - 1, min(a["id"] for a in tracks))
        for t, file_name in enumerate(video["file_names"]):
            assert Image.open(root / "frames" / file_name).size == (video["width"], video["height"])
            image = frames[(video["id"], t)]
            assert image["file_name"] == file_name
            ann = pan_ann[image["id"]]
            ids = read_rgb_ids(root / "video_panoptic" / ann["file_name"])
            semantic = np.asarray(Image.open(root / "video_semantic" / file_name))
            derived = _semantic_from_panoptic(ids, ann["segments_info"])
            np.testing.assert_array_equal(semantic, derived)
            assert set(np.unique(ids[ids > 0]).tolist()) == {s["id"] for s in ann["segments_info"]}
            for i, track in enumerate(tracks):
                # a track keeps its segment id in every frame
                seg_id = track["category_id"] * SEGMENT_ID_BASE + track["id"]
                rle = track["segmentations"][t]
                if rle is None:
                    absent += 1
                    assert track["bboxes"][t] is None and track["areas"][t] is None
                    assert seg_id not in ids
                    continue
                mask = mask_utils.decode(rle).astype(bool)
                np.testing.assert_array_equal(mask, ids == seg_id)
                np.testing.assert_array_equal(mask, scenes[t].visible(i))
                assert track["areas"][t] == mask.sum() >= config.scene.min_visible_area
                assert track["bboxes"][t] == mask_utils.toBbox(rle).astype(int).tolist()
                occluded += int((scenes[t].layers[i].full & ~mask).any())
    assert absent > 0 and occluded > 0


def test_project_readers_load_the_world(world, video_world):
    formats = pytest.importorskip("lightning_seg.data.formats.coco")
    from lightning_seg.data.formats.coco_panoptic import CocoPanopticDataset
    from lightning_seg.data.formats.video import YouTubeVISDataset

    root = world / "train"
    config = read_world_config(world)
    instances = formats.CocoInstanceDataset(root / "images", root / "instances.json")
    assert instances.info.class_names == list(THING_NAMES) and len(instances) == 10
    for i in (0, 3):
        sample = instances[i]
        scene = render_image(config, "train", i)
        np.testing.assert_array_equal(sample.image.permute(1, 2, 0).numpy(), scene.image)
        masks = np.stack([scene.visible(k) for k in range(len(scene.layers))])
        np.testing.assert_array_equal(sample.instances.masks.numpy(), masks)
    keypoints = formats.CocoInstanceDataset(
        root / "images", root / "keypoints.json", with_keypoints=True
    )
    assert keypoints.info.keypoint_flip_map == shapes_keypoint_info().keypoint_flip_map
    assert keypoints[0].instances.keypoints.shape[1:] == (len(KEYPOINT_NAMES), 3)
    panoptic = CocoPanopticDataset(root / "images", root / "panoptic.json", root / "panoptic")
    assert panoptic.info.class_names == shapes_panoptic_info().class_names
    semantic = np.asarray(Image.open(root / "semantic" / "000002.png"))
    np.testing.assert_array_equal(panoptic[2].semantic.numpy(), semantic)
    video_root = video_world / "train"
    video = YouTubeVISDataset(video_root / "frames", video_root / "video_instances.json")
    assert len(video) == 3 * 6
    assert video[0].meta.frame_index == 0 and video[0].instances.track_ids is not None


def test_pixel_outline_polygons_decode_exactly():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    holes = 0
    for _ in range(250):
        h, w = rng.integers(1, 11, size=2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        background = np.pad(~mask, 1, constant_values=True)
        has_hole = ndimage.label(background, structure=np.ones((3, 3)))[1] > 1
        polygons = mask_to_polygons(mask)
        assert (polygons is None) == has_hole
        holes += has_hole
        if polygons:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, int(h), int(w)))
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        encoded = mask_utils.frPyObjects(rle_uncompressed(mask), int(h), int(w))
        np.testing.assert_array_equal(mask_utils.decode(encoded), mask)
        np.testing.assert_array_equal(mask_utils.decode(rle_compressed(mask)), mask)
    assert 0 < holes < 250
