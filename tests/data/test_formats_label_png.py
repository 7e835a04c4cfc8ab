"""Label-PNG readers: CamVid (real), VOC and Cityscapes (tiny files written here)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lightning_seg.data.formats import (
    CityscapesInstanceDataset,
    LabelPngDataset,
    camvid_dataset,
    cityscapes_semantic_dataset,
    voc_dataset,
)
from lightning_seg.data.formats.cityscapes import CITYSCAPES_LABELS, label_id_to_train_id
from lightning_seg.data.formats.label_png import voc_palette
from lightning_seg.structures import DatasetInfo


def test_camvid_train_list_with_segnet_prefix(shared_data):
    root = shared_data / "semantic" / "camvid"
    ds = camvid_dataset(root, "train")
    assert len(ds) == 367 and ds.info.num_classes == 11 and ds.info.ignore_index == 255
    s = ds[0]
    raw = np.asarray(Image.open(root / "trainannot" / "0001TP_006690.png")).astype(np.int64)
    expected = np.where(raw == 11, 255, raw)
    assert s.image.shape == (3, 360, 480)
    assert np.array_equal(s.semantic.numpy(), expected)
    assert s.meta.file_name.endswith("train/0001TP_006690.png")


def test_camvid_smoke_list_and_folder_fallback(shared_data):
    root = shared_data / "semantic" / "camvid_smoke"
    by_list = camvid_dataset(root, "smoke")
    by_folder = camvid_dataset(root, "test")
    assert len(by_list) == len(by_folder) == 5
    for i in range(2):
        a, b = by_list[i], by_folder[i]
        assert a.meta.file_name == b.meta.file_name
        assert set(a.semantic.unique().tolist()) <= set(range(11)) | {255}


def test_voc_palette_pngs(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["2007_000001", "2007_000002"]
    labels = {}
    for k, name in enumerate(ids):
        h, w = 17 + 2 * k, 23
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
        lab[0] = 255
        png = Image.fromarray(lab, mode="P")
        png.putpalette([c for rgb in voc_palette(256) for c in rgb])
        png.save(root / "SegmentationClass" / f"{name}.png")
        labels[name] = lab
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    ds = voc_dataset(root, "train")
    assert len(ds) == 2 and ds.info.num_classes == 21 and ds.info.palette[1] == (128, 0, 0)
    for k, name in enumerate(ids):
        assert np.array_equal(ds[k].semantic.numpy(), labels[name].astype(np.int64))


def test_label_png_dataset_without_lut(tmp_path):
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[0, 1, 2, 255, 1, 0, 2]] * 5, np.uint8)).save(tmp_path / "a_l.png")
    info = DatasetInfo(class_names=["a", "b", "c"])
    pairs = [(tmp_path / "a.png", tmp_path / "a_l.png"), (tmp_path / "a.png", None)]
    ds = LabelPngDataset(pairs, info)
    assert ds[0].semantic[0].tolist() == [0, 1, 2, 255, 1, 0, 2]
    assert ds[1].semantic is None


def test_cityscapes_table_is_official():
    ids = [lab.id for lab in CITYSCAPES_LABELS]
    assert ids == list(range(34)) + [-1]
    lut = label_id_to_train_id()
    train = {i: int(t) for i, t in enumerate(lut) if t != 255}
    assert train == {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                     23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    img_dir = root / "leftImg8bit" / "val" / "ulm"
    gt_dir = root / "gtFine" / "val" / "ulm"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    h, w = 9, 13
    stem = "ulm_000000_000019"
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
    label_ids = np.full((h, w), 7, np.uint8)  # road
    label_ids[0] = 23  # sky
    label_ids[1] = 4  # static -> ignore
    inst = label_ids.astype(np.int32)
    inst[3:6, 0:4] = 26001  # car 1
    inst[3:6, 5:8] = 26002  # car 2
    inst[7:9, 0:3] = 24000  # person 0 (k = 0 is still an individual instance)
    inst[7:9, 4:6] = 24  # a group of persons (crowd)
    inst[7:9, 8:10] = 29005  # caravan: instances but no trainId -> left out
    label_ids = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return root, label_ids, inst


def test_cityscapes_semantic_train_ids(tmp_path):
    root, label_ids, _ = _cityscapes(tmp_path)
    ds = cityscapes_semantic_dataset(root, "val")
    assert ds.info.num_classes == 19 and ds.info.class_names[13] == "car"
    sem = ds[0].semantic.numpy()
    assert np.array_equal(sem, label_id_to_train_id()[label_ids])
    assert sem[0, 0] == 10 and sem[1, 0] == 255 and sem[4, 1] == 13


def test_cityscapes_instances_and_crowd(tmp_path):
    root, _, inst = _cityscapes(tmp_path)
    ds = CityscapesInstanceDataset(root, "val")
    assert ds.info.class_names == ["person", "rider", "car", "truck", "bus", "train",
                                    "motorcycle", "bicycle"]
    t = ds[0].instances
    # sorted ids: 24 (person group), 24000, 26001, 26002
    assert t.labels.tolist() == [0, 0, 2, 2]
    assert t.iscrowd.tolist() == [True, False, False, False]
    assert t.boxes[2].tolist() == [0.0, 3.0, 4.0, 6.0]
    assert np.array_equal(t.masks[3].numpy(), inst == 26002)
