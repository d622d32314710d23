"""The base of every stored format: a Linear replacement holding compressed tensors.

A format is a module class with a registered name. Its constructor takes the layer's shape and a
small JSON-serializable dict of parameters and allocates empty buffers of the exact stored shapes,
so a checkpoint loader can build the module skeleton from `quantization_config` alone and then
fill the buffers from safetensors. The bias stays a plain parameter under the name `bias`, as in
`nn.Linear`, so uncompressed and compressed checkpoints share key names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llava_fa.errors import ConfigError


class CompressedLinear(nn.Module):
    format: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **params: Any):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # The bias is not compressed; its dtype follows the model's like any other parameter.
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    # --- what every format defines -------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The JSON parameters that, with the shape, rebuild this module's skeleton."""
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (out_features, in_features) weight this module represents."""
        raise NotImplementedError

    def weight_rows(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The dense weight as (start, stop, rows start..stop) blocks in order, what the dequant forward
        and weight_error rebuild one at a time; a format whose rows can be rebuilt apart gives several
        (fourier's rfft). Here: one block, the whole weight."""
        yield 0, self.out_features, self.dequantize(dtype)

    # --- shared ----------------------------------------------------------------------------------
    def set_bias(self, bias: torch.Tensor | None) -> "CompressedLinear":
        """Keep a copy of the dense layer's bias (never compressed); returns self for chaining."""
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return self

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that encode the weight (all buffers; the bias is not part of it)."""
        return dict(self.named_buffers(recurse=False))

    def storage_bits(self) -> int:
        """Bits of every stored tensor of the weight: codes, scales, zeros, factors...

        The bias is excluded: no method compresses it and it is identical in the dense baseline.
        bpw = storage_bits() / (in_features * out_features).
        """
        return sum(t.numel() * t.element_size() * 8 for t in self.stored_tensors().values())

    def bits_per_weight(self) -> float:
        return self.storage_bits() / (self.in_features * self.out_features)

    # How the layer runs (attribute `forward_mode`, a runtime choice, not stored) is a table:
    # mode -> backends tried in order, the first whose `runs` accepts the input computes y (PEFT's
    # dispatch, HQQ's backends). A format adds its modes by extending the table; a kernel is one
    # more Backend, never a branch in forward().
    backends: ClassVar[dict[str, tuple["Backend", ...]]] = {}

    @property
    def forward_modes(self) -> tuple[str, ...]:
        return tuple(self.backends)

    @torch.compiler.disable  # torch.compile traces around it: each backend runs its own kernel, eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = getattr(self, "forward_mode", DEFAULT_MODE)
        candidates = self.backends.get(mode)
        if candidates is None:
            raise ValueError(f"forward_mode must be one of {', '.join(self.forward_modes)}, got {mode!r}")
        for backend in candidates:
            if backend.runs(self, x):
                return backend.run(self, x)
        raise RuntimeError(f"{self.format}: no backend of forward mode {mode!r} runs on {x.device} {x.dtype}")

    # Plain-attribute dicts derived from the stored tensors at run time (the dense weight of "cached",
    # a kernel's layout): never saved, dropped whenever the stored tensors may change or move.
    RUNTIME_CACHES: ClassVar[tuple[str, ...]] = ("_cache", "_kernel")

    def drop_runtime_caches(self) -> None:
        for name in self.RUNTIME_CACHES:
            self.__dict__.get(name, {}).clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.drop_runtime_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self.drop_runtime_caches()
        return super()._apply(fn, recurse)

    @classmethod
    def from_config(cls, in_features: int, out_features: int, bias: bool, params: dict[str, Any]) -> "CompressedLinear":
        return cls(in_features, out_features, bias, **params)

    def extra_repr(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params().items())
        shape = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{shape}, {extra}"


def _always(layer: CompressedLinear, x: torch.Tensor) -> bool:
    return True


def on_cuda(layer: CompressedLinear, x: torch.Tensor) -> bool:
    return x.is_cuda


@dataclass(frozen=True)
class Backend:
    """One way to compute y = x W^T + b for a format from its stored tensors."""

    run: Callable[[CompressedLinear, torch.Tensor], torch.Tensor]
    runs: Callable[[CompressedLinear, torch.Tensor], bool] = _always  # can it run on this input here?


def layer_bias(layer: CompressedLinear, x: torch.Tensor) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.to(x.dtype)


def dequant_forward(layer: CompressedLinear, x: torch.Tensor) -> torch.Tensor:
    """Rebuild the dense weight at every call, a block of rows at a time where the format gives blocks
    (`weight_rows`): only the compressed form and one block stay in memory. Each block's outputs are
    those of F.linear on the whole weight where the BLAS computes each output the same way whatever
    the number of rows (MKL on CPU with 16 or more input rows: tests/test_fourier_row_blocks.py)."""
    bias = layer_bias(layer, x)
    parts = [F.linear(x, W, None if bias is None else bias[a:b]) for a, b, W in layer.weight_rows(x.dtype)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def weight_error(layer: CompressedLinear, weight: torch.Tensor) -> torch.Tensor:
    """W - W_hat (float32, on the device of `weight`, W), W_hat rebuilt a block of rows at a time: the
    same values as weight - layer.dequantize(), without a whole W_hat besides the difference."""
    weight = weight.float()
    diff = torch.empty_like(weight)
    for a, b, W in layer.weight_rows(torch.float32):
        torch.sub(weight[a:b], W.to(weight.device), out=diff[a:b])
    return diff


def cached_forward(layer: CompressedLinear, x: torch.Tensor) -> torch.Tensor:
    """Rebuild the dense weight once per device and dtype and keep it as a plain attribute (not in
    the state_dict; dropped on load_state_dict and .to()): fast, but memory is saved at rest only."""
    cache = layer.__dict__.setdefault("_cache", {})
    key = (x.device, x.dtype)
    if key not in cache:
        cache.clear()  # one copy at a time: the cache costs a dense weight of memory
        cache[key] = layer.dequantize(torch.float32).to(x.device, x.dtype)
    return F.linear(x, cache[key], layer_bias(layer, x))


# Every format runs these; formats extend the table with their own modes. "auto", the default, keeps
# a model compressed in GPU memory (no dense copy: the weight is rebuilt per call, or a format's
# kernel never forms it) and caches the dense weight on CPU, where memory is plentiful and the
# per-call rebuild would dominate. A format puts its kernel first in its own "auto".
DEFAULT_MODE = "auto"
CompressedLinear.backends = {"auto": (Backend(dequant_forward, on_cuda), Backend(cached_forward)),
                             "cached": (Backend(cached_forward),), "dequant": (Backend(dequant_forward),)}


def set_forward_mode(model: nn.Module, mode: str) -> int:
    """Set `forward_mode` on every compressed layer of `model`; returns how many were set.

    Every compressed layer must support `mode` (checked before any is changed). Dense copies cached
    by an earlier "cached" pass are dropped, so "dequant" / "fused" really free that memory."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)]
    if not layers:
        raise ConfigError(f"forward mode {mode!r}: the model has no compressed layers. Fix: pass a checkpoint "
                          "written by `llava-fa compress`, or drop the forward mode.")
    unsupported = [(name, m) for name, m in layers if mode not in m.forward_modes]
    if unsupported:
        name, m = unsupported[0]
        raise ConfigError(f"forward mode {mode!r} is not available for {len(unsupported)} of the {len(layers)} "
                          f"compressed layers (e.g. {name}, format {m.format!r}, modes: {', '.join(m.forward_modes)}). "
                          "Fix: pick a mode those layers have ('auto', 'cached' and 'dequant' work everywhere).")
    for _, m in layers:
        m.forward_mode = mode
        m.drop_runtime_caches()
    return len(layers)
