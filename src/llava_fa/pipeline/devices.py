"""Where the model's parts live while it is compressed: moves that keep tied weights tied."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from llava_fa.formats import CompressedLinear
from llava_fa.formats.base import DEFAULT_MODE


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
    same tensors. Sums by index on CUDA (index_add) run in the order of atomics: two H200 runs of fa
    stored different levels and codes. fa's own sums no longer use index_add (quantizers/polar.py:
    segment sums; under this mode index_add ran serially, a 7B fa run took minutes per layer); this
    mode covers the ops left (MoE routing's index_add, cuBLAS's workspace). warn_only: an op that has
    no deterministic CUDA kernel warns (naming itself) instead of stopping the run."""
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


@contextlib.contextmanager
def dense_pass(layer: nn.Module, device: torch.device) -> Iterator[None]:
    """On CUDA, the pass after a block runs its compressed linears from a dense weight built once per
    module (forward mode "cached") instead of their `auto` choice: a kernel from the codes or a
    rebuild per call (`dequant`), once per sample. The pass is all calibration samples as long
    prompts, where one dense matmul is fastest; the dense copies (one decoder layer's weights) are
    dropped after it. CPU keeps its modes (the streamed path chose `dequant` there for memory)."""
    switched = [m for m in layer.modules() if isinstance(m, CompressedLinear)
                and getattr(m, "forward_mode", DEFAULT_MODE) == DEFAULT_MODE] if device.type == "cuda" else []
    for m in switched:
        m.forward_mode = "cached"
    try:
        yield
    finally:
        for m in switched:
            del m.forward_mode  # back to the class's default, `auto`
            m.drop_runtime_caches()
