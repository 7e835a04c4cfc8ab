"""UPSNet's experiments: the builder is the COCO experiment's network, and each ablation sweep
file names an experiment and parameters that ``lseg`` accepts, every value building the network
the ablation means."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_seg.cli import main
from lightning_seg.layers.deform import DeformConv2d

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("upsnet_*.yaml"))


@pytest.fixture(autouse=True)
def offline_weights(monkeypatch):
    import torchvision

    from lightning_seg.models import weights

    monkeypatch.setattr(weights, "download_state_dict",
                        lambda name, member: torchvision.models.get_model(name, weights=None).state_dict())


def _benchmark():
    """benchmarks/upsnet.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_upsnet", REPO / "benchmarks" / "upsnet.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _runs(path: Path) -> list[tuple[str, object]]:
    sweep = yaml.safe_load(path.read_text())
    assert (REPO / sweep["experiment"]).is_file() and sweep["method"] == "grid"
    assert sweep["metric"] == {"name": "val/score", "goal": "maximize"}
    return [(name, value) for name, spec in sweep["parameters"].items() for value in spec["values"]]


def test_the_ablation_sweeps_exist_with_their_cpu_budget_twins():
    """Each ablation has a paper-setting sweep and a CPU-budget twin; the panoptic-head twin also
    has a second-seed file (the two seeds are reported as one table), and the panoptic loss's
    weight and the Cityscapes weighting of the heads CPU-budget sweeps (the latter also at twice
    the steps)."""
    names = ["upsnet_deformable", "upsnet_panoptic_head", "upsnet_unknown_class"]
    expected = names + [f"{n}_shapes_cpu" for n in names] + [
        "upsnet_panoptic_head_shapes_cpu_seeds", "upsnet_panoptic_loss_weight_shapes_cpu",
        "upsnet_cityscapes_weights_shapes_cpu", "upsnet_cityscapes_weights_long_shapes_cpu"]
    assert [p.stem for p in SWEEPS] == sorted(expected)


def test_the_cpu_experiment_is_the_benchmarks_network_and_schedule(monkeypatch):
    """upsnet_r18_fpn_shapes_cpu.yaml trains what benchmarks/upsnet.py trains (same parameters,
    optimizer, schedule, clipping and data), so its sweeps and the benchmark's rows compare."""
    from lightning_seg.cli import build_experiment

    monkeypatch.chdir(REPO)
    bench = _benchmark()
    args = bench.make_parser().parse_args([])
    task, data = build_experiment(REPO / "experiments" / "upsnet_r18_fpn_shapes_cpu.yaml")
    bench_net = bench.build_upsnet(args, data.info)
    ours = {k: tuple(v.shape) for k, v in task.model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in bench_net.state_dict().items()}
    for part in ("rpn", "box_head", "panoptic_head"):
        assert repr(getattr(task.model, part)) == repr(getattr(bench_net, part)), part
    assert (task.model.rpn.pre_nms_top_n_train, task.model.rpn.post_nms_top_n_test) == (
        args.rpn_pre_train, args.rpn_post_test)
    assert task.model.panoptic_head.stuff_area_limit == args.stuff_area_limit
    opt = task.hparams.optimizer["init_args"]
    assert (opt["lr"], opt["momentum"], opt["weight_decay"]) == (args.lr, 0.9, 1e-4)
    sched = task.hparams.scheduler["init_args"]
    steps = 8 * args.num_train // args.batch_size  # 8 whole epochs: 1024 steps for the benchmark's 1000
    assert sched["milestones"] == [int(steps * 0.75)] and sched["warmup_iters"] == args.warmup
    assert sched["warmup_factor"] == 0.1
    assert (data.num_train, data.num_val, data.batch_size) == (args.num_train, args.num_val, args.batch_size)
    trainer = yaml.safe_load((REPO / "experiments" / "upsnet_r18_fpn_shapes_cpu.yaml").read_text())["trainer"]
    assert trainer["gradient_clip_val"] == bench.CLIP_NORM
    assert trainer["max_epochs"] * args.num_train // args.batch_size == steps
    assert data.seed == 0  # what the docs tell --load users to pass as --seed

    # --load takes the experiment's Lightning checkpoint: its network's weights, steps and epochs
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)  # weights the benchmark's network cannot have from its own init
    ckpt = {"state_dict": task.state_dict(), "global_step": 1024, "epoch": 7, "loops": {}}
    saved = bench.lightning_checkpoint_as_saved(ckpt)
    assert (saved["steps"], saved["epochs"]) == (1024, 8)
    assert not all(torch.equal(v, task.model.state_dict()[k]) for k, v in bench_net.state_dict().items())
    bench_net.load_state_dict(saved["state_dict"])  # strict: every key, none left over
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in bench_net.state_dict().items())
    assert bench.lightning_checkpoint_as_saved({"state_dict": {}, "steps": 1, "epochs": 1}) == {
        "state_dict": {}, "steps": 1, "epochs": 1}  # a --save file passes unchanged
    with pytest.raises(ValueError, match="without network weights"):
        bench.lightning_checkpoint_as_saved({"state_dict": {"other.w": torch.ones(1)}, "global_step": 1,
                                             "epoch": 0})


