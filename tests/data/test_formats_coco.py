"""COCO instances / keypoints and LVIS readers against pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lightning_seg.data.formats import CocoIndex, CocoInstanceDataset, LvisDataset
from lightning_seg.data.formats.jsonio import load_json_chunked
from lightning_seg.data.io import DataError


def _ann_masks(coco: COCO, ann_ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if len(ann_ids) == 0:
        return np.zeros((0, *shape), dtype=bool)
    return np.stack([coco.annToMask(coco.anns[int(a)]) for a in ann_ids]).astype(bool)


def test_coco_mini_masks_equal_ann_to_mask(shared_data):
    root = shared_data / "instance" / "coco_mini"
    ann_file = root / "annotations" / "instances.json"
    ds = CocoInstanceDataset(root / "images", ann_file)
    coco = COCO(str(ann_file))
    assert len(ds) == 6 and ds.index.num_annotations == 36
    assert ds.info.num_classes == 80 and ds.info.category_ids[-1] == 90
    seen_crowd = seen_empty = 0
    for i in range(len(ds)):
        s = ds[i]
        ids = ds.annotation_ids(i)
        ref = _ann_masks(coco, ids, s.image_size)
        assert np.array_equal(s.instances.masks.numpy(), ref)
        anns = [coco.anns[int(a)] for a in ids]
        cat_index = ds.info.id_to_index
        assert s.instances.labels.tolist() == [cat_index[a["category_id"]] for a in anns]
        assert s.instances.iscrowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(s.instances.boxes.numpy(), boxes, atol=1e-3)
        assert s.meta.image_id == coco.imgs[s.meta.image_id]["id"]
        assert s.image.dtype.is_floating_point is False and s.image.shape[0] == 3
        seen_crowd += int(s.instances.iscrowd.sum())
        seen_empty += len(s.instances) == 0
    assert seen_crowd == 1 and seen_empty == 1


def test_chunked_parse_equals_full_parse(shared_data):
    ann_file = shared_data / "instance" / "coco_mini" / "annotations" / "instances.json"
    slices = []
    top = load_json_chunked(ann_file, "annotations", slices.append, chunk_bytes=1)
    assert len(slices) == 36 and top["annotations"] == []  # one record per slice
    full = json.loads(ann_file.read_text())
    assert [a for s in slices for a in s] == full["annotations"]
    assert top["images"] == full["images"]
    small = CocoIndex.build(ann_file, chunk_bytes=1)
    big = CocoIndex.build(ann_file)
    for name in ("ann_ids", "ann_boxes", "ann_labels", "image_ann_offsets"):
        assert np.array_equal(getattr(small, name), getattr(big, name))
    assert np.array_equal(small.segments.coords, big.segments.coords)


def test_chunk_boundaries_ignore_lookalikes(tmp_path):
    # Nested '}, {"id"' (a list of objects inside a record) and '}]' inside strings must not
    # be taken for record boundaries: such a cut does not parse and is never accepted.
    anns = [{"id": k, "parts": [{"id": 1}, {"id": 2}], "image_id": 1, "category_id": 1,
             "note": "x}]"} for k in range(1, 6)]
    doc = {"annotations": anns, "images": [{"id": 1}], "categories": []}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    slices, resets = [], []
    top = load_json_chunked(path, "annotations", slices.append, chunk_bytes=1,
                            reset=lambda: (resets.append(1), slices.clear()))
    assert [a for s in slices for a in s] == anns and top["images"] == [{"id": 1}]
    # The nested key "annotations" of another object is not the top-level array.
    doc = {"info": {"annotations": [{"id": 0}]}, "annotations": anns, "images": []}
    path.write_text(json.dumps(doc))
    slices.clear()
    top = load_json_chunked(path, "annotations", slices.append, chunk_bytes=1,
                            reset=lambda: (resets.append(1), slices.clear()))
    assert [a for s in slices for a in s] == anns and top["info"] == doc["info"]
    assert resets  # the second file needed the whole-file fallback


def _write_image(path, h, w, mode="RGB"):
    arr = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    Image.fromarray(arr).convert(mode).save(path)


def _tiny_coco(tmp_path):
    """Two odd-sized images: polygons, compressed + uncompressed RLE, crowd; one empty image."""
    (tmp_path / "img").mkdir()
    _write_image(tmp_path / "img" / "a.png", 37, 45)
    _write_image(tmp_path / "img" / "b.png", 21, 30)
    _write_image(tmp_path / "img" / "c.png", 15, 17)
    m = np.zeros((37, 45), dtype=np.uint8)
    m[5:20, 8:30] = 1
    crle = mask_utils.encode(np.asfortranarray(m))
    crle["counts"] = crle["counts"].decode()
    m2 = np.zeros((37, 45), dtype=np.uint8)
    m2[25:35, 1:9] = 1
    flat = m2.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    doc = {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 37, "width": 45},
            {"id": 3, "file_name": "b.png", "height": 21, "width": 30},
            {"id": 11, "file_name": "c.png", "height": 15, "width": 17},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "iscrowd": 0, "area": 100.0,
             "bbox": [3.5, 4.25, 20, 12], "segmentation": [[3.5, 4.25, 23.5, 4.25, 23.5, 16.25,
                                                          3.5, 16.25], [30, 30, 40, 30, 35, 36]]},
            {"id": 2, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 50.0,
             "bbox": [1, 1, 10, 5], "segmentation": [[1, 1, 11, 1, 11, 6, 1, 6]]},
            {"id": 3, "image_id": 7, "category_id": 2, "iscrowd": 1, "area": float(m.sum()),
             "bbox": list(mask_utils.toBbox(crle)), "segmentation": crle},
            {"id": 4, "image_id": 7, "category_id": 9, "iscrowd": 0, "area": float(m2.sum()),
             "bbox": [1, 25, 8, 10], "segmentation": {"size": [37, 45], "counts": runs}},
        ],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(doc))
    return tmp_path / "img", ann_file


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_tiny_coco_all_segmentation_kinds(tmp_path, chunk_bytes):
    image_dir, ann_file = _tiny_coco(tmp_path)
    ds = CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    coco = COCO(str(ann_file))
    assert ds.info.category_ids == [2, 9] and ds.info.class_names == ["two", "nine"]
    sizes = []
    for i in range(len(ds)):
        s = ds[i]
        sizes.append(s.image_size)
        ref = _ann_masks(coco, ds.annotation_ids(i), s.image_size)
        assert np.array_equal(s.instances.masks.numpy(), ref)
    assert sizes == [(37, 45), (21, 30), (15, 17)]
    a = ds[0]
    assert ds.annotation_ids(0).tolist() == [1, 3, 4]
    assert a.instances.labels.tolist() == [1, 0, 1]
    assert a.instances.iscrowd.tolist() == [False, True, False]
    assert len(ds[2].instances) == 0 and ds[2].instances.masks.shape == (0, 15, 17)
    assert ds.skips.num_skipped == 0 and ds.skips.num_fixed == 0
    assert len(CocoInstanceDataset(image_dir, ann_file, drop_empty=True)) == 2


def test_boxes_only_and_missing_bbox(tmp_path):
    image_dir, ann_file = _tiny_coco(tmp_path)
    doc = json.loads(ann_file.read_text())
    del doc["annotations"][1]["bbox"]
    ann_file.write_text(json.dumps(doc))
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.fixed["bbox computed from the segmentation"] == 1
    assert ds[1].instances.boxes.tolist() == [[1.0, 1.0, 11.0, 6.0]]
    nomask = CocoInstanceDataset(image_dir, ann_file, with_masks=False)
    assert nomask[0].instances.masks is None and len(nomask[0].instances) == 3
    assert nomask.skips.skipped["annotation without bbox or segmentation"] == 1


def test_keypoints_coco_mini(shared_data):
    root = shared_data / "instance" / "coco_mini"
    ann_file = root / "annotations" / "person_keypoints.json"
    ds = CocoInstanceDataset(root / "images", ann_file, with_masks=False, with_keypoints=True)
    coco = COCO(str(ann_file))
    info = ds.info
    assert info.num_keypoints == 17 and len(info.keypoint_sigmas) == 17
    assert (1, 2) in info.keypoint_flip_map and (15, 16) in info.keypoint_flip_map
    assert len(info.keypoint_flip_map) == 8 and (15, 13) in info.skeleton
    total = 0
    for i in range(len(ds)):
        s = ds[i]
        ref = [coco.anns[int(a)]["keypoints"] for a in ds.annotation_ids(i)]
        kp = s.instances.keypoints.numpy()
        assert kp.shape == (len(ref), 17, 3)
        # COCO pixel indices + 0.5 (continuous frame) for labelled keypoints, (0, 0, 0) otherwise
        expected = np.array(ref, dtype=np.float32).reshape(len(ref), 17, 3)
        expected[..., :2][expected[..., 2] > 0] += 0.5
        np.testing.assert_array_equal(kp, expected)
        total += len(ref)
    assert total == 10


def _keypoint_coco(tmp_path, height=19, width=37):
    """One odd-sized image, two people with keypoints ``left, right`` as COCO pixel indices:
    the first has both labelled (v = 2 and v = 1), the second only its right one."""
    _write_image(tmp_path / "kp.png", height, width)
    doc = {
        "images": [{"id": 5, "file_name": "kp.png", "height": height, "width": width}],
        "categories": [{"id": 1, "name": "person", "keypoints": ["left", "right"],
                        "skeleton": [[1, 2]]}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0, "area": 60.0,
             "bbox": [2, 3, 10, 6], "keypoints": [4, 7, 2, 9, 3, 1], "num_keypoints": 2},
            {"id": 2, "image_id": 5, "category_id": 1, "iscrowd": 0, "area": 40.0,
             "bbox": [20, 10, 8, 5], "keypoints": [0, 0, 0, 36, 18, 2], "num_keypoints": 1},
        ],
    }  # fmt: skip
    ann_file = tmp_path / "kp.json"
    ann_file.write_text(json.dumps(doc))
    return tmp_path, ann_file


def test_keypoints_read_as_pixel_centres_labelled_only(tmp_path):
    """COCO pixel index j -> continuous j + 0.5 (detectron2); unlabelled stay (0, 0, 0)."""
    image_dir, ann_file = _keypoint_coco(tmp_path)
    ds = CocoInstanceDataset(image_dir, ann_file, with_masks=False, with_keypoints=True)
    expected = [
        [[4.5, 7.5, 2.0], [9.5, 3.5, 1.0]],
        [[0.0, 0.0, 0.0], [36.5, 18.5, 2.0]],  # the last pixel's centre: (W - 0.5, H - 0.5)
    ]
    assert ds[0].instances.keypoints.tolist() == expected
    assert ds.index.ann_keypoints.tolist() == expected
    small = CocoIndex.build(ann_file, with_masks=False, with_keypoints=True, chunk_bytes=1)
    assert small.ann_keypoints.tolist() == expected


def test_hflip_of_a_coco_keypoint_exports_to_the_mirrored_pixel_index(tmp_path):
    """Read (j + 0.5), flip in the continuous frame (W - x), export (- 0.5): W - 1 - j."""
    A = pytest.importorskip("albumentations")
    from lightning_seg.data.transforms import AlbumentationsTransform
    from lightning_seg.metrics.coco import predictions_to_coco_results
    from lightning_seg.structures import InstancePredictions

    height, width = 19, 37
    image_dir, ann_file = _keypoint_coco(tmp_path, height, width)
    doc = json.loads(ann_file.read_text())
    ds = CocoInstanceDataset(image_dir, ann_file, with_masks=False, with_keypoints=True)
    sample = ds[0]
    flip = AlbumentationsTransform([A.HorizontalFlip(p=1.0)]).bind(ds.info)
    out = flip(sample).instances
    pred = InstancePredictions(
        out.boxes, torch.ones(len(out)), out.labels, out.image_size, keypoints=out.keypoints
    )
    records = predictions_to_coco_results([pred], [5], ds.info.category_ids)
    perm = ds.info.flip_permutation()  # a flip swaps left and right
    for ann, rec in zip(doc["annotations"], records):
        src = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)[perm]
        got = np.array(rec["keypoints"]).reshape(-1, 3)
        labelled = src[:, 2] > 0
        np.testing.assert_array_equal(got[labelled, 0], width - 1 - src[labelled, 0])
        np.testing.assert_array_equal(got[labelled, 1], src[labelled, 1])
        np.testing.assert_array_equal(got[labelled, 2], src[labelled, 2])
    # the right keypoint of person 2 at the last column (36) lands at column 0 as its left one
    assert records[1]["keypoints"][:2] == [0.0, 18.0]


def test_keypoints_mmpose_coco(shared_data):
    root = shared_data / "keypoints" / "mmpose_samples" / "coco"
    ds = CocoInstanceDataset(root, root / "test_coco.json", with_masks=True, with_keypoints=True)
    coco = COCO(str(root / "test_coco.json"))
    assert len(ds) == len(coco.imgs)
    for i in range(len(ds)):
        s = ds[i]
        ids = ds.annotation_ids(i)
        assert np.array_equal(s.instances.masks.numpy(), _ann_masks(coco, ids, s.image_size))
        v = s.instances.keypoints[..., 2]
        assert set(v.unique().tolist()) <= {0.0, 1.0, 2.0}


def _tiny_lvis(tmp_path):
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    _write_image(tmp_path / "coco" / "val2017" / "000000000001.jpg", 19, 23)
    _write_image(tmp_path / "coco" / "val2017" / "000000000002.jpg", 13, 11)
    doc = {
        "images": [
            {"id": 1, "height": 19, "width": 23, "neg_category_ids": [5, 3],
             "not_exhaustive_category_ids": [1],
             "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"},
            {"id": 2, "height": 13, "width": 11, "neg_category_ids": [],
             "not_exhaustive_category_ids": [],
             "coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg"},
        ],
        "categories": [
            {"id": 1, "name": "aerosol_can", "frequency": "c"},
            {"id": 3, "name": "alarm_clock", "frequency": "r"},
            {"id": 5, "name": "apple", "frequency": "f"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "area": 30.0, "bbox": [2, 2, 6, 5],
             "segmentation": [[2, 2, 8, 2, 8, 7, 2, 7]]},
        ],
    }
    ann_file = tmp_path / "lvis_v1_val.json"
    ann_file.write_text(json.dumps(doc))
    return ann_file


def test_lvis_federated_lists_and_coco_url(tmp_path):
    ann_file = _tiny_lvis(tmp_path)
    for image_dir in (tmp_path / "coco", tmp_path / "coco" / "val2017"):
        ds = LvisDataset(image_dir, ann_file)
        assert ds.image_path(0) == tmp_path / "coco" / "val2017" / "000000000001.jpg"
        s = ds[0]
        assert s.image_size == (19, 23) and len(s.instances) == 1
        assert s.instances.iscrowd.tolist() == [False]
        assert s.instances.labels.tolist() == [2]
    assert ds.neg_category_ids(0).tolist() == [5, 3]
    assert ds.not_exhaustive_category_ids(0).tolist() == [1]
    neg, not_exhaustive = ds.federated_labels(0)
    assert neg.tolist() == [2, 1] and not_exhaustive.tolist() == [0]
    assert ds.neg_category_ids(1).tolist() == []
    assert ds.category_frequency == ["c", "r", "f"]
    mask = ds[0].instances.masks[0].numpy()
    polygon = [[2, 2, 8, 2, 8, 7, 2, 7]]
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 19, 23)))
    assert np.array_equal(mask, ref.astype(bool))


@pytest.mark.parametrize(
    ("extra", "dtype"), [(0.0, np.uint16), (-7.0, np.int32), (1 / 3, np.float64)]
)
def test_segment_store_keeps_coordinates_exactly(extra, dtype):
    from lightning_seg.data.formats.masks import RLE, SegmentStoreBuilder

    polys = [[[1.25, 2.5, 10.01, 2.5, 10.01, 7.99, 2.0, 7.0]],
             [[3.0, 3.0, 9.5, 3.0, 6.0 + extra, 9.0]]]
    builder = SegmentStoreBuilder()
    builder._FLUSH = 4  # one coordinate chunk per polygon: chunks of different dtypes mix
    for p in polys:
        assert builder.add(p) is None
    assert builder.add({"size": [12, 14], "counts": "e03"}) is None
    store = builder.finish()
    assert store.coords.dtype == dtype
    for i, p in enumerate(polys):
        assert [q.tolist() for q in store.polygons(i)] == p
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p, 12, 14)))
        assert np.array_equal(store.decode([i], 12, 14)[0], ref.astype(bool))
    assert store.kind[2] == RLE and store.to_rle(2, 12, 14)["counts"] == b"e03"


@pytest.mark.parametrize("indent", [None, 2])
def test_chunked_parse_pretty_printed_and_reordered(tmp_path, indent):
    anns = [{"segmentation": [[1, 1, 5, 1, 5, 5]], "id": k, "image_id": 1, "category_id": 1,
             "bbox": [1, 1, 4, 4]} for k in range(1, 8)]
    doc = {"annotations": anns, "categories": [{"id": 1, "name": "a"}],
           "images": [{"id": 1, "file_name": "x.png", "height": 9, "width": 9}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc, indent=indent).replace("\n", "\r\n"))
    slices, resets = [], []
    top = load_json_chunked(path, "annotations", slices.append, chunk_bytes=1,
                            reset=lambda: resets.append(1))
    assert len(slices) == 7 and not resets
    assert [a for s in slices for a in s] == anns and top["images"] == doc["images"]
    index = CocoIndex.build(path, chunk_bytes=1)
    assert index.ann_ids.tolist() == list(range(1, 8))


def test_rle_string_decoder_equals_pycocotools_runs():
    from lightning_seg.data.formats.masks import _offsets, decode_rle_strings

    rng = np.random.default_rng(0)
    strings, runs = [], []
    for t in range(200):
        h, w = rng.integers(1, 40, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        m[:] = 0 if t % 7 == 0 else (1 if t % 11 == 0 else m)
        if t == 5:
            m = np.zeros((1500, 2000), np.uint8)  # long runs: several characters per count
            m[100:1400, 5:1999] = 1
        strings.append(mask_utils.encode(np.asfortranarray(m))["counts"])
        flat = m.ravel(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        run = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        runs.append(([0] if flat[0] else []) + run)  # runs start with background
    bad = [b"!!", b"P", b"OO", b"0" * 10 + b"P" * 8 + b"0"]  # char, cut, negative, too long
    strings[3:3] = bad
    chars = np.frombuffer(b"".join(strings), np.uint8)
    counts, offs, readable = decode_rle_strings(chars, _offsets([len(x) for x in strings]))
    assert readable.tolist() == [True] * 3 + [False] * 4 + [True] * 197
    for i, run in enumerate(runs[:3] + [[]] * 4 + runs[3:]):
        assert counts[offs[i] : offs[i + 1]].tolist() == run


def test_non_numeric_keypoints_error(tmp_path):
    image_dir, ann_file = _tiny_coco(tmp_path)
    doc = json.loads(ann_file.read_text())
    doc["categories"][0]["keypoints"] = ["a"]
    for a in doc["annotations"]:
        a["keypoints"] = [1, 2, 2]
    doc["annotations"][1]["keypoints"] = [1, "2", 2]
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation id=2 \(image_id=3\) has keypoints"):
        CocoInstanceDataset(image_dir, ann_file, with_keypoints=True)
