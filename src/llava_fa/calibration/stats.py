"""Per-layer input statistics (`LayerStats`), split by token modality, and the forward hooks that
accumulate them (`StatsCollector`).

The pipeline sets `image_mask` (True at image-token positions, shape (batch, seq)) before each
forward; modules whose inputs are all image features (vision tower, projector) are registered
with `modality="image"` instead. Linear layers fed by the same tensor (q/k/v, gate/up) compute
the product once per forward and share it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from llava_fa.errors import ConfigError


# Statistics a method may ask for, per linear layer input x (one row per token):
XTX = "xtx"  # sum of x x^T: the (unnormalized) Hessian of GPTQ-style objectives
SQ = "sq"  # sum of x^2 per input channel: the diagonal alone, far cheaper for wide layers
STATS = (XTX, SQ)
MODALITIES = ("text", "image")


@dataclass
class LayerStats:
    """Input statistics of one linear layer, kept separately for text and image token positions."""

    in_features: int
    xtx: dict[str, torch.Tensor] = field(default_factory=dict)
    sq: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {m: 0 for m in MODALITIES})

    def _pick(self, modality: str) -> tuple[str, ...]:
        if modality == "all":
            return MODALITIES
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; use all, text or image")
        return (modality,)

    def count(self, modality: str = "all") -> int:
        return sum(self.tokens[m] for m in self._pick(modality))

    def xtx_sum(self, modality: str = "all") -> torch.Tensor:
        mods = [m for m in self._pick(modality) if m in self.xtx]
        if not mods:
            raise ConfigError(f"no X^T X was collected for {modality} tokens")
        return sum(self.xtx[m] for m in mods)

    def hessian(self, modality: str = "all") -> torch.Tensor:
        """GPTQ's H = 2/N sum x x^T over the tokens of `modality` ("all", "text", "image")."""
        n = self.count(modality)
        if n == 0:
            raise ConfigError(f"the calibration data held no {modality} tokens for this layer")
        return self.xtx_sum(modality) * (2.0 / n)

    def mean_sq(self, modality: str = "all") -> torch.Tensor:
        """Mean of x^2 per input channel (from `sq`, or the diagonal of `xtx`)."""
        n = self.count(modality)
        if n == 0:
            raise ConfigError(f"the calibration data held no {modality} tokens for this layer")
        # only the modalities that held tokens: a text-only model never collects an `image` sum
        mods = [m for m in self._pick(modality) if self.tokens.get(m)]
        if all(m in self.sq for m in mods):
            return sum(self.sq[m] for m in mods) / n
        return torch.diagonal(self.xtx_sum(modality)) / n

    def to(self, device: torch.device | str) -> "LayerStats":
        return LayerStats(self.in_features, {k: v.to(device) for k, v in self.xtx.items()},
                          {k: v.to(device) for k, v in self.sq.items()}, dict(self.tokens))




class StatsCollector:
    def __init__(self, modules: dict[str, nn.Module], needs: set[str] | frozenset[str],
                 modality: dict[str, str] | None = None):
        self.modules = modules
        self.needs = set(needs)
        self.modality = modality or {}
        self.stats = {name: LayerStats(_in_features(m)) for name, m in modules.items()}
        self.image_mask: torch.Tensor | None = None
        self._cache: dict[tuple, tuple[torch.Tensor, dict]] = {}
        self._handles: list = []

    def __enter__(self) -> "StatsCollector":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No hooks meanwhile: a pass whose inputs reach the collector later, through `add`."""
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()

    def new_sample(self, image_mask: torch.Tensor | None) -> None:
        self.image_mask = image_mask
        self._cache.clear()

    def _hook(self, name: str):
        def hook(module, args):
            self.add(name, args[0])
        return hook

    def add(self, name: str, x: torch.Tensor) -> None:
        """Accumulate the input `x` (..., in_features) of module `name`."""
        forced = self.modality.get(name)
        key = (id(x), forced)
        cached = self._cache.get(key)
        if cached is None or cached[0] is not x:
            # The cache holds `x` itself, so its id cannot be reused by another tensor meanwhile.
            cached = (x, self._increments(x, forced))
            self._cache[key] = cached
        st = self.stats[name]
        for m, inc in cached[1].items():
            st.tokens[m] += inc["n"]
            for key, store in ((XTX, st.xtx), (SQ, st.sq)):
                if key in inc:
                    store[m] = store[m] + inc[key] if m in store else inc[key].clone()

    def _increments(self, x: torch.Tensor, forced: str | None) -> dict[str, dict]:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if forced is not None:
            parts = {forced: rows}
        elif self.image_mask is None:
            parts = {"text": rows}
        else:
            mask = self.image_mask.reshape(-1).to(rows.device)
            if mask.numel() != rows.shape[0]:
                # e.g. cross-attention keys/values, whose rows are not the decoder's sequence
                raise RuntimeError(f"modality mask of {mask.numel()} tokens for an input of {rows.shape[0]} rows: "
                                   "declare the layers that take image features in calibration/architectures.py")
            parts = {"image": rows[mask], "text": rows[~mask]}
        out = {}
        for m, r in parts.items():
            assert m in MODALITIES
            inc = {"n": r.shape[0]}
            if XTX in self.needs:
                inc[XTX] = r.T @ r
            if SQ in self.needs:
                inc[SQ] = (r * r).sum(0)
            out[m] = inc
        return out


def _in_features(module: nn.Module) -> int:
    return module.in_features if hasattr(module, "in_features") else module.weight.shape[1]
