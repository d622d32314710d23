from __future__ import annotations

import torch
from torch import nn

from llava_fa.errors import ConfigError, DataError
from llava_fa.formats import AffineLinear
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.common import check_group_divides
from llava_fa.methods.gptq.config import GPTQConfig
from llava_fa.quantizers import dequantize, fit, quantize, resolve_group_size


@register_method
class GPTQ(Method):
    name = "gptq"
    Config = GPTQConfig
    needs = frozenset({XTX})

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        check_group_divides(self.name, name, linear.weight, self.config.group_size)

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> AffineLinear:
        if stats is None:
            raise ConfigError("gptq needs calibration data (X^T X); do not pass --nsamples 0")
        c = self.config
        H = stats.hessian(c.modality).to(weight.device)
        codes, scale, zero = gptq_quantize(weight, H, bits=c.bits, group_size=c.group_size, sym=c.sym, damp=c.damp,
                                           block_size=c.block_size, act_order=c.act_order)
        return AffineLinear.from_codes(codes, scale, zero, bits=c.bits, sym=c.sym, bias=bias)


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int, sym: bool = False,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False):
    """GPTQ on a (out, in) weight with Hessian H (in, in). Returns codes (out, in), scale, zero (out, G).

    Groups are contiguous in the original column order, also with act-order (their scales are
    fitted up front on the original weight, "static groups"), so the result is a plain `affine`
    layer with no column permutation to store.
    """
    W = weight.detach().float().clone()
    out_f, n = W.shape
    g = resolve_group_size(group_size, n)
    H = H.detach().float().clone()

    dead = torch.diagonal(H) == 0  # inputs that never fire: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0

    static = act_order  # in permuted order a group's first column is not met first
    if static:
        scale_all, zero_all = fit(W.reshape(out_f, n // g, g), bits, sym)
    else:
        scale_all = torch.empty(out_f, n // g, device=W.device)
        zero_all = torch.empty_like(scale_all)

    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(n, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]

    H += torch.eye(n, device=H.device) * (damp * torch.diagonal(H).mean())
    Hinv = _upper_cholesky_of_inverse(H, damp)

    codes = torch.zeros(out_f, n, dtype=torch.int64, device=W.device)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            grp = col // g
            if not static and col % g == 0:
                # Fit the group on its current weights, error feedback of all earlier columns
                # included: for columns past this block, apply the feedback still pending in Err1.
                end = min(i1 + i + g, n)
                span = W1[:, i:end - i1]
                if end > i2:
                    later = W[:, i2:end] - Err1[:, :i] @ Hinv[i1:i1 + i, i2:end]
                    span = torch.cat([span, later], dim=1)
                scale_all[:, grp], zero_all[:, grp] = fit(span, bits, sym)
            w = W1[:, i]
            s, z = scale_all[:, grp], zero_all[:, grp]
            q = quantize(w, s, z, bits)
            codes[:, i1 + i] = q
            err = (w - dequantize(q, s, z)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    return codes[:, inv], scale_all, zero_all


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    try:
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise DataError(f"gptq: the damped Hessian is not positive definite (damp={damp}). "
                        f"Fix: raise --damp (e.g. 0.1) or use more calibration samples") from None
