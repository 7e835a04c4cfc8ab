"""``lseg export``: YOLACT end to end (image in; boxes, scores, labels, masks out, Fast NMS
inside) and semantic networks, as ONNX run in onnxruntime and as TorchScript, against the
PyTorch network on the same images at sizes other than the one exported with.

Tolerances: boxes 1e-3 px, scores 1e-5, labels and the number of detections equal, masks equal
on all but 0.1% of the pixels (bilinear upsampling and sigmoid differ in the last bits between
runtimes, which flips pixels sitting exactly at 0.5); semantic logits 1e-4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_yolact import TINY_YOLACT_YAML, tiny_yolact

from lightning_seg.commands.export import (
    ExportError,
    SemanticExport,
    YolactExport,
    export,
    export_module,
)
from lightning_seg.structures import Batch

REPO = Path(__file__).resolve().parents[2]
INPUT = (128, 128)


def _ort():
    return pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (pip install 'lightning_seg[export]')")


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(1, 3, 97, 143, generator=g), torch.rand(1, 3, 160, 120, generator=g)]


def _trained_tiny_yolact(plus: bool = False):
    """A tiny YOLACT after a few steps on blobs: confident, well-separated scores (random weights
    give near ties that any two runtimes may order differently)."""
    from test_maskrcnn import _blob_batch, batch_of

    torch.manual_seed(0)
    model = tiny_yolact(plus=plus, input_size=128).train()
    images, sizes, targets = _blob_batch([(128, 128), (128, 128)], [3, 2], seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):
        loss = sum(model(batch_of(images, sizes, targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _reference(model, image: torch.Tensor):
    """The PyTorch network's predictions for an image squashed to ``INPUT``, mapped back."""
    h, w = image.shape[-2:]
    x = F.interpolate(image, size=INPUT, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model(Batch.from_images(x, orig_sizes=[(h, w)]))[0]


def _check(pred, boxes, scores, labels, masks, valid):
    n = int(valid.sum())
    assert n == len(pred) and n > 0
    assert bool(valid[:n].all()) and not bool(valid[n:].any())  # valid detections come first
    torch.testing.assert_close(torch.as_tensor(boxes[:n]), pred.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.as_tensor(scores[:n]), pred.scores, atol=1e-5, rtol=0)
    assert torch.equal(torch.as_tensor(labels[:n]), pred.labels)
    differ = (torch.as_tensor(masks[:n]) != pred.masks).float().mean().item()
    assert differ <= 1e-3, f"{differ:.4%} of the mask pixels differ"


@pytest.mark.parametrize("plus", [False, True], ids=["yolact", "yolact_plus"])
def test_yolact_onnx_in_onnxruntime_equals_pytorch(plus, tmp_path):
    ort = _ort()
    model = _trained_tiny_yolact(plus)
    wrapper = export_module(model, INPUT)
    assert isinstance(wrapper, YolactExport)
    path = export(wrapper, torch.rand(1, 3, 100, 100), tmp_path / "yolact.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "masks", "valid"]
    for image in _images():
        boxes, scores, labels, masks, valid = session.run(None, {"images": image.numpy()})
        assert masks.shape[-2:] == image.shape[-2:] and masks.dtype == bool
        _check(_reference(model, image), boxes[0], scores[0], labels[0], masks[0], torch.as_tensor(valid[0]))


def test_yolact_onnx_batch_of_two(tmp_path):
    ort = _ort()
    model = _trained_tiny_yolact()
    path = export(export_module(model, INPUT), torch.rand(2, 3, 100, 100), tmp_path / "yolact2.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    a, b = _images()
    images = torch.cat([a[:, :, :97, :120], b[:, :, :97, :120]])
    outputs = session.run(None, {"images": images.numpy()})
    for i in range(2):
        _check(_reference(model, images[i : i + 1]), *(torch.as_tensor(o[i]) for o in outputs))


def test_yolact_torchscript_equals_pytorch(tmp_path):
    model = _trained_tiny_yolact()
    path = export(export_module(model, INPUT), torch.rand(1, 3, 100, 100), tmp_path / "yolact.pt", "torchscript")
    scripted = torch.jit.load(str(path))
    for image in _images():
        with torch.no_grad():
            out = scripted(image)
        _check(_reference(model, image), *(o[0] for o in out))


def test_semantic_onnx_and_torchscript_equal_pytorch(tmp_path):
    ort = _ort()
    from lightning_seg.models.detectors.unet import unet

    model = unet(5, base_channels=8, depth=3).eval()
    wrapper = export_module(model)
    assert isinstance(wrapper, SemanticExport)
    onnx_path = export(wrapper, torch.rand(1, 3, 64, 64), tmp_path / "unet.onnx", "onnx")
    ts_path = export(wrapper, torch.rand(1, 3, 64, 64), tmp_path / "unet.pt", "torchscript")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path))
    image = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        expected = model.logits(image)
        torch.testing.assert_close(scripted(image), expected, atol=1e-4, rtol=1e-4)
    got = torch.as_tensor(session.run(None, {"images": image.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_unexportable_networks_are_refused_with_the_reason():
    from test_maskrcnn import tiny_mask_rcnn

    with pytest.raises(ExportError, match="Mask R-CNN"):
        export_module(tiny_mask_rcnn())
    with pytest.raises(ExportError, match="standard"):
        export_module(tiny_yolact(nms="standard"))
    with pytest.raises(ExportError, match="no export recipe"):
        export_module(torch.nn.Conv2d(3, 3, 1))


def test_lseg_export_command_from_config_and_checkpoint(tmp_path, monkeypatch, capsys):
    ort = _ort()
    from lightning_seg.cli import main as cli_main
    from lightning_seg.commands import export as export_command

    cfg = {
        "model": {"class_path": "lightning_seg.tasks.InstanceSegmentationTask",
                  "init_args": {"model": TINY_YOLACT_YAML}},
        "data": {"class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule",
                 "init_args": {"task": "instance", "root": str(tmp_path / "world"), "num_train": 2,
                               "num_val": 1, "height": 64, "width": 64, "num_workers": 0}},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(REPO)
    task = cli_main(["--config", str(config)], run=False).model
    torch.save({"state_dict": task.state_dict()}, tmp_path / "last.ckpt")
    out = tmp_path / "out" / "tiny.onnx"
    status = export_command.main(["--config", str(config), "--ckpt_path", str(tmp_path / "last.ckpt"),
                                  "--format", "onnx", "--out", str(out), "--input-size", "96",
                                  "--height", "64", "--width", "80"])
    assert status == 0 and out.is_file()
    assert "outputs: boxes, scores, labels, masks, valid" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": torch.rand(1, 3, 70, 90).numpy()})
    assert outputs[3].shape[-2:] == (70, 90) and outputs[0].shape == (1, 100, 4)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.nothing": torch.zeros(1)}}, bad)
    with pytest.raises(ExportError, match="does not fit"):
        export_command.main(["--config", str(config), "--ckpt_path", str(bad), "--out", str(out)])
