"""Forward hooks that accumulate per-layer input statistics, split by token modality.

The pipeline sets `image_mask` (True at image-token positions, shape (batch, seq)) before each
forward; modules whose inputs are all image features (vision tower, projector) are registered
with `modality="image"` instead. Linear layers fed by the same tensor (q/k/v, gate/up) compute
the product once per forward and share it.
"""

from __future__ import annotations

import torch
from torch import nn

from llava_fa.methods.base import MODALITIES, SQ, XTX, LayerStats


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
                raise RuntimeError(f"modality mask of {mask.numel()} tokens for an input of {rows.shape[0]} rows")
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
