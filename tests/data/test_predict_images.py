"""Prediction input (issue #10 section 4): a folder of any image type, unreadable images left
out and reported, PIL's decompression-bomb guard as a DataError, a maximum side for inference
with predictions mapped back to the size on disk."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data.collate import Collate
from lightning_seg.data.datamodules import CamVidDataModule, TransformedDataset
from lightning_seg.data.formats import ImageFolderDataset, camvid_dataset
from lightning_seg.data.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DataError,
    check_image,
    max_image_pixels,
    read_image,
    set_max_image_pixels,
)
from lightning_seg.data.transforms import LimitSize
from lightning_seg.structures import InstanceTargets, Sample, SampleMeta


@pytest.fixture(autouse=True)
def _restore_pixel_limit():
    yield
    set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)


def _rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _smooth(h, w, seed=0):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs * 7 + 10 * seed, ys * 11, np.full_like(xs, 128)], -1).astype(np.uint8)


def _bytes(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    arrays = {}
    for k, (name, fmt) in enumerate([("a.png", "PNG"), ("b.JPG", "JPEG"), ("c.jpeg", "JPEG"),
                                     ("d.bmp", "BMP"), ("e.TIF", "TIFF"), ("f.tiff", "TIFF"),
                                     ("g.webp", "WEBP")]):
        arrays[name] = _smooth(12 + k, 17, seed=k)
        (folder / name).write_bytes(_bytes(arrays[name], fmt))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder, arrays


def test_folder_reads_every_image_type_and_says_what_it_found(tmp_path, caplog):
    folder, arrays = _folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning_seg.data"):
        ds = ImageFolderDataset(folder)
    assert [p.name for p in ds.paths] == sorted(arrays)
    assert ds.description == (
        "found 7 image(s) (1 .png, 1 .jpg, 1 .jpeg, 1 .bmp, 1 .tif, 1 .tiff, 1 .webp); ignored 1 "
        "other file(s) (1 .txt)"
    )
    assert "found 7 image(s)" in caplog.text and "ignored 1 other file(s) (1 .txt)" in caplog.text
    for i, path in enumerate(ds.paths):
        s = ds[i]
        want = arrays[path.name]
        assert s.meta.file_name == str(path) and s.meta.image_id == i
        assert s.meta.orig_size == want.shape[:2] and s.image.shape == (3, *want.shape[:2])
        if path.suffix.lower() in (".png", ".bmp", ".tif", ".tiff"):  # lossless
            assert np.array_equal(s.image.permute(1, 2, 0).numpy(), want)
        else:
            assert np.abs(s.image.permute(1, 2, 0).numpy().astype(int) - want).mean() < 4
    assert ds.skips.num_skipped == 0


def test_unreadable_images_are_left_out_named_and_counted(tmp_path):
    folder, _ = _folder(tmp_path)
    jpeg = _bytes(_rgb(40, 50), "JPEG")
    png = _bytes(_rgb(40, 50), "PNG")
    (folder / "h_random.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (folder / "i_truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (folder / "j_truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "k_empty.png").write_bytes(b"")
    ds = ImageFolderDataset(folder)
    assert ds.num_found == 11 and len(ds) == 7
    assert ds.skips.skipped == {"image that cannot be read": 4}
    summary = ds.skips.summary()
    for name in ("h_random.jpg", "i_truncated.jpg", "j_truncated.png", "k_empty.png"):
        assert f"{name}: cannot decode image (" in summary
    assert "image file is truncated" in summary and "Truncated File Read" in summary
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=Collate(1)))
    assert [len(b) for b in batches] == [3, 3, 1]  # every batch is made of readable images


def test_folder_without_images_or_with_none_readable_errors(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"no image found in the folder \(looked for \.png, "
                                        r"\.jpg.*1 other files: 1 \.txt.*recursive=True"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"(?s)none of the 1 image\(s\) can be read.*bad\.png"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(_bytes(_rgb(4, 5), "PNG"))
    assert len(ImageFolderDataset(tmp_path, recursive=True)) == 1


@pytest.mark.parametrize("limit", [40 * 50 - 1, (40 * 50) // 2 - 1])  # PIL: warning, error
def test_image_over_the_pixel_limit_is_a_data_error_naming_the_option(tmp_path, limit):
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(40, 50)).save(path)
    set_max_image_pixels(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape as a warning either
        with pytest.raises(DataError, match=r"big\.png: .*max_image_pixels limit .* raise the "
                                            r"limit: the DataModule option max_image_pixels"):
            read_image(path)
        problem = check_image(path)
    assert problem is not None and "max_image_pixels" in problem
    set_max_image_pixels(40 * 50)
    assert read_image(path).shape == (40, 50, 3)


def test_folder_leaves_out_images_over_the_limit(tmp_path):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "big.png")
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "small.png")
    set_max_image_pixels(1000)
    ds = ImageFolderDataset(tmp_path)
    assert [p.name for p in ds.paths] == ["small.png"]
    assert "big.png: Image size (2000 pixels) exceeds limit" in ds.skips.summary()


def test_transformed_dataset_applies_the_limit_in_its_process(tmp_path):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "big.png")
    ds = TransformedDataset(ImageFolderDataset(tmp_path), None, max_image_pixels=10**9)
    set_max_image_pixels(100)  # e.g. a spawned worker starting with another value
    assert ds[0].image.shape == (3, 40, 50) and max_image_pixels() == 10**9


def _sample(h, w):
    image = torch.from_numpy(_rgb(h, w)).permute(2, 0, 1).contiguous()
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, h // 4 : h // 2, w // 4 : w // 2] = True
    inst = InstanceTargets(boxes=torch.tensor([[w // 4, h // 4, w // 2, h // 2]]).float(),
                           labels=torch.tensor([0]), image_size=(h, w), masks=masks)
    semantic = torch.zeros(h, w, dtype=torch.int64)
    semantic[:, w // 2 :] = 1
    return Sample(image=image, meta=SampleMeta(0, "x.png", (h, w)), instances=inst,
                  semantic=semantic)


def test_limit_size_shrinks_only_large_images_and_keeps_the_original_size(caplog):
    t = LimitSize(100)
    small = _sample(60, 100)
    assert t(small) is small and t.num_resized == 0
    with caplog.at_level(logging.INFO, logger="lightning_seg.data"):
        out = t(_sample(200, 400))
        t(_sample(300, 400))
    assert out.image_size == (50, 100) and out.meta.orig_size == (200, 400)
    assert out.semantic.shape == (50, 100) and set(out.semantic.unique().tolist()) == {0, 1}
    assert out.semantic[:, :50].eq(0).all() and out.semantic[:, 50:].eq(1).all()
    # the mask (rows 50:100, columns 100:200 of 200 x 400) scaled by 1/4, box from the mask
    torch.testing.assert_close(out.instances.boxes, torch.tensor([[25.0, 12.5, 50.0, 25.0]]),
                               atol=0.5, rtol=0)
    assert t.num_resized == 2
    info = [r for r in caplog.records if r.levelno == logging.INFO and "resized" in r.getMessage()]
    assert len(info) == 1 and "200x400 (h x w) resized to 50x100" in info[0].getMessage()


def test_predict_folder_through_the_datamodule(tmp_path):
    folder, arrays = _folder(tmp_path)
    Image.fromarray(_rgb(90, 160)).save(folder / "z_large.png")
    (folder / "y_corrupt.jpg").write_bytes(b"garbage")
    dm = CamVidDataModule(tmp_path / "no_camvid_needed", predict_images=str(folder),
                          predict_max_size=64, batch_size=3, num_workers=0)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    names = [m.file_name.split("/")[-1] for b in batches for m in b.meta]
    assert names == sorted([*arrays, "z_large.png"])
    large = next(b for b in batches if any(m.file_name.endswith("z_large.png") for m in b.meta))
    i = [m.file_name.endswith("z_large.png") for m in large.meta].index(True)
    assert large.image_sizes[i] == (36, 64) and large.meta[i].orig_size == (90, 160)
    # the semantic task maps its predictions back to the size on disk
    from lightning_seg.models.detectors import UNet
    from lightning_seg.tasks.semantic import SemanticSegmentationTask

    net = UNet(dm.num_classes, base_channels=4, depth=1)
    task = SemanticSegmentationTask(net, dm.num_classes).eval()
    with torch.no_grad():
        labels = task.predict_step(large, 0)
    assert [tuple(x.shape) for x in labels] == [tuple(m.orig_size) for m in large.meta]
    expected = r"(?s)left out 1 image\(s\).*y_corrupt\.jpg: cannot decode"
    with pytest.warns(UserWarning, match=expected):
        dm.teardown("predict")


def test_camvid_folder_mode_reads_jpg_images(tmp_path):
    for sub in ("test", "testannot"):
        (tmp_path / sub).mkdir()
    Image.fromarray(_rgb(5, 6)).save(tmp_path / "test" / "x.JPG")
    Image.fromarray(np.full((5, 6), 3, np.uint8)).save(tmp_path / "testannot" / "x.png")
    ds = camvid_dataset(tmp_path, "test")
    assert len(ds) == 1 and ds[0].semantic.eq(3).all()