def test_benchmark_set_changes_upsnets_heads_as_the_experiment_would(monkeypatch):
    """benchmarks/upsnet.py --set: the Cityscapes sweep's network (2 semantic layers) built by the
    benchmark has the experiment's parameters, so --load takes its checkpoint; a part the peers
    share, or a change without a value, is refused by the parser."""
    from lightning_seg.cli import build_experiment

    monkeypatch.chdir(REPO)
    bench = _benchmark()
    change = "semantic_head.init_args.num_layers=2"
    args = bench.make_parser().parse_args(["--set", change, "--set", "panoptic_head.init_args.loss_weight=0.5"])
    task, data = build_experiment(REPO / "experiments" / "upsnet_r18_fpn_shapes_cpu.yaml",
                                  f"{bench.NET}.{change}")
    bench_net = bench.build_upsnet(args, data.info)
    ours = {k: tuple(v.shape) for k, v in task.model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in bench_net.state_dict().items()}
    assert len(bench_net.semantic_head.subnet) == 4 and bench_net.panoptic_head.loss_weight == 0.5
    for bad in ("rpn.init_args.pre_nms_top_n_test=10", "semantic_head.init_args.num_layers"):
        with pytest.raises(SystemExit):
            bench.make_parser().parse_args(["--set", bad])


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_value_builds_its_network(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    experiment = yaml.safe_load(path.read_text())["experiment"]
    for name, value in _runs(path):
        arg = value if isinstance(value, str) else yaml.safe_dump(value).split("\n")[0]
        cli = main(["--config", experiment, f"--{name}", str(arg)], run=False)
        task, net = cli.model, cli.model.model
        if name.endswith("panoptic_head.class_path"):
            assert type(net.panoptic_head).__name__ == value.rsplit(".", 1)[1]
        elif name.endswith("box_keep_fraction"):
            assert net.panoptic_head.with_unknown == (value < 1)
        elif name.endswith("panoptic_head.init_args.loss_weight"):
            assert net.panoptic_head.loss_weight == value
        elif name.endswith("semantic_head.init_args.deformable"):
            assert any(isinstance(m, DeformConv2d) for m in net.semantic_head.modules()) == value
        elif name.endswith("semantic_head.init_args.num_layers"):
            assert sum(isinstance(m, DeformConv2d) for m in net.semantic_head.subnet) == value
        elif name.endswith("semantic_head.init_args.loss_weight"):
            assert net.semantic_head.loss_weight == value
        elif name.endswith("semantic_head.init_args.roi_loss_weight"):
            assert net.semantic_head.roi_loss_weight == value
        elif name == "model.init_args.optimizer.init_args.lr":
            assert task.configure_optimizers()["optimizer"].defaults["lr"] == value
        elif name == "model.init_args.scheduler.init_args.milestones":
            assert task.configure_optimizers()["lr_scheduler"]["scheduler"].milestones == value
        elif name.startswith("trainer."):
            assert getattr(cli.trainer, name.split(".", 1)[1]) == value
        else:
            assert name == "seed_everything", f"{path.name}: no check for {name}"


def test_the_builder_equals_the_coco_experiment(monkeypatch):
    from lightning_seg.cli import build_experiment
    from lightning_seg.models.detectors.upsnet import upsnet_r50_fpn

    monkeypatch.chdir(REPO)
    task, data = build_experiment(REPO / "experiments" / "upsnet_r50_fpn_coco_1x.yaml")
    built = upsnet_r50_fpn(data.info.thing_classes, data.info.stuff_classes,
                           weights_backbone="IMAGENET1K_V1")
    assert repr(built) == repr(task.model)
    shapes = {k: tuple(v.shape) for k, v in task.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert task.model.box_head.num_classes == 80 and task.model.semantic_head.num_classes == 133
    for name in ("semantic_head", "panoptic_head"):  # the numbers repr does not show

        def numbers(module):
            return {k: v for k, v in vars(module).items() if isinstance(v, (int, float, bool, list))}

        assert numbers(getattr(built, name)) == numbers(getattr(task.model, name)), name


# the official experiment YAMLs: (semantic layers, semantic / RoI semantic / panoptic loss
# weights, small-stuff limit); inference is the same for both (score 0.6, class-agnostic NMS 0.5,
# <= 100 instances, a mask dropped when > 0.3 of it is covered, instances mostly stuff -> stuff)
OFFICIAL = {
    "upsnet_r50_fpn_coco_1x.yaml": (3, 0.2, 0.04, 0.1, 4096),
    "upsnet_r50_fpn_cityscapes_12k.yaml": (2, 1.0, 0.0, 0.5, 2048),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_loss_weights_and_inference_rules_per_dataset(name: str, monkeypatch):
    from lightning_seg.cli import build_experiment

    monkeypatch.chdir(REPO)
    task, _ = build_experiment(REPO / "experiments" / name)
    sem, pan = task.model.semantic_head, task.model.panoptic_head
    layers = sum(isinstance(m, DeformConv2d) for m in sem.subnet.modules())
    assert (layers, sem.loss_weight, sem.roi_loss_weight, pan.loss_weight, pan.stuff_area_limit) == OFFICIAL[name]
    assert (pan.box_keep_fraction, pan.with_unknown) == (0.7, True)
    assert (pan.score_thresh, pan.nms_thresh, pan.detections_per_img) == (0.6, 0.5, 100)
    assert (pan.mask_overlap_thresh, pan.majority_thresh) == (0.3, 0.5)


def test_benchmark_bootstrap_interval_of_the_gain():
    """The paired bootstrap of benchmarks/upsnet.py: no gain between equal predictions; against
    predictions that miss every other image (PQ 1 vs 3 / (3 + 3/2 + 3/2) = 0.5) an interval
    around the gain 0.5 that resampling the images widens."""
    from types import SimpleNamespace

    from lightning_seg.metrics._exact_sum import to_fixed
    from lightning_seg.metrics.panoptic import PanopticCounts

    bench = _benchmark()
    info = SimpleNamespace(thing_classes=[0], stuff_classes=[1])
    one, zero = torch.tensor([1, 0]), torch.zeros(2, dtype=torch.int64)
    matched = PanopticCounts(to_fixed(one.double()), one, zero, zero)  # IoU 1
    missed = PanopticCounts(zero, zero, one, one)
    assert bench.bootstrap_pq_gain([matched] * 6, [matched] * 6, info, 50, 0) == (0.0, 0.0)
    lo, hi = bench.bootstrap_pq_gain([matched] * 6, [matched, missed] * 3, info, 200, 0)
    assert 0 < lo < 0.5 < hi <= 1


def test_benchmark_part_outlines_on_a_hand_made_image():
    """benchmarks/upsnet.py's ``part_outlines``: an 8 x 8 square of thing class 1 on stuff 0,
    detected by its exact box with mask logits +5 everywhere; the semantic head gives the upper
    half to class 1 (logit 3) and the lower half to class 2 (logit 4), stuff logit 0. Then the
    mask and the semantic head's things-vs-stuff outline cover the square (IoU 1), the semantic
    arg-max of class 1 its upper half (0.5); the panoptic logit (class-1 logit + 5) beats stuff
    everywhere in the box, but in the lower half loses to the unknown logit (4 - (-3) = 7 > 2),
    so 0.5 with the unknown class and 1 without. A second thing without a detection of its class
    and a crowd region are left out."""
    from lightning_seg.structures import InstancePredictions, PanopticTargets

    bench = _benchmark()
    segments = torch.full((20, 20), 2)
    segments[4:12, 4:12] = 1  # the square, class 1
    segments[14:18, 14:18] = 3  # class 2, no detection of its class
    segments[0:2, 0:2] = 4  # a crowd of class 1
    target = PanopticTargets(segment_map=segments, ids=torch.tensor([1, 2, 3, 4]), labels=torch.tensor([1, 0, 2, 1]),
                             isthing=torch.tensor([True, False, True, True]),
                             iscrowd=torch.tensor([False, False, False, True]))
    semantic = torch.zeros(3, 20, 20)
    semantic[1] = -3.0
    semantic[1, 4:8, 4:12] = 3.0
    semantic[2] = -10.0
    semantic[2, 8:12, 4:12] = 4.0
    detections = InstancePredictions(boxes=torch.tensor([[4.0, 4.0, 12.0, 12.0]]), scores=torch.tensor([0.9]),
                                     labels=torch.tensor([1]), image_size=(20, 20))
    mask_logits = torch.full((1, 28, 28), 5.0)
    rows = bench.part_outlines(semantic, detections, mask_logits, target, [0], [1, 2])
    assert rows == [(8.0, {"mask": 1.0, "semantic": 1.0, "semantic_class": 0.5, "panoptic": 0.5})]
    rows = bench.part_outlines(semantic, detections, mask_logits, target, [0], [1, 2], with_unknown=False)
    assert rows[0][1]["panoptic"] == 1.0
    # a detection whose box overlaps the square by less than 0.5 matches nothing
    far = InstancePredictions(boxes=torch.tensor([[8.0, 8.0, 16.0, 16.0]]), scores=torch.tensor([0.9]),
                              labels=torch.tensor([1]), image_size=(20, 20))
    assert bench.part_outlines(semantic, far, mask_logits, target, [0], [1, 2]) == []
    with pytest.raises(ValueError, match="must not be resized"):
        bench.part_outlines(semantic[:, :10], detections, mask_logits, target, [0], [1, 2])

    # outline_ious records what the network's own head receives, and puts the square in its size bin
    from types import SimpleNamespace

    class Head(torch.nn.Module):
        mask_logit_weight, with_unknown = 1.0, True

        def predict(self, *inputs):
            return "panoptic"

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.panoptic_head = Head()

        def forward(self, batch):
            return [self.panoptic_head.predict(semantic, detections, mask_logits, (20, 20))]

    network = Network()
    head = network.panoptic_head
    batch = SimpleNamespace(panoptic=[target])
    batch.to = lambda device: batch
    info = SimpleNamespace(stuff_classes=[0], thing_classes=[1, 2])
    out = bench.outline_ious(network, [batch, batch], info, "cpu")
    assert network.panoptic_head is head
    square = {"things": 2, "mask": 1.0, "semantic": 1.0, "semantic_class": 0.5, "panoptic": 0.5}
    assert out["all"] == out["0-12"] == square
    assert out["12-20"] == {"things": 0, **dict.fromkeys(bench.OUTLINE_PARTS)}
