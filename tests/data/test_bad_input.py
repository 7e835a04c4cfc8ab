"""Bad input (issue #2 section 5): every case errors with file + record + fix, or is counted."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lightning_seg.data.formats import CocoInstanceDataset, LabelPngDataset, camvid_dataset
from lightning_seg.data.io import DataError
from lightning_seg.structures import DatasetInfo

H, W = 21, 27


def _ann(id_, **kw):
    base = {"id": id_, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 40.0,
            "bbox": [2, 2, 8, 5], "segmentation": [[2, 2, 10, 2, 10, 7, 2, 7]]}
    base.update(kw)
    return base


def _coco(tmp_path, anns, image_mode="RGB", write_image=True, categories=None):
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if write_image:
        arr = (np.arange(H * W * 3) % 200).astype(np.uint8).reshape(H, W, 3)
        img = Image.fromarray(arr)
        if image_mode == "I;16":
            img = Image.fromarray(arr[..., 0].astype(np.uint16) * 300)  # mode I;16
        elif image_mode != "RGB":
            img = img.convert(image_mode)
        img.save(image_dir / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "categories": categories or [{"id": 1, "name": "thing"}],
        "annotations": anns,
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(doc))
    return image_dir, ann_file


def test_missing_image_file_errors_at_item_time(tmp_path):
    image_dir, ann_file = _coco(tmp_path, [_ann(1)], write_image=False)
    ds = CocoInstanceDataset(image_dir, ann_file)  # indexing does not touch image files
    with pytest.raises(DataError, match=r"a\.png: image file not found.*Check the dataset root"):
        ds[0]


def test_corrupt_image_errors_at_item_time(tmp_path):
    image_dir, ann_file = _coco(tmp_path, [_ann(1)])
    (image_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = CocoInstanceDataset(image_dir, ann_file)
    with pytest.raises(DataError, match=r"a\.png: cannot decode image.*re-download"):
        ds[0]


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_truncated_and_malformed_json(tmp_path, chunk_bytes):
    image_dir, ann_file = _coco(tmp_path, [_ann(k) for k in range(1, 6)])
    text = ann_file.read_text()
    ann_file.write_text(text[: len(text) * 2 // 3])
    with pytest.raises(DataError, match=r"ann\.json: malformed JSON at line \d+ column \d+"):
        CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    ann_file.write_text(text.replace('"area": 40.0', '"area": 40.0,,', 1))
    with pytest.raises(DataError, match=r"malformed JSON.*truncated or not valid JSON"):
        CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    ann_file.write_text("")
    with pytest.raises(DataError, match="empty"):
        CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    ann_file.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match="no 'images' list"):
        CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)


def test_unknown_category_id_errors_at_index_time(tmp_path):
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(77, category_id=5)])
    with pytest.raises(DataError, match=r"annotation id=77 \(image_id=1\) category_id=5.*add the"):
        CocoInstanceDataset(image_dir, ann_file)


def test_annotation_for_unknown_image_is_skipped_and_counted(tmp_path):
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2, image_id=99)])
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.skipped["annotation for an image id not in 'images'"] == 1
    assert len(ds[0].instances) == 1


def test_polygon_with_fewer_than_3_points(tmp_path):
    anns = [
        _ann(1, segmentation=[[2, 2, 10, 2]]),  # 2 points: pycocotools would read a box
        _ann(2, segmentation=[[2, 2, 10, 2, 10, 7, 2, 7], [1, 1, 3, 3]]),  # one bad part
        _ann(3, segmentation=[[2, 2, 10, 2, 10]]),  # odd length
    ]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.skipped["polygon with fewer than 3 points"] == 2
    assert ds.skips.fixed[
        "polygon part with fewer than 3 points (or an odd number of coordinates) dropped"
    ] == 1
    assert "annotation id=1" in ds.skips.summary()
    s = ds[0]
    assert ds.annotation_ids(0).tolist() == [2]
    polygon = [[2, 2, 10, 2, 10, 7, 2, 7]]
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, H, W)))
    assert np.array_equal(s.instances.masks[0].numpy(), ref.astype(bool))


def test_rle_of_another_size_errors(tmp_path):
    m = np.zeros((H + 1, W), np.uint8, order="F")
    m[3:8, 3:9] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(5, segmentation=rle, iscrowd=1)])
    expected = rf"annotation id=5.*RLE of size \({H + 1}, {W}\).*Re-encode"
    with pytest.raises(DataError, match=expected):
        CocoInstanceDataset(image_dir, ann_file)


def test_box_outside_image_is_clipped_and_counted(tmp_path):
    anns = [_ann(1, bbox=[-3, 15, 40, 20]), _ann(2, bbox=[2, 2, 8, 5])]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.fixed["box outside the image clipped"] == 1
    assert ds[0].instances.boxes.tolist() == [[0, 15, W, H], [2, 2, 10, 7]]


def test_zero_area_box_and_mask_are_skipped_and_counted(tmp_path, caplog):
    anns = [
        _ann(1, bbox=[5, 5, 0, 4]),  # zero width
        _ann(2, bbox=[30, 2, 5, 5]),  # entirely right of the image: empty after clipping
        _ann(3, area=0),
        _ann(4, segmentation=[[40, 30, 50, 30, 50, 40]]),  # outside: decodes to no pixel
        _ann(5),
    ]
    image_dir, ann_file = _coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="lightning_seg.data"):
        ds = CocoInstanceDataset(image_dir, ann_file)
        assert ds.skips.skipped["zero-area box"] == 2
        assert ds.skips.skipped["zero-area mask (area == 0)"] == 1
        s = ds[0]
        ds[0]
    assert ds.annotation_ids(0).tolist() == [4, 5]
    assert len(s.instances) == 1 and s.instances.masks.shape == (1, H, W)
    assert ds.skips.skipped["zero-area mask (decodes to no pixel)"] == 2  # counted per read
    index_warnings = [r for r in caplog.records if "zero-area box" in r.getMessage()]
    item_warnings = [r for r in caplog.records if "decodes to no pixel" in r.getMessage()]
    assert len(index_warnings) == 1 and len(item_warnings) == 1  # reported once


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_grayscale_rgba_16bit_images_are_converted_and_counted(tmp_path, mode):
    image_dir, ann_file = _coco(tmp_path, [_ann(1)], image_mode=mode)
    ds = CocoInstanceDataset(image_dir, ann_file)
    s = ds[0]
    assert s.image.shape == (3, H, W) and s.image.dtype.is_floating_point is False
    reason = next(iter(ds.skips.fixed))
    assert reason.startswith("converted") and reason.endswith("image to RGB")
    if mode == "I;16":
        assert int(s.image.max()) == 255 and int(s.image.min()) == 0


def test_image_size_differs_from_json(tmp_path):
    image_dir, ann_file = _coco(tmp_path, [_ann(1)])
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(image_dir / "a.png")
    with pytest.raises(DataError, match=r"image is 23x27 .* says 21x27.*matching files"):
        CocoInstanceDataset(image_dir, ann_file)[0]


def _pair(tmp_path, label: np.ndarray, image_shape=(H, W)):
    Image.fromarray(np.zeros((*image_shape, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(label.astype(np.uint8)).save(tmp_path / "lab.png")
    return [(tmp_path / "img.png", tmp_path / "lab.png")]


def test_label_png_of_another_size(tmp_path):
    pairs = _pair(tmp_path, np.zeros((H, W + 1)))
    ds = LabelPngDataset(pairs, DatasetInfo(class_names=["a", "b"]))
    with pytest.raises(DataError, match=r"lab\.png: label map is 21x28 .*img\.png is 21x27"):
        ds[0]


def test_label_values_out_of_range(tmp_path):
    label = np.zeros((H, W))
    label[3, 4] = 7
    label[5, 5] = 255  # void is fine
    ds = LabelPngDataset(_pair(tmp_path, label), DatasetInfo(class_names=["a", "b"]))
    with pytest.raises(DataError, match=r"lab\.png: label values \[7\] are out of range"):
        ds[0]
    label[3, 4] = 1
    ds = LabelPngDataset(_pair(tmp_path, label), DatasetInfo(class_names=["a", "b"]))
    assert ds[0].semantic.max() == 255


def test_camvid_value_out_of_table(tmp_path):
    for sub in ("train", "trainannot"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "train" / "x.png")
    Image.fromarray(np.full((5, 6), 12, np.uint8)).save(tmp_path / "trainannot" / "x.png")
    with pytest.raises(DataError, match=r"label values \[12\] are out of range"):
        camvid_dataset(tmp_path, "train")[0]


def test_missing_file_in_list_errors_at_construction(tmp_path):
    for sub in ("train", "trainannot"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "train" / "x.png")
    line = "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png\n"
    (tmp_path / "train.txt").write_text(line)
    with pytest.raises(DataError, match=r"train\.txt: pair 0 \(x\.png\) refers to a missing file"):
        camvid_dataset(tmp_path, "train")
    (tmp_path / "train.txt").write_text("train/x.png\n")
    with pytest.raises(DataError, match=r"train\.txt:1: expected 2 path"):
        camvid_dataset(tmp_path, "train")


def test_many_skips_are_counted_with_few_examples(tmp_path):
    anns = [_ann(k, bbox=[-5, -5, 10, 10]) for k in range(1, 11)]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.fixed["box outside the image clipped"] == 10
    assert len(ds.skips.examples["box outside the image clipped"]) == ds.skips.max_examples
    assert "repaired 10 x box outside the image clipped" in ds.skips.summary()


# ----------------------------------------------------------------------------------------------
# Faults found by probing (issue #10 section 4): each decided at index time.


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


@pytest.mark.parametrize("counts", ["!!garbage!!", "00P", "OO", "0" * 3 + "\u00e9"])
def test_garbage_compressed_rle_counts_are_skipped_at_index_time(tmp_path, counts):
    # a character outside '0'..'o', a string ending inside a count, a negative count, non-ASCII:
    # pycocotools decodes these without a check (out-of-bounds reads / writes)
    bad = {"size": [H, W], "counts": counts}
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2, segmentation=bad, iscrowd=1)])
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.num_skipped == 1
    reason = next(iter(ds.skips.skipped))
    assert "RLE" in reason or "unreadable segmentation" in reason
    assert "annotation id=2 (image_id=1)" in ds.skips.summary()
    assert ds.annotation_ids(0).tolist() == [1] and len(ds[0].instances) == 1


@pytest.mark.parametrize("extra", [1, -1, H * W])
def test_uncompressed_rle_whose_counts_do_not_sum_to_h_times_w_is_skipped(tmp_path, extra):
    m = np.zeros((H, W), np.uint8)
    m[4:9, 3:12] = 1
    flat = m.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    assert sum(runs) == H * W
    runs[-1] += extra  # one pixel too many / too few, or a whole image too many
    anns = [_ann(1), _ann(2, segmentation={"size": [H, W], "counts": runs}, iscrowd=1)]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.skipped == {"RLE counts do not sum to height * width": 1}
    assert "annotation id=2" in ds.skips.summary()
    assert ds.annotation_ids(0).tolist() == [1]


def test_compressed_rle_of_another_area_with_the_right_size_is_skipped(tmp_path):
    m = np.zeros((H, W + 3), np.uint8)
    m[2:5, 2:5] = 1
    lying = {"size": [H, W], "counts": _rle(m)["counts"]}  # runs of a 21x30 mask
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2, segmentation=lying, iscrowd=1)])
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds.skips.skipped == {"RLE counts do not sum to height * width": 1}


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
@pytest.mark.parametrize("value", ["5", None, [3, 4], "abc", {"x": 1}])
def test_non_numeric_polygon_coordinate_is_skipped(tmp_path, chunk_bytes, value):
    good = [[2.5, 2, 10, 2, 10, 7.25, 2, 7]]
    m = np.zeros((H, W), np.uint8)
    m[10:15, 3:9] = 1
    anns = [
        _ann(1, segmentation=good),
        _ann(2, segmentation=_rle(m), iscrowd=1, bbox=[3, 10, 6, 5]),  # before the bad one
        _ann(3, segmentation=[[2, 2, 10, 2, value, 7, 2, 7]]),
        _ann(4, segmentation=[[1, 1, 5, 1, 5, 5], [2, 2, 10, 2, 10, 7, 2, 7]]),
    ]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    assert ds.skips.skipped == {"polygon with a coordinate that is not a finite number": 1}
    assert "annotation id=3" in ds.skips.summary()
    assert ds.annotation_ids(0).tolist() == [1, 2, 4]
    s = ds[0]
    ref = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(good, H, W))), m,
           mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(anns[3]["segmentation"],
                                                                      H, W)))]
    for got, want in zip(s.instances.masks.numpy(), ref):
        assert np.array_equal(got, want.astype(bool))
    assert ds.index.segments.polygons(0)[0].tolist() == good[0]  # exact after the re-parse


def test_duplicate_category_id_errors(tmp_path):
    cats = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}, {"id": 1, "name": "again"}]
    image_dir, ann_file = _coco(tmp_path, [_ann(1)], categories=cats)
    expected = r"ann\.json: category id 1 appears more than once.*'thing'.*'again'.*renumber"
    with pytest.raises(DataError, match=expected):
        CocoInstanceDataset(image_dir, ann_file)
    cats[2] = {"name": "no id"}
    image_dir, ann_file = _coco(tmp_path, [_ann(1)], categories=cats)
    with pytest.raises(DataError, match=r"category record .*'no id'.* has no integer 'id'"):
        CocoInstanceDataset(image_dir, ann_file)


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_duplicate_annotation_id_errors(tmp_path, chunk_bytes):
    doc_anns = [_ann(1), _ann(2), _ann(3, image_id=2), _ann(2, image_id=2), _ann(5)]
    image_dir, ann_file = _coco(tmp_path, doc_anns)
    doc = json.loads(ann_file.read_text())
    doc["images"].append({"id": 2, "file_name": "b.png", "height": H, "width": W})
    ann_file.write_text(json.dumps(doc))
    expected = (r"ann\.json: annotation id 2 is used by more than one annotation "
                r"\(image_id=1 and image_id=2.*renumber")
    with pytest.raises(DataError, match=expected):
        CocoInstanceDataset(image_dir, ann_file, chunk_bytes=chunk_bytes)
    for a in doc["annotations"]:
        del a["id"]  # records without ids are not checked (nothing refers to them)
    ann_file.write_text(json.dumps(doc))
    assert len(CocoInstanceDataset(image_dir, ann_file).index.ann_ids) == 5


@pytest.mark.parametrize("value", ["0", "yes", "1", 2, 0.5, [0]])
def test_iscrowd_that_is_not_0_or_1_errors(tmp_path, value):
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2, iscrowd=value)])
    with pytest.raises(DataError, match=r"annotation id=2 \(image_id=1\) has iscrowd=.*0 or 1"):
        CocoInstanceDataset(image_dir, ann_file)


def test_iscrowd_numbers_booleans_and_null(tmp_path):
    anns = [_ann(1, iscrowd=True), _ann(2, iscrowd=None), _ann(3, iscrowd=1.0), _ann(4)]
    del anns[3]["iscrowd"]
    image_dir, ann_file = _coco(tmp_path, anns)
    ds = CocoInstanceDataset(image_dir, ann_file)
    assert ds[0].instances.iscrowd.tolist() == [True, False, True, False]


@pytest.mark.parametrize(("key", "value"), [("id", "7"), ("id", 1.5), ("image_id", "1"),
                                            ("category_id", None), ("area", "40")])
def test_ids_and_area_that_are_not_numbers_error(tmp_path, key, value):
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2, **{key: value})])
    with pytest.raises(DataError, match=rf"ann\.json: annotation id=.* '?{key}'?.*(Fix|fix)"):
        CocoInstanceDataset(image_dir, ann_file)
    image_dir, ann_file = _coco(tmp_path, [_ann(1), _ann(2.0, image_id=1.0)])  # integral floats
    assert CocoInstanceDataset(image_dir, ann_file).annotation_ids(0).tolist() == [1, 2]
