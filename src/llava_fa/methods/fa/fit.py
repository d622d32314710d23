"""The alternation of LLaVA-FA: low-rank fit of what the codes miss, codes of what the low rank misses.

On the spectrum S of W_s (the ODC-scaled weight):
    L <- FourierSVD_r(S - Q)      (factors stored, float16 or quantized: L is their dequantized product)
    Q <- quantize(S - L)           (PolarQuant / cartesian / real codes of the stored entries)
starting from Q = 0. The SVD is exact or randomized (lowrank.py); the randomized one starts each
alternation from the previous one's right basis, the subspace it has to find again. Each iterate is
encoded into the layer's buffers and its error is measured on the stored form, in the weight
domain: ||W_s - inverse(L + Q)||_F (the weighted error; no reliance on Parseval bookkeeping). Scales are refitted at every step, so the error need not fall
monotonically: the best iterate is kept, and `history` lists every iterate's error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods.fa.lowrank import WarmSVD
from llava_fa.transforms import fourier as ft

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    layer: FourierLinear
    history: list[float] = field(default_factory=list)  # weighted error of each iterate
    best: int = 0  # index of the kept iterate


@torch.no_grad()
def fit_layer(W: torch.Tensor, params: dict[str, Any], cols: torch.Tensor | None = None,
              rows: torch.Tensor | None = None, iters: int = 5, bias: torch.Tensor | None = None,
              scale_search: bool = True, svd: str = "randomized", power_iters: int = 3) -> FitResult:
    m, n = W.shape
    mode, rank, codes = params["transform"], params["rank"], params["codes"]
    layer = FourierLinear(n, m, bias is not None, **params).to(W.device)
    layer.set_bias(bias)
    layer.set_odc(cols, rows)
    Ws = layer.scale_weight(W)
    S = ft.forward(Ws, mode)
    colw = None if mode == "none" else ft.column_weights(m, n, mode, W.device)
    result = FitResult(layer)
    best_state = None
    lowrank_fit = WarmSVD(colw, svd, power_iters)
    Q = None
    for step in range(iters if (rank and codes) else 1):
        L = None
        if rank:
            A, B = lowrank_fit(S if Q is None else S - Q, rank)
            Q = None  # not needed again before the codes replace it: one m x h grid less at the peak
            layer.set_lowrank(A, B, scale_search)
            L = layer.lowrank_grid()
        if codes:
            target, L = (S if L is None else S - L), None  # L is not needed again: one grid less at the peak
            layer.set_codes(target, scale_search)
            # Q feeds the next iterate's low-rank fit only (none without a rank): one m x h grid less
            Q, target = (layer.codes_grid() if rank else None), None
            if not rank:
                S = None  # a single iterate: the spectrum is not needed again
        err = (Ws - layer.reconstruct_scaled()).norm().item()
        log.debug("fa %dx%d %s rank %d: iterate %d weighted error %.6g (relative %.4f)", m, n, mode, rank, step, err,
                  err / max(Ws.norm().item(), 1e-30))
        if best_state is None or err < min(result.history):
            best_state = {k: v.clone() for k, v in layer.named_buffers()}
            result.best = step
        result.history.append(err)
    for k, v in best_state.items():
        setattr(layer, k, v)
    return result
