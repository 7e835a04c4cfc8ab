"""File names from annotation / list files never open a file outside their folder (issue #10
section 4): absolute names and ``..`` escapes are refused at index time unless the reader's
``allow_absolute_paths`` says the file is trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lightning_seg.data.datamodules import CocoDataModule
from lightning_seg.data.formats import (
    CocoInstanceDataset,
    CocoPanopticDataset,
    DavisDataset,
    LvisDataset,
    YouTubeVISDataset,
    camvid_dataset,
    voc_dataset,
)
from lightning_seg.data.io import DataError, check_paths_under_root, escapes_root

H, W = 9, 11


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)


def test_escapes_root_is_lexical():
    for name in ("a.png", "a/b.png", "./a.png", "a/../b.png", "a/b/../../c.png", "..a/b", "a..b"):
        assert not escapes_root(name), name
    for name in ("..", "../a.png", "a/../../b.png", "a/./../../b"):
        assert escapes_root(name), name


def test_check_paths_under_root_names_the_record_and_the_fix(tmp_path):
    names = ["a.png", "b/c.png", "b/../../../etc/passwd"]
    with pytest.raises(DataError) as err:
        check_paths_under_root(names, tmp_path, "ann.json", lambda i: f"image id={i + 10}")
    msg = str(err.value)
    assert msg.startswith("ann.json: image id=12 has the file name 'b/../../../etc/passwd'")
    assert "leads out of that folder" in msg and "allow_absolute_paths=True" in msg
    with pytest.raises(DataError, match=r"'/etc/passwd', which is absolute"):
        check_paths_under_root(["/etc/passwd"], tmp_path, "ann.json", str)
    with pytest.raises(DataError, match=r"\(and move the file there\)\.$"):
        check_paths_under_root(["/etc/passwd"], tmp_path, "list.txt", str, option=None)
    check_paths_under_root(["/etc/passwd", "../x"], tmp_path, "ann.json", str, allow_absolute=True)


def _coco(tmp_path, file_name):
    _image(tmp_path / "images" / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 7, "file_name": file_name, "height": H, "width": W}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
                         "segmentation": [[1, 1, 4, 1, 4, 4]], "area": 4.5}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(doc))
    return tmp_path / "images", ann_file


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "x/../../outside.png"])
def test_coco_file_name_outside_the_image_folder_errors_at_index_time(tmp_path, name):
    image_dir, ann_file = _coco(tmp_path, name)
    expected = rf"ann\.json: image id=7 has the file name '{name}'.*allow_absolute_paths=True"
    with pytest.raises(DataError, match=expected):
        CocoInstanceDataset(image_dir, ann_file)


def test_coco_absolute_file_name_is_opened_when_allowed(tmp_path):
    outside = tmp_path / "elsewhere" / "b.png"
    _image(outside, value=77)
    image_dir, ann_file = _coco(tmp_path, str(outside))
    ds = CocoInstanceDataset(image_dir, ann_file, allow_absolute_paths=True)
    assert ds.image_path(1) == outside and int(ds[1].image[0, 0, 0]) == 77
    assert int(ds[0].image[0, 0, 0]) == 0  # relative names still under image_dir


def test_coco_datamodule_passes_allow_absolute_paths(tmp_path):
    outside = tmp_path / "elsewhere" / "b.png"
    _image(outside, value=77)
    _coco(tmp_path, str(outside))
    kwargs = {"root": tmp_path, "val_ann": "ann.json", "val_images": "images", "num_workers": 0}
    dm = CocoDataModule(**kwargs)
    with pytest.raises(DataError, match="image id=7 .* which is absolute"):
        dm.setup("validate")
    dm = CocoDataModule(allow_absolute_paths=True, **kwargs)
    dm.setup("validate")
    assert int(dm.val_dataset[1].image[0, 0, 0]) == 77


def test_lvis_coco_url_leading_out_errors(tmp_path):
    image_dir, ann_file = _coco(tmp_path, "a.png")
    doc = json.loads(ann_file.read_text())
    del doc["images"][1]["file_name"]
    doc["images"][1]["coco_url"] = "http://images.cocodataset.org/../.."
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"image id=7 has the file name '\.\./\.\.'"):
        LvisDataset(image_dir, ann_file)


def test_panoptic_image_and_png_names_are_checked(tmp_path):
    _image(tmp_path / "images" / "a.png")
    doc = {
        "images": [{"id": 3, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [{"image_id": 3, "file_name": "../../a.png", "segments_info": []}],
        "categories": [{"id": 1, "name": "thing", "isthing": 1}],
    }
    ann_file = tmp_path / "pan.json"
    ann_file.write_text(json.dumps(doc))
    (tmp_path / "pngs").mkdir()
    expected = r"pan\.json: the annotation of image_id=3 has the file name '\.\./\.\./a\.png'"
    with pytest.raises(DataError, match=expected):
        CocoPanopticDataset(tmp_path / "images", ann_file, tmp_path / "pngs")
    doc["annotations"][0]["file_name"] = "a.png"
    doc["images"][0]["file_name"] = "/etc/hostname"
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"image id=3 has the file name '/etc/hostname'"):
        CocoPanopticDataset(tmp_path / "images", ann_file, tmp_path / "pngs")
    ds = CocoPanopticDataset(tmp_path / "images", ann_file, tmp_path / "pngs",
                             allow_absolute_paths=True)
    assert len(ds) == 1


def test_youtube_vis_frame_names_are_checked(tmp_path):
    doc = {
        "videos": [{"id": 5, "file_names": ["v/0.png", "v/../../../x.png"], "height": H,
                    "width": W}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann_file = tmp_path / "vis.json"
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"vis\.json: frame 1 of video id=5 has the file name"):
        YouTubeVISDataset(tmp_path / "frames", ann_file)
    assert len(YouTubeVISDataset(tmp_path / "frames", ann_file, allow_absolute_paths=True)) == 2


def test_list_files_and_sequence_names_are_checked(tmp_path):
    (tmp_path / "train.txt").write_text("train/x.png trainannot/x.png\n../../x.png ../y/../../z\n")
    expected = r"train\.txt: line 2 \(path '\.\./\.\./x\.png', .*\) has the file name '\.\./x\.png'"
    with pytest.raises(DataError, match=expected):
        camvid_dataset(tmp_path, "train")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    list_file = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    list_file.write_text("2007_000032\n../../../etc/passwd\n")
    with pytest.raises(DataError, match=r"val\.txt: entry 2 has the file name '\.\./\.\./\.\./etc"):
        voc_dataset(tmp_path, "val")
    (tmp_path / "davis" / "JPEGImages" / "480p" / "seq").mkdir(parents=True)
    with pytest.raises(DataError, match=r"sequence 1 has the file name '\.\.'"):
        DavisDataset(tmp_path / "davis", ["seq", ".."])
