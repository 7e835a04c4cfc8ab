"""Video readers: DAVIS (real sequence + tiny palette masks), YouTube-VIS JSON, clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lightning_seg.data.formats import DavisDataset, VideoClipDataset, YouTubeVISDataset


def test_davis_real_sequence(shared_data):
    root = shared_data / "video" / "davis2016_car_shadow"
    ds = DavisDataset(root)
    assert len(ds) == 40 and ds.sequence_names == ["car-shadow"]
    assert ds.sequences() == [list(range(40))]
    s = ds[7]
    assert s.meta.video_id == 0 and s.meta.frame_index == 7 and s.image.shape == (3, 480, 854)
    mask = np.asarray(Image.open(root / "Annotations" / "480p" / "car-shadow" / "00007.png")) == 255
    assert s.instances.track_ids.tolist() == [1] and s.instances.labels.tolist() == [0]
    assert np.array_equal(s.instances.masks[0].numpy(), mask)
    ys, xs = np.nonzero(mask)
    assert s.instances.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _davis_palette(tmp_path):
    root = tmp_path / "davis"
    for seq, n in (("a", 4), ("b", 2)):
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
        for f in range(n):
            Image.fromarray(np.full((11, 15, 3), 40 * f, np.uint8)).save(
                root / "JPEGImages" / "480p" / seq / f"{f:05d}.jpg"
            )
            if seq == "b" and f == 1:
                continue  # unannotated frame
            lab = np.zeros((11, 15), np.uint8)
            lab[1:4, 1:5] = 1
            if f % 2 == 0:
                lab[6:9, 8:14] = 3
            lab[10, 0] = 255  # void
            png = Image.fromarray(lab, mode="P")
            png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [255] * (3 * 252))
            png.save(root / "Annotations" / "480p" / seq / f"{f:05d}.png")
    return root


def test_davis_palette_objects_and_clips(tmp_path):
    ds = DavisDataset(_davis_palette(tmp_path))
    assert len(ds) == 6 and ds.sequences() == [[0, 1, 2, 3], [4, 5]]
    assert ds[0].instances.track_ids.tolist() == [1, 3]
    assert ds[1].instances.track_ids.tolist() == [1]
    assert ds[5].instances is None and ds[5].meta.video_id == 1 and ds[5].meta.frame_index == 1
    assert ds[2].instances.boxes.tolist() == [[1, 1, 5, 4], [8, 6, 14, 9]]
    clips = VideoClipDataset(ds, clip_length=2, stride=2)
    assert clips.clips == [[0, 1], [2, 3], [4, 5]]
    clips = VideoClipDataset(ds, clip_length=2, frame_step=2)
    assert clips.clips == [[0, 2], [1, 3]] and clips.skips.num_skipped == 1
    clip = clips[1]
    assert [s.meta.frame_index for s in clip] == [1, 3]


def _youtube_vis(tmp_path):
    frames = tmp_path / "frames"
    h, w = 13, 19
    videos = []
    for vid, n in ((5, 3), (8, 2)):
        names = []
        for f in range(n):
            (frames / f"v{vid}").mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(np.full((h, w, 3), 30 * f, np.uint8))
            image.save(frames / f"v{vid}" / f"{f}.png")
            names.append(f"v{vid}/{f}.png")
        videos.append({"id": vid, "file_names": names, "height": h, "width": w, "length": n})
    m = np.zeros((h, w), np.uint8)
    m[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    poly = [[10, 5, 17, 5, 17, 12, 10, 12]]
    anns = [
        {"id": 1, "video_id": 5, "category_id": 4, "iscrowd": 0,
         "segmentations": [rle, None, rle], "bboxes": [[3, 2, 6, 4], None, [3, 2, 6, 4]],
         "areas": [24, None, 24]},
        {"id": 2, "video_id": 5, "category_id": 2, "iscrowd": 0,
         "segmentations": [poly, poly, None], "bboxes": [[10, 5, 7, 7], [10, 5, 7, 7], None],
         "areas": [49, 49, None]},
        {"id": 3, "video_id": 8, "category_id": 4, "iscrowd": 0,
         "segmentations": [poly, poly], "bboxes": None, "areas": [49, 49]},
    ]
    doc = {"videos": videos, "annotations": anns,
           "categories": [{"id": 2, "name": "cat"}, {"id": 4, "name": "dog"}]}
    ann_file = tmp_path / "video_instances.json"
    ann_file.write_text(json.dumps(doc))
    return frames, ann_file, m


def test_youtube_vis_frames_tracks_masks(tmp_path):
    frames, ann_file, m = _youtube_vis(tmp_path)
    ds = YouTubeVISDataset(frames, ann_file)
    assert len(ds) == 5 and ds.sequences() == [[0, 1, 2], [3, 4]]
    assert ds.info.class_names == ["cat", "dog"]
    f0, f1, f2 = ds[0], ds[1], ds[2]
    assert f0.meta.video_id == 5 and f2.meta.frame_index == 2 and ds[3].meta.video_id == 8
    assert f0.instances.track_ids.tolist() == [1, 2] and f0.instances.labels.tolist() == [1, 0]
    assert f1.instances.track_ids.tolist() == [2] and f2.instances.track_ids.tolist() == [1]
    assert np.array_equal(f0.instances.masks[0].numpy(), m.astype(bool))
    polygon = [[10, 5, 17, 5, 17, 12, 10, 12]]
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 13, 19)))
    assert np.array_equal(f1.instances.masks[0].numpy(), ref.astype(bool))
    assert f0.instances.boxes.tolist() == [[3, 2, 9, 6], [10, 5, 17, 12]]
    assert ds[4].instances.boxes.tolist() == [[10, 5, 17, 12]]  # from the polygon
    assert ds.skips.num_skipped == 0
    clips = VideoClipDataset(ds, clip_length=3)
    assert len(clips) == 1 and clips.skips.num_skipped == 1
    assert [s.instances.track_ids.tolist() for s in clips[0]] == [[1, 2], [2], [1]]


def test_youtube_vis_frame_count_mismatch(tmp_path):
    from lightning_seg.data.io import DataError

    frames, ann_file, _ = _youtube_vis(tmp_path)
    doc = json.loads(ann_file.read_text())
    doc["annotations"][0]["segmentations"].append(None)
    ann_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="one entry .* per frame"):
        YouTubeVISDataset(frames, ann_file)


def test_youtube_vis_unreadable_rle_and_non_numeric_polygon_are_skipped(tmp_path):
    frames, ann_file, _ = _youtube_vis(tmp_path)
    doc = json.loads(ann_file.read_text())
    doc["annotations"][0]["segmentations"][2] = {"size": [13, 19], "counts": "!!"}
    doc["annotations"][1]["segmentations"][1] = [[10, 5, "17", 5, 17, 12, 10, 12]]
    ann_file.write_text(json.dumps(doc))
    ds = YouTubeVISDataset(frames, ann_file)
    assert ds.skips.skipped == {
        "compressed RLE counts unreadable (not a pycocotools RLE string)": 1,
        "polygon with a coordinate that is not a finite number": 1,
    }
    assert "track id=1 frame 2 of video id=5" in ds.skips.summary()
    assert ds[1].instances is not None and len(ds[1].instances) == 0
    assert ds[2].instances.track_ids.tolist() == []
    assert ds[0].instances.track_ids.tolist() == [1, 2]
