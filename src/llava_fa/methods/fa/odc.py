"""ODC, the optional diagonal calibration: column (and row) scales applied before the transform.

W_s = diag(r) W diag(c) is what gets transformed, approximated and stored; the layer undoes the
scales after the inverse transform. Diagonal scalings do not commute with the DFT, so this order is
the only one in which the stored spectrum is the spectrum of a known matrix. The fit minimizes
||W_s - W_s_hat||_F = ||diag(r) (W - W_hat) diag(c)||_F, a diagonal weighting of the error.

- calibrated: c_j = mean(x_j^2)^(alpha/2). With alpha = 1 the weighted error is the output error
  under a diagonal Hessian; alpha 0.5 tempers it (as ASVD/AWQ do).
- data-free: c_j = colRMS_j(W)^-alpha. Why a negative power: the Fourier domain spreads a
  quantization error evenly over all entries of W_s, with a size set by ||W_s||. Undoing c then
  gives column j an error ~ 1/c_j, so the plain error ||W - W_hat||^2 ~ (sum_j c_j^2 a_j)
  (sum_j 1/c_j^2) (a_j = ||W_:,j||^2), which Cauchy-Schwarz minimizes at c_j = a_j^(-1/4), i.e.
  alpha = 0.5: columns of large weights are shrunk, small ones grown.
- rows (optional, both modes, no output statistics are collected): r_i = rowRMS_i(W diag(c))^-alpha.

Scales are normalized to geometric mean 1 and rounded to float16 before use: what is stored is
what the fit used.
"""

from __future__ import annotations

import torch

from llava_fa.errors import ConfigError
from llava_fa.quantizers.float16 import F16, f16_round
from llava_fa.calibration.stats import LayerStats



def _normalize(v: torch.Tensor) -> torch.Tensor:
    v = v / torch.exp(torch.log(v).mean())
    return f16_round(v.clamp_min(F16.tiny))


def _floor(v: torch.Tensor) -> torch.Tensor:
    """Keep dead channels (zero statistics) finite: floor at 1e-6 of the mean."""
    mean = v.mean()
    return v.clamp_min(1e-6 * mean) if mean > 0 else torch.ones_like(v)


def column_scales(W: torch.Tensor, odc: str, alpha: float, stats: LayerStats | None = None,
                  modality: str = "all") -> torch.Tensor | None:
    if odc == "off":
        return None
    if odc == "data-free":
        rms = W.float().pow(2).mean(0).sqrt()
        return _normalize(_floor(rms).pow(-alpha))
    if odc == "calibrated":
        if stats is None:
            raise ConfigError("fa: --odc calibrated needs calibration data (the `sq` statistic); pass --nsamples > 0 "
                              "or use --odc data-free")
        d = stats.mean_sq(modality).to(W.device).float()
        return _normalize(_floor(d).pow(alpha / 2))
    raise ConfigError(f"fa: unknown --odc {odc!r}; use off, data-free or calibrated")


def row_scales(Ws: torch.Tensor, alpha: float) -> torch.Tensor:
    rms = Ws.float().pow(2).mean(1).sqrt()
    return _normalize(_floor(rms).pow(-alpha))
