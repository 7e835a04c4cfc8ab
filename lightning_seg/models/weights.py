"""Loading pretrained weights with errors that say what failed and how to go on without them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.errors import UserError


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be downloaded or read."""


def torchvision_weights(model_name: str, weights: str, arg: str = "weights") -> dict[str, Tensor]:
    """The state dict of a torchvision weights-enum member, downloaded (or read from the cache).

    Args:
        model_name: torchvision builder name (``"resnet50"``, ``"vgg16"``, ``"maskrcnn_resnet50_fpn"``).
        weights: member name (``"IMAGENET1K_V1"``, ``"DEFAULT"``...).
        arg: the constructor argument that asked for them, named in the error.

    Raises:
        ValueError: unknown member (the error lists the valid ones).
        WeightsUnavailableError: the download failed (offline machine, proxy, ...).
    """
    import torchvision

    enum = torchvision.models.get_model_weights(model_name)
    try:
        member = enum[weights]
    except KeyError as exc:
        names = [w.name for w in enum]
        raise ValueError(f"unknown {model_name} weights {weights!r}; choose one of {names}") from exc
    try:
        return download_state_dict(model_name, member)
    except Exception as exc:  # urllib / hub / HTTP errors: all mean "not available here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"could not fetch the pretrained {model_name} weights {weights!r} from {member.url} "
            f"({type(exc).__name__}: {exc}). Offline, either put the file "
            f"{os.path.basename(member.url)} into {cache}, pass a local file with `weights_path`, "
            f"or train from scratch with `{arg}: null` (on the command line: "
            f"--...{arg} null)."
        ) from exc


def download_state_dict(model_name: str, member) -> dict[str, Tensor]:
    """The one place that downloads torchvision weights (tests replace it to stay offline)."""
    del model_name
    return member.get_state_dict(progress=False)


def load_checkpoint_file(path: str | os.PathLike, what: str = "weights") -> dict:
    """``torch.load`` of a local file, with an error naming the file when it is missing or
    unreadable (truncated download, not a PyTorch file)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{what} file {path} ({path.stat().st_size} bytes) is not a readable PyTorch file "
            f"({type(exc).__name__}: {exc}); it may be truncated: download it again"
        ) from exc


def load_mapped_weights(model: nn.Module, mapped: Mapping[str, Tensor], strict: bool, what: str
                        ) -> tuple[list[str], list[str]]:
    """Load a state dict already renamed to this project's keys (an official / torchvision
    checkpoint after its key mapping), leaving ``num_batches_tracked`` buffers out of account.

    Args:
        model: the network to fill.
        mapped: the renamed state dict.
        strict: raise when keys are missing or unexpected (else return them).
        what: the weights' name for the error (``"official YOLACT weights"``).

    Returns:
        ``(missing, unexpected)`` keys.

    Raises:
        KeyError: with ``strict``, naming the first keys and their counts.
    """
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise KeyError(
            f"{what} do not fit this model: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)})"
        )
    return missing, unexpected
