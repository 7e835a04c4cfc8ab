"""DataModules: info before setup, batches of the right types, clear errors for missing data."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data.datamodules.base import split_indices
from lightning_seg.data.datamodules.camvid import CamVidDataModule, VOCDataModule
from lightning_seg.data.datamodules.cityscapes import CityscapesDataModule
from lightning_seg.data.datamodules.coco import CocoDataModule, LvisDataModule
from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
from lightning_seg.data.datamodules.video import DavisDataModule, YouTubeVISDataModule
from lightning_seg.data.io import DataError
from lightning_seg.data.transforms import EvalTransform, TrainTransform
from lightning_seg.structures import Batch, DatasetInfo, InstanceTargets, PanopticTargets

LOADER = {"batch_size": 2, "num_workers": 0}
WORLD = {"num_train": 3, "num_val": 2, "height": 48, "width": 64, "max_objects": 3, "seed": 0}


def _check_batch(batch: Batch, semantic=False, instances=False, panoptic=False, keypoints=False) -> None:
    assert isinstance(batch, Batch)
    assert batch.images.dtype == torch.float32 and batch.images.ndim == 4
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    assert batch.images.shape[-1] % 32 == 0 and batch.images.shape[-2] % 32 == 0
    assert len(batch.meta) == len(batch.image_sizes) == len(batch)
    if semantic:
        assert batch.semantic.dtype == torch.int64 and batch.semantic.shape[1:] == batch.images.shape[2:]
    else:
        assert batch.semantic is None
    if instances:
        assert all(isinstance(t, InstanceTargets) for t in batch.instances)
        assert [t.image_size for t in batch.instances] == batch.image_sizes
        assert all(t.masks is not None for t in batch.instances)
    else:
        assert batch.instances is None
    if panoptic:
        assert all(isinstance(p, PanopticTargets) for p in batch.panoptic)
        assert all(p.segment_map.shape == batch.images.shape[2:] for p in batch.panoptic)
    if keypoints:
        assert all(t.keypoints is not None and t.keypoints.shape[1:] == (5, 3) for t in batch.instances)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.mark.parametrize(
    "task, flags",
    [
        ("semantic", {"semantic": True}),
        ("instance", {"instances": True}),
        ("keypoints", {"instances": True, "keypoints": True}),
        ("panoptic", {"semantic": True, "instances": True, "panoptic": True}),
        ("video", {"instances": True}),
    ],
)
def test_synthetic_every_task_yields_batches(world, task, flags):
    root = world / ("video" if task == "video" else "images")
    dm = SyntheticShapesDataModule(
        task, root=root, num_frames=3, clip_length=2, **WORLD, **LOADER,
        train_transform=TrainTransform(size=(40, 40), seed=0), val_transform=EvalTransform(),
    )  # fmt: skip
    info = dm.info  # before setup: nothing generated yet for a fresh root
    assert dm.num_classes == {"semantic": 7, "panoptic": 7}.get(task, 4)
    assert dm.num_keypoints == (5 if task == "keypoints" else 0)
    dm.setup("fit")
    assert (root / "world.json").is_file()
    assert dm.info is info
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, **flags)
    assert batch.images.shape[-2:] == (64, 64)  # 40x40 crops padded to 64
    if task == "video":
        assert batch.clip_length == 2 and len(batch) == 4
    if task == "keypoints":
        assert dm.train_dataset.transform.flip_permutation == info.flip_permutation()
    _check_batch(next(iter(dm.val_dataloader())), **flags)


def test_synthetic_info_before_setup_generates_nothing(tmp_path):
    dm = SyntheticShapesDataModule("keypoints", root=tmp_path / "w", **WORLD)
    assert dm.keypoint_flip_map and dm.class_names == ["circle", "triangle", "square", "star"]
    assert dm.thing_classes == [0, 1, 2, 3] and dm.stuff_classes == []
    assert not (tmp_path / "w").exists()
    default = SyntheticShapesDataModule("semantic")
    assert "shapes_images" in default.root.name
    assert default.stuff_classes == [4, 5, 6] and default.ignore_index == 255


def test_datamodules_give_info_before_setup_without_data(tmp_path):
    missing = tmp_path / "absent"
    cases = [
        (CamVidDataModule(missing), 11),
        (VOCDataModule(missing), 21),
        (CocoDataModule(missing, task="instance"), 80),
        (CocoDataModule(missing, task="keypoints"), 1),
        (CocoDataModule(missing, task="panoptic"), 133),
        (LvisDataModule(missing), 1203),
        (CityscapesDataModule(missing, task="semantic"), 19),
        (CityscapesDataModule(missing, task="instance"), 8),
        (CityscapesDataModule(missing, task="panoptic"), 19),
        (DavisDataModule(missing), 1),
        (YouTubeVISDataModule(missing), 40),
    ]
    for dm, num_classes in cases:
        assert isinstance(dm.info, DatasetInfo)
        assert dm.num_classes == num_classes, type(dm).__name__
    assert CocoDataModule(missing, task="keypoints").num_keypoints == 17
    assert len(CocoDataModule(missing, task="panoptic").stuff_classes) == 53
    assert len(CityscapesDataModule(missing, task="panoptic").thing_classes) == 8


@pytest.mark.parametrize(
    "make, layout_hint",
    [
        (lambda root: VOCDataModule(root), "JPEGImages"),
        (lambda root: CocoDataModule(root), "instances_{train,val}2017.json"),
        (lambda root: LvisDataModule(root), "lvis_v1_train.json"),
        (lambda root: CityscapesDataModule(root, task="panoptic"), "leftImg8bit"),
        (lambda root: CamVidDataModule(root), "trainannot"),
        (lambda root: DavisDataModule(root), "Annotations"),
        (lambda root: YouTubeVISDataModule(root), "train.json"),
    ],
)
def test_missing_root_error_names_the_layout(tmp_path, make, layout_hint):
    dm = make(tmp_path / "absent")  # __init__ must not fail: configs parse without data
    with pytest.raises(DataError, match="Expected layout") as err:
        dm.setup("fit")
    assert layout_hint in str(err.value)


def test_camvid_from_shared_data(shared_data):
    root = shared_data / "semantic" / "camvid"
    dm = CamVidDataModule(
        root, val_split_from_train=0.1, max_train_samples=4, **LOADER,
        train_transform=TrainTransform(size=(63, 95), seed=0), val_transform=EvalTransform(size=(90, 120)),
    )  # fmt: skip
    assert dm.num_classes == 11 and dm.ignore_index == 255
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 37  # 367 frames, 10% held back
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, semantic=True)
    values = set(batch.semantic.unique().tolist())
    assert values <= set(range(11)) | {255} and 11 not in values
    val = next(iter(dm.val_dataloader()))
    assert val.image_sizes == [(90, 120), (90, 120)]
    # the held-back part is deterministic and disjoint from train
    kept, held = split_indices(367, 0.1, seed=0)
    assert set(kept).isdisjoint(held) and len(kept) + len(held) == 367
    assert split_indices(367, 0.1, seed=0) == (kept, held)
    assert split_indices(367, 0.1, seed=1) != (kept, held)
    pickle.dumps(dm.train_dataset)  # spawn-started workers need this


def _coco_mini(shared_data, task: str, **kwargs) -> CocoDataModule:
    ann = "annotations/person_keypoints.json" if task == "keypoints" else "annotations/instances.json"
    return CocoDataModule(
        shared_data / "instance" / "coco_mini", task=task, train_ann=ann, val_ann=ann,
        train_images="images", val_images="images", **LOADER, **kwargs,
    )  # fmt: skip


def test_coco_mini_instances_and_keypoints(shared_data):
    dm = _coco_mini(shared_data, "instance", train_transform=TrainTransform(size=(128, 128), seed=0))
    assert dm.num_classes == 80 and dm.class_names[0] == "person"
    dm.setup("fit")
    assert len(dm.train_dataset) == 5 and len(dm.val_dataset) == 6  # one image has no annotation
    _check_batch(next(iter(dm.train_dataloader())), instances=True)
    sizes = [len(t) for b in dm.val_dataloader() for t in b.instances]
    assert 0 in sizes  # the empty image is kept for evaluation

    kp = _coco_mini(shared_data, "keypoints", train_transform=TrainTransform(size=(128, 128), seed=0))
    assert kp.num_keypoints == 17 and (1, 2) in kp.keypoint_flip_map
    kp.setup("fit")
    batch = next(iter(kp.train_dataloader()))
    assert all(t.keypoints.shape[1:] == (17, 3) for t in batch.instances)


def test_coco_panoptic_sample(shared_data):
    root = shared_data / "panoptic" / "coco_panoptic_sample"
    dm = CocoDataModule(
        root, task="panoptic", train_ann="panoptic_examples.json", val_ann="panoptic_examples.json",
        train_images="input_images", val_images="input_images", train_panoptic_dir="panoptic_examples",
        val_panoptic_dir="panoptic_examples", train_transform=TrainTransform(size=(96, 96), seed=0), **LOADER,
    )  # fmt: skip
    assert dm.num_classes == 133 and len(dm.thing_classes) == 80
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, semantic=True, instances=True, panoptic=True)
    for pan in batch.panoptic:
        present = set(pan.segment_map.unique().tolist()) - {0}
        assert present == set(pan.ids.tolist())


def test_davis_clips_from_shared_data(shared_data):
    dm = DavisDataModule(
        shared_data / "video" / "davis2016_car_shadow", train_sequences=["car-shadow"],
        val_sequences=["car-shadow"], clip_length=3, max_val_samples=1, **LOADER,
        train_transform=TrainTransform(size=(64, 96), scale_range=(0.25, 0.25), seed=0),
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, instances=True)
    assert batch.clip_length == 3 and len(batch) == 6
    first = batch.meta[:3]
    assert len({m.video_id for m in first}) == 1
    assert [m.frame_index for m in first] == list(range(first[0].frame_index, first[0].frame_index + 3))


def _fake_cityscapes(root) -> None:
    """One 24x40 image of city 'aachen' per split: road, sky, two cars, a person group."""
    label = np.full((24, 40), 7, dtype=np.uint8)  # road
    label[:6] = 23  # sky
    label[:, :2] = 0  # unlabeled (void)
    inst = label.astype(np.int32)
    inst[10:16, 5:12] = 26001
    inst[10:16, 20:30] = 26002
    inst[16:20, 32:38] = 24  # person group (crowd)
    label[10:16, 5:12] = label[10:16, 20:30] = 26
    label[16:20, 32:38] = 24
    for split in ("train", "val"):
        img_dir = root / "leftImg8bit" / split / "aachen"
        gt_dir = root / "gtFine" / split / "aachen"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        stem = "aachen_000000_000019"
        Image.fromarray(np.random.randint(0, 255, (24, 40, 3), dtype=np.uint8)).save(
            img_dir / f"{stem}_leftImg8bit.png"
        )
        Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")


def test_cityscapes_tasks_on_a_tiny_fake_tree(tmp_path):
    _fake_cityscapes(tmp_path)
    sem = CityscapesDataModule(tmp_path, task="semantic", **LOADER)
    sem.setup("fit")
    batch = next(iter(sem.train_dataloader()))
    _check_batch(batch, semantic=True)
    assert set(batch.semantic[0, :24, :40].unique().tolist()) == {0, 10, 11, 13, 255}

    pan = CityscapesDataModule(tmp_path, task="panoptic", **LOADER)
    pan.setup("fit")
    batch = next(iter(pan.train_dataloader()))
    _check_batch(batch, semantic=True, instances=True, panoptic=True)
    p = batch.panoptic[0]
    assert sorted(p.ids.tolist()) == [7, 23, 24, 26001, 26002]
    crowd = dict(zip(p.ids.tolist(), p.iscrowd.tolist()))
    assert crowd[24] and not crowd[26001] and not crowd[7]
    assert int((p.segment_map[:24, :2] != 0).sum()) == 0  # void label -> void segment
    inst = batch.instances[0]
    assert sorted(inst.labels.tolist()) == [11, 13, 13]  # person (crowd), car, car as trainIds
    assert int(inst.iscrowd.sum()) == 1

    ins = CityscapesDataModule(tmp_path, task="instance", **LOADER)
    ins.setup("fit")
    _check_batch(next(iter(ins.train_dataloader())), instances=True)


def test_workers_get_different_augmentations(world):
    dm = SyntheticShapesDataModule(
        "semantic", root=world / "images", **WORLD, batch_size=1, num_workers=2,
        persistent_workers=False, train_transform=TrainTransform(size=(32, 32), seed=0),
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.dataset.dataset = torch.utils.data.Subset(loader.dataset.dataset, [0, 0, 0, 0])
    torch.manual_seed(0)
    images = [b.images for b in loader]
    assert len(images) == 4
    # items 0 and 1 are the first draws of worker 0 and worker 1: their streams must differ
    assert not torch.equal(images[0], images[1])


def test_datamodule_config_parses_with_transform_class_path(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticShapesDataModule, "data")
    cfg = parser.parse_object(
        {
            "data": {
                "task": "keypoints",
                "root": str(tmp_path / "w"),
                "batch_size": 3,
                "train_transform": {
                    "class_path": "lightning_seg.data.transforms.AlbumentationsTransform",
                    "init_args": {"transforms": [{"class_path": "albumentations.HorizontalFlip",
                                                  "init_args": {"p": 0.5}}]},
                },
                "val_transform": {"class_path": "lightning_seg.data.transforms.EvalTransform",
                                  "init_args": {"size": [64, 80]}},
            }
        }
    )
    dm = parser.instantiate(cfg).data
    assert dm.batch_size == 3 and dm.num_keypoints == 5
    assert type(dm.train_transform.transforms[0]).__name__ == "HorizontalFlip"
