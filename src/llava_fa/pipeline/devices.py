"""Where the model's parts live while it is compressed: moves that keep tied weights tied."""

from __future__ import annotations

import torch
from torch import nn


def move_except(model: nn.Module, keep: list[nn.Module], device: torch.device | str) -> None:
    """Move every parameter and buffer not inside `keep` (in place, so tied weights stay tied)."""
    skip = {id(t) for k in keep for t in [*k.parameters(), *k.buffers()]}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and id(p) not in skip:
                p.data = p.data.to(device)
        for key, b in mod._buffers.items():
            if b is not None and id(b) not in skip:
                mod._buffers[key] = b.to(device)


def to_device(sample: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """A calibration sample on `device`, its floating-point inputs in the model's dtype."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in sample.items()}


def on_device(mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if mask is None else mask.to(device)


def device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
