"""Where the model's parts live while it is compressed: moves that keep tied weights tied."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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


@contextlib.contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """Deterministic CUDA kernels while compressing: the same command on the same input stores the
    same tensors. Without it, sums by index (fa's Lloyd levels and scale search: index_add) run in
    the order of CUDA's atomics: two H200 runs of fa stored different levels and codes. warn_only:
    an op that has no deterministic CUDA kernel warns (naming itself) instead of stopping the run."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's own condition for determinism
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
