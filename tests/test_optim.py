import pytest
import torch

from lightning_seg.optim import WarmupMultiStepLR


def test_warmup_multistep_matches_the_paper_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    sched = WarmupMultiStepLR(opt, milestones=(6, 8), gamma=0.1, warmup_iters=4, warmup_factor=0.001)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[2] == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert lrs[4:6] == pytest.approx([0.02, 0.02])
    assert lrs[6:8] == pytest.approx([0.002, 0.002])
    assert lrs[8:] == pytest.approx([0.0002, 0.0002])


def test_warmup_multistep_rejects_unsorted_milestones():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, milestones=(8, 6))
