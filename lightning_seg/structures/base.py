"""Field-wise behaviour shared by every structure: move to a device, select items, pin memory.

A structure is a dataclass whose fields are tensors, nested structures, lists of them or plain
values. Nothing is listed by hand: ``to`` moves every tensor it finds (in nested structures and
lists too), and ``select`` indexes every tensor field along its first dimension, except fields
declared ``per_image()`` (one value for the whole image, such as a segment id map).
"""

from __future__ import annotations

from dataclasses import field, fields, is_dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T", bound="TensorStruct")

_PER_IMAGE = "per_image"


def per_image(**kwargs) -> Any:
    """A dataclass field holding one value for the whole image: ``select`` leaves it alone."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[_PER_IMAGE] = True
    return field(metadata=metadata, **kwargs)


def apply_to_tensors(value: Any, fn) -> Any:
    """``fn`` applied to every tensor in ``value`` (tensors, structures, lists, tuples, dicts)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, TensorStruct):
        return value._map(fn)
    if isinstance(value, list):
        return [apply_to_tensors(v, fn) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(apply_to_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: apply_to_tensors(v, fn) for k, v in value.items()}
    return value


class TensorStruct:
    """Mixin for dataclasses of tensors (see the module docstring)."""

    def _map(self: T, fn) -> T:
        assert is_dataclass(self)
        changes = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            new = apply_to_tensors(value, fn)
            if new is not value:
                changes[f.name] = new
        return replace(self, **changes) if changes else self

    def to(self: T, device: torch.device | str, non_blocking: bool = False) -> T:
        """A copy with every tensor (nested ones included) on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self: T) -> T:
        """A copy with every CPU tensor in page-locked memory (DataLoader ``pin_memory``)."""
        return self._map(lambda t: t.pin_memory() if t.device.type == "cpu" else t)

    def select(self: T, keep: Tensor) -> T:
        """Keep a subset of the items (a bool mask or an index tensor over the first dimension
        of every per-item tensor field); every field stays aligned."""
        assert is_dataclass(self)
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and f.init and not f.metadata.get(_PER_IMAGE):
                changes[f.name] = value[keep]
        return replace(self, **changes)
